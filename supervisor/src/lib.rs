//! `homelab supervisor`: compares desired state (the repo) with world state
//! and writes remediation actions as pending. It never runs anything.
//!
//! A reconcile pass runs at once on every world change (any retained
//! message under `<prefix>/state/`) or event, and on a timer (grace periods
//! expire, the repo may have changed). What arrives while a pass runs is
//! coalesced into one more pass right after it: no fixed wait, and no pass
//! per message under load. Each pass counts `homelab_reconcile_passes_total`
//! (tests wait on it as a positive sign that the supervisor had its chance). It reads the repo, `world/*.json` and the open
//! actions, asks [`plan::plan`] what to do, and carries it out. If the repo
//! does not load, the last good desired state is kept; if a world or action
//! file does not parse, the pass is skipped.

pub mod plan;
pub mod recent;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use homelab_core::store::{CreateError, Move, TransitionError};
use homelab_core::world::{NodeState, ServiceState};
use homelab_core::{desired, fsutil, Action, ActionState, ActionStore, Layout, Topics};
use homelab_mqtt::Mqtt;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: String,
    pub layout: Layout,
    pub topics: Topics,
    pub repo: PathBuf,
    /// Grace period of services that do not set their own.
    pub default_grace: Duration,
    /// Reconcile at least this often.
    pub interval: Duration,
    /// Runs of one action id an hour that `remediation: auto` may approve.
    pub auto_limit: usize,
}

struct Read {
    nodes: Vec<NodeState>,
    services: Vec<ServiceState>,
    open: Vec<Action>,
    finished: Vec<Action>,
}

/// `state/supervisor/status.json`, written after every pass.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub passes: u64,
    #[serde(with = "homelab_core::time")]
    pub last_pass: chrono::DateTime<Utc>,
    pub duration_ms: f64,
    pub repo_problems: Vec<String>,
}

struct Supervisor {
    passes: u64,
    config: Config,
    store: ActionStore,
    desired: Option<desired::Desired>,
    last_problems: Vec<String>,
    recent: recent::Recent,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let mut mqtt_config = homelab_mqtt::Config::new(&config.broker, "homelab-supervisor");
    // World changes and new events (for the event rules) wake a pass.
    mqtt_config.subscriptions = vec![config.topics.state_all(), config.topics.events_all()];
    let (mqtt, mut incoming) = homelab_mqtt::connect(mqtt_config)?;
    let mut supervisor = Supervisor {
        passes: 0,
        store: ActionStore::new(config.layout.clone()),
        config: config.clone(),
        desired: None,
        last_problems: Vec::new(),
        recent: recent::Recent::default(),
    };
    info!(repo = %config.repo.display(), "supervisor started");

    let mut tick = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            message = incoming.recv() => if message.is_none() { break },
        }
        // Everything that arrived so far is covered by this one pass.
        while incoming.try_recv().is_ok() {}
        let started = std::time::Instant::now();
        supervisor
            .reconcile(&mqtt)
            .instrument(info_span!("reconcile"))
            .await;
        metrics::histogram!("homelab_reconcile_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("homelab_reconcile_passes_total").increment(1);
        supervisor.passes += 1;
        let status = Status {
            passes: supervisor.passes,
            last_pass: Utc::now(),
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            repo_problems: supervisor.last_problems.clone(),
        };
        let path = config.layout.supervisor_status();
        if let Err(error) = fsutil::write_json_atomic(&path, &status) {
            warn!(
                error = format!("{error:#}"),
                "supervisor status not written"
            );
        }
    }
    mqtt.close().await;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &std::path::Path) -> Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

impl Supervisor {
    /// Reads the repo. A bad file spoils only what it describes: the hosts
    /// it concerns keep their last good desired state (or are frozen), the
    /// others follow the repo as it is now.
    fn load_desired(&mut self) {
        let loaded = desired::load_partial(&self.config.repo);
        let lines: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
        if lines != self.last_problems {
            if lines.is_empty() {
                info!("desired state loads again");
            }
            for line in &lines {
                warn!(problem = %line, "desired state has a problem; what it describes keeps its last good state");
            }
            if !lines.is_empty() {
                metrics::counter!("homelab_desired_state_errors_total").increment(1);
            }
            self.last_problems = lines;
        }
        if let Some(desired) = loaded.or_last_good(self.desired.as_ref()) {
            self.desired = Some(desired);
        }
    }

