//! Every MQTT topic the system uses comes from here. The prefix is
//! configurable (default `homelab`); all levels below it are names that
//! passed [`Name::parse`], so they never contain `/`, `+` or `#`.

use crate::name::Name;

pub const DEFAULT_PREFIX: &str = "homelab";

/// What a decision topic says of its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    /// The verdict a topic's or a URL's last level names, if any.
    pub fn parse(verb: &str) -> Option<Verdict> {
        match verb {
            "approve" => Some(Verdict::Approve),
            "reject" => Some(Verdict::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
}

/// Home Assistant's discovery topics under its prefix (`homeassistant` by
/// default): its birth message, and our configs, all under one node id
/// ([`DISCOVERY_NODE_ID`]) so that ours are told from anyone else's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    prefix: String,
}

/// The node id level of every discovery config we publish.
pub const DISCOVERY_NODE_ID: &str = "homelab";

impl Discovery {
    pub fn new(prefix: &str) -> Discovery {
        Discovery {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Home Assistant's birth and last will, `<prefix>/status`.
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// The config of one entity (`component` a platform) or device
    /// (`component` "device").
    pub fn config(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{DISCOVERY_NODE_ID}/{object_id}/config",
            self.prefix
        )
    }

    /// The filter of every config of ours.
    pub fn configs_all(&self) -> String {
        self.config("+", "+")
    }

    /// The component and object id of a config of ours; `None` for any
    /// other topic (another integration's config included).
    pub fn parse_config<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        match rest.split('/').collect::<Vec<_>>()[..] {
            [component, node_id, object_id, "config"] if node_id == DISCOVERY_NODE_ID => {
                Some((component, object_id))
            }
            _ => None,
        }
    }

    /// Whether `topic` is under the prefix at all.
    pub fn covers(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new(DEFAULT_PREFIX)
    }
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn events(&self, node: &Name) -> String {
        format!("{}/events/{node}", self.prefix)
    }
    pub fn events_all(&self) -> String {
        format!("{}/events/+", self.prefix)
    }
    pub fn acks(&self, node: &Name) -> String {
        format!("{}/acks/{node}", self.prefix)
    }
    pub fn node_status(&self, node: &Name) -> String {
        format!("{}/nodes/{node}/status", self.prefix)
    }
    /// The agent's own state (connected, outbox depth, oldest
    /// unacknowledged event), retained JSON.
    pub fn node_agent(&self, node: &Name) -> String {
        format!("{}/nodes/{node}/agent", self.prefix)
    }
    pub fn node_agent_all(&self) -> String {
        format!("{}/nodes/+/agent", self.prefix)
    }
    pub fn node_status_all(&self) -> String {
        format!("{}/nodes/+/status", self.prefix)
    }
    pub fn state_node(&self, node: &Name) -> String {
        format!("{}/state/nodes/{node}", self.prefix)
    }
    pub fn state_service(&self, node: &Name, service: &Name) -> String {
        format!("{}/state/services/{node}/{service}", self.prefix)
    }
    pub fn state_summary(&self) -> String {
        format!("{}/state/summary", self.prefix)
    }
    pub fn state_all(&self) -> String {
        format!("{}/state/#", self.prefix)
    }
    pub fn action(&self, id: &Name) -> String {
        format!("{}/actions/{id}", self.prefix)
    }
    pub fn actions_all(&self) -> String {
        format!("{}/actions/+", self.prefix)
    }
    /// What the control plane gives the node's agent from the repo
    /// ([`crate::nodeconfig::NodeConfig`]), retained.
    pub fn node_config(&self, node: &Name) -> String {
        format!("{}/config/{node}", self.prefix)
    }
    pub fn commands(&self, node: &Name) -> String {
        format!("{}/commands/{node}", self.prefix)
    }
    /// Container logs asked of the node's agent ([`crate::logs`]).
    pub fn logs_request(&self, node: &Name) -> String {
        format!("{}/logs/{node}/request", self.prefix)
    }
    /// The agent's answers to them.
    pub fn logs_reply(&self, node: &Name) -> String {
        format!("{}/logs/{node}/reply", self.prefix)
    }
    pub fn logs_reply_all(&self) -> String {
        format!("{}/logs/+/reply", self.prefix)
    }
    /// The node of a logs reply topic.
    pub fn parse_logs_reply(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/logs/")?;
        let node = rest.strip_suffix("/reply")?;
        (!node.contains('/')).then(|| Name::parse(node))
    }

    /// The node of an events topic, `<prefix>/events/<node>`. `Err` carries a
    /// reason when the topic is an events topic with a bad node level.
    pub fn parse_events(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        self.one_level(topic, "events").map(Name::parse)
    }

    /// The node of a status topic, `<prefix>/nodes/<node>/status`.
    pub fn parse_node_status(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/nodes/")?;
        let node = rest.strip_suffix("/status")?;
        (!node.contains('/')).then(|| Name::parse(node))
    }

    /// The node of an agent-state topic, `<prefix>/nodes/<node>/agent`.
    pub fn parse_node_agent(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/nodes/")?;
        let node = rest.strip_suffix("/agent")?;
        (!node.contains('/')).then(|| Name::parse(node))
    }

    /// The action id of `<prefix>/actions/<id>`.
    pub fn parse_action(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        self.one_level(topic, "actions").map(Name::parse)
    }

    /// The node a world-state topic is about: `<prefix>/state/nodes/<node>`
    /// or `<prefix>/state/services/<node>/<service>`.
    pub fn parse_state_node(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        self.parse_state(topic)
            .map(|parsed| parsed.map(|(node, _)| node))
    }

    /// The node and service (none for a node's own state) of a world-state
    /// topic. `Err` when a level is not a valid name.
    #[allow(clippy::type_complexity)]
    pub fn parse_state(
        &self,
        topic: &str,
    ) -> Option<Result<(Name, Option<Name>), crate::NameError>> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/state/")?;
        if let Some(node) = rest.strip_prefix("nodes/") {
            return (!node.contains('/')).then(|| Ok((Name::parse(node)?, None)));
        }
        let (node, service) = rest.strip_prefix("services/")?.split_once('/')?;
        (!service.contains('/')).then(|| Ok((Name::parse(node)?, Some(Name::parse(service)?))))
    }

    /// The node of a node-config topic, `<prefix>/config/<node>`.
    pub fn parse_node_config(&self, topic: &str) -> Option<Result<Name, crate::NameError>> {
        self.one_level(topic, "config").map(Name::parse)
    }

    /// A decision on an action, `<prefix>/actions/<id>/approve` or
    /// `/reject` (open mode only: docs/protocol.md).
    pub fn decision(&self, id: &Name, verb: Verdict) -> String {
        format!("{}/actions/{id}/{}", self.prefix, verb.as_str())
    }

    /// The filters of every decision topic.
    pub fn decisions_all(&self) -> [String; 2] {
        [Verdict::Approve, Verdict::Reject]
            .map(|verb| format!("{}/actions/+/{}", self.prefix, verb.as_str()))
    }

    /// The action id and verdict of a decision topic. `None` for any other
    /// topic (an unknown verb included); `Err` when the id is not a name.
    #[allow(clippy::type_complexity)]
    pub fn parse_decision(&self, topic: &str) -> Option<Result<(Name, Verdict), crate::NameError>> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/actions/")?;
        let (id, verb) = rest.split_once('/')?;
        let verdict = Verdict::parse(verb)?;
        Some(Name::parse(id).map(|id| (id, verdict)))
    }

    fn one_level<'t>(&self, topic: &'t str, kind: &str) -> Option<&'t str> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix('/')?
            .strip_prefix(kind)?
            .strip_prefix('/')?;
        (!rest.contains('/')).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn builds_and_parses() {
        let t = Topics::default();
        assert_eq!(t.events(&n("piha")), "homelab/events/piha");
        assert_eq!(
            t.state_service(&n("piha"), &n("mosquitto")),
            "homelab/state/services/piha/mosquitto"
        );
        assert_eq!(t.parse_events("homelab/events/piha"), Some(Ok(n("piha"))));
        assert_eq!(t.parse_events("homelab/events/PIHA"), Some(Ok(n("piha"))));
        assert!(matches!(t.parse_events("homelab/events/.."), Some(Err(_))));
        assert_eq!(t.parse_events("homelab/events/a/b"), None);
        assert_eq!(t.parse_events("other/events/a"), None);
        assert_eq!(
            t.parse_node_status("homelab/nodes/vps/status"),
            Some(Ok(n("vps")))
        );
        assert_eq!(
            t.parse_node_agent("homelab/nodes/vps/agent"),
            Some(Ok(n("vps")))
        );
        assert_eq!(t.parse_node_agent("homelab/nodes/vps/status"), None);
        assert_eq!(t.parse_node_agent("homelab/nodes/a/b/agent"), None);
        assert_eq!(t.node_agent_all(), "homelab/nodes/+/agent");
        assert_eq!(t.parse_action("homelab/actions/x/approve"), None);
        assert_eq!(
            t.parse_state_node("homelab/state/nodes/piha"),
            Some(Ok(n("piha")))
        );
        assert_eq!(
            t.parse_state_node("homelab/state/services/piha/mosquitto"),
            Some(Ok(n("piha")))
        );
        assert_eq!(t.parse_state_node("homelab/state/summary"), None);
        assert_eq!(t.parse_state_node("homelab/state/services/piha"), None);
        assert_eq!(t.parse_state_node("homelab/state/nodes/a/b"), None);
        assert_eq!(Topics::new("site/").events(&n("a")), "site/events/a");
    }

    #[test]
    fn state_config_and_decision_topics() {
        let t = Topics::default();
        type Case<'a> = (&'a str, Option<(&'a str, Option<&'a str>)>);
        let cases: &[Case] = &[
            ("homelab/state/nodes/piha", Some(("piha", None))),
            (
                "homelab/state/services/piha/mqtt",
                Some(("piha", Some("mqtt"))),
            ),
            ("homelab/state/services/piha", None),
            ("homelab/state/services/piha/a/b", None),
            ("homelab/state/summary", None),
            ("other/state/nodes/piha", None),
        ];
        for (topic, want) in cases {
            let got = t.parse_state(topic).map(|r| r.unwrap());
            let want = want.map(|(node, service)| (n(node), service.map(n)));
            assert_eq!(got, want, "{topic}");
        }
        assert!(matches!(
            t.parse_state("homelab/state/services/a/.."),
            Some(Err(_))
        ));
        assert_eq!(
            t.parse_node_config("homelab/config/vps"),
            Some(Ok(n("vps")))
        );
        assert_eq!(t.parse_node_config("homelab/config/vps/x"), None);

        let id = n("redeploy-vps-web");
        let topic = t.decision(&id, Verdict::Approve);
        assert_eq!(topic, "homelab/actions/redeploy-vps-web/approve");
        assert_eq!(
            t.parse_decision(&topic),
            Some(Ok((id.clone(), Verdict::Approve)))
        );
        assert_eq!(
            t.parse_decision("homelab/actions/redeploy-vps-web/reject"),
            Some(Ok((id, Verdict::Reject)))
        );
        assert_eq!(
            t.parse_decision("homelab/actions/redeploy-vps-web/run"),
            None
        );
        assert_eq!(t.parse_decision("homelab/actions/redeploy-vps-web"), None);
        assert!(matches!(
            t.parse_decision("homelab/actions/../approve"),
            Some(Err(_))
        ));
        assert_eq!(
            t.decisions_all(),
            ["homelab/actions/+/approve", "homelab/actions/+/reject"]
        );
    }

    #[test]
    fn discovery_topics() {
        let d = Discovery::new("homeassistant");
        assert_eq!(d.status(), "homeassistant/status");
        assert_eq!(
            d.config("sensor", "homelab_vps_disk_use"),
            "homeassistant/sensor/homelab/homelab_vps_disk_use/config"
        );
        assert_eq!(d.configs_all(), "homeassistant/+/homelab/+/config");
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "homeassistant/sensor/homelab/x/config",
                Some(("sensor", "x")),
            ),
            (
                "homeassistant/device/homelab/x/config",
                Some(("device", "x")),
            ),
            ("homeassistant/sensor/zigbee2mqtt/x/config", None),
            ("homeassistant/sensor/homelab/x/state", None),
            ("homeassistant/status", None),
            ("homeassistantx/sensor/homelab/x/config", None),
        ];
        for (topic, want) in cases {
            assert_eq!(d.parse_config(topic), *want, "{topic}");
        }
        assert!(d.covers("homeassistant/status"));
        assert!(!d.covers("homeassistantx/status"));
    }
}
