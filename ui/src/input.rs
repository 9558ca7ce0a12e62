//! What comes in over MQTT: agents' reports and vitals, action changes, the live event feed (each event once, in log order).

use crate::decisions::audit_decision;
use crate::decisions::decide;
use crate::decisions::parse_decision;
use crate::decisions::verdict_state;
use crate::inventory;
use crate::AgentReport;
use crate::AppState;
use crate::Update;
use crate::{history, logs};

use anyhow::Result;
use chrono::Utc;
use homelab_core::{Layout, Name};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Approve/reject requests over MQTT, and live updates for the stream.
pub(crate) async fn on_message(state: &AppState, message: &homelab_mqtt::Message) {
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
pub(crate) fn vitals_file(layout: &Layout, node: &Name) -> std::path::PathBuf {
    layout
        .state_dir("ui")
        .join("vitals")
        .join(format!("{node}.json"))
}

/// The vitals history of every node, as the last run left it.
pub(crate) fn load_vitals(layout: &Layout) -> std::collections::BTreeMap<Name, history::History> {
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
pub(crate) fn record_vitals(state: &AppState, node: &Name, sample: history::Sample) {
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
pub(crate) async fn follow_log(state: AppState, shutdown: CancellationToken) {
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
