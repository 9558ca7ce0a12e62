//! Per-node delivery order: which `seq` the observer stores next.
//!
//! The log of a node is kept in `seq` order, go-back-N style: only the next
//! expected `seq` is stored; a later one is left unacknowledged (the agent
//! sends everything past the watermark again, in order, when acks stall),
//! and an earlier one is a duplicate. Two things move the watermark past
//! events that will never come:
//! - an `events_dropped` notice whose range (`data.first_seq` up to its own
//!   `seq`) starts at or before the next expected `seq`: the agent's full
//!   outbox dropped them, and said so;
//! - a gap nothing fills for [`GAP_GRACE`] while later events keep coming: it
//!   is accepted, counted and shown as an incident, so a lost event cannot
//!   stall a node forever.
//!
//! Pure: the caller passes the time.

use homelab_core::event::kinds;
use homelab_core::time::Timestamp;
use homelab_core::Event;

/// How long later events may wait for a missing one before the gap is
/// accepted. Longer than the agent's default resend timeout (30 s).
pub const GAP_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// How long an accepted gap stays an open incident.
pub const GAP_SHOWN: chrono::TimeDelta = chrono::TimeDelta::hours(24);

#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next event of the node: store it.
    Store,
    /// Its `seq` is behind the watermark: already stored or explained.
    Behind,
    /// Ahead of a missing event: not stored now, sent again later.
    Early,
}

#[derive(Debug, Clone)]
pub struct Sequence {
    next: u64,
    early_since: Option<Timestamp>,
    pub gaps: Vec<Gap>,
}

impl Default for Sequence {
    fn default() -> Self {
        Sequence {
            next: 1,
            early_since: None,
            gaps: Vec::new(),
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
        let since = *self.early_since.get_or_insert(now);
        if now - since >= GAP_GRACE {
            self.gaps.push(Gap {
                from: self.next,
                to: seq - 1,
                at: now,
            });
            self.advance_to(seq);
            return Admit::Store;
        }
        Admit::Early
    }

    /// The same event arrived again under a new `seq` (handed over twice):
    /// its slot is filled all the same.
    pub fn fill(&mut self, seq: u64) {
        if seq == self.next {
            self.advance_to(seq);
        }
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

    /// Later events waiting for a missing one.
    pub fn waiting(&self) -> bool {
        self.early_since.is_some()
    }

    /// The latest gap accepted within [`GAP_SHOWN`].
    pub fn recent_gap(&self, now: Timestamp) -> Option<&Gap> {
        self.gaps.last().filter(|g| now - g.at < GAP_SHOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::{Name, Severity};
    use serde_json::json;

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
        // A gap nothing fills is accepted after the grace.
        check(
            &[
                (event(1), 0, Store),
                (event(5), 10, Early),
                (event(6), 30, Early),
                (event(5), 70, Store),
            ],
            5,
        );
    }

    #[test]
    fn accepted_gaps_are_remembered() {
        let mut s = Sequence::default();
        s.admit(&event(1), at(0));
        s.admit(&event(4), at(0));
        assert!(s.waiting());
        s.admit(&event(4), at(61));
        assert_eq!(
            s.recent_gap(at(62)),
            Some(&Gap {
                from: 2,
                to: 3,
                at: at(61)
            })
        );
        assert!(s.recent_gap(at(61 + 86_400)).is_none());
        s.fill(5);
        assert_eq!(s.watermark(), 5);
    }
}
