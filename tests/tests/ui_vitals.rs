//! A node's vitals over the day: the agent's retained status feeds the
//! node page's chart, and the day is kept under `state/ui/vitals/` so a
//! restart of the whole system (the embedded broker too, which keeps
//! nothing) still shows it.

use std::time::Duration;

use homelab_tests::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_vitals_are_charted_and_kept_across_a_restart() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n"),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe.report("n1", "online", &[("app", "running")]).await;
    probe
        .publish_retained("homelab/nodes/n1/agent", agent_status("n1", 0.61))
        .await;
    let kept = system.root().join("state/ui/vitals/n1.json");
    wait_for("the day's first sample written down", T, || async {
        read_json(&kept)
            .is_ok_and(|v| v["day"][0]["load"] == 0.61 && v["day"][0]["memory_pct"] == 75.0)
    })
    .await;
    let (status, page) = system.get("/nodes/n1").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("load (1 min): <b>0.61</b>") && page.contains("<polyline points="),
        "{page}"
    );
    let (_, overview) = system.get("/").await;
    assert!(
        overview.contains("<dd>0.61</dd>"),
        "the card's vitals: {overview}"
    );
    drop(probe);

    let system = system.restart().await;
    let (status, page) = system.get("/nodes/n1").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("load (1 min): <b>0.61</b>") && page.contains("memory used: <b>75 %</b>"),
        "the chart from the kept day, with no agent status on the new broker: {page}"
    );
    system.stop().await.unwrap();
}
