//! Home Assistant's own health, for the node that runs it: the agent talks
//! to Home Assistant's WebSocket API with a long-lived token and emits the
//! `ha_*` events the supervisor routes (`ha_websocket_dead` /
//! `ha_websocket_recovered`, `ha_integration_failed`,
//! `ha_entity_unavailable_long`, `ha_automation_failing`,
//! `ha_update_available`, `ha_recorder_lag`, `ha_system_health_degraded`).
//! What to say is decided by [`rules`] (pure); this module only asks.

pub mod rules;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Where Home Assistant is and how to log in.
#[derive(Clone)]
pub struct HaConfig {
    /// `http://host:8123` (or `ws://…`): the API is at `/api/websocket`.
    pub url: String,
    /// A long-lived access token.
    pub token: String,
    /// How often to look.
    pub interval: Duration,
    pub settings: rules::Settings,
}

impl std::fmt::Debug for HaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("interval", &self.interval)
            .finish()
    }
}

/// The WebSocket address of a Home Assistant URL.
pub fn websocket_url(url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("ws://") {
        rest.trim_end_matches("/api/websocket")
    } else if url.starts_with("https://") || url.starts_with("wss://") {
        bail!("{url}: the agent talks to the Home Assistant beside it over plain http://host:8123 (its local port), not TLS")
    } else {
        bail!("{url}: expected http://host:port")
    };
    anyhow::ensure!(
        !rest.is_empty() && !rest.contains(['/', '?', '#', '@']),
        "{url}: expected http://host:port"
    );
    Ok(format!("ws://{rest}/api/websocket"))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A logged-in connection.
pub struct Connection {
    socket: Socket,
    next_id: u64,
}

/// How long one request may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

impl Connection {
    /// Connects and logs in; the error says why not (refused, wrong token).
    pub async fn open(config: &HaConfig) -> Result<Connection> {
        let url = websocket_url(&config.url)?;
        let (socket, _) =
            tokio::time::timeout(ANSWER_WITHIN, tokio_tungstenite::connect_async(&url))
                .await
                .context("no answer within 10 s")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut connection = Connection { socket, next_id: 1 };
        let hello = connection.receive().await?;
        anyhow::ensure!(
            hello["type"] == "auth_required",
            "unexpected greeting {hello}"
        );
        connection
            .send(json!({"type": "auth", "access_token": config.token}))
            .await?;
        let answer = connection.receive().await?;
        match answer["type"].as_str() {
            Some("auth_ok") => Ok(connection),
            Some("auth_invalid") => bail!(
                "authentication failed: {}",
                answer["message"].as_str().unwrap_or("invalid token")
            ),
            _ => bail!("unexpected answer to auth: {answer}"),
        }
    }

    async fn send(&mut self, value: Value) -> Result<()> {
        self.socket
            .send(WsMessage::text(value.to_string()))
            .await
            .map_err(|e| anyhow::anyhow!("send: {e}"))
    }

    async fn receive(&mut self) -> Result<Value> {
        loop {
            let message = tokio::time::timeout(ANSWER_WITHIN, self.socket.next())
                .await
                .context("no answer within 10 s")?
                .context("the connection closed")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match message {
                WsMessage::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .context("an answer that is not JSON")
                }
                WsMessage::Close(frame) => bail!(
                    "closed by Home Assistant{}",
                    frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                ),
                // Pings are answered by the library; binary is not used.
                _ => continue,
            }
        }
    }

    /// One command's result.
    pub async fn call(&mut self, mut command: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        let kind = command["type"].as_str().unwrap_or("?").to_string();
        self.send(command).await?;
        loop {
            let answer = self.receive().await?;
            if answer["id"] != json!(id) {
                continue;
            }
            if answer["success"] == json!(true) {
                return Ok(answer["result"].clone());
            }
            bail!(
                "{kind}: {}",
                answer["error"]["message"].as_str().unwrap_or("failed")
            );
        }
    }

    /// Everything [`rules::Watch::look`] needs. The recorder and the
    /// automation traces are optional: asked for only when Home Assistant
    /// has them loaded (it logs every command it does not know), and an
    /// error answer is not a problem of its health.
    pub async fn look(&mut self) -> Result<rules::Look> {
        let config = self.call(json!({"type": "get_config"})).await?;
        let entries = self.call(json!({"type": "config_entries/get"})).await?;
        let states = self.call(json!({"type": "get_states"})).await?;
        let recorder = match loaded(&config, "recorder") {
            true => self.call(json!({"type": "recorder/info"})).await.ok(),
            false => None,
        };
        let traces = match loaded(&config, "trace") && loaded(&config, "automation") {
            true => self
                .call(json!({"type": "trace/list", "domain": "automation"}))
                .await
                .ok(),
            false => None,
        };
        Ok(parse_look(
            &config,
            &entries,
            &states,
            recorder.as_ref(),
            traces.as_ref(),
        ))
    }
}

/// Whether `get_config`'s answer lists `component` as loaded.
fn loaded(config: &Value, component: &str) -> bool {
    config["components"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c == component))
}

