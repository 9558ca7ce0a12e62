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

pub mod changes;
pub mod params;
pub mod plan;
pub mod recent;
pub mod world;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use homelab_core::store::{CreateError, ListCache, Move, TransitionError};
use homelab_core::{desired, fsutil, Action, ActionState, ActionStore, Layout, Topics};
use homelab_feed as feed;
use homelab_mqtt::{Incoming, Mqtt};
use plan::{Scope, Wake};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: homelab_mqtt::Endpoint,
    pub layout: Layout,
    pub topics: Topics,
    pub repo: PathBuf,
    /// Grace period of services that do not set their own.
    pub default_grace: Duration,
    /// Reconcile at least this often.
    pub interval: Duration,
    /// Runs of one action id an hour that `remediation: auto` may approve.
    pub auto_limit: usize,
    /// Stored events from the observer in the same process; None: events
    /// wake passes through the broker.
    pub feed: Option<homelab_feed::Feed>,
    /// Fleet mode: what is signed and checked end to end (see
    /// `homelab_core::identity`); `None` in open mode.
    pub fleet: Option<homelab_core::fleet::Fleet>,
}

struct Read {
    open: Vec<Action>,
    finished: Vec<Action>,
}

fn applied_path(layout: &Layout) -> PathBuf {
    layout.supervisor_applied()
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
    nodes_file: fsutil::Watched,
    services_file: fsutil::Watched,
    world: world::World,
    actions: ListCache,
    /// Node configs published since the last CONNACK: topic → revision.
    configs: std::collections::BTreeMap<String, String>,
    /// Where the desired state was last read from: the repo folder, or
    /// for a git source the live commit's tree (the link resolved once, so
    /// one load reads one commit); and that commit.
    tree: PathBuf,
    commit: Option<homelab_core::repo::Commit>,
    /// The compose bundle the repo wants per canonical node and service.
    bundles: std::collections::BTreeMap<
        (homelab_core::Name, homelab_core::Name),
        homelab_core::command::ComposeBundle,
    >,
    /// What is deployed (`state/supervisor/applied.json`).
    applied: changes::Applied,
    /// The services the repo changed since they were deployed, as of the
    /// last full pass.
    changes: std::collections::BTreeMap<(homelab_core::Name, homelab_core::Name), changes::Change>,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let mut mqtt_config = homelab_mqtt::Config::new(&config.broker, "homelab-supervisor");
    // World changes and new events (for the event rules) wake a pass.
    mqtt_config.subscriptions = vec![config.topics.state_all()];
    let mut feed = config.feed.as_ref().map(|feed| feed.subscribe());
    if feed.is_none() {
        mqtt_config.subscriptions.push(config.topics.events_all());
    }
    let (mqtt, mut incoming) = homelab_mqtt::connect(mqtt_config)?;
    let mut supervisor = Supervisor {
        passes: 0,
        store: ActionStore::new(config.layout.clone()),
        config: config.clone(),
        desired: None,
        last_problems: Vec::new(),
        recent: recent::Recent::default(),
        nodes_file: fsutil::Watched::default(),
        services_file: fsutil::Watched::default(),
        world: match &config.fleet {
            Some(fleet) => world::World::signed_by(fleet.public_key()),
            None => world::World::default(),
        },
        actions: ListCache::default(),
        configs: Default::default(),
        tree: config.repo.clone(),
        commit: None,
        bundles: Default::default(),
        changes: Default::default(),
        applied: std::fs::read(applied_path(&config.layout))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default(),
    };
    info!(repo = %config.repo.display(), "supervisor started");

    let mut tick = tokio::time::interval(config.interval);
    // What the next pass judges; the timer's first tick makes it all.
    let mut scope = Scope::none();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => scope = Scope::All,
            incoming = incoming.recv() => match incoming {
                Some(incoming) => supervisor.widen(&mut scope, &incoming),
                None => break,
            },
            stored = feed::next(&mut feed) => supervisor.widen_stored(&mut scope, stored),
        }
        // Everything that arrived so far is covered by this one pass.
        while let Ok(incoming) = incoming.try_recv() {
            supervisor.widen(&mut scope, &incoming);
        }
        while let Some(stored) = feed::try_next(&mut feed) {
            supervisor.widen_stored(&mut scope, stored);
        }
        let started = std::time::Instant::now();
        let this = std::mem::replace(&mut scope, Scope::none());
        supervisor
            .reconcile(&mqtt, this)
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
        // A progress report, rewritten after every pass: not fsynced.
        let path = config.layout.supervisor_status();
        if let Err(error) = fsutil::replace_json(&path, &status) {
            warn!(
                error = format!("{error:#}"),
                "supervisor status not written"
            );
        }
    }
    mqtt.close().await;
    Ok(())
}

