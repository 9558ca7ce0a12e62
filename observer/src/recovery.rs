//! A start: the checkpoint and what the log gained since (or the whole
//! log), and the checkpoint written between batches.

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::Utc;
use homelab_core::{eventlog, fsutil, Event, Layout};
use tracing::{info, warn};

use crate::ingest::Ingest;
use crate::world::World;
use std::collections::BTreeMap;

use crate::{blocking, checkpoint, store, Config, Observer};

/// A JSON file of the root, or the default when it is absent or does not
/// parse (said in the log).
pub(crate) fn read_or_default<T: serde::de::DeserializeOwned + Default>(
    path: &std::path::Path,
) -> T {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            warn!(path = %path.display(), %error, "unreadable; starting from nothing");
            T::default()
        }),
        Err(_) => T::default(),
    }
}

impl Observer {
    pub(crate) fn recover(config: Config) -> Result<Observer> {
        let mut observer = Observer {
            config,
            ingest: Ingest::default(),
            log: store::DiskLog::default(),
            sizes: BTreeMap::new(),
            unsaved: false,
            written: HashMap::new(),
            recovered: (0, false),
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
        observer.ingest.expire(Utc::now());
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
            ids = observer.ingest.ids().len(),
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
    pub(crate) fn replay_log(
        &mut self,
        layout: &Layout,
    ) -> Result<(usize, Vec<eventlog::BadLine>, bool)> {
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
                self.ingest = Ingest::from_checkpoint(c.sequences, c.ids);
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

    /// Writes the checkpoint (see `checkpoint`): only between batches, when
    /// what is applied and what is on disk agree.
    pub(crate) fn save_checkpoint(&mut self) -> Result<()> {
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
            .ingest
            .ids()
            .entries()
            .map(|(at, id)| (at.timestamp(), id.clone()))
            .collect();
        let checkpoint = checkpoint::Checkpoint::new(
            self.world.clone(),
            self.ingest.sequences().clone(),
            ids,
            files,
        );
        let path = layout.observer_checkpoint();
        blocking(|| fsutil::write_json_atomic(&path, &checkpoint))
            .with_context(|| format!("write {}", path.display()))?;
        self.unsaved = false;
        Ok(())
    }

    /// An event read back from the log at start.
    pub(crate) fn replay(&mut self, event: &Event) {
        if self.ingest.replay(event) {
            self.world.apply(event);
        }
    }
}
