//! Per-node delivery order: which `seq` the observer stores next.
//!
//! The log of a node is kept in `seq` order, go-back-N style: only the next
//! expected `seq` is stored; a later one is left unacknowledged and the
//! observer repeats its watermark, which the agent answers by sending
//! everything past it again, in order; an earlier one is a duplicate.
//!
//! The watermark never moves past an event the agent may still hold. Only
//! the agent can say an event is gone: an `events_dropped` notice whose
//! range (`data.first_seq` up to its own `seq`) starts at or before the
//! next expected `seq` (its full outbox dropped them), or a renumbering
//! after it lost its own state (it then sends from above the watermark).
//! A node whose next event does not come is shown as waiting, never
//! skipped: time alone proves nothing about an edge site on a dead uplink.
//!
//! Pure: the caller passes the time.

use homelab_core::event::kinds;
use homelab_core::time::Timestamp;
use homelab_core::Event;

/// How long later events may wait for a missing one before the node is
/// shown as stalled (an incident; nothing is skipped).
pub const STALL_SHOWN_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next event of the node: store it.
    Store,
    /// Its `seq` is behind the watermark: already stored or explained.
    Behind,
    /// Ahead of a missing event: not stored now, sent again later.
    Early,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sequence {
    next: u64,
    #[serde(skip)]
    early_since: Option<Timestamp>,
}

impl Default for Sequence {
    fn default() -> Self {
        Sequence {
            next: 1,
            early_since: None,
        }
    }
}

impl Sequence {
    /// Every `seq` up to this one is on disk or explained.
    pub fn watermark(&self) -> u64 {
        self.next - 1
    }

    /// Decides about an event with a new id.
    pub fn admit(&mut self, event: &Event, now: Timestamp) -> Admit {
        let seq = event.seq;
        let notice_from = (event.kind == kinds::EVENTS_DROPPED)
            .then(|| event.data.get("first_seq").and_then(|v| v.as_u64()))
            .flatten();
        let explains = notice_from.is_some_and(|from| from <= self.next && seq >= self.next);
        if seq == self.next || explains {
            self.advance_to(seq);
            return Admit::Store;
        }
        if seq < self.next {
            return Admit::Behind;
        }
        self.early_since.get_or_insert(now);
        Admit::Early
    }

    /// The same event arrived again under a new `seq` (handed over twice):
    /// its slot is filled all the same. True if the watermark moved.
    pub fn fill(&mut self, seq: u64) -> bool {
        let moved = seq == self.next;
        if moved {
            self.advance_to(seq);
        }
        moved
    }

    /// An event read back from the log at start.
    pub fn replay(&mut self, event: &Event) {
        if event.seq >= self.next {
            self.next = event.seq + 1;
        }
    }

    fn advance_to(&mut self, seq: u64) {
        self.next = seq + 1;
        self.early_since = None;
    }

    /// Since when later events have been waiting for the next `seq`, once
    /// that is longer than [`STALL_SHOWN_AFTER`].
    pub fn stalled(&self, now: Timestamp) -> Option<Timestamp> {
        self.early_since
            .filter(|since| now - *since >= STALL_SHOWN_AFTER)
    }
}

