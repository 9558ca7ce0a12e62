//! The operator's pages, server-rendered (askama), every one with the same
//! frame: navigation with the counts that need attention, the repo's
//! problems as a banner, the login form. Overview (a card per node of the
//! inventory), services matrix, a page per node, actions, incidents, the
//! event log. Forms work without JavaScript; with it, `app.js` swaps in a
//! fresh `<main>` when the server says something changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::Context as _;
use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use chrono::{Duration, Utc};
use homelab_core::agentstatus::Vitals;
use homelab_core::time::Timestamp;
use homelab_core::world::{NodeStatus, ResolvedIncident, ServiceState, ServiceStatus};
use homelab_core::{Action, ActionKind, ActionState, Event, Name, Risk, Severity};
use serde::Deserialize;

use crate::present::{self, When};
use crate::search::{self, Filter};
use crate::{json_word, rejected, websec, world, AppError, AppState};

/// What every page shows around its content.
pub struct Frame {
    pub authed: bool,
    /// Who is logged in.
    pub operator: Option<String>,
    /// The CSRF value every form carries (the `homelab_csrf` cookie's).
    pub csrf: String,
    /// Problems of the system itself (a repo file that does not load), one
    /// `file:line: problem` each.
    pub problems: Vec<String>,
    /// Problems of homelab itself as the UI sees them ([`crate::system_problems`]).
    pub system: Vec<String>,
    /// Which page this is, for the navigation.
    pub here: &'static str,
    pub pending: usize,
    pub incidents: usize,
    /// The page's own path and query, where its forms come back to.
    pub back: String,
    /// The commit that is the desired state (a git source only).
    pub desired: Option<DesiredLine>,
}

/// What every page says of the desired state of a git source, at its top.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredLine {
    pub short: String,
    pub subject: String,
    pub author: String,
    pub when: When,
    pub fetched: Option<When>,
    /// Pinned: by whom, since when, and the branch's head meanwhile.
    pub pinned: Option<(String, When)>,
    pub head: Option<String>,
    /// A commit that does not validate: short, subject, author, problems.
    pub invalid: Option<(String, String, String, Vec<String>)>,
    /// A force-push: when, and the commits it dropped (short and subject).
    pub rewritten: Option<(When, Vec<String>)>,
    /// Fetching fails: why.
    pub failing: Option<String>,
}

impl DesiredLine {
    pub fn of(
        status: &homelab_core::repo::RepoStatus,
        now: &chrono::DateTime<Utc>,
    ) -> Option<DesiredLine> {
        let live = status.live.as_ref()?;
        Some(DesiredLine {
            short: live.short().to_string(),
            subject: live.subject.clone(),
            author: live.author.clone(),
            when: When::new(&live.time, now),
            fetched: status.fetched_at.as_ref().map(|t| When::new(t, now)),
            pinned: status
                .pinned
                .as_ref()
                .map(|p| (p.by.clone(), When::new(&p.at, now))),
            head: status
                .head
                .as_ref()
                .filter(|h| h.sha != live.sha)
                .map(|h| format!("{} ({})", h.short(), h.subject)),
            invalid: status.invalid.as_ref().map(|i| {
                (
                    i.commit.short().to_string(),
                    i.commit.subject.clone(),
                    i.commit.author.clone(),
                    i.problems.clone(),
                )
            }),
            rewritten: status
                .rewritten
                .as_ref()
                .filter(|r| {
                    !r.dropped.is_empty()
                        && now.signed_duration_since(r.at) < chrono::TimeDelta::days(1)
                })
                .map(|r| {
                    (
                        When::new(&r.at, now),
                        r.dropped
                            .iter()
                            .map(|c| format!("{} {}", c.short(), c.subject))
                            .collect(),
                    )
                }),
            failing: status.failing.as_ref().map(|f| {
                format!(
                    "fetching failed {} times in a row: {}",
                    f.failures, f.message
                )
            }),
        })
    }
}

/// The frame of a page, and the CSRF cookie to set if the browser has
/// none yet.
pub(crate) fn frame(
    state: &AppState,
    headers: &HeaderMap,
    here: &'static str,
    back: String,
) -> Result<(Frame, Option<String>), AppError> {
    let pending = actions(state, &[ActionState::Pending])?.len();
    frame_counted(state, headers, here, back, pending)
}

/// [`frame`], for a page that has listed the pending actions already.
fn frame_counted(
    state: &AppState,
    headers: &HeaderMap,
    here: &'static str,
    back: String,
    pending: usize,
) -> Result<(Frame, Option<String>), AppError> {
    let (csrf, set_csrf) = match websec::cookie(headers, websec::CSRF_COOKIE) {
        Some(value) if value.len() == 48 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (value.to_string(), None)
        }
        _ => {
            let value = websec::new_csrf();
            let cookie = websec::set_cookie(
                websec::CSRF_COOKIE,
                &value,
                2_592_000,
                websec::over_tls(headers),
            );
            (value, Some(cookie))
        }
    };
    let world = world(state)?;
    let problems = world
        .incidents
        .iter()
        .filter(|i| i.kind == homelab_core::world::REPO_PROBLEM)
        .flat_map(|i| i.message.lines().map(str::to_string))
        .collect();
    let operator = crate::operator(state, headers);
    Ok((
        Frame {
            authed: operator.is_some(),
            operator,
            csrf,
            problems,
            system: crate::system_problems(state),
            here,
            pending,
            incidents: world.incidents.len(),
            back,
            desired: homelab_core::repo::RepoStatus::read(&state.layout)
                .and_then(|status| DesiredLine::of(&status, &Utc::now())),
        },
        set_csrf,
    ))
}

/// A rendered page, with the CSRF cookie when it is new.
pub(crate) fn respond(html: String, set_csrf: Option<String>) -> Response {
    let html = Html(html);
    match set_csrf {
        Some(cookie) => ([(header::SET_COOKIE, cookie)], html).into_response(),
        None => html.into_response(),
    }
}

pub(crate) fn render(page: impl Template) -> Result<String, AppError> {
    Ok(page.render().context("render page")?)
}

/// Actions in these states, through the shared listing cache.
pub(crate) fn actions(state: &AppState, states: &[ActionState]) -> Result<Vec<Action>, AppError> {
    let mut cache = state.actions.lock().expect("actions cache lock");
    let mut out = Vec::new();
    for s in states {
        out.extend(state.store.list_with(*s, &mut cache)?);
    }
    Ok(out)
}

fn finished_states() -> Vec<ActionState> {
    ActionState::ALL
        .into_iter()
        .filter(|s| !s.is_open())
        .collect()
}

// ---------------------------------------------------------------- wording

