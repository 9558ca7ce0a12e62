//! Defects found from outside, each tried the way a user found it: events
//! in over MQTT (from `mosquitto_pub`, as a script would), the repo edited
//! on disk, answers read from files and HTTP.

use std::process::Command;
use std::time::Duration;

use homelab_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

fn incidents(system: &System) -> Vec<Value> {
    read_json(&system.root().join("world/incidents.json"))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn incident(system: &System, id: &str) -> Option<Value> {
    incidents(system).into_iter().find(|i| i["id"] == id)
}

fn mosquitto_pub(system: &System, topic: &str, payload: &str) -> bool {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &system.mqtt.port().to_string()])
        .args(["-q", "1", "-t", topic, "-m", payload])
        .output();
    match out {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "mosquitto_pub is not installed"
            );
            eprintln!("\n*** SKIPPED: mosquitto_pub is not installed ***\n");
            false
        }
    }
}

/// A script's event, without `seq` or `severity`, is stored once by id,
/// as info, and shown by the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_events_are_stored_once() {
    let repo = write_repo(&[("inventory/topology.yaml", "nodes:\n  piha: {}\n")]);
    let system = System::start(repo, Options::default()).await;
    let ts = homelab_core::time::format(&chrono::Utc::now());
    let payload = format!(
        r#"{{"v":1,"id":"x1","ts":"{ts}","node":"piha","source":"backup","type":"backup_failed","message":"disk full"}}"#
    );
    if !mosquitto_pub(&system, "homelab/events/piha", &payload) {
        return;
    }
    wait_for("the event in the log", T, || async {
        system.logged("piha").iter().any(|e| e["id"] == "x1")
    })
    .await;
    // Published again: still once. A later event is the sign the second
    // copy was handled.
    mosquitto_pub(&system, "homelab/events/piha", &payload);
    let later = payload.replace("\"x1\"", "\"x2\"");
    mosquitto_pub(&system, "homelab/events/piha", &later);
    wait_for("the later event in the log", T, || async {
        system.logged("piha").iter().any(|e| e["id"] == "x2")
    })
    .await;
    let logged = system.logged("piha");
    let stored: Vec<&Value> = logged.iter().filter(|e| e["id"] == "x1").collect();
    assert_eq!(stored.len(), 1, "{logged:?}");
    assert_eq!(stored[0]["severity"], "info");
    assert_eq!(stored[0]["seq"], 0);
    let (status, body) = system.get("/api/events?node=piha&type=backup_failed").await;
    assert_eq!(status, 200);
    assert!(body.contains("disk full"), "{body}");
    system.stop().await.unwrap();
}

/// A node online for a minute loses a service from its snapshot: the
/// redeploy waits the service's 5 s grace, counted from then. A service
/// whose container stops waits the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_counts_from_when_the_service_went_missing() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 5s}\n  web: {grace_period: 5s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    let minute_ago = chrono::Utc::now() - chrono::TimeDelta::seconds(60);
    let mut first = event(
        "n1",
        1,
        "node_snapshot",
        None,
        snapshot(&[("app", "running"), ("web", "running")]),
    );
    first["ts"] = json!(homelab_core::time::format(&minute_ago));
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;
    probe.publish("homelab/events/n1", first.to_string()).await;
    wait_for("both running", T, || async {
        read_json(&system.root().join("world/services.json"))
            .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 2))
    })
    .await;
    let gone = event(
        "n1",
        2,
        "node_snapshot",
        None,
        snapshot(&[("web", "exited")]),
    );
    let gone_at: chrono::DateTime<chrono::Utc> = gone["ts"].as_str().unwrap().parse().unwrap();
    probe.publish("homelab/events/n1", gone.to_string()).await;
    wait_for("app missing", T, || async {
        incident(&system, "service_missing:n1:app").is_some()
    })
    .await;
    for id in ["redeploy-n1-app", "container-restart-n1-web"] {
        wait_for(id, T, || async {
            system.action_file("pending", id).exists()
        })
        .await;
        let action = read_json(&system.action_file("pending", id)).unwrap();
        let created: chrono::DateTime<chrono::Utc> =
            action["created_at"].as_str().unwrap().parse().unwrap();
        assert!(
            created - gone_at >= chrono::TimeDelta::seconds(5),
            "{id} proposed {} after the drift began, inside its 5 s grace",
            created - gone_at
        );
    }
    system.stop().await.unwrap();
}

