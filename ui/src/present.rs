//! How the page says things: times as "3 min ago" with the exact time on
//! hover, and statuses with an icon as well as a colour and a word, so they
//! read the same to a colour-blind operator. Pure, tested by table.

use homelab_core::time::Timestamp;

/// A moment as the page shows it.
pub struct When {
    /// RFC 3339, for `datetime` and the hover title.
    pub exact: String,
    /// "42 s ago", "3 min ago", "5 h ago", "2 d ago".
    pub ago: String,
}

impl When {
    pub fn new(at: &Timestamp, now: &Timestamp) -> When {
        When {
            exact: homelab_core::time::format(at),
            ago: ago(at, now),
        }
    }
}

/// How long before `now` `at` was, in the largest whole unit.
pub fn ago(at: &Timestamp, now: &Timestamp) -> String {
    let secs = (*now - *at).num_seconds();
    match secs {
        i64::MIN..=9 => "just now".into(),
        10..=59 => format!("{secs} s ago"),
        60..=3_599 => format!("{} min ago", secs / 60),
        3_600..=86_399 => format!("{} h ago", secs / 3_600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// The icon that goes with a status word: ✓ fine, ✗ down or failed,
/// ▲ degraded or waiting, ● anything else.
pub fn icon(status: &str) -> &'static str {
    match status {
        "online" | "running" | "healthy" | "ok" | "completed" | "info" => "✓",
        "offline" | "not_running" | "missing" | "unreachable" | "failed" | "error" | "critical"
        | "never_reported" => "✗",
        "unhealthy" | "warning" | "pending" | "approved" => "▲",
        _ => "●",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_how_long_ago() {
        let now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let before = |secs: i64| now - chrono::Duration::seconds(secs);
        let cases = [
            (before(-30), "just now"),
            (before(0), "just now"),
            (before(9), "just now"),
            (before(10), "10 s ago"),
            (before(59), "59 s ago"),
            (before(60), "1 min ago"),
            (before(3_599), "59 min ago"),
            (before(3_600), "1 h ago"),
            (before(86_399), "23 h ago"),
            (before(86_400), "1 d ago"),
            (before(40 * 86_400), "40 d ago"),
        ];
        for (at, expected) in cases {
            assert_eq!(ago(&at, &now), expected, "{at}");
        }
        let when = When::new(&before(180), &now);
        assert_eq!(when.exact, "2026-11-24T11:57:00.000Z");
        assert_eq!(when.ago, "3 min ago");
    }

    #[test]
    fn every_status_has_an_icon_by_its_meaning() {
        for (status, expected) in [
            ("online", "✓"),
            ("healthy", "✓"),
            ("offline", "✗"),
            ("not_running", "✗"),
            ("missing", "✗"),
            ("never_reported", "✗"),
            ("unhealthy", "▲"),
            ("pending", "▲"),
            ("cancelled", "●"),
        ] {
            assert_eq!(icon(status), expected, "{status}");
        }
    }
}
