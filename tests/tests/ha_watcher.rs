//! The agent's Home Assistant watcher feeds the supervisor's `ha_*` rules:
//! an agent whose Home Assistant does not answer puts `ha_websocket_dead`
//! through its outbox into the event log, and the supervisor (Home
//! Assistant not managed on that node) raises it as an alert incident.
//! The node needs a working Docker to be judged: the agent watches the
//! real engine, through a label no container has.

use std::time::Duration;

use homelab_tests::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_home_assistant_reaches_the_log_and_the_supervisor() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: home-automation}\n",
        ),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n"),
    ]);
    if docker().await.is_none() {
        return;
    }
    let system = System::start(repo, Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let mut config = homelab_agent::Config::new(
        homelab_core::Name::parse("n1").unwrap(),
        &system.mqtt.to_string(),
        homelab_core::Layout::new(root.path()),
    );
    // Docker answers, and no container is this node's.
    config.docker_label = Some(format!(
        "homelab.test.ha-watcher={}",
        ulid::Ulid::generate()
    ));
    // Nothing listens where Home Assistant should be.
    config.home_assistant = Some(homelab_agent::hawatch::HaConfig {
        url: format!("http://{}", free_addr()),
        token: "a-long-lived-token".into(),
        interval: Duration::from_millis(200),
        settings: Default::default(),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(homelab_agent::run(config, stop.clone()));

    wait_for("ha_websocket_dead in n1's log", T, || async {
        system.logged("n1").iter().any(|e| {
            e["type"] == "ha_websocket_dead"
                && e["source"] == "node-agent"
                && e["severity"] == "error"
        })
    })
    .await;
    let dead: Vec<_> = system
        .logged("n1")
        .into_iter()
        .filter(|e| e["type"] == "ha_websocket_dead")
        .collect();
    assert_eq!(dead.len(), 1, "said once, not at every look: {dead:?}");
    wait_for("the supervisor's alert as an incident", T, || async {
        system
            .get("/api/incidents")
            .await
            .1
            .contains("ha_websocket_dead:n1")
    })
    .await;
    stop.cancel();
    agent.await.unwrap().unwrap();
    system.stop().await.unwrap();
}