/// What approving an action will do, in the operator's words.
pub fn what_happens(a: &Action) -> String {
    let service = a.service.as_ref().map_or("", |s| s.as_str());
    let params = a.params.clone().unwrap_or_default();
    match a.kind {
        ActionKind::ContainerRestart => format!(
            "{}'s agent restarts the containers of {service} (docker restart); nothing else changes",
            a.node
        ),
        ActionKind::Redeploy => match (&params.compose, &params.compose_missing) {
            (Some(bundle), _) => format!(
                "{}'s agent runs compose up -d for project {} with {} from the repo, replacing its containers",
                a.node,
                bundle.project,
                bundle
                    .files
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, Some(why)) => format!(
                "{}'s agent is asked to redeploy {service}, but it will fail: {why}",
                a.node
            ),
            (None, None) => format!("{}'s agent redeploys {service}", a.node),
        },
        ActionKind::DiskCleanup => {
            let mut text = format!(
                "{}'s agent removes stopped containers{}, unused images and build cache (docker prune)",
                a.node,
                params
                    .older_than_secs
                    .map(|s| format!(" older than {}", present::duration(s)))
                    .unwrap_or_default()
            );
            if let Some(keep) = params.keep_services.filter(|k| !k.is_empty()) {
                text += &format!(
                    "; the containers of {} stay",
                    keep.iter()
                        .map(Name::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            text
        }
        ActionKind::AlertOnly => "nothing runs: it is an alert to acknowledge".into(),
    }
}

pub struct ActionView {
    /// In words: "Restart zigbee2mqtt on piha".
    pub title: String,
    pub id: String,
    pub kind: String,
    pub node: String,
    pub service: String,
    pub risk: String,
    pub risk_icon: &'static str,
    pub guarded: bool,
    pub reason: String,
    pub message: String,
    pub what: String,
    pub state: String,
    pub icon: &'static str,
    pub created_at: When,
    pub updated_at: When,
    /// The last step: "completed by executor: …".
    pub last: String,
    /// The result's message, once finished.
    pub result: String,
    pub ok: bool,
    /// The commit it was proposed from: `3f2a91c (subject) by author`,
    /// pinned or not.
    pub commit: String,
    /// For a redeploy of a changed service: the commit it changes from, and
    /// the diff of its compose files.
    pub from_commit: String,
    pub diff: String,
}

impl ActionView {
    pub fn new(a: &Action, now: &Timestamp) -> ActionView {
        let risk = json_word(&a.risk);
        ActionView {
            title: present::action_title(
                a.kind.as_str(),
                a.node.as_str(),
                a.service.as_ref().map_or("", |s| s.as_str()),
            ),
            id: a.id.to_string(),
            kind: a.kind.as_str().into(),
            node: a.node.to_string(),
            service: a
                .service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            risk_icon: if a.risk == Risk::Guarded {
                "▲"
            } else {
                "●"
            },
            guarded: a.risk == Risk::Guarded,
            risk,
            reason: a.reason.clone(),
            message: a.message.clone(),
            what: what_happens(a),
            state: a.state.dir().into(),
            icon: present::action_icon(a.state.dir()),
            created_at: When::new(&a.created_at, now),
            updated_at: When::new(&a.updated_at, now),
            last: a
                .history
                .last()
                .map(|t| format!("{} by {}: {}", t.state, t.by, t.why))
                .unwrap_or_default(),
            result: a
                .result
                .as_ref()
                .map(|r| r.message.clone())
                .unwrap_or_default(),
            ok: a.result.as_ref().is_some_and(|r| r.ok),
            commit: a
                .origin
                .as_ref()
                .map(|o| {
                    format!(
                        "{} ({}) by {}{}",
                        o.commit.short(),
                        o.commit.subject,
                        o.commit.author,
                        if o.pinned { ", pinned" } else { "" }
                    )
                })
                .unwrap_or_default(),
            from_commit: a
                .origin
                .as_ref()
                .and_then(|o| o.from_commit.as_deref())
                .map(|c| c[..c.len().min(7)].to_string())
                .unwrap_or_default(),
            diff: a
                .origin
                .as_ref()
                .and_then(|o| o.diff.clone())
                .unwrap_or_default(),
        }
    }
}

pub struct IncidentView {
    /// In words: "zigbee2mqtt on piha is not running".
    pub title: String,
    pub id: String,
    /// Its page.
    pub link: String,
    pub kind: String,
    pub node: String,
    pub service: String,
    pub severity: String,
    pub icon: &'static str,
    pub message: String,
    pub opened_at: When,
    pub resolved_at: Option<When>,
    /// "12 min" open.
    pub lasted: String,
    pub count: u64,
    pub maintenance: String,
    /// The row's element id: one per row (a resolved incident carries
    /// its opening time, as the same incident may have closed before).
    pub row: String,
    /// "reported 2 h 5 min after it began": when it reached the observer
    /// long after its event (an edge node's backlog).
    pub late: Option<String>,
}

/// How late an incident reached the observer, in words, when it matters
/// (a minute or more).
pub fn arrival_delay(opened: Timestamp, noticed: Option<Timestamp>) -> Option<String> {
    let secs = (noticed? - opened).num_seconds();
    (secs >= 60).then(|| {
        format!(
            "reported {} after it began: it came in a backlog",
            present::duration(secs as u64)
        )
    })
}

impl IncidentView {
    fn new(
        i: &homelab_core::world::Incident,
        resolved: Option<Timestamp>,
        now: &Timestamp,
    ) -> IncidentView {
        let severity = json_word(&i.severity);
        let end = resolved.unwrap_or(*now);
        IncidentView {
            title: present::incident_title(
                &i.kind,
                i.node.as_str(),
                i.service.as_ref().map_or("", |s| s.as_str()),
            ),
            id: i.id.clone(),
            link: format!("/incidents/{}", present::path_segment(&i.id)),
            kind: i.kind.clone(),
            node: i.node.to_string(),
            service: i
                .service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            icon: present::icon(&severity),
            severity,
            message: i.message.clone(),
            opened_at: When::new(&i.opened_at, now),
            resolved_at: resolved.map(|r| When::new(&r, now)),
            lasted: present::duration((end - i.opened_at).num_seconds().max(0) as u64),
            count: i.count.unwrap_or(0),
            maintenance: i
                .maintenance
                .as_ref()
                .map(|m| m.window.to_string())
                .unwrap_or_default(),
            row: match resolved {
                None => format!("incident-{}", i.id),
                Some(_) => format!("incident-{}-{}", i.id, i.opened_at.timestamp_millis()),
            },
            late: arrival_delay(i.opened_at, i.noticed_at),
        }
    }
}

pub struct EventView {
    pub ts: When,
    pub node: String,
    pub service: String,
    pub kind: String,
    pub severity: String,
    pub icon: &'static str,
    pub message: String,
}

impl EventView {
    fn new(e: &Event, now: &Timestamp) -> EventView {
        let severity = json_word(&e.severity);
        EventView {
            ts: When::new(&e.ts, now),
            node: e.node.to_string(),
            service: e
                .service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            kind: e.kind.clone(),
            icon: present::icon(&severity),
            severity,
            message: e.message.clone(),
        }
    }
}

// ---------------------------------------------------------------- nodes

/// A node as its card shows it.
pub struct NodeCard {
    pub node: String,
    /// online, offline, never_reported.
    pub status: String,
    pub icon: &'static str,
    pub since: When,
    pub last_seen: When,
    /// Offline: what is shown is its last known state.
    pub stale: bool,
    pub seen: bool,
    pub role: String,
    pub description: String,
    pub docker: String,
    pub healthy: usize,
    /// Running, but failing its health check.
    pub unhealthy: usize,
    /// Not running (exited, stopped, dead).
    pub stopped: usize,
    pub missing: usize,
    pub vitals: Option<VitalsView>,
    /// An edge node (role `edge…` or `offline_first`): its outbox.
    pub edge: bool,
    pub backlog: Option<u64>,
    pub oldest_unacked: Option<When>,
    /// The link to the broker and Tailscale, as its agent last said.
    pub link: Option<String>,
    pub tailscale: Option<String>,
    /// What is wrong with its uplink now (Tailscale down, a peer gone).
    pub uplink_problems: Vec<String>,
    /// It reported but is not in the inventory (a local agent under the
    /// machine's hostname, a typo in `--node`).
    pub unknown: bool,
    /// The worst of status and services: ok, warning, bad.
    pub tone: &'static str,
    /// Its status over the last 24 hours, once it reported.
    pub day: Option<crate::status::BarView>,
}

pub struct VitalsView {
    pub load: String,
    pub memory: String,
    pub disk: String,
    pub disk_pct: f64,
    pub as_of: When,
}

impl VitalsView {
    pub(crate) fn new(v: &Vitals, at: &Timestamp, now: &Timestamp) -> VitalsView {
        let sample = crate::history::Sample::of(v, *at);
        let fullest = v
            .disks
            .iter()
            .max_by(|a, b| a.used_pct.total_cmp(&b.used_pct));
        VitalsView {
            load: format!("{:.2}", v.load[0]),
            memory: format!(
                "{:.0} % of {}",
                sample.memory_pct,
                present::bytes(v.memory_total_bytes)
            ),
            disk: fullest.map_or_else(
                || "not watched".into(),
                |d| {
                    format!(
                        "{:.0} % ({}, {} free)",
                        d.used_pct,
                        d.mount,
                        present::bytes(d.free_bytes)
                    )
                },
            ),
            disk_pct: sample.disk_pct,
            as_of: When::new(at, now),
        }
    }
}

/// Every node to show: those that reported, and those of the inventory
/// (or of the observer's never-reported incidents) that did not, in name
/// order.
fn node_cards(state: &AppState, now: &Timestamp) -> Result<Vec<NodeCard>, AppError> {
    let world = world(state)?;
    let inventory = crate::inventory(state);
    let tracks = crate::status_history(state)?;
    // Each node's own tracks (not its services'), looked up once.
    let mut node_tracks: HashMap<&Name, Vec<&homelab_core::uptime::Track>> = HashMap::new();
    for t in tracks.iter().filter(|t| t.service.is_none()) {
        node_tracks.entry(&t.node).or_default().push(t);
    }
    let agents = state.agents.lock().expect("agents lock");
    // healthy, unhealthy, stopped, missing.
    let mut by_node: HashMap<&Name, (usize, usize, usize, usize)> = HashMap::new();
    // Which services each node runs: needed only to count the wanted ones
    // it does not.
    let mut present: HashSet<(&Name, &Name)> = HashSet::new();
    let wanted_known = !inventory.services.is_empty();
    for s in world.services.iter() {
        let counts = by_node.entry(&s.node).or_default();
        match s.status {
            ServiceStatus::Running | ServiceStatus::Healthy => counts.0 += 1,
            ServiceStatus::Unhealthy => counts.1 += 1,
            ServiceStatus::NotRunning => counts.2 += 1,
            ServiceStatus::Missing => counts.3 += 1,
        }
        if wanted_known {
            present.insert((&s.node, &s.service));
        }
    }
    let reported_by_name: HashMap<&Name, &homelab_core::world::NodeState> =
        world.nodes.iter().map(|n| (&n.node, n)).collect();
    let mut names: BTreeSet<Name> = world.nodes.iter().map(|n| n.node.clone()).collect();
    names.extend(inventory.nodes.keys().cloned());
    names.extend(
        world
            .incidents
            .iter()
            .filter(|i| i.kind == crate::NEVER_REPORTED)
            .map(|i| i.node.clone()),
    );
    let mut cards = Vec::new();
    for name in names {
        // An alias that reported is shown under its inventory name.
        if inventory.is_alias(&name) {
            continue;
        }
        let spec = inventory.nodes.get(&name);
        // Reported under its name, else under one of its aliases.
        let reported = reported_by_name.get(&name).copied().or_else(|| {
            spec.and_then(|s| {
                s.aliases
                    .iter()
                    .find_map(|a| reported_by_name.get(a).copied())
            })
        });
        let (healthy, unhealthy, stopped, mut missing) = by_node
            .get(&reported.map_or(&name, |n| &n.node))
            .copied()
            .unwrap_or_default();
        // Desired but never seen on the node: missing too.
        if let Some(wanted) = inventory.services.get(&name) {
            let reported_as = reported.map_or(&name, |n| &n.node);
            missing += wanted
                .iter()
                .filter(|s| !present.contains(&(reported_as, *s)))
                .count();
        }
        let edge = spec.is_some_and(|s| {
            s.offline_first || s.role.as_deref().is_some_and(|r| r.starts_with("edge"))
        });
        let agent = reported.and_then(|n| agents.get(&n.node));
        let card = match reported {
            Some(n) => {
                let status = json_word(&n.status);
                let names: Vec<Name> = std::iter::once(name.clone())
                    .chain(spec.map(|s| s.aliases.clone()).unwrap_or_default())
                    .collect();
                let mine: Vec<&homelab_core::uptime::Track> = names
                    .iter()
                    .flat_map(|n| node_tracks.get(n).into_iter().flatten().copied())
                    .collect();
                let day = crate::status::rows(&crate::status::Inputs {
                    names: &names,
                    first_seen: Some(n.first_seen),
                    services: &[],
                    tracks: &mine,
                    open: &world.incidents,
                    now: *now,
                })
                .swap_remove(0)
                .day;
                let stale = n.status != NodeStatus::Online;
                NodeCard {
                    node: name.to_string(),
                    icon: present::icon(&status),
                    since: When::new(&n.since, now),
                    last_seen: When::new(&n.last_seen, now),
                    stale,
                    seen: true,
                    role: spec.and_then(|s| s.role.clone()).unwrap_or_default(),
                    description: spec.and_then(|s| s.description.clone()).unwrap_or_default(),
                    docker: json_word(&n.docker),
                    healthy,
                    unhealthy,
                    stopped,
                    missing,
                    vitals: agent.and_then(|a| {
                        a.vitals
                            .as_ref()
                            .map(|v| VitalsView::new(v, &a.updated.unwrap_or(*now), now))
                    }),
                    edge,
                    backlog: agent.map(|a| a.outbox_events),
                    oldest_unacked: agent
                        .and_then(|a| a.oldest_unacked)
                        .map(|t| When::new(&t, now)),
                    link: agent
                        .and_then(|a| a.uplink.as_ref())
                        .map(|u| u.summary(*now)),
                    tailscale: agent
                        .and_then(|a| a.uplink.as_ref())
                        .and_then(|u| u.tailscale.as_ref())
                        .map(|t| t.summary()),
                    uplink_problems: n.uplink.values().map(|p| p.message.clone()).collect(),
                    unknown: spec.is_none() && !inventory.nodes.is_empty(),
                    tone: if stale || unhealthy + stopped + missing > 0 || !n.uplink.is_empty() {
                        if stale {
                            "bad"
                        } else {
                            "warning"
                        }
                    } else {
                        "ok"
                    },
                    status,
                    day: Some(day),
                }
            }
            None => {
                // Waiting for its agent until the observer's grace is
                // over; then never reported, an incident.
                let incident = world
                    .incidents
                    .iter()
                    .find(|i| i.kind == crate::NEVER_REPORTED && i.node == name);
                let expected = incident.map_or(*now, |i| i.opened_at);
                let status = match incident {
                    Some(_) => "never_reported",
                    None => "waiting",
                };
                NodeCard {
                    node: name.to_string(),
                    status: status.into(),
                    icon: present::icon(status),
                    since: When::new(&expected, now),
                    last_seen: When::new(&expected, now),
                    stale: false,
                    seen: false,
                    role: spec.and_then(|s| s.role.clone()).unwrap_or_default(),
                    description: spec.and_then(|s| s.description.clone()).unwrap_or_default(),
                    docker: "unknown".into(),
                    healthy: 0,
                    unhealthy: 0,
                    stopped: 0,
                    missing,
                    vitals: None,
                    edge,
                    backlog: None,
                    oldest_unacked: None,
                    link: None,
                    tailscale: None,
                    uplink_problems: Vec::new(),
                    unknown: false,
                    tone: if incident.is_some() { "bad" } else { "warning" },
                    day: None,
                }
            }
        };
        cards.push(card);
    }
    worst_first(&mut cards);
    Ok(cards)
}

/// Node cards worst first, as an operator reads them: offline nodes, then
/// those whose agent never reported, then those with problems, then the
/// fine ones; by name within each.
pub fn worst_first(cards: &mut [NodeCard]) {
    let rank = |c: &NodeCard| match (c.seen, c.stale, c.tone) {
        (true, true, _) => 0,
        (false, _, _) => 1,
        (_, _, "ok") => 3,
        _ => 2,
    };
    cards.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.node.cmp(&b.node)));
}

// ---------------------------------------------------------------- overview

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    frame: Frame,
    verdict: String,
    tone: &'static str,
    cards: Vec<NodeCard>,
    incidents: Vec<IncidentView>,
    pending: Vec<ActionView>,
}

