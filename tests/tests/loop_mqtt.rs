//! The whole loop over real MQTT, files and HTTP, with a plain MQTT client
//! standing in for a node's agent.

use std::time::Duration;

use homelab_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

fn repo() -> tempfile::TempDir {
    write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  quiet: {role: server}\n",
        ),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n  ha: {monitor: false}\n",
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_to_action_to_command_to_completion() {
    let system = System::start(repo(), Options::default()).await;
    let mut probe = Probe::connect(
        system.mqtt,
        &[
            "homelab/commands/n1",
            "homelab/acks/n1",
            "homelab/state/#",
            "homelab/actions/+",
        ],
    )
    .await;

    // The node comes online and reports its containers: app runs, ha (not
    // monitored) is down.
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;
    let first = event(
        "n1",
        1,
        "node_snapshot",
        None,
        snapshot(&[("app", "running"), ("ha", "exited")]),
    );
    probe.publish("homelab/events/n1", first.to_string()).await;

    // The event log holds it; the watermark says so; world and retained
    // state show the service.
    let acked = probe.expect("homelab/acks/n1", T, |p| p == b"1").await;
    assert_eq!(acked, b"1");
    assert_eq!(system.logged("n1")[0]["id"], first["id"]);
    let state = probe
        .expect("homelab/state/services/n1/app", T, |_| true)
        .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&state).unwrap()["status"],
        "running"
    );
    wait_for("world/services.json lists n1/app", T, || async {
        read_json(&system.root().join("world/services.json")).is_ok_and(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|s| s["node"] == "n1" && s["service"] == "app" && s["status"] == "running")
        })
    })
    .await;
    // A node in the inventory that has not reported yet is waiting for its
    // agent, with the command that starts it: an incident only after the
    // observer's grace (5 min; the pure rule is tested in observer::world).
    wait_for("the node that has not reported, waiting", T, || async {
        let (_, page) = system.get("/").await;
        page.contains(r#"id="node-quiet""#)
            && page.contains("waiting for its agent")
            && page.contains("homelab agent --node quiet")
    })
    .await;
    let incidents = read_json(&system.root().join("world/incidents.json")).unwrap();
    assert!(
        !incidents.to_string().contains("node_never_reported:quiet"),
        "within the grace: {incidents}"
    );

    // app stops: a pending container_restart; nothing for ha (monitor: false).
    probe
        .publish(
            "homelab/events/n1",
            event("n1", 2, "containers_not_running", Some("app"), json!({})).to_string(),
        )
        .await;
    let id = "container-restart-n1-app";
    wait_for("pending container_restart", T, || async {
        system.action_file("pending", id).exists()
    })
    .await;
    let pending = read_json(&system.action_file("pending", id)).unwrap();
    assert_eq!(pending["type"], "container_restart");
    assert_eq!(pending["risk"], "low");
    assert_eq!(pending["reason"], "containers_not_running");
    let listed = system.get("/api/actions?state=pending").await;
    assert_eq!(listed.0, 200);
    let listed: Value = serde_json::from_str(&listed.1).unwrap();
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![id]
    );

    // It recovers before anyone approves: the pending action is cancelled.
    probe
        .publish(
            "homelab/events/n1",
            event("n1", 3, "service_recovered", Some("app"), json!({})).to_string(),
        )
        .await;
    wait_for("cancelled with its reason", T, || async {
        system.action_file("cancelled", id).exists()
    })
    .await;
    let cancelled = read_json(&system.action_file("cancelled", id)).unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(
        cancelled["history"].as_array().unwrap().last().unwrap()["why"],
        "drift_resolved_auto"
    );
    assert!(!system.action_file("pending", id).exists());

    // It stops again: a new pending action, approved over HTTP.
    probe
        .publish(
            "homelab/events/n1",
            event("n1", 4, "containers_not_running", Some("app"), json!({})).to_string(),
        )
        .await;
    wait_for("pending again", T, || async {
        system.action_file("pending", id).exists()
    })
    .await;
    let path = format!("/api/actions/{id}/approve");
    assert_eq!(
        system.post(&path, None, None).await.0,
        401,
        "approval needs the token"
    );
    assert_eq!(system.post(&path, Some("wrong"), None).await.0, 401);
    let (status, body) = system
        .post(
            &path,
            Some(TOKEN),
            Some(r#"{"by":"alice","note":"go ahead"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The executor sends the command to the node's agent.
    let command = probe.expect("homelab/commands/n1", T, |_| true).await;
    let command: Value = serde_json::from_slice(&command).unwrap();
    assert_eq!(command["type"], "container_restart");
    assert_eq!(command["params"]["service"], "app");
    assert_eq!(command["action_id"], id);
    assert!(system.action_file("running", id).exists());

    // The agent reports completion; the action completes with its result.
    let done = outcome("n1", 5, "app", &command);
    probe.publish("homelab/events/n1", done.to_string()).await;
    wait_for("completed", T, || async {
        system.action_file("completed", id).exists()
    })
    .await;
    let completed = read_json(&system.action_file("completed", id)).unwrap();
    assert_eq!(completed["result"]["ok"], true);
    let states: Vec<&str> = completed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["pending", "approved", "running", "completed"]);
    // The token's operator decided; the body's "alice" is not believed.
    assert_eq!(completed["history"][1]["by"], "admin");
    assert_eq!(completed["history"][1]["why"], "go ahead");
    // The retained action topic shows the final state.
    probe
        .expect(&format!("homelab/actions/{id}"), T, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|a| a["state"] == "completed")
        })
        .await;

    // A repeated delivery of an event is stored once.
    probe.publish("homelab/events/n1", first.to_string()).await;
    probe
        .publish(
            "homelab/events/n1",
            event("n1", 6, "service_recovered", Some("app"), json!({})).to_string(),
        )
        .await;
    probe.expect("homelab/acks/n1", T, |p| p == b"6").await;
    let logged = system.logged("n1");
    let seqs: Vec<u64> = logged.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "each event once, in order");

    // The read side of the API.
    let (status, summary) = system.get("/summary").await;
    assert_eq!(status, 200);
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["nodes"]["online"], 1);
    let (_, completed_list) = system.get("/api/actions?state=completed").await;
    assert!(completed_list.contains(id));
    let (_, events) = system
        .get("/api/events?node=n1&type=remediation_completed")
        .await;
    let events: Value = serde_json::from_str(&events).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);
    let (status, metrics) = system.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("homelab_events_stored_total"), "{metrics}");
    let (status, page) = system.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"id="node-n1""#), "n1's card: {page}");
    let (status, page) = system.get("/nodes/n1").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<td data-label="service">app</td>"#) && page.contains(id),
        "n1's page: its container and the action: {page}"
    );

    // app recovered (seq 6): its incident closed, and is kept with when.
    let history = system.root().join("world/incident_history.json");
    wait_for("app's incident in the history", T, || async {
        read_json(&history).is_ok_and(|h| {
            h.as_array()
                .unwrap()
                .iter()
                .any(|i| i["node"] == "n1" && i["service"] == "app" && i["resolved_at"].is_string())
        })
    })
    .await;
    let closed = read_json(&history).unwrap();
    let closed = closed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == "app")
        .unwrap();
    let incident_id = closed["id"].as_str().unwrap();
    let (_, page) = system.get("/incidents").await;
    let resolved = page
        .split(r#"id="resolved""#)
        .nth(1)
        .expect("a resolved table");
    assert!(resolved.contains(incident_id), "{page}");
    let (status, page) = system
        .get(&format!("/incidents/{}", incident_id.replace(':', "%3A")))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("service_recovered") && page.contains("resolved"),
        "its timeline ends with the recovery: {page}"
    );

    system.stop().await.unwrap();
}

