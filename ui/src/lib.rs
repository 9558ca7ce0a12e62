//! `homelab ui`: the operator's web pages and JSON API over the runtime
//! root, plus approve/reject over MQTT (`<prefix>/actions/<id>/approve`,
//! `…/reject`, for Home Assistant and scripts).
//!
//! Reads `world/*.json`, `actions/` and the event log; writes only action
//! transitions (pending → approved | rejected), each an atomic rename.
//! Every request that changes something needs the operator token
//! ([`auth`]). Errors tell the client what it can act on and nothing of the
//! server's insides.

pub mod auth;
pub mod history;
pub mod logs;
pub mod pages;
pub mod present;
pub mod repo;
pub mod search;
pub mod status;
pub mod tail;
pub mod websec;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures::Stream;
use homelab_core::store::{Move, TransitionError};
use homelab_core::world::{Incident, NodeState, ServiceState, Summary};
use homelab_core::{Action, ActionState, ActionStore, Event, Layout, Name, Topics};
use homelab_mqtt::{Incoming, Mqtt};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub broker: homelab_mqtt::Endpoint,
    pub layout: Layout,
    pub topics: Topics,
    /// `HOMELAB_UI_TOKEN`, if set.
    pub token: Option<String>,
    pub metrics: Option<PrometheusHandle>,
    /// Whether decisions over MQTT (`actions/<id>/approve|reject`) are
    /// taken. Only in open mode: the bus cannot tell who published, so in
    /// fleet mode any node's login could approve; there they are refused
    /// (counted, logged) and operators decide over HTTP with their token.
    pub mqtt_approvals: bool,
    /// The desired-state repo, if known: the inventory's nodes (also those
    /// that never reported), their roles, and the services they should run.
    pub repo: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("broker", &self.broker)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub layout: Layout,
    pub store: ActionStore,
    pub topics: Topics,
    pub token: Arc<String>,
    pub mqtt: Option<Mqtt>,
    pub metrics: Option<PrometheusHandle>,
    pub stream: broadcast::Sender<String>,
    /// See [`Config::mqtt_approvals`].
    pub mqtt_approvals: bool,
    /// Failed logins by client address ([`websec::Limiter`]).
    pub limiter: Arc<std::sync::Mutex<websec::Limiter>>,
    /// The world files as last parsed.
    pub world: Arc<std::sync::Mutex<WorldCache>>,
    /// Each agent's last state (`nodes/<node>/agent`): its outbox backlog
    /// and the node's vitals.
    pub agents: Arc<std::sync::Mutex<std::collections::BTreeMap<Name, AgentReport>>>,
    /// Each node's vitals over the last day ([`history`]).
    pub vitals: Arc<std::sync::Mutex<std::collections::BTreeMap<Name, history::History>>>,
    /// Parsed action files, parsed again only when they change.
    pub actions: Arc<std::sync::Mutex<homelab_core::store::ListCache>>,
    /// The event log as followed ([`tail`]).
    pub tail: Arc<std::sync::Mutex<tail::Tail>>,
    /// See [`Config::repo`].
    pub repo: Option<std::path::PathBuf>,
    /// Set while the UI has lost the broker: what the banner says.
    pub broker_down: Arc<std::sync::Mutex<Option<String>>>,
    inventory: Arc<std::sync::Mutex<InventoryCache>>,
    /// Container logs requests waiting for their agents' replies.
    pub logs: logs::Waiting,
    /// Fleet mode: the control plane's keys and the enrolled nodes, to
    /// sign and seal logs requests and open their replies.
    pub fleet: Option<homelab_core::fleet::Fleet>,
}

/// What an agent last said of itself (read leniently: an older agent may
/// send less).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AgentReport {
    #[serde(default)]
    pub outbox_events: u64,
    #[serde(default, with = "homelab_core::time::option")]
    pub oldest_unacked: Option<homelab_core::time::Timestamp>,
    #[serde(default, with = "homelab_core::time::option")]
    pub updated: Option<homelab_core::time::Timestamp>,
    #[serde(default)]
    pub vitals: Option<homelab_core::agentstatus::Vitals>,
    #[serde(default)]
    pub uplink: Option<homelab_core::agentstatus::Uplink>,
}

impl AgentReport {
    /// What the pages show of it, as they show it (rounded as printed,
    /// times left out): two reports that show the same make no update of
    /// an open page. An agent reports every few seconds; most reports
    /// change nothing a reader can see.
    pub fn shown(&self) -> String {
        format!("{:?} {}", self.shown_vitals(), self.shown_rest())
    }

    /// The vitals as the node card prints them: load, memory, disk, and
    /// the disk's class (`warning` at 90 % or more).
    pub fn shown_vitals(&self) -> Option<[String; 4]> {
        self.vitals.as_ref().map(|v| {
            let at = self.updated.unwrap_or_default();
            let view = pages::VitalsView::new(v, &at, &at);
            let class = if view.disk_pct >= 90.0 { "warning" } else { "" };
            [view.load, view.memory, view.disk, class.to_string()]
        })
    }

    /// All the pages show of it but the vitals: a change here has them
    /// fetched again.
    fn shown_rest(&self) -> String {
        let uplink = self.uplink.as_ref().map(|u| {
            format!(
                "{:?} {:?} {:?} {:?}",
                u.rtt_ms.map(|r| r.round()),
                u.late_pct.map(|l| l.round()),
                u.last_outage_ended,
                u.tailscale.as_ref().map(|t| t.summary())
            )
        });
        format!(
            "{} {:?} {uplink:?}",
            self.outbox_events, self.oldest_unacked
        )
    }

