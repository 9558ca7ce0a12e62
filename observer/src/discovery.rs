//! Home Assistant MQTT discovery: what the observer publishes, retained,
//! so Home Assistant shows the homelab as devices and entities. Pure: the
//! configs follow from the inventory, the desired services, the nodes seen
//! and the pending actions; publishing, clearing what is gone and
//! republishing when Home Assistant comes back are the caller's (through
//! `retained_sends`).
//!
//! Two forms ([`Form`]):
//! - **device** (the default; Home Assistant 2024.11 and later): one
//!   config per device, `<prefix>/device/homelab/<device id>/config`, with
//!   `dev`, the origin `o` and every entity under `cmps`. Home Assistant
//!   does about a third less work per device than for one config per
//!   entity. An entity that goes (a decided action's buttons) stays in the
//!   next config as `{"p": <platform>}`, which is how Home Assistant is told
//!   to remove it ([`with_removals`]).
//! - **per component** (`--ha-discovery-form per-component`, for Home
//!   Assistant before 2024.11): `<prefix>/<component>/homelab/<object
//!   id>/config`, one per entity, each with its device.
//!
//! Every entity carries `unique_id`, `default_entity_id` (Home Assistant
//! 2025.10 and later take the entity id from it: `sensor.homelab_vps_disk_use`)
//! and `object_id` (what older versions take it from), so the entity ids
//! are the documented ones on every version. The node id level `homelab`
//! keeps our configs apart, so the observer finds and clears the ones it no
//! longer wants; moving from the per-component form to the device form
//! goes through Home Assistant's migration ([`migration_order`]), so the
//! entities keep their ids, history and settings and no ghost is left.

use std::collections::{BTreeMap, BTreeSet};

use homelab_core::topics::{Discovery, Verdict};
use homelab_core::{Name, Topics};
use serde_json::{json, Value};

/// The node id level of every config topic: ours.
pub use homelab_core::topics::DISCOVERY_NODE_ID as NODE_ID;

/// Which discovery form is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// One config per device (Home Assistant 2024.11 and later).
    #[default]
    Device,
    /// One config per entity (every version).
    PerComponent,
}

/// What the configs are made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Every node to show: canonical name → the name its agent reports
    /// under (the same, or one of its aliases).
    pub nodes: BTreeMap<Name, Name>,
    /// Monitored services per canonical node.
    pub services: BTreeMap<Name, BTreeSet<Name>>,
    /// Pending actions (id, canonical node), for the optional buttons.
    pub pending: Vec<(Name, Name)>,
    /// Whether approve and reject buttons are offered (off by default;
    /// only where approvals over MQTT are taken).
    pub buttons: bool,
    pub version: String,
}

/// An object id Home Assistant accepts (`[a-zA-Z0-9_-]`): names may hold
/// dots.
pub fn object_id(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.replace('.', "_"))
        .collect::<Vec<_>>()
        .join("_")
}

fn config_topic(prefix: &str, component: &str, object_id: &str) -> String {
    Discovery::new(prefix).config(component, object_id)
}

/// Whether `topic` is one of our config topics under `prefix`.
pub fn is_ours(prefix: &str, topic: &str) -> bool {
    Discovery::new(prefix).parse_config(topic).is_some()
}

fn device(id: &str, name: &str, model: &str, version: &str) -> Value {
    json!({
        "identifiers": [id],
        "name": name,
        "manufacturer": "homelab",
        "model": model,
        "sw_version": version,
    })
}

/// One entity: its component, object id, the device it belongs to and its
/// own config (without the device).
struct Entity {
    component: &'static str,
    object_id: String,
    device: String,
    config: Value,
}

