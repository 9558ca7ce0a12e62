//! World state from events: nodes, services, incidents. Pure: the observer
//! feeds it events (live, or replayed from the log at start) and node status
//! messages, and writes out what it holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use homelab_core::desired::Topology;
use homelab_core::event::kinds;
use homelab_core::time::Timestamp;
use homelab_core::world::{
    DockerStatus, Incident, NodeState, NodeStatus, ResolvedIncident, ServiceState, ServiceStatus,
    Snapshot,
};
use homelab_core::{Event, Name, Severity};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// How long a node may report without a container snapshot before that is
/// an incident (the agent sends one at start and on every change).
pub const NO_SNAPSHOT_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// How long an inventory node may go without a first report after the
/// observer starts before that is an incident: until then it is waiting
/// for its agent (which may simply be starting too).
pub const NEVER_REPORTED_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Monitored services per canonical node name, from the desired state.
pub type DesiredServices = BTreeMap<Name, BTreeSet<Name>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct World {
    pub nodes: BTreeMap<Name, NodeState>,
    #[serde(with = "pairs")]
    pub services: BTreeMap<(Name, Name), ServiceState>,
    /// Nodes whose online/offline came from their status topic; for those,
    /// events do not change the status.
    status_from_topic: BTreeSet<Name>,
    /// Alerts the supervisor raised, by incident id, open until their time.
    alerts: BTreeMap<String, (Incident, Timestamp)>,
    /// When events that alerts count happened lately, per node, type and
    /// service: an open alert's `count` and `last_seen` follow them.
    #[serde(with = "pairs")]
    happened: BTreeMap<(Name, String, Option<Name>), VecDeque<Timestamp>>,
    /// Services the agent's health check script calls unhealthy: a
    /// snapshot of running containers does not make them healthy again;
    /// only the script passing (`service_recovered`) does.
    #[serde(default)]
    failing_checks: BTreeSet<(Name, Name)>,
    /// Fleet mode: events are signed by their node, status messages are
    /// not (the contract's plain `online`/`offline`), so a node's own
    /// event after an `offline` on its topic proves it alive: another
    /// node's login cannot keep it marked offline.
    #[serde(skip)]
    signed_events: bool,
    /// Service incidents that ended as events were applied, with the
    /// events' own times: also one that began and ended between two
    /// writes of the world (a backlog replayed after an outage). The
    /// observer takes them at its next write ([`World::take_closed`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    closed: Vec<ResolvedIncident>,
}

/// The incident kind of a service's status, if it is one.
pub fn service_incident_kind(status: ServiceStatus) -> Option<&'static str> {
    match status {
        ServiceStatus::NotRunning => Some("service_not_running"),
        ServiceStatus::Missing => Some("service_missing"),
        ServiceStatus::Unhealthy => Some("service_unhealthy"),
        ServiceStatus::Running | ServiceStatus::Healthy => None,
    }
}

/// The service incident that ended when a service's state went from
/// `before` (its status, since and message) to `after` (status and since)
/// at `at`: none if nothing changed or it was fine before.
pub fn ended(
    key: &(Name, Name),
    before: (ServiceStatus, Timestamp, &str),
    after: Option<(ServiceStatus, Timestamp)>,
    at: Timestamp,
) -> Option<ResolvedIncident> {
    let kind = service_incident_kind(before.0)?;
    if after == Some((before.0, before.1)) {
        return None;
    }
    Some(ResolvedIncident {
        incident: Incident {
            id: format!("{kind}:{}:{}", key.0, key.1),
            kind: kind.to_string(),
            node: key.0.clone(),
            service: Some(key.1.clone()),
            severity: Severity::Warning,
            message: before.2.to_string(),
            opened_at: before.1,
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        },
        resolved_at: after.map_or(at, |(_, since)| since).max(before.1),
    })
}

/// A map with keys that are not strings, as a JSON list of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// How long `World::happened` remembers (alerts stay open an hour).
const HAPPENED_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(2);
const HAPPENED_MAX: usize = 10_000;

/// Whether an event of `kind` (about `service`) is another occurrence of
/// what an alert with `trigger` (about `about`) counts.
pub fn counts_toward(
    trigger: &str,
    about: Option<&Name>,
    kind: &str,
    service: Option<&Name>,
) -> bool {
    let same_service = about.is_none() || service.is_none() || about == service;
    match trigger {
        // A restart loop counts the service going down.
        "restart_loop" => kind == kinds::CONTAINERS_NOT_RUNNING && about == service,
        _ => trigger.starts_with("ha_") && kind == trigger && same_service,
    }
}