    /// What an open page is told of this report after `before`: nothing
    /// when it shows the same, the new figures alone when only the vitals
    /// changed and the page had some (it writes them into the card in
    /// place, no fetch), else that it should fetch again.
    pub fn update_after(&self, before: Option<&AgentReport>) -> Update {
        let Some(before) = before else {
            return Update::Fetch;
        };
        match (
            before.shown_rest() == self.shown_rest(),
            before.shown_vitals(),
            self.shown_vitals(),
        ) {
            (true, a, b) if a == b => Update::Nothing,
            (true, Some(_), Some(figures)) => Update::Vitals(figures),
            _ => Update::Fetch,
        }
    }
}

/// See [`AgentReport::update_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Nothing,
    /// Load, memory, disk and the disk's class.
    Vitals([String; 4]),
    Fetch,
}

/// The inventory as the pages need it.
#[derive(Debug, Default)]
pub struct Inventory {
    pub nodes: std::collections::BTreeMap<Name, homelab_core::desired::NodeSpec>,
    /// Monitored services per node.
    pub services: std::collections::BTreeMap<Name, std::collections::BTreeSet<Name>>,
    /// Each node's disk thresholds (`capabilities.yaml`'s `disk`), as
    /// (high, low) percentages; absent: the defaults.
    pub disk: std::collections::BTreeMap<Name, (f64, f64)>,
}

/// The disk thresholds the agent uses when `capabilities.yaml` sets none.
pub const DISK_DEFAULTS: (f64, f64) = (90.0, 80.0);

impl Inventory {
    /// Whether `node` is another name of an inventory node.
    pub fn is_alias(&self, node: &Name) -> bool {
        !self.nodes.contains_key(node) && self.nodes.values().any(|s| s.aliases.contains(node))
    }

    pub fn aliases_of(&self, node: &Name) -> Vec<Name> {
        self.nodes
            .get(node)
            .map(|s| s.aliases.clone())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct InventoryCache {
    loaded: Option<std::time::Instant>,
    value: Arc<Inventory>,
}

/// How long a read of the repo's inventory is used before it is read again.
const INVENTORY_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// The repo's inventory, read again every few seconds; empty without a
/// repo, and the last good one while the repo does not load.
pub(crate) fn inventory(state: &AppState) -> Arc<Inventory> {
    let Some(repo) = &state.repo else {
        return Arc::default();
    };
    let mut cache = state.inventory.lock().expect("inventory lock");
    if cache.loaded.is_none_or(|at| at.elapsed() > INVENTORY_FRESH) {
        cache.loaded = Some(std::time::Instant::now());
        let loaded = homelab_core::desired::load_partial(repo);
        if !loaded.inventory_bad {
            cache.value = Arc::new(Inventory {
                nodes: loaded.desired.topology.nodes.clone(),
                services: loaded
                    .desired
                    .hosts
                    .iter()
                    .map(|(node, services)| {
                        (
                            node.clone(),
                            services
                                .iter()
                                .filter(|(_, spec)| spec.monitor)
                                .map(|(name, _)| name.clone())
                                .collect(),
                        )
                    })
                    .collect(),
                disk: loaded
                    .desired
                    .capabilities
                    .iter()
                    .filter_map(|(node, c)| {
                        let disk = c.disk.as_ref()?;
                        Some((
                            node.clone(),
                            (
                                disk.high.unwrap_or(DISK_DEFAULTS.0),
                                disk.low.unwrap_or(DISK_DEFAULTS.1),
                            ),
                        ))
                    })
                    .collect(),
            });
        }
    }
    cache.value.clone()
}

impl AppState {
    pub fn new(layout: Layout, token: String) -> AppState {
        AppState {
            store: ActionStore::new(layout.clone()),
            layout,
            topics: Topics::default(),
            token: Arc::new(token),
            mqtt: None,
            metrics: None,
            stream: broadcast::channel(256).0,
            mqtt_approvals: true,
            limiter: Default::default(),
            agents: Default::default(),
            world: Default::default(),
            vitals: Default::default(),
            actions: Default::default(),
            tail: Default::default(),
            repo: None,
            broker_down: Default::default(),
            inventory: Default::default(),
            logs: Default::default(),
            fleet: None,
        }
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let token = auth::load_token(&config.layout, config.token.clone())?;
    let mut mqtt_config = homelab_mqtt::Config::new(&config.broker, "homelab-ui");
    mqtt_config.subscriptions = vec![
        config.topics.state_all(),
        config.topics.actions_all(),
        config.topics.node_agent_all(),
        config.topics.logs_reply_all(),
    ];
    mqtt_config
        .subscriptions
        .extend(config.topics.decisions_all());
    let (mqtt, mut incoming) = homelab_mqtt::connect(mqtt_config)?;
    let mut state = AppState::new(config.layout.clone(), token);
    state.topics = config.topics.clone();
    state.mqtt = Some(mqtt.clone());
    state.metrics = config.metrics.clone();
    state.mqtt_approvals = config.mqtt_approvals;
    state.repo = config.repo.clone();
    state.fleet = homelab_core::fleet::Fleet::load(&config.layout)?;
    *state.vitals.lock().expect("vitals lock") = load_vitals(&config.layout);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("http listen address {} is not free", config.listen))?;
    info!(listen = %config.listen, "ui listening");
    let server_shutdown = shutdown.clone();
    let server = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { server_shutdown.cancelled().await });
    let server = tokio::spawn(async move { server.await });
    let follower = tokio::spawn(follow_log(state.clone(), shutdown.clone()));

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            message = incoming.recv() => match message {
                None => break,
                Some(Incoming::Message(message)) => on_message(&state, &message).await,
                Some(Incoming::Connected { .. }) => {
                    *state.broker_down.lock().expect("broker lock") = None;
                }
                Some(Incoming::Disconnected) => {
                    *state.broker_down.lock().expect("broker lock") = Some(format!(
                        "the UI lost the broker at {}: pages show the files as last written; live updates and MQTT approvals wait for it",
                        config.broker
                    ));
                }
            },
        }
    }
    // Open SSE streams end when the senders are gone.
    let _ = follower.await;
    drop(state);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), server).await;
    mqtt.close().await;
    Ok(())
}

