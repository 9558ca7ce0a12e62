//! A node's page: its state, containers, vitals charts and recent events.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{Duration, Utc};
use homelab_core::time::Timestamp;
use homelab_core::{Action, ActionState, Event, Name};
use serde::Deserialize;

use crate::pages::actions;
use crate::pages::finished_states;
use crate::pages::frame;
use crate::pages::overview::node_cards;
use crate::pages::overview::NodeCard;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::services::last_known;
use crate::pages::views::ActionView;
use crate::pages::views::EventView;
use crate::pages::views::IncidentView;
use crate::pages::Frame;
use crate::present;
use crate::search::{self, Filter};
use crate::{json_word, world, AppError, AppState};

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
pub(crate) struct NodePage {
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
pub(crate) fn recent_events(
    state: &AppState,
    node: &Name,
    limit: usize,
) -> Result<Vec<Event>, AppError> {
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
pub(crate) const CHART_W: f64 = 240.0;

pub(crate) const CHART_H: f64 = 40.0;

/// Strips of a chart that a hover or a tap reads.
pub(crate) const CHART_ZONES: usize = 48;

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
