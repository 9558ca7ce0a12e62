//! World state as the observer synthesizes it and writes it to
//! `world/*.json` (and retained topics); the supervisor and the UI read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerStatus {
    Unknown,
    Ok,
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub node: Name,
    pub status: NodeStatus,
    /// When `status` last changed.
    #[serde(with = "time")]
    pub since: Timestamp,
    #[serde(with = "time")]
    pub first_seen: Timestamp,
    #[serde(with = "time")]
    pub last_seen: Timestamp,
    pub last_seq: u64,
    pub docker: DockerStatus,
    pub containers: usize,
    /// What is wrong with the node's uplink now (Tailscale down, a peer it
    /// needs unreachable), by what: `tailscale` or `peer:<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uplink: BTreeMap<String, UplinkProblem>,
}

/// One thing wrong with a node's uplink, from its agent's
/// `tailscale_down` or `peer_unreachable` until the recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkProblem {
    /// `tailscale_down` or `peer_unreachable`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Name>,
    pub message: String,
    #[serde(with = "time")]
    pub since: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Running,
    Healthy,
    Unhealthy,
    NotRunning,
    /// Seen on the node before, and absent from its latest snapshot; `since`
    /// is when it went missing.
    Missing,
}

impl ServiceStatus {
    pub fn is_ok(self) -> bool {
        matches!(self, ServiceStatus::Running | ServiceStatus::Healthy)
    }

    /// How bad it is, to pick the worst of several containers.
    pub fn rank(self) -> u8 {
        match self {
            ServiceStatus::Healthy => 0,
            ServiceStatus::Running => 1,
            ServiceStatus::Unhealthy => 2,
            ServiceStatus::NotRunning => 3,
            ServiceStatus::Missing => 4,
        }
    }
}

/// One container as the agent reports it in a `node_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub service: Name,
    pub image: String,
    /// Docker's state: running, exited, restarting, paused, dead, …
    pub state: String,
    /// Docker's human status line, e.g. `Up 3 hours (healthy)`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// How often Docker has restarted it (its restart policy at work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u64>,
    /// The exit code of its last run, once it has stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// The exit code in a stopped container's status line, e.g. 137 in
/// `Exited (137) 5 minutes ago`.
pub fn exit_code_in_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.trim().parse().ok()
}

impl Container {
    pub fn service_status(&self) -> ServiceStatus {
        match (self.state.as_str(), self.health.as_deref()) {
            ("running", Some("unhealthy")) => ServiceStatus::Unhealthy,
            ("running", Some("healthy")) => ServiceStatus::Healthy,
            ("running", _) => ServiceStatus::Running,
            _ => ServiceStatus::NotRunning,
        }
    }
}

/// `data` of a `node_snapshot` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub node: Name,
    pub service: Name,
    pub status: ServiceStatus,
    #[serde(with = "time")]
    pub since: Timestamp,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `<kind>:<node>[:<service>]`, stable while the incident is open.
    pub id: String,
    pub kind: String,
    pub node: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    pub severity: crate::Severity,
    pub message: String,
    #[serde(with = "time")]
    pub opened_at: Timestamp,
    /// How many times it happened (a restart loop, a repeated alert); it
    /// keeps counting while the incident is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// When it last happened, for a counted incident.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::option"
    )]
    pub last_seen: Option<Timestamp>,
    /// The maintenance window that covers it now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::maintenance::Active>,
    /// When the observer first knew of it: long after `opened_at` when it
    /// came in an edge node's backlog.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::option"
    )]
    pub noticed_at: Option<Timestamp>,
}

/// `incidents` with `noticed_at` as `before` had it for the same incident
/// (id and `opened_at`), else `now`.
pub fn noticed(incidents: &mut [Incident], before: &[Incident], now: Timestamp) {
    for incident in incidents {
        incident.noticed_at = before
            .iter()
            .find(|b| b.id == incident.id && b.opened_at == incident.opened_at)
            .and_then(|b| b.noticed_at)
            .or(Some(now));
    }
}

/// An incident that closed, in `world/incident_history.json` (oldest
/// first, the last [`HISTORY_KEPT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedIncident {
    #[serde(flatten)]
    pub incident: Incident,
    #[serde(with = "time")]
    pub resolved_at: Timestamp,
}

