//! The event log over months: days older than `compress_after` are
//! compressed (zstd, `events.jsonl.zst` beside where `events.jsonl` was),
//! days older than `keep` are removed. Readers (`eventlog`) read both forms.
//!
//! The decision is pure ([`plan`]); the observer carries it out between
//! batches, so no append races a compression: a late event for a compressed
//! day starts a new `events.jsonl`, which the next pass folds into the
//! `.zst` (dropping lines whose id is already there, so a crash between
//! writing the `.zst` and removing the plain file duplicates nothing).

use chrono::NaiveDate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Days at least this old (in whole days before today, UTC) are
    /// compressed. At least 2: today's and yesterday's files are read and
    /// appended to all the time.
    pub compress_after_days: u32,
    /// Days at least this old are removed.
    pub keep_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            compress_after_days: 7,
            keep_days: 90,
        }
    }
}

impl Policy {
    pub fn new(compress_after_days: u32, keep_days: u32) -> Policy {
        Policy {
            compress_after_days: compress_after_days.max(2),
            keep_days: keep_days.max(compress_after_days.max(2)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Compress(NaiveDate),
    Remove(NaiveDate),
}

/// What to do with each day of the log: `days` are (day, whether it still
/// has plain `events.jsonl` files).
pub fn plan(days: &[(NaiveDate, bool)], today: NaiveDate, policy: Policy) -> Vec<Step> {
    let mut steps = Vec::new();
    for (day, plain) in days {
        let age = (today - *day).num_days();
        if age >= policy.keep_days as i64 {
            steps.push(Step::Remove(*day));
        } else if age >= policy.compress_after_days as i64 && *plain {
            steps.push(Step::Compress(*day));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn check(days: &[(&str, bool)], policy: Policy, expected: &[Step]) {
        let days: Vec<_> = days.iter().map(|(s, p)| (d(s), *p)).collect();
        assert_eq!(plan(&days, d("2026-11-23"), policy), expected, "{days:?}");
    }

    #[test]
    fn days_by_age() {
        let policy = Policy::default();
        check(
            &[
                ("2026-08-24", false), // 91 days: removed, compressed or not
                ("2026-08-25", true),  // 90 days: removed
                ("2026-08-26", true),  // 89 days: compressed
                ("2026-11-16", true),  // 7 days: compressed
                ("2026-11-17", true),  // 6 days: left
                ("2026-11-23", true),  // today
            ],
            policy,
            &[
                Step::Remove(d("2026-08-24")),
                Step::Remove(d("2026-08-25")),
                Step::Compress(d("2026-08-26")),
                Step::Compress(d("2026-11-16")),
            ],
        );
        // Already compressed, nothing new: nothing to do.
        check(&[("2026-11-01", false)], policy, &[]);
    }

    #[test]
    fn today_and_yesterday_are_never_compressed() {
        let policy = Policy::new(0, 0);
        assert_eq!(policy, Policy::new(2, 2));
        check(
            &[("2026-11-22", true), ("2026-11-21", true)],
            policy,
            &[Step::Remove(d("2026-11-21"))],
        );
    }
}
