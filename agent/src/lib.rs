//! `homelab agent`: runs on every host. Watches Docker (event stream plus a
//! periodic full sync), publishes what changed as events through the
//! [`outbox`], and carries out commands from the executor.
//!
//! Architecture invariants: only this crate talks to Docker, and only
//! [`docker`] inside it; every event leaves through the outbox, so it carries
//! the node's `seq`; a command past its deadline, or for another node, is
//! refused.

pub mod cleanup;
pub mod command;
pub mod compose;
pub mod disk;
pub mod docker;
pub mod hawatch;
pub mod health;
pub mod mqttprobe;
pub mod outbox;
pub mod proc;
pub mod secrets;
pub mod spool;
pub mod stats;
pub mod status;
pub mod sync;
pub mod uplink;
pub mod vitals;
pub mod window;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use homelab_core::event::{kinds, SOURCE_AGENT};
use homelab_core::nodeconfig::NodeConfig;
use homelab_core::world::{Container, Snapshot};
use homelab_core::{fsutil, Command, Event, Layout, Name, Operation, Severity, Topics};
use homelab_mqtt::{Incoming, Mqtt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use docker::{BollardRuntime, ContainerRuntime};
use homelab_core::identity;
use outbox::Outbox;

/// What an agent logs when the broker refuses its login: in fleet mode the
/// likely cause is `homelab node remove` (or a rotated password), and the way
/// back is a new enrolment.
fn refused_hint(node: &str, enrolled: bool) -> String {
    if enrolled {
        format!(
            "was node {node} removed from the fleet, or its password rotated? \
             enrol it again: run `homelab node add {node}` on the control host \
             and start this agent with the HOMELAB_ENROLL it prints"
        )
    } else {
        "this agent has no login: in fleet mode enrol it with `homelab node add` on the \
         control host"
            .to_string()
    }
}

#[derive(Clone)]
pub struct Config {
    pub node: Name,
    /// `host:port` or `mqtts://host:port` of the MQTT broker.
    pub broker: String,
    /// The node's identity in a fleet (TLS, login, keys); `None` in open
    /// mode.
    pub identity: Option<homelab_core::identity::AgentSecrets>,
    pub layout: Layout,
    pub topics: Topics,
    /// How often to list all containers even without Docker events.
    pub sync_interval: Duration,
    /// A `node_snapshot` goes out on every change, and at least this often.
    pub snapshot_interval: Duration,
    /// Bound of the outbox in bytes; past it the oldest events go.
    pub outbox_max_bytes: u64,
    /// The longest wait before sending again what is not acknowledged: a
    /// stall is answered after 2 s, then after twice as long each time, up
    /// to this (`window::FIRST_STALL`).
    pub resend_after: Duration,
    /// The Docker engine (`unix:///…`, `tcp://…`); `None` is `DOCKER_HOST`
    /// or the local socket.
    pub docker_host: Option<String>,
    /// Only containers with this label (`key` or `key=value`) are this
    /// node's; `None`: all of the engine's.
    pub docker_label: Option<String>,
    /// The container runtime; `None` connects to the Docker engine.
    pub runtime: Option<Arc<dyn ContainerRuntime>>,
    /// Filesystems watched for pressure besides the root and Docker's data
    /// root.
    pub disk_mounts: Vec<std::path::PathBuf>,
    pub disk_thresholds: disk::Thresholds,
    /// How often disk usage is sampled.
    pub disk_interval: Duration,
    /// How often each running container's CPU and memory are read.
    pub stats_interval: Duration,
    /// How often the brokers the node's services depend on are probed.
    pub broker_interval: Duration,
    /// The Home Assistant beside this agent, watched ([`hawatch`]).
    pub home_assistant: Option<hawatch::HaConfig>,
    /// The `tailscale` program, if the node runs Tailscale ([`uplink`]).
    pub tailscale: Option<std::path::PathBuf>,
    /// Tailnet peers this node needs besides the broker's host.
    pub tailscale_peers: Vec<String>,
    /// How often `tailscale status --json` is read.
    pub tailscale_interval: Duration,
}

impl Config {
    pub fn new(node: Name, broker: &str, layout: Layout) -> Config {
        Config {
            node,
            broker: broker.to_string(),
            identity: None,
            layout,
            topics: Topics::default(),
            sync_interval: Duration::from_secs(30),
            snapshot_interval: Duration::from_secs(600),
            outbox_max_bytes: outbox::DEFAULT_MAX_BYTES,
            resend_after: Duration::from_secs(30),
            docker_host: None,
            docker_label: None,
            runtime: None,
            disk_mounts: Vec::new(),
            disk_thresholds: disk::Thresholds::default(),
            disk_interval: Duration::from_secs(30),
            stats_interval: Duration::from_secs(30),
            broker_interval: Duration::from_secs(30),
            home_assistant: None,
            tailscale: None,
            tailscale_peers: Vec::new(),
            tailscale_interval: Duration::from_secs(30),
        }
    }
}

/// What the agent's tasks share.
struct Agent {
    config: Config,
    outbox: Outbox,
    /// Docker while it is connected; commands wait on it.
    runtime: tokio::sync::watch::Sender<Option<Arc<dyn ContainerRuntime>>>,
    /// What the control plane gave this node from the repo (health
    /// checks, brokers, disk policy); the last one is kept on disk.
    node_config: tokio::sync::watch::Sender<Arc<NodeConfig>>,
    /// The watched filesystems as last sampled, for the vitals.
    disks: std::sync::Mutex<std::collections::BTreeMap<String, vitals::DiskUse>>,
    /// Tailscale as last read, for the status.
    tailscale: std::sync::Mutex<Option<homelab_core::agentstatus::Tailscale>>,
    /// Each running container's CPU and memory as last read, for the
    /// vitals ([`stats`]).
    container_stats: std::sync::Mutex<Vec<stats::ContainerStats>>,
    /// Container logs being sent now ([`serve_logs`]).
    log_streams: std::sync::atomic::AtomicUsize,
    /// Fleet mode: this node's signing key and the control plane's pinned
    /// public key.
    keys: Option<Keys>,
}

struct Keys {
    node: identity::SecretKey,
    control: identity::PublicKey,
    /// Opens the commands sealed for this node.
    boxed: homelab_core::sealbox::BoxSecret,
}

impl Agent {
    /// What the control plane sent on `topic`, checked: in fleet mode it
    /// must carry the control plane's signature for `context`. Refusals
    /// are counted (`homelab_agent_refused_total{what, reason}`).
    fn signed_by_control<'a>(
        &self,
        payload: &'a [u8],
        context: identity::Context,
        what: &'static str,
    ) -> Option<std::borrow::Cow<'a, [u8]>> {
        let Some(keys) = &self.keys else {
            return Some(std::borrow::Cow::Borrowed(payload));
        };
        match identity::open(payload, context, &keys.control) {
            Ok(unsigned) => Some(std::borrow::Cow::Owned(unsigned)),
            Err(error) => {
                warn!(what, %error, "refused: not signed by the control plane");
                metrics::counter!("homelab_agent_refused_total", "what" => what, "reason" => error.reason())
                    .increment(1);
                None
            }
        }
    }

    /// A command from the bus: in fleet mode it must be sealed for this
    /// node ([`homelab_core::sealbox`]); then it is checked like
    /// [`Agent::signed_by_control`].
    fn command_from_control(&self, payload: &[u8]) -> Option<Vec<u8>> {
        self.sealed_by_control(payload, identity::Context::Command, "command")
    }

    /// A node config from the bus, sealed and signed like a command.
    fn config_from_control(&self, payload: &[u8]) -> Option<Vec<u8>> {
        self.sealed_by_control(payload, identity::Context::NodeConfig, "config")
    }

    fn sealed_by_control(
        &self,
        payload: &[u8],
        context: identity::Context,
        what: &'static str,
    ) -> Option<Vec<u8>> {
        let opened;
        let payload = match &self.keys {
            None => payload,
            Some(keys) => {
                match homelab_core::sealbox::open(payload, &self.config.node, &keys.boxed) {
                    Ok(plain) => {
                        opened = plain;
                        &opened[..]
                    }
                    Err(error) => {
                        warn!(what, %error, "refused: not sealed for this node");
                        metrics::counter!("homelab_agent_refused_total", "what" => what, "reason" => error.reason())
                            .increment(1);
                        return None;
                    }
                }
            }
        };
        self.signed_by_control(payload, context, what)
            .map(|p| p.into_owned())
    }

    /// An ack watermark, checked like [`Agent::signed_by_control`].
    fn ack_from_control(&self, payload: &[u8]) -> Option<u64> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        let text = match &self.keys {
            None => text,
            Some(keys) => match identity::open_text(
                text,
                self.config.node.as_str(),
                identity::Context::Ack,
                &keys.control,
            ) {
                Ok(text) => text,
                Err(error) => {
                    warn!(%error, "ack refused: not signed by the control plane");
                    metrics::counter!("homelab_agent_refused_total", "what" => "ack", "reason" => error.reason())
                        .increment(1);
                    return None;
                }
            },
        };
        text.parse().ok()
    }
}

