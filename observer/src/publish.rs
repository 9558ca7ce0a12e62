//! World state out: `world/*.json` written when it changed, and the
//! retained state topics (and Home Assistant's configs) brought from what
//! was published to what is wanted.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use chrono::Utc;
use homelab_core::world::Summary;
use homelab_core::{fsutil, ActionStore, Name};
use homelab_mqtt::Mqtt;
use tracing::debug;

use crate::{blocking, discovery, HomeAssistant, Observer};

impl Observer {
    /// Open incidents at `now`, each marked with the maintenance window
    /// that covers it.
    pub(crate) fn incidents(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Vec<homelab_core::world::Incident> {
        let mut incidents = self
            .world
            .incidents(&self.inventory, &self.desired, self.started, now);
        incidents.extend(self.repo_problems.iter().cloned());
        for (node, sequence) in self.ingest.sequences() {
            if let Some(since) = sequence.stalled(now) {
                incidents.push(homelab_core::world::Incident {
                    id: format!("delivery_stalled:{node}"),
                    kind: "delivery_stalled".into(),
                    node: node.clone(),
                    service: None,
                    severity: homelab_core::Severity::Warning,
                    message: format!(
                        "later events wait for seq {}, which has not arrived; the agent is asked to send it again",
                        sequence.watermark() + 1
                    ),
                    opened_at: since,
                    count: None,
                    last_seen: None,
                    maintenance: None,
                    noticed_at: None,
                });
            }
        }
        for incident in &mut incidents {
            let node = self.inventory.canonical(&incident.node);
            incident.maintenance = homelab_core::maintenance::active(
                &self.maintenance,
                &node,
                incident.service.as_ref(),
                now,
            );
        }
        incidents
    }

    /// What Home Assistant is shown: the inventory's nodes and those that
    /// reported (under the name their agent uses), the monitored services,
    /// the pending actions.
    pub(crate) fn discovery_inputs(
        &self,
        open: &[homelab_core::Action],
        ha: &HomeAssistant,
    ) -> discovery::Inputs {
        let mut nodes: BTreeMap<Name, Name> = self
            .inventory
            .nodes
            .keys()
            .map(|n| (n.clone(), n.clone()))
            .collect();
        for reported in self.world.nodes.keys() {
            let canonical = self.inventory.canonical(reported);
            // Its own name wins over an alias it was also seen under.
            if canonical == *reported || !self.world.nodes.contains_key(&canonical) {
                nodes.insert(canonical, reported.clone());
            }
        }
        discovery::Inputs {
            nodes,
            services: self.desired.clone(),
            pending: open
                .iter()
                .filter(|a| a.state == homelab_core::ActionState::Pending)
                .map(|a| (a.id.clone(), a.node.clone()))
                .collect(),
            buttons: ha.buttons,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    pub(crate) async fn flush_world(&mut self, mqtt: &Mqtt) -> Result<()> {
        debug!("writing world state");
        if self.config.repo.is_some() {
            let (inventory, desired) = (&self.inventory, &self.desired);
            self.world.forget_missing(|node, service| {
                desired
                    .get(&inventory.canonical(node))
                    .is_some_and(|s| s.contains(service))
            });
        }
        let layout = &self.config.layout;
        let topics = &self.config.topics;
        let nodes: Vec<_> = self.world.nodes.values().cloned().collect();
        let services: Vec<_> = self.world.services.values().cloned().collect();
        let now = Utc::now();
        let mut incidents = self.incidents(now);
        homelab_core::world::noticed(&mut incidents, &self.last_incidents, now);
        // Closed at the events' own times, also what opened and ended
        // between two writes (a replayed backlog).
        let ended = self.world.take_closed();
        let world = &self.world;
        let closed = homelab_core::world::closed_between(
            &self.last_incidents,
            &incidents,
            ended,
            |incident| match incident.kind.as_str() {
                "node_offline" => world
                    .nodes
                    .get(&incident.node)
                    .filter(|n| n.status == homelab_core::world::NodeStatus::Online)
                    .map(|n| n.since),
                _ => None,
            },
            now,
        );
        let mut closed = homelab_core::world::not_yet_in(closed, &self.history);
        // One that began and ended between two writes is known from now.
        for c in &mut closed {
            c.incident.noticed_at.get_or_insert(now);
        }
        self.last_incidents = incidents.clone();
        // Only files whose content changed are written, with one fsync of
        // the directory for all of them.
        // Services before nodes, here and on the bus: a reader that takes
        // nodes first (the supervisor does) never sees a node's new state
        // (its first snapshot: Docker ok) with its services from before.
        let mut texts = vec![
            (layout.world_services(), fsutil::json_bytes(&services)?),
            (layout.world_nodes(), fsutil::json_bytes(&nodes)?),
            (layout.world_incidents(), fsutil::json_bytes(&incidents)?),
        ];
        if !closed.is_empty() {
            homelab_core::uptime::record(&mut self.status_history, &closed, now);
            homelab_core::world::append_history(&mut self.history, closed);
            texts.push((
                layout.world_incident_history(),
                fsutil::json_bytes(&self.history)?,
            ));
            texts.push((
                layout.world_status_history(),
                fsutil::json_bytes(&self.status_history)?,
            ));
        }
        let changed: Vec<(&std::path::Path, &[u8])> = texts
            .iter()
            .filter(|(path, text)| self.written.get(path) != Some(text))
            .map(|(path, text)| (path.as_path(), text.as_slice()))
            .collect();
        let open = blocking(|| -> Result<Vec<homelab_core::Action>> {
            fsutil::write_atomic_all(&layout.world_dir(), &changed)?;
            Ok(ActionStore::new(layout.clone()).open().unwrap_or_default())
        })?;
        for (path, text) in texts {
            self.written.insert(path, text);
        }
        let repo = homelab_core::repo::RepoStatus::read(&self.config.layout);
        let summary = Summary::new(&nodes, &services, &incidents, &open, repo.as_ref());

        let mut wanted: Vec<(String, String)> = Vec::new();
        for service in &services {
            wanted.push((
                topics.state_service(&service.node, &service.service),
                serde_json::to_string(service)?,
            ));
        }
        for node in &nodes {
            wanted.push((topics.state_node(&node.node), serde_json::to_string(node)?));
        }
        wanted.push((topics.state_summary(), serde_json::to_string(&summary)?));
        if let Some(ha) = &self.config.home_assistant {
            let configs = discovery::configs(
                topics,
                &ha.prefix,
                &self.discovery_inputs(&open, ha),
                ha.form,
            );
            for (topic, payload) in configs {
                // A device config tells Home Assistant which entities went.
                let payload = match discovery::is_device_config(&ha.prefix, &topic) {
                    true => discovery::with_removals(
                        self.published.get(&topic).map(String::as_str),
                        &payload,
                    ),
                    false => payload,
                };
                wanted.push((topic, payload));
            }
        }
        let (sends, keep) = retained_sends(&self.published, wanted);
        let sends = match &self.config.home_assistant {
            Some(ha) => {
                let mut devices: Vec<Retained> = keep
                    .iter()
                    .filter(|(topic, _)| discovery::is_device_config(&ha.prefix, topic))
                    .map(|(topic, payload)| (topic.clone(), payload.clone().into_bytes()))
                    .collect();
                devices.sort();
                discovery::migration_order(&ha.prefix, sends, &devices)
            }
            None => sends,
        };
        for (topic, payload) in sends {
            let ha_config = self
                .config
                .home_assistant
                .as_ref()
                .is_some_and(|ha| discovery::is_ours(&ha.prefix, &topic));
            // Fleet mode: signed, since any node's login could publish
            // here too (a clearing cannot be signed; readers leave it to
            // the files). Home Assistant reads its configs as they are.
            let payload = match &self.config.fleet {
                Some(fleet) if !payload.is_empty() && !ha_config => homelab_core::identity::seal(
                    &payload,
                    homelab_core::identity::Context::State,
                    fleet.signing_key(),
                ),
                _ => payload,
            };
            mqtt.publish(&topic, payload, true).await?;
        }
        self.published = keep;
        Ok(())
    }
}

/// A retained message: topic and payload (empty clears it).
type Retained = (String, Vec<u8>);

/// The retained messages to publish, in order, to go from `published` to
/// `wanted` (which lists services before nodes): first the clearing of
/// topics no longer wanted, then what changed, in `wanted`'s order. A node's
/// new state then never arrives before its services'. Also what is
/// published afterwards.
pub(crate) fn retained_sends(
    published: &HashMap<String, String>,
    wanted: Vec<(String, String)>,
) -> (Vec<Retained>, HashMap<String, String>) {
    let keep: HashMap<String, String> = wanted.iter().cloned().collect();
    let mut gone: Vec<&String> = published
        .keys()
        .filter(|t| !keep.contains_key(*t))
        .collect();
    gone.sort();
    let mut sends: Vec<Retained> = gone.into_iter().map(|t| (t.clone(), Vec::new())).collect();
    for (topic, payload) in wanted {
        if published.get(&topic) != Some(&payload) {
            sends.push((topic, payload.into_bytes()));
        }
    }
    (sends, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn retained_state_clears_first_then_services_before_nodes() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(t, p)| (t.to_string(), p.to_string()))
                .collect()
        };
        let sent = |sends: Vec<Retained>| -> Vec<(String, String)> {
            sends
                .into_iter()
                .map(|(t, p)| (t, String::from_utf8(p).unwrap()))
                .collect()
        };
        let before: HashMap<String, String> = pairs(&[
            ("s/services/n1/old", "gone soon"),
            ("s/services/n1/app", "running"),
            ("s/nodes/n1", "docker unknown"),
            ("s/summary", "1"),
        ])
        .into_iter()
        .collect();
        // (wanted, expected sends)
        let cases = [
            (
                // First snapshot: the service and the node change; the
                // service goes out first, the gone one is cleared before.
                pairs(&[
                    ("s/services/n1/app", "exited"),
                    ("s/services/n1/db", "running"),
                    ("s/nodes/n1", "docker ok"),
                    ("s/summary", "1"),
                ]),
                pairs(&[
                    ("s/services/n1/old", ""),
                    ("s/services/n1/app", "exited"),
                    ("s/services/n1/db", "running"),
                    ("s/nodes/n1", "docker ok"),
                ]),
            ),
            (
                // Nothing changed: nothing sent.
                pairs(&[
                    ("s/services/n1/old", "gone soon"),
                    ("s/services/n1/app", "running"),
                    ("s/nodes/n1", "docker unknown"),
                    ("s/summary", "1"),
                ]),
                vec![],
            ),
        ];
        for (wanted, expected) in cases {
            let (sends, keep) = retained_sends(&before, wanted.clone());
            assert_eq!(sent(sends), expected);
            assert_eq!(keep, wanted.into_iter().collect::<HashMap<_, _>>());
        }
    }
}
