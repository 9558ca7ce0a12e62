//! Health checks from the node config, the brokers it names, and Tailscale's state.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use homelab_core::event::kinds;
use homelab_core::{fsutil, Severity};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{blocking, health, mqttprobe, proc, uplink, Agent};

/// How long `tailscale status --json` may take.
pub(crate) const TAILSCALE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of its output read (a large tailnet prints a few hundred kB).
pub(crate) const TAILSCALE_OUTPUT: usize = 4 << 20;

/// Reads Tailscale's status every `tailscale_interval` and reports what
/// [`uplink::Rules`] says.
pub(crate) async fn tailscale_loop(
    agent: Arc<Agent>,
    program: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let broker_host = homelab_mqtt::Endpoint::new(&agent.config.broker)
        .addr()
        .rsplit_once(':')
        .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
        .unwrap_or_default();
    let mut rules = uplink::Rules::default();
    let mut tick = tokio::time::interval(agent.config.tailscale_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(program = %program.display(), "watching tailscale");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = read_tailscale(&program).await;
        let needed = match &status {
            Ok(s) => uplink::needed(&broker_host, &agent.config.tailscale_peers, s),
            Err(_) => agent.config.tailscale_peers.clone(),
        };
        *agent.tailscale.lock().expect("tailscale lock") = Some(uplink::summary(&status, &needed));
        for said in rules.look(&status, &needed) {
            info!(kind = said.kind, message = %said.message, "uplink changed");
            agent.emit(said.kind, None, said.severity, &said.message, said.data);
        }
    }
}

pub(crate) async fn read_tailscale(program: &std::path::Path) -> Result<uplink::Status, String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(["status", "--json"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(TAILSCALE_TIMEOUT, command.output()).await {
        Err(_) => {
            return Err(format!(
                "tailscale status did not answer within {TAILSCALE_TIMEOUT:?}"
            ))
        }
        Ok(Err(error)) => return Err(format!("tailscale status: {error}")),
        Ok(Ok(out)) => out,
    };
    // A stopped Tailscale still prints its status (and exits non-zero).
    let stdout = &out.stdout[..out.stdout.len().min(TAILSCALE_OUTPUT)];
    uplink::parse(stdout).map_err(|parse_error| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => format!("tailscale status: {}", line.trim()),
            None if !out.status.success() => format!("tailscale status: {}", out.status),
            None => parse_error,
        }
    })
}