/// Approve/reject requests over MQTT, and live updates for the stream.
async fn on_message(state: &AppState, message: &homelab_mqtt::Message) {
    if let Some(node) = state.topics.parse_logs_reply(&message.topic) {
        if let Ok(node) = node {
            logs::on_reply(state, &node, &message.payload);
        }
        return;
    }
    if let Some(node) = state.topics.parse_node_agent(&message.topic) {
        let Ok(node) = node else { return };
        match serde_json::from_slice::<AgentReport>(&message.payload) {
            Ok(report) => {
                if let Some(vitals) = &report.vitals {
                    let at = report.updated.unwrap_or_else(Utc::now);
                    record_vitals(state, &node, history::Sample::of(vitals, at));
                }
                let update = {
                    let agents = state.agents.lock().expect("agents lock");
                    report.update_after(agents.get(&node))
                };
                // The card that shows it: the inventory's name for an alias.
                let inventory = inventory(state);
                let card = inventory
                    .nodes
                    .iter()
                    .find(|(_, spec)| spec.aliases.contains(&node))
                    .map_or_else(|| node.clone(), |(name, _)| name.clone());
                state
                    .agents
                    .lock()
                    .expect("agents lock")
                    .insert(node, report);
                // Open pages update only when what they show changed.
                match update {
                    Update::Nothing => {}
                    Update::Vitals([load, memory, disk, disk_class]) => {
                        let _ = state.stream.send(
                            json!({"vitals": {"node": card, "load": load, "memory": memory, "disk": disk, "disk_class": disk_class}})
                                .to_string(),
                        );
                    }
                    Update::Fetch => {
                        let _ = state
                            .stream
                            .send(json!({"topic": message.topic}).to_string());
                    }
                }
            }
            Err(_) if message.payload.is_empty() => {
                state.agents.lock().expect("agents lock").remove(&node);
            }
            Err(error) => debug!(%node, %error, "agent state unreadable"),
        }
        return;
    }
    if let Some(parsed) = state.topics.parse_decision(&message.topic) {
        if !state.mqtt_approvals {
            warn!(topic = %message.topic, "decision over mqtt refused: in fleet mode decisions are taken over HTTP with the operator token only");
            metrics::counter!("homelab_decisions_rejected_total", "reason" => "mqtt_approvals_off")
                .increment(1);
            return;
        }
        let request = match parsed.map_err(|e| e.to_string()).and_then(|(id, verdict)| {
            parse_decision(&message.payload).map(|d| (id, verdict_state(verdict), d))
        }) {
            Ok(request) => request,
            Err(error) => {
                warn!(topic = %message.topic, %error, "decision over mqtt rejected");
                metrics::counter!("homelab_decisions_rejected_total", "reason" => "malformed")
                    .increment(1);
                return;
            }
        };
        let (id, to, decision) = request;
        // Open mode: the bus cannot say who published, so the name is the
        // one sent, marked as such.
        let by = format!("mqtt:{}", decision.by.as_deref().unwrap_or("mqtt"));
        let note = decision.note.as_deref().unwrap_or("");
        let decided = decide(state, &id, to, &by, note).await;
        audit_decision(state, &by, "mqtt", &None, &id, to, note, &decided);
        if let Err(error) = decided {
            warn!(%id, error = %error.message(), "decision over mqtt not applied");
        }
        return;
    }
    // Retained state and actions: tell the browsers something changed.
    let _ = state
        .stream
        .send(json!({"topic": message.topic}).to_string());
}

/// Where a node's vitals of the last day are kept.
fn vitals_file(layout: &Layout, node: &Name) -> std::path::PathBuf {
    layout
        .state_dir("ui")
        .join("vitals")
        .join(format!("{node}.json"))
}

/// The vitals history of every node, as the last run left it.
fn load_vitals(layout: &Layout) -> std::collections::BTreeMap<Name, history::History> {
    let dir = layout.state_dir("ui").join("vitals");
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some(node) = file.strip_suffix(".json").and_then(|n| Name::parse(n).ok()) else {
            continue;
        };
        match std::fs::read(entry.path())
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(history::History::from_json(&b)?))
        {
            Ok(samples) => {
                out.insert(node, samples);
            }
            Err(error) => {
                warn!(file = %entry.path().display(), %error, "vitals history unreadable; starting it afresh")
            }
        }
    }
    out
}

/// Adds a sample to a node's history; when a new five-minute bucket began,
/// the history is written down (off the async workers).
fn record_vitals(state: &AppState, node: &Name, sample: history::Sample) {
    let mut all = state.vitals.lock().expect("vitals lock");
    let samples = all.entry(node.clone()).or_default();
    if history::record(samples, sample) {
        let path = vitals_file(&state.layout, node);
        let samples = samples.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = homelab_core::fsutil::write_json_atomic(&path, &samples) {
                warn!(error = format!("{error:#}"), "vitals history not written");
            }
        });
    }
}

