//! The decision: desired state + world state + open actions + now → the
//! actions to propose and the pending ones to cancel. Pure: no clock, no
//! files, no MQTT; the shell in `lib.rs` does the I/O.
//!
//! Rules (walking skeleton):
//! - per desired service (`monitor: true`, `remediation` not `off`) on a node
//!   that is online with a Docker snapshot: `not_running` →
//!   `container_restart` (low); missing → `redeploy` (guarded, reason
//!   `service_missing`); `unhealthy` → `redeploy` (guarded);
//! - a drift must last its grace period (the service's `grace_period`, else
//!   the default) before it is proposed;
//! - a node that is offline, has never reported, or whose Docker state is
//!   unknown gets no per-service action (the observer raises the node
//!   incident); its pending actions are left alone, not judged blind;
//! - an id that is open (pending, approved, running) is never proposed again;
//! - nor is an id for a drift that began before that id last finished
//!   (completed, failed, rejected or cancelled): the world may not yet show
//!   the effect of a restart that just completed, and an operator who
//!   rejected a proposal does not want it back for the same episode. A new
//!   failure after that (a later `since`) is a new drift;
//! - only *pending* actions are cancelled: `service_removed_from_desired_state`
//!   when the service left the desired state (or opted out), else
//!   `drift_resolved_auto` when its drift is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use homelab_core::action::cancel_reasons;
use homelab_core::desired::{Desired, Remediation, ServiceSpec};
use homelab_core::time::Timestamp;
use homelab_core::world::{DockerStatus, NodeState, NodeStatus, ServiceState, ServiceStatus};
use homelab_core::{Action, ActionKind, ActionState, Name, Risk};

#[derive(Debug, Clone)]
pub struct Settings {
    pub default_grace: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Action>,
    pub cancel: Vec<Cancel>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cancel {
    pub id: Name,
    pub reason: &'static str,
}

/// What is wrong with one service, if anything.
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
}

pub fn plan(inputs: Inputs<'_>, settings: &Settings, now: Timestamp) -> Plan {
    let Inputs {
        desired,
        nodes,
        services,
        open,
        finished,
    } = inputs;
    // World under canonical node names (an alias reports for its node).
    let mut node_by_name: BTreeMap<Name, &NodeState> = BTreeMap::new();
    for node in nodes {
        let name = desired.canonical(&node.node);
        if node_by_name
            .get(&name)
            .is_none_or(|n| n.last_seen < node.last_seen)
        {
            node_by_name.insert(name, node);
        }
    }
    let mut service_by_key: BTreeMap<(Name, Name), &ServiceState> = BTreeMap::new();
    for service in services {
        service_by_key.insert(
            (desired.canonical(&service.node), service.service.clone()),
            service,
        );
    }
    let open_ids: BTreeSet<&Name> = open.iter().map(|a| &a.id).collect();
    // One id may have finished in several states (cancelled once, completed
    // later): the latest counts.
    let mut finished_at: BTreeMap<&Name, Timestamp> = BTreeMap::new();
    for action in finished {
        let at = finished_at.entry(&action.id).or_insert(action.updated_at);
        *at = (*at).max(action.updated_at);
    }
    let judged = |node: &Name| {
        node_by_name
            .get(node)
            .is_some_and(|n| n.status == NodeStatus::Online && n.docker == DockerStatus::Ok)
    };

    let mut plan = Plan::default();
    // Ids whose drift holds now (grace aside), per managed service.
    let mut drifting: BTreeSet<Name> = BTreeSet::new();
    for (node, services) in &desired.hosts {
        if !judged(node) {
            continue;
        }
        let node_state = node_by_name[node];
        for (service, spec) in services.iter().filter(|(_, spec)| managed(spec)) {
            let Some(drift) = drift(
                node_state,
                service_by_key
                    .get(&(node.clone(), service.clone()))
                    .copied(),
            ) else {
                continue;
            };
            let id = Action::id_for(drift.kind, node, Some(service));
            drifting.insert(id.clone());
            let grace = spec.grace_period.unwrap_or(settings.default_grace);
            let lasted = (now - drift.since).to_std().unwrap_or(Duration::ZERO);
            let answered = finished_at.get(&id).is_some_and(|at| *at >= drift.since);
            if lasted < grace || open_ids.contains(&id) || answered {
                continue;
            }
            let action = Action::new(
                drift.kind,
                node.clone(),
                Some(service.clone()),
                drift.risk,
                drift.reason,
                &drift.message,
                now,
            );
            plan.create.push(action);
        }
    }

    for action in open.iter().filter(|a| a.state == ActionState::Pending) {
        let Some(service) = &action.service else {
            continue;
        };
        if !matches!(
            action.kind,
            ActionKind::ContainerRestart | ActionKind::Redeploy
        ) {
            continue;
        }
        let spec = desired.hosts.get(&action.node).and_then(|s| s.get(service));
        if !spec.is_some_and(managed) {
            plan.cancel.push(Cancel {
                id: action.id.clone(),
                reason: cancel_reasons::REMOVED_FROM_DESIRED,
            });
        } else if judged(&action.node) && !drifting.contains(&action.id) {
            plan.cancel.push(Cancel {
                id: action.id.clone(),
                reason: cancel_reasons::DRIFT_RESOLVED,
            });
        }
    }
    plan
}

