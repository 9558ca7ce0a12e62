//! The decision: from desired state, world state, open actions, recent
//! events and the time, the actions to propose, the pending ones to cancel,
//! the ones to approve by policy, and the alerts to raise. Pure: no clock, no files, no
//! MQTT; the shell in `lib.rs` does the I/O.
//!
//! Routing (DESIGN.md, "Actions"):
//! - per desired service (`monitor: true`, `remediation` not `off`) on a node
//!   that is online with a Docker snapshot: not running, or an
//!   `mqtt_unreachable` not followed by a recovery → `container_restart`
//!   (low); missing → `redeploy` (guarded, `service_missing`); unhealthy →
//!   `redeploy` (guarded);
//! - the node's latest `disk_pressure` is `high` → `disk_cleanup` (guarded);
//! - `ha_websocket_dead` (not followed by `ha_websocket_recovered`) →
//!   `container_restart` of homeassistant, not within 30 min of the last
//!   completed one; where no restart may be proposed, an alert instead;
//! - other `ha_*` → an alert, at most one an hour per node and type;
//! - Home Assistant rules are suppressed while homeassistant had
//!   `containers_not_running` in the last 5 minutes (or is not running).
//!
//! Guards:
//! - a drift must last its grace period (the service's `grace_period`, else
//!   the default) before it is proposed;
//! - a service that went down `loop_threshold` times within `loop_window`
//!   is in a restart loop: no new action, one alert with the count;
//! - inside a maintenance window nothing new is proposed (and no alert
//!   raised) for what the window covers; pending actions stay;
//! - a node whose desired state is not known (`Desired::frozen`: its files
//!   do not load and never did) is neither proposed for nor has anything
//!   cancelled;
//! - a node that is offline, has never reported, or whose Docker state is
//!   unknown gets no per-node or per-service action (the observer raises the
//!   node incident); its pending actions are left alone, not judged blind;
//! - an id that is open (pending, approved, running) is never proposed again;
//!   nor is an id for a drift that began before that id last finished: the
//!   world may not yet show the effect of a restart that just completed, and
//!   an operator who rejected a proposal does not want it back for the same
//!   episode. A new failure after that (a later `since`) is a new drift;
//! - only *pending* actions are cancelled: `service_removed_from_desired_state`
//!   when the service left the desired state (or opted out), else
//!   `drift_resolved_auto` when its drift is gone;
//! - low-risk actions of `remediation: auto` services are approved by policy,
//!   at most `auto_limit` runs of one id an hour; past that they wait for a
//!   human and an alert says why.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use homelab_core::action::cancel_reasons;
use homelab_core::desired::{Desired, Remediation, ServiceSpec};
use homelab_core::event::kinds;
use homelab_core::time::Timestamp;
use homelab_core::world::{DockerStatus, NodeState, NodeStatus, ServiceState, ServiceStatus};
use homelab_core::{Action, ActionKind, ActionState, Event, Name, Risk, Severity};

/// The service Home Assistant's events are about.
pub const HOMEASSISTANT: &str = "homeassistant";
/// No new restart of homeassistant for a dead websocket this soon after the
/// last one completed.
pub const HA_RESTART_COOLDOWN: chrono::TimeDelta = chrono::TimeDelta::minutes(30);
/// Home Assistant rules wait this long after homeassistant's containers
/// stopped running: their events are a consequence, not a cause.
pub const HA_SUPPRESS: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// At most one alert per node, service and trigger this often.
pub const ALERT_COOLDOWN: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// The window of the auto-approval rate limit.
pub const AUTO_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);
use kinds::ALERT;

#[derive(Debug, Clone)]
pub struct Settings {
    pub default_grace: Duration,
    /// Runs of one id an hour that policy may approve.
    pub auto_limit: usize,
    /// Times a service may go down within `loop_window` before it counts
    /// as a restart loop.
    pub loop_threshold: usize,
    pub loop_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_grace: Duration::from_secs(30),
            auto_limit: 3,
            loop_threshold: 3,
            loop_window: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Action>,
    pub cancel: Vec<Cancel>,
    /// Pending (or just created) actions that policy approves.
    pub approve: Vec<Name>,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cancel {
    pub id: Name,
    pub reason: &'static str,
}

/// An alert-only outcome: the shell publishes it as an `alert` event, which
/// the observer shows as an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub node: Name,
    pub service: Option<Name>,
    /// What it is about: an `ha_*` type, `restart_loop`, `auto_limit`.
    pub trigger: String,
    pub severity: Severity,
    pub message: String,
    /// How many times the trigger happened since the last alert about it.
    pub count: usize,
}

impl Alert {
    /// The event the shell publishes (unsequenced: `seq` 0).
    pub fn event(&self, now: Timestamp) -> Event {
        Event {
            v: 1,
            id: homelab_core::event::new_id(),
            ts: now,
            node: self.node.clone(),
            seq: 0,
            source: "supervisor".into(),
            kind: ALERT.into(),
            service: self.service.clone(),
            severity: self.severity,
            message: self.message.clone(),
            data: serde_json::json!({
                "trigger": self.trigger,
                "count": self.count,
                "until": homelab_core::time::format(&(now + ALERT_COOLDOWN)),
            }),
        }
    }
}

/// What is wrong with one service or node, if anything.
#[derive(Debug, Clone, PartialEq)]
struct Drift {
    kind: ActionKind,
    risk: Risk,
    reason: &'static str,
    message: String,
    since: Timestamp,
}

/// What the plan reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub desired: &'a Desired,
    pub nodes: &'a [NodeState],
    pub services: &'a [ServiceState],
    /// Pending, approved and running actions.
    pub open: &'a [Action],
    /// The latest finished action of each id.
    pub finished: &'a [Action],
    /// Recent events (a day is plenty), in any order; alerts the shell
    /// raised itself included.
    pub events: &'a [Event],
    /// Services whose compose files the repo changed since they were
    /// deployed ([`crate::changes`]), under canonical node names.
    pub changes: &'a BTreeMap<(Name, Name), crate::changes::Change>,
}

/// The reason of a redeploy proposed because the repo changed a service's
/// compose files.
pub const DESIRED_CHANGED: &str = "desired_changed";

/// Whether the rules read events of this type: the shell keeps only these.
pub fn reads(kind: &str) -> bool {
    matches!(
        kind,
        kinds::CONTAINERS_NOT_RUNNING
            | kinds::MQTT_UNREACHABLE
            | kinds::SERVICE_RECOVERED
            | kinds::SERVICE_HEALTHY
            | kinds::DISK_PRESSURE
            | kinds::REMEDIATION_STARTED
            | ALERT
    ) || kind.starts_with("ha_")
}

/// Recent events, indexed under canonical node names.
#[derive(Default)]
struct Recent<'a> {
    /// `containers_not_running` times per node and service.
    down: BTreeMap<(Name, Name), Vec<Timestamp>>,
    /// Latest `mqtt_unreachable` per node and service.
    unreachable: BTreeMap<(Name, Name), &'a Event>,
    /// Latest sign of a service answering again.
    recovered: BTreeMap<(Name, Name), Timestamp>,
    /// Latest `disk_pressure` per node and mount (`data.mount`).
    disk: BTreeMap<(Name, String), &'a Event>,
    /// Latest `ha_websocket_dead` or `ha_websocket_recovered` per node.
    websocket: BTreeMap<Name, &'a Event>,
    /// Other `ha_*` per node and type.
    ha: BTreeMap<(Name, String), Vec<&'a Event>>,
    /// Latest alert per node, service and trigger.
    alerted: BTreeMap<(Name, Option<Name>, String), Timestamp>,
    /// `remediation_started` times per action id.
    started: BTreeMap<String, Vec<Timestamp>>,
}

/// Keeps the later of what `map` holds under `key` and `value`.
fn keep_latest<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    at: impl Fn(&V) -> Timestamp,
) {
    match map.entry(key) {
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(value);
        }
        std::collections::btree_map::Entry::Occupied(mut slot) => {
            if at(slot.get()) <= at(&value) {
                slot.insert(value);
            }
        }
    }
}