/// What an uplink event is about: `tailscale`, or `peer:<name>` with the
/// peer's name (a valid name, else it is about an unnamed peer).
fn uplink_key(event: &Event) -> (String, Option<Name>) {
    match event.kind.as_str() {
        kinds::TAILSCALE_DOWN | kinds::TAILSCALE_RECOVERED => ("tailscale".into(), None),
        _ => {
            let peer = event
                .data
                .get("peer")
                .and_then(|p| p.as_str())
                .and_then(|p| Name::parse(p).ok());
            let key = format!("peer:{}", peer.as_ref().map_or("?", |p| p.as_str()));
            (key, peer)
        }
    }
}

fn counted(kind: &str) -> bool {
    kind == kinds::CONTAINERS_NOT_RUNNING || kind.starts_with("ha_")
}

impl World {
    pub fn apply(&mut self, event: &Event) {
        // The services this event can change that have an incident now.
        let watched: Vec<((Name, Name), ServiceStatus, Timestamp, String)> = match &event.service {
            _ if event.seq == 0 => Vec::new(),
            Some(service) => {
                let key = (event.node.clone(), service.clone());
                self.services
                    .get(&key)
                    .filter(|s| service_incident_kind(s.status).is_some())
                    .map(|s| (key, s.status, s.since, s.message.clone()))
                    .into_iter()
                    .collect()
            }
            None if event.kind == kinds::NODE_SNAPSHOT => self
                .services
                .iter()
                .filter(|((n, _), s)| *n == event.node && service_incident_kind(s.status).is_some())
                .map(|(key, s)| (key.clone(), s.status, s.since, s.message.clone()))
                .collect(),
            None => Vec::new(),
        };
        self.apply_event(event);
        for (key, status, since, message) in watched {
            let after = self.services.get(&key).map(|s| (s.status, s.since));
            if let Some(closed) = ended(&key, (status, since, &message), after, event.ts) {
                self.closed.push(closed);
            }
        }
    }

    /// What ended since the last call (see `closed`).
    pub fn take_closed(&mut self) -> Vec<ResolvedIncident> {
        std::mem::take(&mut self.closed)
    }

    fn apply_event(&mut self, event: &Event) {
        if counted(&event.kind) {
            self.happened_at(event);
        }
        // Unsequenced events (seq 0) come from the control plane, not from
        // the node: they say nothing about whether it is alive.
        if event.seq == 0 {
            if event.kind == kinds::ALERT {
                self.apply_alert(event);
            }
            return;
        }
        let ts = event.ts;
        let node = self
            .nodes
            .entry(event.node.clone())
            .or_insert_with(|| NodeState {
                node: event.node.clone(),
                status: NodeStatus::Online,
                since: ts,
                first_seen: ts,
                last_seen: ts,
                last_seq: event.seq,
                docker: DockerStatus::Unknown,
                containers: 0,
                uplink: Default::default(),
            });
        node.last_seen = node.last_seen.max(ts);
        node.last_seq = node.last_seq.max(event.seq);
        let from_topic = self.status_from_topic.contains(&event.node);
        if self.signed_events
            && from_topic
            && node.status == NodeStatus::Offline
            && ts > node.since
            && event.kind != kinds::NODE_OFFLINE
        {
            node.status = NodeStatus::Online;
            node.since = ts;
        }
        match event.kind.as_str() {
            kinds::NODE_SNAPSHOT => match serde_json::from_value::<Snapshot>(event.data.clone()) {
                Ok(snapshot) => {
                    node.docker = DockerStatus::Ok;
                    node.containers = snapshot.containers.len();
                    self.apply_snapshot(&event.node, snapshot, ts);
                }
                Err(error) => {
                    warn!(%error, id = %event.id, "node_snapshot with unreadable data ignored")
                }
            },
            kinds::TAILSCALE_DOWN | kinds::PEER_UNREACHABLE => {
                let (key, peer) = uplink_key(event);
                node.uplink
                    .entry(key)
                    .or_insert_with(|| homelab_core::world::UplinkProblem {
                        kind: event.kind.clone(),
                        peer,
                        message: event.message.clone(),
                        since: ts,
                    });
            }
            kinds::TAILSCALE_RECOVERED | kinds::PEER_RECOVERED => {
                node.uplink.remove(&uplink_key(event).0);
            }
            kinds::DOCKER_UNREACHABLE => node.docker = DockerStatus::Unreachable,
            kinds::DOCKER_RECOVERED => node.docker = DockerStatus::Ok,
            kinds::NODE_ONLINE | kinds::NODE_OFFLINE if !from_topic => {
                let status = if event.kind == kinds::NODE_ONLINE {
                    NodeStatus::Online
                } else {
                    NodeStatus::Offline
                };
                if node.status != status {
                    node.status = status;
                    node.since = ts;
                }
            }
            kinds::CONTAINERS_NOT_RUNNING => self.set_service(event, ServiceStatus::NotRunning),
            kinds::SERVICE_UNHEALTHY => {
                if let (true, Some(service)) = (from_healthcheck(event), &event.service) {
                    self.failing_checks
                        .insert((event.node.clone(), service.clone()));
                }
                self.set_service(event, ServiceStatus::Unhealthy)
            }
            // The agent's failures before `retries` are only recorded (it
            // says `service_unhealthy` at the last); a failure from a
            // publisher that does not count retries marks it at once.
            kinds::HEALTHCHECK_FAILED if !below_retries(&event.data) => {
                self.set_service(event, ServiceStatus::Unhealthy)
            }
            kinds::SERVICE_HEALTHY => self.set_service(event, ServiceStatus::Healthy),
            // The script is gone: its containers say how the service is
            // (an unchanged snapshot is not sent again).
            kinds::HEALTHCHECK_REMOVED => {
                if let Some(service) = &event.service {
                    let key = (event.node.clone(), service.clone());
                    self.failing_checks.remove(&key);
                    if let Some(state) = self.services.get_mut(&key) {
                        if let (ServiceStatus::Unhealthy, Some(status)) =
                            (state.status, containers_status(&state.containers))
                        {
                            if status != state.status {
                                state.status = status;
                                state.since = event.ts;
                                state.message = event.message.clone();
                            }
                        }
                    }
                }
            }
            kinds::SERVICE_RECOVERED => {
                if let (true, Some(service)) = (from_healthcheck(event), &event.service) {
                    self.failing_checks
                        .remove(&(event.node.clone(), service.clone()));
                }
                self.set_service(event, ServiceStatus::Running)
            }
            _ => {}
        }
    }