/// Runs the health checks and broker probes of the current node config,
/// starting them afresh whenever it changes.
pub(crate) async fn checks_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut changes = agent.node_config.subscribe();
    let mut previous: Option<std::sync::Arc<homelab_core::nodeconfig::NodeConfig>> = None;
    loop {
        let config = changes.borrow_and_update().clone();
        for service in previous
            .as_ref()
            .map(|old| health::removed_checks(old, &config))
            .unwrap_or_default()
        {
            agent.emit(
                kinds::HEALTHCHECK_REMOVED,
                Some(&service),
                Severity::Info,
                "health check removed from the node's config; its last verdict no longer holds",
                json!({"source": "healthcheck"}),
            );
        }
        previous = Some(config.clone());
        let mut checks = tokio::task::JoinSet::new();
        for check in &config.healthchecks {
            checks.spawn(run_healthcheck(agent.clone(), check.clone()));
        }
        for broker in &config.mqtt_brokers {
            checks.spawn(watch_broker(agent.clone(), broker.clone()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        // Dropping the set aborts its tasks (and kills running scripts).
        drop(checks);
    }
}

/// At most this much of a failing script's output goes into its event.
pub(crate) const HEALTHCHECK_OUTPUT: usize = 1024;

pub(crate) async fn run_healthcheck(
    agent: Arc<Agent>,
    spec: homelab_core::nodeconfig::HealthcheckSpec,
) {
    let dir = agent
        .config
        .layout
        .agent_dir(&agent.config.node)
        .join("healthchecks");
    let script = dir.join(format!("{}.sh", spec.service));
    if let Err(error) = blocking(|| fsutil::write_atomic(&script, spec.script.as_bytes())) {
        warn!(service = %spec.service, error = format!("{error:#}"), "health check script not written; not run");
        return;
    }
    let timeout = Duration::from_secs(spec.timeout_secs);
    let args = vec![script.display().to_string()];
    let (node, service) = (agent.config.node.to_string(), spec.service.to_string());
    let env = [
        ("HOMELAB_NODE", node.as_str()),
        ("HOMELAB_SERVICE", service.as_str()),
    ];
    let mut tracker = health::Tracker::default();
    info!(service = %spec.service, interval_s = spec.interval_secs, "health check scheduled");
    health::schedule(
        Duration::from_secs(spec.interval_secs),
        || proc::run("sh", &args, &dir, &env, timeout),
        |result| {
            let (ok, why, data) = match result {
                Ok(done) => {
                    let why = match (done.timed_out, done.code) {
                        (true, _) => {
                            format!("timed out after {} s and was killed", spec.timeout_secs)
                        }
                        (false, Some(code)) => format!("exit {code}: {}", done.last_line()),
                        (false, None) => "killed by a signal".to_string(),
                    };
                    let data = json!({
                        "exit_code": done.code,
                        "timed_out": done.timed_out,
                        "duration_ms": done.duration.as_millis() as u64,
                        "output": done.tail(HEALTHCHECK_OUTPUT),
                    });
                    (done.ok(), why, data)
                }
                Err(error) => (false, format!("cannot run: {error}"), json!({})),
            };
            for change in tracker.record(ok, spec.retries) {
                match change {
                    health::Change::Failed { failures } => {
                        let mut data = data.clone();
                        data["failures"] = json!(failures);
                        data["retries"] = json!(spec.retries);
                        agent.emit(
                            kinds::HEALTHCHECK_FAILED,
                            Some(&spec.service),
                            Severity::Warning,
                            &format!(
                                "health check failed ({failures} of {}): {why}",
                                spec.retries
                            ),
                            data,
                        );
                    }
                    health::Change::Unhealthy { failures } => agent.emit(
                        kinds::SERVICE_UNHEALTHY,
                        Some(&spec.service),
                        Severity::Error,
                        &format!("health check failed {failures} times in a row: {why}"),
                        json!({"source": "healthcheck", "failures": failures}),
                    ),
                    health::Change::Recovered => agent.emit(
                        kinds::SERVICE_RECOVERED,
                        Some(&spec.service),
                        Severity::Info,
                        "health check passes again",
                        json!({"source": "healthcheck"}),
                    ),
                }
            }
        },
    )
    .await;
}

pub(crate) async fn watch_broker(agent: Arc<Agent>, broker: homelab_core::nodeconfig::BrokerSpec) {
    let client_id = format!("homelab-probe-{}", agent.config.node);
    let mut reach = health::Reachability::default();
    health::schedule(
        agent.config.broker_interval,
        || mqttprobe::probe(&broker.address, &client_id, Duration::from_secs(10)),
        |result| {
            let change = reach.record(result.is_ok());
            match (change, result) {
                (Some(false), Err(error)) => {
                    warn!(service = %broker.service, address = %broker.address, %error, "mqtt broker unreachable");
                    agent.emit(
                        kinds::MQTT_UNREACHABLE,
                        Some(&broker.service),
                        Severity::Error,
                        &error,
                        json!({"address": broker.address, "error": error}),
                    );
                }
                (Some(true), Ok(how)) => {
                    info!(service = %broker.service, address = %broker.address, "mqtt broker answers again");
                    agent.emit(
                        kinds::SERVICE_RECOVERED,
                        Some(&broker.service),
                        Severity::Info,
                        &format!("mqtt broker at {} {how}", broker.address),
                        json!({"address": broker.address, "source": "mqtt"}),
                    );
                }
                _ => {}
            }
        },
    )
    .await;
}
