//! `homelab observer`: appends every event durably to the event log, keeps
//! world state, and publishes it.
//!
//! Flow per batch of messages: validate each at the edge (size, JSON shape,
//! names, topic node = event node) → drop ids it remembers (`dedup`: a
//! day's worth, bounded) → admit each node's next `seq` only → append the
//! batch to `events/<day>/<node>/events.jsonl` and fsync each touched file
//! once → only then publish each node's ack watermark → apply to the world
//! → when idle (at least every 250 ms under load), write `world/*.json`
//! atomically and publish changed retained state.
//!
//! On start it loads its checkpoint (`checkpoint`) and replays only what the
//! log files gained since (the whole log when there is no usable one), and
//! after every CONNACK it republishes all retained state and watermarks
//! (rumqttd forgets retained messages when it restarts).
//!
//! Architecture invariant: a watermark never covers an event that is not
//! on disk.

pub mod checkpoint;
mod compaction;
pub mod dedup;
pub mod discovery;
mod edge;
pub mod ingest;
mod inventory;
mod publish;
mod recovery;
pub mod retention;
pub mod sequence;
pub mod store;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use homelab_core::world::NodeStatus;
use homelab_core::{Event, Layout, Name, Topics};
use homelab_mqtt::{Incoming, Message, Mqtt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use edge::{open_events, validate};
use homelab_core::identity;
use ingest::Ingest;
use world::World;

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: homelab_mqtt::Endpoint,
    pub layout: Layout,
    pub topics: Topics,
    /// The desired-state repo, read for the inventory (which nodes should
    /// report). Optional.
    pub repo: Option<PathBuf>,
    /// When old days of the log are compressed and removed.
    pub retention: retention::Policy,
    /// Where each stored event goes once it is on disk, for the components
    /// in the same process (`homelab up`).
    pub feed: Option<homelab_feed::Feed>,
    /// Fleet mode: what is signed and checked end to end (see
    /// `homelab_core::identity`); `None` in open mode.
    pub fleet: Option<homelab_core::fleet::Fleet>,
    /// Home Assistant MQTT discovery ([`discovery`]); `None`: off.
    pub home_assistant: Option<HomeAssistant>,
}

/// How the homelab shows itself to Home Assistant.
#[derive(Debug, Clone)]
pub struct HomeAssistant {
    /// Home Assistant's discovery prefix (its default: `homeassistant`).
    pub prefix: String,
    /// Approve and reject buttons for pending actions: only where approvals
    /// over MQTT are taken (open mode), and only when asked.
    pub buttons: bool,
    /// The discovery form (device configs unless asked otherwise).
    pub form: discovery::Form,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        HomeAssistant {
            prefix: "homeassistant".into(),
            buttons: false,
            form: discovery::Form::Device,
        }
    }
}

struct Observer {
    config: Config,
    /// Which events are stored and which acks follow ([`ingest`]).
    ingest: Ingest,
    /// The event log's files ([`store`]).
    log: store::DiskLog,
    /// Every log file's size as of the events applied, for the checkpoint.
    sizes: BTreeMap<PathBuf, u64>,
    /// Events stored since the last checkpoint.
    unsaved: bool,
    /// The world files as last written.
    written: HashMap<PathBuf, Vec<u8>>,
    /// Events replayed at start, and whether from the checkpoint.
    recovered: (usize, bool),
    world: World,
    /// The inventory: which nodes should report, under which aliases.
    inventory: homelab_core::desired::Topology,
    /// Monitored services per canonical node: which should be running.
    desired: world::DesiredServices,
    /// The last desired state read, good parts kept across bad files.
    last_desired: Option<homelab_core::desired::Desired>,
    /// Problems of the repo as incidents, one per node (or `repo`).
    repo_problems: Vec<homelab_core::world::Incident>,
    /// The git source's desired commit as last shown (the summary says it).
    desired_view: Option<homelab_core::repo::DesiredView>,
    maintenance: Vec<homelab_core::maintenance::Window>,
    /// The incidents last written, to notice when time alone changes them
    /// (an alert expires, a maintenance window opens).
    last_incidents: Vec<homelab_core::world::Incident>,
    /// Incidents that closed (`world/incident_history.json`).
    history: Vec<homelab_core::world::ResolvedIncident>,
    /// Time per state of each node and service, fed by the incidents that
    /// close (`world/status_history.json`, [`homelab_core::uptime`]).
    status_history: Vec<homelab_core::uptime::Track>,
    started: chrono::DateTime<Utc>,
    published: HashMap<String, String>,
}