impl Agent {
    fn emit(
        &self,
        kind: &str,
        service: Option<&Name>,
        severity: Severity,
        message: &str,
        data: Value,
    ) {
        let event = self.event(kind, service, severity, message, data);
        // The commit fsyncs: keep it off the async scheduler (see `blocking`).
        match blocking(|| self.outbox.push(event)) {
            Ok(event) => debug!(kind, seq = event.seq, "event queued"),
            Err(error) => warn!(%error, kind, "event could not be recorded in the outbox"),
        }
    }

    fn runtime(&self) -> Option<Arc<dyn ContainerRuntime>> {
        self.runtime.borrow().clone()
    }

    /// An event of this node as the agent says it (its `seq` comes from
    /// the outbox).
    fn event(
        &self,
        kind: &str,
        service: Option<&Name>,
        severity: Severity,
        message: &str,
        data: Value,
    ) -> Event {
        Event {
            v: 1,
            id: homelab_core::event::new_id(),
            ts: Utc::now(),
            node: self.config.node.clone(),
            seq: 0,
            source: SOURCE_AGENT.into(),
            kind: kind.into(),
            service: service.cloned(),
            severity,
            message: message.into(),
            data,
        }
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let node = config.node.clone();
    let topics = config.topics.clone();
    let outbox = Outbox::open(
        &config.layout.agent_dir(&node),
        node.clone(),
        config.outbox_max_bytes,
    )?;
    let stored = load_node_config(&config.layout, &node);
    let agent = Arc::new(Agent {
        config: config.clone(),
        outbox,
        runtime: tokio::sync::watch::Sender::new(None),
        node_config: tokio::sync::watch::Sender::new(Arc::new(stored)),
        disks: Default::default(),
        tailscale: Default::default(),
        container_stats: Default::default(),
        log_streams: Default::default(),
        keys: match &config.identity {
            Some(identity) => Some(Keys {
                node: identity.signing_key().map_err(anyhow::Error::msg)?,
                control: identity.control_key().map_err(anyhow::Error::msg)?,
                boxed: identity.box_key().map_err(anyhow::Error::msg)?,
            }),
            None => None,
        },
    });

    let status_topic = topics.node_status(&node);
    let mut endpoint = homelab_mqtt::Endpoint::new(&config.broker);
    if let Some(identity) = &config.identity {
        endpoint = endpoint
            .with_tls(identity.ca_pem.clone())
            .with_credentials(identity.username.clone(), identity.password.clone());
    }
    let mut mqtt_config = homelab_mqtt::Config::new(endpoint, &format!("homelab-agent-{node}"));
    mqtt_config.clean_session = false;
    mqtt_config.last_will = Some(homelab_mqtt::Will {
        topic: status_topic.clone(),
        payload: b"offline".to_vec(),
        retain: true,
    });
    mqtt_config.subscriptions = vec![
        topics.commands(&node),
        topics.acks(&node),
        topics.node_config(&node),
        topics.logs_request(&node),
    ];
    // A command is acknowledged to the broker only once it is in the
    // outbox's queue: until then the broker keeps it for this session.
    mqtt_config.acked_by_caller = vec![topics.commands(&node)];
    // The link's round trips, late answers and outages, for the status.
    mqtt_config.track_link = true;
    mqtt_config.refused_hint = Some(refused_hint(node.as_str(), config.identity.is_some()));
    let (mqtt, mut incoming) = homelab_mqtt::connect(mqtt_config)?;
    info!(%node, broker = %config.broker, "agent started");

    let connected = Arc::new(AtomicBool::new(false));
    let tasks = tokio_util::task::TaskTracker::new();
    // Commands taken before a stop: carried on, or reported interrupted.
    match agent.outbox.queued_commands() {
        Ok(queued) => {
            for queued in queued {
                tasks.spawn(resume_command(agent.clone(), queued));
            }
        }
        Err(error) => warn!(error = format!("{error:#}"), "queued commands unreadable"),
    }
    tasks.spawn(publish_loop(
        agent.clone(),
        mqtt.clone(),
        connected.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(docker_loop(agent.clone(), shutdown.clone()));
    tasks.spawn(disk_loop(agent.clone(), shutdown.clone()));
    tasks.spawn(stats_loop(agent.clone(), shutdown.clone()));
    tasks.spawn(checks_loop(agent.clone(), shutdown.clone()));
    if let Some(program) = config.tailscale.clone() {
        tasks.spawn(tailscale_loop(agent.clone(), program, shutdown.clone()));
    }
    if let Some(ha) = config.home_assistant.clone() {
        let agent = agent.clone();
        tasks.spawn(hawatch::watch(
            ha,
            move |said| agent.emit(said.kind, None, said.severity, &said.message, said.data),
            shutdown.clone(),
        ));
    }
    tasks.spawn(status_loop(
        agent.clone(),
        mqtt.clone(),
        connected.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(spool::drain_loop(
        agent.config.layout.agent_spool(&node),
        agent.clone(),
        shutdown.clone(),
    ));

    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = incoming.recv() => message,
        };
        match message {
            None => break,
            Some(Incoming::Connected { .. }) => {
                connected.store(true, Ordering::SeqCst);
                if let Err(error) = mqtt.publish(&status_topic, "online", true).await {
                    warn!(%error, "could not publish online status");
                }
                agent.outbox.resend();
                report_status(&agent, &mqtt, true, true).await;
            }
            Some(Incoming::Disconnected) => {
                connected.store(false, Ordering::SeqCst);
                report_status(&agent, &mqtt, false, true).await;
            }
            Some(Incoming::Message(message)) if message.topic == topics.acks(&node) => {
                match agent.ack_from_control(&message.payload) {
                    Some(watermark) => match blocking(|| agent.outbox.ack(watermark)) {
                        Ok(outbox::Ack::Repeat { resend: true }) => {
                            info!(
                                watermark,
                                "observer repeated its watermark; sending again from there"
                            )
                        }
                        Ok(_) => {}
                        Err(error) => warn!(
                            error = format!("{error:#}"),
                            "ack not applied to the outbox"
                        ),
                    },
                    None => warn!(topic = %message.topic, "ack watermark refused or not a number"),
                }
            }
            Some(Incoming::Message(message)) if message.topic == topics.node_config(&node) => {
                apply_node_config(&agent, &message.payload);
            }
            Some(Incoming::Message(message)) if message.topic == topics.commands(&node) => {
                tasks.spawn(handle_command(
                    agent.clone(),
                    mqtt.clone(),
                    message.payload.to_vec(),
                    message.ack,
                ));
            }
            Some(Incoming::Message(message)) if message.topic == topics.logs_request(&node) => {
                tasks.spawn(serve_logs(
                    agent.clone(),
                    mqtt.clone(),
                    message.payload.to_vec(),
                ));
            }
            Some(Incoming::Message(message)) => {
                debug!(topic = %message.topic, "unexpected message")
            }
        }
    }

    // Leave things safe: say we are going, give the publisher a moment to
    // flush, then disconnect cleanly (a clean DISCONNECT does not fire the
    // Will, so `offline` is published explicitly).
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    let was_connected = connected.load(Ordering::SeqCst);
    report_status(&agent, &mqtt, was_connected, false).await;
    if was_connected {
        let _ = mqtt.publish(&status_topic, "offline", true).await;
    }
    mqtt.close().await;
    // Acks commit without an fsync; a clean stop makes them durable, so
    // that nothing the observer has is sent again after the next start.
    if let Err(error) = blocking(|| agent.outbox.sync()) {
        warn!(
            error = format!("{error:#}"),
            "outbox not synced on the way out"
        );
    }
    info!(%node, unacked = agent.outbox.unacked(), "agent stopped");
    Ok(())
}

/// How often the agent looks whether its own state changed (connection,
/// outbox): a change is written and published at once.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Unchanged, it is written and published this often (the node's vitals
/// with it): an idle agent does little.
const STATUS_IDLE_EVERY: Duration = Duration::from_secs(30);

/// What makes the status worth reporting before [`STATUS_IDLE_EVERY`]:
/// cheap to read, unlike the vitals.
/// Connected, unacknowledged, acknowledged, last seq, config commit, the
/// containers whose CPU is known (their figures first, not each change).
type StatusKey = (bool, u64, u64, u64, Option<String>, Vec<String>);

fn status_key(agent: &Agent, connected: bool) -> StatusKey {
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
async fn stats_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
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

async fn status_loop(
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
async fn report_status(agent: &Agent, mqtt: &Mqtt, connected: bool, running: bool) {
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

/// Runs blocking file work (an outbox commit) without stalling the async
/// scheduler, whose other tasks (the MQTT connection) may be parked behind
/// it on the same worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Sends outbox events in `seq` order while connected.
async fn publish_loop(
    agent: Arc<Agent>,
    mqtt: Mqtt,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let topic = agent.config.topics.events(&agent.config.node);
    loop {
        // Events go out as stored, a batch per read of the outbox, without
        // parsing them again.
        'send: while connected.load(Ordering::SeqCst) {
            let (epoch, batch) = match agent.outbox.next_batch(256) {
                Ok((_, batch)) if batch.is_empty() => break,
                Ok(found) => found,
                Err(error) => {
                    warn!(error = format!("{error:#}"), "outbox unreadable");
                    break;
                }
            };
            for (seq, payload) in batch {
                // Fleet mode: signed by this node's key as it leaves.
                let payload = match &agent.keys {
                    Some(keys) => identity::seal(&payload, identity::Context::Event, &keys.node),
                    None => payload,
                };
                if let Err(error) = mqtt.publish(&topic, payload, false).await {
                    warn!(%error, "publish failed");
                    break 'send;
                }
                agent.outbox.mark_sent_in(epoch, seq);
            }
        }
        // The resend deadline is an absolute instant kept by the window:
        // waking up to send new events never postpones it.
        let resend_after = agent.config.resend_after;
        let deadline = agent.outbox.deadline(resend_after);
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = agent.outbox.wait() => {}
            _ = timer => {
                if agent.outbox.on_timer(resend_after) {
                    info!(acked = agent.outbox.acked(), "sending again what the observer has not acknowledged (acks stalled, or a repeated watermark was owed an answer)");
                }
            }
        }
    }
}

fn docker_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keeps a Docker connection, syncs on every container event and on a
/// timer, and reports the engine going away and coming back.
async fn docker_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut delays = docker_backoff();
    let mut reachable: Option<bool> = None;
    let mut state = SyncState::default();
    loop {
        let connected = match agent.config.runtime.clone() {
            Some(runtime) => Ok(runtime),
            None => BollardRuntime::connect(
                agent.config.docker_host.as_deref(),
                agent.config.docker_label.as_deref(),
                &agent.config.node,
            )
            .await
            .map(|r| r as Arc<dyn ContainerRuntime>),
        };
        let result = match connected {
            Ok(runtime) => {
                if reachable == Some(false) {
                    agent.emit(
                        kinds::DOCKER_RECOVERED,
                        None,
                        Severity::Info,
                        "docker engine reachable again",
                        json!({}),
                    );
                }
                reachable = Some(true);
                delays = docker_backoff();
                agent.runtime.send_replace(Some(runtime.clone()));
                let result = watch(&agent, runtime, &mut state, &shutdown).await;
                agent.runtime.send_replace(None);
                result
            }
            Err(error) => Err(error),
        };
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(error) = result {
            if reachable != Some(false) {
                let error_text = format!("{error:#}");
                warn!(
                    error = %error_text,
                    "docker engine unreachable: {}; retrying with backoff",
                    docker_advice(&error_text)
                );
                agent.emit(
                    kinds::DOCKER_UNREACHABLE,
                    None,
                    Severity::Error,
                    &format!("{error:#}"),
                    json!({}),
                );
                reachable = Some(false);
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Default)]
struct SyncState {
    services: Option<sync::Services>,
    snapshot: Option<Vec<Container>>,
    snapshot_at: Option<tokio::time::Instant>,
}

async fn watch(
    agent: &Agent,
    runtime: Arc<dyn ContainerRuntime>,
    state: &mut SyncState,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut changes = runtime.changes();
    full_sync(agent, runtime.as_ref(), state).await?;
    let mut tick = tokio::time::interval(agent.config.sync_interval);
    tick.reset();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            change = changes.next() => match change {
                Some(Ok(())) => {
                    // Docker sends several events for one change (kill, die,
                    // stop): let them settle, then sync once.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while let Some(Some(more)) = changes.next().now_or_never() { more?; }
                }
                Some(Err(error)) => return Err(error),
                None => anyhow::bail!("docker event stream ended"),
            },
        }
        full_sync(agent, runtime.as_ref(), state).await?;
    }
}

async fn full_sync(
    agent: &Agent,
    runtime: &dyn ContainerRuntime,
    state: &mut SyncState,
) -> Result<()> {
    let mut containers = runtime.list().await?;
    containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    let services = sync::services(&containers);
    let changes = sync::diff(state.services.as_ref(), &services);
    let shape = |cs: &[Container]| -> Vec<(String, String, String, Option<String>)> {
        cs.iter()
            .map(|c| {
                (
                    c.id.clone(),
                    c.service.to_string(),
                    c.state.clone(),
                    c.health.clone(),
                )
            })
            .collect()
    };
    let changed = state.snapshot.as_deref().map(shape) != Some(shape(&containers));
    let due = state
        .snapshot_at
        .is_none_or(|at| at.elapsed() >= agent.config.snapshot_interval);
    if changed || due {
        let message = format!("{} containers", containers.len());
        let data = serde_json::to_value(Snapshot {
            containers: containers.clone(),
        })?;
        agent.emit(kinds::NODE_SNAPSHOT, None, Severity::Info, &message, data);
        state.snapshot = Some(containers);
        state.snapshot_at = Some(tokio::time::Instant::now());
    }
    for change in changes {
        info!(kind = change.kind, service = %change.service, message = %change.message, "service changed");
        agent.emit(
            change.kind,
            Some(&change.service),
            change.severity,
            &change.message,
            json!({}),
        );
    }
    state.services = Some(services);
    Ok(())
}

/// Samples the watched filesystems every `disk_interval`, and at once when
/// a new node config arrives (it may name mounts and thresholds), and
/// reports each crossing of a threshold as `disk_pressure`
/// (`disk::Tracker`).
async fn disk_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut tracker = disk::Tracker::default();
    let mut data_root: Option<std::path::PathBuf> = None;
    let mut tick = tokio::time::interval(agent.config.disk_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut configs = agent.node_config.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = configs.changed() => {
                if changed.is_err() { return }
                debug!("node config changed: disks judged again");
            }
        }
        if data_root.is_none() {
            if let Some(runtime) = agent.runtime() {
                match runtime.data_root().await {
                    Ok(root) => data_root = root,
                    Err(error) => debug!(%error, "docker data root unknown"),
                }
            }
        }
        let node_config = configs.borrow_and_update().clone();
        let thresholds = disk::thresholds(
            agent.config.disk_thresholds,
            node_config.disk.high_pct,
            node_config.disk.low_pct,
        );
        let mounts = disk::watched(
            &agent.config.disk_mounts,
            &node_config.disk.mounts,
            data_root.as_deref(),
        );
        for mount in mounts {
            // statvfs can hang on a dead network filesystem: off the
            // runtime, and bounded.
            let path = mount.clone();
            let sampled = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || disk::usage(&path)),
            )
            .await;
            let (usage, used) = match sampled {
                Ok(Ok(Ok(sample))) => sample,
                Ok(Ok(Err(error))) => {
                    debug!(mount = %mount.display(), %error, "disk usage not read");
                    continue;
                }
                _ => {
                    warn!(mount = %mount.display(), "disk usage not read within 10 s");
                    continue;
                }
            };
            agent.disks.lock().expect("disks lock").insert(
                mount.display().to_string(),
                vitals::DiskUse {
                    mount: mount.display().to_string(),
                    used_pct: (usage.used_pct(used) * 10.0).round() / 10.0,
                    free_bytes: usage.free_bytes,
                },
            );
            let Some(change) =
                tracker.sample(&mount, usage.used_pct(used), usage.free_bytes, &thresholds)
            else {
                continue;
            };
            let alert = disk::alert(&change, &thresholds);
            info!(mount = %change.mount.display(), level = change.level, used_pct = change.used_pct, "disk pressure");
            let severity = match alert.warning {
                true => Severity::Warning,
                false => Severity::Info,
            };
            agent.emit(
                kinds::DISK_PRESSURE,
                None,
                severity,
                &alert.message,
                alert.data,
            );
        }
    }
}

