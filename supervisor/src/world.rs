//! The world state a pass judges. A full pass reads the observer's world
//! files (the truth). Between full passes, the observer's retained
//! messages (`<prefix>/state/nodes/<node>`,
//! `<prefix>/state/services/<node>/<service>`, published after the files
//! are written) are kept as updates on top of the last files read, so a pass
//! for a few nodes neither reads nor parses the world files of the whole
//! fleet. An update older than the file read meanwhile is harmless: the
//! change that made the file newer is published after it, and arrives next.

use std::collections::{BTreeMap, BTreeSet};

use homelab_core::world::{NodeState, ServiceState};
use homelab_core::{Name, Topics};

#[derive(Debug, Default)]
pub struct World {
    /// As the files said at the last full pass, services sorted by node.
    nodes: Vec<NodeState>,
    services: Vec<ServiceState>,
    /// Retained messages since then; `None` when the message cleared it.
    node_updates: BTreeMap<Name, Option<NodeState>>,
    service_updates: BTreeMap<Name, BTreeMap<Name, Option<ServiceState>>>,
}

impl World {
    /// What the files say now (`None`: the file did not change since the
    /// last reset); earlier updates are covered by them.
    pub fn reset(&mut self, nodes: Option<Vec<NodeState>>, services: Option<Vec<ServiceState>>) {
        if let Some(nodes) = nodes {
            self.nodes = nodes;
        }
        if let Some(mut services) = services {
            if !services.is_sorted_by(|a, b| a.node <= b.node) {
                services.sort_by(|a, b| a.node.cmp(&b.node));
            }
            self.services = services;
        }
        self.node_updates.clear();
        self.service_updates.clear();
    }

    /// The world as the files said at the last reset.
    pub fn files(&self) -> (&[NodeState], &[ServiceState]) {
        (&self.nodes, &self.services)
    }

    /// Takes in a retained world-state message. Whether it was one; a
    /// payload that does not parse (or names another node or service than
    /// its topic) is ignored.
    pub fn apply(&mut self, topics: &Topics, topic: &str, payload: &[u8]) -> bool {
        let Some(Ok(node)) = topics.parse_state_node(topic) else {
            return false;
        };
        if topic == topics.state_node(&node) {
            let state = match payload {
                [] => None,
                bytes => match serde_json::from_slice::<NodeState>(bytes) {
                    Ok(state) if state.node == node => Some(state),
                    _ => return false,
                },
            };
            self.node_updates.insert(node, state);
            return true;
        }
        let Some(Ok(service)) = topic.rsplit('/').next().map(Name::parse) else {
            return false;
        };
        let state = match payload {
            [] => None,
            bytes => match serde_json::from_slice::<ServiceState>(bytes) {
                Ok(state) if state.node == node && state.service == service => Some(state),
                _ => return false,
            },
        };
        self.service_updates
            .entry(node)
            .or_default()
            .insert(service, state);
        true
    }

    /// The nodes and services reported under `names`, as of now.
    pub fn of(&self, names: &BTreeSet<Name>) -> (Vec<NodeState>, Vec<ServiceState>) {
        let mut nodes = Vec::new();
        let mut services = Vec::new();
        for name in names {
            match self.node_updates.get(name) {
                Some(update) => nodes.extend(update.clone()),
                None => nodes.extend(self.nodes.iter().filter(|n| &n.node == name).cloned()),
            }
            let start = self.services.partition_point(|s| &s.node < name);
            let end = self.services.partition_point(|s| &s.node <= name);
            let mut by_service: BTreeMap<&Name, Option<&ServiceState>> = self.services[start..end]
                .iter()
                .map(|s| (&s.service, Some(s)))
                .collect();
            for (service, update) in self.service_updates.get(name).into_iter().flatten() {
                by_service.insert(service, update.as_ref());
            }
            services.extend(by_service.into_values().flatten().cloned());
        }
        (nodes, services)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::world::{DockerStatus, NodeStatus, ServiceStatus};

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn node(name: &str, containers: usize) -> NodeState {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        NodeState {
            node: n(name),
            status: NodeStatus::Online,
            since: at,
            first_seen: at,
            last_seen: at,
            last_seq: 1,
            docker: DockerStatus::Ok,
            containers,
        }
    }

    fn svc(node: &str, service: &str, status: ServiceStatus) -> ServiceState {
        ServiceState {
            node: n(node),
            service: n(service),
            status,
            since: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            message: String::new(),
            containers: vec![],
        }
    }

    fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[test]
    fn retained_messages_update_what_the_files_said() {
        let topics = Topics::default();
        let mut world = World::default();
        world.reset(
            Some(vec![node("vps", 2), node("piha", 1)]),
            Some(vec![
                svc("vps", "web", ServiceStatus::Running),
                svc("piha", "mosquitto", ServiceStatus::Running),
                svc("vps", "db", ServiceStatus::Running),
            ]),
        );
        let names = |list: &[&str]| list.iter().map(|s| n(s)).collect::<BTreeSet<_>>();
        let (nodes, services) = world.of(&names(&["vps"]));
        assert_eq!(nodes, vec![node("vps", 2)]);
        assert_eq!(
            services,
            vec![
                svc("vps", "db", ServiceStatus::Running),
                svc("vps", "web", ServiceStatus::Running)
            ]
        );

        let down = svc("vps", "web", ServiceStatus::NotRunning);
        assert!(world.apply(&topics, "homelab/state/services/vps/web", &json(&down)));
        assert!(world.apply(&topics, "homelab/state/services/vps/db", b""));
        let new = svc("vps", "cache", ServiceStatus::Running);
        assert!(world.apply(&topics, "homelab/state/services/vps/cache", &json(&new)));
        assert!(world.apply(&topics, "homelab/state/nodes/vps", &json(&node("vps", 3))));
        // Refused: another service than the topic says, bad JSON, not state.
        assert!(!world.apply(&topics, "homelab/state/services/vps/other", &json(&down)));
        assert!(!world.apply(&topics, "homelab/state/nodes/piha", b"{"));
        assert!(!world.apply(&topics, "homelab/state/summary", b"{}"));
        assert!(!world.apply(&topics, "homelab/events/vps", b"{}"));

        let (nodes, services) = world.of(&names(&["vps"]));
        assert_eq!(nodes, vec![node("vps", 3)]);
        assert_eq!(services, vec![new, down]);
        // Other nodes keep what the files said.
        let (nodes, services) = world.of(&names(&["piha", "gone"]));
        assert_eq!(nodes, vec![node("piha", 1)]);
        assert_eq!(
            services,
            vec![svc("piha", "mosquitto", ServiceStatus::Running)]
        );
        // A node cleared from retained state is gone.
        assert!(world.apply(&topics, "homelab/state/nodes/piha", b""));
        assert_eq!(world.of(&names(&["piha"])).0, vec![]);

        // Files read again cover every update; one that did not change
        // keeps what it said.
        world.reset(Some(vec![node("vps", 9)]), None);
        assert_eq!(
            world.of(&names(&["vps", "piha"])),
            (
                vec![node("vps", 9)],
                vec![
                    svc("piha", "mosquitto", ServiceStatus::Running),
                    svc("vps", "db", ServiceStatus::Running),
                    svc("vps", "web", ServiceStatus::Running)
                ]
            )
        );
    }
}
