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

mod access;
mod api;
mod decisions;
mod errors;
mod input;
mod world_files;

pub use decisions::{back_to, Decision};
pub use errors::AppError;
pub use world_files::WorldCache;

// What the pages, the logs and the repo's page share.
pub(crate) use access::{audit, authorize, client_ip, operator, Client};
pub(crate) use api::{json_word, parse_id};
pub(crate) use errors::rejected;
pub(crate) use world_files::{incident_history, status_history, system_problems, world};

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use homelab_core::{ActionStore, Layout, Name, Topics};
use homelab_mqtt::{Incoming, Mqtt};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::access::guard;
use crate::access::login;
use crate::access::logout;
use crate::api::action;
use crate::api::actions;
use crate::api::ai_context;
use crate::api::api_audit;
use crate::api::deployments;
use crate::api::events;
use crate::api::incidents;
use crate::api::metrics_page;
use crate::api::nodes;
use crate::api::services;
use crate::api::stream;
use crate::api::summary;
use crate::decisions::api_decision;
use crate::decisions::page_decision;
use crate::decisions::page_repo;
use crate::input::follow_log;
use crate::input::load_vitals;
use crate::input::on_message;

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

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}

/// The observer's incident for an inventory node that never reported.
pub(crate) const NEVER_REPORTED: &str = "node_never_reported";

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