    fn happened_at(&mut self, event: &Event) {
        let key = (
            event.node.clone(),
            event.kind.clone(),
            event.service.clone(),
        );
        let times = self.happened.entry(key).or_default();
        let at = times.partition_point(|t| *t <= event.ts);
        times.insert(at, event.ts);
        let newest = *times.back().expect("just inserted");
        while times
            .front()
            .is_some_and(|t| newest - *t > HAPPENED_KEPT || times.len() > HAPPENED_MAX)
        {
            times.pop_front();
        }
    }

    /// An open alert, its count and last time brought up to date with what
    /// happened after it was raised.
    fn alert_now(&self, incident: &Incident) -> Incident {
        let mut incident = incident.clone();
        let later = self
            .happened
            .range((incident.node.clone(), String::new(), None)..)
            .take_while(|((node, _, _), _)| *node == incident.node)
            .filter(|((_, kind, service), _)| {
                counts_toward(
                    &incident.kind,
                    incident.service.as_ref(),
                    kind,
                    service.as_ref(),
                )
            })
            .flat_map(|(_, times)| times.iter().filter(|t| **t > incident.opened_at));
        let (mut more, mut last) = (0u64, incident.opened_at);
        for t in later {
            more += 1;
            last = last.max(*t);
        }
        incident.count = Some(incident.count.unwrap_or(1) + more);
        incident.last_seen = Some(last);
        incident
    }

    fn apply_alert(&mut self, event: &Event) {
        let trigger = event
            .data
            .get("trigger")
            .and_then(|t| t.as_str())
            .unwrap_or(kinds::ALERT);
        let until = event
            .data
            .get("until")
            .and_then(|u| u.as_str())
            .and_then(|u| chrono::DateTime::parse_from_rfc3339(u).ok())
            .map(|u| u.with_timezone(&chrono::Utc))
            .unwrap_or(event.ts + chrono::TimeDelta::hours(1));
        let id = match &event.service {
            Some(s) => format!("{trigger}:{}:{s}", event.node),
            None => format!("{trigger}:{}", event.node),
        };
        let incident = Incident {
            id: id.clone(),
            kind: trigger.to_string(),
            node: event.node.clone(),
            service: event.service.clone(),
            severity: event.severity,
            message: event.message.clone(),
            opened_at: event.ts,
            count: event.data.get("count").and_then(|c| c.as_u64()),
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        };
        if self
            .alerts
            .get(&id)
            .is_none_or(|(old, _)| old.opened_at <= event.ts)
        {
            self.alerts.insert(id, (incident, until));
        }
    }