/// A system in which node n1 is online and its service app has stopped, with
/// the pending `container-restart-n1-app` proposed.
async fn with_pending_restart() -> (System, Probe) {
    let system = System::start(repo(), Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;
    let snapshot = event(
        "n1",
        1,
        "node_snapshot",
        None,
        snapshot(&[("app", "exited")]),
    );
    probe
        .publish("homelab/events/n1", snapshot.to_string())
        .await;
    wait_for("pending", T, || async {
        system
            .action_file("pending", "container-restart-n1-app")
            .exists()
    })
    .await;
    (system, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_and_the_race_with_cancel() {
    let (system, probe) = with_pending_restart().await;
    let id = "container-restart-n1-app";

    // Rejected over MQTT, as Home Assistant would.
    probe
        .publish(
            &format!("homelab/actions/{id}/reject"),
            r#"{"by":"ha","note":"not now"}"#,
        )
        .await;
    wait_for("rejected", T, || async {
        system.action_file("rejected", id).exists()
    })
    .await;
    let rejected = read_json(&system.action_file("rejected", id)).unwrap();
    assert_eq!(rejected["history"][1]["by"], "mqtt:ha");

    // The loser of a race is told where the action is now.
    let (status, body) = system
        .post(&format!("/api/actions/{id}/approve"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("is rejected, not pending"), "{body}");
    // And the same drift is not proposed again behind the operator's back.
    system.settle().await;
    assert!(!system.action_file("pending", id).exists());
    let (status, _) = system
        .post("/api/actions/no-such-action/approve", Some(TOKEN), None)
        .await;
    assert_eq!(status, 404);
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_node_gets_a_node_incident_not_redeploys() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  edge: {role: edge-lte}\n"),
        ("hosts/edge/services.yaml", "services:\n  a: {grace_period: 0s}\n  b: {grace_period: 0s}\n  c: {grace_period: 0s}\n"),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    // It reported once, with none of its services, then went offline (its
    // Last Will).
    probe
        .publish(
            "homelab/events/edge",
            event("edge", 1, "node_snapshot", None, snapshot(&[])).to_string(),
        )
        .await;
    probe
        .publish_retained("homelab/nodes/edge/status", "offline")
        .await;
    wait_for("node incident", T, || async {
        read_json(&system.root().join("world/incidents.json"))
            .is_ok_and(|v| v.to_string().contains("node_offline:edge"))
    })
    .await;
    system.settle().await;
    let pending = system.root().join("actions/pending");
    let count = std::fs::read_dir(&pending).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count, 0, "no per-service actions for an offline node");

    // Back online: its missing services are judged again.
    probe
        .publish_retained("homelab/nodes/edge/status", "online")
        .await;
    wait_for("redeploys once online", T, || async {
        ["a", "b", "c"].iter().all(|s| {
            system
                .action_file("pending", &format!("redeploy-edge-{s}"))
                .exists()
        })
    })
    .await;
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_reloads_and_a_broken_file_keeps_the_last_good_one() {
    let (system, _probe) = with_pending_restart().await;
    let id = "container-restart-n1-app";

    // A file that does not parse is never read as "no services": the
    // pending action stays.
    let services = system.repo.path().join("hosts/n1/services.yaml");
    std::fs::write(&services, "services: [\n").unwrap();
    // The supervisor read the broken file (its status says so), and had a
    // pass after it.
    wait_for("the problem seen", T, || async {
        read_json(&system.root().join("state/supervisor/status.json"))
            .is_ok_and(|s| s["repo_problems"].to_string().contains("services.yaml"))
    })
    .await;
    system.settle().await;
    assert!(
        system.action_file("pending", id).exists(),
        "a broken file must not cancel anything"
    );
    let (_, metrics) = system.get("/metrics").await;
    assert!(
        metrics.contains("homelab_desired_state_errors_total"),
        "the error is counted"
    );

    // Fixed, without the service: reloaded without a restart, and the
    // pending action is cancelled for that reason.
    std::fs::write(&services, "services:\n  ha: {monitor: false}\n").unwrap();
    wait_for(
        "cancelled as removed from desired state",
        Duration::from_secs(20),
        || async { system.action_file("cancelled", id).exists() },
    )
    .await;
    let cancelled = read_json(&system.action_file("cancelled", id)).unwrap();
    assert_eq!(
        cancelled["history"].as_array().unwrap().last().unwrap()["why"],
        "service_removed_from_desired_state"
    );
    system.stop().await.unwrap();
}
