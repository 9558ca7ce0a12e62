//! The hand-over folder between `homelab emit` and the agent:
//! `state/agent/<node>/spool/<event id>.json`, one event a file.
//!
//! `emit` writes a file durably (write → fsync → rename → fsync(dir)) and is
//! done, whether or not the agent or the uplink is up. The agent drains the
//! folder in id order (ids are time-ordered ULIDs) into its outbox, then
//! deletes the files. A crash between the outbox commit and the delete
//! hands the same event over twice with the same id; the observer stores it
//! once. A file that is not a valid event for this node is renamed to
//! `<name>.rejected` and counted, never retried forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use homelab_core::{fsutil, Event};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const BATCH: usize = 500;

/// Writes `event` into the spool durably. Used by `homelab emit`.
pub fn hand_over(spool: &Path, event: &Event) -> Result<PathBuf> {
    event.validate().context("invalid event")?;
    let path = spool.join(format!("{}.json", event.id));
    fsutil::write_atomic(&path, event.to_json().as_bytes())?;
    Ok(path)
}

fn pending_files(spool: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(spool) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", spool.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Moves what is in the spool into the outbox; returns how many events.
pub(crate) fn drain(spool: &Path, agent: &super::Agent) -> Result<usize> {
    let mut moved = 0;
    loop {
        let files = pending_files(spool)?;
        if files.is_empty() {
            return Ok(moved);
        }
        let mut events = Vec::new();
        let mut taken = Vec::new();
        for path in files.into_iter().take(BATCH) {
            let parsed = std::fs::read(&path)
                .map_err(anyhow::Error::new)
                .and_then(|bytes| Ok(Event::from_payload(&bytes)?));
            match parsed {
                Ok(event) if event.node == agent.config.node => {
                    events.push(event);
                    taken.push(path);
                }
                Ok(event) => reject(
                    &path,
                    &format!(
                        "event for node {}, this is {}",
                        event.node, agent.config.node
                    ),
                ),
                Err(error) => reject(&path, &format!("{error:#}")),
            }
        }
        let count = events.len();
        if count > 0 {
            agent.outbox.push_batch(events)?;
        }
        for path in taken {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        fsutil::sync_dir(spool)?;
        moved += count;
    }
}

fn reject(path: &Path, why: &str) {
    warn!(path = %path.display(), why, "spooled event rejected");
    metrics::counter!("homelab_agent_spool_rejected_total").increment(1);
    let mut rejected = path.as_os_str().to_owned();
    rejected.push(".rejected");
    let _ = std::fs::rename(path, rejected);
}

pub(crate) async fn drain_loop(
    spool: PathBuf,
    agent: Arc<super::Agent>,
    shutdown: CancellationToken,
) {
    loop {
        let (dir, a) = (spool.clone(), agent.clone());
        match tokio::task::spawn_blocking(move || drain(&dir, &a)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(events = n, "spooled events moved to the outbox"),
            Ok(Err(error)) => warn!(error = format!("{error:#}"), "spool not drained"),
            Err(error) => warn!(%error, "spool task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
