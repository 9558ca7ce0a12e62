//! Who may publish and subscribe to what, in fleet mode: one table, used by
//! the embedded broker's front (checked on every PUBLISH, SUBSCRIBE and
//! Last Will of a client) and written out as Mosquitto's `acl_file` by
//! `homelab mosquitto-config`, so both brokers enforce the same rules.
//!
//! - the control plane (`@control`): everything under the prefix, and
//!   Home Assistant's discovery prefix;
//! - Home Assistant (`@home-assistant`): reads the homelab's state, the
//!   nodes' status and agent state; uses its discovery prefix;
//! - a node: writes only its own events, status, agent state and logs
//!   replies; reads only its own commands, acks, config and logs requests.
//!
//! A subscription is allowed when every topic its filter can match is
//! readable ([`covers`]): a node that asks for `homelab/#` is refused,
//! not handed a filtered stream. Pure.

use crate::{Name, Topics};

/// Home Assistant's own login (`@` keeps it apart from node names).
pub const HA_USER: &str = "@home-assistant";
/// Home Assistant's discovery prefix.
pub const HA_PREFIX: &str = "homeassistant";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Control,
    HomeAssistant,
    Node(Name),
}

impl Who {
    /// The login's user name: who it is, if anyone we know.
    pub fn of(user: &str) -> Option<Who> {
        match user {
            crate::identity::CONTROL_USER => Some(Who::Control),
            HA_USER => Some(Who::HomeAssistant),
            other => Name::parse(other).ok().map(Who::Node),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
    fn word(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        }
    }
}

/// One rule: `access` to the topics `pattern` matches (MQTT wildcards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    pub pattern: String,
}

fn rule(access: Access, pattern: impl Into<String>) -> Rule {
    Rule {
        access,
        pattern: pattern.into(),
    }
}

/// The rules of `who`.
pub fn rules(topics: &Topics, who: &Who) -> Vec<Rule> {
    let prefix = topics.prefix();
    match who {
        Who::Control => vec![
            rule(Access::ReadWrite, format!("{prefix}/#")),
            rule(Access::ReadWrite, format!("{HA_PREFIX}/#")),
        ],
        Who::HomeAssistant => vec![
            rule(Access::Read, format!("{prefix}/state/#")),
            rule(Access::Read, format!("{prefix}/nodes/+/status")),
            rule(Access::Read, format!("{prefix}/nodes/+/agent")),
            rule(Access::ReadWrite, format!("{HA_PREFIX}/#")),
        ],
        Who::Node(node) => vec![
            rule(Access::Write, topics.events(node)),
            rule(Access::Write, topics.node_status(node)),
            rule(Access::Write, topics.node_agent(node)),
            rule(Access::Read, topics.commands(node)),
            rule(Access::Read, topics.acks(node)),
            rule(Access::Read, topics.node_config(node)),
            rule(Access::Read, topics.logs_request(node)),
            rule(Access::Write, topics.logs_reply(node)),
        ],
    }
}

/// Whether the topic `topic` (no wildcards) matches `pattern`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic the subscription `filter` can match is matched by
/// `pattern`.
pub fn covers(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub fn may_publish(rules: &[Rule], topic: &str) -> bool {
    !topic.contains(['+', '#'])
        && rules
            .iter()
            .any(|r| r.access.writes() && matches(&r.pattern, topic))
}

pub fn may_subscribe(rules: &[Rule], filter: &str) -> bool {
    rules
        .iter()
        .any(|r| r.access.reads() && covers(&r.pattern, filter))
}

/// Mosquitto's `acl_file` for the control plane, Home Assistant and
/// `nodes`.
pub fn mosquitto_acl(topics: &Topics, nodes: &[Name]) -> String {
    let mut out = String::from(
        "# Written by `homelab mosquitto-config`: run it again after `homelab node add|rotate|remove`.\n",
    );
    let users = [
        (crate::identity::CONTROL_USER.to_string(), Who::Control),
        (HA_USER.to_string(), Who::HomeAssistant),
    ]
    .into_iter()
    .chain(nodes.iter().map(|n| (n.to_string(), Who::Node(n.clone()))));
    for (user, who) in users {
        out += &format!("\nuser {user}\n");
        for r in rules(topics, &who) {
            out += &format!("topic {} {}\n", r.access.word(), r.pattern);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_patterns() {
        for (pattern, topic, yes) in [
            ("homelab/#", "homelab/events/piha", true),
            ("homelab/#", "homelab", true),
            ("homelab/nodes/+/status", "homelab/nodes/piha/status", true),
            ("homelab/nodes/+/status", "homelab/nodes/piha/agent", false),
            ("homelab/events/piha", "homelab/events/pihb", false),
            ("homelab/events/piha", "homelab/events/piha/x", false),
            ("homelab/events/piha", "homelab/events", false),
        ] {
            assert_eq!(matches(pattern, topic), yes, "{pattern} {topic}");
        }
        for (pattern, filter, yes) in [
            ("homelab/#", "homelab/#", true),
            ("homelab/#", "homelab/+/x", true),
            ("homelab/state/#", "homelab/#", false),
            ("homelab/nodes/+/status", "homelab/nodes/+/status", true),
            ("homelab/nodes/+/status", "homelab/nodes/#", false),
            ("homelab/commands/piha", "homelab/commands/+", false),
            ("homelab/commands/piha", "homelab/commands/piha", true),
            ("homelab/commands/piha", "#", false),
        ] {
            assert_eq!(covers(pattern, filter), yes, "{pattern} {filter}");
        }
    }

    #[test]
    fn a_node_writes_its_own_and_reads_its_own() {
        let topics = Topics::default();
        let piha = rules(&topics, &Who::Node(Name::parse("piha").unwrap()));
        for (topic, yes) in [
            ("homelab/events/piha", true),
            ("homelab/nodes/piha/status", true),
            ("homelab/nodes/piha/agent", true),
            ("homelab/events/pihb", false),
            ("homelab/nodes/pihb/agent", false),
            ("homelab/acks/piha", false),
            ("homelab/commands/pihb", false),
            ("homelab/actions/x/approve", false),
            ("homelab/events/+", false),
        ] {
            assert_eq!(may_publish(&piha, topic), yes, "publish {topic}");
        }
        for (filter, yes) in [
            ("homelab/commands/piha", true),
            ("homelab/acks/piha", true),
            ("homelab/config/piha", true),
            ("homelab/commands/pihb", false),
            ("homelab/commands/+", false),
            ("homelab/#", false),
            ("#", false),
            ("homelab/events/piha", false),
        ] {
            assert_eq!(may_subscribe(&piha, filter), yes, "subscribe {filter}");
        }
        let ha = rules(&topics, &Who::HomeAssistant);
        assert!(may_subscribe(&ha, "homelab/nodes/+/status"));
        assert!(may_subscribe(&ha, "homeassistant/#"));
        assert!(!may_subscribe(&ha, "homelab/events/#"));
        assert!(!may_publish(&ha, "homelab/events/piha"));
        assert!(may_publish(&ha, "homeassistant/status"));
        let control = rules(&topics, &Who::Control);
        assert!(may_publish(&control, "homelab/commands/piha"));
        assert!(may_subscribe(&control, "homelab/#"));
        assert_eq!(Who::of("@control"), Some(Who::Control));
        assert_eq!(Who::of("@home-assistant"), Some(Who::HomeAssistant));
        assert_eq!(Who::of("Pi/../x"), None);
    }
}
