//! The observer's checkpoint, `state/observer/checkpoint.json`: its world,
//! each node's next `seq`, the ids it remembers, and the size of every log
//! file as of then. A start loads it and replays only what the log files
//! gained since, so it takes the same time whatever the log's size; without
//! a usable checkpoint (none yet, unreadable, or a log file that shrank) it
//! replays the whole log once, as before.
//!
//! It is written (durably, replacing the old one) between batches, when
//! every event applied is on disk and every event on disk is applied, so
//! the sizes and the state always agree: at most every
//! [`CHECKPOINT_EVERY`] while events come, and on the way out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use homelab_core::Name;
use serde::{Deserialize, Serialize};

use crate::sequence::Sequence;
use crate::world::World;

pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub v: u32,
    pub world: World,
    pub sequences: BTreeMap<Name, Sequence>,
    /// Remembered ids: (seconds since the epoch when stored, id).
    pub ids: Vec<(i64, String)>,
    /// Log files (relative to the root) and their sizes in bytes.
    pub files: BTreeMap<PathBuf, u64>,
}

impl Checkpoint {
    pub fn new(
        world: World,
        sequences: BTreeMap<Name, Sequence>,
        ids: Vec<(i64, String)>,
        files: BTreeMap<PathBuf, u64>,
    ) -> Checkpoint {
        Checkpoint {
            v: VERSION,
            world,
            sequences,
            ids,
            files,
        }
    }

    pub fn usable(&self) -> bool {
        self.v == VERSION
    }
}

/// What to replay after a checkpoint: each log file on disk (relative to
/// `root`, with its size) from the size the checkpoint recorded, or whole
/// if it is new. `None` when a file is smaller than recorded: the log was
/// changed behind the observer's back, and only a full replay is right. A
/// recorded file that is gone (retention removed it) needs nothing.
pub fn tails(
    recorded: &BTreeMap<PathBuf, u64>,
    on_disk: &[(PathBuf, u64)],
    root: &Path,
) -> Option<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for (path, len) in on_disk {
        let relative = path.strip_prefix(root).unwrap_or(path);
        if homelab_core::eventlog::is_compressed(path) {
            // Written whole by the observer's retention, which records it
            // before it removes the plain file: known as it is, or new.
            match recorded.get(relative) {
                Some(known) if known == len => {}
                Some(_) => return None,
                None => out.push((path.clone(), 0)),
            }
            continue;
        }
        let from = recorded.get(relative).copied().unwrap_or(0);
        if *len < from {
            return None;
        }
        if *len > from {
            out.push((path.clone(), from));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(recorded: &[(&str, u64)], on_disk: &[(&str, u64)], expected: Option<&[(&str, u64)]>) {
        let root = Path::new("/r");
        let recorded = recorded
            .iter()
            .map(|(p, n)| (PathBuf::from(p), *n))
            .collect();
        let on_disk: Vec<(PathBuf, u64)> =
            on_disk.iter().map(|(p, n)| (root.join(p), *n)).collect();
        let expected = expected.map(|e| {
            e.iter()
                .map(|(p, n)| (root.join(p), *n))
                .collect::<Vec<_>>()
        });
        assert_eq!(tails(&recorded, &on_disk, root), expected);
    }

    #[test]
    fn what_to_replay() {
        // Unchanged: nothing.
        check(&[("a", 10)], &[("a", 10)], Some(&[]));
        // Grown: from the recorded size.
        check(&[("a", 10)], &[("a", 25)], Some(&[("a", 10)]));
        // New file (a new day, a late event for an old one): whole.
        check(&[("a", 10)], &[("a", 10), ("b", 7)], Some(&[("b", 0)]));
        // Removed by retention: nothing to do.
        check(&[("a", 10), ("old", 99)], &[("a", 10)], Some(&[]));
        // Shrunk: only a full replay is right.
        check(&[("a", 10)], &[("a", 4)], None);
        // A compressed day is known as it is, or read whole if new; one
        // that changed size was rewritten behind the observer's back.
        check(&[("d.zst", 10)], &[("d.zst", 10)], Some(&[]));
        check(&[], &[("d.zst", 10)], Some(&[("d.zst", 0)]));
        check(&[("d.zst", 10)], &[("d.zst", 12)], None);
    }

    #[test]
    fn round_trips_through_json() {
        let mut world = World::default();
        let event = homelab_core::Event {
            v: 1,
            id: "E1".into(),
            // As on the wire: milliseconds.
            ts: "2026-11-22T10:00:00.123Z".parse().unwrap(),
            node: Name::parse("n").unwrap(),
            seq: 1,
            source: "node-agent".into(),
            kind: "containers_not_running".into(),
            service: Some(Name::parse("s").unwrap()),
            severity: homelab_core::Severity::Warning,
            message: String::new(),
            data: serde_json::json!({}),
        };
        world.apply(&event);
        let mut sequences = BTreeMap::new();
        let mut sequence = Sequence::default();
        sequence.replay(&event);
        sequences.insert(event.node.clone(), sequence);
        let checkpoint = Checkpoint::new(
            world.clone(),
            sequences.clone(),
            vec![(1, "E1".into())],
            BTreeMap::from([(PathBuf::from("events/x"), 42)]),
        );
        let back: Checkpoint =
            serde_json::from_str(&serde_json::to_string(&checkpoint).unwrap()).unwrap();
        assert_eq!(back.world, world);
        assert_eq!(back.sequences, sequences);
        assert_eq!(back.files[Path::new("events/x")], 42);
    }
}
