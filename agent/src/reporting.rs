//! The agent's own state: its status (connection, outbox, vitals) written and published when it changes, else every 30 s, and the containers' CPU and memory.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use homelab_core::fsutil;
use homelab_mqtt::Mqtt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{blocking, stats, status, vitals, Agent};

/// How often the agent looks whether its own state changed (connection,
/// outbox): a change is written and published at once.
/// What makes the status worth reporting before [`STATUS_IDLE_EVERY`]:
/// cheap to read, unlike the vitals.
/// Connected, unacknowledged, acknowledged, last seq, config commit, the
/// containers whose CPU is known (their figures first, not each change).
pub(crate) type StatusKey = (bool, u64, u64, u64, Option<String>, Vec<String>);

pub(crate) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Unchanged, it is written and published this often (the node's vitals
/// with it): an idle agent does little.
pub(crate) const STATUS_IDLE_EVERY: Duration = Duration::from_secs(30);

pub(crate) fn status_key(agent: &Agent, connected: bool) -> StatusKey {
    let outbox = &agent.outbox;
    let commit = agent.node_config.borrow().commit.clone();
    (
        connected,
        outbox.unacked(),
        outbox.acked(),
        outbox.last_seq(),
        commit,
        agent
            .container_stats
            .lock()
            .expect("stats lock")
            .iter()
            .filter(|s| s.cpu_pct.is_some())
            .map(|s| s.name.clone())
            .collect(),
    )
}

/// Reads each running container's CPU and memory every `stats_interval`
/// while Docker is connected ([`stats`]); forgets them while it is not.
pub(crate) async fn stats_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(agent.config.stats_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let figures = match agent.runtime() {
            Some(runtime) => match runtime.stats().await {
                Ok(readings) => stats::update(&mut before, readings),
                Err(error) => {
                    debug!(error = format!("{error:#}"), "container stats not read");
                    continue;
                }
            },
            None => {
                before.clear();
                Vec::new()
            }
        };
        *agent.container_stats.lock().expect("stats lock") = figures;
    }
}

pub(crate) async fn status_loop(
    agent: Arc<Agent>,
    mqtt: Mqtt,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut last: Option<(StatusKey, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let connected = connected.load(Ordering::SeqCst);
        let key = status_key(&agent, connected);
        let due = last
            .as_ref()
            .is_none_or(|(before, at)| *before != key || at.elapsed() >= STATUS_IDLE_EVERY);
        if due {
            report_status(&agent, &mqtt, connected, true).await;
            last = Some((key, tokio::time::Instant::now()));
        }
    }
}

/// Writes `status.json` and, when connected, publishes it retained.
pub(crate) async fn report_status(agent: &Agent, mqtt: &Mqtt, connected: bool, running: bool) {
    let outbox = &agent.outbox;
    let uplink = mqtt.link().map(|link| {
        let now = Utc::now();
        let ago = |d: Duration| now - chrono::TimeDelta::from_std(d).unwrap_or_default();
        homelab_core::agentstatus::Uplink {
            rtt_ms: link.rtt_ms,
            rtt_p90_ms: link.rtt_p90_ms,
            late_pct: link.late_pct,
            samples: link.samples as u64,
            last_outage_secs: link.last_outage.map(|(lasted, _)| lasted.as_secs()),
            last_outage_ended: link.last_outage.map(|(_, since)| ago(since)),
            tailscale: agent.tailscale.lock().expect("tailscale lock").clone(),
        }
    });
    let status = status::AgentStatus {
        uplink,
        config_commit: agent.node_config.borrow().commit.clone(),
        node: agent.config.node.clone(),
        connected,
        outbox_events: outbox.unacked(),
        outbox_bytes: outbox.bytes(),
        acked: outbox.acked(),
        last_seq: outbox.last_seq(),
        oldest_unacked: outbox.oldest().unwrap_or(None),
        updated: Utc::now(),
        running,
        vitals: Some(homelab_core::agentstatus::Vitals {
            containers: agent.container_stats.lock().expect("stats lock").clone(),
            ..vitals::read(
                agent
                    .disks
                    .lock()
                    .expect("disks lock")
                    .values()
                    .cloned()
                    .collect(),
            )
        }),
    };
    metrics::gauge!("homelab_agent_outbox_events").set(status.outbox_events as f64);
    let path = agent.config.layout.agent_status(&agent.config.node);
    // A progress report every 5 s: replaced, not fsynced (an SD card need
    // not be written through that often); the last one, on the way out,
    // is durable.
    let written = match running {
        true => fsutil::replace_json(&path, &status),
        false => blocking(|| fsutil::write_json_atomic(&path, &status)),
    };
    if let Err(error) = written {
        warn!(error = format!("{error:#}"), "agent status not written");
    }
    if connected {
        let topic = agent.config.topics.node_agent(&agent.config.node);
        let payload = serde_json::to_vec(&status).expect("status serializes");
        if let Err(error) = mqtt.publish(&topic, payload, true).await {
            debug!(%error, "agent status not published");
        }
    }
}