/// How many resolved incidents the history keeps.
pub const HISTORY_KEPT: usize = 500;

/// The incidents of `before` that `now` no longer holds, resolved at `at`.
/// One that is open again under the same id with a later `opened_at`
/// closed in between.
pub fn resolved(before: &[Incident], now: &[Incident], at: Timestamp) -> Vec<ResolvedIncident> {
    before
        .iter()
        .filter(|old| {
            !now.iter()
                .any(|new| new.id == old.id && new.opened_at == old.opened_at)
        })
        .map(|old| ResolvedIncident {
            incident: old.clone(),
            resolved_at: at,
        })
        .collect()
}

/// What closed between two writes: the incidents open before and not now
/// ([`resolved`], at `at` unless a better time is known), with the times
/// the events gave: `ended` (incidents that ended as events were applied,
/// at the event's time) gives its time to the same incident, and adds
/// those that opened and ended between the two writes (never seen open:
/// a problem during an outage, in its replayed backlog); `recovered(id)`
/// says when the thing an incident is about was last seen well (a node's
/// `since` once online), for those no event ended. In time order.
pub fn closed_between(
    before: &[Incident],
    now: &[Incident],
    ended: Vec<ResolvedIncident>,
    recovered: impl Fn(&Incident) -> Option<Timestamp>,
    at: Timestamp,
) -> Vec<ResolvedIncident> {
    let same = |a: &Incident, b: &Incident| a.id == b.id && a.opened_at == b.opened_at;
    let mut closed = resolved(before, now, at);
    for c in &mut closed {
        match ended.iter().find(|e| same(&e.incident, &c.incident)) {
            Some(e) => c.resolved_at = e.resolved_at,
            None => {
                if let Some(t) = recovered(&c.incident).filter(|t| *t >= c.incident.opened_at) {
                    c.resolved_at = t.min(at);
                }
            }
        }
    }
    for e in ended {
        let known = closed.iter().any(|c| same(&c.incident, &e.incident))
            || now.iter().any(|n| same(n, &e.incident));
        if !known {
            closed.push(e);
        }
    }
    closed.sort_by_key(|c| c.resolved_at);
    closed
}

/// `closed` less what `history` already holds (the same incident, opened
/// at the same time): after a restart the observer replays the events
/// since its checkpoint, and incidents it wrote down before closing again.
pub fn not_yet_in(
    closed: Vec<ResolvedIncident>,
    history: &[ResolvedIncident],
) -> Vec<ResolvedIncident> {
    closed
        .into_iter()
        .filter(|c| {
            !history.iter().rev().any(|h| {
                h.incident.id == c.incident.id && h.incident.opened_at == c.incident.opened_at
            })
        })
        .collect()
}

/// `history` with `closed` appended and the oldest dropped past
/// [`HISTORY_KEPT`].
pub fn append_history(history: &mut Vec<ResolvedIncident>, closed: Vec<ResolvedIncident>) {
    history.extend(closed);
    let excess = history.len().saturating_sub(HISTORY_KEPT);
    history.drain(..excess);
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: usize,
    #[serde(flatten)]
    pub by_status: std::collections::BTreeMap<String, usize>,
}

/// `GET /summary` and `<prefix>/state/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub nodes: Counts,
    pub services: Counts,
    pub incidents: usize,
    pub actions: std::collections::BTreeMap<String, usize>,
    /// Problems of the system itself, such as a repo file that does not
    /// load (`file:line: problem`), each also an incident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The commit that is the desired state, when the repo is a git
    /// history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<crate::repo::DesiredView>,
}

/// The incident kind of a problem of the system itself (the repo).
pub const REPO_PROBLEM: &str = "repo_problem";
/// A commit of a git source that does not validate (never applied).
pub const REPO_INVALID: &str = "repo_invalid";
/// A git source that cannot be fetched, a few times in a row.
pub const REPO_UNREACHABLE: &str = "repo_unreachable";