    fn apply_snapshot(&mut self, node: &Name, snapshot: Snapshot, ts: Timestamp) {
        let mut grouped: BTreeMap<Name, Vec<_>> = BTreeMap::new();
        for container in snapshot.containers {
            grouped
                .entry(container.service.clone())
                .or_default()
                .push(container);
        }
        // A service that was there and is not now is missing from this
        // moment: its drift (and grace period) counts from here.
        for ((n, s), state) in self.services.iter_mut() {
            if n == node && !grouped.contains_key(s) && state.status != ServiceStatus::Missing {
                state.status = ServiceStatus::Missing;
                state.since = ts;
                state.message = "no container of this service on the node".into();
                state.containers.clear();
            }
        }
        for (service, containers) in grouped {
            let mut worst = containers_status(&containers).unwrap_or(ServiceStatus::Running);
            if self
                .failing_checks
                .contains(&(node.clone(), service.clone()))
                && ServiceStatus::Unhealthy.rank() > worst.rank()
            {
                worst = ServiceStatus::Unhealthy;
            }
            let message = containers
                .iter()
                .map(|c| format!("{}: {}", c.name, c.status))
                .collect::<Vec<_>>()
                .join("; ");
            let key = (node.clone(), service.clone());
            match self.services.get_mut(&key) {
                Some(state) => {
                    if state.status != worst {
                        state.status = worst;
                        state.since = ts;
                    }
                    state.message = message;
                    state.containers = containers;
                }
                None => {
                    self.services.insert(
                        key,
                        ServiceState {
                            node: node.clone(),
                            service,
                            status: worst,
                            since: ts,
                            message,
                            containers,
                        },
                    );
                }
            }
        }
    }

    fn set_service(&mut self, event: &Event, status: ServiceStatus) {
        let Some(service) = &event.service else {
            return;
        };
        let key = (event.node.clone(), service.clone());
        let state = self.services.entry(key).or_insert_with(|| ServiceState {
            node: event.node.clone(),
            service: service.clone(),
            status,
            since: event.ts,
            message: String::new(),
            containers: Vec::new(),
        });
        if state.status != status {
            state.status = status;
            state.since = event.ts;
        }
        state.message = event.message.clone();
    }

    /// Forgets missing services that `keep` does not want (those no longer
    /// in the desired state): a container removed on purpose is not news
    /// forever.
    pub fn forget_missing(&mut self, keep: impl Fn(&Name, &Name) -> bool) {
        self.services
            .retain(|(n, s), state| state.status != ServiceStatus::Missing || keep(n, s));
    }

    /// Fleet mode: the node's own (signed) events prove it alive after an
    /// `offline` on its status topic.
    pub fn set_signed_events(&mut self, signed: bool) {
        self.signed_events = signed;
    }

    /// A retained `online`/`offline` on the node's status topic (the agent's
    /// own, or its Last Will).
    pub fn set_status(&mut self, node: &Name, status: NodeStatus, at: Timestamp) {
        self.status_from_topic.insert(node.clone());
        let state = self.nodes.entry(node.clone()).or_insert_with(|| NodeState {
            node: node.clone(),
            status,
            since: at,
            first_seen: at,
            last_seen: at,
            last_seq: 0,
            docker: DockerStatus::Unknown,
            containers: 0,
            uplink: Default::default(),
        });
        if state.status != status {
            state.status = status;
            state.since = at;
        }
    }

