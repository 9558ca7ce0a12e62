//! How the page says things: times as "3 min ago" with the exact time on
//! hover, and statuses with an icon as well as a colour and a word, so they
//! read the same to a colour-blind operator. Pure, tested by table.

use homelab_core::time::Timestamp;

/// A moment as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// An action as a person says it: "Restart zigbee2mqtt on piha".
pub fn action_title(kind: &str, node: &str, service: &str) -> String {
    match (kind, service.is_empty()) {
        ("container_restart", false) => format!("Restart {service} on {node}"),
        ("redeploy", false) => format!("Redeploy {service} on {node}"),
        ("disk_cleanup", _) => format!("Clean up disk space on {node}"),
        ("alert_only", false) => format!("Look at {service} on {node}"),
        ("alert_only", true) => format!("Look at {node}"),
        (other, false) => format!("{} {service} on {node}", words(other)),
        (other, true) => format!("{} on {node}", words(other)),
    }
}

/// An incident as a person says it: "zigbee2mqtt on piha is not running".
/// Its id (`kind:node[:service]`) stays beside it, small, for copying.
pub fn incident_title(kind: &str, node: &str, service: &str) -> String {
    let on = |what: &str| format!("{service} on {node} {what}");
    match kind {
        "service_not_running" => on("is not running"),
        "service_unhealthy" => on("is unhealthy"),
        "service_missing" => format!("{service} is missing on {node}"),
        "node_offline" => format!("{node} is offline"),
        "node_never_reported" => format!("{node} has never reported"),
        "docker_unreachable" => format!("Docker on {node} does not answer"),
        "no_snapshot" => format!("{node} has sent no container list"),
        "delivery_stalled" => format!("Events from {node} are held up"),
        "tailscale_down" => format!("Tailscale on {node} is down"),
        "peer_unreachable" => format!("{node} cannot reach a peer it needs"),
        "repo_invalid" => "The desired state's latest commit is invalid".into(),
        "repo_unreachable" => "The desired state's repo cannot be fetched".into(),
        other if service.is_empty() => format!("{} on {node}", capitalized(&words(other))),
        other => format!("{} on {node}: {}", service, words(other)),
    }
}

/// The title of an incident from its id alone.
pub fn incident_title_of_id(id: &str) -> String {
    let mut parts = id.splitn(3, ':');
    let kind = parts.next().unwrap_or_default();
    let node = parts.next().unwrap_or_default();
    let service = parts.next().unwrap_or_default();
    incident_title(kind, node, service)
}

fn words(kind: &str) -> String {
    kind.replace('_', " ")
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The icon of an action's state: a running action is not done (▶), only
/// a completed one is ✓.
pub fn action_icon(state: &str) -> &'static str {
    match state {
        "running" => "▶",
        other => icon(other),
    }
}

/// The icon that goes with a status word: ✓ fine, ✗ down or failed,
/// ▲ degraded or waiting, ● anything else.
pub fn icon(status: &str) -> &'static str {
    match status {
        "online" | "running" | "healthy" | "ok" | "completed" | "info" => "✓",
        "offline" | "not_running" | "missing" | "unreachable" | "failed" | "error" | "critical"
        | "never_reported" => "✗",
        "unhealthy" | "warning" | "pending" | "approved" | "waiting" => "▲",
        _ => "●",
    }
}

/// A span of time in its two largest units: "45 s", "12 min", "3 h 5 min",
/// "2 d 4 h".
pub fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3_599 => format!("{} min", secs / 60),
        3_600..=86_399 => match secs % 3_600 / 60 {
            0 => format!("{} h", secs / 3_600),
            m => format!("{} h {m} min", secs / 3_600),
        },
        _ => match secs % 86_400 / 3_600 {
            0 => format!("{} d", secs / 86_400),
            h => format!("{} d {h} h", secs / 86_400),
        },
    }
}

/// Bytes in decimal units: "512 B", "3.2 kB", "4.0 GB".
pub fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Text made safe as one path segment or query value: everything but
/// letters, digits and `-._~` percent-encoded.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_segments() {
        for (secs, text) in [
            (0, "0 s"),
            (59, "59 s"),
            (60, "1 min"),
            (3_599, "59 min"),
            (3_600, "1 h"),
            (3_900, "1 h 5 min"),
            (86_400, "1 d"),
            (2 * 86_400 + 4 * 3_600 + 59, "2 d 4 h"),
        ] {
            assert_eq!(duration(secs), text, "{secs}");
        }
        for (n, text) in [
            (0, "0 B"),
            (999, "999 B"),
            (1_000, "1.0 kB"),
            (3_240, "3.2 kB"),
            (4_000_000_000, "4.0 GB"),
            (u64::MAX, "18446744.1 TB"),
        ] {
            assert_eq!(bytes(n), text, "{n}");
        }
        assert_eq!(
            path_segment("service_not_running:n1:app"),
            "service_not_running%3An1%3Aapp"
        );
        assert_eq!(path_segment("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(
            path_segment("2026-11-24T10:00:00.000Z"),
            "2026-11-24T10%3A00%3A00.000Z"
        );
    }

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
    fn titles_say_what_in_words() {
        for (kind, node, service, title) in [
            (
                "container_restart",
                "piha",
                "zigbee2mqtt",
                "Restart zigbee2mqtt on piha",
            ),
            ("redeploy", "vps", "outline", "Redeploy outline on vps"),
            ("disk_cleanup", "vps", "", "Clean up disk space on vps"),
            (
                "alert_only",
                "piha",
                "homeassistant",
                "Look at homeassistant on piha",
            ),
        ] {
            assert_eq!(action_title(kind, node, service), title);
        }
        for (id, title) in [
            (
                "service_not_running:piha:zigbee2mqtt",
                "zigbee2mqtt on piha is not running",
            ),
            (
                "service_unhealthy:piha:mosquitto",
                "mosquitto on piha is unhealthy",
            ),
            ("service_missing:vps:npm", "npm is missing on vps"),
            ("node_offline:chelsty", "chelsty is offline"),
            ("node_never_reported:saturn", "saturn has never reported"),
            ("disk_pressure:vps", "Disk pressure on vps"),
            (
                "mqtt_unreachable:piha:mosquitto",
                "mosquitto on piha: mqtt unreachable",
            ),
        ] {
            assert_eq!(incident_title_of_id(id), title, "{id}");
        }
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
        for (state, icon) in [
            ("pending", "▲"),
            ("approved", "▲"),
            ("running", "▶"),
            ("completed", "✓"),
            ("failed", "✗"),
            ("rejected", "●"),
        ] {
            assert_eq!(action_icon(state), icon, "{state}");
        }
    }
}
