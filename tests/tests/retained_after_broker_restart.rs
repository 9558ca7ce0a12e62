//! A broker restarted without persistence (Mosquitto's default) forgets
//! every retained message. The observer publishes its retained state again
//! when it reconnects: a subscriber that comes afterwards (Home Assistant,
//! a Node-RED flow) finds the summary, the nodes and the discovery configs
//! as before.

use std::time::Duration;

use homelab_core::{Layout, Topics};
use homelab_tests::*;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_is_back_after_the_broker_forgot_it() {
    init_logs();
    let port = free_addr().port();
    let Some(broker) = mosquitto(port).await else {
        return;
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n"),
    ]);
    let root = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let observer = tokio::spawn(homelab_observer::run(
        homelab_observer::Config {
            broker: addr.to_string().into(),
            layout: Layout::new(root.path()),
            topics: Topics::default(),
            repo: Some(repo.path().to_path_buf()),
            retention: Default::default(),
            feed: None,
            fleet: None,
            home_assistant: Some(Default::default()),
        },
        stop.clone(),
    ));
    let wanted = [
        "homelab/state/summary",
        // n1's device config (its connectivity and app's problem sensor).
        "homeassistant/device/homelab/homelab_node_n1/config",
        "homeassistant/device/homelab/homelab_control_plane/config",
    ];
    let retained = |addr| async move {
        let mut probe = Probe::connect(addr, &["homelab/state/#", "homeassistant/#"]).await;
        probe
            .latest_until(T, |m| {
                wanted
                    .iter()
                    .all(|t| m.get(*t).is_some_and(|p| !p.is_empty()))
            })
            .await
    };
    let before = retained(addr).await;

    // The broker dies and comes back empty.
    drop(broker);
    let _broker = mosquitto(port).await.expect("mosquitto again");
    let after = retained(addr).await;
    for topic in wanted {
        assert_eq!(after[topic], before[topic], "{topic}");
    }
    stop.cancel();
    observer.await.unwrap().unwrap();
}