/// The node config stored by an earlier run, if it is still good.
fn load_node_config(layout: &Layout, node: &Name) -> NodeConfig {
    let path = layout.agent_config(node);
    match std::fs::read(&path) {
        Ok(bytes) => match NodeConfig::from_payload(&bytes, node) {
            Ok(config) => {
                info!(revision = %config.revision, "node config from the last run");
                config
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "stored node config ignored");
                NodeConfig::empty(node)
            }
        },
        Err(_) => NodeConfig::empty(node),
    }
}

/// A node config from the control plane: checked, kept on disk, and
/// applied when its revision is new. An empty payload (the node left the
/// inventory) stops every check.
fn apply_node_config(agent: &Agent, payload: &[u8]) {
    let node = &agent.config.node;
    // Fleet mode: sealed for this node and signed by the control plane,
    // also an empty one (a node that left the inventory gets a signed
    // empty config).
    let Some(payload) = agent.config_from_control(payload) else {
        return;
    };
    let payload: &[u8] = &payload;
    let config = if payload.is_empty() {
        NodeConfig::empty(node)
    } else {
        match NodeConfig::from_payload(payload, node) {
            Ok(config) => config,
            Err(error) => {
                warn!(%error, "node config rejected; the last good one stays");
                metrics::counter!("homelab_agent_config_rejected_total").increment(1);
                return;
            }
        }
    };
    if agent.node_config.borrow().revision == config.revision {
        // The same config from a later commit: only which commit it is at
        // moves (nothing restarts).
        if agent.node_config.borrow().commit != config.commit {
            info!(
                commit = config.commit.as_deref().unwrap_or("none"),
                "node config unchanged at a new commit"
            );
            let path = agent.config.layout.agent_config(node);
            if let Ok(bytes) = serde_json::to_vec(&config) {
                let _ = blocking(|| fsutil::write_atomic(&path, &bytes));
            }
            agent.node_config.send_if_modified(|current| {
                *current = Arc::new(config);
                false
            });
        }
        return;
    }
    // Fleet mode: an older signed config replayed on the topic.
    if agent.keys.is_some() && config.is_stale(&agent.node_config.borrow()) {
        warn!(revision = %config.revision, "node config refused: older than the one in use");
        metrics::counter!("homelab_agent_refused_total", "what" => "config", "reason" => "stale")
            .increment(1);
        return;
    }
    let path = agent.config.layout.agent_config(node);
    let written = serde_json::to_vec(&config)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| blocking(|| fsutil::write_atomic(&path, &bytes)));
    if let Err(error) = written {
        warn!(
            error = format!("{error:#}"),
            "node config not stored (applied all the same)"
        );
    }
    info!(
        revision = %config.revision,
        commit = config.commit.as_deref().unwrap_or("none"),
        healthchecks = config.healthchecks.len(),
        brokers = config.mqtt_brokers.len(),
        "node config applied"
    );
    agent.node_config.send_replace(Arc::new(config));
}