    /// Open incidents. `inventory` holds the nodes that should report (with
    /// their aliases): one that never reported is a node incident.
    /// `desired` holds the monitored services per canonical node: one that
    /// is missing on a node that sends snapshots is a service incident.
    pub fn incidents(
        &self,
        inventory: &Topology,
        desired: &DesiredServices,
        since_start: Timestamp,
        now: Timestamp,
    ) -> Vec<Incident> {
        let mut out = Vec::new();
        let incident = |kind: &str,
                        node: &Name,
                        service: Option<&Name>,
                        severity,
                        message: String,
                        opened_at| Incident {
            id: match service {
                Some(s) => format!("{kind}:{node}:{s}"),
                None => format!("{kind}:{node}"),
            },
            kind: kind.to_string(),
            node: node.clone(),
            service: service.cloned(),
            severity,
            message,
            opened_at,
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        };
        for (name, spec) in &inventory.nodes {
            let seen = self.nodes.contains_key(name)
                || spec.aliases.iter().any(|a| self.nodes.contains_key(a));
            if !seen && now - since_start >= NEVER_REPORTED_AFTER {
                out.push(incident(
                    "node_never_reported",
                    name,
                    None,
                    Severity::Warning,
                    format!(
                        "node {name} has not reported in the {} min since the observer started",
                        NEVER_REPORTED_AFTER.num_minutes()
                    ),
                    since_start + NEVER_REPORTED_AFTER,
                ));
            }
        }
        for node in self.nodes.values() {
            if node.status == NodeStatus::Offline {
                out.push(incident(
                    "node_offline",
                    &node.node,
                    None,
                    Severity::Error,
                    format!("node {} is offline", node.node),
                    node.since,
                ));
            }
            if node.status == NodeStatus::Online
                && node.docker == DockerStatus::Unknown
                && now - node.first_seen >= NO_SNAPSHOT_AFTER
            {
                out.push(incident(
                    "no_snapshot",
                    &node.node,
                    None,
                    Severity::Warning,
                    format!(
                        "node {} reports but has sent no container snapshot: its services cannot be judged",
                        node.node
                    ),
                    node.first_seen + NO_SNAPSHOT_AFTER,
                ));
            }
            // Desired services that never appeared on a node whose
            // containers are known.
            if node.status == NodeStatus::Online && node.docker == DockerStatus::Ok {
                let canonical = inventory.canonical(&node.node);
                for service in desired.get(&canonical).into_iter().flatten() {
                    if !self
                        .services
                        .contains_key(&(node.node.clone(), service.clone()))
                    {
                        out.push(incident(
                            "service_missing",
                            &node.node,
                            Some(service),
                            Severity::Warning,
                            "desired here, and no container of it has been seen on the node".into(),
                            node.since,
                        ));
                    }
                }
            }
            for problem in node.uplink.values() {
                let mut found = incident(
                    &problem.kind,
                    &node.node,
                    None,
                    Severity::Warning,
                    problem.message.clone(),
                    problem.since,
                );
                if let Some(peer) = &problem.peer {
                    found.id = format!("{}:{}:{peer}", problem.kind, node.node);
                }
                out.push(found);
            }
            if node.docker == DockerStatus::Unreachable {
                out.push(incident(
                    "docker_unreachable",
                    &node.node,
                    None,
                    Severity::Error,
                    format!("docker engine on {} is unreachable", node.node),
                    node.last_seen,
                ));
            }
        }
        for service in self.services.values() {
            let Some(kind) = service_incident_kind(service.status) else {
                continue;
            };
            out.push(incident(
                kind,
                &service.node,
                Some(&service.service),
                Severity::Warning,
                service.message.clone(),
                service.since,
            ));
        }
        out.extend(
            self.alerts
                .values()
                .filter(|(_, until)| now < *until)
                .map(|(incident, _)| self.alert_now(incident)),
        );
        out
    }
}

/// Whether a service event comes from the agent's health check script.
/// The worst status of a service's containers (None: it has none).
fn containers_status(containers: &[homelab_core::world::Container]) -> Option<ServiceStatus> {
    containers
        .iter()
        .map(|c| c.service_status())
        .max_by_key(|s| s.rank())
}

fn from_healthcheck(event: &Event) -> bool {
    event.data.get("source").and_then(|s| s.as_str()) == Some("healthcheck")
}

