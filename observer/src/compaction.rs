//! Retention carried out: old days of the log compressed, older ones
//! removed, as [`retention::plan`] says.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;

use anyhow::{Context, Result};
use homelab_core::{eventlog, fsutil, Name};
use tracing::info;

use crate::{blocking, retention, Observer};

impl Observer {
    /// Compresses and removes old days of the log (see `retention`).
    pub(crate) fn retention(&mut self, today: chrono::NaiveDate) -> Result<()> {
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
                    self.log.close_under(&dir);
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
    pub(crate) fn compress(&mut self, day: chrono::NaiveDate, node: &Name) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let layout = &self.config.layout;
        let plain = layout.event_log(day, node);
        let zst = layout.event_log_compressed(day, node);
        self.log.close(&plain);
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
}
