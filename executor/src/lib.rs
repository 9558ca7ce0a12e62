//! `homelab executor`: takes approved actions, sends each as a command to
//! the agent of its node, and records the outcome.
//!
//! For each file in `actions/approved/`: claim it by moving it to
//! `running/` (atomic rename), record the command (id, deadline) in the
//! file, then publish the command on `<prefix>/commands/<node>`. The agent
//! answers with `remediation_completed` or `remediation_failed` events
//! carrying `data.action_id` and `data.command_id`; the action then moves to
//! `completed/` or `failed/` with the result. A running action with no
//! outcome past its deadline (plus a margin) fails.
//!
//! Crash recovery: a running action without a recorded command gets one; a
//! running action with one waits for its outcome or deadline.
//!
//! Architecture invariant: nothing is sent for an action that is not in
//! `approved/` (or already claimed into `running/` by this executor).

use std::time::Duration;

pub mod decide;

use anyhow::Result;
use chrono::Utc;
use homelab_core::action::{ActionResult, SentCommand};
use homelab_core::store::{Move, TransitionError};
use homelab_core::{Action, ActionState, ActionStore, Command, Event, Layout, Topics};
use homelab_mqtt::{Incoming, Mqtt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: homelab_mqtt::Endpoint,
    pub layout: Layout,
    pub topics: Topics,
    /// How long an agent has to carry out a command.
    pub command_timeout: Duration,
    /// How often to look at `approved/` and `running/` without a trigger.
    pub interval: Duration,
    /// Stored events from the observer in the same process; None: outcomes
    /// come through the broker.
    pub feed: Option<homelab_feed::Feed>,
    /// Fleet mode: what is signed and checked end to end (see
    /// `homelab_core::identity`); `None` in open mode.
    pub fleet: Option<homelab_core::fleet::Fleet>,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let mut mqtt_config = homelab_mqtt::Config::new(&config.broker, "homelab-executor");
    mqtt_config.clean_session = false;
    mqtt_config.subscriptions = vec![config.topics.actions_all()];
    // Subscribed before the log is read below, so no outcome falls between.
    let mut feed = config.feed.as_ref().map(|feed| feed.subscribe());
    if feed.is_none() {
        mqtt_config.subscriptions.push(config.topics.events_all());
    }
    let (mqtt, mut incoming) = homelab_mqtt::connect(mqtt_config)?;
    let store = ActionStore::new(config.layout.clone());
    let started = Utc::now();
    let mut tick = tokio::time::interval(config.interval);
    info!("executor started");
    // Outcomes that came while no executor listened are in the event log.
    resolve_from_log(&config, &store, &mqtt).await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => pass(&config, &store, &mqtt, started).await,
            stored = homelab_feed::next(&mut feed) => match stored {
                Ok(event) if decide::is_outcome(&event.kind) => {
                    outcome(&config, &store, &mqtt, &event).await
                }
                Ok(_) => {}
                // Missed some: their outcomes are in the log.
                Err(homelab_feed::Missed) => resolve_from_log(&config, &store, &mqtt).await,
            },
            message = incoming.recv() => match message {
                None => break,
                Some(Incoming::Message(message)) => {
                    if let Some(node) = config.topics.parse_events(&message.topic) {
                        // Only outcomes matter here: the rest of the event
                        // stream is not parsed in full.
                        let outcome_kind = Event::peek_kind(&message.payload)
                            .is_some_and(|kind| decide::is_outcome(&kind));
                        if !outcome_kind {
                            continue;
                        }
                        // Fleet mode: an outcome counts only when signed by
                        // the node's key.
                        let payload = match (&config.fleet, node) {
                            (None, _) => Ok(message.payload.to_vec()),
                            (Some(fleet), Ok(node)) => fleet.open_event(&node, &message.payload),
                            (Some(_), Err(_)) => Err("bad_name"),
                        };
                        match payload.map(|p| Event::from_payload(&p)) {
                            Ok(Ok(event)) => outcome(&config, &store, &mqtt, &event).await,
                            Ok(Err(error)) => debug!(%error, "outcome event malformed"),
                            Err(reason) => warn!(topic = %message.topic, reason, "outcome event refused"),
                        }
                    } else {
                        // An action changed (approved, perhaps): look now.
                        pass(&config, &store, &mqtt, started).await;
                    }
                }
                Some(_) => {}
            },
        }
    }
    mqtt.close().await;
    Ok(())
}

