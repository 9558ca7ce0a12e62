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

mod checks;
mod disk_watch;
mod docker_watch;
mod execute;
mod logs;
mod node_config;
mod reporting;
mod sending;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use homelab_core::event::SOURCE_AGENT;
use homelab_core::nodeconfig::NodeConfig;
use homelab_core::{Event, Layout, Name, Severity, Topics};
use homelab_mqtt::Incoming;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use docker::{BollardRuntime, ContainerRuntime};
use homelab_core::identity;
use outbox::Outbox;

use checks::{checks_loop, tailscale_loop};
use disk_watch::disk_loop;
use docker_watch::docker_loop;
use execute::{handle_command, resume_command};
use logs::serve_logs;
use node_config::{apply_node_config, load_node_config};
use reporting::{report_status, stats_loop, status_loop};
use sending::publish_loop;

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

impl Agent {
    /// The agent of `config`, with its outbox and the node config an
    /// earlier run stored.
    fn open(config: Config) -> Result<Agent> {
        let node = config.node.clone();
        let outbox = Outbox::open(
            &config.layout.agent_dir(&node),
            node.clone(),
            config.outbox_max_bytes,
        )?;
        let stored = load_node_config(&config.layout, &node);
        let keys = match &config.identity {
            Some(identity) => Some(Keys {
                node: identity.signing_key().map_err(anyhow::Error::msg)?,
                control: identity.control_key().map_err(anyhow::Error::msg)?,
                boxed: identity.box_key().map_err(anyhow::Error::msg)?,
            }),
            None => None,
        };
        Ok(Agent {
            config,
            outbox,
            runtime: tokio::sync::watch::Sender::new(None),
            node_config: tokio::sync::watch::Sender::new(Arc::new(stored)),
            disks: Default::default(),
            tailscale: Default::default(),
            container_stats: Default::default(),
            log_streams: Default::default(),
            keys,
        })
    }
}

/// The agent's MQTT session: a persistent one (commands wait for it), its
/// Will, what it subscribes to, and its login in fleet mode.
fn mqtt_config(config: &Config) -> homelab_mqtt::Config {
    let (node, topics) = (&config.node, &config.topics);
    let mut endpoint = homelab_mqtt::Endpoint::new(&config.broker);
    if let Some(identity) = &config.identity {
        endpoint = endpoint
            .with_tls(identity.ca_pem.clone())
            .with_credentials(identity.username.clone(), identity.password.clone());
    }
    let mut mqtt_config = homelab_mqtt::Config::new(endpoint, &format!("homelab-agent-{node}"));
    mqtt_config.clean_session = false;
    mqtt_config.last_will = Some(homelab_mqtt::Will {
        topic: topics.node_status(node),
        payload: b"offline".to_vec(),
        retain: true,
    });
    mqtt_config.subscriptions = vec![
        topics.commands(node),
        topics.acks(node),
        topics.node_config(node),
        topics.logs_request(node),
    ];
    // A command is acknowledged to the broker only once it is in the
    // outbox's queue: until then the broker keeps it for this session.
    mqtt_config.acked_by_caller = vec![topics.commands(node)];
    // The link's round trips, late answers and outages, for the status.
    mqtt_config.track_link = true;
    mqtt_config.refused_hint = Some(refused_hint(node.as_str(), config.identity.is_some()));
    mqtt_config
}

/// An ack from the observer: the outbox forgets what it covers, or sends
/// again from there when it is repeated.
fn take_ack(agent: &Agent, payload: &[u8]) {
    match agent.ack_from_control(payload) {
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
        None => warn!("ack watermark refused or not a number"),
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let node = config.node.clone();
    let topics = config.topics.clone();
    let agent = Arc::new(Agent::open(config.clone())?);
    let status_topic = topics.node_status(&node);
    let mqtt_config = mqtt_config(&config);
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
                take_ack(&agent, &message.payload);
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
