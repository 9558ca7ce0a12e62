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
pub mod dedup;
pub mod discovery;
pub mod retention;
pub mod sequence;
pub mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use homelab_core::world::{NodeStatus, Summary};
use homelab_core::{
    desired, eventlog, fsutil, ActionStore, Event, EventError, Layout, Name, Topics,
};
use homelab_mqtt::{Incoming, Message, Mqtt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use homelab_core::identity;
use sequence::{Admit, Sequence};
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
    ids: dedup::RecentIds,
    /// Every log file's size as of the events applied, for the checkpoint.
    sizes: BTreeMap<PathBuf, u64>,
    /// Events stored since the last checkpoint.
    unsaved: bool,
    /// The world files as last written.
    written: HashMap<PathBuf, Vec<u8>>,
    /// Events replayed at start, and whether from the checkpoint.
    recovered: (usize, bool),
    sequences: BTreeMap<Name, Sequence>,
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
    open_files: HashMap<PathBuf, File>,
    /// Nodes that sent an event ahead of a missing one in the current
    /// batch: their watermark is repeated, asking the agent to resend.
    early: BTreeSet<Name>,
    /// Nodes that sent a copy of a stored event in the current batch.
    duplicates: BTreeSet<Name>,
    /// When each node's ack was last published.
    acked_at: HashMap<Name, std::time::Instant>,
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
        ids: observer.ids.len(),
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

/// The repo's problems as incidents: one per host they concern (named by
/// the host's folder), and one `repo_problem:repo` for the rest; the
/// message lists each as `file:line: problem`, relative to the repo.
fn repo_problems(
    repo: &std::path::Path,
    problems: &[desired::Problem],
    now: chrono::DateTime<Utc>,
) -> Vec<homelab_core::world::Incident> {
    let repo_node = Name::parse("repo").expect("a valid name");
    let mut by_node: BTreeMap<Name, Vec<String>> = BTreeMap::new();
    for problem in problems {
        let relative = problem.path.strip_prefix(repo).unwrap_or(&problem.path);
        let node = match relative.components().collect::<Vec<_>>()[..] {
            [first, host, ..] if first.as_os_str() == "hosts" => {
                Name::parse(&host.as_os_str().to_string_lossy()).unwrap_or(repo_node.clone())
            }
            _ => repo_node.clone(),
        };
        let shown = desired::Problem {
            path: relative.to_path_buf(),
            ..problem.clone()
        };
        by_node.entry(node).or_default().push(shown.to_string());
    }
    by_node
        .into_iter()
        .map(|(node, lines)| homelab_core::world::Incident {
            id: format!("repo_problem:{node}"),
            kind: homelab_core::world::REPO_PROBLEM.into(),
            node,
            service: None,
            severity: homelab_core::Severity::Error,
            message: lines.join("\n"),
            // The caller keeps the first time while the problem lasts.
            opened_at: now,
            count: Some(lines.len() as u64),
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        })
        .collect()
}

/// A JSON file of the root, or the default when it is absent or does not
/// parse (said in the log).
fn read_or_default<T: serde::de::DeserializeOwned + Default>(path: &std::path::Path) -> T {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            warn!(path = %path.display(), %error, "unreadable; starting from nothing");
            T::default()
        }),
        Err(_) => T::default(),
    }
}

/// While messages keep coming, world files are written at least this
/// often.
const FLUSH_UNDER_LOAD: Duration = Duration::from_millis(250);

fn reject(topic: &str, reason: &'static str, error: &dyn std::fmt::Display) {
    warn!(topic, reason, %error, "event rejected");
    metrics::counter!("homelab_events_rejected_total", "reason" => reason).increment(1);
}

impl Observer {
    fn recover(config: Config) -> Result<Observer> {
        let mut observer = Observer {
            config,
            ids: dedup::RecentIds::default(),
            sizes: BTreeMap::new(),
            unsaved: false,
            written: HashMap::new(),
            recovered: (0, false),
            sequences: BTreeMap::new(),
            world: World::default(),
            inventory: Default::default(),
            desired: Default::default(),
            last_desired: None,
            repo_problems: Vec::new(),
            desired_view: None,
            maintenance: Vec::new(),
            last_incidents: Vec::new(),
            history: Vec::new(),
            status_history: Vec::new(),
            started: Utc::now(),
            published: HashMap::new(),
            open_files: HashMap::new(),
            early: BTreeSet::new(),
            duplicates: BTreeSet::new(),
            acked_at: HashMap::new(),
        };
        observer
            .world
            .set_signed_events(observer.config.fleet.is_some());
        let layout = observer.config.layout.clone();
        let (count, bad, from_checkpoint) = observer.replay_log(&layout)?;
        observer.recovered = (count, from_checkpoint);
        for line in &bad {
            warn!(path = %line.path.display(), line = line.line, error = %line.error, "unreadable event log line skipped");
        }
        metrics::counter!("homelab_eventlog_bad_lines_total").increment(bad.len() as u64);
        observer.ids.expire(Utc::now());
        // What was open and what closed when the last run wrote them: an
        // incident that closed while this one was down closes at its first
        // write.
        observer.history = read_or_default(&layout.world_incident_history());
        observer.status_history = read_or_default(&layout.world_status_history());
        observer.last_incidents = read_or_default(&layout.world_incidents());
        observer.load_inventory();
        info!(
            events = count,
            from_checkpoint,
            ids = observer.ids.len(),
            bad_lines = bad.len(),
            nodes = observer.world.nodes.len(),
            "observer recovered from event log"
        );
        if !from_checkpoint || count > 0 {
            // The next start need not read it all again.
            observer.save_checkpoint()?;
        }
        Ok(observer)
    }

