//! Home Assistant MQTT discovery on the bus, as Home Assistant (or
//! `mosquitto_sub`) reads it, in both forms (a config per device, the
//! default, and a config per entity): retained configs for each node and
//! monitored service and the summary, republished when Home Assistant
//! announces itself, removed when what they describe leaves the repo,
//! configs left over from an earlier run cleared too, and an upgrade from
//! the per-component form migrated entity by entity.

use std::collections::BTreeMap;
use std::time::Duration;

use homelab_observer::discovery::{self, Form};
use homelab_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn config(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or(Value::Null)
}

/// An entity's config as Home Assistant takes it from what is retained,
/// by its per-component topic (`<prefix>/<component>/homelab/<object
/// id>/config`): that topic's config, or in the device form the entry in
/// its device's `cmps` (with the device as `device`). `None` when it is
/// not there or is being removed.
fn entity(m: &BTreeMap<String, Vec<u8>>, form: Form, topic: &str) -> Option<Value> {
    match form {
        Form::PerComponent => m.get(topic).filter(|p| !p.is_empty()).map(|p| config(p)),
        Form::Device => {
            let object_id = topic.split('/').nth(3)?;
            m.iter()
                .filter(|(t, _)| t.starts_with("homeassistant/device/homelab/"))
                .find_map(|(_, p)| {
                    let device = config(p);
                    let mut entity = device["cmps"].get(object_id)?.clone();
                    // `{"p": …}` alone: Home Assistant removes it.
                    if entity.as_object()?.len() == 1 {
                        return None;
                    }
                    entity["device"] = device["dev"].clone();
                    Some(entity)
                })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_configs_follow_the_repo_and_home_assistant() {
    follow_the_repo(Form::Device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_component_configs_follow_the_repo_and_home_assistant() {
    follow_the_repo(Form::PerComponent).await;
}

async fn follow_the_repo(form: Form) {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  n2: {role: edge}\n",
        ),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n  db: {}\n"),
    ]);
    let options = Options {
        ha_form: form,
        ..Options::default()
    };
    let system = System::start(repo, options).await;
    let mut probe = Probe::connect(system.mqtt, &["homeassistant/#", "homelab/state/#"]).await;
    probe
        .report("n1", "online", &[("app", "running"), ("db", "exited")])
        .await;

    let app = "homeassistant/binary_sensor/homelab/homelab_n1_app_problem/config";
    let n2 = "homeassistant/binary_sensor/homelab/homelab_n2_connectivity/config";
    let db_state = "homelab/state/services/n1/db";
    let seen = probe
        .latest_until(T, |m| {
            entity(m, form, app).is_some()
                && entity(m, form, n2).is_some()
                && m.get(db_state)
                    .is_some_and(|p| config(p)["status"] == "not_running")
        })
        .await;
    let app_config = entity(&seen, form, app).unwrap();
    assert_eq!(
        app_config["default_entity_id"],
        "binary_sensor.homelab_n1_app_problem"
    );
    assert_eq!(app_config["unique_id"], "homelab_n1_app_problem");
    assert_eq!(app_config["state_topic"], "homelab/state/services/n1/app");
    assert_eq!(app_config["device_class"], "problem");
    assert_eq!(app_config["device"]["identifiers"][0], "homelab_node_n1");
    assert_eq!(
        app_config["availability"][0]["topic"],
        "homelab/nodes/n1/status"
    );
    // n2 never reported: its device is there all the same.
    let n2_config = entity(&seen, form, n2).unwrap();
    assert_eq!(n2_config["state_topic"], "homelab/nodes/n2/status");
    assert_eq!(n2_config["payload_on"], "online");
    let (n1_topic, n1_other) = match form {
        Form::Device => (
            "homeassistant/device/homelab/homelab_node_n1/config",
            "homeassistant/binary_sensor/homelab/homelab_n1_app_problem/config",
        ),
        Form::PerComponent => (app, "homeassistant/device/homelab/homelab_node_n1/config"),
    };
    if form == Form::Device {
        let n1 = config(&seen[n1_topic]);
        assert_eq!(n1["o"]["name"], "homelab");
        assert_eq!(n1["cmps"]["homelab_n1_app_problem"]["p"], "binary_sensor");
    }
    assert!(
        !seen.contains_key(n1_other),
        "one form only: {:?}",
        seen.keys()
    );

    // Home Assistant restarts and says so: every config comes again.
    probe.publish("homeassistant/status", "online").await;
    let pending = "homeassistant/sensor/homelab/homelab_pending_actions/config";
    probe
        .latest_until(T, |m| {
            entity(m, form, app).is_some()
                && entity(m, form, pending)
                    .is_some_and(|c| c["state_topic"] == "homelab/state/summary")
        })
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
    let n2_device = "homeassistant/device/homelab/homelab_node_n2/config";
    let seen = probe
        .latest_until(T, |m| match form {
            Form::PerComponent => {
                m.get(db).is_some_and(|p| p.is_empty()) && m.get(n2).is_some_and(|p| p.is_empty())
            }
            // db's entry is marked for removal; n2's device config goes.
            Form::Device => {
                m.get(n1_topic).is_some_and(|p| {
                    config(p)["cmps"]["homelab_n1_db_problem"]
                        == serde_json::json!({"p": "binary_sensor"})
                }) && m.get(n2_device).is_some_and(|p| p.is_empty())
            }
        })
        .await;
    assert!(entity(&seen, form, db).is_none());

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
    let retained = late.until(n1_topic, T, |p| !p.is_empty()).await;
    let topics: Vec<&String> = retained.iter().map(|(t, _)| t).collect();
    assert!(
        !topics
            .iter()
            .any(|t| t.contains("db_problem") || t.contains("gone") || t.contains("n2")),
        "{topics:?}"
    );
    let retained: BTreeMap<String, Vec<u8>> = retained.into_iter().collect();
    assert!(entity(&retained, form, app).is_some());
    system.stop().await.unwrap();
}

/// An upgrade from a homelab that published the per-component form: its
/// retained configs are marked for Home Assistant's migration, the device
/// configs follow, and then the old topics are cleared; what stays
/// retained is the device form alone, with the same unique ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_per_component_configs_migrates_them() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:
  n1: {role: server}
",
        ),
        (
            "hosts/n1/services.yaml",
            "services:
  app: {}
",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let mut probe = Probe::connect(system.mqtt, &["homeassistant/#"]).await;
    let device = "homeassistant/device/homelab/homelab_node_n1/config";
    probe.expect(device, T, |p| !p.is_empty()).await;

    // What the older homelab left retained, as it published it.
    let inputs = discovery::Inputs {
        nodes: BTreeMap::from([(name("n1"), name("n1"))]),
        services: BTreeMap::from([(name("n1"), [name("app")].into())]),
        version: "0.0.9".into(),
        ..Default::default()
    };
    let old = discovery::configs(
        &homelab_core::Topics::default(),
        "homeassistant",
        &inputs,
        Form::PerComponent,
    );
    for (topic, payload) in &old {
        probe.publish_retained(topic, payload.as_bytes()).await;
    }
    // Each old topic: the migration mark, then (after the device configs
    // again) cleared.
    let app = "homeassistant/binary_sensor/homelab/homelab_n1_app_problem/config";
    let seen = probe.until(app, T, |p| p.is_empty()).await;
    let at = |topic: &str, payload: &[u8]| {
        seen.iter()
            .position(|(t, p)| t == topic && p == payload)
            .unwrap_or_else(|| panic!("{topic} {:?} not seen", String::from_utf8_lossy(payload)))
    };
    let marked = at(app, discovery::MIGRATE);
    let again = seen
        .iter()
        .rposition(|(t, p)| t == device && !p.is_empty())
        .expect("the device config again");
    assert!(marked < again && again < seen.len() - 1, "{seen:?}");
    let n1 = config(&seen[again].1);
    assert_eq!(
        n1["cmps"]["homelab_n1_app_problem"]["unique_id"],
        "homelab_n1_app_problem"
    );
    // Only the device form stays retained.
    let mut late = Probe::connect(system.mqtt, &["homeassistant/+/homelab/+/config"]).await;
    let retained = late.until(device, T, |p| !p.is_empty()).await;
    wait_for("every old config cleared", T, || async {
        let mut check = Probe::connect(system.mqtt, &["homeassistant/+/homelab/+/config"]).await;
        let seen = check.until(device, T, |p| !p.is_empty()).await;
        seen.iter().all(|(t, _)| t.contains("/device/"))
    })
    .await;
    assert!(retained.iter().any(|(t, _)| t == device));
    system.stop().await.unwrap();
}

fn name(s: &str) -> homelab_core::Name {
    homelab_core::Name::parse(s).unwrap()
}

/// With `--ha-buttons` (open mode): a pending action gets approve and
/// reject buttons; pressing approve (what Home Assistant publishes)
/// approves it, and the buttons go when it is no longer pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_approve_a_pending_action_and_go_when_it_is_decided() {
    buttons(Form::Device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_component_buttons_approve_and_go() {
    buttons(Form::PerComponent).await;
}

async fn buttons(form: Form) {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ]);
    let options = Options {
        ha_buttons: true,
        ha_form: form,
        ..Options::default()
    };
    let system = System::start(repo, options).await;
    let mut probe = Probe::connect(
        system.mqtt,
        &["homeassistant/button/#", "homeassistant/device/#"],
    )
    .await;
    probe.report("n1", "online", &[("app", "exited")]).await;
    let id = "container-restart-n1-app";
    let approve = format!("homeassistant/button/homelab/homelab_{id}_approve/config");
    let reject = format!("homeassistant/button/homelab/homelab_{id}_reject/config");
    let seen = probe
        .latest_until(T, |m| {
            entity(m, form, &approve).is_some() && entity(m, form, &reject).is_some()
        })
        .await;
    let button = entity(&seen, form, &approve).unwrap();
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
        .latest_until(T, |m| match form {
            Form::PerComponent => {
                m.get(&approve).is_some_and(|p| p.is_empty())
                    && m.get(&reject).is_some_and(|p| p.is_empty())
            }
            // Marked for removal in n1's device config.
            Form::Device => m
                .get("homeassistant/device/homelab/homelab_node_n1/config")
                .is_some_and(|p| {
                    let cmps = &config(p)["cmps"];
                    cmps[format!("homelab_{id}_approve")] == serde_json::json!({"p": "button"})
                        && cmps[format!("homelab_{id}_reject")]
                            == serde_json::json!({"p": "button"})
                }),
        })
        .await;
    system.stop().await.unwrap();
}