/// What a start found: for benchmarks and tools.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Events read from the log (all of it, or what followed the checkpoint).
    pub events: usize,
    pub from_checkpoint: bool,
    pub ids: usize,
    pub nodes: usize,
}

/// Recovers from the checkpoint and the log as a start does (writing a new
/// checkpoint), and says what it took.
pub fn recover(config: Config) -> Result<Recovery> {
    let observer = Observer::recover(config)?;
    Ok(Recovery {
        events: observer.recovered.0,
        from_checkpoint: observer.recovered.1,
        ids: observer.ingest.ids().len(),
        nodes: observer.world.nodes.len(),
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let mut observer = Observer::recover(config.clone())?;
    let topics = config.topics.clone();
    let mut mqtt_config = homelab_mqtt::Config::new(&config.broker, "homelab-observer");
    mqtt_config.clean_session = false;
    mqtt_config.subscriptions = vec![
        topics.events_all(),
        topics.node_status_all(),
        // Action changes change the summary (and the buttons).
        topics.actions_all(),
    ];
    if let Some(ha) = &config.home_assistant {
        // Home Assistant coming back asks for the configs again; the
        // retained configs under our node id tell which are left over.
        let topics = homelab_core::topics::Discovery::new(&ha.prefix);
        mqtt_config.subscriptions.push(topics.status());
        mqtt_config.subscriptions.push(topics.configs_all());
    }
    let (mqtt, mut incoming) = homelab_mqtt::connect(mqtt_config)?;

    // World files are written as soon as the observer is idle (nothing more
    // waiting on the connection) and at least every `FLUSH_UNDER_LOAD`
    // while messages keep coming: no fixed delay after a change.
    let mut flush_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut flushed = tokio::time::Instant::now();
    let mut checkpointed = tokio::time::Instant::now();
    let mut inventory_tick = tokio::time::interval(Duration::from_secs(10));
    // Retention at start, then hourly.
    let mut retention_tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let flush = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = retention_tick.tick() => {
                if let Err(error) = observer.retention(Utc::now().date_naive()) {
                    warn!(error = format!("{error:#}"), "event log retention failed; trying again in an hour");
                }
            }
            _ = inventory_tick.tick() => {
                if observer.unsaved && checkpointed.elapsed() >= checkpoint::CHECKPOINT_EVERY {
                    checkpointed = tokio::time::Instant::now();
                    if let Err(error) = observer.save_checkpoint() {
                        warn!(error = format!("{error:#}"), "observer checkpoint not written");
                    }
                }
                if observer.load_inventory() || observer.incidents(Utc::now()) != observer.last_incidents {
                    flush_at.get_or_insert_with(tokio::time::Instant::now);
                }
            }
            _ = flush => {
                flush_at = None;
                flushed = tokio::time::Instant::now();
                if let Err(error) = observer.flush_world(&mqtt).await {
                    warn!(error = format!("{error:#}"), "world state not written");
                }
            }
            message = incoming.recv() => {
                let Some(first) = message else { break };
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match incoming.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                match observer.handle(batch, &mqtt).await {
                    Ok(true) => {
                        let now = tokio::time::Instant::now();
                        let at = if incoming.is_empty() { now } else { flushed + FLUSH_UNDER_LOAD };
                        let at = flush_at.map_or(at, |due| due.min(at));
                        flush_at = Some(at);
                    }
                    Ok(false) => {}
                    // The watermark has moved on in memory: stop, and let a
                    // restart recover from what is on disk.
                    Err(error) => {
                        mqtt.close().await;
                        return Err(error.context("events not stored"));
                    }
                }
            }
        }
    }
    let _ = observer.flush_world(&mqtt).await;
    if observer.unsaved {
        if let Err(error) = observer.save_checkpoint() {
            warn!(
                error = format!("{error:#}"),
                "observer checkpoint not written"
            );
        }
    }
    mqtt.close().await;
    info!("observer stopped");
    Ok(())
}