/// The incidents a git source's status holds (node `repo`): a commit that
/// does not validate, a remote that cannot be fetched. `now` dates one
/// that has no time of its own.
pub fn repo_incidents(status: &crate::repo::RepoStatus, now: Timestamp) -> Vec<Incident> {
    let node = Name::parse("repo").expect("a valid name");
    let live = status
        .live
        .as_ref()
        .map(|c| format!("{} ({})", c.short(), c.subject))
        .unwrap_or_else(|| "no commit".into());
    let mut out = Vec::new();
    if let Some(invalid) = &status.invalid {
        let c = &invalid.commit;
        out.push(Incident {
            id: format!("{REPO_INVALID}:repo"),
            kind: REPO_INVALID.into(),
            node: node.clone(),
            service: None,
            severity: crate::Severity::Error,
            message: format!(
                "commit {} ({}) by {} does not validate and is not applied; {live} stays the desired state:\n{}",
                c.short(),
                c.subject,
                c.author,
                invalid.problems.join("\n")
            ),
            opened_at: now,
            count: Some(invalid.problems.len() as u64),
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        });
    }
    if let Some(failing) = status.unreachable() {
        out.push(Incident {
            id: format!("{REPO_UNREACHABLE}:repo"),
            kind: REPO_UNREACHABLE.into(),
            node,
            service: None,
            severity: crate::Severity::Warning,
            message: format!(
                "fetching {} failed {} times in a row: {}; {live} stays the desired state",
                status.source, failing.failures, failing.message
            ),
            opened_at: failing.since,
            count: Some(failing.failures as u64),
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        });
    }
    out
}

impl Summary {
    pub fn new(
        nodes: &[NodeState],
        services: &[ServiceState],
        incidents: &[Incident],
        open_actions: &[crate::Action],
        repo: Option<&crate::repo::RepoStatus>,
    ) -> Summary {
        let count = |items: Vec<String>| {
            let mut counts = Counts {
                total: items.len(),
                ..Default::default()
            };
            for item in items {
                *counts.by_status.entry(item).or_default() += 1;
            }
            counts
        };
        let mut actions = std::collections::BTreeMap::new();
        for state in crate::ActionState::OPEN {
            actions.insert(
                state.dir().to_string(),
                open_actions.iter().filter(|a| a.state == state).count(),
            );
        }
        Summary {
            nodes: count(nodes.iter().map(|n| json_word(&n.status)).collect()),
            services: count(services.iter().map(|s| json_word(&s.status)).collect()),
            incidents: incidents.len(),
            actions,
            problems: incidents
                .iter()
                .filter(|i| i.kind == REPO_PROBLEM)
                .flat_map(|i| i.message.lines().map(str::to_string))
                .collect(),
            desired: repo.map(crate::repo::DesiredView::of),
        }
    }
}

