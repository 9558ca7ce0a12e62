//! The JSON API (docs/api.md, `static/openapi.json`), the event stream and the metrics.

use crate::access::authorize;
use crate::access::Client;
use crate::errors::json_of;
use crate::errors::rejected;
use crate::errors::AppError;
use crate::pages;
use crate::search;
use crate::world_files::read_deployments;
use crate::world_files::world;
use crate::AppState;

use anyhow::{Context, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures::Stream;
use homelab_core::world::Summary;
use homelab_core::{Action, ActionState, Event, Name};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::sync::broadcast;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentQuery {
    node: Option<String>,
    service: Option<String>,
}

/// `GET /api/deployments?node=&service=`: finished redeploys, newest first.
pub(crate) async fn deployments(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<DeploymentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<homelab_core::world::Deployment>>, AppError> {
    let axum::extract::Query(query) = query.map_err(|e| rejected("query", e))?;
    let name = |raw: &Option<String>, what: &str| {
        raw.as_deref()
            .map(|r| {
                Name::parse(r).map_err(|e| AppError::BadRequest(format!("bad {what} {r:?}: {e}")))
            })
            .transpose()
    };
    let (node, service) = (name(&query.node, "node")?, name(&query.service, "service")?);
    let mut all = read_deployments(&state);
    all.retain(|d| {
        node.as_ref().is_none_or(|n| &d.node == n)
            && service.as_ref().is_none_or(|s| &d.service == s)
    });
    all.reverse();
    Ok(Json(all))
}

pub(crate) async fn summary(State(state): State<AppState>) -> Result<Json<Summary>, AppError> {
    let world = world(&state)?;
    let open = state.store.open()?;
    let repo = homelab_core::repo::RepoStatus::read(&state.layout);
    Ok(Json(Summary::new(
        &world.nodes,
        &world.services,
        &world.incidents,
        &open,
        repo.as_ref(),
    )))
}

pub(crate) async fn nodes(State(state): State<AppState>) -> Result<Response, AppError> {
    json_of(world(&state)?.nodes.as_slice())
}

pub(crate) async fn services(State(state): State<AppState>) -> Result<Response, AppError> {
    json_of(world(&state)?.services.as_slice())
}

pub(crate) async fn incidents(State(state): State<AppState>) -> Result<Response, AppError> {
    json_of(world(&state)?.incidents.as_slice())
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActionsQuery {
    state: Option<String>,
}

/// `?state=pending` (any state; `open` for pending+approved+running, the
/// default; `all`).
pub(crate) async fn actions(
    State(state): State<AppState>,
    query: Result<Query<ActionsQuery>, QueryRejection>,
) -> Result<Json<Vec<Action>>, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let wanted: Vec<ActionState> = match query.state.as_deref().unwrap_or("open") {
        "open" => ActionState::OPEN.to_vec(),
        "all" => ActionState::ALL.to_vec(),
        other => match ActionState::parse(other) {
            Some(s) => vec![s],
            None => return Err(AppError::BadRequest(format!("unknown state {other:?}; use one of pending, approved, running, completed, failed, rejected, cancelled, open, all"))),
        },
    };
    let mut out = Vec::new();
    for s in wanted {
        out.extend(state.store.list(s)?);
    }
    Ok(Json(out))
}

pub(crate) fn parse_id(raw: &str) -> Result<Name, AppError> {
    Name::parse(raw).map_err(|e| AppError::BadRequest(format!("bad action id: {e}")))
}

pub(crate) async fn action(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Action>, AppError> {
    let id = parse_id(&id)?;
    state
        .store
        .find(&id)?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("no action {id}")))
}

/// `GET /api/audit?operator=&since=&limit=`: the trail, newest first, for
/// an operator (it names operators and their addresses).
pub(crate) async fn api_audit(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    query: Result<Query<pages::AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<homelab_core::audit::Entry>>, AppError> {
    authorize(&state, &headers, &client)?;
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(500).clamp(1, 5000);
    Ok(Json(homelab_core::audit::read(
        &state.layout,
        &filter,
        limit,
    )?))
}

/// Newest first, [`search`]ed a page at a time: `node`, `service`, `type`,
/// `severity` (this or worse), `since`, and the cursor `before` (with
/// `before_id`); `limit` defaults to 100, at most 1000.
pub(crate) async fn events(
    State(state): State<AppState>,
    query: Result<Query<pages::EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let layout = state.layout.clone();
    let page = tokio::task::spawn_blocking(move || search::search(&layout, &filter, limit))
        .await
        .context("event search task")??;
    Ok(Json(page.events))
}

pub(crate) async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let mut rx = state.stream.subscribe();
    let stream = async_stream(move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(data) => {
                    if tx.send(SseEvent::default().data(data)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A stream fed by a task through a small channel.
pub(crate) fn async_stream<F, Fut>(
    f: F,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

pub(crate) async fn metrics_page(State(state): State<AppState>) -> Response {
    collect_gauges(&state);
    let body = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The gauges of what is now, set at each scrape from the files and the
/// agents' last messages: node up, open incidents, open actions by state,
/// each agent's outbox backlog. (Counters are counted where things happen.)
pub(crate) fn collect_gauges(state: &AppState) {
    if let Ok(world) = world(state) {
        for node in world.nodes.iter() {
            let up = f64::from(u8::from(
                node.status == homelab_core::world::NodeStatus::Online,
            ));
            metrics::gauge!("homelab_node_up", "node" => node.node.to_string()).set(up);
        }
        metrics::gauge!("homelab_incidents_open").set(world.incidents.len() as f64);
    }
    for s in ActionState::OPEN {
        if let Ok(list) = state.store.list(s) {
            metrics::gauge!("homelab_actions", "state" => s.dir()).set(list.len() as f64);
        }
    }
    let now = Utc::now();
    for (node, backlog) in state.agents.lock().expect("agents lock").iter() {
        let node = node.to_string();
        metrics::gauge!("homelab_node_outbox_events", "node" => node.clone())
            .set(backlog.outbox_events as f64);
        let age = backlog
            .oldest_unacked
            .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
        metrics::gauge!("homelab_node_oldest_unacked_seconds", "node" => node).set(age);
    }
}

/// A plain-text digest to paste into an assistant.
pub(crate) async fn ai_context(State(state): State<AppState>) -> Result<Response, AppError> {
    let world = world(&state)?;
    let open = state.store.open()?;
    let mut text = String::from("# homelab state\n\n## Nodes\n");
    for n in world.nodes.iter() {
        text += &format!(
            "- {}: {}, docker {}, {} containers, last seen {}\n",
            n.node,
            json_word(&n.status),
            json_word(&n.docker),
            n.containers,
            homelab_core::time::format(&n.last_seen)
        );
    }
    text += "\n## Services not running or unhealthy\n";
    for s in world.services.iter().filter(|s| !s.status.is_ok()) {
        text += &format!(
            "- {}/{}: {} since {} ({})\n",
            s.node,
            s.service,
            json_word(&s.status),
            homelab_core::time::format(&s.since),
            s.message
        );
    }
    text += "\n## Open incidents\n";
    for i in world.incidents.iter() {
        text += &format!("- {} [{}]: {}\n", i.id, json_word(&i.severity), i.message);
    }
    text += "\n## Open actions\n";
    for a in &open {
        text += &format!(
            "- {} ({}): {}: {}; approving it: {}\n",
            a.id,
            a.state,
            a.reason,
            a.message,
            pages::what_happens(a)
        );
    }
    text += "\n## Recent events (warning or worse, last 24 h, newest first)\n";
    let filter = search::Filter {
        severity: Some(homelab_core::Severity::Warning),
        since: Some(Utc::now() - chrono::Duration::hours(24)),
        ..Default::default()
    };
    let layout = state.layout.clone();
    let recent = tokio::task::spawn_blocking(move || search::search(&layout, &filter, 30))
        .await
        .context("event search task")??;
    for e in &recent.events {
        text += &format!(
            "- {} {}{} {} [{}]: {}\n",
            homelab_core::time::format(&e.ts),
            e.node,
            e.service
                .as_ref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            e.kind,
            json_word(&e.severity),
            e.message
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

pub(crate) fn json_word<T: serde::Serialize>(v: &T) -> String {
    homelab_core::world::json_word(v)
}
