//! Ingest: which events of a batch are stored, and which watermarks are
//! published after it.
//!
//! [`Ingest::receive`] decides for a batch of checked events: drop an id it
//! remembers ([`dedup`](crate::dedup)), store each node's next `seq` only
//! ([`sequence`](crate::sequence)), store an unsequenced event (seq 0) once
//! by id, and which acks follow ([`sequence::publish_ack`]). It is pure:
//! the caller passes the time and carries out the [`Effects`] in their
//! order: append [`stages`] to the log ([`store`], through any
//! [`LogStore`]), only then apply the events to the world and publish the
//! acks. When the append fails, the caller stops: this state has moved on
//! and a restart rebuilds it from the log ([`Ingest::replay`]).
//!
//! A watermark moved by a copy under a new `seq` ([`Effects::filled`]) is
//! not in the log: the checkpoint keeps it, written before the acks.
//!
//! What a crash leaves of a node's events is always a prefix in `seq`
//! order, which replay relies on (it takes the highest `seq` it reads): a
//! node's events that go to more than one file in a batch (a batch across
//! midnight) are appended in stages, each durable before the next is
//! written (`tests/ingest_model.rs` crashes the store at every step of
//! random histories and checks each event is stored exactly once).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use homelab_core::time::Timestamp;
use homelab_core::{Event, Layout, Name};

use crate::dedup::RecentIds;
use crate::sequence::{self, Admit, Sequence};

/// What the observer knows of delivery: the ids it stored lately, each
/// node's next `seq`, and when each node's ack was last published.
#[derive(Debug, Clone, Default)]
pub struct Ingest {
    ids: RecentIds,
    sequences: BTreeMap<Name, Sequence>,
    acked_at: HashMap<Name, Timestamp>,
}

/// What a batch asks for, in this order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// The events to store, in the order they came; once they are durable,
    /// they are applied to the world and handed to the components in the
    /// same process.
    pub append: Vec<Event>,
    /// The watermarks to publish once `append` is durable.
    pub acks: Vec<(Name, u64)>,
    /// Copies of stored events dropped: by id, and by a `seq` behind the
    /// watermark.
    pub duplicates_by_id: u64,
    pub duplicates_by_seq: u64,
    /// Events ahead of a missing one, left for the resend.
    pub early: u64,
    /// A copy under a new `seq` moved a watermark: the log does not show
    /// that (it has the event once, under its first `seq`), so the
    /// checkpoint must be written before the acks go out, or a start from
    /// the log alone would take the watermark back below an ack.
    pub filled: bool,
}

impl Ingest {
    /// As a checkpoint left it: each node's next `seq`, and the ids with
    /// when they were stored (seconds since the epoch).
    pub fn from_checkpoint(
        sequences: BTreeMap<Name, Sequence>,
        ids: impl IntoIterator<Item = (i64, String)>,
    ) -> Ingest {
        let mut ingest = Ingest {
            sequences,
            ..Ingest::default()
        };
        for (secs, id) in ids {
            let at = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
            ingest.ids.insert(&id, at);
        }
        ingest
    }

    /// An event read back from the log at start.
    pub fn replay(&mut self, event: &Event) -> bool {
        if !self.ids.insert(&event.id, event.ts) {
            return false;
        }
        self.sequences
            .entry(event.node.clone())
            .or_default()
            .replay(event);
        true
    }

    /// Every `seq` of `node` up to this one is on disk or explained.
    pub fn watermark(&self, node: &Name) -> u64 {
        self.sequences
            .get(node)
            .map(Sequence::watermark)
            .unwrap_or(0)
    }

    pub fn sequences(&self) -> &BTreeMap<Name, Sequence> {
        &self.sequences
    }

    pub fn ids(&self) -> &RecentIds {
        &self.ids
    }

    /// Forgets ids older than [`dedup::KEEP`](crate::dedup::KEEP).
    pub fn expire(&mut self, now: Timestamp) {
        self.ids.expire(now);
    }