/// The serde name of a unit enum variant (`NotRunning` → `not_running`).
pub fn json_word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_between_takes_the_events_times() {
        let t = |m: i64| -> Timestamp {
            "2026-12-07T10:00:00Z".parse::<Timestamp>().unwrap() + chrono::TimeDelta::minutes(m)
        };
        let inc = |id: &str, opened: i64| Incident {
            id: id.into(),
            kind: id.split(':').next().unwrap().into(),
            node: Name::parse("piha").unwrap(),
            service: None,
            severity: crate::Severity::Warning,
            message: String::new(),
            opened_at: t(opened),
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        };
        let ended = |id: &str, opened: i64, at: i64| ResolvedIncident {
            incident: inc(id, opened),
            resolved_at: t(at),
        };
        let before = vec![
            inc("service_not_running:piha:a", 0),
            inc("node_offline:piha", 1),
            inc("disk_pressure:piha", 2),
        ];
        let now = vec![inc("service_not_running:piha:c", 5)];
        let closed = closed_between(
            &before,
            &now,
            vec![
                // a ended at 3 by an event; b began and ended between the
                // writes; c's is open again now, not closed.
                ended("service_not_running:piha:a", 0, 3),
                ended("service_not_running:piha:b", 1, 2),
                ended("service_not_running:piha:c", 5, 6),
            ],
            |i| (i.kind == "node_offline").then(|| t(4)),
            t(10),
        );
        let got: Vec<(&str, Timestamp)> = closed
            .iter()
            .map(|c| (c.incident.id.as_str(), c.resolved_at))
            .collect();
        assert_eq!(
            got,
            [
                ("service_not_running:piha:b", t(2)),
                ("service_not_running:piha:a", t(3)),
                ("node_offline:piha", t(4)),
                ("disk_pressure:piha", t(10)),
            ]
        );
    }

    #[test]
    fn an_incident_is_noticed_once() {
        let t = |m: i64| -> Timestamp {
            "2026-12-07T10:00:00Z".parse::<Timestamp>().unwrap() + chrono::TimeDelta::minutes(m)
        };
        let inc = |id: &str, opened: i64, noticed: Option<i64>| Incident {
            id: id.into(),
            kind: "service_not_running".into(),
            node: Name::parse("piha").unwrap(),
            service: None,
            severity: crate::Severity::Warning,
            message: String::new(),
            opened_at: t(opened),
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: noticed.map(t),
        };
        let before = vec![inc("a", 0, Some(1)), inc("b", 0, Some(2))];
        // a is the same; b opened again later; c is new (from a backlog,
        // an hour old).
        let mut now = vec![inc("a", 0, None), inc("b", 5, None), inc("c", -60, None)];
        noticed(&mut now, &before, t(10));
        let got: Vec<Option<Timestamp>> = now.iter().map(|i| i.noticed_at).collect();
        assert_eq!(got, vec![Some(t(1)), Some(t(10)), Some(t(10))]);
    }

    #[test]
    fn what_the_history_holds_is_not_added_again() {
        let t = |m: i64| -> Timestamp {
            "2026-12-07T10:00:00Z".parse::<Timestamp>().unwrap() + chrono::TimeDelta::minutes(m)
        };
        let closed = |id: &str, opened: i64| ResolvedIncident {
            incident: Incident {
                id: id.into(),
                kind: "service_not_running".into(),
                node: Name::parse("piha").unwrap(),
                service: None,
                severity: crate::Severity::Warning,
                message: String::new(),
                opened_at: t(opened),
                count: None,
                last_seen: None,
                maintenance: None,
                noticed_at: None,
            },
            resolved_at: t(30),
        };
        let history = vec![closed("a", 0)];
        let got = not_yet_in(
            vec![
                closed("a", 0),
                // The same incident again, opened later: a new one.
                closed("a", 10),
                closed("b", 0),
            ],
            &history,
        );
        let ids: Vec<(String, Timestamp)> = got
            .into_iter()
            .map(|c| (c.incident.id, c.incident.opened_at))
            .collect();
        assert_eq!(ids, vec![("a".to_string(), t(10)), ("b".to_string(), t(0))]);
    }

    #[test]
    fn incidents_that_close_go_to_the_history() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let incident = |id: &str, opened: &str| Incident {
            id: id.into(),
            kind: "service_not_running".into(),
            node: Name::parse("n1").unwrap(),
            service: None,
            severity: crate::Severity::Warning,
            message: "exited (1)".into(),
            opened_at: at(opened),
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        };
        let a = incident("a", "2026-11-24T10:00:00Z");
        let b = incident("b", "2026-11-24T10:00:00Z");
        let b_again = incident("b", "2026-11-24T10:30:00Z");
        let when = at("2026-11-24T11:00:00Z");
        let ids = |closed: Vec<ResolvedIncident>| {
            closed
                .into_iter()
                .map(|r| (r.incident.id, r.incident.opened_at, r.resolved_at))
                .collect::<Vec<_>>()
        };
        // (before, now, closed)
        let cases: [(Vec<Incident>, Vec<Incident>, Vec<&str>); 5] = [
            (vec![], vec![a.clone()], vec![]),
            (vec![a.clone()], vec![a.clone()], vec![]),
            (vec![a.clone(), b.clone()], vec![b.clone()], vec!["a"]),
            (vec![a.clone(), b.clone()], vec![], vec!["a", "b"]),
            // Closed and opened again in between: the old one closed.
            (vec![b.clone()], vec![b_again.clone()], vec!["b"]),
        ];
        for (before, now, closed) in cases {
            let got = ids(resolved(&before, &now, when));
            let expected: Vec<_> = closed
                .iter()
                .map(|id| {
                    let old = before.iter().find(|i| i.id == *id).unwrap();
                    (id.to_string(), old.opened_at, when)
                })
                .collect();
            assert_eq!(got, expected, "{before:?} -> {now:?}");
        }
        let mut history = Vec::new();
        for _ in 0..(HISTORY_KEPT + 3) {
            append_history(&mut history, resolved(std::slice::from_ref(&a), &[], when));
        }
        append_history(&mut history, resolved(std::slice::from_ref(&b), &[], when));
        assert_eq!(history.len(), HISTORY_KEPT);
        assert_eq!(history.last().unwrap().incident.id, "b", "newest last");
        let json = serde_json::to_value(&history[0]).unwrap();
        assert_eq!(json["id"], "a", "flat: an incident with resolved_at");
        assert_eq!(json["resolved_at"], "2026-11-24T11:00:00.000Z");
    }

    #[test]
    fn exit_codes_in_status_lines() {
        let cases = [
            ("Exited (137) 5 minutes ago", Some(137)),
            ("Exited (0) About a minute ago", Some(0)),
            ("Exited (-1) 2 hours ago", Some(-1)),
            ("Up 3 hours (healthy)", None),
            ("Restarting (1) 3 seconds ago", None),
            ("Exited (x) now", None),
            ("", None),
        ];
        for (status, want) in cases {
            assert_eq!(exit_code_in_status(status), want, "{status}");
        }
    }
}