impl Supervisor {
    fn widen(&mut self, scope: &mut Scope, incoming: &Incoming) {
        let wake = match incoming {
            Incoming::Message(message) => {
                if let world::Applied::Refused(reason) =
                    self.world
                        .apply(&self.config.topics, &message.topic, &message.payload)
                {
                    debug!(topic = %message.topic, reason, "world state message refused");
                    metrics::counter!("homelab_supervisor_state_refused_total", "reason" => reason)
                        .increment(1);
                }
                Wake::Message(&message.topic)
            }
            Incoming::Connected { .. } => {
                // Retained configs may be gone with a broker that restarted.
                self.configs.clear();
                Wake::Connected
            }
            Incoming::Disconnected => return,
        };
        match &self.desired {
            Some(desired) => scope.widen(wake, &self.config.topics, desired),
            None => *scope = Scope::All,
        }
    }

    /// A stored event from the feed widens the scope to its node; a gap in
    /// the feed to everything.
    fn widen_stored(
        &mut self,
        scope: &mut Scope,
        stored: std::result::Result<std::sync::Arc<homelab_core::Event>, feed::Missed>,
    ) {
        match (&self.desired, stored) {
            (Some(desired), Ok(event)) => {
                scope.widen(Wake::Stored(&event.node), &self.config.topics, desired)
            }
            _ => *scope = Scope::All,
        }
    }

    /// Reads the repo. A bad file spoils only what it describes: the hosts
    /// it concerns keep their last good desired state (or are frozen), the
    /// others follow the repo as it is now. Whether it changed.
    fn load_desired(&mut self) -> bool {
        let tree = homelab_core::repo::resolve(&self.config.repo);
        let commit = homelab_core::repo::commit_of(&self.config.layout, &tree);
        if !tree.exists() && self.config.repo.ends_with("state/repo/live") {
            // A git source before its first commit is live: nothing yet.
            debug!("desired state: waiting for the repo's first commit");
            return false;
        }
        let moved = commit != self.commit || tree != self.tree;
        if moved {
            if let Some(commit) = &commit {
                info!(sha = %commit.sha, subject = %commit.subject, "desired state at a new commit");
            }
        }
        let loaded = desired::load_partial(&tree);
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
        let changed = match loaded.or_last_good(self.desired.as_ref()) {
            Some(desired) if self.desired.as_ref() != Some(&desired) => {
                self.desired = Some(desired);
                true
            }
            _ => false,
        };
        self.tree = tree;
        self.commit = commit;
        if changed || moved {
            self.bundles = self
                .desired
                .as_ref()
                .map(|d| params::bundles(&self.tree, d))
                .unwrap_or_default();
        }
        changed || moved
    }

