//! The supervisor's rules seen from outside: events in over MQTT, action
//! files, the event log and the HTTP API out.

use std::time::Duration;

use homelab_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// Brings node `n1` online with these containers.
async fn online(probe: &Probe, containers: &[(&str, &str)]) {
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;
    probe
        .publish(
            "homelab/events/n1",
            event("n1", 1, "node_snapshot", None, snapshot(containers)).to_string(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_remediation_is_approved_by_policy_and_carried_out() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s, remediation: auto}\n  db: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let mut probe = Probe::connect(system.mqtt, &["homelab/commands/n1"]).await;
    online(&probe, &[("app", "exited"), ("db", "exited")]).await;

    // app (auto): approved by policy, and the command goes out.
    let command = probe.expect("homelab/commands/n1", T, |_| true).await;
    let command: Value = serde_json::from_slice(&command).unwrap();
    let id = "container-restart-n1-app";
    assert_eq!(command["action_id"], id);
    assert_eq!(command["type"], "container_restart");
    let running = read_json(&system.action_file("running", id)).unwrap();
    let history = running["history"].as_array().unwrap();
    assert_eq!(history[1]["state"], "approved");
    assert_eq!(history[1]["by"], "policy");
    assert!(
        history[1]["why"]
            .as_str()
            .unwrap()
            .contains("approved by policy"),
        "{history:?}"
    );

    // db (propose): waits for a human.
    let db = "container-restart-n1-db";
    wait_for("db pending", T, || async {
        system.action_file("pending", db).exists()
    })
    .await;
    system.settle().await;
    assert!(
        system.action_file("pending", db).exists(),
        "not approved by policy"
    );
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_events_alert_once_and_show_as_incidents() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: home}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  homeassistant: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    online(&probe, &[("homeassistant", "running")]).await;
    for seq in [2, 3] {
        let failed = event(
            "n1",
            seq,
            "ha_integration_failed",
            None,
            json!({"integration": "zha"}),
        );
        probe.publish("homelab/events/n1", failed.to_string()).await;
    }

    // One alert event in the log, from the supervisor, with the count…
    wait_for("an alert in the event log", T, || async {
        system.logged("n1").iter().any(|e| e["type"] == "alert")
    })
    .await;
    // …and an incident in the API.
    wait_for("the alert as an incident", T, || async {
        let (status, body) = system.get("/api/incidents").await;
        status == 200 && body.contains("ha_integration_failed:n1")
    })
    .await;
    system.settle().await;
    let alerts: Vec<Value> = system
        .logged("n1")
        .into_iter()
        .filter(|e| e["type"] == "alert")
        .collect();
    assert_eq!(alerts.len(), 1, "one alert within the cooldown: {alerts:?}");
    assert_eq!(alerts[0]["source"], "supervisor");
    assert_eq!(alerts[0]["data"]["trigger"], "ha_integration_failed");
    assert_eq!(alerts[0]["data"]["count"], 2);
    let (_, incidents) = system.get("/api/incidents").await;
    let incidents: Value = serde_json::from_str(&incidents).unwrap();
    let incident = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "ha_integration_failed:n1")
        .unwrap();
    assert_eq!(incident["count"], 2);
    // Alert only: no action.
    let (_, actions) = system.get("/api/actions?state=all").await;
    assert_eq!(actions.trim(), "[]");
    // The alert does not count as the node reporting: its watermark is
    // the agent's seq, untouched.
    let nodes = read_json(&system.root().join("world/nodes.json")).unwrap();
    assert_eq!(nodes[0]["last_seq"], 3);
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_holds_actions_and_marks_incidents() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n  web: {grace_period: 0s}\n",
        ),
        (
            "inventory/maintenance.yaml",
            "windows:\n  - {name: always, node: n1, services: [app], cron: '* * * * *', duration: 2m}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    online(&probe, &[("app", "exited"), ("web", "exited")]).await;

    // web (outside the window) gets its action; app does not.
    wait_for("web pending", T, || async {
        system
            .action_file("pending", "container-restart-n1-web")
            .exists()
    })
    .await;
    wait_for("app's incident marked as in maintenance", T, || async {
        read_json(&system.root().join("world/incidents.json")).is_ok_and(|v| {
            v.as_array().unwrap().iter().any(|i| {
                i["id"] == "service_not_running:n1:app" && i["maintenance"]["window"] == "always"
            })
        })
    })
    .await;
    system.settle().await;
    assert!(!system
        .action_file("pending", "container-restart-n1-app")
        .exists());
    let incidents = read_json(&system.root().join("world/incidents.json")).unwrap();
    let web = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "service_not_running:n1:web")
        .unwrap();
    assert!(web.get("maintenance").is_none(), "{web}");
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_to_the_alias_the_node_reports_under() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  vps: {role: edge, aliases: [node-1]}\n",
        ),
        (
            "hosts/vps/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let mut probe = Probe::connect(system.mqtt, &["homelab/commands/+"]).await;
    probe
        .publish_retained("homelab/nodes/node-1/status", "online")
        .await;
    let snapshot = event(
        "node-1",
        1,
        "node_snapshot",
        None,
        snapshot(&[("app", "exited")]),
    );
    probe
        .publish("homelab/events/node-1", snapshot.to_string())
        .await;

    let id = "container-restart-vps-app";
    wait_for("pending under the canonical name", T, || async {
        system.action_file("pending", id).exists()
    })
    .await;
    let pending = read_json(&system.action_file("pending", id)).unwrap();
    assert_eq!(pending["node"], "vps");
    assert_eq!(pending["target"], "node-1");
    let (status, body) = system
        .post(&format!("/api/actions/{id}/approve"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let command = probe.expect("homelab/commands/node-1", T, |_| true).await;
    let command: Value = serde_json::from_slice(&command).unwrap();
    assert_eq!(command["action_id"], id);
    assert_eq!(command["node"], "node-1");
    system.stop().await.unwrap();
}