/// One finished redeploy (`world/deployments.json`, oldest first, at most
/// [`DEPLOYMENTS_KEPT`] a service): written by the executor as it records
/// the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub node: Name,
    pub service: Name,
    pub action_id: Name,
    /// The commit whose files it deployed (a git source only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<crate::repo::Commit>,
    /// That commit was pinned.
    #[serde(default)]
    pub pinned: bool,
    /// Who approved it (an operator, or `policy`).
    pub approved_by: String,
    pub ok: bool,
    pub message: String,
    #[serde(with = "time")]
    pub started_at: Timestamp,
    #[serde(with = "time")]
    pub finished_at: Timestamp,
    pub duration_ms: u64,
    /// What it deployed (`ComposeBundle::digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Deployments kept per node and service.
pub const DEPLOYMENTS_KEPT: usize = 50;

impl Deployment {
    /// The record of a finished redeploy `action` (completed or failed),
    /// or `None` for any other action.
    pub fn of(action: &crate::Action) -> Option<Deployment> {
        use crate::action::{ActionKind, ActionState};
        if action.kind != ActionKind::Redeploy
            || !matches!(action.state, ActionState::Completed | ActionState::Failed)
        {
            return None;
        }
        let result = action.result.as_ref()?;
        let approved = action
            .history
            .iter()
            .rev()
            .find(|t| t.state == ActionState::Approved);
        let started = action
            .history
            .iter()
            .find(|t| t.state == ActionState::Running)
            .map_or(action.updated_at, |t| t.at);
        Some(Deployment {
            node: action.node.clone(),
            service: action.service.clone()?,
            action_id: action.id.clone(),
            commit: action.origin.as_ref().map(|o| o.commit.clone()),
            pinned: action.origin.as_ref().is_some_and(|o| o.pinned),
            approved_by: approved.map_or_else(|| "unknown".into(), |t| t.by.clone()),
            ok: result.ok,
            message: result.message.clone(),
            started_at: started,
            finished_at: action.updated_at,
            duration_ms: (action.updated_at - started).num_milliseconds().max(0) as u64,
            digest: action
                .params
                .as_ref()
                .and_then(|p| p.compose.as_ref())
                .map(|b| b.digest()),
        })
    }
}

/// Appends `deployment` to `history`, keeping the newest
/// [`DEPLOYMENTS_KEPT`] of its node and service.
pub fn append_deployment(history: &mut Vec<Deployment>, deployment: Deployment) {
    let (node, service) = (deployment.node.clone(), deployment.service.clone());
    history.push(deployment);
    let mine = history
        .iter()
        .filter(|d| d.node == node && d.service == service)
        .count();
    let mut excess = mine.saturating_sub(DEPLOYMENTS_KEPT);
    history.retain(|d| {
        if excess > 0 && d.node == node && d.service == service {
            excess -= 1;
            false
        } else {
            true
        }
    });
}
