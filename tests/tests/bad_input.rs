//! Bad input from outside: each is rejected with a log line and a counter,
//! nothing is written for it (and nothing outside the root), and the
//! process keeps serving.

use std::time::Duration;

use homelab_tests::*;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

fn counter(metrics: &str, name: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_counted_and_harmless() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {}\n"),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n"),
    ]);
    let system = System::start(repo, Options::default()).await;
    let mut probe = Probe::connect(system.mqtt, &["homelab/acks/+"]).await;
    let before = system.get("/metrics").await.1;

    let good = event("n1", 1, "service_healthy", Some("app"), json!({}));
    let mut wrong_node = good.clone();
    wrong_node["node"] = json!("n2");
    let mut bad_service = event("n1", 2, "containers_not_running", None, json!({}));
    bad_service["service"] = json!("../../etc");
    let mut bad_node = good.clone();
    bad_node["node"] = json!("../n1");
    let mut unknown_field = good.clone();
    unknown_field["extra"] = json!(1);
    let oversize = event("n1", 3, "x", None, json!({"blob": "x".repeat(70 * 1024)}));

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("homelab/events/n1", b"{not json".to_vec(), "malformed"),
        (
            "homelab/events/n1",
            wrong_node.to_string().into_bytes(),
            "node_mismatch",
        ),
        (
            "homelab/events/n1",
            bad_service.to_string().into_bytes(),
            "malformed",
        ),
        (
            "homelab/events/n1",
            bad_node.to_string().into_bytes(),
            "malformed",
        ),
        (
            "homelab/events/n1",
            unknown_field.to_string().into_bytes(),
            "malformed",
        ),
        (
            "homelab/events/n1",
            oversize.to_string().into_bytes(),
            "oversize",
        ),
        (
            "homelab/events/bad..name",
            good.to_string().into_bytes(),
            "bad_name",
        ),
    ];
    for (topic, payload, _) in &cases {
        probe.publish(topic, payload.clone()).await;
    }
    // Upper case is folded, not rejected.
    let mut upper = event("n1", 1, "service_healthy", Some("App"), json!({}));
    upper["node"] = json!("N1");
    probe.publish("homelab/events/N1", upper.to_string()).await;

    // The good one lands and is acknowledged: everything before it was
    // handled.
    probe.expect("homelab/acks/n1", T, |p| p == b"1").await;
    let logged = system.logged("n1");
    assert_eq!(
        logged.len(),
        1,
        "only the valid event is stored: {logged:?}"
    );
    assert_eq!(logged[0]["node"], "n1");
    assert_eq!(logged[0]["service"], "app");

    let after = system.get("/metrics").await.1;
    for reason in ["malformed", "node_mismatch", "oversize", "bad_name"] {
        let expected = cases.iter().filter(|c| c.2 == reason).count() as u64;
        let grew = counter(&after, "homelab_events_rejected_total", reason)
            - counter(&before, "homelab_events_rejected_total", reason);
        assert!(
            grew >= expected,
            "{reason}: counter grew by {grew}, expected {expected}\n{after}"
        );
    }

    // Nothing was written for them: the log has only n1's folder, and the
    // root only the runtime layout.
    let day = system
        .event_log("n1")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let nodes: Vec<String> = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(nodes, vec!["n1"]);
    let mut top: Vec<String> = std::fs::read_dir(system.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    top.sort();
    for entry in &top {
        assert!(
            ["actions", "config", "events", "state", "world"].contains(&entry.as_str()),
            "unexpected {entry} in root"
        );
    }
    let parent = system.root().parent().unwrap();
    assert!(!parent.join("etc").exists() && !parent.join("n1").exists());

    // Still serving.
    assert_eq!(system.get("/healthz").await.0, 200);
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_and_mqtt_requests_get_clear_errors() {
    let repo = write_repo(&[("inventory/topology.yaml", "nodes:\n  n1: {}\n")]);
    let system = System::start(repo, Options::default()).await;

    let check = |got: (u16, String), status: u16, words: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert!(
            got.1.contains(words),
            "{:?} should mention {words:?}",
            got.1
        );
    };
    check(
        system
            .post("/api/actions/..%2Fetc/approve", Some(TOKEN), None)
            .await,
        400,
        "bad action id",
    );
    check(
        system
            .post("/api/actions/UPPER..x/approve", Some(TOKEN), None)
            .await,
        400,
        "bad action id",
    );
    check(
        system
            .post(
                "/api/actions/redeploy-n1-app/approve",
                Some(TOKEN),
                Some("{"),
            )
            .await,
        400,
        "bad request body",
    );
    check(
        system
            .post(
                "/api/actions/redeploy-n1-app/approve",
                Some(TOKEN),
                Some(r#"{"by":"x","evil":1}"#),
            )
            .await,
        400,
        "unknown field",
    );
    check(
        system
            .post("/api/actions/redeploy-n1-app/approve", Some(TOKEN), None)
            .await,
        404,
        "no action",
    );
    check(
        system
            .post("/api/actions/redeploy-n1-app/reject", None, None)
            .await,
        401,
        "operator's token",
    );
    check(
        system.get("/api/actions?state=bogus").await,
        400,
        "unknown state",
    );
    check(system.get("/api/events?node=../x").await, 400, "bad node");
    check(
        system.get("/api/events?since=yesterday").await,
        400,
        "bad since",
    );

    // A decision over MQTT with a malformed payload changes nothing.
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe
        .publish("homelab/actions/redeploy-n1-app/approve", "not json")
        .await;
    wait_for("decision counted as rejected", T, || async {
        counter(
            &system.get("/metrics").await.1,
            "homelab_decisions_rejected_total",
            "malformed",
        ) >= 1
    })
    .await;
    let approved = std::fs::read_dir(system.root().join("actions/approved"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(approved, 0, "nothing approved");
    assert_eq!(system.get("/healthz").await.0, 200);
    system.stop().await.unwrap();
}