/// Every config, topic → JSON payload, for the inputs, in `form`.
pub fn configs(
    topics: &Topics,
    prefix: &str,
    inputs: &Inputs,
    form: Form,
) -> BTreeMap<String, String> {
    let (devices, entities) = entities(topics, inputs);
    let mut out = BTreeMap::new();
    match form {
        Form::PerComponent => {
            for entity in entities {
                let mut config = entity.config;
                config["device"] = devices[&entity.device].clone();
                out.insert(
                    config_topic(prefix, entity.component, &entity.object_id),
                    config.to_string(),
                );
            }
        }
        Form::Device => {
            let mut cmps: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
            for entity in &entities {
                let mut config = entity.config.clone();
                config["p"] = Value::String(entity.component.into());
                cmps.entry(entity.device.as_str())
                    .or_default()
                    .insert(entity.object_id.clone(), config);
            }
            for (device, components) in cmps {
                let payload = json!({
                    "dev": devices[device],
                    "o": {"name": "homelab", "sw": inputs.version},
                    "cmps": components,
                });
                out.insert(config_topic(prefix, "device", device), payload.to_string());
            }
        }
    }
    out
}

/// The devices (id → `dev`) and every entity.
fn entities(topics: &Topics, inputs: &Inputs) -> (BTreeMap<String, Value>, Vec<Entity>) {
    let mut devices: BTreeMap<String, Value> = BTreeMap::new();
    let mut entities: Vec<Entity> = Vec::new();
    let mut add = |component: &'static str, object_id: String, mut config: Value| {
        let dev = config
            .as_object_mut()
            .and_then(|c| c.remove("device"))
            .expect("every entity has its device");
        let device = dev["identifiers"][0]
            .as_str()
            .expect("a device identifier")
            .to_string();
        devices.entry(device.clone()).or_insert(dev);
        config["unique_id"] = Value::String(object_id.clone());
        config["object_id"] = Value::String(object_id.clone());
        config["default_entity_id"] = Value::String(format!("{component}.{object_id}"));
        entities.push(Entity {
            component,
            object_id,
            device,
            config,
        });
    };
    let plane = device(
        "homelab_control_plane",
        "homelab",
        "homelab control plane",
        &inputs.version,
    );
    add(
        "sensor",
        object_id(&["homelab", "pending_actions"]),
        json!({
            "name": "Pending actions",
            "state_topic": topics.state_summary(),
            "value_template": "{{ value_json.actions.pending }}",
            "state_class": "measurement",
            "icon": "mdi:clipboard-check-outline",
            "device": plane,
        }),
    );
    add(
        "sensor",
        object_id(&["homelab", "active_incidents"]),
        json!({
            "name": "Active incidents",
            "state_topic": topics.state_summary(),
            "value_template": "{{ value_json.incidents }}",
            "state_class": "measurement",
            "icon": "mdi:alert-outline",
            "device": plane,
        }),
    );
    for (node, reports_as) in &inputs.nodes {
        let id = format!("homelab_node_{}", object_id(&[node.as_str()]));
        let dev = device(&id, node.as_str(), "homelab node", &inputs.version);
        let status = topics.node_status(reports_as);
        // Unavailable while the node is offline: no stale values.
        let availability = json!([{
            "topic": status,
            "payload_available": "online",
            "payload_not_available": "offline",
        }]);
        add(
            "binary_sensor",
            object_id(&["homelab", node.as_str(), "connectivity"]),
            json!({
                "name": "Connectivity",
                "state_topic": status,
                "payload_on": "online",
                "payload_off": "offline",
                "device_class": "connectivity",
                "device": dev,
            }),
        );
        add(
            "sensor",
            object_id(&["homelab", node.as_str(), "disk_use"]),
            json!({
                "name": "Disk use",
                "state_topic": topics.node_agent(reports_as),
                "value_template": "{% set v = value_json.vitals if value_json.vitals is defined else none %}{{ (v.disks | map(attribute='used_pct') | max | round(1)) if v and v.disks else None }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "icon": "mdi:harddisk",
                "availability": availability,
                "device": dev,
            }),
        );
        add(
            "sensor",
            object_id(&["homelab", node.as_str(), "outbox_backlog"]),
            json!({
                "name": "Outbox backlog",
                "state_topic": topics.node_agent(reports_as),
                "value_template": "{{ value_json.outbox_events }}",
                "unit_of_measurement": "events",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:tray-full",
                "availability": availability,
                "device": dev,
            }),
        );
        // The link to the broker, as the agent measures it on its own
        // connection (none from an agent older than this field).
        add(
            "sensor",
            object_id(&["homelab", node.as_str(), "uplink_rtt"]),
            json!({
                "name": "Uplink round trip",
                "state_topic": topics.node_agent(reports_as),
                "value_template": "{{ value_json.uplink.rtt_ms if value_json.uplink is defined and value_json.uplink.rtt_ms is defined else None }}",
                "unit_of_measurement": "ms",
                "device_class": "duration",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:timer-sand",
                "availability": availability,
                "device": dev,
            }),
        );
        add(
            "sensor",
            object_id(&["homelab", node.as_str(), "uplink_late"]),
            json!({
                "name": "Uplink late or lost",
                "state_topic": topics.node_agent(reports_as),
                "value_template": "{{ value_json.uplink.late_pct if value_json.uplink is defined and value_json.uplink.late_pct is defined else None }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:signal-variant",
                "availability": availability,
                "device": dev,
            }),
        );
        // Last seen stays available while the node is offline: then it is
        // exactly what the operator wants to read.
        add(
            "sensor",
            object_id(&["homelab", node.as_str(), "last_seen"]),
            json!({
                "name": "Last seen",
                "state_topic": topics.state_node(reports_as),
                "value_template": "{{ value_json.last_seen }}",
                "device_class": "timestamp",
                "entity_category": "diagnostic",
                "device": dev,
            }),
        );
        for service in inputs.services.get(node).into_iter().flatten() {
            add(
                "binary_sensor",
                object_id(&["homelab", node.as_str(), service.as_str(), "problem"]),
                json!({
                    "name": format!("{service} problem"),
                    "state_topic": topics.state_service(reports_as, service),
                    "value_template": "{{ 'OFF' if value_json.status in ['running', 'healthy'] else 'ON' }}",
                    "json_attributes_topic": topics.state_service(reports_as, service),
                    "json_attributes_template": "{{ {'status': value_json.status, 'since': value_json.since, 'message': value_json.message} | tojson }}",
                    "device_class": "problem",
                    "availability": availability,
                    "device": dev,
                }),
            );
        }
    }
    if inputs.buttons {
        for (action, node) in &inputs.pending {
            let dev = device(
                &format!("homelab_node_{}", object_id(&[node.as_str()])),
                node.as_str(),
                "homelab node",
                &inputs.version,
            );
            for verdict in [Verdict::Approve, Verdict::Reject] {
                let verb = verdict.as_str();
                add(
                    "button",
                    object_id(&["homelab", action.as_str(), verb]),
                    json!({
                        "name": format!("{} {action}", if verb == "approve" { "Approve" } else { "Reject" }),
                        "command_topic": topics.decision(action, verdict),
                        "payload_press": json!({"by": "home-assistant"}).to_string(),
                        "icon": if verb == "approve" { "mdi:check" } else { "mdi:close" },
                        "device": dev,
                    }),
                );
            }
        }
    }
    (devices, entities)
}