/// What a message on the observer's subscriptions is about.
#[derive(Debug, PartialEq)]
enum Route {
    /// Home Assistant's status (`online` when it starts).
    HomeAssistantStatus,
    /// A discovery config under our node id (retained from before).
    HomeAssistantConfig,
    /// An action changed (the summary and the buttons show actions).
    Action,
    NodeStatus(Result<Name, homelab_core::NameError>),
    Events(Result<Name, homelab_core::NameError>),
    Other,
}

/// Where a message goes, by its topic; Home Assistant's topics only when
/// discovery is on (`ha_prefix`).
fn route(topics: &Topics, ha_prefix: Option<&str>, topic: &str) -> Route {
    if let Some(prefix) = ha_prefix {
        if topic == homelab_core::topics::Discovery::new(prefix).status() {
            return Route::HomeAssistantStatus;
        }
        if discovery::is_ours(prefix, topic) {
            return Route::HomeAssistantConfig;
        }
    }
    if topics.parse_action(topic).is_some() {
        Route::Action
    } else if let Some(node) = topics.parse_node_status(topic) {
        Route::NodeStatus(node)
    } else if let Some(node) = topics.parse_events(topic) {
        Route::Events(node)
    } else {
        Route::Other
    }
}

/// While messages keep coming, world files are written at least this
/// often.
const FLUSH_UNDER_LOAD: Duration = Duration::from_millis(250);

impl Observer {
    /// Stores a batch; returns whether the world may have changed.
    async fn handle(&mut self, batch: Vec<Incoming>, mqtt: &Mqtt) -> Result<bool> {
        let topics = self.config.topics.clone();
        // Fleet mode: the enrolled nodes' keys, read once per batch.
        let enrolled = self.config.fleet.as_ref().map(|fleet| fleet.nodes());
        let mut arrived = Vec::new();
        let mut changed = false;
        for item in batch {
            match item {
                Incoming::Connected { .. } => {
                    // Subscribed (again): announce every watermark. The
                    // broker may have forgotten them, and an agent that
                    // sent while nobody listened takes its repeated
                    // watermark as the cue to send again at once.
                    self.published.clear();
                    for (node, sequence) in self.ingest.sequences() {
                        mqtt.publish(
                            &topics.acks(node),
                            self.ack(node, sequence.watermark()),
                            true,
                        )
                        .await?;
                    }
                    changed = true;
                }
                Incoming::Disconnected => {}
                Incoming::Message(message) => {
                    let prefix = self.config.home_assistant.as_ref().map(|ha| &ha.prefix[..]);
                    match route(&topics, prefix, &message.topic) {
                        Route::HomeAssistantStatus => {
                            // Home Assistant (re)started: every config again.
                            if message.payload.as_ref() as &[u8] == b"online" {
                                let discovery =
                                    homelab_core::topics::Discovery::new(prefix.unwrap_or(""));
                                self.published.retain(|topic, _| !discovery.covers(topic));
                                changed = true;
                            }
                        }
                        Route::HomeAssistantConfig => {
                            // A config retained from before (another run):
                            // known now, so it is cleared if no longer wanted.
                            if !message.payload.is_empty()
                                && !self.published.contains_key(&message.topic)
                            {
                                self.published.insert(
                                    message.topic.clone(),
                                    String::from_utf8_lossy(&message.payload).into_owned(),
                                );
                                changed = true;
                            }
                        }
                        Route::Action => changed = true,
                        Route::NodeStatus(node) => changed |= self.node_status(node, &message),
                        Route::Events(node) => {
                            metrics::counter!("homelab_events_received_total").increment(1);
                            arrived.push((node, message));
                        }
                        Route::Other => {}
                    }
                }
            }
        }
        // Fleet mode: every signature of the batch checked at once.
        let opened = blocking(|| open_events(&arrived, enrolled.as_deref()));
        let events: Vec<Event> = arrived
            .iter()
            .zip(opened)
            .filter_map(|((node, message), payload)| validate(node, message, payload?))
            .collect();
        if events.is_empty() {
            return Ok(changed);
        }
        debug!(events = events.len(), "batch received");
        let effects = self.ingest.receive(events, Utc::now());
        metrics::counter!("homelab_events_duplicate_total", "by" => "id")
            .increment(effects.duplicates_by_id);
        metrics::counter!("homelab_events_duplicate_total", "by" => "seq")
            .increment(effects.duplicates_by_seq);
        metrics::counter!("homelab_events_out_of_order_total").increment(effects.early);
        let stages = ingest::stages(&effects.append, &self.config.layout)?;
        let sizes = blocking(|| ingest::store(&mut self.log, &stages))?;
        self.sizes.extend(sizes);
        metrics::counter!("homelab_events_stored_total").increment(effects.append.len() as u64);
        debug!(stored = effects.append.len(), "batch on disk");
        for event in &effects.append {
            self.world.apply(event);
        }
        let stored_any = !effects.append.is_empty();
        self.unsaved |= stored_any;
        if let Some(feed) = &self.config.feed {
            for event in effects.append {
                // No receiver (yet) is fine: they start from the log.
                let _ = feed.send(std::sync::Arc::new(event));
            }
        }
        if effects.filled {
            // The log does not say so: the checkpoint must, before the ack.
            self.save_checkpoint()?;
        }
        // Only now that the events are on disk.
        for (node, mark) in effects.acks {
            mqtt.publish(&topics.acks(&node), self.ack(&node, mark), true)
                .await?;
        }
        Ok(changed || stored_any)
    }