    /// Rebuilds what the observer knows from the log: from the checkpoint
    /// and what the files gained since, or else the whole log. Returns the
    /// events replayed, the unreadable lines, and whether the checkpoint
    /// was used.
    fn replay_log(&mut self, layout: &Layout) -> Result<(usize, Vec<eventlog::BadLine>, bool)> {
        let mut count = 0usize;
        let mut bad = Vec::new();
        let on_disk = eventlog::files(layout)?;
        let checkpoint = match std::fs::read(layout.observer_checkpoint()) {
            Ok(bytes) => match serde_json::from_slice::<checkpoint::Checkpoint>(&bytes) {
                Ok(c) if c.usable() => Some(c),
                Ok(_) | Err(_) => {
                    warn!(path = %layout.observer_checkpoint().display(), "observer checkpoint unreadable; replaying the whole log");
                    None
                }
            },
            Err(_) => None,
        };
        let tails = checkpoint
            .as_ref()
            .and_then(|c| checkpoint::tails(&c.files, &on_disk, layout.root()));
        if tails.is_none() && checkpoint.is_some() {
            warn!("the event log changed behind the checkpoint; replaying the whole log");
        }
        let (tails, from_checkpoint) = match (checkpoint, tails) {
            (Some(c), Some(tails)) => {
                self.world = c.world;
                self.world.set_signed_events(self.config.fleet.is_some());
                self.sequences = c.sequences;
                for (secs, id) in c.ids {
                    let at = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
                    self.ids.insert(&id, at);
                }
                (tails, true)
            }
            _ => (on_disk.iter().map(|(p, _)| (p.clone(), 0)).collect(), false),
        };
        for (path, from) in tails {
            eventlog::read_file_from(
                &path,
                from,
                |event| {
                    count += 1;
                    self.replay(&event);
                },
                &mut bad,
            )?;
        }
        self.sizes = on_disk.into_iter().collect();
        Ok((count, bad, from_checkpoint))
    }

    /// Compresses and removes old days of the log (see `retention`).
    fn retention(&mut self, today: chrono::NaiveDate) -> Result<()> {
        let layout = self.config.layout.clone();
        let mut days = Vec::new();
        for day in eventlog::days(&layout)? {
            let date: chrono::NaiveDate = day.parse().context("day folder")?;
            let plain = eventlog::day_files(&layout, &day)?
                .iter()
                .any(|(_, path)| !eventlog::is_compressed(path));
            days.push((date, plain));
        }
        for step in retention::plan(&days, today, self.config.retention) {
            match step {
                retention::Step::Compress(day) => {
                    let folder = day.format("%Y-%m-%d").to_string();
                    let nodes: BTreeSet<Name> = eventlog::day_files(&layout, &folder)?
                        .into_iter()
                        .filter(|(_, path)| !eventlog::is_compressed(path))
                        .map(|(node, _)| node)
                        .collect();
                    for node in nodes {
                        self.compress(day, &node)?;
                    }
                    metrics::counter!("homelab_eventlog_days_compressed_total").increment(1);
                    info!(%day, "event log day compressed");
                }
                retention::Step::Remove(day) => {
                    let dir = layout.events_dir().join(day.format("%Y-%m-%d").to_string());
                    self.open_files.retain(|path, _| !path.starts_with(&dir));
                    blocking(|| std::fs::remove_dir_all(&dir))
                        .with_context(|| format!("remove {}", dir.display()))?;
                    fsutil::sync_dir(&layout.events_dir())?;
                    self.sizes.retain(|path, _| !path.starts_with(&dir));
                    self.unsaved = true;
                    metrics::counter!("homelab_eventlog_days_removed_total").increment(1);
                    info!(%day, "event log day removed (older than the retention)");
                }
            }
        }
        Ok(())
    }

