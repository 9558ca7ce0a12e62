//! Maintenance windows (`inventory/maintenance.yaml`): times when a node, or
//! some services on it, are expected to be down. Inside a window the
//! supervisor proposes nothing new for them (pending actions stay for
//! after) and their incidents are marked as in maintenance.
//!
//! ```yaml
//! windows:
//!   - name: saturn-backup
//!     node: saturn
//!     services: [outline]        # optional: without it, the whole node
//!     cron: "0 3 * * *"          # UTC, five fields: minute hour day month weekday
//!     duration: 1h
//!   - name: modem-swap
//!     node: chelsty-infra
//!     from: 2026-12-05T08:00:00Z
//!     until: 2026-12-05T12:00:00Z
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::time::Timestamp;

/// One window as written in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub name: Name,
    pub node: Name,
    #[serde(default)]
    pub services: Vec<Name>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default, with = "crate::time::option")]
    pub from: Option<Timestamp>,
    #[serde(default, with = "crate::time::option")]
    pub until: Option<Timestamp>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceFile {
    #[serde(default)]
    pub windows: Vec<WindowSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// One fixed range, `from` inclusive, `until` exclusive.
    Once { from: Timestamp, until: Timestamp },
    /// Every time the cron pattern (UTC) matches, for `duration`.
    Cron {
        pattern: String,
        cron: Box<croner::Cron>,
        duration: Duration,
    },
}

/// A checked window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub name: Name,
    pub node: Name,
    /// Empty: the whole node.
    pub services: Vec<Name>,
    pub schedule: Schedule,
    pub description: Option<String>,
}

/// Where a window stands at some time, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    pub window: Name,
    #[serde(with = "crate::time")]
    pub until: Timestamp,
}

impl WindowSpec {
    /// Checks the schedule; the caller checks node and service names.
    pub fn check(self) -> Result<Window, String> {
        let schedule = match (&self.cron, &self.duration, self.from, self.until) {
            (Some(pattern), Some(duration), None, None) => {
                let cron: croner::Cron = pattern
                    .parse()
                    .map_err(|e| format!("bad cron pattern {pattern:?}: {e}"))?;
                let duration = crate::time::parse_duration(duration)?;
                if duration.is_zero() {
                    return Err("duration must be more than 0s".into());
                }
                Schedule::Cron {
                    pattern: pattern.clone(),
                    cron: Box::new(cron),
                    duration,
                }
            }
            (Some(_), None, None, None) => return Err("cron needs a duration".into()),
            (None, None, Some(from), Some(until)) => {
                if until <= from {
                    return Err("until must be after from".into());
                }
                Schedule::Once { from, until }
            }
            (None, _, Some(_), None) | (None, _, None, Some(_)) => {
                return Err("a fixed window needs both from and until".into())
            }
            (None, _, None, None) => {
                return Err("a window needs either cron and duration, or from and until".into())
            }
            _ => return Err("give either cron and duration, or from and until, not both".into()),
        };
        Ok(Window {
            name: self.name,
            node: self.node,
            services: self.services,
            schedule,
            description: self.description,
        })
    }
}

impl Window {
    /// Whether the window is open at `now`, and until when.
    pub fn open_at(&self, now: Timestamp) -> Option<Timestamp> {
        match &self.schedule {
            Schedule::Once { from, until } => (*from <= now && now < *until).then_some(*until),
            Schedule::Cron { cron, duration, .. } => {
                // The latest start at or before now; an earlier start ends
                // earlier, so it is the only one that can still be open.
                let start: Timestamp = cron.find_previous_occurrence(&now, true).ok()?;
                let end = start + chrono::Duration::from_std(*duration).ok()?;
                (now < end).then_some(end)
            }
        }
    }

    /// Whether the window is about `node` (and `service`, if given). A
    /// window for a whole node covers all its services.
    pub fn covers(&self, node: &Name, service: Option<&Name>) -> bool {
        &self.node == node
            && (self.services.is_empty() || service.is_some_and(|s| self.services.contains(s)))
    }
}

/// The window, if any, that covers `node`/`service` at `now`; of several,
/// the one open the longest.
pub fn active(
    windows: &[Window],
    node: &Name,
    service: Option<&Name>,
    now: Timestamp,
) -> Option<Active> {
    windows
        .iter()
        .filter(|w| w.covers(node, service))
        .filter_map(|w| {
            w.open_at(now).map(|until| Active {
                window: w.name.clone(),
                until,
            })
        })
        .max_by_key(|a| a.until)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(yaml: &str) -> Result<Window, String> {
        serde_yaml::from_str::<WindowSpec>(yaml)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn cron_window_is_open_for_its_duration() {
        let w = window("{name: b, node: saturn, cron: '0 3 * * *', duration: 1h}").unwrap();
        assert_eq!(w.open_at(t("2026-12-01T02:59:59Z")), None);
        assert_eq!(
            w.open_at(t("2026-12-01T03:00:00Z")),
            Some(t("2026-12-01T04:00:00Z"))
        );
        assert_eq!(
            w.open_at(t("2026-12-01T03:59:59Z")),
            Some(t("2026-12-01T04:00:00Z"))
        );
        assert_eq!(w.open_at(t("2026-12-01T04:00:00Z")), None);
        // Across midnight.
        let w = window("{name: b, node: saturn, cron: '30 23 * * 0', duration: 2h}").unwrap();
        // 2026-12-06 is a Sunday.
        assert!(w.open_at(t("2026-12-07T01:00:00Z")).is_some());
        assert!(w.open_at(t("2026-12-08T01:00:00Z")).is_none());
    }

    #[test]
    fn fixed_window_and_coverage() {
        let w = window(
            "{name: m, node: edge, services: [mosquitto], from: 2026-12-05T08:00:00Z, until: 2026-12-05T12:00:00Z}",
        )
        .unwrap();
        assert!(w.open_at(t("2026-12-05T07:59:59Z")).is_none());
        assert!(w.open_at(t("2026-12-05T08:00:00Z")).is_some());
        assert!(w.open_at(t("2026-12-05T12:00:00Z")).is_none());
        assert!(w.covers(&n("edge"), Some(&n("mosquitto"))));
        assert!(!w.covers(&n("edge"), Some(&n("npm"))));
        assert!(
            !w.covers(&n("edge"), None),
            "a service window is not a node window"
        );
        let whole = window("{name: m, node: edge, cron: '* * * * *', duration: 1m}").unwrap();
        assert!(whole.covers(&n("edge"), None));
        assert!(whole.covers(&n("edge"), Some(&n("npm"))));
        assert!(!whole.covers(&n("other"), None));
    }

    #[test]
    fn bad_schedules_say_why() {
        for (yaml, why) in [
            ("{name: a, node: b}", "either cron and duration"),
            ("{name: a, node: b, cron: '0 3 * * *'}", "needs a duration"),
            ("{name: a, node: b, cron: 'every day', duration: 1h}", "bad cron"),
            ("{name: a, node: b, cron: '0 3 * * *', duration: 0s}", "more than 0s"),
            ("{name: a, node: b, from: 2026-12-05T08:00:00Z}", "both from and until"),
            (
                "{name: a, node: b, from: 2026-12-05T08:00:00Z, until: 2026-12-05T07:00:00Z}",
                "after from",
            ),
            (
                "{name: a, node: b, cron: '0 3 * * *', duration: 1h, from: 2026-12-05T08:00:00Z, until: 2026-12-05T09:00:00Z}",
                "not both",
            ),
        ] {
            let got = window(yaml).unwrap_err();
            assert!(got.contains(why), "{yaml}: {got}");
        }
    }
}
