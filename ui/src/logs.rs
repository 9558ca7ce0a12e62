//! Container logs on demand, for a logged-in operator only: the page
//! `/nodes/<node>/logs/<container>` (the last lines, then a live follow
//! from the page's script) and `GET /api/nodes/<node>/containers/<container>/logs`
//! (JSON, or a server-sent event stream with `follow=1`). Each asks the
//! node's agent over MQTT ([`homelab_core::logs`]) and waits for its
//! replies; nothing is asked of a node that is not online, and an agent
//! that does not answer within [`ANSWER_WITHIN`] is said not to.
//!
//! In fleet mode a request is signed with the control plane's key and
//! sealed for the node, and carries a key made for it alone: the replies
//! are sealed to that key and signed by the node, and opened here only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use homelab_core::logs::{self, Line, Reply, Request};
use homelab_core::sealbox::{self, BoxPublic, BoxSecret};
use homelab_core::world::NodeStatus;
use homelab_core::{identity, Name};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use crate::pages::{frame, render, respond, Frame};
use crate::{rejected, AppError, AppState};

/// How long an agent has to start answering.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Lines a page shows unless asked for more.
pub const DEFAULT_LINES: u32 = 200;
/// How long one follow request runs; the stream asks again while someone
/// is looking.
pub const FOLLOW_SECS: u32 = 120;

/// Requests waiting for their replies, by id.
#[derive(Default, Clone)]
pub struct Waiting(Arc<Mutex<HashMap<String, Pending>>>);

struct Pending {
    node: Name,
    /// Fleet mode: opens the replies.
    secret: Option<BoxSecret>,
    tx: mpsc::UnboundedSender<Reply>,
}

impl Waiting {
    fn add(&self, id: &str, pending: Pending) {
        self.0
            .lock()
            .expect("logs lock")
            .insert(id.to_string(), pending);
    }

