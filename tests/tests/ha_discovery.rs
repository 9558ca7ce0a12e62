//! Home Assistant MQTT discovery on the bus, as Home Assistant (or
//! `mosquitto_sub`) reads it: retained configs for each node and monitored
//! service and the summary, republished when Home Assistant announces
//! itself, cleared when what they describe leaves the repo, and configs
//! left over from an earlier run cleared too.

use std::time::Duration;

use homelab_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn config(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_configs_follow_the_repo_and_home_assistant() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  n2: {role: edge}\n",
        ),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n  db: {}\n"),
    ]);
    let system = System::start(repo, Options::default()).await;
    let mut probe = Probe::connect(system.mqtt, &["homeassistant/#", "homelab/state/#"]).await;
    probe
        .report("n1", "online", &[("app", "running"), ("db", "exited")])
        .await;

    let app = "homeassistant/binary_sensor/homelab/homelab_n1_app_problem/config";
    let n2 = "homeassistant/binary_sensor/homelab/homelab_n2_connectivity/config";
    let db_state = "homelab/state/services/n1/db";
    let seen = probe
        .latest_until(T, |m| {
            m.get(app).is_some_and(|p| !p.is_empty())
                && m.contains_key(n2)
                && m.get(db_state)
                    .is_some_and(|p| config(p)["status"] == "not_running")
        })
        .await;
    let app_config = config(&seen[app]);
    assert_eq!(app_config["state_topic"], "homelab/state/services/n1/app");
    assert_eq!(app_config["device_class"], "problem");
    assert_eq!(app_config["device"]["identifiers"][0], "homelab_node_n1");
    assert_eq!(
        app_config["availability"][0]["topic"],
        "homelab/nodes/n1/status"
    );
    // n2 never reported: its device is there all the same.
    let n2_config = config(&seen[n2]);
    assert_eq!(n2_config["state_topic"], "homelab/nodes/n2/status");
    assert_eq!(n2_config["payload_on"], "online");

    // Home Assistant restarts and says so: every config comes again.
    probe.publish("homeassistant/status", "online").await;
    probe.expect(app, T, |p| !p.is_empty()).await;
    probe
        .expect(
            "homeassistant/sensor/homelab/homelab_pending_actions/config",
            T,
            |p| config(p)["state_topic"] == "homelab/state/summary",
        )
        .await;

    // db leaves the repo and n2 the inventory: their entities are
    // removed, not left as ghosts.
    std::fs::write(
        system.repo.path().join("hosts/n1/services.yaml"),
        "services:\n  app: {}\n",
    )
    .unwrap();
    std::fs::write(
        system.repo.path().join("inventory/topology.yaml"),
        "nodes:\n  n1: {role: server}\n",
    )
    .unwrap();
    let db = "homeassistant/binary_sensor/homelab/homelab_n1_db_problem/config";
    probe
        .latest_until(T, |m| {
            m.get(db).is_some_and(|p| p.is_empty()) && m.get(n2).is_some_and(|p| p.is_empty())
        })
        .await;

    // A config of ours from an earlier run, for a node long gone, is
    // cleared; someone else's under the prefix is left alone.
    let ghost = "homeassistant/sensor/homelab/homelab_gone_disk_use/config";
    let theirs = "homeassistant/sensor/zigbee2mqtt/kitchen_temp/config";
    probe
        .publish_retained(theirs, r#"{"name":"Kitchen"}"#)
        .await;
    probe
        .publish_retained(ghost, r#"{"name":"Disk use","state_topic":"x"}"#)
        .await;
    let seen = probe.until(ghost, T, |p| p.is_empty()).await;
    assert!(
        !seen.iter().any(|(t, p)| t == theirs && p.is_empty()),
        "another integration's config is not ours to clear"
    );
    // What stays retained: a new subscriber (Home Assistant starting) gets
    // app's config and neither db's nor the ghost's.
    let mut late = Probe::connect(system.mqtt, &["homeassistant/+/homelab/+/config"]).await;
    let retained = late
        .until(app, T, |p| !p.is_empty())
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect::<Vec<_>>();
    assert!(
        !retained
            .iter()
            .any(|t| t.contains("db_problem") || t.contains("gone")),
        "{retained:?}"
    );
    system.stop().await.unwrap();
}

/// With `--ha-buttons` (open mode): a pending action gets approve and
/// reject buttons; pressing approve (what Home Assistant publishes)
/// approves it, and the buttons go when it is no longer pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_approve_a_pending_action_and_go_when_it_is_decided() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ]);
    let options = Options {
        ha_buttons: true,
        ..Options::default()
    };
    let system = System::start(repo, options).await;
    let mut probe = Probe::connect(system.mqtt, &["homeassistant/button/#"]).await;
    probe.report("n1", "online", &[("app", "exited")]).await;
    let id = "container-restart-n1-app";
    let approve = format!("homeassistant/button/homelab/homelab_{id}_approve/config");
    let reject = format!("homeassistant/button/homelab/homelab_{id}_reject/config");
    let seen = probe
        .latest_until(T, |m| {
            m.get(&approve).is_some_and(|p| !p.is_empty()) && m.contains_key(&reject)
        })
        .await;
    let button = config(&seen[&approve]);
    assert_eq!(button["device"]["identifiers"][0], "homelab_node_n1");
    // Home Assistant presses it: it publishes payload_press on command_topic.
    probe
        .publish(
            button["command_topic"].as_str().unwrap(),
            button["payload_press"].as_str().unwrap(),
        )
        .await;
    wait_for("approved by home-assistant", T, || async {
        ["approved", "running", "completed", "failed"]
            .iter()
            .any(|state| {
                read_json(&system.action_file(state, id)).is_ok_and(|a| {
                    a["history"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|t| t["state"] == "approved" && t["by"] == "mqtt:home-assistant")
                })
            })
    })
    .await;
    probe
        .latest_until(T, |m| {
            m.get(&approve).is_some_and(|p| p.is_empty())
                && m.get(&reject).is_some_and(|p| p.is_empty())
        })
        .await;
    system.stop().await.unwrap();
}
