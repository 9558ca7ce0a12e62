//! Every MQTT topic the system uses comes from here. The prefix is
//! configurable (default `homelab`); all levels below it are names that
//! passed [`Name::parse`], so they never contain `/`, `+` or `#`.

use crate::name::Name;

pub const DEFAULT_PREFIX: &str = "homelab";

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
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/state/")?;
        if let Some(node) = rest.strip_prefix("nodes/") {
            return (!node.contains('/')).then(|| Name::parse(node));
        }
        let (node, service) = rest.strip_prefix("services/")?.split_once('/')?;
        (!service.contains('/')).then(|| Name::parse(node))
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
}