/// How long `tailscale status --json` may take.
const TAILSCALE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of its output read (a large tailnet prints a few hundred kB).
const TAILSCALE_OUTPUT: usize = 4 << 20;

/// Reads Tailscale's status every `tailscale_interval` and reports what
/// [`uplink::Rules`] says.
async fn tailscale_loop(
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

async fn read_tailscale(program: &std::path::Path) -> Result<uplink::Status, String> {
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
async fn checks_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
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
const HEALTHCHECK_OUTPUT: usize = 1024;

async fn run_healthcheck(agent: Arc<Agent>, spec: homelab_core::nodeconfig::HealthcheckSpec) {
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

async fn watch_broker(agent: Arc<Agent>, broker: homelab_core::nodeconfig::BrokerSpec) {
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

/// A command from the bus: checked, taken by id and queued durably, then
/// acknowledged to the broker (in every case: a refused command is not
/// delivered again), then carried out once Docker is there.
/// Answers a container logs request ([`homelab_core::logs`]): checked as
/// a command is (sealed for this node and signed by the control plane in
/// fleet mode), then the container's lines as replies, sealed to the
/// request's own key. Nothing of it is stored.
async fn serve_logs(agent: Arc<Agent>, mqtt: Mqtt, payload: Vec<u8>) {
    use homelab_core::logs::{self, Reply};
    if payload.len() > logs::MAX_REQUEST_BYTES {
        warn!(bytes = payload.len(), "logs request refused: too large");
        return;
    }
    let Some(plain) = agent.sealed_by_control(&payload, identity::Context::Logs, "logs") else {
        return;
    };
    let request: logs::Request = match serde_json::from_slice(&plain) {
        Ok(request) => request,
        Err(error) => {
            warn!(%error, "logs request refused: not a logs request");
            return;
        }
    };
    let node = agent.config.node.clone();
    if let Err(error) = request.check(&node, Utc::now(), agent.keys.is_some()) {
        warn!(id = %request.id, %error, "logs request refused");
        metrics::counter!("homelab_agent_refused_total", "what" => "logs", "reason" => "bad_request")
            .increment(1);
        return;
    }
    let reply_key = match (&agent.keys, &request.reply_key) {
        (Some(_), Some(key)) => match homelab_core::sealbox::decode_public(key) {
            Ok(key) => Some(key),
            Err(error) => {
                warn!(id = %request.id, %error, "logs request refused: bad reply key");
                return;
            }
        },
        _ => None,
    };
    let topic = agent.config.topics.logs_reply(&node);
    let mut seq = 0u64;
    let send =
        |lines: Vec<logs::Line>, dropped: u64, done: bool, error: Option<String>, seq: u64| {
            let reply = Reply {
                v: 1,
                id: request.id.clone(),
                node: node.clone(),
                seq,
                lines,
                dropped,
                done,
                error,
            };
            let mut payload = serde_json::to_vec(&reply).expect("a reply serializes");
            if let Some(keys) = &agent.keys {
                payload = identity::seal(&payload, identity::Context::Logs, &keys.node);
            }
            if let Some(key) = &reply_key {
                payload = homelab_core::sealbox::seal(&payload, &node, key);
            }
            let (mqtt, topic) = (mqtt.clone(), topic.clone());
            async move {
                if let Err(error) = mqtt.publish(&topic, payload, false).await {
                    debug!(%error, "logs reply not sent");
                }
            }
        };
    // At most a few at once; the counter goes down however this ends.
    struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let busy = agent.log_streams.fetch_add(1, Ordering::SeqCst);
    let _slot = Slot(&agent.log_streams);
    if busy >= logs::MAX_STREAMS {
        let error = format!("busy: {busy} log streams are being sent; try again shortly");
        send(Vec::new(), 0, true, Some(error), 0).await;
        return;
    }
    let Some(runtime) = agent.runtime() else {
        send(
            Vec::new(),
            0,
            true,
            Some("Docker is not connected".into()),
            0,
        )
        .await;
        return;
    };
    // Only a container this agent reports: not one labelled for another
    // node, not any name at all.
    let id = match runtime.list().await {
        Ok(list) => list
            .into_iter()
            .find(|c| c.name == request.container)
            .map(|c| c.id),
        Err(error) => {
            send(Vec::new(), 0, true, Some(format!("{error:#}")), 0).await;
            return;
        }
    };
    let Some(id) = id else {
        let error = format!("no container {} on {node}", request.container);
        send(Vec::new(), 0, true, Some(error), 0).await;
        return;
    };
    info!(id = %request.id, container = %request.container, lines = request.lines, follow_secs = request.follow_secs, "sending container logs");
    let follow = request.follow_secs > 0;
    let mut stream = runtime.logs(&id, request.lines, follow, request.since);
    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(request.follow_secs as u64);
    let mut chunker = logs::Chunker::default();
    let mut rate = logs::Rate::default();
    let (mut taken, mut dropped) = (0u64, 0u64);
    let mut error = None;
    // While following, what is gathered goes out twice a second; without,
    // Docker is given 10 s between lines.
    let tick = match follow {
        true => Duration::from_millis(500),
        false => Duration::from_secs(10),
    };
    let mut wake = tokio::time::Instant::now() + tick;
    loop {
        let wait = tokio::time::sleep_until(match follow {
            true => wake.min(until),
            false => wake,
        });
        let next = tokio::select! {
            next = stream.next() => next,
            _ = wait => {
                if follow && tokio::time::Instant::now() >= until {
                    break;
                }
                if !follow {
                    error = Some("Docker sent nothing for 10 s".to_string());
                    break;
                }
                if !chunker.is_empty() {
                    send(chunker.take(), dropped, false, None, seq).await;
                    seq += 1;
                }
                wake = tokio::time::Instant::now() + tick;
                continue;
            }
        };
        if !follow {
            wake = tokio::time::Instant::now() + tick;
        }
        match next {
            None => break,
            Some(Err(e)) => {
                error = Some(format!("{e:#}"));
                break;
            }
            Some(Ok(line)) => {
                taken += 1;
                // The asked-for tail goes out whole; what follows, at the rate.
                let over_tail = taken > request.lines as u64;
                if over_tail && !rate.allow(started.elapsed().as_millis() as u64) {
                    dropped += 1;
                    continue;
                }
                if let Some(full) = chunker.push(line) {
                    send(full, dropped, false, None, seq).await;
                    seq += 1;
                }
            }
        }
    }
    send(chunker.take(), dropped, true, error, seq).await;
}

async fn handle_command(
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
async fn take_command(agent: &Agent, payload: &[u8]) -> Option<Command> {
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

fn command_data(command: &Command) -> Value {
    json!({"action_id": command.action_id, "command_id": command.id})
}

/// A command found in the queue at start.
async fn resume_command(agent: Arc<Agent>, queued: outbox::Queued) {
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
fn finish(agent: &Agent, command: &Command, outcome: Event) {
    if let Err(error) = blocking(|| agent.outbox.finish_command(&command.id, outcome)) {
        warn!(id = %command.id, error = format!("{error:#}"), "command outcome not recorded");
    }
}

/// Waits (within the deadline) until Docker is there, then carries the
/// queued command out once and stores its outcome.
async fn carry_out_queued(agent: &Agent, command: Command) {
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
    let (ok, message, extra) = carry_out(agent, &command, now).await;
    let mut data = command_data(&command);
    if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
        data.extend(extra);
    }
    info!(id = %command.id, action = %command.action_id, ok, %message, "command carried out");
    let (kind, severity) = match ok {
        true => (kinds::REMEDIATION_COMPLETED, Severity::Info),
        false => (kinds::REMEDIATION_FAILED, Severity::Error),
    };
    let outcome = agent.event(kind, service.as_ref(), severity, &message, data);
    finish(agent, &command, outcome);
}

/// How long a restarted service has to be running (and healthy) again.
const RESTART_READY_CAP: Duration = Duration::from_secs(120);
/// How long Compose may take for a redeploy (pulls included).
const COMPOSE_CAP: Duration = Duration::from_secs(15 * 60);

/// Carries out a command judged `Run`: whether it worked, what to say, and
/// what goes into the outcome's `data`.
async fn carry_out(
    agent: &Agent,
    command: &Command,
    now: chrono::DateTime<Utc>,
) -> (bool, String, Value) {
    let Some(runtime) = agent.runtime() else {
        return (false, "docker engine unreachable".into(), json!({}));
    };
    match &command.op {
        Operation::ContainerRestart { service } => {
            let names = match runtime.restart_service(service).await {
                Ok(names) => names,
                Err(error) => return (false, format!("{error:#}"), json!({})),
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
                        let secs = started.elapsed().as_secs_f64();
                        return (
                            true,
                            format!(
                                "restarted {}; running again after {secs:.1} s",
                                names.join(", ")
                            ),
                            json!({"containers": names, "duration_ms": started.elapsed().as_millis() as u64}),
                        );
                    }
                    Ok(Err(why)) => last = why,
                    Err(error) => last = format!("{error:#}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (
                false,
                format!(
                    "restarted {}, but not running and healthy within {} s: {last}",
                    names.join(", "),
                    budget.as_secs()
                ),
                json!({"containers": names, "reason": "not_ready"}),
            )
        }
        Operation::Redeploy { service, compose } => {
            let Some(bundle) = compose else {
                return (
                    false,
                    format!("redeploy of {service} carries no compose files"),
                    json!({}),
                );
            };
            let dir = agent
                .config
                .layout
                .agent_deploy(&agent.config.node, &bundle.project);
            let budget = command::budget(command.deadline, now, COMPOSE_CAP);
            info!(project = %bundle.project, dir = %dir.display(), "compose up -d");
            // The bundle's Compose, else the node config's, else detected.
            let version = agent.node_config.borrow().compose;
            let outcome = compose::redeploy(&dir, bundle, version, budget).await;
            (outcome.ok, outcome.message, outcome.data)
        }
        Operation::DiskCleanup {
            keep_services,
            older_than_secs,
        } => match runtime.cleanup(keep_services, *older_than_secs).await {
            Ok(report) => {
                let bytes = report.bytes_reclaimed();
                let message = format!(
                    "reclaimed {:.1} MB: {} stopped containers removed, {} dangling images deleted, build cache pruned{}",
                    bytes as f64 / 1e6,
                    report.containers_removed.len(),
                    report.images_deleted,
                    match report.errors.len() {
                        0 => String::new(),
                        n => format!(" ({n} parts failed: {})", report.errors.join("; ")),
                    }
                );
                let mut data = serde_json::to_value(&report).expect("report serializes");
                data["bytes_reclaimed"] = json!(bytes);
                // Failed only if every part failed.
                let ok = report.errors.len() < 3 || !report.containers_removed.is_empty();
                (ok, message, data)
            }
            Err(error) => (false, format!("{error:#}"), json!({})),
        },
    }
}

/// What to do when Docker cannot be reached, from the error's text. Pure.
pub fn docker_advice(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("no such file") || e.contains("not found") {
        "the Docker socket is missing: is Docker installed and running (`systemctl status docker`)? in a container, mount it (-v /var/run/docker.sock:/var/run/docker.sock); or --docker-host"
    } else if e.contains("permission denied") {
        "this user may not use the Docker socket: add it to the docker group (or run the agent's container with the socket mounted)"
    } else if e.contains("connection refused") {
        "nothing answers at the Docker address: is the engine running, and --docker-host right?"
    } else {
        "is the engine running and --docker-host right? `homelab doctor` checks it"
    }
}

#[cfg(test)]
mod advice_tests {
    use super::docker_advice;

    #[test]
    fn docker_errors_say_what_to_do() {
        for (error, says) in [
            (
                "ping docker: error trying to connect: No such file or directory (os error 2)",
                "socket is missing",
            ),
            (
                "ping docker: Permission denied (os error 13)",
                "docker group",
            ),
            ("Connection refused (os error 111)", "nothing answers"),
            ("timed out", "homelab doctor"),
        ] {
            assert!(docker_advice(error).contains(says), "{error}");
        }
    }
}