/// The one-line answer to "is everything fine?".
pub fn verdict(cards: &[NodeCard], incidents: usize, pending: usize) -> (String, &'static str) {
    let down = cards.iter().filter(|c| c.status != "online").count();
    let bad_services: usize = cards
        .iter()
        .map(|c| c.unhealthy + c.stopped + c.missing)
        .sum();
    let services: usize = cards
        .iter()
        .map(|c| c.healthy + c.unhealthy + c.stopped + c.missing)
        .sum();
    if down == 0 && bad_services == 0 && incidents == 0 && pending == 0 {
        return (
            format!(
                "All is well: {} nodes online, {services} services healthy.",
                cards.len()
            ),
            "ok",
        );
    }
    let mut parts = Vec::new();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    if pending > 0 {
        parts.push(plural(
            pending,
            "action waits for you",
            "actions wait for you",
        ));
    }
    if down > 0 {
        parts.push(plural(down, "node is not online", "nodes are not online"));
    }
    if bad_services > 0 {
        parts.push(plural(
            bad_services,
            "service is not healthy",
            "services are not healthy",
        ));
    }
    if incidents > 0 {
        parts.push(plural(incidents, "incident is open", "incidents are open"));
    }
    (
        parts.join(", ") + ".",
        if down > 0 { "bad" } else { "warning" },
    )
}

pub async fn overview(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let pending: Vec<ActionView> = actions(&state, &[ActionState::Pending])?
        .iter()
        .map(|a| ActionView::new(a, &now))
        .collect();
    let (frame, set_csrf) = frame_counted(&state, &headers, "overview", "/".into(), pending.len())?;
    let cards = node_cards(&state, &now)?;
    let world = world(&state)?;
    let incidents: Vec<IncidentView> = world
        .incidents
        .iter()
        .map(|i| IncidentView::new(i, None, &now))
        .collect();
    let (verdict, tone) = verdict(&cards, incidents.len(), pending.len());
    let page = OverviewPage {
        frame,
        verdict,
        tone,
        cards,
        incidents,
        pending,
    };
    Ok(respond(render(page)?, set_csrf))
}

// ---------------------------------------------------------------- services

#[derive(Debug, Default, Deserialize)]
pub struct ServicesQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    show: String,
}

pub struct Cell {
    pub status: String,
    pub icon: &'static str,
    pub since: Option<When>,
    pub last: String,
    pub title: String,
    /// The commit its compose files were deployed (or adopted) from, short
    /// (a git source only), and whether the repo wants other ones now.
    pub deployed: String,
    pub behind: bool,
    /// The node is not online: the status is what it last said, this long
    /// ago ("3 h ago"), shown greyed as last known.
    pub last_known: Option<String>,
}

/// What a cell says of a service whose node is `node`'s state: the status
/// as is while the node is online; otherwise the last known one, as of
/// when the node was last seen. A service of an offline node is not
/// "running": nobody knows.
pub fn last_known(
    node: Option<&homelab_core::world::NodeState>,
    now: &Timestamp,
) -> Option<String> {
    match node {
        Some(n) if n.status == NodeStatus::Online => None,
        Some(n) => Some(present::ago(&n.last_seen, now)),
        None => Some("never".into()),
    }
}

pub struct MatrixRow {
    pub service: String,
    pub cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "services.html")]
struct ServicesPage {
    frame: Frame,
    q: String,
    problems_only: bool,
    columns: Vec<String>,
    rows: Vec<MatrixRow>,
    total: usize,
}

/// Which services the matrix shows: `q` in the service's or the node's
/// name, and only the unwell ones when asked.
pub fn shown(s: &ServiceState, q: &str, problems_only: bool) -> bool {
    let q = q.trim().to_ascii_lowercase();
    (q.is_empty() || s.service.as_str().contains(&q) || s.node.as_str().contains(&q))
        && (!problems_only || !s.status.is_ok())
}