/// How long after its last ack a node's duplicate counts as a sign that
/// the agent never got that ack. An agent sends again only after 2 s
/// without progress; a broker's own duplicate comes within milliseconds.
pub const ACK_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What a batch saw of one node, for [`publish_ack`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckCue {
    /// The watermark moved.
    pub moved: bool,
    /// An event came ahead of a missing one (go-back-N: ask again).
    pub early: bool,
    /// A copy of an event already stored came.
    pub duplicate: bool,
}

/// Whether the node's watermark is published after a batch: when it moved;
/// when an event came ahead of a missing one (the repeat asks the agent to
/// send again from there); and when a duplicate comes at least
/// [`ACK_LOST_AFTER`] after the last ack, or with none published yet: the
/// agent is sending again what the log has, so the ack was lost on the way
/// (a broker may drop it). Not for a duplicate right after an ack: a
/// repeat with events in flight sets off a resend.
pub fn publish_ack(cue: AckCue, since_last_ack: Option<std::time::Duration>) -> bool {
    cue.moved
        || cue.early
        || (cue.duplicate && since_last_ack.is_none_or(|since| since >= ACK_LOST_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::{Name, Severity};
    use serde_json::json;

    #[test]
    fn when_a_watermark_is_published() {
        let ms = std::time::Duration::from_millis;
        let cue = |moved, early, duplicate| AckCue {
            moved,
            early,
            duplicate,
        };
        for (cue, since, publish) in [
            (cue(true, false, false), Some(ms(5)), true),
            (cue(false, true, false), Some(ms(5)), true),
            (cue(false, false, false), None, false),
            // A lost ack: the agent sends again after its stall timer.
            (cue(false, false, true), Some(ms(2000)), true),
            (cue(false, false, true), Some(ms(1000)), true),
            (cue(false, false, true), None, true),
            // The broker's own duplicate, right after the ack.
            (cue(false, false, true), Some(ms(30)), false),
        ] {
            assert_eq!(publish_ack(cue, since), publish, "{cue:?} {since:?}");
        }
    }

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn event(seq: u64) -> Event {
        Event {
            v: 1,
            id: format!("E{seq}"),
            ts: at(0),
            node: Name::parse("n").unwrap(),
            seq,
            source: "node-agent".into(),
            kind: "x".into(),
            service: None,
            severity: Severity::Info,
            message: String::new(),
            data: json!({}),
        }
    }

    fn notice(seq: u64, first: u64) -> Event {
        Event {
            kind: "events_dropped".into(),
            data: json!({"first_seq": first, "through_seq": seq, "dropped": seq - first + 1}),
            ..event(seq)
        }
    }

    /// Feeds (event, time) and checks each answer and the final watermark.
    fn check(feed: &[(Event, i64, Admit)], watermark: u64) {
        let mut s = Sequence::default();
        for (e, t, expected) in feed {
            assert_eq!(s.admit(e, at(*t)), *expected, "seq {}", e.seq);
        }
        assert_eq!(s.watermark(), watermark);
    }

    #[test]
    fn order_rules() {
        use Admit::*;
        check(
            &[
                (event(1), 0, Store),
                (event(2), 0, Store),
                (event(3), 0, Store),
            ],
            3,
        );
        check(&[(event(1), 0, Store), (event(1), 0, Behind)], 1);
        // Go-back-N: 3 waits for 2, then comes again.
        check(
            &[
                (event(1), 0, Store),
                (event(3), 0, Early),
                (event(2), 1, Store),
                (event(3), 2, Store),
            ],
            3,
        );
        // A notice explains the dropped range and keeps the order.
        check(&[(notice(40, 1), 0, Store), (event(41), 0, Store)], 41);
        check(&[(event(1), 0, Store), (notice(40, 1), 0, Store)], 40);
        check(&[(notice(40, 5), 0, Early)], 0);
        // A gap is never skipped, however long later events wait.
        check(
            &[
                (event(1), 0, Store),
                (event(5), 10, Early),
                (event(6), 30, Early),
                (event(5), 86_400, Early),
                (event(2), 86_401, Store),
            ],
            2,
        );
    }

    #[test]
    fn a_node_waiting_for_a_missing_event_is_shown_stalled() {
        let mut s = Sequence::default();
        s.admit(&event(1), at(0));
        s.admit(&event(4), at(0));
        assert_eq!(s.stalled(at(59)), None);
        assert_eq!(s.stalled(at(61)), Some(at(0)));
        s.admit(&event(2), at(62));
        assert_eq!(s.stalled(at(63)), None);
        s.fill(3);
        assert_eq!(s.watermark(), 3);
    }
}