impl<'a> Recent<'a> {
    fn index(desired: &Desired, events: impl Iterator<Item = &'a Event>) -> Self {
        let mut r = Recent::default();
        for event in events {
            let node = desired.canonical(&event.node);
            let key = |s: &Name| (node.clone(), s.clone());
            match (event.kind.as_str(), &event.service) {
                (kinds::CONTAINERS_NOT_RUNNING, Some(s)) => {
                    r.down.entry(key(s)).or_default().push(event.ts)
                }
                (kinds::MQTT_UNREACHABLE, Some(s)) => {
                    keep_latest(&mut r.unreachable, key(s), event, |e| e.ts)
                }
                (kinds::SERVICE_RECOVERED | kinds::SERVICE_HEALTHY, Some(s)) => {
                    keep_latest(&mut r.recovered, key(s), event.ts, |t| *t)
                }
                (kinds::DISK_PRESSURE, _) => {
                    let mount = event.data.get("mount").and_then(|m| m.as_str());
                    let key = (node, mount.unwrap_or_default().to_string());
                    keep_latest(&mut r.disk, key, event, |e| e.ts)
                }
                (HA_WEBSOCKET_DEAD | HA_WEBSOCKET_RECOVERED, _) => {
                    keep_latest(&mut r.websocket, node, event, |e| e.ts)
                }
                (kind, _) if kind.starts_with("ha_") => {
                    r.ha.entry((node, kind.to_string()))
                        .or_default()
                        .push(event)
                }
                (ALERT, service) => {
                    if let Some(trigger) = event.data.get("trigger").and_then(|t| t.as_str()) {
                        let key = (node, service.clone(), trigger.to_string());
                        keep_latest(&mut r.alerted, key, event.ts, |t| *t);
                    }
                }
                (kinds::REMEDIATION_STARTED, _) => {
                    if let Some(id) = event.action_id() {
                        r.started.entry(id.to_string()).or_default().push(event.ts);
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// Whether an alert about this may be raised now (none in the cooldown).
    fn may_alert(
        &self,
        node: &Name,
        service: Option<&Name>,
        trigger: &str,
        now: Timestamp,
    ) -> bool {
        self.alerted
            .get(&(node.clone(), service.cloned(), trigger.to_string()))
            .is_none_or(|at| now - *at >= ALERT_COOLDOWN)
    }

    fn last_alert(&self, node: &Name, service: Option<&Name>, trigger: &str) -> Option<Timestamp> {
        self.alerted
            .get(&(node.clone(), service.cloned(), trigger.to_string()))
            .copied()
    }
}

const HA_WEBSOCKET_DEAD: &str = "ha_websocket_dead";
const HA_WEBSOCKET_RECOVERED: &str = "ha_websocket_recovered";

/// What a pass judges: every node, or only some (canonical names), e.g.
/// those one event or world change is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Nodes(BTreeSet<Name>),
}

impl Scope {
    /// The names a node in scope may report under: its own and its
    /// aliases. `None`: everything is in scope.
    pub fn names(&self, desired: &Desired) -> Option<BTreeSet<Name>> {
        let Scope::Nodes(nodes) = self else {
            return None;
        };
        let mut names = nodes.clone();
        for node in nodes {
            if let Some(spec) = desired.topology.nodes.get(node) {
                names.extend(spec.aliases.iter().cloned());
            }
        }
        Some(names)
    }
}

/// What woke the supervisor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wake<'a> {
    /// The timer: grace periods expire, windows open and close.
    Tick,
    /// (Re)connected: what happened meanwhile is unknown.
    Connected,
    /// A message on this topic.
    Message(&'a str),
    /// An event of this node, stored by the observer in the same process.
    Stored(&'a Name),
}

impl Scope {
    /// Judges nothing (until widened).
    pub fn none() -> Scope {
        Scope::Nodes(BTreeSet::new())
    }

    /// Widens the scope by what `wake` can change. An event, or the world
    /// state of a node or of one of its services, can change only that
    /// node's plan; the summary only follows those; anything else (the
    /// timer, a reconnect, a topic not understood) may change anything.
    pub fn widen(&mut self, wake: Wake<'_>, topics: &homelab_core::Topics, desired: &Desired) {
        let Scope::Nodes(nodes) = self else { return };
        let topic = match wake {
            Wake::Message(topic) => topic,
            Wake::Stored(node) => {
                nodes.insert(desired.canonical(node));
                return;
            }
            Wake::Tick | Wake::Connected => {
                *self = Scope::All;
                return;
            }
        };
        if topic == topics.state_summary() {
            return;
        }
        match topics
            .parse_events(topic)
            .or_else(|| topics.parse_state_node(topic))
        {
            Some(Ok(node)) => {
                nodes.insert(desired.canonical(&node));
            }
            // Not a node anyone can have: the observer refuses it too.
            Some(Err(_)) => {}
            None => *self = Scope::All,
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Scope::Nodes(nodes) if nodes.is_empty())
    }
}

/// The whole plan: every node judged.
pub fn plan(inputs: Inputs<'_>, settings: &Settings, now: Timestamp) -> Plan {
    plan_for(inputs, settings, now, &Scope::All)
}

/// The plan for the nodes in `scope` only: their proposals, cancels,
/// approvals and alerts, exactly as [`plan`] decides them for those nodes;
/// nothing about any other node. Inputs outside the scope are skipped
/// before anything is indexed, so a pass for one node costs little
/// whatever the size of the fleet.
///
/// Each rule of the module's doc is one function below, composed here:
/// per node [`Judge::disk`], [`Judge::service`] for each desired service,
/// [`Judge::unanswered_websocket`] and [`Judge::ha_alerts`]; then
/// [`Judge::approvals`] and [`Judge::cancels`] over the whole pass.
pub fn plan_for(inputs: Inputs<'_>, settings: &Settings, now: Timestamp, scope: &Scope) -> Plan {
    let judge = Judge::new(inputs, settings, now, scope);
    let mut pass = Pass::default();
    let no_services = BTreeMap::new();
    for node in judge.nodes() {
        if !judge.judged(node) {
            continue;
        }
        let services = judge.desired.hosts.get(node).unwrap_or(&no_services);
        judge.disk(&mut pass, node);
        for (service, spec) in services {
            judge.service(&mut pass, node, service, spec);
        }
        judge.unanswered_websocket(&mut pass, node, services);
        judge.ha_alerts(&mut pass, node);
    }
    judge.approvals(&mut pass);
    judge.cancels(&mut pass);
    pass.plan
}

/// What a pass has decided so far.
#[derive(Default)]
struct Pass {
    plan: Plan,
    /// Ids whose drift holds now (grace and guards aside): a pending one
    /// stays.
    drifting: BTreeSet<Name>,
    /// Nodes with a `disk_pressure` that says low: a pending cleanup may go.
    disk_relieved: BTreeSet<Name>,
}

/// What every rule reads: the inputs for the nodes in scope, indexed under
/// canonical node names (an alias reports for its node).
struct Judge<'a> {
    desired: &'a Desired,
    settings: &'a Settings,
    now: Timestamp,
    changes: &'a BTreeMap<(Name, Name), crate::changes::Change>,
    names: Option<BTreeSet<Name>>,
    node_by_name: BTreeMap<Name, &'a NodeState>,
    service_by_key: BTreeMap<(Name, Name), &'a ServiceState>,
    recent: Recent<'a>,
    open: Vec<&'a Action>,
    open_by_id: BTreeMap<&'a Name, &'a Action>,
    /// The latest time each id finished (one id may have finished in
    /// several states: cancelled once, completed later).
    finished_at: BTreeMap<&'a Name, Timestamp>,
    /// The latest time each id completed.
    completed_at: BTreeMap<&'a Name, Timestamp>,
    ha: Name,
}

impl<'a> Judge<'a> {
    fn new(inputs: Inputs<'a>, settings: &'a Settings, now: Timestamp, scope: &Scope) -> Self {
        let Inputs {
            desired,
            nodes,
            services,
            open,
            finished,
            events,
            changes,
        } = inputs;
        let names = scope.names(desired);
        let in_scope = |name: &Name| names.as_ref().is_none_or(|names| names.contains(name));
        let mut node_by_name: BTreeMap<Name, &NodeState> = BTreeMap::new();
        for node in nodes.iter().filter(|n| in_scope(&n.node)) {
            let name = desired.canonical(&node.node);
            if node_by_name
                .get(&name)
                .is_none_or(|n| n.last_seen < node.last_seen)
            {
                node_by_name.insert(name, node);
            }
        }
        let service_by_key = services
            .iter()
            .filter(|s| in_scope(&s.node))
            .map(|s| ((desired.canonical(&s.node), s.service.clone()), s))
            .collect();
        let recent = Recent::index(desired, events.iter().filter(|e| in_scope(&e.node)));
        let open: Vec<&Action> = open.iter().filter(|a| in_scope(&a.node)).collect();
        let open_by_id = open.iter().map(|a| (&a.id, *a)).collect();
        let mut finished_at = BTreeMap::new();
        let mut completed_at = BTreeMap::new();
        for action in finished.iter().filter(|a| in_scope(&a.node)) {
            keep_latest(&mut finished_at, &action.id, action.updated_at, |t| *t);
            if action.state == ActionState::Completed {
                keep_latest(&mut completed_at, &action.id, action.updated_at, |t| *t);
            }
        }
        Judge {
            desired,
            settings,
            now,
            changes,
            names,
            node_by_name,
            service_by_key,
            recent,
            open,
            open_by_id,
            finished_at,
            completed_at,
            ha: Name::parse(HOMEASSISTANT).expect("a valid name"),
        }
    }

    fn in_scope(&self, name: &Name) -> bool {
        self.names.as_ref().is_none_or(|names| names.contains(name))
    }

    /// Every node of the inventory (and any with services listed) in
    /// scope: disk and Home Assistant rules hold for a node without
    /// desired services too.
    fn nodes(&self) -> BTreeSet<&'a Name> {
        let desired = self.desired;
        desired
            .topology
            .nodes
            .keys()
            .chain(desired.hosts.keys())
            .filter(|node| self.in_scope(node))
            .collect()
    }

    /// Whether a node is judged at all: its desired state is known, and it
    /// is online with a Docker snapshot.
    fn judged(&self, node: &Name) -> bool {
        !self.desired.frozen.contains(node)
            && self
                .node_by_name
                .get(node)
                .is_some_and(|n| n.status == NodeStatus::Online && n.docker == DockerStatus::Ok)
    }

    /// Home Assistant rules wait while homeassistant is down or just was.
    fn ha_suppressed(&self, node: &Name) -> bool {
        let key = (node.clone(), self.ha.clone());
        self.recent
            .down
            .get(&key)
            .is_some_and(|times| times.iter().any(|t| self.now - *t < HA_SUPPRESS))
            || self
                .service_by_key
                .get(&key)
                .is_some_and(|s| s.status == ServiceStatus::NotRunning)
    }

    fn in_window(&self, node: &Name, service: Option<&Name>) -> bool {
        self.desired
            .in_maintenance(node, service, self.now)
            .is_some()
    }

    /// Proposes the action for `drift` unless a guard holds: `blocked` (a
    /// window, a loop, a cooldown), its grace not yet lasted, its id open,
    /// or its id finished since this drift began. Either way the drift is
    /// recorded as holding.
    fn propose(
        &self,
        pass: &mut Pass,
        node: &Name,
        service: Option<&Name>,
        drift: Drift,
        grace: Duration,
        blocked: bool,
    ) {
        let id = Action::id_for(drift.kind, node, service);
        pass.drifting.insert(id.clone());
        let lasted = (self.now - drift.since).to_std().unwrap_or(Duration::ZERO);
        let answered = self
            .finished_at
            .get(&id)
            .is_some_and(|at| *at >= drift.since);
        if blocked || lasted < grace || self.open_by_id.contains_key(&id) || answered {
            return;
        }
        let mut action = Action::new(
            drift.kind,
            node.clone(),
            service.cloned(),
            drift.risk,
            drift.reason,
            &drift.message,
            self.now,
        );
        let reporting = &self.node_by_name[node].node;
        if reporting != node {
            action.target = Some(reporting.clone());
        }
        pass.plan.create.push(action);
    }

    /// Disk: under pressure while any mount's latest report is high (dated
    /// from the earliest of those) → `disk_cleanup`; relieved once every
    /// mount reported is low again.
    fn disk(&self, pass: &mut Pass, node: &Name) {
        let mounts: Vec<&Event> = self
            .recent
            .disk
            .range((node.clone(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, event)| *event)
            .collect();
        let high = mounts
            .iter()
            .filter(|e| e.data.get("level").and_then(|l| l.as_str()) == Some("high"))
            .min_by_key(|e| e.ts);
        match high {
            Some(event) => {
                let drift = Drift {
                    kind: ActionKind::DiskCleanup,
                    risk: Risk::Guarded,
                    reason: kinds::DISK_PRESSURE,
                    message: event.message.clone(),
                    since: event.ts,
                };
                let blocked = self.in_window(node, None);
                self.propose(
                    pass,
                    node,
                    None,
                    drift,
                    self.settings.default_grace,
                    blocked,
                );
            }
            None if !mounts.is_empty() => {
                pass.disk_relieved.insert(node.clone());
            }
            None => {}
        }
    }

    /// One desired service: the first rule that finds a drift proposes.
    /// Docker's view or an unanswered MQTT check (guarded by the restart
    /// loop), else homeassistant's dead websocket (guarded by its
    /// cooldown), else a compose change in the repo (no grace).
    fn service(&self, pass: &mut Pass, node: &Name, service: &Name, spec: &ServiceSpec) {
        if !managed(spec) {
            return;
        }
        let key = (node.clone(), service.clone());
        let in_window = self.in_window(node, Some(service));
        let grace = spec.grace_period.unwrap_or(self.settings.default_grace);
        let docker = drift(
            self.node_by_name[node],
            self.service_by_key.get(&key).copied(),
        );
        if let Some(drift) = docker.or_else(|| self.unreachable(&key)) {
            let looping = self.restart_loop(pass, node, service, in_window);
            self.propose(
                pass,
                node,
                Some(service),
                drift,
                grace,
                looping || in_window,
            );
        } else if let Some((drift, cooling)) = self.dead_websocket(node, service) {
            let blocked = cooling || in_window || self.ha_suppressed(node);
            self.propose(pass, node, Some(service), drift, grace, blocked);
        } else if let Some(drift) = self.desired_changed(&key) {
            self.propose(pass, node, Some(service), drift, Duration::ZERO, in_window);
        }
    }

    /// Answering MQTT is part of running: an `mqtt_unreachable` not
    /// followed by a recovery → `container_restart`.
    fn unreachable(&self, key: &(Name, Name)) -> Option<Drift> {
        let event = self.recent.unreachable.get(key)?;
        let recovered = self
            .recent
            .recovered
            .get(key)
            .is_some_and(|t| *t >= event.ts);
        (!recovered).then(|| Drift {
            kind: ActionKind::ContainerRestart,
            risk: Risk::Low,
            reason: kinds::MQTT_UNREACHABLE,
            message: event.message.clone(),
            since: event.ts,
        })
    }

    /// homeassistant's dead websocket, where a restart may answer it: the
    /// drift, and whether the last restart is too recent to restart again.
    fn dead_websocket(&self, node: &Name, service: &Name) -> Option<(Drift, bool)> {
        if service != &self.ha {
            return None;
        }
        let event = self
            .recent
            .websocket
            .get(node)
            .filter(|e| e.kind == HA_WEBSOCKET_DEAD)?;
        let cooling = self
            .completed_at
            .get(&Action::id_for(
                ActionKind::ContainerRestart,
                node,
                Some(service),
            ))
            .is_some_and(|at| self.now - *at < HA_RESTART_COOLDOWN);
        let drift = Drift {
            kind: ActionKind::ContainerRestart,
            risk: Risk::Low,
            reason: HA_WEBSOCKET_DEAD,
            message: event.message.clone(),
            since: event.ts,
        };
        Some((drift, cooling))
    }

    /// The repo changed the service's compose files since they were
    /// deployed → `redeploy` (a commit is deliberate: no grace).
    fn desired_changed(&self, key: &(Name, Name)) -> Option<Drift> {
        let change = self.changes.get(key)?;
        Some(Drift {
            kind: ActionKind::Redeploy,
            risk: Risk::Guarded,
            reason: DESIRED_CHANGED,
            message: format!(
                "the repo changed the compose files of {}{}",
                key.1,
                change
                    .from_commit
                    .as_deref()
                    .map(|c| format!(" since {}", &c[..c.len().min(7)]))
                    .unwrap_or_default()
            ),
            since: change.since,
        })
    }

    /// A restart loop: the service went down `loop_threshold` times within
    /// `loop_window`. One alert with the count (outside a window, once per
    /// cooldown); true while it loops: no new action.
    fn restart_loop(&self, pass: &mut Pass, node: &Name, service: &Name, in_window: bool) -> bool {
        let loop_window = chrono::TimeDelta::from_std(self.settings.loop_window)
            .unwrap_or(chrono::TimeDelta::MAX);
        let key = (node.clone(), service.clone());
        let downs = self.recent.down.get(&key).map_or(0, |times| {
            times
                .iter()
                .filter(|t| self.now - **t < loop_window)
                .count()
        });
        let looping = downs >= self.settings.loop_threshold;
        if looping
            && !in_window
            && self
                .recent
                .may_alert(node, Some(service), RESTART_LOOP, self.now)
        {
            pass.plan.alerts.push(Alert {
                node: node.clone(),
                service: Some(service.clone()),
                trigger: RESTART_LOOP.into(),
                severity: Severity::Error,
                message: format!(
                    "{service} went down {downs} times in {}; no more actions are proposed for it until it settles",
                    humanize(self.settings.loop_window)
                ),
                count: downs,
            });
        }
        looping
    }

    /// A dead websocket no restart may answer (homeassistant opted out,
    /// remediation off, or not listed): an alert, once per episode and
    /// cooldown.
    fn unanswered_websocket(
        &self,
        pass: &mut Pass,
        node: &Name,
        services: &BTreeMap<Name, ServiceSpec>,
    ) {
        if services.get(&self.ha).is_some_and(managed) {
            return;
        }
        let Some(event) = self
            .recent
            .websocket
            .get(node)
            .filter(|e| e.kind == HA_WEBSOCKET_DEAD)
        else {
            return;
        };
        let (ha, trigger, now) = (&self.ha, HA_WEBSOCKET_DEAD, self.now);
        let quiet = self.in_window(node, Some(ha)) || self.ha_suppressed(node);
        if quiet
            || now - event.ts >= ALERT_COOLDOWN
            || !self.recent.may_alert(node, Some(ha), trigger, now)
            || self
                .recent
                .last_alert(node, Some(ha), trigger)
                .is_some_and(|t| t >= event.ts)
        {
            return;
        }
        pass.plan.alerts.push(Alert {
            node: node.clone(),
            service: Some(ha.clone()),
            trigger: trigger.into(),
            severity: Severity::Error,
            message: format!(
                "Home Assistant's websocket is dead and no restart may be proposed here: {}",
                event.message
            ),
            count: 1,
        });
    }

    /// Other Home Assistant events: an alert per type with the count since
    /// the last one, at most one an hour, none while suppressed or in a
    /// window.
    fn ha_alerts(&self, pass: &mut Pass, node: &Name) {
        let now = self.now;
        for ((ha_node, trigger), list) in self.recent.ha.range((node.clone(), String::new())..) {
            if ha_node != node {
                break;
            }
            let last_alert = self.recent.last_alert(node, None, trigger);
            let fresh: Vec<&&Event> = list
                .iter()
                .filter(|e| now - e.ts < ALERT_COOLDOWN && last_alert.is_none_or(|t| e.ts > t))
                .collect();
            let Some(latest) = fresh.iter().max_by_key(|e| e.ts) else {
                continue;
            };
            if self.in_window(node, Some(&self.ha))
                || self.ha_suppressed(node)
                || !self.recent.may_alert(node, None, trigger, now)
            {
                continue;
            }
            pass.plan.alerts.push(Alert {
                node: node.clone(),
                service: None,
                trigger: trigger.clone(),
                severity: latest.severity.max(Severity::Warning),
                message: latest.message.clone(),
                count: fresh.len(),
            });
        }
    }

    /// Policy approvals: low risk, remediation auto, at most `auto_limit`
    /// runs of one id an hour; past that, an alert says it waits for a
    /// human.
    fn approvals(&self, pass: &mut Pass) {
        let candidates = self
            .open
            .iter()
            .copied()
            .filter(|a| a.state == ActionState::Pending)
            .chain(pass.plan.create.iter());
        let mut approve = Vec::new();
        let mut limited = Vec::new();
        for action in candidates {
            let auto = action.risk == Risk::Low
                && action
                    .service
                    .as_ref()
                    .and_then(|s| self.desired.hosts.get(&action.node)?.get(s))
                    .is_some_and(|spec| managed(spec) && spec.remediation == Remediation::Auto);
            if !auto {
                continue;
            }
            let runs = self
                .recent
                .started
                .get(action.id.as_str())
                .map_or(0, |times| {
                    times
                        .iter()
                        .filter(|t| self.now - **t < AUTO_WINDOW)
                        .count()
                });
            if runs < self.settings.auto_limit {
                approve.push(action.id.clone());
            } else {
                limited.push((action.node.clone(), action.service.clone(), runs));
            }
        }
        pass.plan.approve = approve;
        for (node, service, runs) in limited {
            if self
                .recent
                .may_alert(&node, service.as_ref(), AUTO_LIMIT, self.now)
            {
                pass.plan.alerts.push(Alert {
                    message: format!(
                        "remediation: auto ran {runs} times in the last hour; the next action waits for a human"
                    ),
                    node,
                    service,
                    trigger: AUTO_LIMIT.into(),
                    severity: Severity::Warning,
                    count: runs,
                });
            }
        }
    }

    /// Only pending actions are cancelled: the service left the desired
    /// state (or opted out), or the node left the inventory →
    /// `service_removed_from_desired_state`; its drift is gone on a judged
    /// node → `drift_resolved_auto`.
    fn cancels(&self, pass: &mut Pass) {
        for action in self.open.iter().filter(|a| a.state == ActionState::Pending) {
            if self.desired.frozen.contains(&action.node) {
                continue;
            }
            let (removed, resolved) = match (action.kind, &action.service) {
                (ActionKind::ContainerRestart | ActionKind::Redeploy, Some(service)) => {
                    let spec = self
                        .desired
                        .hosts
                        .get(&action.node)
                        .and_then(|s| s.get(service));
                    (
                        !spec.is_some_and(managed),
                        !pass.drifting.contains(&action.id),
                    )
                }
                (ActionKind::DiskCleanup, _) => (
                    !self.desired.topology.nodes.contains_key(&action.node),
                    pass.disk_relieved.contains(&action.node),
                ),
                _ => continue,
            };
            let reason = if removed {
                cancel_reasons::REMOVED_FROM_DESIRED
            } else if resolved && self.judged(&action.node) {
                cancel_reasons::DRIFT_RESOLVED
            } else {
                continue;
            };
            pass.plan.cancel.push(Cancel {
                id: action.id.clone(),
                reason,
            });
        }
    }
}

/// Alert trigger: a service in a restart loop.
pub const RESTART_LOOP: &str = "restart_loop";
/// Alert trigger: policy approvals hit their rate limit.
pub const AUTO_LIMIT: &str = "auto_limit";

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn managed(spec: &ServiceSpec) -> bool {
    spec.monitor && spec.remediation != Remediation::Off
}

fn drift(node: &NodeState, service: Option<&ServiceState>) -> Option<Drift> {
    let Some(service) = service else {
        // Never seen on the node: missing since it (re)appeared at the
        // latest.
        return Some(Drift {
            kind: ActionKind::Redeploy,
            risk: Risk::Guarded,
            reason: "service_missing",
            message: "no container of this service on the node".into(),
            since: node.since,
        });
    };
    let (kind, risk, reason) = match service.status {
        ServiceStatus::Running | ServiceStatus::Healthy => return None,
        ServiceStatus::NotRunning => (
            ActionKind::ContainerRestart,
            Risk::Low,
            "containers_not_running",
        ),
        ServiceStatus::Unhealthy => (ActionKind::Redeploy, Risk::Guarded, "service_unhealthy"),
        // Seen, then gone from a snapshot: missing since that snapshot.
        ServiceStatus::Missing => (ActionKind::Redeploy, Risk::Guarded, "service_missing"),
    };
    Some(Drift {
        kind,
        risk,
        reason,
        message: service.message.clone(),
        since: service.since,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::desired::{NodeSpec, Topology};
    use proptest::prelude::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn desired(services: &[(&str, &str, ServiceSpec)]) -> Desired {
        let mut d = Desired {
            topology: Topology {
                nodes: BTreeMap::from([
                    (
                        n("vps"),
                        NodeSpec {
                            aliases: vec![n("node-1")],
                            ..Default::default()
                        },
                    ),
                    (n("piha"), NodeSpec::default()),
                ]),
            },
            ..Default::default()
        };
        for (node, service, spec) in services {
            d.hosts
                .entry(n(node))
                .or_default()
                .insert(n(service), spec.clone());
        }
        d
    }

    fn node(name: &str, status: NodeStatus) -> NodeState {
        NodeState {
            node: n(name),
            status,
            since: at(0),
            first_seen: at(0),
            last_seen: at(0),
            last_seq: 1,
            docker: DockerStatus::Ok,
            containers: 1,
            uplink: Default::default(),
        }
    }

    fn svc(node: &str, service: &str, status: ServiceStatus, since: i64) -> ServiceState {
        ServiceState {
            node: n(node),
            service: n(service),
            status,
            since: at(since),
            message: "m".into(),
            containers: vec![],
        }
    }

    fn spec() -> ServiceSpec {
        ServiceSpec {
            grace_period: Some(Duration::from_secs(30)),
            ..Default::default()
        }
    }

    fn settings() -> Settings {
        Settings {
            default_grace: Duration::from_secs(30),
            ..Default::default()
        }
    }

    fn pending(kind: ActionKind, node: &str, service: &str) -> Action {
        Action::new(kind, n(node), Some(n(service)), Risk::Low, "r", "m", at(0))
    }

    fn run(
        d: &Desired,
        nodes: &[NodeState],
        services: &[ServiceState],
        open: &[Action],
        settings: &Settings,
        now: Timestamp,
    ) -> Plan {
        plan(
            Inputs {
                desired: d,
                nodes,
                services,
                open,
                finished: &[],
                events: &[],
                changes: &BTreeMap::new(),
            },
            settings,
            now,
        )
    }

    fn ids(plan: &Plan) -> (Vec<String>, Vec<(String, &'static str)>) {
        (
            plan.create.iter().map(|a| a.id.to_string()).collect(),
            plan.cancel
                .iter()
                .map(|c| (c.id.to_string(), c.reason))
                .collect(),
        )
    }

    /// One row: world for vps/mosquitto (None = missing) → what is proposed.
    fn check(status: Option<ServiceStatus>, now: i64, expected: &[&str]) {
        let d = desired(&[("vps", "mosquitto", spec())]);
        let services: Vec<_> = status
            .map(|s| svc("vps", "mosquitto", s, 0))
            .into_iter()
            .collect();
        let p = run(
            &d,
            &[node("vps", NodeStatus::Online)],
            &services,
            &[],
            &settings(),
            at(now),
        );
        assert_eq!(ids(&p).0, expected, "status {status:?} at {now}");
    }

    #[test]
    fn routing() {
        check(Some(ServiceStatus::Running), 100, &[]);
        check(Some(ServiceStatus::Healthy), 100, &[]);
        check(
            Some(ServiceStatus::NotRunning),
            100,
            &["container-restart-vps-mosquitto"],
        );
        check(
            Some(ServiceStatus::Unhealthy),
            100,
            &["redeploy-vps-mosquitto"],
        );
        check(None, 100, &["redeploy-vps-mosquitto"]);
        // Inside the grace period nothing is proposed.
        check(Some(ServiceStatus::NotRunning), 29, &[]);
        check(None, 10, &[]);
    }

    /// A node online for long, whose service leaves its snapshot at 1000:
    /// the grace counts from then, not from when the node came online;
    /// likewise a container that stops at 1000.
    #[test]
    fn grace_counts_from_when_the_drift_began() {
        let d = desired(&[("vps", "mosquitto", spec())]);
        for (status, id) in [
            (ServiceStatus::Missing, "redeploy-vps-mosquitto"),
            (ServiceStatus::NotRunning, "container-restart-vps-mosquitto"),
        ] {
            let services = [svc("vps", "mosquitto", status, 1000)];
            let plan_at = |now| {
                let p = run(
                    &d,
                    &[node("vps", NodeStatus::Online)],
                    &services,
                    &[],
                    &settings(),
                    at(now),
                );
                ids(&p).0
            };
            assert!(plan_at(1000).is_empty(), "{status:?} at once");
            assert!(plan_at(1029).is_empty(), "{status:?} inside the grace");
            assert_eq!(plan_at(1030), vec![id], "{status:?} after the grace");
        }
    }

    /// A host whose files do not load: its pending actions stay (not
    /// "removed from the desired state") and nothing new is proposed.
    #[test]
    fn a_frozen_node_is_left_alone() {
        let mut d = desired(&[("vps", "mosquitto", spec())]);
        let down = [svc("vps", "mosquitto", ServiceStatus::NotRunning, 0)];
        let online = [node("vps", NodeStatus::Online)];
        let p = run(&d, &online, &down, &[], &settings(), at(100));
        assert_eq!(ids(&p).0, vec!["container-restart-vps-mosquitto"]);
        let open: Vec<Action> = p.create.clone();
        d.hosts.clear();
        d.frozen.insert(n("vps"));
        let p = run(&d, &online, &down, &open, &settings(), at(100));
        assert_eq!((p.create.len(), p.cancel.len()), (0, 0));
    }

    #[test]
    fn opted_out_and_off_get_nothing() {
        let d = desired(&[
            (
                "vps",
                "homeassistant",
                ServiceSpec {
                    monitor: false,
                    ..spec()
                },
            ),
            (
                "vps",
                "npm",
                ServiceSpec {
                    remediation: Remediation::Off,
                    ..spec()
                },
            ),
        ]);
        let p = run(
            &d,
            &[node("vps", NodeStatus::Online)],
            &[],
            &[],
            &settings(),
            at(100),
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn offline_or_unreported_node_gets_no_service_actions() {
        let d = desired(&[
            ("vps", "mosquitto", spec()),
            ("vps", "npm", spec()),
            ("piha", "zigbee2mqtt", spec()),
        ]);
        let p = run(
            &d,
            &[node("vps", NodeStatus::Offline)],
            &[],
            &[],
            &settings(),
            at(1000),
        );
        assert_eq!(p, Plan::default());
        let mut unknown_docker = node("vps", NodeStatus::Online);
        unknown_docker.docker = DockerStatus::Unknown;
        assert_eq!(
            run(&d, &[unknown_docker], &[], &[], &settings(), at(1000)),
            Plan::default()
        );
    }

    #[test]
    fn aliases_report_for_their_node() {
        let d = desired(&[("vps", "mosquitto", spec())]);
        let p = run(
            &d,
            &[node("node-1", NodeStatus::Online)],
            &[svc("node-1", "mosquitto", ServiceStatus::NotRunning, 0)],
            &[],
            &settings(),
            at(100),
        );
        assert_eq!(ids(&p).0, vec!["container-restart-vps-mosquitto"]);
    }

    #[test]
    fn cancel_reasons() {
        let d = desired(&[("vps", "mosquitto", spec())]);
        let online = [node("vps", NodeStatus::Online)];
        let running = [svc("vps", "mosquitto", ServiceStatus::Running, 0)];
        let open = [
            pending(ActionKind::ContainerRestart, "vps", "mosquitto"),
            pending(ActionKind::Redeploy, "vps", "gone"),
        ];
        let p = run(&d, &online, &running, &open, &settings(), at(100));
        assert_eq!(
            ids(&p).1,
            vec![
                (
                    "container-restart-vps-mosquitto".to_string(),
                    "drift_resolved_auto"
                ),
                (
                    "redeploy-vps-gone".to_string(),
                    "service_removed_from_desired_state"
                ),
            ]
        );
        // Approved and running actions are never cancelled.
        let mut approved = open.clone();
        approved[0].state = ActionState::Approved;
        approved[1].state = ActionState::Running;
        assert_eq!(
            run(&d, &online, &running, &approved, &settings(), at(100)).cancel,
            vec![]
        );
        // Nor judged blind while the node is offline.
        let p = run(
            &d,
            &[node("vps", NodeStatus::Offline)],
            &running,
            &open[..1],
            &settings(),
            at(100),
        );
        assert_eq!(p.cancel, vec![]);
    }

    #[test]
    fn open_ids_are_not_proposed_again() {
        let d = desired(&[("vps", "mosquitto", spec())]);
        let down = [svc("vps", "mosquitto", ServiceStatus::NotRunning, 0)];
        let open = [pending(ActionKind::ContainerRestart, "vps", "mosquitto")];
        let p = run(
            &d,
            &[node("vps", NodeStatus::Online)],
            &down,
            &open,
            &settings(),
            at(100),
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_finished_action_is_not_proposed_again_for_the_same_drift() {
        let d = desired(&[("vps", "mosquitto", spec())]);
        let nodes = [node("vps", NodeStatus::Online)];
        let mut done = pending(ActionKind::ContainerRestart, "vps", "mosquitto");
        done.state = ActionState::Completed;
        done.updated_at = at(50);
        // An older cancel of the same id must not hide the later completion.
        let mut cancelled = done.clone();
        cancelled.state = ActionState::Cancelled;
        cancelled.updated_at = at(-10);
        let finished = [done.clone(), cancelled];
        let check = |since: i64, now: i64, expected: &[&str]| {
            let down = [svc("vps", "mosquitto", ServiceStatus::NotRunning, since)];
            let inputs = Inputs {
                desired: &d,
                nodes: &nodes,
                services: &down,
                open: &[],
                finished: &finished,
                events: &[],
                changes: &BTreeMap::new(),
            };
            assert_eq!(
                ids(&plan(inputs, &settings(), at(now))).0,
                expected,
                "since {since}, now {now}"
            );
        };
        // The world still shows the drift the restart answered.
        check(0, 100, &[]);
        // A failure after the restart is a new drift.
        check(60, 100, &["container-restart-vps-mosquitto"]);
    }

    fn ev(
        node: &str,
        kind: &str,
        service: Option<&str>,
        secs: i64,
        data: serde_json::Value,
    ) -> Event {
        Event {
            v: 1,
            id: format!("{kind}-{node}-{secs}-{}", service.unwrap_or("")),
            ts: at(secs),
            node: n(node),
            seq: 1,
            source: "t".into(),
            kind: kind.into(),
            service: service.map(n),
            severity: Severity::Warning,
            message: format!("{kind} at {secs}"),
            data,
        }
    }

    /// A world where vps is online and every desired service of it runs.
    struct Case {
        desired: Desired,
        nodes: Vec<NodeState>,
        services: Vec<ServiceState>,
        open: Vec<Action>,
        finished: Vec<Action>,
        events: Vec<Event>,
        changes: BTreeMap<(Name, Name), crate::changes::Change>,
    }

    impl Case {
        fn new(specs: &[(&str, ServiceSpec)]) -> Case {
            let specs: Vec<_> = specs
                .iter()
                .map(|(s, spec)| ("vps", *s, spec.clone()))
                .collect();
            let services = specs
                .iter()
                .map(|(node, s, _)| svc(node, s, ServiceStatus::Running, 0))
                .collect();
            Case {
                desired: desired(&specs),
                nodes: vec![node("vps", NodeStatus::Online)],
                services,
                open: vec![],
                finished: vec![],
                events: vec![],
                changes: BTreeMap::new(),
            }
        }

        /// The repo changed `service`'s compose files at `secs`.
        fn changed(mut self, service: &str, secs: i64) -> Case {
            self.changes.insert(
                (n("vps"), n(service)),
                crate::changes::Change {
                    since: at(secs),
                    from_commit: Some("c0ffee0000000000000000000000000000000000".into()),
                    from_files: vec![],
                },
            );
            self
        }

        fn clone_with_change(&self, service: &str, secs: i64) -> Case {
            let mut case = Case {
                desired: self.desired.clone(),
                nodes: self.nodes.clone(),
                services: self.services.clone(),
                open: self.open.clone(),
                finished: self.finished.clone(),
                events: self.events.clone(),
                changes: self.changes.clone(),
            };
            case = case.changed(service, secs);
            case
        }

        fn event(mut self, node: &str, kind: &str, service: Option<&str>, secs: i64) -> Case {
            self.events
                .push(ev(node, kind, service, secs, serde_json::json!({})));
            self
        }

        fn disk(self, level: &str, secs: i64) -> Case {
            self.disk_on("/", level, secs)
        }

        fn disk_on(mut self, mount: &str, level: &str, secs: i64) -> Case {
            self.events.push(ev(
                "vps",
                "disk_pressure",
                None,
                secs,
                serde_json::json!({"level": level, "mount": mount}),
            ));
            self
        }

        fn status(mut self, service: &str, status: ServiceStatus, since: i64) -> Case {
            for s in &mut self.services {
                if s.service.as_str() == service {
                    s.status = status;
                    s.since = at(since);
                }
            }
            self
        }

        fn plan(&self, now: i64) -> Plan {
            plan(
                Inputs {
                    desired: &self.desired,
                    nodes: &self.nodes,
                    services: &self.services,
                    open: &self.open,
                    finished: &self.finished,
                    events: &self.events,
                    changes: &self.changes,
                },
                &settings(),
                at(now),
            )
        }
    }

    fn created(p: &Plan) -> Vec<(String, String, Risk)> {
        p.create
            .iter()
            .map(|a| (a.id.to_string(), a.reason.clone(), a.risk))
            .collect()
    }

    fn alerts(p: &Plan) -> Vec<(String, Option<String>, String, usize)> {
        p.alerts
            .iter()
            .map(|a| {
                (
                    a.node.to_string(),
                    a.service.as_ref().map(|s| s.to_string()),
                    a.trigger.clone(),
                    a.count,
                )
            })
            .collect()
    }

    fn restart(id: &str, reason: &str) -> Vec<(String, String, Risk)> {
        vec![(id.to_string(), reason.to_string(), Risk::Low)]
    }

    #[test]
    fn mqtt_unreachable_restarts_until_the_service_answers_again() {
        let case = Case::new(&[("mosquitto", spec())]).event(
            "vps",
            "mqtt_unreachable",
            Some("mosquitto"),
            10,
        );
        assert_eq!(
            created(&case.plan(100)),
            restart("container-restart-vps-mosquitto", "mqtt_unreachable")
        );
        assert_eq!(case.plan(20).create, vec![], "inside the grace period");
        // An alias reports for its node; the command goes to the alias.
        let mut aliased = Case::new(&[("mosquitto", spec())]).event(
            "node-1",
            "mqtt_unreachable",
            Some("mosquitto"),
            10,
        );
        aliased.nodes = vec![node("node-1", NodeStatus::Online)];
        aliased.services[0].node = n("node-1");
        let p = aliased.plan(100);
        assert_eq!(p.create[0].node.as_str(), "vps");
        assert_eq!(
            p.create[0].target.as_ref().map(Name::as_str),
            Some("node-1")
        );
        // Recovered: nothing, and the pending restart is cancelled.
        let mut case = case.event("vps", "service_recovered", Some("mosquitto"), 50);
        case.open = vec![pending(ActionKind::ContainerRestart, "vps", "mosquitto")];
        let p = case.plan(100);
        assert_eq!(p.create, vec![]);
        assert_eq!(
            ids(&p).1,
            vec![(
                "container-restart-vps-mosquitto".to_string(),
                "drift_resolved_auto"
            )]
        );
    }

    /// A commit that changed a service's compose files proposes a guarded
    /// redeploy at once; a reverted change cancels it; a service that is
    /// down is restarted first; a window holds it back; a rejected one is
    /// not proposed again for the same change, but for the next one.
    #[test]
    fn a_changed_compose_file_proposes_a_redeploy() {
        let id = "redeploy-vps-app";
        let case = Case::new(&[("app", spec())]).changed("app", 100);
        assert_eq!(
            created(&case.plan(100)),
            vec![(id.to_string(), "desired_changed".to_string(), Risk::Guarded)]
        );
        assert!(case.plan(100).create[0].message.contains("since c0ffee0"));
        // Pending, and the change is gone (reverted, unpinned): cancelled.
        let mut pending = Case::new(&[("app", spec())]);
        let mut proposed = case.plan(100).create.remove(0);
        proposed.state = ActionState::Pending;
        pending.open.push(proposed.clone());
        assert_eq!(
            pending.plan(200).cancel,
            vec![Cancel {
                id: Name::parse(id).unwrap(),
                reason: cancel_reasons::DRIFT_RESOLVED
            }]
        );
        // Still changed: kept.
        let kept = pending.clone_with_change("app", 100);
        assert_eq!(kept.plan(200).cancel, vec![]);
        // Down: the restart comes first.
        let down = Case::new(&[("app", spec())]).changed("app", 100).status(
            "app",
            ServiceStatus::NotRunning,
            50,
        );
        assert_eq!(created(&down.plan(100))[0].1, "containers_not_running");
        // Rejected after the change began: not again for it; a newer change
        // (a later commit) is proposed.
        let mut rejected = proposed.clone();
        rejected.state = ActionState::Rejected;
        rejected.updated_at = at(150);
        let mut after = Case::new(&[("app", spec())]).changed("app", 100);
        after.finished.push(rejected.clone());
        assert_eq!(created(&after.plan(200)), vec![]);
        let mut newer = Case::new(&[("app", spec())]).changed("app", 300);
        newer.finished.push(rejected);
        assert_eq!(created(&newer.plan(300)).len(), 1);
        // Remediation off: nothing.
        let off = ServiceSpec {
            remediation: Remediation::Off,
            ..spec()
        };
        assert_eq!(
            created(&Case::new(&[("app", off)]).changed("app", 100).plan(100)),
            vec![]
        );
    }

    #[test]
    fn disk_pressure_high_proposes_a_guarded_cleanup_and_low_cancels_it() {
        let case = Case::new(&[]).disk("high", 10);
        assert_eq!(
            created(&case.plan(100)),
            vec![(
                "disk-cleanup-vps".to_string(),
                "disk_pressure".to_string(),
                Risk::Guarded
            )]
        );
        let mut case = case.disk("low", 60);
        assert_eq!(case.plan(100), Plan::default());
        case.open = open_cleanup();
        assert_eq!(
            ids(&case.plan(100)).1,
            vec![("disk-cleanup-vps".to_string(), "drift_resolved_auto")]
        );
        // Offline: not judged blind.
        case.nodes[0].status = NodeStatus::Offline;
        assert_eq!(case.plan(100), Plan::default());
    }

    /// vps's pending disk cleanup, proposed at 20.
    fn open_cleanup() -> Vec<Action> {
        vec![Action::new(
            ActionKind::DiskCleanup,
            n("vps"),
            None,
            Risk::Guarded,
            "disk_pressure",
            "m",
            at(20),
        )]
    }

    #[test]
    fn disk_pressure_is_judged_per_mount() {
        let cleanup = || {
            vec![(
                "disk-cleanup-vps".to_string(),
                "disk_pressure".to_string(),
                Risk::Guarded,
            )]
        };
        // /srv high, then / low: /srv is still full, the cleanup stays.
        let case = Case::new(&[])
            .disk_on("/srv", "high", 10)
            .disk_on("/", "low", 30);
        assert_eq!(created(&case.plan(100)), cleanup());
        let mut kept = Case::new(&[])
            .disk_on("/srv", "high", 10)
            .disk_on("/", "low", 30);
        kept.open = open_cleanup();
        assert_eq!(kept.plan(100), Plan::default());
        // Both high, then one low: still under pressure.
        let case = Case::new(&[])
            .disk_on("/", "high", 10)
            .disk_on("/srv", "high", 20)
            .disk_on("/", "low", 30);
        assert_eq!(created(&case.plan(100)), cleanup());
        // Every mount low again: the pending cleanup goes.
        let mut relieved = case.disk_on("/srv", "low", 40);
        assert_eq!(relieved.plan(100), Plan::default());
        relieved.open = open_cleanup();
        assert_eq!(
            ids(&relieved.plan(100)).1,
            vec![("disk-cleanup-vps".to_string(), "drift_resolved_auto")]
        );
    }

    #[test]
    fn dead_websocket_restarts_homeassistant_with_a_cooldown() {
        let id = "container-restart-vps-homeassistant";
        let case =
            Case::new(&[("homeassistant", spec())]).event("vps", "ha_websocket_dead", None, 3000);
        assert_eq!(created(&case.plan(3100)), restart(id, "ha_websocket_dead"));
        // Completed 10 minutes ago (before this episode): cooling down.
        let mut done = pending(ActionKind::ContainerRestart, "vps", "homeassistant");
        done.state = ActionState::Completed;
        done.updated_at = at(2500);
        let mut cooling = Case {
            finished: vec![done.clone()],
            ..case
        };
        assert_eq!(cooling.plan(3100).create, vec![]);
        // 35 minutes after that completion, it may be proposed again.
        cooling.finished[0].updated_at = at(1000);
        assert_eq!(
            created(&cooling.plan(3100)),
            restart(id, "ha_websocket_dead")
        );
        // Recovered: nothing, and a pending restart is cancelled.
        let mut recovered = cooling.event("vps", "ha_websocket_recovered", None, 3050);
        recovered.open = vec![pending(
            ActionKind::ContainerRestart,
            "vps",
            "homeassistant",
        )];
        let p = recovered.plan(3100);
        assert_eq!(p.create, vec![]);
        assert_eq!(ids(&p).1, vec![(id.to_string(), "drift_resolved_auto")]);
    }

    #[test]
    fn dead_websocket_of_an_unmanaged_homeassistant_is_an_alert() {
        let off = ServiceSpec {
            monitor: false,
            ..spec()
        };
        let case =
            Case::new(&[("homeassistant", off)]).event("vps", "ha_websocket_dead", None, 3000);
        let p = case.plan(3100);
        assert_eq!(p.create, vec![]);
        assert_eq!(
            alerts(&p),
            vec![(
                "vps".into(),
                Some("homeassistant".into()),
                "ha_websocket_dead".into(),
                1
            )]
        );
        // Not listed at all: the same.
        let case = Case::new(&[]).event("vps", "ha_websocket_dead", None, 3000);
        assert_eq!(alerts(&case.plan(3100)).len(), 1);
    }

    #[test]
    fn other_ha_events_alert_once_an_hour() {
        let case = Case::new(&[("homeassistant", spec())])
            .event("vps", "ha_integration_failed", None, 1000)
            .event("vps", "ha_integration_failed", None, 1100);
        let p = case.plan(1200);
        assert_eq!(p.create, vec![], "alert only");
        assert_eq!(
            alerts(&p),
            vec![("vps".into(), None, "ha_integration_failed".into(), 2)]
        );
        // The alert, once raised, holds the next ones back for an hour.
        let mut alert = p.alerts[0].event(at(1200));
        alert.id = "alert-1".into();
        let mut raised = case;
        raised.events.push(alert);
        let raised = raised.event("vps", "ha_integration_failed", None, 2000);
        assert_eq!(alerts(&raised.plan(2100)), vec![]);
        // After the cooldown, what happened since is reported, with its count.
        assert_eq!(
            alerts(&raised.plan(1200 + 3600)),
            vec![("vps".into(), None, "ha_integration_failed".into(), 1)]
        );
        // Events older than the cooldown alone do not alert.
        assert_eq!(alerts(&raised.plan(2000 + 3600)), vec![]);
    }

    #[test]
    fn ha_rules_are_suppressed_while_homeassistant_is_down() {
        let case = Case::new(&[("homeassistant", spec())])
            .event("vps", "containers_not_running", Some("homeassistant"), 1000)
            .event("vps", "ha_websocket_dead", None, 1010)
            .event("vps", "ha_recorder_lag", None, 1010);
        // Within 5 minutes of the containers stopping: no HA rule fires.
        assert_eq!(alerts(&case.plan(1100)), vec![]);
        assert_eq!(case.plan(1100).create, vec![]);
        // Later, with homeassistant running again, they do.
        let p = case.plan(1000 + 301);
        assert_eq!(
            alerts(&p),
            vec![("vps".into(), None, "ha_recorder_lag".into(), 1)]
        );
        assert_eq!(
            created(&p),
            restart("container-restart-vps-homeassistant", "ha_websocket_dead")
        );
        // While its container is not running, the container rule acts, not HA's.
        let down = case.status("homeassistant", ServiceStatus::NotRunning, 1000);
        let p = down.plan(2000);
        assert_eq!(alerts(&p), vec![]);
        assert_eq!(
            created(&p),
            restart(
                "container-restart-vps-homeassistant",
                "containers_not_running"
            )
        );
    }

    #[test]
    fn a_restart_loop_is_one_alert_with_its_count_not_actions() {
        let case = Case::new(&[("mosquitto", spec())])
            .event("vps", "containers_not_running", Some("mosquitto"), 100)
            .event("vps", "containers_not_running", Some("mosquitto"), 400)
            .event("vps", "containers_not_running", Some("mosquitto"), 700)
            .status("mosquitto", ServiceStatus::NotRunning, 700);
        let p = case.plan(800);
        assert_eq!(p.create, vec![]);
        assert_eq!(
            alerts(&p),
            vec![(
                "vps".into(),
                Some("mosquitto".into()),
                "restart_loop".into(),
                3
            )]
        );
        // Two downs are not a loop.
        let mut two = case;
        two.events.remove(0);
        assert_eq!(alerts(&two.plan(800)), vec![]);
        assert_eq!(
            created(&two.plan(800)),
            restart("container-restart-vps-mosquitto", "containers_not_running")
        );
        // Downs older than the window do not count.
        let mut old = two.event("vps", "containers_not_running", Some("mosquitto"), -2000);
        old.events.rotate_right(1);
        assert_eq!(alerts(&old.plan(800)), vec![]);
    }

    #[test]
    fn auto_remediation_is_approved_by_policy_within_its_rate_limit() {
        let auto = ServiceSpec {
            remediation: Remediation::Auto,
            ..spec()
        };
        let case = Case::new(&[("mosquitto", auto.clone()), ("npm", auto)])
            .status("mosquitto", ServiceStatus::NotRunning, 0)
            .status("npm", ServiceStatus::Unhealthy, 0);
        let p = case.plan(100);
        let id = "container-restart-vps-mosquitto";
        assert_eq!(
            created(&p),
            vec![
                (
                    id.to_string(),
                    "containers_not_running".to_string(),
                    Risk::Low
                ),
                (
                    "redeploy-vps-npm".to_string(),
                    "service_unhealthy".to_string(),
                    Risk::Guarded
                ),
            ]
        );
        assert_eq!(p.approve, vec![n(id)], "guarded actions wait for a human");
        // Three runs in the last hour: the next one waits, and says why.
        let mut limited = case;
        for secs in [-3000, -2000, -1000] {
            limited.events.push(ev(
                "vps",
                "remediation_started",
                None,
                secs,
                serde_json::json!({"action_id": id}),
            ));
        }
        let p = limited.plan(100);
        assert_eq!(p.approve, vec![]);
        assert_eq!(
            alerts(&p),
            vec![(
                "vps".into(),
                Some("mosquitto".into()),
                "auto_limit".into(),
                3
            )]
        );
        // An hour after the first of them, one run is allowed again.
        assert_eq!(limited.plan(3000 + 100).approve.len(), 1);
    }

    #[test]
    fn maintenance_holds_new_actions_and_keeps_pending_ones() {
        let mut case = Case::new(&[("outline", spec()), ("npm", spec())])
            .status("outline", ServiceStatus::NotRunning, 0)
            .status("npm", ServiceStatus::NotRunning, 0);
        let window = |yaml: &str| {
            serde_yaml::from_str::<homelab_core::maintenance::WindowSpec>(yaml)
                .unwrap()
                .check()
                .unwrap()
        };
        // at(0) is 2027-01-15T08:00:00Z.
        case.desired.maintenance = vec![window(
            "{name: w, node: vps, services: [outline], from: 2027-01-15T08:00:00Z, until: 2027-01-15T09:00:00Z}",
        )];
        case.open = vec![pending(ActionKind::ContainerRestart, "vps", "outline")];
        let p = case.plan(100);
        assert_eq!(
            ids(&p).0,
            vec!["container-restart-vps-npm"],
            "only outside the window"
        );
        assert_eq!(p.cancel, vec![], "the pending action stays for after");
        case.open.clear();
        assert_eq!(ids(&case.plan(100)).0, vec!["container-restart-vps-npm"]);
        assert_eq!(
            ids(&case.plan(3600 + 100)).0,
            vec!["container-restart-vps-npm", "container-restart-vps-outline"],
            "after the window"
        );
        // A window for the whole node holds everything, disk included.
        case.desired.maintenance = vec![window(
            "{name: w, node: vps, cron: '0 8 * * *', duration: 1h}",
        )];
        let case = case.disk("high", 10);
        assert_eq!(case.plan(100).create, vec![]);
    }

    /// What `plan` decided about `node`.
    fn only(plan: &Plan, node: &str, open: &[Action]) -> Plan {
        let node = n(node);
        let of_node = |id: &Name| {
            open.iter()
                .chain(&plan.create)
                .any(|a| &a.id == id && a.node == node)
        };
        Plan {
            create: plan
                .create
                .iter()
                .filter(|a| a.node == node)
                .cloned()
                .collect(),
            cancel: plan
                .cancel
                .iter()
                .filter(|c| of_node(&c.id))
                .cloned()
                .collect(),
            approve: plan
                .approve
                .iter()
                .filter(|id| of_node(id))
                .cloned()
                .collect(),
            alerts: plan
                .alerts
                .iter()
                .filter(|a| a.node == node)
                .cloned()
                .collect(),
        }
    }

    #[test]
    fn what_wakes_the_supervisor_widens_its_next_pass() {
        let topics = homelab_core::Topics::default();
        let d = desired(&[]);
        let nodes = |names: &[&str]| Scope::Nodes(names.iter().map(|s| n(s)).collect());
        let cases: [(&[Wake], Scope); 9] = [
            (&[], Scope::none()),
            (&[Wake::Message("homelab/events/piha")], nodes(&["piha"])),
            // An alias is judged as its node.
            (&[Wake::Message("homelab/events/node-1")], nodes(&["vps"])),
            (
                &[
                    Wake::Message("homelab/state/nodes/piha"),
                    Wake::Message("homelab/state/services/vps/mosquitto"),
                    Wake::Message("homelab/state/summary"),
                ],
                nodes(&["piha", "vps"]),
            ),
            (&[Wake::Message("homelab/state/summary")], Scope::none()),
            (&[Wake::Message("homelab/events/..")], Scope::none()),
            (
                &[Wake::Message("homelab/events/piha"), Wake::Tick],
                Scope::All,
            ),
            (
                &[Wake::Connected, Wake::Message("homelab/events/piha")],
                Scope::All,
            ),
            (&[Wake::Message("homelab/state/something-new")], Scope::All),
        ];
        for (wakes, want) in cases {
            let mut scope = Scope::none();
            for wake in wakes {
                scope.widen(*wake, &topics, &d);
            }
            assert_eq!(scope, want, "{wakes:?}");
        }
    }

    fn arb_status() -> impl Strategy<Value = Option<ServiceStatus>> {
        prop_oneof![
            Just(None),
            Just(Some(ServiceStatus::Running)),
            Just(Some(ServiceStatus::Healthy)),
            Just(Some(ServiceStatus::Unhealthy)),
            Just(Some(ServiceStatus::NotRunning)),
        ]
    }

    fn arb_event() -> impl Strategy<Value = (usize, usize, usize, i64)> {
        (0usize..2, 0usize..9, 0usize..4, -4000i64..200)
    }

    const EVENT_KINDS: [(&str, bool); 9] = [
        ("containers_not_running", true),
        ("mqtt_unreachable", true),
        ("service_recovered", true),
        ("disk_pressure", false),
        ("ha_websocket_dead", false),
        ("ha_websocket_recovered", false),
        ("ha_recorder_lag", false),
        ("remediation_started", false),
        ("disk_pressure", false),
    ];

    proptest! {
        /// Applying a plan and planning again changes nothing; no id is open
        /// twice; monitor:false and offline nodes never get actions;
        /// approved/running are never cancelled; only low-risk actions of
        /// auto services are approved.
        #[test]
        fn plan_is_idempotent_and_safe(
            statuses in proptest::collection::vec((0usize..2, 0usize..4, arb_status(), 0i64..100, any::<bool>()), 0..12),
            monitor in proptest::collection::vec(any::<bool>(), 4),
            remediation in proptest::collection::vec(0usize..3, 4),
            online in proptest::collection::vec(any::<bool>(), 2),
            open_states in proptest::collection::vec((0usize..2, 0usize..4, 0usize..3, any::<bool>()), 0..6),
            events in proptest::collection::vec(arb_event(), 0..16),
            now in 0i64..200,
        ) {
            let nodes_names = ["vps", "piha"];
            let svc_names = ["a", "b", "homeassistant", "d"];
            let mut specs = vec![];
            for (ni, node) in nodes_names.iter().enumerate() {
                for (si, s) in svc_names.iter().enumerate() {
                    if si < 3 {
                        let remediation = [Remediation::Off, Remediation::Propose, Remediation::Auto][remediation[(si + ni) % 4]];
                        specs.push((*node, *s, ServiceSpec { monitor: monitor[(si + ni) % 4], remediation, ..spec() }));
                    }
                }
            }
            let d = desired(&specs);
            let nodes: Vec<_> = nodes_names.iter().zip(&online).map(|(n, on)| node(n, if *on { NodeStatus::Online } else { NodeStatus::Offline })).collect();
            let mut services = BTreeMap::new();
            for (ni, si, status, since, _) in &statuses {
                if let Some(status) = status {
                    services.insert((ni, si), svc(nodes_names[*ni], svc_names[*si], *status, *since));
                }
            }
            let services: Vec<_> = services.into_values().collect();
            let mut open: BTreeMap<Name, Action> = BTreeMap::new();
            for (ni, si, state, restart) in &open_states {
                let kind = if *restart { ActionKind::ContainerRestart } else { ActionKind::Redeploy };
                let mut a = pending(kind, nodes_names[*ni], svc_names[*si]);
                a.state = [ActionState::Pending, ActionState::Approved, ActionState::Running][*state];
                open.insert(a.id.clone(), a);
            }
            let open: Vec<_> = open.into_values().collect();
            let mut recent: Vec<Event> = Vec::new();
            for (i, (ni, ki, si, secs)) in events.iter().enumerate() {
                let (kind, with_service) = EVENT_KINDS[*ki];
                let data = match kind {
                    "disk_pressure" => serde_json::json!({"level": if *ki == 3 { "high" } else { "low" }}),
                    "remediation_started" => serde_json::json!({"action_id": format!("container-restart-{}-{}", nodes_names[*ni], svc_names[*si])}),
                    _ => serde_json::json!({}),
                };
                let mut e = ev(nodes_names[*ni], kind, with_service.then_some(svc_names[*si]), *secs, data);
                e.id = format!("e{i}");
                recent.push(e);
            }
            let run = |open: &[Action], events: &[Event]| plan(
                Inputs { desired: &d, nodes: &nodes, services: &services, open, finished: &[], events, changes: &BTreeMap::new() },
                &settings(),
                at(now),
            );

            let first = run(&open, &recent);
            // A pass scoped to one node decides for it exactly what the
            // whole pass does, and nothing for any other node.
            for node in nodes_names {
                let scoped = plan_for(
                    Inputs { desired: &d, nodes: &nodes, services: &services, open: &open, finished: &[], events: &recent, changes: &BTreeMap::new() },
                    &settings(),
                    at(now),
                    &Scope::Nodes(BTreeSet::from([n(node)])),
                );
                prop_assert_eq!(scoped, only(&first, node, &open));
            }
            for c in &first.cancel {
                let a = open.iter().find(|a| a.id == c.id).unwrap();
                prop_assert_eq!(a.state, ActionState::Pending);
            }
            let mut created = BTreeSet::new();
            for a in &first.create {
                prop_assert!(created.insert(a.id.clone()), "id proposed twice");
                prop_assert!(!open.iter().any(|o| o.id == a.id), "open id proposed again");
                if let Some(service) = &a.service {
                    let spec = &d.hosts[&a.node][service];
                    prop_assert!(spec.monitor && spec.remediation != Remediation::Off);
                }
                let n = nodes.iter().find(|n| n.node == a.node).unwrap();
                prop_assert_eq!(n.status, NodeStatus::Online);
            }
            for id in &first.approve {
                let a = open.iter().chain(&first.create).find(|a| &a.id == id).unwrap();
                prop_assert_eq!(a.risk, Risk::Low);
                prop_assert_eq!(d.hosts[&a.node][a.service.as_ref().unwrap()].remediation, Remediation::Auto);
                prop_assert!(a.state == ActionState::Pending);
            }
            // Apply (alerts come back as events), then plan again: nothing
            // more to do.
            let cancelled: BTreeSet<_> = first.cancel.iter().map(|c| c.id.clone()).collect();
            let mut after: Vec<Action> = open.iter().filter(|a| !cancelled.contains(&a.id)).cloned().collect();
            after.extend(first.create.iter().cloned());
            for a in &mut after {
                if first.approve.contains(&a.id) {
                    a.state = ActionState::Approved;
                }
            }
            let mut events_after = recent.clone();
            for (i, alert) in first.alerts.iter().enumerate() {
                let mut e = alert.event(at(now));
                e.id = format!("alert{i}");
                events_after.push(e);
            }
            let second = run(&after, &events_after);
            prop_assert_eq!(second, Plan::default());
        }
    }
}