/// While an alert is open, its count and last_seen follow what keeps
/// happening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_alert_keeps_counting() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {}\n"),
        ("hosts/n1/services.yaml", "services:\n  homeassistant: {}\n"),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;
    let snap = event(
        "n1",
        1,
        "node_snapshot",
        None,
        snapshot(&[("homeassistant", "running")]),
    );
    probe.publish("homelab/events/n1", snap.to_string()).await;
    let failed = |seq| event("n1", seq, "ha_integration_failed", None, json!({})).to_string();
    probe.publish("homelab/events/n1", failed(2)).await;
    wait_for("the alert", T, || async {
        incident(&system, "ha_integration_failed:n1").is_some_and(|i| i["count"] == 1)
    })
    .await;
    for seq in [3, 4] {
        probe.publish("homelab/events/n1", failed(seq)).await;
    }
    wait_for("the count follows", T, || async {
        incident(&system, "ha_integration_failed:n1").is_some_and(|i| i["count"] == 3)
    })
    .await;
    let open = incident(&system, "ha_integration_failed:n1").unwrap();
    assert!(
        open["last_seen"].as_str() > open["opened_at"].as_str(),
        "{open}"
    );
    // Still one alert in the log: counting is not notifying.
    system.settle().await;
    let alerts = system
        .logged("n1")
        .into_iter()
        .filter(|e| e["type"] == "alert")
        .count();
    assert_eq!(alerts, 1);
    system.stop().await.unwrap();
}

/// One missing `service.yaml` is an incident with its file, freezes only
/// the host that uses it, and the other host keeps being reconciled from
/// the current repo. A node that reports without a snapshot is an incident
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_freezes_only_what_it_describes() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  a: {}\n  b: {}\n  quiet: {}\n",
        ),
        (
            "hosts/a/services.yaml",
            "services:\n  web: {grace_period: 0s}\n",
        ),
        (
            "hosts/b/services.yaml",
            "services:\n  db: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    for (node, service) in [("a", "web"), ("b", "db")] {
        probe
            .publish_retained(&format!("homelab/nodes/{node}/status"), "online")
            .await;
        let snap = event(
            node,
            1,
            "node_snapshot",
            None,
            snapshot(&[(service, "running")]),
        );
        probe
            .publish(&format!("homelab/events/{node}"), snap.to_string())
            .await;
    }
    // quiet reports, but its agent never sent a snapshot (for 3 minutes).
    let mut hello = event("quiet", 1, "node_online", None, json!({}));
    hello["ts"] = json!(homelab_core::time::format(
        &(chrono::Utc::now() - chrono::TimeDelta::minutes(3))
    ));
    probe
        .publish("homelab/events/quiet", hello.to_string())
        .await;

    std::fs::remove_file(system.repo.path().join("services/db/service.yaml")).unwrap();
    wait_for("the repo problem as an incident", T, || async {
        incident(&system, "repo_problem:repo")
            .is_some_and(|i| i["message"].as_str().unwrap().contains("services/db"))
    })
    .await;
    let (_, summary) = system.get("/summary").await;
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert!(
        summary["problems"]
            .to_string()
            .contains("services/db: service db has no service.yaml"),
        "{summary}"
    );
    let (_, page) = system.get("/").await;
    assert!(
        page.contains("id=\"problems\"")
            && page.contains("services/db: service db has no service.yaml"),
        "the page shows the problem as a banner"
    );
    wait_for("quiet's missing snapshot as an incident", T, || async {
        incident(&system, "no_snapshot:quiet").is_some()
    })
    .await;

    // Both services stop: a (good file) gets its action from the repo as
    // it is now; b (frozen on its last good state) too, since that state
    // still wants db.
    for (node, service) in [("a", "web"), ("b", "db")] {
        let down = event(
            node,
            2,
            "node_snapshot",
            None,
            snapshot(&[(service, "exited")]),
        );
        probe
            .publish(&format!("homelab/events/{node}"), down.to_string())
            .await;
    }
    for id in ["container-restart-a-web", "container-restart-b-db"] {
        wait_for(id, T, || async {
            system.action_file("pending", id).exists()
        })
        .await;
    }
    // a's file changes: web leaves its desired state, and the change is
    // followed although another host's file is still broken.
    std::fs::write(
        system.repo.path().join("hosts/a/services.yaml"),
        "services:\n  web: {monitor: false}\n",
    )
    .unwrap();
    wait_for("a follows the repo", T, || async {
        system
            .action_file("cancelled", "container-restart-a-web")
            .exists()
    })
    .await;
    system.settle().await;
    assert!(
        system
            .action_file("pending", "container-restart-b-db")
            .exists(),
        "b's action is not cancelled because its definition is unreadable"
    );
    system.stop().await.unwrap();
}