pub async fn services(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ServicesQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    if query.q.len() > 100 {
        return Err(AppError::BadRequest("q: at most 100 characters".into()));
    }
    let problems_only = match query.show.as_str() {
        "" | "all" => false,
        "problems" => true,
        other => {
            return Err(AppError::BadRequest(format!(
                "show: {other:?} is neither all nor problems"
            )))
        }
    };
    let now = Utc::now();
    let back = format!("/services?q={}&show={}", query.q, query.show);
    let (frame, set_csrf) = frame(&state, &headers, "services", back)?;
    let world = world(&state)?;
    let applied = homelab_core::repo::RepoStatus::read(&state.layout)
        .and_then(|_| homelab_core::repo::Applied::read(&state.layout))
        .unwrap_or_default();
    let tail = state.tail.lock().expect("tail lock");
    let shown: Vec<&ServiceState> = world
        .services
        .iter()
        .filter(|s| shown(s, &query.q, problems_only))
        .collect();
    let columns: BTreeSet<&Name> = shown.iter().map(|s| &s.node).collect();
    let mut rows: BTreeMap<&Name, BTreeMap<&Name, &ServiceState>> = BTreeMap::new();
    for s in &shown {
        rows.entry(&s.service).or_default().insert(&s.node, s);
    }
    // Worst first: a service down anywhere above one fine everywhere;
    // by name within the same.
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by_key(|(service, on)| {
        let worst = on.values().map(|s| s.status.rank()).max().unwrap_or(0);
        (std::cmp::Reverse(worst), *service)
    });
    let rows = rows
        .into_iter()
        .map(|(service, on)| MatrixRow {
            service: service.to_string(),
            cells: columns
                .iter()
                .map(|node| match on.get(node) {
                    Some(s) => {
                        let status = json_word(&s.status);
                        let last = tail
                            .services
                            .get(&s.node)
                            .and_then(|of_node| of_node.get(&s.service))
                            .map(|l| format!("{} {}", l.kind, present::ago(&l.ts, &now)))
                            .unwrap_or_default();
                        let entry = applied.entry(s.node.as_str(), s.service.as_str());
                        let node = world.nodes.iter().find(|n| n.node == s.node);
                        Cell {
                            last_known: last_known(node, &now),
                            icon: present::icon(&status),
                            title: s.message.clone(),
                            status,
                            since: Some(When::new(&s.since, &now)),
                            last,
                            deployed: entry
                                .and_then(|e| e.commit.as_deref())
                                .map(|c| c[..c.len().min(7)].to_string())
                                .unwrap_or_default(),
                            behind: entry.is_some_and(|e| e.wanted.is_some()),
                        }
                    }
                    None => Cell {
                        status: "absent".into(),
                        icon: "",
                        since: None,
                        last: String::new(),
                        title: "not on this node".into(),
                        deployed: String::new(),
                        behind: false,
                        last_known: None,
                    },
                })
                .collect(),
        })
        .collect();
    let page = ServicesPage {
        frame,
        q: query.q.clone(),
        problems_only,
        columns: columns.iter().map(|n| n.to_string()).collect(),
        rows,
        total: world.services.len(),
    };
    Ok(respond(render(page)?, set_csrf))
}

// ---------------------------------------------------------------- a node

pub struct ContainerView {
    pub name: String,
    pub service: String,
    pub image: String,
    pub state: String,
    pub icon: &'static str,
    pub health: String,
    pub restarts: String,
    pub status: String,
    /// As its agent last read them: "12.5 %", "150 MB of 4.0 GB"; "–"
    /// when not running or not read yet.
    pub cpu: String,
    pub memory: String,
}

pub struct Chart {
    pub label: String,
    pub now: String,
    pub scale: String,
    pub lines: Vec<String>,
    /// Thresholds drawn across it.
    pub marks: Vec<Mark>,
    pub zones: Vec<Zone>,
    /// e.g. "last hour": the left edge.
    pub since: String,
}

/// A range of the vitals charts, as a link.
pub struct RangeLink {
    pub value: &'static str,
    pub words: &'static str,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "node.html")]
struct NodePage {
    frame: Frame,
    node: String,
    cards: Vec<NodeCard>,
    containers: Vec<ContainerView>,
    /// The node is not online: its containers are as it last said, this
    /// long ago.
    last_known: Option<String>,
    charts: Vec<Chart>,
    ranges: Vec<RangeLink>,
    range_words: &'static str,
    status: Vec<crate::status::StatusRow>,
    incidents: Vec<IncidentView>,
    actions: Vec<ActionView>,
    events: Vec<EventView>,
}

/// The newest events of one node, reading back at most a week.
fn recent_events(state: &AppState, node: &Name, limit: usize) -> Result<Vec<Event>, AppError> {
    let filter = Filter {
        node: Some(node.clone()),
        since: Some(Utc::now() - Duration::days(7)),
        ..Default::default()
    };
    Ok(search::search(&state.layout, &filter, limit)?.events)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    /// The vitals charts' range: `1h`, `24h` (the default) or `7d`.
    range: Option<String>,
}

pub async fn node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    query: Result<axum::extract::Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let axum::extract::Query(query) = query.map_err(|e| crate::rejected("query", e))?;
    let name =
        Name::parse(&raw).map_err(|e| AppError::BadRequest(format!("bad node name: {e}")))?;
    let now = Utc::now();
    let cards: Vec<NodeCard> = node_cards(&state, &now)?
        .into_iter()
        .filter(|c| c.node == name.as_str())
        .collect();
    if cards.is_empty() {
        return Err(AppError::NotFound(format!(
            "no node {name}: it is not in the inventory and never reported"
        )));
    }
    let (frame, set_csrf) = frame(&state, &headers, "node", format!("/nodes/{name}"))?;
    let world = world(&state)?;
    let inventory = crate::inventory(&state);
    let names: Vec<Name> = std::iter::once(name.clone())
        .chain(inventory.aliases_of(&name))
        .collect();
    let last_known = match world.nodes.iter().find(|n| names.contains(&n.node)) {
        Some(n) => last_known(Some(n), &now),
        None => None,
    };
    let stats: Vec<homelab_core::agentstatus::ContainerStats> = {
        let agents = state.agents.lock().expect("agents lock");
        names
            .iter()
            .filter_map(|n| agents.get(n))
            .filter_map(|a| a.vitals.as_ref())
            .flat_map(|v| v.containers.iter().cloned())
            .collect()
    };
    let mut containers = Vec::new();
    for s in world.services.iter().filter(|s| names.contains(&s.node)) {
        for c in &s.containers {
            let word = json_word(&c.service_status());
            let (cpu, memory) = container_figures(
                stats
                    .iter()
                    .find(|f| f.name == c.name)
                    .filter(|_| c.state == "running"),
            );
            containers.push(ContainerView {
                name: c.name.clone(),
                service: c.service.to_string(),
                image: c.image.clone(),
                state: c.state.clone(),
                icon: present::icon(&word),
                health: c.health.clone().unwrap_or_else(|| "–".into()),
                restarts: c
                    .restart_count
                    .map_or_else(|| "–".into(), |n| n.to_string()),
                status: c.status.clone(),
                cpu,
                memory,
            });
        }
    }
    let history = state
        .vitals
        .lock()
        .expect("vitals lock")
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let range = match query.range.as_deref() {
        None => crate::history::Range::Day,
        Some(raw) => crate::history::Range::parse(raw).ok_or_else(|| {
            AppError::BadRequest(format!("bad range {raw:?}: one of 1h, 24h, 7d"))
        })?,
    };
    let thresholds = inventory
        .disk
        .get(&name)
        .copied()
        .unwrap_or(crate::DISK_DEFAULTS);
    let charts = charts(&history, range, now, thresholds);
    let ranges = crate::history::Range::ALL
        .into_iter()
        .map(|r| RangeLink {
            value: r.as_str(),
            words: r.words(),
            current: r == range,
        })
        .collect();
    let mut services: Vec<Name> = Vec::new();
    for s in world.services.iter().filter(|s| names.contains(&s.node)) {
        if !services.contains(&s.service) {
            services.push(s.service.clone());
        }
    }
    if let Some(wanted) = inventory.services.get(&name) {
        for s in wanted {
            if !services.contains(s) {
                services.push(s.clone());
            }
        }
    }
    services.sort();
    let tracks = crate::status_history(&state)?;
    let tracks: Vec<&homelab_core::uptime::Track> =
        tracks.iter().filter(|t| names.contains(&t.node)).collect();
    let status = crate::status::rows(&crate::status::Inputs {
        names: &names,
        first_seen: world
            .nodes
            .iter()
            .filter(|n| names.contains(&n.node))
            .map(|n| n.first_seen)
            .min(),
        services: &services,
        tracks: &tracks,
        open: &world.incidents,
        now,
    });
    let mut incidents: Vec<IncidentView> = world
        .incidents
        .iter()
        .filter(|i| names.contains(&i.node))
        .map(|i| IncidentView::new(i, None, &now))
        .collect();
    let resolved = crate::incident_history(&state)?;
    incidents.extend(
        resolved
            .iter()
            .rev()
            .filter(|r| names.contains(&r.incident.node))
            .take(10)
            .map(|r| IncidentView::new(&r.incident, Some(r.resolved_at), &now)),
    );
    let mut node_actions: Vec<Action> = actions(&state, &ActionState::OPEN)?
        .into_iter()
        .filter(|a| a.node == name)
        .collect();
    let mut finished: Vec<Action> = actions(&state, &finished_states())?
        .into_iter()
        .filter(|a| a.node == name)
        .collect();
    finished.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
    finished.truncate(10);
    node_actions.extend(finished);
    let mut events = Vec::new();
    for n in &names {
        events.extend(recent_events(&state, n, 30)?);
    }
    search::newest_first(&mut events);
    events.truncate(30);
    let page = NodePage {
        frame,
        node: name.to_string(),
        cards,
        containers,
        last_known,
        charts,
        ranges,
        range_words: range.words(),
        status,
        incidents,
        actions: node_actions
            .iter()
            .map(|a| ActionView::new(a, &now))
            .collect(),
        events: events.iter().map(|e| EventView::new(e, &now)).collect(),
    };
    Ok(respond(render(page)?, set_csrf))
}

