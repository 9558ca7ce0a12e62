//! The ids the observer remembers, to store each event once: bounded in
//! time and in count, whatever the log's size.
//!
//! A sequenced event that comes again is already refused by its node's
//! watermark (its `seq` is behind it); ids matter for unsequenced events
//! (alerts, scripts, Home Assistant automations) and for an event handed to
//! the outbox twice under two `seq`s (a crash between the spool and the
//! outbox), which happens close together. So ids are kept for [`KEEP`] after
//! they were stored, at most [`MAX_IDS`] of them (the oldest go first).
//! Pure: the caller passes the time.

use std::collections::{HashMap, VecDeque};

use homelab_core::time::Timestamp;

/// How long an id is remembered.
pub const KEEP: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// At most this many ids are remembered (about 100 bytes each).
pub const MAX_IDS: usize = 500_000;

#[derive(Debug, Clone, Default)]
pub struct RecentIds {
    /// Ids come from outside: the hasher is seeded per process (SipHash
    /// cost 3% of the control plane's CPU under load).
    at: HashMap<String, Timestamp, foldhash::fast::RandomState>,
    /// Ids in the order they were stored.
    order: VecDeque<(Timestamp, String)>,
}

impl RecentIds {
    pub fn contains(&self, id: &str) -> bool {
        self.at.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Remembers `id`, stored at `at`; false if it was known.
    pub fn insert(&mut self, id: &str, at: Timestamp) -> bool {
        if self.at.contains_key(id) {
            return false;
        }
        self.at.insert(id.to_string(), at);
        self.order.push_back((at, id.to_string()));
        while self.order.len() > MAX_IDS {
            self.pop_oldest();
        }
        true
    }

    /// Forgets ids stored more than [`KEEP`] before `now`.
    pub fn expire(&mut self, now: Timestamp) {
        while self.order.front().is_some_and(|(at, _)| now - *at > KEEP) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.at.remove(&id);
        }
    }

    /// Every id with when it was stored, oldest first (for the checkpoint).
    pub fn entries(&self) -> impl Iterator<Item = &(Timestamp, String)> {
        self.order.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn remembers_for_a_day_then_forgets() {
        let mut ids = RecentIds::default();
        assert!(ids.insert("a", at(0)));
        assert!(!ids.insert("a", at(10)), "a duplicate");
        assert!(ids.insert("b", at(3600)));
        ids.expire(at(86_400));
        assert!(ids.contains("a"), "exactly a day old: kept");
        ids.expire(at(86_401));
        assert!(!ids.contains("a"));
        assert!(ids.contains("b"));
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn bounded_in_count() {
        let mut ids = RecentIds::default();
        for i in 0..MAX_IDS + 10 {
            ids.insert(&i.to_string(), at(0));
        }
        assert_eq!(ids.len(), MAX_IDS);
        assert!(!ids.contains("0"), "the oldest went first");
        assert!(ids.contains(&(MAX_IDS + 9).to_string()));
    }
}