    /// What the repo changed since it was deployed, brought up to date
    /// with the redeploys that completed; `applied.json` written when it
    /// moved.
    fn track_changes(
        &mut self,
        finished: &[Action],
    ) -> std::collections::BTreeMap<(homelab_core::Name, homelab_core::Name), changes::Change> {
        let deployed: Vec<changes::Deployed<'_>> = finished
            .iter()
            .filter(|a| {
                a.state == ActionState::Completed && a.kind == homelab_core::ActionKind::Redeploy
            })
            .filter_map(|a| {
                Some(changes::Deployed {
                    node: &a.node,
                    service: a.service.as_ref()?,
                    bundle: a.params.as_ref()?.compose.as_ref()?,
                    commit: a.origin.as_ref().map(|o| o.commit.sha.as_str()),
                    at: a.updated_at,
                })
            })
            .collect();
        let (found, moved) = changes::track(
            &mut self.applied,
            &self.bundles,
            &deployed,
            self.commit.as_ref().map(|c| c.sha.as_str()),
            Utc::now(),
        );
        if moved {
            if let Err(error) =
                fsutil::write_json_atomic(&applied_path(&self.config.layout), &self.applied)
            {
                warn!(error = format!("{error:#}"), "applied state not written");
            }
        }
        found
    }