/// A container's CPU and memory as the containers table shows them.
pub fn container_figures(
    stats: Option<&homelab_core::agentstatus::ContainerStats>,
) -> (String, String) {
    let Some(s) = stats else {
        return ("–".into(), "–".into());
    };
    let cpu = s
        .cpu_pct
        .map_or_else(|| "–".into(), |c| format!("{c:.1} %"));
    let memory = match s.memory_limit_bytes {
        Some(limit) => format!(
            "{} of {}",
            present::bytes(s.memory_bytes),
            present::bytes(limit)
        ),
        None => present::bytes(s.memory_bytes),
    };
    (cpu, memory)
}

/// Width and height of a vitals chart (SVG user units).
const CHART_W: f64 = 240.0;
const CHART_H: f64 = 40.0;
/// Strips of a chart that a hover or a tap reads.
const CHART_ZONES: usize = 48;

/// A line across a chart at a threshold.
pub struct Mark {
    pub y: String,
    pub label: String,
    /// The figure alone, under the chart.
    pub short: String,
}

/// A strip of a chart and what its last sample said.
pub struct Zone {
    pub x: String,
    pub width: String,
    pub text: String,
}

/// The charts of one range; `thresholds` the node's disk (high, low).
pub fn charts(
    history: &crate::history::History,
    range: crate::history::Range,
    now: Timestamp,
    thresholds: (f64, f64),
) -> Vec<Chart> {
    use crate::history::{lines, load_scale, percent_scale, zones, Sample, Scale};
    let samples = history.samples(range);
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let hour_format = match range {
        crate::history::Range::Week => "%a %H:%M",
        _ => "%H:%M",
    };
    let zone_list = zones(samples, range, now, CHART_ZONES, CHART_W);
    let chart = |label: &str,
                 shown: String,
                 value: fn(&Sample) -> f64,
                 text: fn(f64) -> String,
                 scale: Scale,
                 marks: &[(f64, &str)]| Chart {
        label: label.into(),
        now: shown,
        scale: format!("{}–{}", text(scale.low), text(scale.high)),
        lines: lines(samples, range, now, value, scale, CHART_W, CHART_H),
        marks: marks
            .iter()
            .map(|(v, what)| Mark {
                y: format!("{:.1}", CHART_H - scale.fraction(*v) * CHART_H),
                label: format!("{what} {}", text(*v)),
                short: text(*v),
            })
            .collect(),
        zones: zone_list
            .iter()
            .map(|(x, w, s)| Zone {
                x: format!("{x:.1}"),
                width: format!("{w:.1}"),
                text: format!("{} UTC: {}", s.ts.format(hour_format), text(value(s))),
            })
            .collect(),
        since: range.words().into(),
    };
    let percent = |v: f64| format!("{v:.0} %");
    let (high, low) = thresholds;
    vec![
        chart(
            "load (1 min)",
            format!("{:.2}", last.load),
            |s| s.load,
            |v| format!("{v:.2}"),
            load_scale(samples),
            &[],
        ),
        chart(
            "memory used",
            percent(last.memory_pct),
            |s| s.memory_pct,
            |v| format!("{v:.0} %"),
            percent_scale(samples.iter().map(|s| s.memory_pct), &[]),
            &[],
        ),
        chart(
            "disk used (fullest)",
            percent(last.disk_pct),
            |s| s.disk_pct,
            |v| format!("{v:.0} %"),
            percent_scale(samples.iter().map(|s| s.disk_pct), &[low, high]),
            &[(high, "cleanup at"), (low, "clear at")],
        ),
    ]
}

// ---------------------------------------------------------------- actions

#[derive(Template)]
#[template(path = "actions.html")]
struct ActionsPage {
    frame: Frame,
    pending: Vec<ActionView>,
    running: Vec<ActionView>,
    finished: Vec<ActionView>,
}

pub async fn actions_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let (frame, set_csrf) = frame(&state, &headers, "actions", "/actions".into())?;
    let view = |list: Vec<Action>| -> Vec<ActionView> {
        list.iter().map(|a| ActionView::new(a, &now)).collect()
    };
    let pending = view(actions(&state, &[ActionState::Pending])?);
    let running = view(actions(
        &state,
        &[ActionState::Approved, ActionState::Running],
    )?);
    let mut finished = actions(&state, &finished_states())?;
    finished.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
    finished.truncate(50);
    let page = ActionsPage {
        frame,
        pending,
        running,
        finished: view(finished),
    };
    Ok(respond(render(page)?, set_csrf))
}

pub struct Step {
    pub state: String,
    pub icon: &'static str,
    pub at: When,
    pub by: String,
    pub why: String,
}

#[derive(Template)]
#[template(path = "action.html")]
struct ActionPage {
    frame: Frame,
    a: ActionView,
    pending: bool,
    steps: Vec<Step>,
    result_data: String,
    command: String,
}

pub async fn action_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, AppError> {
    let id = crate::parse_id(&raw)?;
    let action = state
        .store
        .find(&id)?
        .ok_or_else(|| AppError::NotFound(format!("no action {id}")))?;
    let now = Utc::now();
    let (frame, set_csrf) = frame(&state, &headers, "actions", format!("/actions/{id}"))?;
    let steps = action
        .history
        .iter()
        .map(|t| Step {
            state: t.state.dir().into(),
            icon: present::action_icon(t.state.dir()),
            at: When::new(&t.at, &now),
            by: t.by.clone(),
            why: t.why.clone(),
        })
        .collect();
    let result_data = action
        .result
        .as_ref()
        .filter(|r| !r.data.is_null() && r.data != serde_json::json!({}))
        .map(|r| serde_json::to_string_pretty(&r.data).unwrap_or_default())
        .unwrap_or_default();
    let command = action
        .command
        .as_ref()
        .map(|c| {
            format!(
                "command {} sent {}, deadline {}",
                c.id,
                homelab_core::time::format(&c.sent_at),
                homelab_core::time::format(&c.deadline)
            )
        })
        .unwrap_or_default();
    let page = ActionPage {
        frame,
        pending: action.state == ActionState::Pending,
        a: ActionView::new(&action, &now),
        steps,
        result_data,
        command,
    };
    Ok(respond(render(page)?, set_csrf))
}

// ---------------------------------------------------------------- incidents

#[derive(Template)]
#[template(path = "incidents.html")]
struct IncidentsPage {
    frame: Frame,
    open: Vec<IncidentView>,
    resolved: Vec<IncidentView>,
}

pub async fn incidents_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let (frame, set_csrf) = frame(&state, &headers, "incidents", "/incidents".into())?;
    let world = world(&state)?;
    let history = crate::incident_history(&state)?;
    let page = IncidentsPage {
        frame,
        open: world
            .incidents
            .iter()
            .map(|i| IncidentView::new(i, None, &now))
            .collect(),
        resolved: history
            .iter()
            .rev()
            .take(100)
            .map(|r| IncidentView::new(&r.incident, Some(r.resolved_at), &now))
            .collect(),
    };
    Ok(respond(render(page)?, set_csrf))
}

/// One of the recent commits on the repo page.
pub struct CommitRow {
    pub sha: String,
    pub short: String,
    pub subject: String,
    pub author: String,
    pub when: When,
    /// What it changed: nodes, services, the inventory.
    pub changed: String,
    pub live: bool,
    pub head: bool,
}

#[derive(Template)]
#[template(path = "repo.html")]
struct RepoPage {
    frame: Frame,
    source: String,
    branch: String,
    pinned: bool,
    commits: Vec<CommitRow>,
}

/// What a commit changed, in words.
pub fn changed_words(change: &homelab_core::repo::CommitChange) -> String {
    let mut parts = Vec::new();
    if change.inventory {
        parts.push("inventory".to_string());
    }
    if !change.nodes.is_empty() {
        parts.push(format!("nodes {}", change.nodes.join(", ")));
    }
    if !change.services.is_empty() {
        parts.push(format!("services {}", change.services.join(", ")));
    }
    if parts.is_empty() {
        format!("{} other files", change.files)
    } else {
        parts.join("; ")
    }
}

