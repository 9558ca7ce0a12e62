//! The overview: a card per node of the inventory, worst first, and the verdict over all of them.

use std::collections::{BTreeSet, HashMap, HashSet};

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use homelab_core::agentstatus::Vitals;
use homelab_core::time::Timestamp;
use homelab_core::world::{NodeStatus, ServiceStatus};
use homelab_core::{ActionState, Name};

use crate::pages::actions;
use crate::pages::frame_counted;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::views::ActionView;
use crate::pages::views::IncidentView;
use crate::pages::Frame;
use crate::present::{self, When};
use crate::{json_word, world, AppError, AppState};

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
pub(crate) fn node_cards(state: &AppState, now: &Timestamp) -> Result<Vec<NodeCard>, AppError> {
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

#[derive(Template)]
#[template(path = "overview.html")]
pub(crate) struct OverviewPage {
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