    /// Where an action comes from: the live commit (pinned or not) and,
    /// for a redeploy of a changed service, the diff of its compose files.
    fn origin(
        &self,
        action: &Action,
        found: &std::collections::BTreeMap<
            (homelab_core::Name, homelab_core::Name),
            changes::Change,
        >,
    ) -> Option<homelab_core::action::Origin> {
        let commit = self.commit.clone()?;
        let pinned = homelab_core::repo::RepoStatus::read(&self.config.layout)
            .and_then(|s| s.pinned)
            .is_some_and(|p| p.commit.sha == commit.sha);
        let change = action
            .service
            .as_ref()
            .filter(|_| action.kind == homelab_core::ActionKind::Redeploy)
            .and_then(|s| found.get(&(action.node.clone(), s.clone())));
        let new_files: Vec<(String, String)> = action
            .params
            .as_ref()
            .and_then(|p| p.compose.as_ref())
            .map(|b| {
                b.files
                    .iter()
                    .map(|f| (f.path.clone(), f.content.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Some(homelab_core::action::Origin {
            commit,
            pinned,
            from_commit: change.and_then(|c| c.from_commit.clone()),
            diff: change
                .map(|c| changes::diff(&c.from_files, &new_files))
                .filter(|d| !d.is_empty()),
        })
    }

    /// A pending redeploy whose files a newer commit changed again is
    /// replaced by a proposal of that commit's files: cancelled (reason
    /// `superseded_by_newer_commit`), and proposed anew with a history that
    /// says what it replaces.
    async fn supersede(
        &mut self,
        mqtt: &Mqtt,
        open: &[Action],
        found: &std::collections::BTreeMap<
            (homelab_core::Name, homelab_core::Name),
            changes::Change,
        >,
    ) -> bool {
        let Some(desired) = self.desired.clone() else {
            return false;
        };
        let mut replaced_any = false;
        for old in open.iter().filter(|a| a.state == ActionState::Pending) {
            let (Some(service), Some(bundle)) = (
                old.service.as_ref(),
                old.params.as_ref().and_then(|p| p.compose.as_ref()),
            ) else {
                continue;
            };
            let key = (old.node.clone(), service.clone());
            let Some(wanted) = self.bundles.get(&key) else {
                continue;
            };
            if wanted.digest() == bundle.digest() {
                continue;
            }
            // A proposal of a change that is gone (a revert, an unpin: the
            // repo wants what is deployed again) is not replaced: the plan
            // cancels it as resolved.
            if old.reason == plan::DESIRED_CHANGED && !found.contains_key(&key) {
                continue;
            }
            let now = Utc::now();
            let why = format!(
                "{}: the repo changed {service}'s compose files again{}",
                homelab_core::action::cancel_reasons::SUPERSEDED,
                self.commit
                    .as_ref()
                    .map(|c| format!(" in {} ({})", c.short(), c.subject))
                    .unwrap_or_default()
            );
            let mv = Move {
                from: ActionState::Pending,
                to: ActionState::Cancelled,
                by: "supervisor",
                why: &why,
                at: now,
                result: None,
            };
            let cancelled = match self.store.transition(&old.id, mv) {
                Ok(action) => action,
                Err(TransitionError::WrongState { actual, .. }) => {
                    info!(id = %old.id, %actual, "supersede lost the race");
                    continue;
                }
                Err(error) => {
                    warn!(id = %old.id, error = format!("{error:#}"), "supersede failed");
                    continue;
                }
            };
            self.publish(mqtt, &cancelled).await;
            let mut action = Action::new(
                old.kind,
                old.node.clone(),
                old.service.clone(),
                old.risk,
                &old.reason,
                &old.message,
                now,
            );
            action.target = old.target.clone();
            action.params = params::for_action(&self.tree, &desired, &action);
            action.origin = self.origin(&action, found);
            let replaced = old
                .origin
                .as_ref()
                .map(|o| {
                    format!(
                        "the proposal for {} ({})",
                        o.commit.short(),
                        o.commit.subject
                    )
                })
                .unwrap_or_else(|| "the earlier proposal".into());
            action.history[0].why =
                format!("{}: {} (replaces {replaced})", old.reason, old.message);
            match self.store.create(&action) {
                Ok(()) => {
                    info!(id = %action.id, "pending redeploy replaced by the newer commit's");
                    self.publish(mqtt, &action).await;
                }
                Err(error) => {
                    warn!(id = %action.id, error = format!("{error:#}"), "replacement not written")
                }
            }
            replaced_any = true;
        }
        replaced_any
    }

    /// Reads what a pass needs: the world files for a full pass, and the
    /// actions.
    fn read(&mut self, scope: &Scope) -> Result<Read> {
        let layout = &self.config.layout;
        if *scope == Scope::All {
            let nodes = self.nodes_file.changed(&layout.world_nodes())?;
            let services = self.services_file.changed(&layout.world_services())?;
            self.world.reset(nodes, services);
        }
        Ok(Read {
            open: self.store.open_with(&mut self.actions)?,
            finished: self.store.finished_with(&mut self.actions)?,
        })
    }

    async fn reconcile(&mut self, mqtt: &Mqtt, mut scope: Scope) {
        // The repo is read again on full passes (every interval, and on a
        // reconnect): a pass that one event woke judges by the desired
        // state already loaded, so a burst of events does not re-read it.
        let full = scope == Scope::All || self.desired.is_none();
        if full && self.load_desired() {
            scope = Scope::All;
        }
        if full {
            self.publish_configs(mqtt).await;
        }
        if self.desired.is_none() || scope.is_empty() {
            return;
        }
        let read = match self.read(&scope) {
            Ok(read) => read,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "reconcile skipped: input unreadable"
                );
                return;
            }
        };
        // What the repo changed since it was deployed: on full passes (and
        // a replaced proposal makes the open actions read again).
        let mut read = read;
        if scope == Scope::All {
            self.changes = self.track_changes(&read.finished);
            let found = self.changes.clone();
            if self.supersede(mqtt, &read.open, &found).await {
                match self.read(&scope) {
                    Ok(again) => read = again,
                    Err(error) => {
                        warn!(
                            error = format!("{error:#}"),
                            "reconcile skipped: input unreadable"
                        );
                        return;
                    }
                }
            }
        }
        let found = &self.changes;
        let Some(desired) = &self.desired else { return };
        let now = Utc::now();
        self.recent.refresh(&self.config.layout, now);
        let settings = plan::Settings {
            default_grace: self.config.default_grace,
            auto_limit: self.config.auto_limit,
            ..Default::default()
        };
        let (nodes, services) = match scope.names(desired) {
            Some(names) => self.world.of(&names),
            None => (Vec::new(), Vec::new()),
        };
        let (nodes, services) = match scope {
            Scope::All => self.world.files(),
            Scope::Nodes(_) => (&nodes[..], &services[..]),
        };
        let inputs = plan::Inputs {
            desired,
            nodes,
            services,
            open: &read.open,
            finished: &read.finished,
            events: self.recent.events(),
            changes: found,
        };
        let plan = plan::plan_for(inputs, &settings, now, &scope);
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
        for mut action in plan.create {
            action.params = params::for_action(&self.tree, desired, &action);
            action.origin = self.origin(&action, found);
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

    /// A node config's payload for the topic of `name` (the node or one of
    /// its aliases), and what, besides its content, makes it new. In
    /// fleet mode it carries its issue time, is signed by the control
    /// plane (whose key every agent pins: a config carries scripts the
    /// agent runs) and is sealed for `name`'s box key, so no other node
    /// reads it on any broker; `None` while `name` is not enrolled (no one
    /// could open it).
    fn config_payload(
        &self,
        name: &homelab_core::Name,
        mut config: homelab_core::nodeconfig::NodeConfig,
    ) -> Option<(String, Vec<u8>)> {
        let Some(fleet) = &self.config.fleet else {
            let payload = serde_json::to_vec(&config).expect("config serializes");
            return Some((String::new(), payload));
        };
        let enrolled = fleet.node(name)?;
        config.issued_at = Some(Utc::now());
        let signed = homelab_core::identity::seal(
            &serde_json::to_vec(&config).expect("config serializes"),
            homelab_core::identity::Context::NodeConfig,
            fleet.signing_key(),
        );
        let sealed = homelab_core::sealbox::seal(&signed, name, &enrolled.box_key);
        Some((
            homelab_core::sealbox::encode_public(&enrolled.box_key),
            sealed,
        ))
    }

    /// Publishes each node's config (retained) when its revision changed,
    /// under its name and its aliases; clears the config of a node that
    /// left the inventory. In fleet mode also when the name is enrolled,
    /// or enrolled again (checked on every full pass).
    async fn publish_configs(&mut self, mqtt: &Mqtt) {
        let Some(desired) = &self.desired else { return };
        let mut wanted = std::collections::BTreeMap::new();
        for (node, spec) in &desired.topology.nodes {
            let scripts = params::healthcheck_scripts(&self.tree, desired, node);
            let mut config = homelab_core::nodeconfig::NodeConfig::build(node, desired, &scripts);
            config.commit = self.commit.as_ref().map(|c| c.sha.clone());
            for name in std::iter::once(node).chain(&spec.aliases) {
                let Some((key, payload)) = self.config_payload(name, config.clone()) else {
                    continue;
                };
                // Published again when the content, the commit or the
                // recipient's key moves.
                let revision = format!(
                    "{}@{}@{key}",
                    config.revision,
                    config.commit.as_deref().unwrap_or("")
                );
                wanted.insert(self.config.topics.node_config(name), (revision, payload));
            }
        }
        let gone: Vec<String> = self
            .configs
            .keys()
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect();
        for topic in gone {
            // Fleet mode: agents take only signed configs, so a node that
            // left gets a signed (and sealed) empty one rather than a
            // cleared topic; one no longer enrolled gets the topic cleared.
            let payload = match self.config.topics.parse_node_config(&topic) {
                Some(Ok(node)) if self.config.fleet.is_some() => self
                    .config_payload(&node, homelab_core::nodeconfig::NodeConfig::empty(&node))
                    .map(|(_, payload)| payload)
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            match mqtt.publish(&topic, payload, true).await {
                Ok(()) => {
                    self.configs.remove(&topic);
                }
                Err(error) => warn!(%error, %topic, "node config not cleared"),
            }
        }
        for (topic, (revision, payload)) in wanted {
            if self.configs.get(&topic) == Some(&revision) {
                continue;
            }
            match mqtt.publish(&topic, payload, true).await {
                Ok(()) => {
                    info!(%topic, revision = revision.split('@').next().unwrap_or(""), "node config published");
                    self.configs.insert(topic, revision);
                }
                Err(error) => warn!(%error, %topic, "node config not published"),
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