/// `GET /repo`: the desired state's recent history, a pin button beside
/// each commit.
pub async fn repo_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let Some(status) = homelab_core::repo::RepoStatus::read(&state.layout) else {
        return Err(AppError::NotFound(
            "the desired state is a folder, not a git repo (--repo)".into(),
        ));
    };
    let (frame, set_csrf) = frame(&state, &headers, "repo", "/repo".into())?;
    let live = status.live.as_ref().map(|c| c.sha.clone());
    let head = status.head.as_ref().map(|c| c.sha.clone());
    let commits = crate::repo::recent(&state)
        .iter()
        .map(|c| CommitRow {
            sha: c.commit.sha.clone(),
            short: c.commit.short().to_string(),
            subject: c.commit.subject.clone(),
            author: c.commit.author.clone(),
            when: When::new(&c.commit.time, &now),
            changed: changed_words(c),
            live: live.as_deref() == Some(c.commit.sha.as_str()),
            head: head.as_deref() == Some(c.commit.sha.as_str()),
        })
        .collect();
    let page = RepoPage {
        frame,
        source: status.source.clone(),
        branch: status.branch.clone(),
        pinned: status.pinned.is_some(),
        commits,
    };
    Ok(respond(render(page)?, set_csrf))
}

pub struct Occurrence {
    pub incident: IncidentView,
    pub events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "incident.html")]
struct IncidentPage {
    frame: Frame,
    title: String,
    id: String,
    occurrences: Vec<Occurrence>,
}

/// The events around one occurrence of an incident: its node's (and
/// service's, if it has one) from a minute before it opened to a minute
/// after it closed, oldest first.
pub fn timeline_filter(
    i: &homelab_core::world::Incident,
    resolved: Option<Timestamp>,
    now: Timestamp,
) -> Filter {
    Filter {
        node: Some(i.node.clone()),
        service: i.service.clone(),
        since: Some(i.opened_at - Duration::minutes(1)),
        before: Some(resolved.unwrap_or(now) + Duration::minutes(1)),
        ..Default::default()
    }
}

pub async fn incident_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    if id.len() > 300 || id.chars().any(char::is_control) {
        return Err(AppError::BadRequest("bad incident id".into()));
    }
    let now = Utc::now();
    let world = world(&state)?;
    let history = crate::incident_history(&state)?;
    let mut found: Vec<(homelab_core::world::Incident, Option<Timestamp>)> = world
        .incidents
        .iter()
        .filter(|i| i.id == id)
        .map(|i| (i.clone(), None))
        .collect();
    found.extend(
        history
            .iter()
            .rev()
            .filter(|r: &&ResolvedIncident| r.incident.id == id)
            .take(5)
            .map(|r| (r.incident.clone(), Some(r.resolved_at))),
    );
    if found.is_empty() {
        return Err(AppError::NotFound(format!(
            "no incident {id}: neither open nor among the last resolved"
        )));
    }
    let (frame, set_csrf) = frame(
        &state,
        &headers,
        "incidents",
        format!("/incidents/{}", present::path_segment(&id)),
    )?;
    let mut occurrences = Vec::new();
    for (incident, resolved) in found {
        let filter = timeline_filter(&incident, resolved, now);
        let mut events = search::search(&state.layout, &filter, 100)?.events;
        events.reverse();
        occurrences.push(Occurrence {
            incident: IncidentView::new(&incident, resolved, &now),
            events: events.iter().map(|e| EventView::new(e, &now)).collect(),
        });
    }
    let page = IncidentPage {
        frame,
        title: present::incident_title_of_id(&id),
        id,
        occurrences,
    };
    Ok(respond(render(page)?, set_csrf))
}

// ---------------------------------------------------------------- search

/// One thing a search found: what it is, in words, and its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub title: String,
    pub link: String,
    pub detail: String,
}

/// What a search shows: nodes, services, incidents and actions whose
/// name, id or title holds every word of `q` (case aside), at most `limit`
/// of each, in the order given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hits {
    pub nodes: Vec<Hit>,
    pub services: Vec<Hit>,
    pub incidents: Vec<Hit>,
    pub actions: Vec<Hit>,
}

/// Keeps the candidates (text searched, hit) that match every word of `q`.
pub fn matching(q: &str, candidates: Vec<(String, Hit)>, limit: usize) -> Vec<Hit> {
    let words: Vec<String> = q.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return Vec::new();
    }
    candidates
        .into_iter()
        .filter(|(text, _)| {
            let text = text.to_lowercase();
            words.iter().all(|w| text.contains(w.as_str()))
        })
        .map(|(_, hit)| hit)
        .take(limit)
        .collect()
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    frame: Frame,
    q: String,
    /// (heading, its hits), those with hits.
    groups: Vec<(&'static str, Vec<Hit>)>,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: String,
}

pub async fn search_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    if query.q.chars().count() > 100 {
        return Err(AppError::BadRequest("q: at most 100 characters".into()));
    }
    let now = Utc::now();
    let back = format!("/search?q={}", present::path_segment(&query.q));
    let (frame, set_csrf) = frame(&state, &headers, "search", back)?;
    let q = query.q.trim();
    const LIMIT: usize = 20;
    let nodes = node_cards(&state, &now)?
        .into_iter()
        .map(|c| {
            let text = format!("{} {} {}", c.node, c.role, c.description);
            let detail = format!("{} {}", c.status.replace('_', " "), c.role);
            let hit = Hit {
                link: format!("/nodes/{}", c.node),
                title: c.node,
                detail: detail.trim().to_string(),
            };
            (text, hit)
        })
        .collect();
    let world = world(&state)?;
    let services = world
        .services
        .iter()
        .map(|s| {
            let status = json_word(&s.status);
            (
                format!("{} {} {status}", s.service, s.node),
                Hit {
                    title: format!("{} on {}", s.service, s.node),
                    link: format!("/nodes/{}", s.node),
                    detail: status,
                },
            )
        })
        .collect();
    let resolved = crate::incident_history(&state)?;
    let incidents = world
        .incidents
        .iter()
        .map(|i| (i, "open"))
        .chain(resolved.iter().rev().map(|r| (&r.incident, "resolved")))
        .map(|(i, state)| {
            let view = IncidentView::new(i, None, &now);
            (
                format!("{} {} {}", view.title, i.id, i.message),
                Hit {
                    title: view.title,
                    link: view.link,
                    detail: format!("{state} · {}", i.id),
                },
            )
        })
        .collect();
    let mut all = actions(
        &state,
        &[
            ActionState::Pending,
            ActionState::Approved,
            ActionState::Running,
        ],
    )?;
    let mut finished = actions(&state, &finished_states())?;
    finished.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
    all.extend(finished);
    let actions_found = all
        .iter()
        .map(|a| {
            let view = ActionView::new(a, &now);
            (
                format!("{} {} {}", view.title, view.id, view.state),
                Hit {
                    title: view.title,
                    link: format!("/actions/{}", view.id),
                    detail: format!("{} · {}", view.state, view.id),
                },
            )
        })
        .collect();
    let hits = Hits {
        nodes: matching(q, nodes, LIMIT),
        services: matching(q, services, LIMIT),
        incidents: matching(q, incidents, LIMIT),
        actions: matching(q, actions_found, LIMIT),
    };
    let groups = [
        ("Nodes", hits.nodes),
        ("Services", hits.services),
        ("Incidents", hits.incidents),
        ("Actions", hits.actions),
    ]
    .into_iter()
    .filter(|(_, list)| !list.is_empty())
    .collect();
    let page = SearchPage {
        frame,
        q: query.q.clone(),
        groups,
    };
    Ok(respond(render(page)?, set_csrf))
}

// ---------------------------------------------------------------- events

/// The events page's and `/api/events`' query.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub before_id: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Types to leave out, comma-separated.
    #[serde(default)]
    pub exclude: Option<String>,
    /// The events page: `on` shows the routine snapshots it hides.
    #[serde(default)]
    pub snapshots: Option<String>,
}

/// Event types the events page hides unless asked (`snapshots=on`) or
/// searched for by type: a node's periodic full state, about half of the
/// log, is rarely what an operator looks for.
pub const ROUTINE: [&str; 1] = [homelab_core::event::kinds::NODE_SNAPSHOT];

/// A time of the query: RFC 3339, or what a browser's `datetime-local`
/// field sends (`2026-11-24T10:00`, taken as UTC).
fn parse_time(what: &str, raw: &str) -> Result<Timestamp, AppError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(raw, format) {
            return Ok(t.and_utc());
        }
        if let Ok(d) = chrono::NaiveDate::parse_from_str(raw, format) {
            return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
        }
    }
    Err(AppError::BadRequest(format!(
        "bad {what} {raw:?}: RFC 3339 (2026-11-24T10:00:00Z) or 2026-11-24T10:00 (UTC) expected"
    )))
}

