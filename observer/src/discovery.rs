//! Home Assistant MQTT discovery: what the observer publishes, retained,
//! under `<discovery prefix>/<component>/homelab/<object_id>/config` so
//! Home Assistant shows the homelab as devices and entities. Pure: the
//! configs follow from the inventory, the desired services, the nodes seen
//! and the pending actions; publishing, clearing what is gone and
//! republishing when Home Assistant comes back are the caller's (through
//! `retained_sends`).
//!
//! Per component rather than device-based discovery
//! (`homeassistant/device/<id>/config`): the device-based form exists only
//! since Home Assistant 2024.11, and the per-component one works with every
//! version in use; the node id level `homelab` keeps our configs apart, so
//! the observer can find and clear the ones it no longer wants.

use std::collections::{BTreeMap, BTreeSet};

use homelab_core::{Name, Topics};
use serde_json::{json, Value};

/// The node id level of every config topic: ours.
pub const NODE_ID: &str = "homelab";

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
    format!("{prefix}/{component}/{NODE_ID}/{object_id}/config")
}

/// Whether `topic` is one of our config topics under `prefix`.
pub fn is_ours(prefix: &str, topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), [_, node_id, _, "config"] if *node_id == NODE_ID)
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

/// Every config, topic → JSON payload, for the inputs.
pub fn configs(topics: &Topics, prefix: &str, inputs: &Inputs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |component: &str, object_id: String, mut config: Value| {
        config["unique_id"] = Value::String(object_id.clone());
        config["object_id"] = Value::String(object_id.clone());
        out.insert(
            config_topic(prefix, component, &object_id),
            config.to_string(),
        );
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
            for verb in ["approve", "reject"] {
                add(
                    "button",
                    object_id(&["homelab", action.as_str(), verb]),
                    json!({
                        "name": format!("{} {action}", if verb == "approve" { "Approve" } else { "Reject" }),
                        "command_topic": format!("{}/actions/{action}/{verb}", topics.prefix()),
                        "payload_press": json!({"by": "home-assistant"}).to_string(),
                        "icon": if verb == "approve" { "mdi:check" } else { "mdi:close" },
                        "device": dev,
                    }),
                );
            }
        }
    }
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
        let all = configs(&topics, "homeassistant", &inputs(false));
        // 2 summary sensors; per node 1 binary sensor and 5 sensors; 1
        // service.
        assert_eq!(all.len(), 2 + 2 * 6 + 1, "{:#?}", all.keys());
        for (topic, payload) in &all {
            assert!(is_ours("homeassistant", topic), "{topic}");
            let config: Value = serde_json::from_str(payload).unwrap();
            let component = topic.split('/').nth(1).unwrap();
            let object_id = topic.split('/').nth(3).unwrap();
            assert_eq!(config["unique_id"], object_id, "{topic}");
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
        let all = configs(&Topics::default(), "homeassistant", &inputs(true));
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
        assert!(!configs(&Topics::default(), "homeassistant", &none)
            .keys()
            .any(|t| t.contains("/button/")));
    }
}