fn timestamp(value: &Value) -> Option<homelab_core::time::Timestamp> {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The answers, as a [`rules::Look`]; what is missing or malformed is left
/// out rather than guessed.
pub fn parse_look(
    config: &Value,
    entries: &Value,
    states: &Value,
    recorder: Option<&Value>,
    traces: Option<&Value>,
) -> rules::Look {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    rules::Look {
        core_state: text(&config["state"]),
        safe_mode: config["safe_mode"].as_bool().unwrap_or(false)
            || config["recovery_mode"].as_bool().unwrap_or(false),
        entries: list(entries)
            .iter()
            .map(|e| rules::Entry {
                entry_id: text(&e["entry_id"]),
                domain: text(&e["domain"]),
                title: text(&e["title"]),
                state: text(&e["state"]),
                reason: e["reason"].as_str().map(str::to_string),
            })
            .collect(),
        states: list(states)
            .iter()
            .filter_map(|s| {
                Some(rules::State {
                    entity_id: s["entity_id"].as_str()?.to_string(),
                    state: text(&s["state"]),
                    last_changed: timestamp(&s["last_changed"])?,
                    attributes: s["attributes"].clone(),
                })
            })
            .collect(),
        recorder: recorder.map(|r| rules::Recorder {
            backlog: r["backlog"].as_u64().unwrap_or(0),
            thread_running: r["thread_running"].as_bool().unwrap_or(true),
            recording: r["recording"].as_bool().unwrap_or(true),
        }),
        failed_runs: traces
            .map(list)
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                t["script_execution"] == "error" || t.get("error").is_some_and(|e| !e.is_null())
            })
            .filter_map(|t| {
                Some(rules::FailedRun {
                    automation: format!("automation.{}", t["item_id"].as_str()?),
                    run_id: t["run_id"].as_str()?.to_string(),
                    error: t["error"].as_str().unwrap_or("error").to_string(),
                    at: timestamp(&t["timestamp"]["start"])?,
                })
            })
            .collect(),
    }
}

/// Looks every `interval` and hands what to say to `emit`; a lost
/// connection is said once, and retried at the next look.
pub async fn watch(
    config: HaConfig,
    mut emit: impl FnMut(rules::Said),
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut watch = rules::Watch::default();
    let mut connection: Option<Connection> = None;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if connection.is_none() {
            match Connection::open(&config).await {
                Ok(c) => {
                    tracing::info!(url = %config.url, "home assistant watcher connected");
                    connection = Some(c);
                }
                Err(error) => {
                    tracing::debug!(error = format!("{error:#}"), "home assistant not reached");
                    for said in watch.lost(&format!("{error:#}")) {
                        emit(said);
                    }
                    continue;
                }
            }
        }
        let looked = connection.as_mut().expect("connected").look().await;
        match looked {
            Ok(look) => {
                for said in watch.look(&look, chrono::Utc::now(), &config.settings) {
                    emit(said);
                }
            }
            Err(error) => {
                connection = None;
                tracing::warn!(
                    error = format!("{error:#}"),
                    "home assistant watcher lost its connection"
                );
                for said in watch.lost(&format!("{error:#}")) {
                    emit(said);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for (url, expected) in [
            (
                "http://127.0.0.1:8123",
                Some("ws://127.0.0.1:8123/api/websocket"),
            ),
            (
                "http://ha.lan:8123/",
                Some("ws://ha.lan:8123/api/websocket"),
            ),
            (
                "ws://ha.lan:8123/api/websocket",
                Some("ws://ha.lan:8123/api/websocket"),
            ),
            ("https://ha.example", None),
            ("ftp://x", None),
            ("http://", None),
            ("http://a/b", None),
            ("http://user@host", None),
        ] {
            assert_eq!(websocket_url(url).ok().as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn answers_are_read_as_home_assistant_2024_sends_them() {
        let config = json!({"state": "RUNNING", "safe_mode": false, "version": "2024.3.3"});
        let entries = json!([
            {"entry_id": "a1", "domain": "mqtt", "title": "127.0.0.1", "source": "user", "state": "setup_retry", "reason": "Connection refused"},
            {"entry_id": "b2", "domain": "sun", "title": "Sun", "state": "loaded", "reason": null}
        ]);
        let states = json!([
            {"entity_id": "sensor.x", "state": "unavailable", "attributes": {}, "last_changed": "2026-11-24T09:00:00.123456+00:00", "last_updated": "2026-11-24T09:00:00.123456+00:00", "context": {}},
            {"entity_id": "broken", "state": "on"}
        ]);
        let recorder = json!({"backlog": 12, "max_backlog": 40000, "migration_in_progress": false, "recording": true, "thread_running": true});
        let traces = json!([
            {"item_id": "lights", "run_id": "r1", "script_execution": "error", "error": "Error rendering template", "state": "stopped", "timestamp": {"start": "2026-11-24T09:59:00+00:00", "finish": "2026-11-24T09:59:01+00:00"}},
            {"item_id": "lights", "run_id": "r0", "script_execution": "finished", "state": "stopped", "timestamp": {"start": "2026-11-24T09:58:00+00:00", "finish": "2026-11-24T09:58:01+00:00"}}
        ]);
        let look = parse_look(&config, &entries, &states, Some(&recorder), Some(&traces));
        assert_eq!(look.core_state, "RUNNING");
        assert_eq!(look.entries.len(), 2);
        assert_eq!(
            look.entries[0].reason.as_deref(),
            Some("Connection refused")
        );
        assert_eq!(
            look.states.len(),
            1,
            "an entity without last_changed is left out"
        );
        assert_eq!(look.recorder.as_ref().unwrap().backlog, 12);
        assert_eq!(look.failed_runs.len(), 1);
        assert_eq!(look.failed_runs[0].automation, "automation.lights");
        // What is asked for: only what is loaded.
        let components = json!({"components": ["mqtt", "recorder", "automation"]});
        assert!(loaded(&components, "recorder") && loaded(&components, "automation"));
        assert!(!loaded(&components, "trace"));
        assert!(!loaded(&config, "recorder"), "no components listed");
        let none = parse_look(&json!({}), &json!(null), &json!("x"), None, None);
        assert_eq!(none, rules::Look::default());
    }
}
