//! `/metrics` as Prometheus scrapes it: besides the counters, the gauges of
//! what is now (node up, open incidents, open actions by state, each
//! agent's outbox backlog) and the HTTP latency per route.

use std::time::Duration;

use homelab_tests::*;

/// The value of the sample `line` (name and labels exactly), if present.
fn sample(metrics: &str, line: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_what_is_up_what_waits_and_how_fast_pages_answer() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  n2: {role: edge}\n",
        ),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    // n1 online with app down (a pending restart), n2 offline; n2's agent
    // says 7 events wait in its outbox, the oldest for about a minute.
    probe.report("n1", "online", &[("app", "exited")]).await;
    probe.report("n2", "offline", &[]).await;
    let oldest = homelab_core::time::format(&(chrono::Utc::now() - chrono::Duration::seconds(60)));
    probe
        .publish_retained(
            "homelab/nodes/n2/agent",
            format!(
                r#"{{"node":"n2","connected":false,"outbox_events":7,"oldest_unacked":"{oldest}"}}"#
            ),
        )
        .await;
    wait_for("the restart proposed", Duration::from_secs(30), || async {
        system
            .action_file("pending", "container-restart-n1-app")
            .exists()
    })
    .await;
    let (status, _) = system.get("/api/nodes").await;
    assert_eq!(status, 200);

    let wanted = [
        (r#"homelab_node_up{node="n1"}"#, Some(1.0)),
        (r#"homelab_node_up{node="n2"}"#, Some(0.0)),
        (r#"homelab_actions{state="pending"}"#, Some(1.0)),
        (r#"homelab_actions{state="running"}"#, Some(0.0)),
        (r#"homelab_node_outbox_events{node="n2"}"#, Some(7.0)),
    ];
    wait_for("the gauges", Duration::from_secs(30), || async {
        let metrics = system.get("/metrics").await.1;
        wanted
            .iter()
            .all(|(line, value)| sample(&metrics, line) == *value)
    })
    .await;
    let metrics = system.get("/metrics").await.1;
    let age = sample(
        &metrics,
        r#"homelab_node_oldest_unacked_seconds{node="n2"}"#,
    )
    .unwrap();
    assert!((55.0..600.0).contains(&age), "{age}");
    // An offline node that should report is an incident.
    assert!(
        sample(&metrics, "homelab_incidents_open").unwrap() >= 1.0,
        "{metrics}"
    );
    // Latency per route (a summary: quantiles, count and sum).
    let count = sample(
        &metrics,
        r#"homelab_http_request_duration_seconds_count{method="GET",route="/api/nodes"}"#,
    )
    .unwrap_or_else(|| panic!("no latency of /api/nodes in {metrics}"));
    assert!(count >= 1.0);
    assert!(
        metrics.contains("homelab_reconcile_duration_seconds"),
        "reconcile duration"
    );
    assert!(
        sample(&metrics, "homelab_events_stored_total").unwrap() >= 2.0,
        "events ingested"
    );
    system.stop().await.unwrap();
}