/// Follows the event log once a second: new events tell the browsers
/// (the events page's live tail) and update the last event of each
/// service.
async fn follow_log(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (layout, tail) = (state.layout.clone(), state.tail.clone());
        let read =
            tokio::task::spawn_blocking(move || tail.lock().expect("tail lock").poll(&layout))
                .await;
        match read {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                let _ = state.stream.send(json!({"events": n}).to_string());
            }
            Ok(Err(error)) => debug!(error = format!("{error:#}"), "event log not followed"),
            Err(error) => warn!(%error, "event log follower failed"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

fn parse_decision(payload: &[u8]) -> Result<Decision, String> {
    if payload.len() > 4096 {
        return Err("payload larger than 4096 bytes".into());
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Decision::default());
    }
    let decision: Decision = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    for text in [&decision.by, &decision.note].into_iter().flatten() {
        if text.chars().count() > 500 || text.chars().any(char::is_control) {
            return Err(
                "by and note must be at most 500 characters, without control characters".into(),
            );
        }
    }
    Ok(decision)
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/services", get(pages::services))
        .route("/nodes/{node}", get(pages::node))
        .route("/nodes/{node}/logs/{container}", get(logs::page))
        .route(
            "/api/nodes/{node}/containers/{container}/logs",
            get(logs::api),
        )
        .route("/actions", get(pages::actions_page))
        .route("/actions/{id}", get(pages::action_page))
        .route("/incidents", get(pages::incidents_page))
        .route("/incidents/{id}", get(pages::incident_page))
        .route("/events", get(pages::events_page))
        .route("/search", get(pages::search_page))
        .route("/repo", get(pages::repo_page))
        .route("/repo/{verb}", post(page_repo))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/audit", get(pages::audit_page))
        .route("/api/audit", get(api_audit))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/summary", get(summary))
        .route("/metrics", get(metrics_page))
        .route("/api/nodes", get(nodes))
        .route("/api/services", get(services))
        .route("/api/incidents", get(incidents))
        .route("/api/actions", get(actions))
        .route("/api/actions/{id}", get(action))
        .route("/api/actions/{id}/{verb}", post(api_decision))
        .route("/actions/{id}/{verb}", post(page_decision))
        .route("/api/events", get(events))
        .route("/api/stream", get(stream))
        .route("/api/ai-context", get(ai_context))
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
        .route("/api/openapi.json", get(openapi))
        .route("/api/repo", get(repo::get_status))
        .route("/api/repo/commits", get(repo::commits))
        .route("/api/repo/sync", post(repo::sync))
        .route("/api/repo/pin", post(repo::pin))
        .route("/api/repo/unpin", post(repo::unpin))
        .route(
            "/api/repo/webhook",
            post(repo::webhook).layer(axum::extract::DefaultBodyLimit::max(
                repo::WEBHOOK_MAX_BYTES,
            )),
        )
        .route("/api/deployments", get(deployments))
        .fallback(|| async {
            AppError::NotFound("no such page; the API is described at /api/openapi.json".into())
        })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(guard))
        .with_state(state)
}

/// Every answer carries the security headers; a POST a browser marks as
/// cross-site (or from another origin) is refused before any handler.
async fn guard(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unrouted".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let refused = (request.method() == axum::http::Method::POST)
        .then(|| websec::cross_site(request.headers()))
        .flatten();
    let mut response = match refused {
        Some(why) => {
            metrics::counter!("homelab_http_cross_site_refused_total").increment(1);
            AppError::Forbidden(format!("{why}: refused")).into_response()
        }
        None => next.run(request).await,
    };
    for (name, value) in websec::security_headers() {
        response.headers_mut().insert(name, value);
    }
    // A stream's duration is its whole life: not a latency.
    if route != "/api/stream" {
        metrics::histogram!("homelab_http_request_duration_seconds", "method" => method, "route" => route)
            .record(started.elapsed().as_secs_f64());
    }
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/app.css"),
    )
        .into_response()
}

/// The API described (OpenAPI 3.1), as the binary carries it.
pub const OPENAPI: &str = include_str!("../static/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A query, form or path the extractor could not read: a JSON 400 like
/// every other error.
pub(crate) fn rejected(what: &str, rejection: impl std::fmt::Display) -> AppError {
    AppError::BadRequest(format!("bad {what}: {rejection}"))
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}

/// The client's address, for the login limit (`None` without a socket,
/// as in tests that call the router directly).
pub(crate) type Client = Option<axum::Extension<ConnectInfo<SocketAddr>>>;

pub(crate) fn client_ip(client: &Client) -> std::net::IpAddr {
    client
        .as_ref()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip())
}

/// An error a client can act on; internals are logged, not sent.
#[derive(Debug)]
pub enum AppError {
    BadRequest(String),
    Unauthorized,
    /// A push webhook whose signature is missing or wrong (401).
    Unsigned(String),
    Forbidden(String),
    /// A GET where only POST changes something (or the other way round).
    MethodNotAllowed,
    /// Too many failed logins from this address; retry after this long.
    TooMany(std::time::Duration),
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Internal(anyhow::Error),
}

