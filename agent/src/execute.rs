//! Commands carried out: taken durably at most once, waiting for Docker within their deadline, and their outcome stored as an event ([`command`] decides).
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use homelab_core::event::kinds;
use homelab_core::{Command, Event, Operation, Severity};
use homelab_mqtt::Mqtt;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::{blocking, cleanup, command, compose, outbox, Agent};

/// A command from the bus: checked, taken by id and queued durably, then
/// acknowledged to the broker (in every case: a refused command is not
/// delivered again), then carried out once Docker is there.
pub(crate) async fn handle_command(
    agent: Arc<Agent>,
    mqtt: Mqtt,
    payload: Vec<u8>,
    ack: Option<homelab_mqtt::AckToken>,
) {
    let taken = take_command(&agent, &payload).await;
    if let Some(ack) = ack {
        if let Err(error) = mqtt.ack(ack).await {
            debug!(%error, "command puback not queued");
        }
    }
    if let Some(command) = taken {
        carry_out_queued(&agent, command).await;
    }
}

/// Checks a command and takes it: `Some` when it is to be carried out
/// (it is then in the outbox's queue).
pub(crate) async fn take_command(agent: &Agent, payload: &[u8]) -> Option<Command> {
    let payload = agent.command_from_control(payload)?;
    let command = match Command::from_payload(&payload) {
        Ok(command) => command,
        Err(error) => {
            warn!(%error, "command rejected");
            metrics::counter!("homelab_agent_commands_rejected_total", "reason" => "malformed")
                .increment(1);
            return None;
        }
    };
    let now = Utc::now();
    // Taken durably (and queued) before anything runs: at most once per
    // id, also across restarts. A failure to take it runs nothing, and
    // the broker sends it again after a reconnect.
    let first_time = command.node == agent.config.node
        && match blocking(|| agent.outbox.take_command(&command, now)) {
            Ok(first_time) => first_time,
            Err(error) => {
                warn!(id = %command.id, error = format!("{error:#}"), "command not recorded; not carried out");
                return None;
            }
        };
    let verdict = command::judge(
        &command.node,
        &agent.config.node,
        first_time,
        command.deadline,
        now,
    );
    if let Some(reason) = verdict.reason() {
        metrics::counter!("homelab_agent_commands_rejected_total", "reason" => reason).increment(1);
    }
    match verdict {
        command::Verdict::Run => Some(command),
        command::Verdict::OtherNode => {
            warn!(node = %command.node, "command for another node rejected");
            None
        }
        command::Verdict::Duplicate => {
            info!(id = %command.id, "command already handled; not carried out again");
            None
        }
        command::Verdict::Expired => {
            warn!(id = %command.id, deadline = %command.deadline, "command past its deadline refused");
            let mut data = command_data(&command);
            data["reason"] = json!("expired");
            agent.emit(
                kinds::REMEDIATION_FAILED,
                command.op.service(),
                Severity::Warning,
                "command refused: expired (past its deadline)",
                data,
            );
            None
        }
    }
}

pub(crate) fn command_data(command: &Command) -> Value {
    json!({"action_id": command.action_id, "command_id": command.id})
}

/// A command found in the queue at start.
pub(crate) async fn resume_command(agent: Arc<Agent>, queued: outbox::Queued) {
    let command = queued.command;
    match command::resume(queued.state) {
        command::Resume::Carry => {
            info!(id = %command.id, action = %command.action_id, "command taken before the restart carried on");
            carry_out_queued(&agent, command).await;
        }
        command::Resume::Interrupted => {
            warn!(id = %command.id, action = %command.action_id, "command was being carried out when the agent stopped; reported interrupted, not run again");
            let mut data = command_data(&command);
            data["reason"] = json!("interrupted");
            let outcome = agent.event(
                kinds::REMEDIATION_FAILED,
                command.op.service(),
                Severity::Error,
                "interrupted: the agent stopped while carrying this out (it may have partly run; it is not run again)",
                data,
            );
            finish(&agent, &command, outcome);
        }
    }
}

/// Stores a queued command's outcome and takes it off the queue.
pub(crate) fn finish(agent: &Agent, command: &Command, outcome: Event) {
    if let Err(error) = blocking(|| agent.outbox.finish_command(&command.id, outcome)) {
        warn!(id = %command.id, error = format!("{error:#}"), "command outcome not recorded");
    }
}