/// A device config to publish over the one published before (if any):
/// each entity the previous one had and this one has not is kept as
/// `{"p": <platform>}`, Home Assistant's sign to remove it. Such a sign
/// itself is not carried further: one publication tells Home Assistant.
pub fn with_removals(previous: Option<&str>, next: &str) -> String {
    let Some(previous) = previous.and_then(|p| serde_json::from_str::<Value>(p).ok()) else {
        return next.to_string();
    };
    let Ok(mut next_value) = serde_json::from_str::<Value>(next) else {
        return next.to_string();
    };
    let Some(old) = previous["cmps"].as_object() else {
        return next.to_string();
    };
    let Some(new) = next_value["cmps"].as_object_mut() else {
        return next.to_string();
    };
    let mut changed = false;
    for (id, config) in old {
        let removal_sign = config.as_object().is_some_and(|c| c.len() == 1);
        if !removal_sign && !new.contains_key(id) {
            if let Some(platform) = config.get("p") {
                new.insert(id.clone(), json!({ "p": platform }));
                changed = true;
            }
        }
    }
    match changed {
        true => next_value.to_string(),
        false => next.to_string(),
    }
}

/// Whether `topic` is one of our device configs.
pub fn is_device_config(prefix: &str, topic: &str) -> bool {
    Discovery::new(prefix)
        .parse_config(topic)
        .is_some_and(|(component, _)| component == "device")
}