    /// Decides about a batch of checked events that came at `now`.
    pub fn receive(&mut self, events: Vec<Event>, now: Timestamp) -> Effects {
        let mut effects = Effects::default();
        let before: BTreeMap<Name, u64> = events
            .iter()
            .map(|e| (e.node.clone(), self.watermark(&e.node)))
            .collect();
        // Nodes that sent an event ahead of a missing one (their watermark
        // is repeated, asking for a resend), and a copy of a stored one.
        let mut early = BTreeSet::new();
        let mut duplicates = BTreeSet::new();
        // Ids stored by this batch. Only an id that is on disk (before or
        // in this batch) makes a later copy a duplicate that fills its
        // slot: a copy that arrived ahead of a missing event was not
        // stored, and its resent twin in the same batch must be.
        let mut batch_ids = HashSet::new();
        for event in events {
            let sequence = self.sequences.entry(event.node.clone()).or_default();
            if self.ids.contains(&event.id) || batch_ids.contains(&event.id) {
                effects.duplicates_by_id += 1;
                effects.filled |= sequence.fill(event.seq);
                if event.seq != 0 {
                    duplicates.insert(event.node.clone());
                }
                continue;
            }
            // Unsequenced (seq 0: an alert, a script's event): stored once
            // by id, outside the node's order and watermark.
            let admit = match event.seq {
                0 => Admit::Store,
                _ => sequence.admit(&event, now),
            };
            match admit {
                Admit::Store => {
                    batch_ids.insert(event.id.clone());
                    effects.append.push(event);
                }
                Admit::Behind => {
                    effects.duplicates_by_seq += 1;
                    duplicates.insert(event.node.clone());
                }
                Admit::Early => {
                    effects.early += 1;
                    early.insert(event.node.clone());
                }
            }
        }
        for event in &effects.append {
            self.ids.insert(&event.id, now);
        }
        self.ids.expire(now);
        for (node, before) in before {
            let mark = self.watermark(&node);
            let cue = sequence::AckCue {
                moved: mark != before,
                early: early.contains(&node),
                duplicate: duplicates.contains(&node),
            };
            // A clock that went back counts as just now.
            let since = self
                .acked_at
                .get(&node)
                .map(|at| (now - *at).to_std().unwrap_or_default());
            if sequence::publish_ack(cue, since) {
                effects.acks.push((node.clone(), mark));
                self.acked_at.insert(node, now);
            }
        }
        effects
    }
}

/// Lines to append: bytes per file.
pub type Lines = BTreeMap<PathBuf, Vec<u8>>;

/// The lines of `events` per log file (`events/<day>/<node>/events.jsonl`,
/// by each event's own day), in stages: an event goes to the stage after
/// the one of its node's previous event when that went to another file.
/// One stage unless a node's events of the batch span two days.
pub fn stages(events: &[Event], layout: &Layout) -> Result<Vec<Lines>> {
    let mut stages: Vec<Lines> = Vec::new();
    let mut last: HashMap<&Name, (usize, PathBuf)> = HashMap::new();
    for event in events {
        let path = layout.event_log(event.ts.date_naive(), &event.node);
        let stage = match last.get(&event.node) {
            Some((stage, file)) if *file == path => *stage,
            Some((stage, _)) => stage + 1,
            None => 0,
        };
        if stages.len() <= stage {
            stages.resize_with(stage + 1, Lines::new);
        }
        let buffer = stages[stage].entry(path.clone()).or_default();
        serde_json::to_writer(&mut *buffer, event).context("serialize event")?;
        buffer.push(b'\n');
        last.insert(&event.node, (stage, path));
    }
    Ok(stages)
}

/// Where events are kept.
pub trait LogStore {
    /// Appends each file's bytes and makes them durable, with the directory
    /// entries of the files it creates; a file whose last line is torn (a
    /// crash) is ended with a newline first. Returns each file's length
    /// after. A failure may leave any prefix of each file's new bytes.
    fn append(&mut self, lines: &Lines) -> Result<Vec<(PathBuf, u64)>>;
}

