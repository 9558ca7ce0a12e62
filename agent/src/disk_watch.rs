//! The watched filesystems sampled, and a `disk_pressure` event when one crosses a threshold ([`disk`] decides).
use std::sync::Arc;
use std::time::Duration;

use homelab_core::event::kinds;
use homelab_core::Severity;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{disk, vitals, Agent};

/// Samples the watched filesystems every `disk_interval`, and at once when
/// a new node config arrives (it may name mounts and thresholds), and
/// reports each crossing of a threshold as `disk_pressure`
/// (`disk::Tracker`).
pub(crate) async fn disk_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
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
