//! The world state a pass judges. A full pass reads the observer's world
//! files (the truth). Between full passes, the observer's retained
//! messages (`<prefix>/state/nodes/<node>`,
//! `<prefix>/state/services/<node>/<service>`, published after the files
//! are written) are kept as updates on top of the last files read, so a pass
//! for a few nodes neither reads nor parses the world files of the whole
//! fleet. An update older than the file read meanwhile is harmless: the
//! change that made the file newer is published after it, and arrives next.
//!
//! In fleet mode any node's login could publish on those topics, so a
//! message counts only with the control plane's signature (the observer
//! signs them), and a clearing (an empty payload, which cannot be signed)
//! is left to the next full pass.

use std::collections::{BTreeMap, BTreeSet};

use homelab_core::identity::Context;
use homelab_core::world::{NodeState, ServiceState};
use homelab_core::{Name, Topics};

/// What [`World::apply`] made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Taken,
    /// Not a world-state topic of a node or service.
    NotState,
    /// Refused, with the reason counted.
    Refused(&'static str),
}

#[derive(Debug, Default)]
pub struct World {
    /// Fleet mode: the control plane's key, which must have signed every
    /// message.
    control: Option<homelab_core::identity::PublicKey>,
    /// As the files said at the last full pass, services sorted by node.
    nodes: Vec<NodeState>,
    services: Vec<ServiceState>,
    /// Retained messages since then; `None` when the message cleared it.
    node_updates: BTreeMap<Name, Option<NodeState>>,
    service_updates: BTreeMap<Name, BTreeMap<Name, Option<ServiceState>>>,
}

impl World {
    /// A world whose messages must carry the control plane's signature.
    pub fn signed_by(control: homelab_core::identity::PublicKey) -> World {
        World {
            control: Some(control),
            ..World::default()
        }
    }

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

    /// Takes in a retained world-state message. A payload that does not
    /// parse, names another node or service than its topic, or (fleet
    /// mode) lacks the control plane's signature is refused.
    pub fn apply(&mut self, topics: &Topics, topic: &str, payload: &[u8]) -> Applied {
        let Some(Ok((node, service))) = topics.parse_state(topic) else {
            return Applied::NotState;
        };
        let opened;
        let payload = match (&self.control, payload) {
            (None, payload) => payload,
            (Some(_), []) => return Applied::Refused("clear"),
            (Some(key), payload) => {
                match homelab_core::identity::open(payload, Context::State, key) {
                    Ok(unsigned) => {
                        opened = unsigned;
                        &opened[..]
                    }
                    Err(error) => return Applied::Refused(error.reason()),
                }
            }
        };
        match service {
            None => {
                let state = match payload {
                    [] => None,
                    bytes => match serde_json::from_slice::<NodeState>(bytes) {
                        Ok(state) if state.node == node => Some(state),
                        _ => return Applied::Refused("malformed"),
                    },
                };
                self.node_updates.insert(node, state);
            }
            Some(service) => {
                let state = match payload {
                    [] => None,
                    bytes => match serde_json::from_slice::<ServiceState>(bytes) {
                        Ok(state) if state.node == node && state.service == service => Some(state),
                        _ => return Applied::Refused("malformed"),
                    },
                };
                self.service_updates
                    .entry(node)
                    .or_default()
                    .insert(service, state);
            }
        }
        Applied::Taken
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
            uplink: Default::default(),
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
        let taken = Applied::Taken;
        let new = svc("vps", "cache", ServiceStatus::Running);
        // (topic, payload, expected)
        let cases: Vec<(&str, Vec<u8>, Applied)> = vec![
            ("homelab/state/services/vps/web", json(&down), taken),
            ("homelab/state/services/vps/db", vec![], taken),
            ("homelab/state/services/vps/cache", json(&new), taken),
            ("homelab/state/nodes/vps", json(&node("vps", 3)), taken),
            // Another service than the topic says, bad JSON, not state.
            (
                "homelab/state/services/vps/other",
                json(&down),
                Applied::Refused("malformed"),
            ),
            (
                "homelab/state/nodes/piha",
                b"{".to_vec(),
                Applied::Refused("malformed"),
            ),
            ("homelab/state/summary", b"{}".to_vec(), Applied::NotState),
            ("homelab/events/vps", b"{}".to_vec(), Applied::NotState),
        ];
        for (topic, payload, expected) in cases {
            assert_eq!(world.apply(&topics, topic, &payload), expected, "{topic}");
        }

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
        assert_eq!(
            world.apply(&topics, "homelab/state/nodes/piha", b""),
            Applied::Taken
        );
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

    /// Fleet mode: only what the control plane signed counts; a clearing
    /// waits for the next full pass.
    #[test]
    fn in_a_fleet_only_signed_state_counts() {
        use homelab_core::identity::{generate_key, seal};
        let topics = Topics::default();
        let control = generate_key();
        let node_key = generate_key();
        let mut world = World::signed_by(control.verifying_key());
        world.reset(
            Some(vec![node("vps", 2)]),
            Some(vec![svc("vps", "web", ServiceStatus::Running)]),
        );
        let down = json(&svc("vps", "web", ServiceStatus::NotRunning));
        let topic = "homelab/state/services/vps/web";
        let cases: Vec<(Vec<u8>, Applied)> = vec![
            (down.clone(), Applied::Refused("unsigned")),
            (
                seal(&down, Context::State, &node_key),
                Applied::Refused("bad_signature"),
            ),
            // Signed for something else: an ack's or an event's signature.
            (
                seal(&down, Context::Event, &control),
                Applied::Refused("bad_signature"),
            ),
            (vec![], Applied::Refused("clear")),
        ];
        for (payload, expected) in cases {
            assert_eq!(world.apply(&topics, topic, &payload), expected);
            let (_, services) = world.of(&[n("vps")].into_iter().collect());
            assert_eq!(services[0].status, ServiceStatus::Running, "unchanged");
        }
        assert_eq!(
            world.apply(&topics, topic, &seal(&down, Context::State, &control)),
            Applied::Taken
        );
        let (_, services) = world.of(&[n("vps")].into_iter().collect());
        assert_eq!(services[0].status, ServiceStatus::NotRunning);
    }
}