fn managed(spec: &ServiceSpec) -> bool {
    spec.monitor && spec.remediation != Remediation::Off
}

fn drift(node: &NodeState, service: Option<&ServiceState>) -> Option<Drift> {
    let Some(service) = service else {
        // Missing since the node (re)appeared at the latest.
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

    fn arb_status() -> impl Strategy<Value = Option<ServiceStatus>> {
        prop_oneof![
            Just(None),
            Just(Some(ServiceStatus::Running)),
            Just(Some(ServiceStatus::Healthy)),
            Just(Some(ServiceStatus::Unhealthy)),
            Just(Some(ServiceStatus::NotRunning)),
        ]
    }

    proptest! {
        /// Applying a plan and planning again changes nothing; no id is open
        /// twice; monitor:false and offline nodes never get actions;
        /// approved/running are never cancelled.
        #[test]
        fn plan_is_idempotent_and_safe(
            statuses in proptest::collection::vec((0usize..2, 0usize..4, arb_status(), 0i64..100, any::<bool>()), 0..12),
            monitor in proptest::collection::vec(any::<bool>(), 4),
            online in proptest::collection::vec(any::<bool>(), 2),
            open_states in proptest::collection::vec((0usize..2, 0usize..4, 0usize..3, any::<bool>()), 0..6),
            now in 0i64..200,
        ) {
            let nodes_names = ["vps", "piha"];
            let svc_names = ["a", "b", "c", "d"];
            let mut specs = vec![];
            for (ni, node) in nodes_names.iter().enumerate() {
                for (si, s) in svc_names.iter().enumerate() {
                    if si < 3 { specs.push((*node, *s, ServiceSpec { monitor: monitor[(si + ni) % 4], ..spec() })); }
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

            let first = run(&d, &nodes, &services, &open, &settings(), at(now));
            for c in &first.cancel {
                let a = open.iter().find(|a| a.id == c.id).unwrap();
                prop_assert_eq!(a.state, ActionState::Pending);
            }
            let mut created = BTreeSet::new();
            for a in &first.create {
                prop_assert!(created.insert(a.id.clone()), "id proposed twice");
                prop_assert!(!open.iter().any(|o| o.id == a.id), "open id proposed again");
                let spec = &d.hosts[&a.node][a.service.as_ref().unwrap()];
                prop_assert!(spec.monitor);
                let n = nodes.iter().find(|n| n.node == a.node).unwrap();
                prop_assert_eq!(n.status, NodeStatus::Online);
            }
            // Apply, then plan again: nothing more to do.
            let cancelled: BTreeSet<_> = first.cancel.iter().map(|c| c.id.clone()).collect();
            let mut after: Vec<Action> = open.iter().filter(|a| !cancelled.contains(&a.id)).cloned().collect();
            after.extend(first.create.iter().cloned());
            let second = run(&d, &nodes, &services, &after, &settings(), at(now));
            prop_assert_eq!(second, Plan::default());
        }
    }
}