/// Waits (within the deadline) until Docker is there, then carries the
/// queued command out once and stores its outcome.
pub(crate) async fn carry_out_queued(agent: &Agent, command: Command) {
    let service = command.op.service().cloned();
    let mut docker = agent.runtime.subscribe();
    let mut said_waiting = false;
    loop {
        let up = docker.borrow_and_update().is_some();
        match command::next_step(command.deadline, Utc::now(), up) {
            command::Step::Run => break,
            command::Step::Wait(left) => {
                if !said_waiting {
                    info!(id = %command.id, action = %command.action_id, "command waits for the docker engine (until its deadline)");
                    said_waiting = true;
                }
                let _ = tokio::time::timeout(left, docker.changed()).await;
            }
            command::Step::Expired => {
                warn!(id = %command.id, "docker engine unreachable until the command's deadline; refused");
                let mut data = command_data(&command);
                data["reason"] = json!("expired");
                let outcome = agent.event(
                    kinds::REMEDIATION_FAILED,
                    service.as_ref(),
                    Severity::Warning,
                    "command refused: expired while the docker engine was unreachable",
                    data,
                );
                finish(agent, &command, outcome);
                return;
            }
        }
    }
    let now = Utc::now();
    info!(id = %command.id, action = %command.action_id, op = command.op.kind().as_str(), "carrying out command");
    let started = agent.event(
        kinds::REMEDIATION_STARTED,
        service.as_ref(),
        Severity::Info,
        command.op.kind().as_str(),
        command_data(&command),
    );
    if let Err(error) = blocking(|| agent.outbox.start_command(&command.id, started)) {
        warn!(id = %command.id, error = format!("{error:#}"), "command start not recorded; not carried out");
        return;
    }
    let outcome = carry_out(agent, &command, now).await;
    let mut data = command_data(&command);
    if let (Value::Object(data), Value::Object(extra)) = (&mut data, &outcome.data) {
        data.extend(extra.clone());
    }
    info!(id = %command.id, action = %command.action_id, ok = outcome.ok, message = %outcome.message, "command carried out");
    let (kind, severity) = outcome.kind();
    let event = agent.event(kind, service.as_ref(), severity, &outcome.message, data);
    finish(agent, &command, event);
}

/// How long a restarted service has to be running (and healthy) again.
pub(crate) const RESTART_READY_CAP: Duration = Duration::from_secs(120);

/// How long Compose may take for a redeploy (pulls included).
pub(crate) const COMPOSE_CAP: Duration = Duration::from_secs(15 * 60);

/// Carries out a command judged `Run`.
pub(crate) async fn carry_out(
    agent: &Agent,
    command: &Command,
    now: chrono::DateTime<Utc>,
) -> command::Outcome {
    let Some(runtime) = agent.runtime() else {
        return command::Outcome::failed("docker engine unreachable");
    };
    match &command.op {
        Operation::ContainerRestart { service } => {
            let names = match runtime.restart_service(service).await {
                Ok(names) => names,
                Err(error) => return command::Outcome::failed(format!("{error:#}")),
            };
            let budget = command::budget(command.deadline, now, RESTART_READY_CAP);
            let started = tokio::time::Instant::now();
            let mut last = String::new();
            while started.elapsed() < budget {
                match runtime
                    .list()
                    .await
                    .map(|cs| command::readiness(service, &cs))
                {
                    Ok(Ok(())) => {
                        return command::restart_outcome(
                            &names,
                            true,
                            started.elapsed(),
                            budget,
                            "",
                        )
                    }
                    Ok(Err(why)) => last = why,
                    Err(error) => last = format!("{error:#}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            command::restart_outcome(&names, false, started.elapsed(), budget, &last)
        }
        Operation::Redeploy { service, compose } => {
            let Some(bundle) = compose else {
                return command::Outcome::failed(format!(
                    "redeploy of {service} carries no compose files"
                ));
            };
            let dir = agent
                .config
                .layout
                .agent_deploy(&agent.config.node, &bundle.project);
            let budget = command::budget(command.deadline, now, COMPOSE_CAP);
            info!(project = %bundle.project, dir = %dir.display(), "compose up -d");
            // The bundle's Compose, else the node config's, else detected.
            let version = agent.node_config.borrow().compose;
            compose::redeploy(&dir, bundle, version, budget).await
        }
        Operation::DiskCleanup {
            keep_services,
            older_than_secs,
        } => match runtime.cleanup(keep_services, *older_than_secs).await {
            Ok(report) => cleanup::outcome(&report),
            Err(error) => command::Outcome::failed(format!("{error:#}")),
        },
    }
}