    /// Folds a node's plain log of `day` into its compressed one: the lines
    /// already compressed, then the plain ones whose id is not among them.
    /// The `.zst` is written durably and recorded in the checkpoint before
    /// the plain file goes, so a crash in between duplicates nothing.
    fn compress(&mut self, day: chrono::NaiveDate, node: &Name) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let layout = &self.config.layout;
        let plain = layout.event_log(day, node);
        let zst = layout.event_log_compressed(day, node);
        self.open_files.remove(&plain);
        let mut lines: Vec<u8> = Vec::new();
        let mut ids = HashSet::new();
        if zst.exists() {
            let file = File::open(&zst).with_context(|| format!("open {}", zst.display()))?;
            lines =
                zstd::decode_all(file).with_context(|| format!("decompress {}", zst.display()))?;
            for line in lines.split(|b| *b == b'\n') {
                if let Ok(Id { id }) = serde_json::from_slice(line) {
                    ids.insert(id);
                }
            }
        }
        let text = std::fs::read(&plain).with_context(|| format!("read {}", plain.display()))?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let known = serde_json::from_slice::<Id>(line).is_ok_and(|Id { id }| ids.contains(&id));
            if !known {
                lines.extend_from_slice(line);
                lines.push(b'\n');
            }
        }
        let compressed = blocking(|| -> Result<Vec<u8>> {
            let compressed = zstd::encode_all(&lines[..], 3).context("compress")?;
            fsutil::write_atomic(&zst, &compressed)?;
            Ok(compressed)
        })?;
        self.sizes.insert(zst, compressed.len() as u64);
        self.save_checkpoint()?;
        std::fs::remove_file(&plain).with_context(|| format!("remove {}", plain.display()))?;
        if let Some(dir) = plain.parent() {
            fsutil::sync_dir(dir)?;
        }
        self.sizes.remove(&plain);
        self.unsaved = true;
        Ok(())
    }

    /// Writes the checkpoint (see `checkpoint`): only between batches, when
    /// what is applied and what is on disk agree.
    fn save_checkpoint(&mut self) -> Result<()> {
        let layout = &self.config.layout;
        let files = self
            .sizes
            .iter()
            .map(|(path, len)| {
                let relative = path.strip_prefix(layout.root()).unwrap_or(path);
                (relative.to_path_buf(), *len)
            })
            .collect();
        let ids = self
            .ids
            .entries()
            .map(|(at, id)| (at.timestamp(), id.clone()))
            .collect();
        let checkpoint =
            checkpoint::Checkpoint::new(self.world.clone(), self.sequences.clone(), ids, files);
        let path = layout.observer_checkpoint();
        blocking(|| fsutil::write_json_atomic(&path, &checkpoint))
            .with_context(|| format!("write {}", path.display()))?;
        self.unsaved = false;
        Ok(())
    }

    /// An event read back from the log at start.
    fn replay(&mut self, event: &Event) {
        if !self.ids.insert(&event.id, event.ts) {
            return;
        }
        self.sequences
            .entry(event.node.clone())
            .or_default()
            .replay(event);
        self.world.apply(event);
    }

    /// Reloads the desired state (inventory, desired services, windows);
    /// true if what the observer uses of it changed. A bad file spoils
    /// only what it describes; its problems become incidents.
    fn load_inventory(&mut self) -> bool {
        let Some(configured) = &self.config.repo else {
            return false;
        };
        // A git source: its live commit's tree (resolved once, so one load
        // reads one commit), and the sync's own incidents.
        let git = configured == &self.config.layout.repo_live();
        let repo = &homelab_core::repo::resolve(configured);
        let status = git
            .then(|| homelab_core::repo::RepoStatus::read(&self.config.layout))
            .flatten();
        let mut problems = status
            .as_ref()
            .map(|status| homelab_core::world::repo_incidents(status, Utc::now()))
            .unwrap_or_default();
        // Every look moves `fetched_at`: only what the summary shows of the
        // commit counts as a change.
        let view = status.as_ref().map(|s| homelab_core::repo::DesiredView {
            fetched_at: None,
            ..homelab_core::repo::DesiredView::of(s)
        });
        let moved = view != self.desired_view;
        self.desired_view = view;
        if git && !repo.exists() {
            // Nothing is live yet (the first fetch has not worked).
            for problem in &mut problems {
                if let Some(old) = self.repo_problems.iter().find(|o| o.id == problem.id) {
                    problem.opened_at = old.opened_at;
                }
            }
            let changed = problems != self.repo_problems || moved;
            self.repo_problems = problems;
            return changed;
        }
        let loaded = desired::load_partial(repo);
        problems.extend(repo_problems(repo, &loaded.problems, Utc::now()));
        for problem in &mut problems {
            if let Some(old) = self.repo_problems.iter().find(|o| o.id == problem.id) {
                problem.opened_at = old.opened_at;
            }
        }
        let mut changed = problems != self.repo_problems || moved;
        if problems != self.repo_problems {
            for problem in &loaded.problems {
                warn!(%problem, "desired state has a problem; what it describes keeps its last good state");
            }
        }
        self.repo_problems = problems;
        let last = self.last_desired.take();
        let Some(desired) = loaded.or_last_good(last.as_ref()) else {
            return changed;
        };
        let services: world::DesiredServices = desired
            .hosts
            .iter()
            .map(|(node, services)| {
                let monitored = services
                    .iter()
                    .filter(|(_, spec)| spec.monitor)
                    .map(|(name, _)| name.clone())
                    .collect();
                (node.clone(), monitored)
            })
            .collect();
        changed |= desired.topology != self.inventory
            || desired.maintenance != self.maintenance
            || services != self.desired;
        self.inventory = desired.topology.clone();
        self.maintenance = desired.maintenance.clone();
        self.desired = services;
        self.last_desired = Some(desired);
        changed
    }

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
                    for (node, sequence) in &self.sequences {
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
                    if let Some(ha) = &self.config.home_assistant {
                        let discovery = homelab_core::topics::Discovery::new(&ha.prefix);
                        if message.topic == discovery.status() {
                            // Home Assistant (re)started: every config again.
                            if message.payload.as_ref() as &[u8] == b"online" {
                                self.published.retain(|topic, _| !discovery.covers(topic));
                                changed = true;
                            }
                            continue;
                        }
                        if discovery::is_ours(&ha.prefix, &message.topic) {
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
                            continue;
                        }
                    }
                    if topics.parse_action(&message.topic).is_some() {
                        changed = true;
                    } else if let Some(node) = topics.parse_node_status(&message.topic) {
                        changed |= self.node_status(node, &message);
                    } else if let Some(node) = topics.parse_events(&message.topic) {
                        metrics::counter!("homelab_events_received_total").increment(1);
                        arrived.push((node, message));
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
        let before: BTreeMap<Name, u64> = events
            .iter()
            .map(|e| (e.node.clone(), self.watermark(&e.node)))
            .collect();
        debug!(events = events.len(), "batch received");
        let stored = blocking(|| self.append(events))?;
        debug!(stored = stored.len(), "batch on disk");
        let now = Utc::now();
        for event in &stored {
            self.ids.insert(&event.id, now);
            self.world.apply(event);
        }
        let stored_any = !stored.is_empty();
        if let Some(feed) = &self.config.feed {
            for event in stored {
                // No receiver (yet) is fine: they start from the log.
                let _ = feed.send(std::sync::Arc::new(event));
            }
        }
        self.ids.expire(now);
        self.unsaved |= stored_any;
        // See `sequence::publish_ack`: when a watermark moved, when an
        // event came early, and when a duplicate says the ack was lost.
        let early = std::mem::take(&mut self.early);
        let duplicates = std::mem::take(&mut self.duplicates);
        let now = std::time::Instant::now();
        for (node, before) in before {
            let mark = self.watermark(&node);
            let cue = sequence::AckCue {
                moved: mark != before,
                early: early.contains(&node),
                duplicate: duplicates.contains(&node),
            };
            let since = self.acked_at.get(&node).map(|at| now.duration_since(*at));
            if sequence::publish_ack(cue, since) {
                mqtt.publish(&topics.acks(&node), self.ack(&node, mark), true)
                    .await?;
                self.acked_at.insert(node, now);
            }
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

    fn watermark(&self, node: &Name) -> u64 {
        self.sequences
            .get(node)
            .map(Sequence::watermark)
            .unwrap_or(0)
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

    /// Appends new events, fsyncing each touched file once. Returns those
    /// that were not duplicates, now on disk.
    fn append(&mut self, events: Vec<Event>) -> Result<Vec<Event>> {
        let mut fresh = Vec::new();
        // Ids stored by this batch. Only an id that is on disk (before or
        // in this batch) makes a later copy a duplicate that fills its
        // slot: a copy that arrived ahead of a missing event was not
        // stored, and its resent twin in the same batch must be.
        let mut batch_ids = HashSet::new();
        let now = Utc::now();
        for event in events {
            let sequence = self.sequences.entry(event.node.clone()).or_default();
            if self.ids.contains(&event.id) || batch_ids.contains(&event.id) {
                debug!(id = %event.id, "duplicate event dropped");
                metrics::counter!("homelab_events_duplicate_total", "by" => "id").increment(1);
                sequence.fill(event.seq);
                if event.seq != 0 {
                    self.duplicates.insert(event.node.clone());
                }
                continue;
            }
            // Unsequenced (seq 0: an alert, a script's event): stored once
            // by id, outside the node's order and watermark.
            if event.seq == 0 {
                batch_ids.insert(event.id.clone());
                fresh.push(event);
                continue;
            }
            match sequence.admit(&event, now) {
                Admit::Store => {
                    batch_ids.insert(event.id.clone());
                    fresh.push(event)
                }
                Admit::Behind => {
                    debug!(node = %event.node, seq = event.seq, id = %event.id, "seq behind the watermark; dropped");
                    metrics::counter!("homelab_events_duplicate_total", "by" => "seq").increment(1);
                    self.duplicates.insert(event.node.clone());
                }
                Admit::Early => {
                    debug!(node = %event.node, seq = event.seq, "ahead of a missing seq; left for the resend");
                    metrics::counter!("homelab_events_out_of_order_total").increment(1);
                    self.early.insert(event.node.clone());
                }
            }
        }
        // One write and one fsync per touched file and batch.
        let mut lines: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        for event in &fresh {
            let path = self
                .config
                .layout
                .event_log(event.ts.date_naive(), &event.node);
            let buffer = lines.entry(path).or_default();
            serde_json::to_writer(&mut *buffer, event).context("serialize event")?;
            buffer.push(b'\n');
        }
        let mut touched: BTreeMap<PathBuf, bool> = BTreeMap::new();
        for (path, buffer) in lines {
            let new_file = !self.open_files.contains_key(&path) && !path.exists();
            if !self.open_files.contains_key(&path) {
                let file = open_log(&path)?;
                self.open_files.insert(path.clone(), file);
            }
            let file = self.open_files.get_mut(&path).expect("file just opened");
            file.write_all(&buffer)
                .with_context(|| format!("append events to {}", path.display()))?;
            let len = file
                .metadata()
                .with_context(|| format!("stat {}", path.display()))?
                .len();
            self.sizes.insert(path.clone(), len);
            touched.insert(path, new_file);
        }
        for (path, new_file) in touched {
            self.open_files[&path]
                .sync_data()
                .with_context(|| format!("fsync {}", path.display()))?;
            if new_file {
                // The file's directory entry must be durable too.
                if let Some(dir) = path.parent() {
                    fsutil::sync_dir(dir)?;
                    if let Some(day) = dir.parent() {
                        fsutil::sync_dir(day)?;
                    }
                }
            }
        }
        // Keep only today's files open; older days receive late events rarely.
        if self.open_files.len() > 256 {
            self.open_files.clear();
        }
        metrics::counter!("homelab_events_stored_total").increment(fresh.len() as u64);
        Ok(fresh)
    }

    /// Open incidents at `now`, each marked with the maintenance window
    /// that covers it.
    fn incidents(&self, now: chrono::DateTime<Utc>) -> Vec<homelab_core::world::Incident> {
        let mut incidents = self
            .world
            .incidents(&self.inventory, &self.desired, self.started, now);
        incidents.extend(self.repo_problems.iter().cloned());
        for (node, sequence) in &self.sequences {
            if let Some(since) = sequence.stalled(now) {
                incidents.push(homelab_core::world::Incident {
                    id: format!("delivery_stalled:{node}"),
                    kind: "delivery_stalled".into(),
                    node: node.clone(),
                    service: None,
                    severity: homelab_core::Severity::Warning,
                    message: format!(
                        "later events wait for seq {}, which has not arrived; the agent is asked to send it again",
                        sequence.watermark() + 1
                    ),
                    opened_at: since,
                    count: None,
                    last_seen: None,
                    maintenance: None,
                    noticed_at: None,
                });
            }
        }
        for incident in &mut incidents {
            let node = self.inventory.canonical(&incident.node);
            incident.maintenance = homelab_core::maintenance::active(
                &self.maintenance,
                &node,
                incident.service.as_ref(),
                now,
            );
        }
        incidents
    }

    /// What Home Assistant is shown: the inventory's nodes and those that
    /// reported (under the name their agent uses), the monitored services,
    /// the pending actions.
    fn discovery_inputs(
        &self,
        open: &[homelab_core::Action],
        ha: &HomeAssistant,
    ) -> discovery::Inputs {
        let mut nodes: BTreeMap<Name, Name> = self
            .inventory
            .nodes
            .keys()
            .map(|n| (n.clone(), n.clone()))
            .collect();
        for reported in self.world.nodes.keys() {
            let canonical = self.inventory.canonical(reported);
            // Its own name wins over an alias it was also seen under.
            if canonical == *reported || !self.world.nodes.contains_key(&canonical) {
                nodes.insert(canonical, reported.clone());
            }
        }
        discovery::Inputs {
            nodes,
            services: self.desired.clone(),
            pending: open
                .iter()
                .filter(|a| a.state == homelab_core::ActionState::Pending)
                .map(|a| (a.id.clone(), a.node.clone()))
                .collect(),
            buttons: ha.buttons,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    async fn flush_world(&mut self, mqtt: &Mqtt) -> Result<()> {
        debug!("writing world state");
        if self.config.repo.is_some() {
            let (inventory, desired) = (&self.inventory, &self.desired);
            self.world.forget_missing(|node, service| {
                desired
                    .get(&inventory.canonical(node))
                    .is_some_and(|s| s.contains(service))
            });
        }
        let layout = &self.config.layout;
        let topics = &self.config.topics;
        let nodes: Vec<_> = self.world.nodes.values().cloned().collect();
        let services: Vec<_> = self.world.services.values().cloned().collect();
        let now = Utc::now();
        let mut incidents = self.incidents(now);
        homelab_core::world::noticed(&mut incidents, &self.last_incidents, now);
        // Closed at the events' own times, also what opened and ended
        // between two writes (a replayed backlog).
        let ended = self.world.take_closed();
        let world = &self.world;
        let closed = homelab_core::world::closed_between(
            &self.last_incidents,
            &incidents,
            ended,
            |incident| match incident.kind.as_str() {
                "node_offline" => world
                    .nodes
                    .get(&incident.node)
                    .filter(|n| n.status == homelab_core::world::NodeStatus::Online)
                    .map(|n| n.since),
                _ => None,
            },
            now,
        );
        let mut closed = homelab_core::world::not_yet_in(closed, &self.history);
        // One that began and ended between two writes is known from now.
        for c in &mut closed {
            c.incident.noticed_at.get_or_insert(now);
        }
        self.last_incidents = incidents.clone();
        // Only files whose content changed are written, with one fsync of
        // the directory for all of them.
        // Services before nodes, here and on the bus: a reader that takes
        // nodes first (the supervisor does) never sees a node's new state
        // (its first snapshot: Docker ok) with its services from before.
        let mut texts = vec![
            (layout.world_services(), fsutil::json_bytes(&services)?),
            (layout.world_nodes(), fsutil::json_bytes(&nodes)?),
            (layout.world_incidents(), fsutil::json_bytes(&incidents)?),
        ];
        if !closed.is_empty() {
            homelab_core::uptime::record(&mut self.status_history, &closed, now);
            homelab_core::world::append_history(&mut self.history, closed);
            texts.push((
                layout.world_incident_history(),
                fsutil::json_bytes(&self.history)?,
            ));
            texts.push((
                layout.world_status_history(),
                fsutil::json_bytes(&self.status_history)?,
            ));
        }
        let changed: Vec<(&std::path::Path, &[u8])> = texts
            .iter()
            .filter(|(path, text)| self.written.get(path) != Some(text))
            .map(|(path, text)| (path.as_path(), text.as_slice()))
            .collect();
        let open = blocking(|| -> Result<Vec<homelab_core::Action>> {
            fsutil::write_atomic_all(&layout.world_dir(), &changed)?;
            Ok(ActionStore::new(layout.clone()).open().unwrap_or_default())
        })?;
        for (path, text) in texts {
            self.written.insert(path, text);
        }
        let repo = homelab_core::repo::RepoStatus::read(&self.config.layout);
        let summary = Summary::new(&nodes, &services, &incidents, &open, repo.as_ref());

        let mut wanted: Vec<(String, String)> = Vec::new();
        for service in &services {
            wanted.push((
                topics.state_service(&service.node, &service.service),
                serde_json::to_string(service)?,
            ));
        }
        for node in &nodes {
            wanted.push((topics.state_node(&node.node), serde_json::to_string(node)?));
        }
        wanted.push((topics.state_summary(), serde_json::to_string(&summary)?));
        if let Some(ha) = &self.config.home_assistant {
            let configs = discovery::configs(
                topics,
                &ha.prefix,
                &self.discovery_inputs(&open, ha),
                ha.form,
            );
            for (topic, payload) in configs {
                // A device config tells Home Assistant which entities went.
                let payload = match discovery::is_device_config(&ha.prefix, &topic) {
                    true => discovery::with_removals(
                        self.published.get(&topic).map(String::as_str),
                        &payload,
                    ),
                    false => payload,
                };
                wanted.push((topic, payload));
            }
        }
        let (sends, keep) = retained_sends(&self.published, wanted);
        let sends = match &self.config.home_assistant {
            Some(ha) => {
                let mut devices: Vec<Retained> = keep
                    .iter()
                    .filter(|(topic, _)| discovery::is_device_config(&ha.prefix, topic))
                    .map(|(topic, payload)| (topic.clone(), payload.clone().into_bytes()))
                    .collect();
                devices.sort();
                discovery::migration_order(&ha.prefix, sends, &devices)
            }
            None => sends,
        };
        for (topic, payload) in sends {
            let ha_config = self
                .config
                .home_assistant
                .as_ref()
                .is_some_and(|ha| discovery::is_ours(&ha.prefix, &topic));
            // Fleet mode: signed, since any node's login could publish
            // here too (a clearing cannot be signed; readers leave it to
            // the files). Home Assistant reads its configs as they are.
            let payload = match &self.config.fleet {
                Some(fleet) if !payload.is_empty() && !ha_config => homelab_core::identity::seal(
                    &payload,
                    homelab_core::identity::Context::State,
                    fleet.signing_key(),
                ),
                _ => payload,
            };
            mqtt.publish(&topic, payload, true).await?;
        }
        self.published = keep;
        Ok(())
    }
}

/// A retained message: topic and payload (empty clears it).
type Retained = (String, Vec<u8>);

/// The retained messages to publish, in order, to go from `published` to
/// `wanted` (which lists services before nodes): first the clearing of
/// topics no longer wanted, then what changed, in `wanted`'s order. A node's
/// new state then never arrives before its services'. Also what is
/// published afterwards.
fn retained_sends(
    published: &HashMap<String, String>,
    wanted: Vec<(String, String)>,
) -> (Vec<Retained>, HashMap<String, String>) {
    let keep: HashMap<String, String> = wanted.iter().cloned().collect();
    let mut gone: Vec<&String> = published
        .keys()
        .filter(|t| !keep.contains_key(*t))
        .collect();
    gone.sort();
    let mut sends: Vec<Retained> = gone.into_iter().map(|t| (t.clone(), Vec::new())).collect();
    for (topic, payload) in wanted {
        if published.get(&topic) != Some(&payload) {
            sends.push((topic, payload.into_bytes()));
        }
    }
    (sends, keep)
}

/// Opens an event log for append. A last line without its newline is the
/// torn tail of a crash: end it first, so the next event starts a line of
/// its own (the torn fragment stays, and recovery reports it).
fn open_log(path: &std::path::Path) -> Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fsutil::open_append(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    if len > 0 {
        let mut reader = File::open(path).with_context(|| format!("open {}", path.display()))?;
        reader.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        reader.read_exact(&mut last)?;
        if last[0] != b'\n' {
            warn!(path = %path.display(), "event log ends in a torn line; closing it");
            file.write_all(b"\n")
                .with_context(|| format!("append to {}", path.display()))?;
        }
    }
    Ok(file)
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

/// Below this many signed events a batch is checked on one core.
const PARALLEL_FROM: usize = 64;

/// The payloads of a batch's event messages as they are to be read: in
/// open mode as they came; in fleet mode without their signatures, once
/// those of the topic's node are checked (the bus does not say who
/// published), all of a batch at once ([`identity::open_many`]) and split
/// over the cores. `None` for one that is refused (counted).
fn open_events<'a>(
    arrived: &'a [(Result<Name, homelab_core::NameError>, Message)],
    enrolled: Option<&BTreeMap<Name, homelab_core::fleet::Enrolled>>,
) -> Vec<Option<std::borrow::Cow<'a, [u8]>>> {
    use std::borrow::Cow;
    let Some(enrolled) = enrolled else {
        return arrived
            .iter()
            .map(|(_, m)| Some(Cow::Borrowed(&m.payload[..])))
            .collect();
    };
    // The key of each one's topic node; unknown nodes are refused here.
    let keyed: Vec<Option<(&[u8], &identity::PublicKey)>> = arrived
        .iter()
        .map(|(node, message)| {
            let node = match node {
                Ok(node) => node,
                Err(error) => {
                    reject(&message.topic, "bad_name", error);
                    return None;
                }
            };
            match enrolled.get(node) {
                Some(enrolled) => Some((&message.payload[..], &enrolled.public_key)),
                None => {
                    reject(
                        &message.topic,
                        "unknown_node",
                        &"no enrolled node of that name",
                    );
                    None
                }
            }
        })
        .collect();
    let items: Vec<(&[u8], &identity::PublicKey)> = keyed.iter().flatten().copied().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let checked: Vec<Result<Vec<u8>, identity::SigError>> =
        if items.len() >= PARALLEL_FROM && cores > 1 {
            let chunk = items.len().div_ceil(cores);
            std::thread::scope(|scope| {
                let parts: Vec<_> = items
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || identity::open_many(part, identity::Context::Event))
                    })
                    .collect();
                parts
                    .into_iter()
                    .flat_map(|p| p.join().expect("signature check"))
                    .collect()
            })
        } else {
            identity::open_many(&items, identity::Context::Event)
        };
    let mut checked = checked.into_iter();
    arrived
        .iter()
        .zip(keyed)
        .map(|((_, message), keyed)| {
            keyed?;
            match checked.next().expect("one answer per keyed payload") {
                Ok(unsigned) => Some(Cow::Owned(unsigned)),
                Err(error) => {
                    reject(&message.topic, error.reason(), &error);
                    None
                }
            }
        })
        .collect()
}

/// An event from the bus, checked: its topic's node, its fields (`payload`,
/// the message as [`open_events`] gave it), and that it names the topic's
/// node.
fn validate(
    node: &Result<Name, homelab_core::NameError>,
    message: &Message,
    payload: std::borrow::Cow<'_, [u8]>,
) -> Option<Event> {
    let topic_node = match node {
        Ok(node) => node.clone(),
        Err(error) => {
            reject(&message.topic, "bad_name", &error);
            return None;
        }
    };
    let event = match Event::from_payload(&payload) {
        Ok(event) => event,
        Err(error) => {
            reject(&message.topic, error.reason(), &error);
            return None;
        }
    };
    if event.node != topic_node {
        let error = EventError::NodeMismatch {
            event: event.node.to_string(),
            topic: topic_node.to_string(),
        };
        reject(&message.topic, error.reason(), &error);
        return None;
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_event(seq: u64) -> Event {
        Event {
            v: 1,
            id: format!("E{seq}"),
            ts: Utc::now(),
            node: Name::parse("edge").unwrap(),
            seq,
            source: "node-agent".into(),
            kind: "test_event".into(),
            service: None,
            severity: homelab_core::Severity::Info,
            message: String::new(),
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn retained_state_clears_first_then_services_before_nodes() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(t, p)| (t.to_string(), p.to_string()))
                .collect()
        };
        let sent = |sends: Vec<Retained>| -> Vec<(String, String)> {
            sends
                .into_iter()
                .map(|(t, p)| (t, String::from_utf8(p).unwrap()))
                .collect()
        };
        let before: HashMap<String, String> = pairs(&[
            ("s/services/n1/old", "gone soon"),
            ("s/services/n1/app", "running"),
            ("s/nodes/n1", "docker unknown"),
            ("s/summary", "1"),
        ])
        .into_iter()
        .collect();
        // (wanted, expected sends)
        let cases = [
            (
                // First snapshot: the service and the node change; the
                // service goes out first, the gone one is cleared before.
                pairs(&[
                    ("s/services/n1/app", "exited"),
                    ("s/services/n1/db", "running"),
                    ("s/nodes/n1", "docker ok"),
                    ("s/summary", "1"),
                ]),
                pairs(&[
                    ("s/services/n1/old", ""),
                    ("s/services/n1/app", "exited"),
                    ("s/services/n1/db", "running"),
                    ("s/nodes/n1", "docker ok"),
                ]),
            ),
            (
                // Nothing changed: nothing sent.
                pairs(&[
                    ("s/services/n1/old", "gone soon"),
                    ("s/services/n1/app", "running"),
                    ("s/nodes/n1", "docker unknown"),
                    ("s/summary", "1"),
                ]),
                vec![],
            ),
        ];
        for (wanted, expected) in cases {
            let (sends, keep) = retained_sends(&before, wanted.clone());
            assert_eq!(sent(sends), expected);
            assert_eq!(keep, wanted.into_iter().collect::<HashMap<_, _>>());
        }
    }

    /// Found from outside: a batch with seq 2 ahead of a missing 1, then 1,
    /// then 2 resent. The first copy of 2 is not stored; its twin must be,
    /// not taken as a duplicate that moves the watermark past a hole.
    #[test]
    fn an_early_copy_does_not_make_its_resent_twin_a_duplicate() {
        let root = tempfile::tempdir().unwrap();
        let mut observer = Observer::recover(Config {
            broker: "127.0.0.1:1".into(),
            layout: Layout::new(root.path()),
            topics: Topics::default(),
            repo: None,
            retention: Default::default(),
            feed: None,
            fleet: None,
            home_assistant: None,
        })
        .unwrap();
        let stored = observer
            .append(vec![test_event(2), test_event(1), test_event(2)])
            .unwrap();
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        // As `handle` does with what is on disk.
        for event in &stored {
            observer.ids.insert(&event.id, Utc::now());
        }
        assert_eq!(observer.watermark(&Name::parse("edge").unwrap()), 2);
        let logged = std::fs::read_to_string(
            Layout::new(root.path())
                .event_log(Utc::now().date_naive(), &Name::parse("edge").unwrap()),
        )
        .unwrap();
        assert_eq!(logged.lines().count(), 2);
        // A real duplicate (an id on disk, handed over again as seq 3)
        // still fills its slot.
        let again = Event {
            seq: 3,
            ..test_event(1)
        };
        assert!(observer.append(vec![again]).unwrap().is_empty());
        assert_eq!(observer.watermark(&Name::parse("edge").unwrap()), 3);
    }

    #[test]
    fn a_torn_tail_does_not_swallow_the_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"v\":1,\"id\":\"A\"}\n{\"v\":1,\"id\":\"tor").unwrap();
        let mut file = open_log(&path).unwrap();
        file.write_all(b"{\"next\":true}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().last(), Some("{\"next\":true}"));
        assert_eq!(text.lines().count(), 3);
    }
}