impl AppError {
    fn message(&self) -> String {
        match self {
            AppError::BadRequest(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::Unavailable(m) => m.clone(),
            AppError::Unauthorized => {
                "log in as an operator first, or send an operator's token (Authorization: Bearer …)"
                    .into()
            }
            AppError::Unsigned(m) => m.clone(),
            AppError::Forbidden(m) => m.clone(),
            AppError::MethodNotAllowed => {
                "method not allowed: reading is GET, every change is POST".into()
            }
            AppError::TooMany(wait) => format!(
                "too many failed logins from this address: try again in {} s",
                wait.as_secs().max(1)
            ),
            AppError::Internal(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized | AppError::Unsigned(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(error) => {
                warn!(error = format!("{error:#}"), "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            metrics::counter!("homelab_http_unauthorized_total").increment(1);
        }
        let mut response = (status, Json(json!({"error": self.message()}))).into_response();
        if let AppError::TooMany(wait) = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

impl From<anyhow::Error> for AppError {
    fn from(error: anyhow::Error) -> Self {
        AppError::Internal(error)
    }
}

/// The operator the request is from (its bearer token or the session
/// cookie the login set), if any ([`auth::who`]).
pub(crate) fn operator(state: &AppState, headers: &HeaderMap) -> Option<String> {
    auth::who(&state.layout, &state.token, headers)
}

/// [`operator`], under the login limit: a wrong token or cookie counts as a
/// failed login of the client's address. The operator's name.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
) -> Result<String, AppError> {
    let ip = client_ip(client);
    let now = std::time::Instant::now();
    let mut limiter = state.limiter.lock().expect("limiter lock");
    if let Err(wait) = limiter.check(ip, now) {
        metrics::counter!("homelab_http_logins_limited_total").increment(1);
        return Err(AppError::TooMany(wait));
    }
    if let Some(name) = operator(state, headers) {
        return Ok(name);
    }
    let presented = auth::bearer(headers).is_some()
        || websec::cookie(headers, websec::SESSION_COOKIE).is_some();
    if presented {
        limiter.fail(ip, now);
        drop(limiter);
        metrics::counter!("homelab_http_login_failures_total").increment(1);
        warn!(client = %ip, "wrong operator token or session");
        // Who it claims to be, where it says so: a removed operator's
        // open page, or someone trying tokens.
        let claimed = auth::bearer(headers)
            .and_then(|t| homelab_core::operator::parse_token(&t).map(|(n, _)| n))
            .or_else(|| {
                websec::cookie(headers, websec::SESSION_COOKIE)
                    .and_then(homelab_core::operator::session_name)
            })
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        audit(
            state,
            homelab_core::audit::Entry::new(
                &claimed,
                homelab_core::audit::What::Login,
                "session",
                false,
                Utc::now(),
            )
            .client(ip)
            .detail("a token or session that is not (or no longer) valid"),
        );
    }
    Err(AppError::Unauthorized)
}

/// Appends to the audit trail; a trail that cannot be written is logged
/// and counted (the decision it records has happened).
pub(crate) fn audit(state: &AppState, entry: homelab_core::audit::Entry) {
    if let Err(error) = homelab_core::audit::append(&state.layout, &entry) {
        metrics::counter!("homelab_audit_write_errors_total").increment(1);
        warn!(error = format!("{error:#}"), "audit entry not written");
    }
}

/// A world file as last parsed: a request parses it again only when the
/// observer rewrote it ([`homelab_core::fsutil::Watched`]). A version that
/// does not parse leaves the last good one in use, said as a problem of
/// the system; with nothing good yet, the request fails (503).
struct Parsed<T> {
    file: homelab_core::fsutil::Watched,
    value: Arc<Vec<T>>,
    good: bool,
    problem: Option<String>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            file: Default::default(),
            value: Arc::new(Vec::new()),
            good: false,
            problem: None,
        }
    }
}

impl<T: serde::de::DeserializeOwned> Parsed<T> {
    fn get(&mut self, path: &std::path::Path) -> Result<Arc<Vec<T>>, AppError> {
        match self.file.changed::<Vec<T>>(path) {
            Ok(Some(value)) => {
                self.value = Arc::new(value);
                self.good = true;
                self.problem = None;
            }
            Ok(None) => {}
            Err(error) => {
                let error = format!("{error:#}");
                if self.problem.as_ref() != Some(&error) {
                    warn!(%error, "world state unreadable");
                }
                self.problem = Some(error);
                if !self.good {
                    return Err(AppError::Unavailable(format!(
                        "world state {} is unreadable",
                        path.display()
                    )));
                }
            }
        }
        Ok(self.value.clone())
    }
}

/// The world files, parsed once per version.
#[derive(Default)]
pub struct WorldCache {
    nodes: Parsed<NodeState>,
    services: Parsed<ServiceState>,
    incidents: Parsed<Incident>,
    history: Parsed<homelab_core::world::ResolvedIncident>,
    status: Parsed<homelab_core::uptime::Track>,
}

impl WorldCache {
    /// World files that do not parse now (the last good state is shown).
    fn problems(&self) -> Vec<String> {
        [
            &self.nodes.problem,
            &self.services.problem,
            &self.incidents.problem,
            &self.history.problem,
            &self.status.problem,
        ]
        .into_iter()
        .flatten()
        .map(|p| format!("{p} (showing its last good state)"))
        .collect()
    }
}

/// Problems of the system itself, as the UI sees them, for the banner:
/// unreadable world files, unreadable lines of the event log, no broker.
pub(crate) fn system_problems(state: &AppState) -> Vec<String> {
    let mut out = state.world.lock().expect("world cache lock").problems();
    out.extend(state.tail.lock().expect("tail lock").bad.iter().cloned());
    if let Some(broker) = state.broker_down.lock().expect("broker lock").as_ref() {
        out.push(broker.clone());
    }
    out
}

struct World {
    nodes: Arc<Vec<NodeState>>,
    services: Arc<Vec<ServiceState>>,
    incidents: Arc<Vec<Incident>>,
}

fn world(state: &AppState) -> Result<World, AppError> {
    let mut cache = state.world.lock().expect("world cache lock");
    let layout = &state.layout;
    Ok(World {
        nodes: cache.nodes.get(&layout.world_nodes())?,
        services: cache.services.get(&layout.world_services())?,
        incidents: cache.incidents.get(&layout.world_incidents())?,
    })
}

/// Incidents that closed, oldest first (`world/incident_history.json`;
/// none before the first closes).
pub(crate) fn incident_history(
    state: &AppState,
) -> Result<Arc<Vec<homelab_core::world::ResolvedIncident>>, AppError> {
    let path = state.layout.world_incident_history();
    let mut cache = state.world.lock().expect("world cache lock");
    if !path.exists() {
        return Ok(Arc::default());
    }
    cache.history.get(&path)
}

/// Time per state of each node and service (`world/status_history.json`;
/// none before the first incident closes).
pub(crate) fn status_history(
    state: &AppState,
) -> Result<Arc<Vec<homelab_core::uptime::Track>>, AppError> {
    let path = state.layout.world_status_history();
    let mut cache = state.world.lock().expect("world cache lock");
    if !path.exists() {
        return Ok(Arc::default());
    }
    cache.status.get(&path)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentQuery {
    node: Option<String>,
    service: Option<String>,
}

/// `GET /api/deployments?node=&service=`: finished redeploys, newest first.
async fn deployments(
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

/// `world/deployments.json`, oldest first (empty when there is none yet).
pub(crate) fn read_deployments(state: &AppState) -> Vec<homelab_core::world::Deployment> {
    std::fs::read(state.layout.world_deployments())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

async fn summary(State(state): State<AppState>) -> Result<Json<Summary>, AppError> {
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

/// A JSON answer from a borrowed value (the cached world is shared, not
/// copied).
fn json_of<T: serde::Serialize + ?Sized>(value: &T) -> Result<Response, AppError> {
    let body = serde_json::to_vec(value).map_err(|e| AppError::Internal(e.into()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn nodes(State(state): State<AppState>) -> Result<Response, AppError> {
    json_of(world(&state)?.nodes.as_slice())
}

async fn services(State(state): State<AppState>) -> Result<Response, AppError> {
    json_of(world(&state)?.services.as_slice())
}

async fn incidents(State(state): State<AppState>) -> Result<Response, AppError> {
    json_of(world(&state)?.incidents.as_slice())
}

#[derive(Debug, Deserialize)]
struct ActionsQuery {
    state: Option<String>,
}

/// `?state=pending` (any state; `open` for pending+approved+running, the
/// default; `all`).
async fn actions(
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

async fn action(
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

/// `approve` or `reject`, the last level of a decision's path or topic.
fn verdict_state(verdict: homelab_core::topics::Verdict) -> ActionState {
    match verdict {
        homelab_core::topics::Verdict::Approve => ActionState::Approved,
        homelab_core::topics::Verdict::Reject => ActionState::Rejected,
    }
}

fn decision_state(verb: &str) -> Option<ActionState> {
    homelab_core::topics::Verdict::parse(verb).map(verdict_state)
}

fn parse_verb(verb: &str) -> Result<ActionState, AppError> {
    decision_state(verb).ok_or_else(|| {
        AppError::NotFound(format!("no such decision {verb:?}; use approve or reject"))
    })
}

/// `POST /api/actions/<id>/approve|reject`. The body is optional JSON
/// `{"by":"…","note":"…"}`, whatever its content type says.
async fn api_decision(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Action>, AppError> {
    let by = authorize(&state, &headers, &client)?;
    let to = parse_verb(&verb)?;
    let id = parse_id(&id)?;
    // The body's `by` is not believed: who decided is who logged in.
    let decision = parse_decision(&body)
        .map_err(|e| AppError::BadRequest(format!("bad request body: {e}")))?;
    let note = decision.note.as_deref().unwrap_or("");
    let decided = decide(&state, &id, to, &by, note).await;
    audit_decision(&state, &by, "api", &client, &id, to, note, &decided);
    Ok(Json(decided?))
}

#[derive(Deserialize)]
struct NoteForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    csrf: String,
    /// `yes` when the operator ticked "I understand" (guarded actions).
    #[serde(default)]
    confirm: String,
    /// The page the form was on, to go back to.
    #[serde(default)]
    back: String,
}

/// Where a form goes back to: a path of this site, else the overview.
pub fn back_to(back: &str) -> &str {
    let local = back.starts_with('/')
        && !back.starts_with("//")
        && back.len() <= 300
        && !back.contains('\\')
        && back.bytes().all(|b| b.is_ascii_graphic());
    if local {
        back
    } else {
        "/"
    }
}

/// The page's approve/reject buttons: a form post with the login cookie,
/// answered with a redirect back to the page.
async fn page_decision(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path((id, verb)): Path<(String, String)>,
    form: Result<axum::Form<NoteForm>, FormRejection>,
) -> Result<Response, AppError> {
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    let by = authorize(&state, &headers, &client)?;
    let to = parse_verb(&verb)?;
    let id = parse_id(&id)?;
    let note = form.note.trim();
    if note.chars().count() > 500 || note.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "the note must be at most 500 characters, without control characters".into(),
        ));
    }
    // A guarded action is approved from the page only with "I understand"
    // ticked (the browser asks for it; this holds without the browser).
    if to == ActionState::Approved {
        let guarded = state
            .store
            .find(&id)?
            .is_some_and(|a| a.risk == homelab_core::Risk::Guarded);
        if guarded && form.confirm != "yes" {
            return Err(AppError::BadRequest(format!(
                "{id} is guarded: tick \"I understand\" to approve it"
            )));
        }
    }
    let decided = decide(&state, &id, to, &by, note).await;
    audit_decision(&state, &by, "page", &client, &id, to, note, &decided);
    decided?;
    Ok(Redirect::to(back_to(&form.back)).into_response())
}

#[derive(Deserialize)]
struct RepoForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    back: String,
}

/// The page's pin and unpin buttons: a form post with the login cookie.
async fn page_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(verb): Path<String>,
    form: Result<axum::Form<RepoForm>, FormRejection>,
) -> Result<Response, AppError> {
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    let by = authorize(&state, &headers, &client)?;
    match verb.as_str() {
        "pin" => {
            repo::write_pin(&state, &form.commit, &by)?;
            repo::audit_pin(&state, &by, "page", &client, Some(&form.commit));
        }
        "unpin" => {
            repo::remove_pin(&state, &by)?;
            repo::audit_pin(&state, &by, "page", &client, None);
        }
        _ => return Err(AppError::NotFound("no such page".into())),
    }
    Ok(Redirect::to(back_to(&form.back)).into_response())
}

/// The trail's line for a decision: taken, or refused with the reason.
#[allow(clippy::too_many_arguments)]
fn audit_decision(
    state: &AppState,
    by: &str,
    via: &str,
    client: &Client,
    id: &Name,
    to: ActionState,
    note: &str,
    decided: &Result<Action, AppError>,
) {
    use homelab_core::audit::{Entry, What};
    let what = if to == ActionState::Approved {
        What::Approve
    } else {
        What::Reject
    };
    let entry = Entry::new(by, what, via, decided.is_ok(), Utc::now())
        .target(id.as_str())
        .client(client_ip(client));
    let entry = match decided {
        Ok(_) => entry.detail(note),
        Err(AppError::Conflict(why) | AppError::NotFound(why)) => entry.detail(why),
        Err(_) => entry.detail("not taken"),
    };
    audit(state, entry);
}

/// Moves a pending action to approved or rejected; the loser of a race with
/// the supervisor's cancel (or another operator) gets a conflict naming the
/// state the action is in now.
async fn decide(
    state: &AppState,
    id: &Name,
    to: ActionState,
    by: &str,
    note: &str,
) -> Result<Action, AppError> {
    let why = if note.is_empty() {
        format!("{} by operator", to.dir())
    } else {
        note.to_string()
    };
    let mv = Move {
        from: ActionState::Pending,
        to,
        by,
        why: &why,
        at: Utc::now(),
        result: None,
    };
    let action = state.store.transition(id, mv).map_err(|e| match e {
        TransitionError::NotFound(id) => AppError::NotFound(format!("no action {id}")),
        TransitionError::WrongState { id, actual, .. } => {
            AppError::Conflict(format!("action {id} is {actual}, not pending"))
        }
        other => AppError::Internal(anyhow::Error::new(other)),
    })?;
    info!(id = %id, state = %to, by, "operator decision");
    metrics::counter!("homelab_actions_decided_total", "state" => to.dir()).increment(1);
    if let Some(mqtt) = &state.mqtt {
        let payload = serde_json::to_vec(&action).expect("action serializes");
        if let Err(error) = mqtt.publish(&state.topics.action(id), payload, true).await {
            warn!(%error, "action not published");
        }
    }
    Ok(action)
}

/// `GET /api/audit?operator=&since=&limit=`: the trail, newest first, for
/// an operator (it names operators and their addresses).
async fn api_audit(
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
async fn events(
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

async fn stream(
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
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>>
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

async fn metrics_page(State(state): State<AppState>) -> Response {
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
fn collect_gauges(state: &AppState) {
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
async fn ai_context(State(state): State<AppState>) -> Result<Response, AppError> {
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

fn json_word<T: serde::Serialize>(v: &T) -> String {
    homelab_core::world::json_word(v)
}

#[derive(Deserialize)]
struct LoginForm {
    /// The operator's name; `admin` (the default) with the operator token.
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    /// The form of earlier releases: the operator token alone.
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

fn csrf_refused() -> AppError {
    metrics::counter!("homelab_http_csrf_refused_total").increment(1);
    AppError::Forbidden(
        "the form's CSRF value does not match: reload the page and try again".into(),
    )
}

/// The login form: the session cookie for an operator's name and password
/// (or the operator token as `admin`); a wrong one counts against the
/// address ([`websec::Limiter`]). Each try goes to the audit trail.
async fn login(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    form: Result<axum::Form<LoginForm>, FormRejection>,
) -> Result<Response, AppError> {
    use homelab_core::audit::{Entry, What};
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    let ip = client_ip(&client);
    let now = std::time::Instant::now();
    if let Err(wait) = state.limiter.lock().expect("limiter lock").check(ip, now) {
        metrics::counter!("homelab_http_logins_limited_total").increment(1);
        return Err(AppError::TooMany(wait));
    }
    let (name, password) = if form.password.is_empty() && !form.token.is_empty() {
        (homelab_core::operator::ADMIN.to_string(), form.token)
    } else {
        let name = form.name.trim().to_ascii_lowercase();
        let name = if name.is_empty() {
            homelab_core::operator::ADMIN.into()
        } else {
            name
        };
        (name, form.password)
    };
    let password = password.trim().to_string();
    if password.is_empty() {
        return Err(AppError::BadRequest(
            "the password is empty: an operator's password, or the operator token as admin".into(),
        ));
    }
    let (layout, token, tried) = (state.layout.clone(), state.token.clone(), name.clone());
    let session =
        tokio::task::spawn_blocking(move || auth::login(&layout, &token, &tried, &password))
            .await
            .context("login task")?;
    let Some(session) = session else {
        state.limiter.lock().expect("limiter lock").fail(ip, now);
        metrics::counter!("homelab_http_login_failures_total").increment(1);
        warn!(client = %ip, operator = %homelab_core::audit::clean(&name, 64), "failed login");
        audit(
            &state,
            Entry::new(&name, What::Login, "page", false, Utc::now())
                .client(ip)
                .detail("wrong name or password"),
        );
        return Err(AppError::Unauthorized);
    };
    info!(client = %ip, operator = %name, "operator logged in");
    audit(
        &state,
        Entry::new(&name, What::Login, "page", true, Utc::now()).client(ip),
    );
    let cookie = websec::set_cookie(
        websec::SESSION_COOKIE,
        &session,
        2_592_000,
        websec::over_tls(&headers),
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Ends this browser's session (the cookie is removed).
async fn logout(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    form: Result<axum::Form<LogoutForm>, FormRejection>,
) -> Result<Response, AppError> {
    use homelab_core::audit::{Entry, What};
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    if let Some(name) = operator(&state, &headers) {
        audit(
            &state,
            Entry::new(&name, What::Logout, "page", true, Utc::now()).client(client_ip(&client)),
        );
    }
    let cookie = websec::set_cookie(websec::SESSION_COOKIE, "", 0, websec::over_tls(&headers));
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

/// The observer's incident for an inventory node that never reported.
pub(crate) const NEVER_REPORTED: &str = "node_never_reported";

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The approval decoder (MQTT `actions/<id>/approve|reject` and
        /// the HTTP body) answers any bytes, and what it accepts is short
        /// and free of control characters.
        #[test]
        fn any_decision_payload_is_answered_safely(payload in proptest::collection::vec(any::<u8>(), 0..5000)) {
            if let Ok(decision) = parse_decision(&payload) {
                for text in [&decision.by, &decision.note].into_iter().flatten() {
                    prop_assert!(text.chars().count() <= 500);
                    prop_assert!(!text.chars().any(char::is_control));
                }
            }
        }

        #[test]
        fn mutated_decisions_are_answered_safely(
            by in "\\PC{0,600}",
            note in ".{0,40}",
            cut in 0usize..200,
        ) {
            let json = serde_json::json!({"by": by, "note": note}).to_string();
            let bytes = &json.as_bytes()[..cut.min(json.len())];
            if let Ok(decision) = parse_decision(bytes) {
                prop_assert!(decision.by.is_none_or(|b| b.chars().count() <= 500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that changes only what no page shows (its time, a load
    /// below the printed precision) is not news; one that changes a
    /// figure on the page is.
    #[test]
    fn an_agent_report_is_news_when_what_is_shown_changes() {
        let report = |updated: &str, load: f64, outbox: u64| -> AgentReport {
            serde_json::from_value(serde_json::json!({
                "outbox_events": outbox,
                "updated": updated,
                "vitals": {"load": [load, 0.5, 0.4], "memory_total_bytes": 8_000_000_000u64,
                           "memory_available_bytes": 2_000_000_000u64, "uptime_secs": 5000,
                           "disks": [{"mount": "/", "used_pct": 41.0, "free_bytes": 50_000_000_000u64}]},
            }))
            .unwrap()
        };
        let base = report("2026-12-07T10:00:00Z", 0.611, 0).shown();
        assert_eq!(report("2026-12-07T10:00:05Z", 0.612, 0).shown(), base);
        assert_ne!(report("2026-12-07T10:00:05Z", 0.99, 0).shown(), base);
        assert_ne!(report("2026-12-07T10:00:05Z", 0.611, 3).shown(), base);
        assert_ne!(AgentReport::default().shown(), base);
        // What the page is told: (before, after, update).
        let first = report("2026-12-07T10:00:00Z", 0.611, 0);
        let cases = [
            (None, first.clone(), Update::Fetch),
            (
                Some(first.clone()),
                report("2026-12-07T10:00:05Z", 0.612, 0),
                Update::Nothing,
            ),
            (
                Some(first.clone()),
                report("2026-12-07T10:00:05Z", 0.99, 0),
                Update::Vitals([
                    "0.99".into(),
                    "75 % of 8.0 GB".into(),
                    "41 % (/, 50.0 GB free)".into(),
                    String::new(),
                ]),
            ),
            // The outbox on an edge card: fetched.
            (
                Some(first.clone()),
                report("2026-12-07T10:00:05Z", 0.99, 3),
                Update::Fetch,
            ),
            // The first figures: the card has no place for them yet.
            (Some(AgentReport::default()), first.clone(), Update::Fetch),
        ];
        for (before, after, update) in cases {
            assert_eq!(
                after.update_after(before.as_ref()),
                update,
                "{before:?} → {after:?}"
            );
        }
    }
}