    fn remove(&self, id: &str) {
        self.0.lock().expect("logs lock").remove(id);
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("logs lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes a reply from `node`'s reply topic to whoever waits for it; a reply
/// nobody waits for, or that does not open or check, is dropped.
pub fn on_reply(state: &AppState, node: &Name, payload: &[u8]) {
    let waiting = state.logs.0.lock().expect("logs lock");
    let opened: Option<Reply> = match (&state.fleet, waiting.len()) {
        (_, 0) => None,
        (None, _) => serde_json::from_slice(payload).ok(),
        (Some(fleet), _) => {
            // Try the keys of the requests to this node.
            let plain = waiting
                .values()
                .filter(|p| &p.node == node)
                .filter_map(|p| p.secret.as_ref())
                .find_map(|secret| sealbox::open(payload, node, secret).ok());
            let signed = plain.and_then(|plain| {
                let key = fleet.node(node)?.public_key;
                identity::open(&plain, identity::Context::Logs, &key).ok()
            });
            signed.and_then(|json| serde_json::from_slice(&json).ok())
        }
    };
    let Some(reply) = opened else {
        debug!(%node, "logs reply dropped: not one waited for, or it does not open");
        return;
    };
    match waiting.get(&reply.id) {
        Some(pending) if &pending.node == node && reply.node == *node => {
            let _ = pending.tx.send(reply);
        }
        _ => debug!(%node, "logs reply for no request of this node"),
    }
}

/// Whether `node` (or an alias it reported under) is online now; the name
/// it reported under.
fn online_as(state: &AppState, node: &Name) -> Result<Option<Name>, AppError> {
    let world = crate::world(state)?;
    let inventory = crate::inventory(state);
    let names: Vec<Name> = std::iter::once(node.clone())
        .chain(inventory.aliases_of(node))
        .collect();
    Ok(world
        .nodes
        .iter()
        .find(|n| names.contains(&n.node) && n.status == NodeStatus::Online)
        .map(|n| n.node.clone()))
}

/// Publishes a request and returns where its replies come; the request is
/// forgotten when the returned guard is dropped.
async fn ask(
    state: &AppState,
    node: &Name,
    container: &str,
    lines: u32,
    follow_secs: u32,
    since: Option<i64>,
) -> Result<(mpsc::UnboundedReceiver<Reply>, Asked), AppError> {
    let Some(mqtt) = &state.mqtt else {
        return Err(AppError::Unavailable("no broker connection".into()));
    };
    let now = Utc::now();
    let id = homelab_core::event::new_id();
    let secret = state.fleet.as_ref().map(|_| sealbox::generate());
    let request = Request {
        v: 1,
        id: id.clone(),
        node: node.clone(),
        container: container.to_string(),
        lines,
        follow_secs,
        since,
        issued_at: now,
        deadline: now + chrono::Duration::from_std(ANSWER_WITHIN).expect("a short duration"),
        reply_key: secret
            .as_ref()
            .map(|s| sealbox::encode_public(&BoxPublic::from(s))),
    };
    let mut payload = serde_json::to_vec(&request).expect("a request serializes");
    if let Some(fleet) = &state.fleet {
        let Some(enrolled) = fleet.node(node) else {
            return Err(AppError::NotFound(format!("{node} is not enrolled")));
        };
        payload = identity::seal(&payload, identity::Context::Logs, fleet.signing_key());
        payload = sealbox::seal(&payload, node, &enrolled.box_key);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    state.logs.add(
        &id,
        Pending {
            node: node.clone(),
            secret,
            tx,
        },
    );
    let asked = Asked {
        waiting: state.logs.clone(),
        id,
    };
    mqtt.publish(&state.topics.logs_request(node), payload, false)
        .await
        .map_err(|e| AppError::Unavailable(format!("logs request not sent: {e:#}")))?;
    metrics::counter!("homelab_ui_logs_requests_total").increment(1);
    Ok((rx, asked))
}

/// A request waiting for replies; dropped, it waits no more.
struct Asked {
    waiting: Waiting,
    id: String,
}

impl Drop for Asked {
    fn drop(&mut self) {
        self.waiting.remove(&self.id);
    }
}

/// What came back for a request that does not follow.
#[derive(Debug, Default, Serialize)]
pub struct Collected {
    pub lines: Vec<Line>,
    /// Why it ended early or never began, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Gathers the replies of one request in order until the last, or until
/// the agent is silent for [`ANSWER_WITHIN`].
async fn collect(mut rx: mpsc::UnboundedReceiver<Reply>, node: &Name) -> Collected {
    let mut out = Collected::default();
    let mut next_seq = 0;
    loop {
        match tokio::time::timeout(ANSWER_WITHIN, rx.recv()).await {
            Ok(Some(reply)) => {
                if reply.seq != next_seq {
                    out.error = Some(format!(
                        "reply {} came before {next_seq}: some were lost on the way",
                        reply.seq
                    ));
                }
                next_seq = reply.seq + 1;
                out.lines.extend(reply.lines);
                if reply.error.is_some() {
                    out.error = reply.error;
                }
                if reply.done {
                    return out;
                }
            }
            Ok(None) => return out,
            Err(_) => {
                out.error = Some(format!(
                    "{node}'s agent did not answer within {} s",
                    ANSWER_WITHIN.as_secs()
                ));
                return out;
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    lines: Option<u32>,
    follow: Option<String>,
}

fn checked(node: &str, container: &str, lines: Option<u32>) -> Result<(Name, u32), AppError> {
    let node =
        Name::parse(node).map_err(|e| AppError::BadRequest(format!("bad node name: {e}")))?;
    if !logs::container_name_ok(container) {
        return Err(AppError::BadRequest(format!(
            "bad container name {container:?}"
        )));
    }
    let lines = lines.unwrap_or(DEFAULT_LINES);
    if lines > logs::MAX_LINES {
        return Err(AppError::BadRequest(format!(
            "{lines} lines asked, at most {}",
            logs::MAX_LINES
        )));
    }
    Ok((node, lines))
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    frame: Frame,
    node: String,
    container: String,
    lines: u32,
    choices: &'static [u32],
    /// Why nothing could be read (logged out, offline, no answer).
    problem: Option<String>,
    shown: Vec<LineView>,
    follow: Option<String>,
}

pub struct LineView {
    pub ts: String,
    pub stderr: bool,
    pub text: String,
}

impl LineView {
    fn of(line: &Line) -> LineView {
        LineView {
            ts: line.ts.clone().unwrap_or_default(),
            stderr: line.stream == "stderr",
            text: line.text.clone(),
        }
    }
}

/// `GET /nodes/<node>/logs/<container>?lines=N`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((node, container)): Path<(String, String)>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let (name, lines) = checked(&node, &container, query.lines)?;
    let back = format!("/nodes/{name}/logs/{container}");
    let (frame, set_csrf) = frame(&state, &headers, "node", back)?;
    let mut page = LogsPage {
        node: name.to_string(),
        container: container.clone(),
        lines,
        choices: &[100, 200, 500, 1000],
        problem: None,
        shown: Vec::new(),
        follow: None,
        frame,
    };
    let status = if !page.frame.authed {
        page.problem = Some(
            "Log in to read container logs: they may hold what only an operator should see.".into(),
        );
        axum::http::StatusCode::UNAUTHORIZED
    } else {
        match online_as(&state, &name)? {
            None => {
                page.problem = Some(format!(
                    "{name} is not online: its logs can be read once its agent is back."
                ));
                axum::http::StatusCode::OK
            }
            Some(reported) => {
                audit_read(
                    &state,
                    page.frame.operator.as_deref(),
                    &reported,
                    &container,
                    "page",
                    false,
                );
                let (rx, _asked) = ask(&state, &reported, &container, lines, 0, None).await?;
                let got = collect(rx, &reported).await;
                page.shown = got.lines.iter().map(LineView::of).collect();
                page.problem = got.error;
                page.follow = Some(format!(
                    "/api/nodes/{name}/containers/{container}/logs?follow=1&lines=0"
                ));
                axum::http::StatusCode::OK
            }
        }
    };
    let mut response = respond(render(page)?, set_csrf);
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /api/nodes/<node>/containers/<container>/logs?lines=N&follow=1`.
pub async fn api(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((node, container)): Path<(String, String)>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let Some(by) = crate::operator(&state, &headers) else {
        return Err(AppError::Unauthorized);
    };
    let (name, lines) = checked(&node, &container, query.lines)?;
    let follow = match query.follow.as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "bad follow {other:?}: 1 or 0"
            )));
        }
    };
    let Some(reported) = online_as(&state, &name)? else {
        return Err(AppError::Unavailable(format!(
            "{name} is not online: its logs can be read once its agent is back"
        )));
    };
    audit_read(&state, Some(&by), &reported, &container, "api", follow);
    if !follow {
        let (rx, _asked) = ask(&state, &reported, &container, lines, 0, None).await?;
        return Ok(Json(collect(rx, &reported).await).into_response());
    }
    Ok(follow_stream(state, headers, reported, container, lines).into_response())
}

/// The trail's line for reading (or following) a container's logs.
fn audit_read(
    state: &AppState,
    by: Option<&str>,
    node: &Name,
    container: &str,
    via: &str,
    follow: bool,
) {
    use homelab_core::audit::{Entry, What};
    let entry = Entry::new(by.unwrap_or("?"), What::Logs, via, true, chrono::Utc::now())
        .target(&format!("{node}/{container}"))
        .detail(if follow { "follow" } else { "" });
    crate::audit(state, entry);
}

/// Lines as server-sent events (`data: {"lines": […]}`, and `{"error"}`
/// when a request ends early), asking again every [`FOLLOW_SECS`] from
/// the last line's second for as long as the client listens.
fn follow_stream(
    state: AppState,
    headers: HeaderMap,
    node: Name,
    container: String,
    lines: u32,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let (tx, rx) = mpsc::channel::<SseEvent>(16);
    tokio::spawn(async move {
        let mut since: Option<i64> = None;
        let mut last_seen: Option<String> = None;
        let mut first = true;
        loop {
            // A removed operator, or one with a new password, stops
            // reading at once.
            if crate::operator(&state, &headers).is_none() {
                let _ = tx.send(error_event("your login ended: log in again")).await;
                return;
            }
            let tail = if first { lines } else { 0 };
            first = false;
            let (mut replies, _asked) =
                match ask(&state, &node, &container, tail, FOLLOW_SECS, since).await {
                    Ok(asked) => asked,
                    Err(error) => {
                        let _ = tx.send(error_event(&format!("{error:?}"))).await;
                        return;
                    }
                };
            let limit = Duration::from_secs(FOLLOW_SECS as u64) + ANSWER_WITHIN;
            let ended = loop {
                let reply = tokio::select! {
                    _ = tx.closed() => return,
                    reply = tokio::time::timeout(limit, replies.recv()) => reply,
                };
                let reply = match reply {
                    Ok(Some(reply)) => reply,
                    Ok(None) | Err(_) => break Some(format!("{node}'s agent stopped answering")),
                };
                // A new request from the last second sends some lines
                // again: those up to the last one shown are skipped.
                let fresh: Vec<&Line> = reply
                    .lines
                    .iter()
                    .filter(|l| match (&l.ts, &last_seen) {
                        (Some(ts), Some(last)) => ts > last,
                        _ => true,
                    })
                    .collect();
                if let Some(ts) = fresh.iter().rev().find_map(|l| l.ts.clone()) {
                    since = chrono::DateTime::parse_from_rfc3339(&ts)
                        .ok()
                        .map(|t| t.timestamp());
                    last_seen = Some(ts);
                }
                if !fresh.is_empty() || reply.dropped > 0 {
                    let data = serde_json::json!({"lines": fresh, "dropped": reply.dropped});
                    if tx
                        .send(SseEvent::default().data(data.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if reply.done {
                    break reply.error;
                }
            };
            if let Some(error) = ended {
                let _ = tx.send(error_event(&error)).await;
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn error_event(error: &str) -> SseEvent {
    SseEvent::default().data(serde_json::json!({ "error": error }).to_string())
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("requests", &self.len())
            .finish()
    }
}