/// Whether a `healthcheck_failed` says it is still below its retries
/// (`data.failures < data.retries`).
fn below_retries(data: &serde_json::Value) -> bool {
    match (
        data.get("failures").and_then(|v| v.as_u64()),
        data.get("retries").and_then(|v| v.as_u64()),
    ) {
        (Some(failures), Some(retries)) => failures < retries,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::desired::NodeSpec;
    use homelab_core::world::Container;
    use serde_json::json;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn event(seq: u64, kind: &str, service: Option<&str>, data: serde_json::Value) -> Event {
        Event {
            v: 1,
            id: format!("E{seq}"),
            ts: format!("2026-11-22T10:00:{:02}Z", seq).parse().unwrap(),
            node: n("piha"),
            seq,
            source: "node-agent".into(),
            kind: kind.into(),
            service: service.map(n),
            severity: Severity::Info,
            message: format!("m{seq}"),
            data,
        }
    }

    fn snapshot(containers: &[(&str, &str)]) -> serde_json::Value {
        let containers: Vec<Container> = containers
            .iter()
            .map(|(service, state)| Container {
                id: format!("id-{service}"),
                name: service.to_string(),
                service: n(service),
                image: "i".into(),
                state: state.to_string(),
                status: state.to_string(),
                health: None,
                restart_count: None,
                exit_code: None,
            })
            .collect();
        json!({ "containers": containers })
    }

    /// A backlog replayed in one batch: the service went down and came
    /// back between two writes of the world. The incident is there, with
    /// the events' times; one still open is not.
    #[test]
    fn what_ended_between_two_writes_is_kept_with_its_times() {
        let mut world = World::default();
        world.apply(&event(
            1,
            "node_snapshot",
            None,
            snapshot(&[("app", "running"), ("db", "running")]),
        ));
        world.apply(&event(
            2,
            "node_snapshot",
            None,
            snapshot(&[("app", "exited"), ("db", "exited")]),
        ));
        world.apply(&event(
            3,
            "node_snapshot",
            None,
            snapshot(&[("app", "running"), ("db", "exited")]),
        ));
        let closed = world.take_closed();
        assert_eq!(closed.len(), 1, "{closed:#?}");
        let app = &closed[0];
        assert_eq!(app.incident.id, "service_not_running:piha:app");
        assert_eq!(app.incident.opened_at, event(2, "x", None, json!({})).ts);
        assert_eq!(app.resolved_at, event(3, "x", None, json!({})).ts);
        assert!(world.take_closed().is_empty(), "taken once");
        // A service event ends one too.
        world.apply(&event(4, "service_healthy", Some("db"), json!({})));
        let db: Vec<String> = world
            .take_closed()
            .into_iter()
            .map(|c| c.incident.id)
            .collect();
        assert_eq!(db, ["service_not_running:piha:db"]);
    }

    #[test]
    fn snapshot_is_authoritative_for_its_node() {
        let mut world = World::default();
        world.apply(&event(
            1,
            "node_snapshot",
            None,
            snapshot(&[("mosquitto", "running"), ("npm", "exited")]),
        ));
        assert_eq!(world.services.len(), 2);
        assert_eq!(
            world.services[&(n("piha"), n("npm"))].status,
            ServiceStatus::NotRunning
        );
        world.apply(&event(
            2,
            "node_snapshot",
            None,
            snapshot(&[("mosquitto", "running")]),
        ));
        // npm went missing at the second snapshot, and says so from then.
        let npm = &world.services[&(n("piha"), n("npm"))];
        assert_eq!(npm.status, ServiceStatus::Missing);
        assert_eq!(npm.since, event(2, "x", None, json!({})).ts);
        assert!(npm.containers.is_empty());
        world.apply(&event(
            3,
            "node_snapshot",
            None,
            snapshot(&[("mosquitto", "running")]),
        ));
        assert_eq!(
            world.services[&(n("piha"), n("npm"))].since,
            event(2, "x", None, json!({})).ts,
            "still missing since the snapshot it vanished from"
        );
        world.forget_missing(|_, s| s.as_str() != "npm");
        assert_eq!(
            world
                .services
                .keys()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>(),
            vec!["mosquitto"]
        );
        // `since` moves only when the status changes.
        world.apply(&event(
            4,
            "containers_not_running",
            Some("mosquitto"),
            json!({}),
        ));
        let since = world.services[&(n("piha"), n("mosquitto"))].since;
        world.apply(&event(
            5,
            "node_snapshot",
            None,
            snapshot(&[("mosquitto", "exited")]),
        ));
        assert_eq!(world.services[&(n("piha"), n("mosquitto"))].since, since);
        assert_eq!(world.nodes[&n("piha")].last_seq, 5);
    }

    #[test]
    fn health_check_failures_count_only_at_their_retries() {
        // (data of a healthcheck_failed, unhealthy after it)
        let cases = [
            (json!({"failures": 1, "retries": 3}), false),
            (json!({"failures": 3, "retries": 3}), true),
            (json!({}), true),
            (json!({"failures": "x", "retries": 3}), true),
        ];
        for (data, unhealthy) in cases {
            let mut world = World::default();
            world.apply(&event(
                1,
                "node_snapshot",
                None,
                snapshot(&[("z2m", "running")]),
            ));
            world.apply(&event(2, "healthcheck_failed", Some("z2m"), data.clone()));
            let status = world.services[&(n("piha"), n("z2m"))].status;
            assert_eq!(
                status == ServiceStatus::Unhealthy,
                unhealthy,
                "{data}: {status:?}"
            );
        }
    }

    #[test]
    fn a_scripts_verdict_outlives_snapshots_until_it_passes_or_is_removed() {
        let unhealthy = json!({"source": "healthcheck", "failures": 3});
        let running = || snapshot(&[("z2m", "running")]);
        let status = |world: &World| world.services[&(n("piha"), n("z2m"))].status;
        // (what follows the verdict, status after the next snapshot)
        let cases = [
            (None, ServiceStatus::Unhealthy),
            (Some("service_recovered"), ServiceStatus::Running),
            (Some("healthcheck_removed"), ServiceStatus::Running),
        ];
        for (then, after) in cases {
            let mut world = World::default();
            world.apply(&event(1, "node_snapshot", None, running()));
            world.apply(&event(
                2,
                "service_unhealthy",
                Some("z2m"),
                unhealthy.clone(),
            ));
            if let Some(kind) = then {
                world.apply(&event(
                    3,
                    kind,
                    Some("z2m"),
                    json!({"source": "healthcheck"}),
                ));
            }
            // At once (the agent does not repeat an unchanged snapshot),
            // and after the next one.
            assert_eq!(status(&world), after, "{then:?}");
            world.apply(&event(4, "node_snapshot", None, running()));
            assert_eq!(status(&world), after, "{then:?}");
        }
    }

    /// Fleet mode: an `offline` on the status topic (which any login could
    /// publish) holds only until the node's own signed events say
    /// otherwise; in open mode the topic alone decides, as before.
    #[test]
    fn in_a_fleet_a_node_s_own_events_outweigh_an_offline_status() {
        let at =
            |secs: u32| -> Timestamp { format!("2026-11-22T10:00:{secs:02}Z").parse().unwrap() };
        // (fleet, status offline at, next event seq (its ts = seq s), kind, online after)
        let cases = [
            (true, 5, 6, "node_snapshot", true),
            (true, 5, 7, "healthcheck_failed", true),
            // Older than the offline: an event resent from the outbox.
            (true, 5, 4, "node_snapshot", false),
            // The node says itself it goes offline.
            (true, 5, 6, "node_offline", false),
            (false, 5, 6, "node_snapshot", false),
        ];
        for (fleet, offline_at, seq, kind, online) in cases {
            let mut world = World::default();
            world.set_signed_events(fleet);
            world.apply(&event(1, "node_snapshot", None, snapshot(&[])));
            world.set_status(&n("piha"), NodeStatus::Offline, at(offline_at));
            world.apply(&event(seq, kind, None, json!({})));
            let status = world.nodes[&n("piha")].status;
            assert_eq!(
                status == NodeStatus::Online,
                online,
                "fleet {fleet}, offline at {offline_at}, {kind} at {seq}"
            );
        }
    }

    #[test]
    fn incidents() {
        let mut world = World::default();
        let start = "2026-11-22T09:00:00Z".parse().unwrap();
        world.apply(&event(1, "containers_not_running", Some("npm"), json!({})));
        world.set_status(&n("piha"), NodeStatus::Offline, start);
        let node = |aliases: Vec<Name>| NodeSpec {
            aliases,
            ..Default::default()
        };
        let inventory = Topology {
            nodes: BTreeMap::from([
                (n("vps"), node(vec![n("node-1")])),
                (n("piha"), node(vec![])),
                (n("saturn"), node(vec![])),
            ]),
        };
        world.apply(&Event {
            node: n("node-1"),
            ..event(1, "node_snapshot", None, snapshot(&[]))
        });
        // vps (as node-1) should run mosquitto, never seen there.
        let desired = BTreeMap::from([(n("vps"), BTreeSet::from([n("mosquitto")]))]);
        let ids = |world: &World, now| -> Vec<String> {
            world
                .incidents(&inventory, &desired, start, now)
                .into_iter()
                .map(|i| i.id)
                .collect()
        };
        // saturn has not reported: waiting for its agent, an incident only
        // after the grace.
        assert_eq!(
            ids(&world, start),
            vec![
                "service_missing:node-1:mosquitto",
                "node_offline:piha",
                "service_not_running:piha:npm"
            ]
        );
        let late = start + NEVER_REPORTED_AFTER;
        assert!(!ids(&world, late - chrono::TimeDelta::seconds(1))
            .contains(&"node_never_reported:saturn".to_string()));
        let never = world
            .incidents(&inventory, &desired, start, late)
            .into_iter()
            .find(|i| i.id == "node_never_reported:saturn")
            .expect("the incident after the grace");
        assert_eq!(never.opened_at, late);
        // saturn reports, but never sends a snapshot: after two minutes
        // that is an incident of its own.
        world.apply(&Event {
            node: n("saturn"),
            ts: start,
            ..event(1, "test_event", None, json!({}))
        });
        let later = start + NO_SNAPSHOT_AFTER;
        assert!(!ids(&world, later - chrono::TimeDelta::seconds(1))
            .contains(&"no_snapshot:saturn".to_string()));
        assert!(ids(&world, later).contains(&"no_snapshot:saturn".to_string()));
    }

    /// Tailscale and the peers a node needs open incidents of their own,
    /// from the event's time until the recovery; a peer name that is not
    /// a valid name never reaches an id.
    #[test]
    fn uplink_problems_are_incidents_until_they_recover() {
        let start: Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
        let mut world = World::default();
        let ids = |world: &World| -> Vec<(String, Timestamp)> {
            world
                .incidents(&Topology::default(), &BTreeMap::new(), start, start)
                .into_iter()
                .map(|i| (i.id, i.opened_at))
                .collect()
        };
        let at = |seq: u64, kind: &str, data| Event {
            ts: start + chrono::TimeDelta::seconds(seq as i64),
            ..event(seq, kind, None, data)
        };
        let t = |s: i64| start + chrono::TimeDelta::seconds(s);
        world.apply(&at(1, "peer_unreachable", json!({"peer": "vps"})));
        world.apply(&at(2, "tailscale_down", json!({"reason": "Stopped"})));
        world.apply(&at(3, "tailscale_down", json!({"reason": "Stopped"})));
        world.apply(&at(4, "peer_unreachable", json!({"peer": "../etc"})));
        assert_eq!(
            ids(&world),
            vec![
                ("peer_unreachable:piha".to_string(), t(4)),
                ("peer_unreachable:piha:vps".to_string(), t(1)),
                ("tailscale_down:piha".to_string(), t(2)),
            ]
        );
        world.apply(&at(5, "tailscale_recovered", json!({})));
        world.apply(&at(6, "peer_recovered", json!({"peer": "vps"})));
        assert_eq!(
            ids(&world),
            vec![("peer_unreachable:piha".to_string(), t(4))]
        );
        // It survives the world file.
        let back: NodeState =
            serde_json::from_str(&serde_json::to_string(&world.nodes[&n("piha")]).unwrap())
                .unwrap();
        assert_eq!(back.uplink, world.nodes[&n("piha")].uplink);
    }

    fn alert(seq_ts: u64, trigger: &str, service: Option<&str>, count: u64) -> Event {
        Event {
            seq: 0,
            id: format!("A{seq_ts}"),
            source: "supervisor".into(),
            ..event(
                seq_ts,
                "alert",
                service,
                json!({"trigger": trigger, "count": count, "until": "2026-11-22T11:00:00Z"}),
            )
        }
    }

    #[test]
    fn open_alerts_keep_counting() {
        let inventory = Topology::default();
        let desired = DesiredServices::new();
        let now: Timestamp = "2026-11-22T10:01:00Z".parse().unwrap();
        let mut world = World::default();
        // Raised at :10 after one integration failure; two more follow,
        // one of them replayed from the log before the alert itself.
        world.apply(&event(20, "ha_integration_failed", None, json!({})));
        world.apply(&alert(10, "ha_integration_failed", None, 1));
        world.apply(&event(30, "ha_integration_failed", None, json!({})));
        world.apply(&event(5, "ha_integration_failed", None, json!({})));
        world.apply(&event(40, "ha_recorder_lag", None, json!({})));
        // A restart loop raised at :12 with 3 downs; 2 more of that service,
        // one of another.
        world.apply(&alert(12, "restart_loop", Some("mosquitto"), 3));
        for seq in [13, 15] {
            world.apply(&event(
                seq,
                "containers_not_running",
                Some("mosquitto"),
                json!({}),
            ));
        }
        world.apply(&event(16, "containers_not_running", Some("npm"), json!({})));
        let incidents = world.incidents(&inventory, &desired, now, now);
        let get = |id: &str| incidents.iter().find(|i| i.id == id).unwrap();
        let ha = get("ha_integration_failed:piha");
        assert_eq!(ha.count, Some(3));
        assert_eq!(ha.last_seen, Some(event(30, "x", None, json!({})).ts));
        let looping = get("restart_loop:piha:mosquitto");
        assert_eq!(looping.count, Some(5));
        assert_eq!(looping.last_seen, Some(event(15, "x", None, json!({})).ts));
    }

    #[test]
    fn what_counts_toward_an_alert() {
        let check = |trigger, about: Option<&str>, kind, service: Option<&str>, expected| {
            let (about, service) = (about.map(n), service.map(n));
            assert_eq!(
                counts_toward(trigger, about.as_ref(), kind, service.as_ref()),
                expected,
                "{trigger} {about:?} <- {kind} {service:?}"
            );
        };
        check("ha_recorder_lag", None, "ha_recorder_lag", None, true);
        check("ha_recorder_lag", None, "ha_update_available", None, false);
        check(
            "ha_websocket_dead",
            Some("homeassistant"),
            "ha_websocket_dead",
            None,
            true,
        );
        check(
            "restart_loop",
            Some("mqtt"),
            "containers_not_running",
            Some("mqtt"),
            true,
        );
        check(
            "restart_loop",
            Some("mqtt"),
            "containers_not_running",
            Some("npm"),
            false,
        );
        check(
            "restart_loop",
            Some("mqtt"),
            "service_unhealthy",
            Some("mqtt"),
            false,
        );
        check("auto_limit", None, "auto_limit", None, false);
    }
}