impl EventsQuery {
    /// The filter, every part checked; empty fields (a form's) are absent.
    pub fn filter(&self) -> Result<Filter, AppError> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let name = |what: &str, v: &Option<String>| {
            given(v)
                .map(Name::parse)
                .transpose()
                .map_err(|e| AppError::BadRequest(format!("bad {what}: {e}")))
        };
        let kind = given(&self.kind).map(str::to_string);
        if kind.as_ref().is_some_and(|k| {
            k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }) {
            return Err(AppError::BadRequest(
                "bad type: letters, digits and _ only, at most 64".into(),
            ));
        }
        let severity = given(&self.severity)
            .map(|s| {
                serde_json::from_value::<Severity>(serde_json::Value::String(s.into())).map_err(
                    |_| {
                        AppError::BadRequest(format!(
                            "bad severity {s:?}: info, warning, error or critical"
                        ))
                    },
                )
            })
            .transpose()?;
        let exclude: Vec<String> = given(&self.exclude)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if exclude.len() > 32
            || exclude
                .iter()
                .any(|k| k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(AppError::BadRequest(
                "bad exclude: at most 32 types of letters, digits and _".into(),
            ));
        }
        let before_id = given(&self.before_id).map(str::to_string);
        if before_id
            .as_ref()
            .is_some_and(|id| id.len() > 128 || id.chars().any(char::is_control))
        {
            return Err(AppError::BadRequest("bad before_id".into()));
        }
        Ok(Filter {
            node: name("node", &self.node)?,
            service: name("service", &self.service)?,
            kind,
            severity,
            since: given(&self.since)
                .map(|s| parse_time("since", s))
                .transpose()?,
            before: given(&self.before)
                .map(|s| parse_time("before", s))
                .transpose()?,
            before_id,
            exclude,
        })
    }

    /// The events page's filter: [`EventsQuery::filter`], leaving out the
    /// routine types unless they are asked for.
    pub fn page_filter(&self) -> Result<Filter, AppError> {
        let mut filter = self.filter()?;
        let shown = self.snapshots.as_deref() == Some("on") || filter.kind.is_some();
        if !shown {
            filter.exclude.extend(ROUTINE.iter().map(|k| k.to_string()));
        }
        Ok(filter)
    }
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    frame: Frame,
    q: EventsForm,
    events: Vec<EventView>,
    older: String,
    /// The newest page: the live tail adds to it.
    live: bool,
    bad_lines: usize,
}

/// The filter form's values as given, to show them back.
#[derive(Default)]
pub struct EventsForm {
    pub node: String,
    pub service: String,
    pub kind: String,
    pub severity: String,
    pub since: String,
    pub before: String,
    pub nodes: Vec<String>,
    pub exclude: String,
    /// Routine snapshots shown.
    pub snapshots: bool,
}

/// `k=v&…` of the given parts, percent-encoded.
fn query_string(parts: &[(&str, &str)]) -> String {
    parts
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", present::path_segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn events_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let filter = query.page_filter()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let now = Utc::now();
    let layout = state.layout.clone();
    let search_filter = filter.clone();
    let page = tokio::task::spawn_blocking(move || search::search(&layout, &search_filter, limit))
        .await
        .context("event search task")??;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let form = EventsForm {
        node: text(&query.node),
        service: text(&query.service),
        kind: text(&query.kind),
        severity: text(&query.severity),
        since: text(&query.since),
        exclude: text(&query.exclude),
        snapshots: query.snapshots.as_deref() == Some("on"),
        // A cursor (with before_id) is the paging's, not the operator's.
        before: if query.before_id.is_some() {
            String::new()
        } else {
            text(&query.before)
        },
        nodes: world(&state)?
            .nodes
            .iter()
            .map(|n| n.node.to_string())
            .collect(),
    };
    let older = match (page.more, page.events.last()) {
        (true, Some(last)) => format!(
            "/events?{}",
            query_string(&[
                ("node", &form.node),
                ("service", &form.service),
                ("type", &form.kind),
                ("severity", &form.severity),
                ("since", &form.since),
                ("exclude", &form.exclude),
                ("snapshots", if form.snapshots { "on" } else { "" }),
                ("before", &homelab_core::time::format(&last.ts)),
                ("before_id", &last.id),
            ])
        ),
        _ => String::new(),
    };
    let back = format!(
        "/events?{}",
        query_string(&[("node", &form.node), ("type", &form.kind)])
    );
    let (frame, set_csrf) = frame(&state, &headers, "events", back)?;
    let page = EventsPage {
        frame,
        live: filter.before.is_none(),
        events: page
            .events
            .iter()
            .map(|e| EventView::new(e, &now))
            .collect(),
        older,
        bad_lines: page.bad_lines,
        q: form,
    };
    Ok(respond(render(page)?, set_csrf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_that_arrived_late_says_so() {
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let opened = t("2026-12-07T10:00:00Z");
        // (noticed, shown)
        let cases = [
            (None, None),
            (Some("2026-12-07T10:00:02Z"), None),
            (Some("2026-12-07T10:00:59Z"), None),
            (
                Some("2026-12-07T10:01:00Z"),
                Some("reported 1 min after it began: it came in a backlog"),
            ),
            (
                Some("2026-12-07T12:05:00Z"),
                Some("reported 2 h 5 min after it began: it came in a backlog"),
            ),
            // A clock behind: never negative.
            (Some("2026-12-07T09:00:00Z"), None),
        ];
        for (noticed, shown) in cases {
            assert_eq!(
                arrival_delay(opened, noticed.map(t)).as_deref(),
                shown,
                "{noticed:?}"
            );
        }
    }

    #[test]
    fn a_search_matches_every_word() {
        let hit = |t: &str| Hit {
            title: t.into(),
            link: String::new(),
            detail: String::new(),
        };
        let candidates = || {
            vec![
                ("zigbee2mqtt piha running".to_string(), hit("z on piha")),
                ("zigbee vps exited".to_string(), hit("z on vps")),
                ("Mosquitto piha".to_string(), hit("m")),
            ]
        };
        let titles = |q: &str, limit| -> Vec<String> {
            matching(q, candidates(), limit)
                .into_iter()
                .map(|h| h.title)
                .collect()
        };
        assert_eq!(titles("zig", 10), ["z on piha", "z on vps"]);
        assert_eq!(titles("ZIG  piha", 10), ["z on piha"]);
        assert_eq!(titles("mosquitto", 10), ["m"]);
        assert_eq!(titles("zig", 1), ["z on piha"]);
        assert!(titles("   ", 10).is_empty());
        assert!(titles("nothing", 10).is_empty());
    }

    #[test]
    fn an_offline_nodes_services_are_last_known() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let node = |status: NodeStatus| homelab_core::world::NodeState {
            node: Name::parse("piha").unwrap(),
            status,
            since: now,
            first_seen: now,
            last_seen: now - Duration::hours(3),
            last_seq: 1,
            docker: homelab_core::world::DockerStatus::Unknown,
            containers: 1,
            uplink: Default::default(),
        };
        assert_eq!(last_known(Some(&node(NodeStatus::Online)), &now), None);
        assert_eq!(
            last_known(Some(&node(NodeStatus::Offline)), &now).as_deref(),
            Some("3 h ago")
        );
        assert_eq!(last_known(None, &now).as_deref(), Some("never"));
    }

    fn card(status: &str, healthy: usize, unhealthy: usize, missing: usize) -> NodeCard {
        let now = Utc::now();
        NodeCard {
            node: "n".into(),
            status: status.into(),
            icon: "",
            since: When::new(&now, &now),
            last_seen: When::new(&now, &now),
            stale: false,
            seen: true,
            role: String::new(),
            description: String::new(),
            docker: "ok".into(),
            healthy,
            unhealthy,
            stopped: 0,
            missing,
            vitals: None,
            edge: false,
            backlog: None,
            oldest_unacked: None,
            link: None,
            tailscale: None,
            uplink_problems: Vec::new(),
            unknown: false,
            tone: "ok",
            day: None,
        }
    }

    #[test]
    fn the_desired_state_line() {
        use homelab_core::repo::{Commit, Failing, Invalid, Pin, RepoStatus, Rewrite};
        let at = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let commit = |c: char, subject: &str, secs: i64| Commit {
            sha: c.to_string().repeat(40),
            subject: subject.into(),
            author: "Ann".into(),
            time: at(secs),
        };
        let mut status = RepoStatus {
            source: "https://git.example.net/lab.git".into(),
            branch: "main".into(),
            live: None,
            head: None,
            pinned: None,
            invalid: None,
            rewritten: None,
            failing: None,
            fetched_at: Some(at(7180)),
            updated: at(7180),
        };
        assert_eq!(
            DesiredLine::of(&status, &at(7200)),
            None,
            "nothing live yet"
        );
        status.live = Some(commit('3', "zigbee2mqtt: pin 1.40", 0));
        status.head = status.live.clone();
        let line = DesiredLine::of(&status, &at(7200)).unwrap();
        assert_eq!(
            (
                line.short.as_str(),
                line.subject.as_str(),
                line.when.ago.as_str()
            ),
            ("3333333", "zigbee2mqtt: pin 1.40", "2 h ago")
        );
        assert_eq!(line.fetched.unwrap().ago, "20 s ago");
        assert_eq!(
            (
                line.head,
                line.pinned,
                line.invalid,
                line.rewritten,
                line.failing
            ),
            (None, None, None, None, None)
        );
        // Pinned, a newer head that does not validate, a force-push, and a
        // remote that fails.
        status.pinned = Some(Pin {
            commit: commit('3', "zigbee2mqtt: pin 1.40", 0),
            by: "ann".into(),
            at: at(7000),
        });
        status.head = Some(commit('5', "typo", 7100));
        status.invalid = Some(Invalid {
            commit: commit('5', "typo", 7100),
            problems: vec!["hosts/n1/services.yaml:2: unknown field `monitr`".into()],
        });
        status.rewritten = Some(Rewrite {
            at: at(7150),
            from: "4".repeat(40),
            to: "5".repeat(40),
            dropped: vec![commit('4', "dropped one", 6000)],
        });
        status.failing = Some(Failing {
            since: at(7190),
            failures: 1,
            message: "Could not resolve host".into(),
        });
        let line = DesiredLine::of(&status, &at(7200)).unwrap();
        assert_eq!(
            line.pinned
                .as_ref()
                .map(|(by, w)| (by.as_str(), w.ago.as_str())),
            Some(("ann", "3 min ago"))
        );
        assert_eq!(line.head.as_deref(), Some("5555555 (typo)"));
        assert_eq!(line.invalid.unwrap().3.len(), 1);
        assert_eq!(line.rewritten.unwrap().1, vec!["4444444 dropped one"]);
        assert_eq!(
            line.failing.as_deref(),
            Some("fetching failed 1 times in a row: Could not resolve host")
        );
    }

    #[test]
    fn what_a_commit_changed_in_words() {
        use homelab_core::repo::{Commit, CommitChange};
        let change = |nodes: &[&str], services: &[&str], inventory| CommitChange {
            commit: Commit {
                sha: "a".repeat(40),
                subject: String::new(),
                author: String::new(),
                time: Utc::now(),
            },
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            services: services.iter().map(|s| s.to_string()).collect(),
            inventory,
            files: 2,
        };
        assert_eq!(
            changed_words(&change(&["piha"], &["app", "db"], true)),
            "inventory; nodes piha; services app, db"
        );
        assert_eq!(changed_words(&change(&[], &[], false)), "2 other files");
    }

    #[test]
    fn the_verdict_says_what_needs_the_operator() {
        let cases: Vec<(Vec<NodeCard>, usize, usize, &str, &str)> = vec![
            (
                vec![card("online", 3, 0, 0), card("online", 2, 0, 0)],
                0,
                0,
                "All is well: 2 nodes online, 5 services healthy.",
                "ok",
            ),
            (
                vec![card("online", 3, 1, 0)],
                1,
                1,
                "1 action waits for you, 1 service is not healthy, 1 incident is open.",
                "warning",
            ),
            (
                vec![card("offline", 3, 0, 0), card("never_reported", 0, 0, 2)],
                2,
                0,
                "2 nodes are not online, 2 services are not healthy, 2 incidents are open.",
                "bad",
            ),
        ];
        for (cards, incidents, pending, text, tone) in cases {
            assert_eq!(
                verdict(&cards, incidents, pending),
                (text.to_string(), tone)
            );
        }
    }

    #[test]
    fn every_kind_of_action_says_what_it_will_do() {
        let n = |s: &str| Name::parse(s).unwrap();
        let now = Utc::now();
        let mut restart = Action::new(
            ActionKind::ContainerRestart,
            n("piha"),
            Some(n("mosquitto")),
            Risk::Low,
            "containers_not_running",
            "exited (137)",
            now,
        );
        assert_eq!(
            what_happens(&restart),
            "piha's agent restarts the containers of mosquitto (docker restart); nothing else changes"
        );
        restart.kind = ActionKind::Redeploy;
        restart.params = Some(homelab_core::action::ActionParams {
            compose: Some(homelab_core::command::ComposeBundle {
                project: n("mosquitto"),
                compose_version: None,
                files: vec![homelab_core::command::ComposeFile::new(
                    "services/mosquitto/compose.yaml",
                    "services: {}\n".into(),
                )],
            }),
            ..Default::default()
        });
        assert_eq!(
            what_happens(&restart),
            "piha's agent runs compose up -d for project mosquitto with services/mosquitto/compose.yaml from the repo, replacing its containers"
        );
        restart.params = Some(homelab_core::action::ActionParams {
            compose_missing: Some("no compose file in the repo".into()),
            ..Default::default()
        });
        assert!(what_happens(&restart).ends_with("but it will fail: no compose file in the repo"));
        restart.kind = ActionKind::DiskCleanup;
        restart.params = Some(homelab_core::action::ActionParams {
            keep_services: Some(vec![n("db")]),
            older_than_secs: Some(86_400),
            ..Default::default()
        });
        assert_eq!(
            what_happens(&restart),
            "piha's agent removes stopped containers older than 1 d, unused images and build cache (docker prune); the containers of db stay"
        );
        restart.kind = ActionKind::AlertOnly;
        assert!(what_happens(&restart).starts_with("nothing runs"));
    }

    #[test]
    fn event_queries_are_checked_at_the_edge() {
        let q = |f: fn(&mut EventsQuery)| {
            let mut query = EventsQuery::default();
            f(&mut query);
            query.filter()
        };
        assert!(q(|_| {}).unwrap() == Filter::default());
        assert!(
            q(|q| q.node = Some(String::new())).unwrap().node.is_none(),
            "an empty field is absent"
        );
        assert!(q(|q| q.node = Some("../etc".into())).is_err());
        assert!(q(|q| q.service = Some("a/b".into())).is_err());
        assert!(q(|q| q.kind = Some("a b".into())).is_err());
        assert!(q(|q| q.severity = Some("loud".into())).is_err());
        assert_eq!(
            q(|q| q.severity = Some("error".into())).unwrap().severity,
            Some(Severity::Error)
        );
        assert!(q(|q| q.since = Some("yesterday".into())).is_err());
        let t = q(|q| q.since = Some("2026-11-24T10:00".into()))
            .unwrap()
            .since
            .unwrap();
        assert_eq!(homelab_core::time::format(&t), "2026-11-24T10:00:00.000Z");
        let t = q(|q| q.before = Some("2026-11-24".into()))
            .unwrap()
            .before
            .unwrap();
        assert_eq!(homelab_core::time::format(&t), "2026-11-24T00:00:00.000Z");
        assert!(q(|q| q.before_id = Some("x\ny".into())).is_err());
    }

    #[test]
    fn the_matrix_filter() {
        let s = |node: &str, service: &str, status: ServiceStatus| ServiceState {
            node: Name::parse(node).unwrap(),
            service: Name::parse(service).unwrap(),
            status,
            since: Utc::now(),
            message: String::new(),
            containers: vec![],
        };
        let cases = [
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "",
                false,
                true,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "MOSQ",
                false,
                true,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "pih",
                false,
                true,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "db",
                false,
                false,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "",
                true,
                false,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Missing),
                "",
                true,
                true,
            ),
        ];
        for (service, q, problems, expected) in cases {
            assert_eq!(shown(&service, q, problems), expected, "{q} {problems}");
        }
    }
}