/// Finishes running actions whose outcome is already in the observer's
/// event log (it came while this executor was not running).
async fn resolve_from_log(config: &Config, store: &ActionStore, mqtt: &Mqtt) {
    let running = match store.list(ActionState::Running) {
        Ok(running) => running,
        Err(error) => {
            warn!(error = format!("{error:#}"), "running actions unreadable");
            return;
        }
    };
    let today = Utc::now().date_naive();
    for action in running {
        let Some(sent) = &action.command else {
            continue;
        };
        let node = action.target.as_ref().unwrap_or(&action.node);
        let mut found = None;
        for day in decide::outcome_days(sent.sent_at, today) {
            let plain = config.layout.event_log(day, node);
            let path = if plain.exists() {
                plain
            } else {
                config.layout.event_log_compressed(day, node)
            };
            if !path.exists() {
                continue;
            }
            let mut bad = Vec::new();
            let read = homelab_core::eventlog::read_file(
                &path,
                |event| {
                    if found.is_none() {
                        found = decide::outcome(&action, &event);
                    }
                },
                &mut bad,
            );
            if let Err(error) = read {
                warn!(path = %path.display(), error = format!("{error:#}"), "event log not read for outcomes");
            }
        }
        if let Some(result) = found {
            info!(id = %action.id, command = %sent.id, "outcome found in the event log");
            finish(config, store, mqtt, &action, result).await;
        }
    }
}

async fn pass(config: &Config, store: &ActionStore, mqtt: &Mqtt, started: chrono::DateTime<Utc>) {
    let approved = match store.list(ActionState::Approved) {
        Ok(approved) => approved,
        Err(error) => {
            warn!(error = format!("{error:#}"), "approved actions unreadable");
            return;
        }
    };
    for action in approved {
        let mv = Move {
            from: ActionState::Approved,
            to: ActionState::Running,
            by: "executor",
            why: "claimed for execution",
            at: Utc::now(),
            result: None,
        };
        match store.transition(&action.id, mv) {
            Ok(action) => send(config, store, mqtt, action).await,
            Err(TransitionError::WrongState { .. } | TransitionError::NotFound(_)) => {}
            Err(error) => {
                warn!(id = %action.id, error = format!("{error:#}"), "action not claimed")
            }
        }
    }
    let running = match store.list(ActionState::Running) {
        Ok(running) => running,
        Err(error) => {
            warn!(error = format!("{error:#}"), "running actions unreadable");
            return;
        }
    };
    let now = Utc::now();
    for action in running {
        match decide::running(&action, now, started) {
            decide::Running::Send => send(config, store, mqtt, action).await,
            decide::Running::Fail(result) => finish(config, store, mqtt, &action, result).await,
            decide::Running::Wait => {}
        }
    }
}