/// What Home Assistant is asked to migrate: the payload that moves a
/// per-component entity to a device config.
pub const MIGRATE: &[u8] = br#"{"migrate_discovery":true}"#;

/// Orders retained sends (clearings first, as `retained_sends` makes
/// them) for Home Assistant's migration from the per-component form to
/// the device form. `devices` are the device configs now published (none
/// in the per-component form). When per-component configs of ours are
/// being cleared while there are device configs, each of them is first
/// marked [`MIGRATE`], then every device config goes (again: Home
/// Assistant may have refused one whose entities an old config still
/// held), then the rest, and the clearings come last. Home Assistant then
/// moves each entity (its id, history and settings) to the device config
/// with the same `unique_id` instead of removing it and making it anew.
/// Otherwise the sends stay as they are.
pub fn migration_order(
    prefix: &str,
    sends: Vec<(String, Vec<u8>)>,
    devices: &[(String, Vec<u8>)],
) -> Vec<(String, Vec<u8>)> {
    let (old, rest): (Vec<_>, Vec<_>) = sends.into_iter().partition(|(topic, payload)| {
        payload.is_empty() && is_ours(prefix, topic) && !is_device_config(prefix, topic)
    });
    if old.is_empty() || devices.is_empty() {
        let mut out = old;
        out.extend(rest);
        return out;
    }
    let mut out: Vec<(String, Vec<u8>)> = old
        .iter()
        .map(|(topic, _)| (topic.clone(), MIGRATE.to_vec()))
        .collect();
    out.extend(
        devices
            .iter()
            .filter(|(topic, _)| !rest.iter().any(|(t, _)| t == topic))
            .cloned(),
    );
    out.extend(rest);
    out.extend(old);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn inputs(buttons: bool) -> Inputs {
        Inputs {
            nodes: BTreeMap::from([(n("vps"), n("node-1")), (n("pi.ha"), n("pi.ha"))]),
            services: BTreeMap::from([(n("vps"), BTreeSet::from([n("caddy")]))]),
            pending: vec![(n("container-restart-vps-caddy"), n("vps"))],
            buttons,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn object_ids_and_our_topics() {
        assert_eq!(
            object_id(&["homelab", "pi.ha", "disk_use"]),
            "homelab_pi_ha_disk_use"
        );
        for (topic, ours) in [
            (
                "homeassistant/sensor/homelab/homelab_vps_disk_use/config",
                true,
            ),
            ("homeassistant/binary_sensor/homelab/x/config", true),
            ("homeassistant/sensor/zigbee2mqtt/x/config", false),
            ("homeassistant/sensor/homelab/x/state", false),
            ("homeassistant/status", false),
            ("other/sensor/homelab/x/config", false),
        ] {
            assert_eq!(is_ours("homeassistant", topic), ours, "{topic}");
        }
    }

    /// Every config carries what Home Assistant's MQTT discovery documents
    /// as required for its component, a unique id, and a device; state
    /// comes from the topics DESIGN.md names.
    #[test]
    fn configs_carry_what_home_assistant_requires() {
        let topics = Topics::default();
        let all = configs(&topics, "homeassistant", &inputs(false), Form::PerComponent);
        // 2 summary sensors; per node 1 binary sensor and 5 sensors; 1
        // service.
        assert_eq!(all.len(), 2 + 2 * 6 + 1, "{:#?}", all.keys());
        for (topic, payload) in &all {
            assert!(is_ours("homeassistant", topic), "{topic}");
            let config: Value = serde_json::from_str(payload).unwrap();
            let component = topic.split('/').nth(1).unwrap();
            let object_id = topic.split('/').nth(3).unwrap();
            assert_eq!(config["unique_id"], object_id, "{topic}");
            assert_eq!(config["object_id"], object_id, "{topic}");
            assert_eq!(
                config["default_entity_id"],
                format!("{component}.{object_id}"),
                "{topic}"
            );
            assert!(config["name"].is_string(), "{topic}");
            assert!(config["device"]["identifiers"][0].is_string(), "{topic}");
            assert!(object_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            match component {
                "sensor" | "binary_sensor" => assert!(config["state_topic"].is_string(), "{topic}"),
                "button" => assert!(config["command_topic"].is_string(), "{topic}"),
                other => panic!("unexpected component {other}"),
            }
        }
        let vps = |what: &str| -> Value {
            serde_json::from_str(&all[&format!("homeassistant/{what}/config")]).unwrap()
        };
        let connectivity = vps("binary_sensor/homelab/homelab_vps_connectivity");
        // The agent reports under its alias: its topics are the alias's.
        assert_eq!(connectivity["state_topic"], "homelab/nodes/node-1/status");
        assert_eq!(connectivity["device_class"], "connectivity");
        assert_eq!(connectivity["device"]["model"], "homelab node");
        assert_eq!(connectivity["device"]["name"], "vps");
        assert!(
            connectivity.get("availability").is_none(),
            "it is the availability"
        );
        let disk = vps("sensor/homelab/homelab_vps_disk_use");
        assert_eq!(disk["state_topic"], "homelab/nodes/node-1/agent");
        assert_eq!(
            disk["availability"][0]["topic"],
            "homelab/nodes/node-1/status"
        );
        assert_eq!(disk["unit_of_measurement"], "%");
        let problem = vps("binary_sensor/homelab/homelab_vps_caddy_problem");
        assert_eq!(
            problem["state_topic"],
            "homelab/state/services/node-1/caddy"
        );
        assert_eq!(problem["device_class"], "problem");
        let last_seen = vps("sensor/homelab/homelab_vps_last_seen");
        assert_eq!(last_seen["device_class"], "timestamp");
        assert!(last_seen.get("availability").is_none());
        let pending = vps("sensor/homelab/homelab_pending_actions");
        assert_eq!(pending["state_topic"], "homelab/state/summary");
        assert!(
            !all.keys().any(|t| t.contains("/button/")),
            "buttons are off by default"
        );
    }

    #[test]
    fn buttons_for_each_pending_action_when_asked() {
        let all = configs(
            &Topics::default(),
            "homeassistant",
            &inputs(true),
            Form::PerComponent,
        );
        let approve: Value = serde_json::from_str(
            &all["homeassistant/button/homelab/homelab_container-restart-vps-caddy_approve/config"],
        )
        .unwrap();
        assert_eq!(
            approve["command_topic"],
            "homelab/actions/container-restart-vps-caddy/approve"
        );
        assert_eq!(approve["payload_press"], r#"{"by":"home-assistant"}"#);
        assert_eq!(approve["device"]["identifiers"][0], "homelab_node_vps");
        assert!(all.contains_key(
            "homeassistant/button/homelab/homelab_container-restart-vps-caddy_reject/config"
        ));
        // No action pending: no buttons (those there are cleared by the
        // caller as gone).
        let mut none = inputs(true);
        none.pending.clear();
        assert!(!configs(
            &Topics::default(),
            "homeassistant",
            &none,
            Form::PerComponent
        )
        .keys()
        .any(|t| t.contains("/button/")));
    }
    /// The device form holds the same entities as the per-component form,
    /// grouped by device, each with its platform, and one origin.
    #[test]
    fn the_device_form_groups_the_same_entities_per_device() {
        let topics = Topics::default();
        let single = configs(&topics, "homeassistant", &inputs(true), Form::PerComponent);
        let devices = configs(&topics, "homeassistant", &inputs(true), Form::Device);
        assert_eq!(
            devices.keys().collect::<Vec<_>>(),
            [
                "homeassistant/device/homelab/homelab_control_plane/config",
                "homeassistant/device/homelab/homelab_node_pi_ha/config",
                "homeassistant/device/homelab/homelab_node_vps/config",
            ]
        );
        let mut seen = 0;
        for (topic, payload) in &devices {
            assert!(is_ours("homeassistant", topic) && is_device_config("homeassistant", topic));
            let device: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(device["o"]["name"], "homelab");
            assert_eq!(device["o"]["sw"], "0.1.0");
            let id = topic.split('/').nth(3).unwrap();
            assert_eq!(device["dev"]["identifiers"][0], id);
            for (object_id, config) in device["cmps"].as_object().unwrap() {
                let component = config["p"].as_str().unwrap();
                // The same config as the per-component form's, without
                // its device, with its platform.
                let topic = format!("homeassistant/{component}/homelab/{object_id}/config");
                let mut alone: Value = serde_json::from_str(&single[&topic]).unwrap();
                assert_eq!(alone["device"], device["dev"], "{topic}");
                alone.as_object_mut().unwrap().remove("device");
                alone["p"] = Value::String(component.into());
                assert_eq!(&alone, config, "{topic}");
                assert_eq!(
                    config["default_entity_id"],
                    format!("{component}.{object_id}")
                );
                seen += 1;
            }
        }
        assert_eq!(seen, single.len());
        let vps: Value =
            serde_json::from_str(&devices["homeassistant/device/homelab/homelab_node_vps/config"])
                .unwrap();
        assert_eq!(
            vps["cmps"]["homelab_vps_connectivity"]["default_entity_id"],
            "binary_sensor.homelab_vps_connectivity"
        );
        assert_eq!(
            vps["cmps"]["homelab_container-restart-vps-caddy_approve"]["p"],
            "button"
        );
    }

    #[test]
    fn an_entity_that_goes_is_removed_once() {
        let before = r#"{"dev":{"identifiers":["d"]},"o":{"name":"homelab"},"cmps":{"a":{"p":"sensor","name":"A"},"b":{"p":"button","name":"B"},"c":{"p":"button"}}}"#;
        let next = r#"{"dev":{"identifiers":["d"]},"o":{"name":"homelab"},"cmps":{"a":{"p":"sensor","name":"A"}}}"#;
        let sent: Value = serde_json::from_str(&with_removals(Some(before), next)).unwrap();
        // b went: told to remove it; c was a removal already: not again.
        assert_eq!(
            sent["cmps"],
            json!({"a": {"p": "sensor", "name": "A"}, "b": {"p": "button"}})
        );
        let after = with_removals(Some(&sent.to_string()), next);
        assert_eq!(after, next, "the removal is told once");
        for previous in [None, Some("not json"), Some(r#"{"x":1}"#)] {
            assert_eq!(with_removals(previous, next), next);
        }
    }

    #[test]
    fn moving_to_the_device_form_migrates_each_entity() {
        let p = "homeassistant";
        let old = "homeassistant/sensor/homelab/homelab_vps_disk_use/config";
        let theirs_cleared = "homelab/state/nodes/gone";
        let vps = "homeassistant/device/homelab/homelab_node_vps/config";
        let plane = "homeassistant/device/homelab/homelab_control_plane/config";
        let devices = vec![
            (vps.to_string(), b"{}".to_vec()),
            (plane.to_string(), b"{1}".to_vec()),
        ];
        let sends = vec![
            (old.to_string(), Vec::new()),
            (theirs_cleared.to_string(), Vec::new()),
            (vps.to_string(), b"{}".to_vec()),
            ("homelab/state/summary".to_string(), b"{}".to_vec()),
        ];
        let ordered = migration_order(p, sends.clone(), &devices);
        let order: Vec<(&str, &[u8])> = ordered
            .iter()
            .map(|(t, b)| (t.as_str(), b.as_slice()))
            .collect();
        assert_eq!(
            order,
            [
                (old, MIGRATE),
                // The device config not among the sends goes again.
                (plane, &b"{1}"[..]),
                (theirs_cleared, &b""[..]),
                (vps, &b"{}"[..]),
                ("homelab/state/summary", &b"{}"[..]),
                (old, &b""[..]),
            ]
        );
        // The per-component form (no device configs), or nothing of the
        // old form cleared: as they were.
        assert_eq!(migration_order(p, sends.clone(), &[]), sends);
        let plain: Vec<_> = sends.into_iter().filter(|(t, _)| t != old).collect();
        assert_eq!(migration_order(p, plain.clone(), &devices), plain);
    }
}