pub struct AuditRow {
    pub at: When,
    pub operator: String,
    pub what: &'static str,
    pub target: String,
    /// The action's page, for a decision.
    pub link: Option<String>,
    pub via: String,
    pub client: String,
    pub ok: bool,
    pub detail: String,
}

impl AuditRow {
    pub fn of(entry: &homelab_core::audit::Entry, now: &chrono::DateTime<Utc>) -> AuditRow {
        use homelab_core::audit::What;
        let target = entry.target.clone().unwrap_or_default();
        let link = match entry.what {
            What::Approve | What::Reject => {
                Name::parse(&target).ok().map(|id| format!("/actions/{id}"))
            }
            What::Logs => target.split_once('/').and_then(|(node, container)| {
                Some(format!(
                    "/nodes/{}/logs/{container}",
                    Name::parse(node).ok()?
                ))
                .filter(|_| homelab_core::logs::container_name_ok(container))
            }),
            _ => None,
        };
        AuditRow {
            at: When::new(&entry.ts, now),
            operator: entry.operator.clone(),
            what: entry.what.as_str(),
            target,
            link,
            via: entry.via.clone(),
            client: entry.client.clone().unwrap_or_default(),
            ok: entry.ok,
            detail: entry.detail.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    operator: Option<String>,
    rows: Vec<AuditRow>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    pub operator: Option<String>,
    pub since: Option<String>,
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// The filter asked for, checked.
    pub fn filter(&self) -> Result<homelab_core::audit::Filter, AppError> {
        let operator = match self.operator.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(o) if o.chars().count() <= 64 && !o.chars().any(char::is_control) => {
                Some(o.to_string())
            }
            Some(_) => {
                return Err(AppError::BadRequest(
                    "operator: at most 64 characters, no control characters".into(),
                ))
            }
        };
        let since = match self.since.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        AppError::BadRequest(format!("since {s:?}: {e} (RFC 3339 expected)"))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        Ok(homelab_core::audit::Filter {
            operator,
            since,
            what: None,
        })
    }
}

/// `GET /audit`: the trail, for a logged-in operator.
pub async fn audit_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let filter = query.filter()?;
    let (frame, set_csrf) = frame(&state, &headers, "audit", "/audit".into())?;
    let authed = frame.authed;
    let rows = if authed {
        let now = Utc::now();
        homelab_core::audit::read(
            &state.layout,
            &filter,
            query.limit.unwrap_or(500).clamp(1, 5000),
        )?
        .iter()
        .map(|e| AuditRow::of(e, &now))
        .collect()
    } else {
        Vec::new()
    };
    let page = AuditPage {
        frame,
        operator: filter.operator,
        rows,
    };
    let mut response = respond(render(page)?, set_csrf);
    if !authed {
        *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    }
    Ok(response)
}