/// Records and publishes the command for a running action.
async fn send(config: &Config, store: &ActionStore, mqtt: &Mqtt, mut action: Action) {
    let now = Utc::now();
    let op = match decide::operation(action.kind, action.service.as_ref(), action.params.as_ref()) {
        Ok(op) => op,
        Err(why) => {
            let result = ActionResult {
                ok: false,
                message: why,
                at: now,
                data: json!({}),
            };
            finish(config, store, mqtt, &action, result).await;
            return;
        }
    };
    // Fleet mode: the command is sealed for its node, which must be
    // enrolled to open it.
    let recipient = match &config.fleet {
        None => None,
        Some(fleet) => {
            let node = action.target.as_ref().unwrap_or(&action.node);
            match fleet.node(node) {
                Some(enrolled) => Some(enrolled.box_key),
                None => {
                    let result = ActionResult {
                        ok: false,
                        message: format!(
                            "{node} is not enrolled in the fleet (`homelab node add {node}`): no agent of it could take the command"
                        ),
                        at: now,
                        data: json!({}),
                    };
                    finish(config, store, mqtt, &action, result).await;
                    return;
                }
            }
        }
    };
    let deadline = decide::deadline(now, config.command_timeout);
    let command = Command {
        v: 1,
        id: homelab_core::event::new_id(),
        action_id: action.id.clone(),
        node: action.target.clone().unwrap_or_else(|| action.node.clone()),
        op,
        issued_at: now,
        deadline,
    };
    action.command = Some(SentCommand {
        id: command.id.clone(),
        sent_at: now,
        deadline,
    });
    if let Err(error) = store.update(&action) {
        warn!(id = %action.id, error = format!("{error:#}"), "command not recorded; not sent");
        return;
    }
    let mut payload = serde_json::to_vec(&command).expect("command serializes");
    // Fleet mode: signed over everything it says (id, action id, node,
    // type, params, issued_at, deadline); agents pin this key.
    if let Some(fleet) = &config.fleet {
        payload = homelab_core::identity::seal(
            &payload,
            homelab_core::identity::Context::Command,
            fleet.signing_key(),
        );
    }
    if let Some(recipient) = &recipient {
        payload = homelab_core::sealbox::seal(&payload, &command.node, recipient);
    }
    match mqtt
        .publish(&config.topics.commands(&command.node), payload, false)
        .await
    {
        Ok(()) => {
            info!(id = %action.id, command = %command.id, node = %action.node, "command sent");
            metrics::counter!("homelab_commands_sent_total", "type" => action.kind.as_str())
                .increment(1);
        }
        Err(error) => warn!(id = %action.id, %error, "command not sent"),
    }
    publish_action(config, mqtt, &action).await;
}

async fn outcome(config: &Config, store: &ActionStore, mqtt: &Mqtt, event: &Event) {
    let Some(id) = event
        .action_id()
        .and_then(|id| homelab_core::Name::parse(id).ok())
    else {
        return;
    };
    let action = match store.find(&id) {
        Ok(Some(action)) => action,
        _ => return,
    };
    match decide::outcome(&action, event) {
        Some(result) => finish(config, store, mqtt, &action, result).await,
        None if action.state == ActionState::Running => {
            info!(id = %id, "outcome of an earlier command ignored")
        }
        None => {}
    }
}

async fn finish(
    config: &Config,
    store: &ActionStore,
    mqtt: &Mqtt,
    action: &Action,
    result: ActionResult,
) {
    let to = if result.ok {
        ActionState::Completed
    } else {
        ActionState::Failed
    };
    let why = result.message.clone();
    let mv = Move {
        from: ActionState::Running,
        to,
        by: "executor",
        why: &why,
        at: Utc::now(),
        result: Some(result),
    };
    match store.transition(&action.id, mv) {
        Ok(action) => {
            info!(id = %action.id, state = %to, "action finished");
            metrics::counter!("homelab_actions_finished_total", "state" => to.dir()).increment(1);
            if let Some(deployment) = homelab_core::world::Deployment::of(&action) {
                if let Err(error) = record_deployment(&config.layout, deployment) {
                    warn!(id = %action.id, error = format!("{error:#}"), "deployment not recorded");
                }
            }
            publish_action(config, mqtt, &action).await;
        }
        Err(error) => warn!(id = %action.id, error = format!("{error:#}"), "outcome not recorded"),
    }
}

/// Appends a finished redeploy to `world/deployments.json` (this executor
/// is its only writer).
fn record_deployment(
    layout: &homelab_core::Layout,
    deployment: homelab_core::world::Deployment,
) -> anyhow::Result<()> {
    let path = layout.world_deployments();
    let mut history: Vec<homelab_core::world::Deployment> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            warn!(path = %path.display(), %error, "deployment history unreadable; started again");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    homelab_core::world::append_deployment(&mut history, deployment);
    homelab_core::fsutil::write_json_atomic(&path, &history)
}

async fn publish_action(config: &Config, mqtt: &Mqtt, action: &Action) {
    let payload = serde_json::to_vec(action).expect("action serializes");
    if let Err(error) = mqtt
        .publish(&config.topics.action(&action.id), payload, true)
        .await
    {
        warn!(%error, "action not published");
    }
}