/// Appends the stages in order, each durable before the next is written;
/// returns the length of every file touched.
pub fn store(log: &mut impl LogStore, stages: &[Lines]) -> Result<BTreeMap<PathBuf, u64>> {
    let mut sizes = BTreeMap::new();
    for lines in stages {
        sizes.extend(log.append(lines)?);
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::Severity;

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn event(node: &str, seq: u64, id: &str) -> Event {
        Event {
            v: 1,
            id: id.into(),
            ts: at(0),
            node: Name::parse(node).unwrap(),
            seq,
            source: "test".into(),
            kind: "container_started".into(),
            service: None,
            severity: Severity::Info,
            message: String::new(),
            data: serde_json::json!({}),
        }
    }

    fn ids(effects: &Effects) -> Vec<&str> {
        effects.append.iter().map(|e| e.id.as_str()).collect()
    }

    fn acks(effects: &Effects) -> Vec<(String, u64)> {
        effects
            .acks
            .iter()
            .map(|(n, m)| (n.to_string(), *m))
            .collect()
    }

    #[test]
    fn what_a_batch_stores_and_acks() {
        struct Case {
            name: &'static str,
            stored_before: Vec<Event>,
            batch: Vec<Event>,
            append: Vec<&'static str>,
            acks: Vec<(&'static str, u64)>,
        }
        let cases = [
            Case {
                name: "in order: stored, watermark published",
                stored_before: vec![],
                batch: vec![event("a", 1, "e1"), event("a", 2, "e2")],
                append: vec!["e1", "e2"],
                acks: vec![("a", 2)],
            },
            Case {
                name: "a gap: the later one waits, the watermark is repeated",
                stored_before: vec![event("a", 1, "e1")],
                batch: vec![event("a", 3, "e3")],
                append: vec![],
                acks: vec![("a", 1)],
            },
            Case {
                name: "the resent twin of an early copy in the same batch is stored",
                stored_before: vec![],
                batch: vec![
                    event("a", 2, "e2"),
                    event("a", 1, "e1"),
                    event("a", 2, "e2"),
                ],
                append: vec!["e1", "e2"],
                acks: vec![("a", 2)],
            },
            Case {
                name: "a copy with no ack yet: the watermark again",
                stored_before: vec![event("a", 1, "e1")],
                batch: vec![event("a", 1, "e1")],
                append: vec![],
                acks: vec![("a", 1)],
            },
            Case {
                name: "unsequenced: once by id, no watermark",
                stored_before: vec![event("a", 0, "alert")],
                batch: vec![event("a", 0, "alert"), event("a", 0, "other")],
                append: vec!["other"],
                acks: vec![],
            },
            Case {
                name: "the same event under a new seq fills its slot",
                stored_before: vec![event("a", 1, "e1")],
                batch: vec![event("a", 2, "e1"), event("a", 3, "e3")],
                append: vec!["e3"],
                acks: vec![("a", 3)],
            },
            Case {
                name: "nodes apart",
                stored_before: vec![],
                batch: vec![event("b", 1, "b1"), event("a", 2, "a2")],
                append: vec!["b1"],
                acks: vec![("a", 0), ("b", 1)],
            },
        ];
        for case in cases {
            let mut ingest = Ingest::default();
            for e in &case.stored_before {
                ingest.replay(e);
            }
            let effects = ingest.receive(case.batch, at(10));
            assert_eq!(ids(&effects), case.append, "{}", case.name);
            let want: Vec<(String, u64)> =
                case.acks.iter().map(|(n, m)| (n.to_string(), *m)).collect();
            assert_eq!(acks(&effects), want, "{}", case.name);
        }
    }

    #[test]
    fn a_duplicate_right_after_an_ack_is_not_answered() {
        let mut ingest = Ingest::default();
        let first = ingest.receive(vec![event("a", 1, "e1")], at(0));
        assert_eq!(acks(&first), [("a".to_string(), 1)]);
        // The broker's own redelivery, within a second: no ack (it would
        // set off a resend of what is in flight).
        let soon = ingest.receive(vec![event("a", 1, "e1")], at(0));
        assert_eq!(acks(&soon), []);
        assert_eq!(soon.duplicates_by_id, 1);
        // Seconds later the agent is sending again: its ack was lost.
        let later = ingest.receive(vec![event("a", 1, "e1")], at(5));
        assert_eq!(acks(&later), [("a".to_string(), 1)]);
    }

    #[test]
    fn a_node_across_midnight_is_appended_in_stages() {
        let layout = Layout::new("/r");
        let mut late = event("a", 1, "e1");
        late.ts = chrono::DateTime::parse_from_rfc3339("2026-01-01T23:59:59Z")
            .unwrap()
            .into();
        let mut early = event("a", 2, "e2");
        early.ts = chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:01Z")
            .unwrap()
            .into();
        let mut other = event("b", 1, "b1");
        other.ts = early.ts;
        let mut back = event("a", 3, "e3");
        back.ts = late.ts;
        let stages = stages(&[late, early, other, back], &layout).unwrap();
        let files: Vec<Vec<String>> = stages
            .iter()
            .map(|s| s.keys().map(|p| p.display().to_string()).collect())
            .collect();
        assert_eq!(
            files,
            [
                vec![
                    "/r/events/2026-01-01/a/events.jsonl",
                    "/r/events/2026-01-02/b/events.jsonl"
                ],
                vec!["/r/events/2026-01-02/a/events.jsonl"],
                vec!["/r/events/2026-01-01/a/events.jsonl"],
            ]
        );
    }
}