    fn read(&self) -> Result<Read> {
        let layout = &self.config.layout;
        Ok(Read {
            nodes: read_json(&layout.world_nodes())?,
            services: read_json(&layout.world_services())?,
            open: self.store.open()?,
            finished: self.store.finished()?,
        })
    }

    async fn reconcile(&mut self, mqtt: &Mqtt) {
        self.load_desired();
        let Some(desired) = &self.desired else { return };
        let read = match self.read() {
            Ok(read) => read,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "reconcile skipped: input unreadable"
                );
                return;
            }
        };
        let now = Utc::now();
        self.recent.refresh(&self.config.layout, now);
        let settings = plan::Settings {
            default_grace: self.config.default_grace,
            auto_limit: self.config.auto_limit,
            ..Default::default()
        };
        let inputs = plan::Inputs {
            desired,
            nodes: &read.nodes,
            services: &read.services,
            open: &read.open,
            finished: &read.finished,
            events: self.recent.events(),
        };
        let plan = plan::plan(inputs, &settings, now);
        for alert in &plan.alerts {
            let event = alert.event(now);
            info!(node = %alert.node, trigger = %alert.trigger, count = alert.count, "alert raised");
            metrics::counter!("homelab_alerts_total", "trigger" => alert.trigger.clone())
                .increment(1);
            let topic = self.config.topics.events(&event.node);
            if let Err(error) = mqtt
                .publish(&topic, event.to_json().into_bytes(), false)
                .await
            {
                warn!(%error, "alert not published");
            }
            // Counted for the cooldown until the log has it.
            self.recent.add(event);
        }
        for action in plan.create {
            match self.store.create(&action) {
                Ok(()) => {
                    info!(id = %action.id, reason = %action.reason, "action proposed");
                    metrics::counter!("homelab_actions_proposed_total", "type" => action.kind.as_str()).increment(1);
                    self.publish(mqtt, &action).await;
                }
                Err(CreateError::AlreadyOpen { .. }) => {}
                Err(error) => {
                    warn!(id = %action.id, error = format!("{error:#}"), "action not written")
                }
            }
        }
        for id in plan.approve {
            let mv = Move {
                from: ActionState::Pending,
                to: ActionState::Approved,
                by: homelab_core::action::APPROVED_BY_POLICY,
                why: "approved by policy (remediation: auto)",
                at: Utc::now(),
                result: None,
            };
            match self.store.transition(&id, mv) {
                Ok(action) => {
                    info!(id = %id, "action approved by policy");
                    metrics::counter!("homelab_actions_auto_approved_total").increment(1);
                    self.publish(mqtt, &action).await;
                }
                Err(TransitionError::WrongState { actual, .. }) => {
                    info!(id = %id, %actual, "approval by policy lost the race")
                }
                Err(error) => warn!(id = %id, error = format!("{error:#}"), "approval failed"),
            }
        }
        for cancel in plan.cancel {
            let mv = Move {
                from: ActionState::Pending,
                to: ActionState::Cancelled,
                by: "supervisor",
                why: cancel.reason,
                at: Utc::now(),
                result: None,
            };
            match self.store.transition(&cancel.id, mv) {
                Ok(action) => {
                    info!(id = %cancel.id, reason = cancel.reason, "pending action cancelled");
                    metrics::counter!("homelab_actions_cancelled_total", "reason" => cancel.reason)
                        .increment(1);
                    self.publish(mqtt, &action).await;
                }
                // An operator approved or rejected it meanwhile: theirs wins.
                Err(TransitionError::WrongState { actual, .. }) => {
                    info!(id = %cancel.id, %actual, "cancel lost the race")
                }
                Err(error) => warn!(id = %cancel.id, error = format!("{error:#}"), "cancel failed"),
            }
        }
    }

    async fn publish(&self, mqtt: &Mqtt, action: &Action) {
        let payload = serde_json::to_vec(action).expect("action serializes");
        if let Err(error) = mqtt
            .publish(&self.config.topics.action(&action.id), payload, true)
            .await
        {
            warn!(%error, "action not published");
        }
    }
}