    /// The ack payload: the decimal watermark, and in fleet mode its
    /// signature for this node (`identity::seal_text`), so no other client
    /// can make an agent drop events the log does not have.
    fn ack(&self, node: &Name, mark: u64) -> String {
        match &self.config.fleet {
            Some(fleet) => identity::seal_text(
                &mark.to_string(),
                node.as_str(),
                identity::Context::Ack,
                fleet.signing_key(),
            ),
            None => mark.to_string(),
        }
    }

    fn node_status(
        &mut self,
        node: Result<Name, homelab_core::NameError>,
        message: &Message,
    ) -> bool {
        let node = match node {
            Ok(node) => node,
            Err(error) => {
                warn!(topic = %message.topic, %error, "status for a bad node name ignored");
                metrics::counter!("homelab_status_rejected_total", "reason" => "bad_name")
                    .increment(1);
                return false;
            }
        };
        let status = match &message.payload[..] {
            b"online" => NodeStatus::Online,
            b"offline" => NodeStatus::Offline,
            // An empty retained message clears the topic; nothing to learn.
            b"" => return false,
            _ => {
                warn!(topic = %message.topic, "status payload must be online or offline");
                metrics::counter!("homelab_status_rejected_total", "reason" => "malformed")
                    .increment(1);
                return false;
            }
        };
        self.world.set_status(&node, status, Utc::now());
        true
    }
}

/// Runs blocking file work (writes, fsync) without stalling the async
/// scheduler: a task blocked in fsync would otherwise hold back the MQTT
/// task parked behind it on the same worker (measured: 3x slower ingestion).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_each_message_goes() {
        let topics = Topics::default();
        let node = |n: &str| Ok(Name::parse(n).unwrap());
        let cases: [(Option<&str>, &str, Route); 8] = [
            (None, "homelab/events/edge", Route::Events(node("edge"))),
            (
                None,
                "homelab/nodes/edge/status",
                Route::NodeStatus(node("edge")),
            ),
            (None, "homelab/actions/abc123", Route::Action),
            (None, "homeassistant/status", Route::Other),
            (
                Some("homeassistant"),
                "homeassistant/status",
                Route::HomeAssistantStatus,
            ),
            (
                Some("homeassistant"),
                "homeassistant/device/homelab/summary/config",
                Route::HomeAssistantConfig,
            ),
            (Some("ha"), "homeassistant/status", Route::Other),
            (Some("homeassistant"), "homelab/state/summary", Route::Other),
        ];
        for (prefix, topic, want) in cases {
            assert_eq!(
                route(&topics, prefix, topic),
                want,
                "{topic} with {prefix:?}"
            );
        }
        assert!(matches!(
            route(&topics, None, "homelab/events/Bad Name"),
            Route::Events(Err(_))
        ));
    }
}
