//! The status bars of a node page and a node card: the last 24 hours in
//! quarter-hours and the last 30 days in days, with uptime, from the
//! observer's `world/status_history.json` ([`homelab_core::uptime`]) and
//! the incidents open now. Pure: the page handler reads the files and the
//! clock and hands them in.

use homelab_core::name::Name;
use homelab_core::time::Timestamp;
use homelab_core::uptime::{self, Bucket, Class, Segment, Span, Track};
use homelab_core::world::Incident;

/// Segments of the day's bar (quarter-hours) and of the month's (days).
pub const DAY_SEGMENTS: usize = 96;
pub const MONTH_SEGMENTS: usize = 30;

/// One drawn piece of a bar: a run of segments of one class, in SVG units
/// (one per segment).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub x: usize,
    pub width: usize,
    pub class: &'static str,
    /// What a hover or a tap shows: when, and how long it was not up.
    pub title: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BarView {
    pub segments: usize,
    pub runs: Vec<Run>,
    /// e.g. `99.93 %`, or `–` when nothing of it is known.
    pub uptime: String,
    /// The worst class of the bar, for the row's tone.
    pub worst: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    /// The node, or one of its services.
    pub label: String,
    pub service: bool,
    pub day: BarView,
    pub month: BarView,
}

/// What the rows are made of.
pub struct Inputs<'a> {
    /// The node's names: its own and the aliases it reported under.
    pub names: &'a [Name],
    /// When it first reported, if it did.
    pub first_seen: Option<Timestamp>,
    /// Its services (seen or wanted), in the order to show.
    pub services: &'a [Name],
    /// The status history's tracks of this node (under any of its names);
    /// others are passed over.
    pub tracks: &'a [&'a Track],
    /// The incidents open now (all nodes': those of this one are picked).
    pub open: &'a [Incident],
    pub now: Timestamp,
}

/// The node's row and then one per service.
pub fn rows(inputs: &Inputs) -> Vec<StatusRow> {
    let node = inputs
        .names
        .first()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let mine = |t: &&&Track| inputs.names.contains(&t.node);
    let node_buckets: Vec<&Bucket> = inputs
        .tracks
        .iter()
        .filter(mine)
        .filter(|t| t.service.is_none())
        .flat_map(|t| t.buckets.iter())
        .collect();
    let mut node_spans: Vec<Span> = Vec::new();
    let mut offline_spans: Vec<Span> = Vec::new();
    let window_start = inputs.now - chrono::Duration::days(31);
    match inputs.first_seen {
        Some(first) if first > window_start => {
            node_spans.push(Span {
                class: Class::Unknown,
                from: window_start,
                to: first,
            });
            offline_spans.push(Span {
                class: Class::Unknown,
                from: window_start,
                to: first,
            });
        }
        Some(_) => {}
        None => {
            let all = Span {
                class: Class::Unknown,
                from: window_start,
                to: inputs.now,
            };
            node_spans.push(all);
            offline_spans.push(all);
        }
    }
    let mut service_spans: Vec<(Name, Span)> = Vec::new();
    for incident in inputs
        .open
        .iter()
        .filter(|i| inputs.names.contains(&i.node))
    {
        for (_, service, class) in uptime::classify(incident) {
            let span = Span {
                class,
                from: incident.opened_at,
                to: inputs.now,
            };
            match service {
                Some(s) => service_spans.push((s, span)),
                None => {
                    if class == Class::Down {
                        offline_spans.push(Span {
                            class: Class::Unknown,
                            ..span
                        });
                    }
                    node_spans.push(span);
                }
            }
        }
    }
    // A service's time is unknown while its node was offline.
    let offline_buckets: Vec<Bucket> = node_buckets
        .iter()
        .filter(|b| b.down > 0)
        .map(|b| Bucket {
            unknown: b.down,
            down: 0,
            degraded: 0,
            ..**b
        })
        .collect();
    let mut out = vec![StatusRow {
        label: node,
        service: false,
        day: view(&node_buckets, &node_spans, Scale::Day, inputs.now),
        month: view(&node_buckets, &node_spans, Scale::Month, inputs.now),
    }];
    for service in inputs.services {
        let mut buckets: Vec<&Bucket> = inputs
            .tracks
            .iter()
            .filter(mine)
            .filter(|t| t.service.as_ref() == Some(service))
            .flat_map(|t| t.buckets.iter())
            .collect();
        buckets.extend(offline_buckets.iter());
        let mut spans = offline_spans.clone();
        spans.extend(
            service_spans
                .iter()
                .filter(|(s, _)| s == service)
                .map(|(_, span)| *span),
        );
        out.push(StatusRow {
            label: service.to_string(),
            service: true,
            day: view(&buckets, &spans, Scale::Day, inputs.now),
            month: view(&buckets, &spans, Scale::Month, inputs.now),
        });
    }
    out
}

#[derive(Clone, Copy)]
enum Scale {
    Day,
    Month,
}

fn view(buckets: &[&Bucket], spans: &[Span], scale: Scale, now: Timestamp) -> BarView {
    let (step, count) = match scale {
        Scale::Day => (uptime::FINE_SECS, DAY_SEGMENTS),
        Scale::Month => (uptime::DAY_SECS, MONTH_SEGMENTS),
    };
    let segments = uptime::bar(buckets, spans, step, count, now);
    let runs = uptime::runs(&segments)
        .into_iter()
        .map(|(class, first, n)| Run {
            x: first,
            width: n,
            class: class.as_str(),
            title: title(&segments[first..first + n], class, scale),
        })
        .collect();
    let worst = segments
        .iter()
        .filter(|s| s.len > 0)
        .map(Segment::class)
        .max()
        .unwrap_or(Class::Unknown);
    BarView {
        segments: count,
        runs,
        uptime: uptime::uptime(&segments).map_or_else(|| "–".into(), percent),
        worst: worst.as_str(),
    }
}

/// An uptime as people read it: two decimals, never rounded up to 100
/// when it was not.
pub fn percent(fraction: f64) -> String {
    let hundredths = (fraction * 10_000.0).floor() / 100.0;
    match hundredths {
        h if h >= 100.0 => "100 %".into(),
        h => format!("{h:.2} %"),
    }
}

fn title(run: &[Segment], class: Class, scale: Scale) -> String {
    let first = run.first().expect("a run has segments");
    let last = run.last().expect("a run has segments");
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    let (from, to) = (at(first.start), at(last.start + last.len));
    let when = match scale {
        Scale::Day => format!("{}–{} UTC", from.format("%H:%M"), to.format("%H:%M")),
        Scale::Month if run.len() == 1 => from.format("%b %-d").to_string(),
        Scale::Month => format!(
            "{}–{}",
            from.format("%b %-d"),
            at(last.start).format("%b %-d")
        ),
    };
    let sum = |f: fn(&Segment) -> i64| run.iter().map(f).sum::<i64>().max(0) as u64;
    let mut parts = Vec::new();
    for (secs, word) in [
        (sum(|s| s.down), "down"),
        (sum(|s| s.degraded), "degraded"),
        (sum(|s| s.unknown), "unknown"),
    ] {
        if secs > 0 {
            parts.push(format!("{word} {}", crate::present::duration(secs)));
        }
    }
    match (class, parts.is_empty()) {
        (_, true) => format!("{when}: up"),
        (Class::Up, false) => format!("{when}: up ({})", parts.join(", ")),
        (_, false) => format!("{when}: {}", parts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::world::ResolvedIncident;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn incident(kind: &str, service: Option<&str>, opened: &str) -> Incident {
        Incident {
            id: kind.into(),
            kind: kind.into(),
            node: n("piha"),
            service: service.map(n),
            severity: homelab_core::Severity::Warning,
            message: String::new(),
            opened_at: t(opened),
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        }
    }

    #[test]
    fn uptimes_as_people_read_them() {
        for (fraction, shown) in [
            (1.0, "100 %"),
            (0.99999, "99.99 %"),
            (0.9993, "99.93 %"),
            (0.5, "50.00 %"),
            (0.0, "0.00 %"),
        ] {
            assert_eq!(percent(fraction), shown, "{fraction}");
        }
    }

    #[test]
    fn rows_for_a_node_and_its_services() {
        let now = t("2026-12-06T12:00:00Z");
        let mut tracks = Vec::new();
        // Yesterday at 10:00 the node was offline for 30 minutes; today
        // zigbee was down for 15.
        uptime::record(
            &mut tracks,
            &[
                ResolvedIncident {
                    incident: incident("node_offline", None, "2026-12-05T10:00:00Z"),
                    resolved_at: t("2026-12-05T10:30:00Z"),
                },
                ResolvedIncident {
                    incident: incident(
                        "service_not_running",
                        Some("zigbee"),
                        "2026-12-06T09:00:00Z",
                    ),
                    resolved_at: t("2026-12-06T09:15:00Z"),
                },
            ],
            now,
        );
        let names = [n("piha")];
        let services = [n("zigbee"), n("mqtt")];
        // mqtt is unhealthy since 11:45, still.
        let open = [incident(
            "service_unhealthy",
            Some("mqtt"),
            "2026-12-06T11:45:00Z",
        )];
        let rows = rows(&Inputs {
            names: &names,
            first_seen: Some(t("2026-11-20T00:00:00Z")),
            services: &services,
            tracks: &tracks.iter().collect::<Vec<_>>(),
            open: &open,
            now,
        });
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["piha", "zigbee", "mqtt"]);
        let day = |row: &StatusRow| -> Vec<(usize, usize, &'static str)> {
            row.day
                .runs
                .iter()
                .map(|r| (r.x, r.width, r.class))
                .collect()
        };
        // The day's bar starts at 12:00 yesterday: the outage is outside
        // it, in the month's.
        assert_eq!(
            day(&rows[1]),
            vec![(0, 84, "up"), (84, 1, "down"), (85, 11, "up")]
        );
        assert_eq!(rows[1].day.runs[1].title, "09:00–09:15 UTC: down 15 min");
        assert_eq!(rows[1].day.uptime, "98.95 %");
        assert_eq!(rows[1].day.worst, "down");
        assert_eq!(day(&rows[2]), vec![(0, 95, "up"), (95, 1, "degraded")]);
        assert_eq!(rows[2].day.uptime, "100 %", "degraded is not down");
        // The node: degraded while its services had problems.
        assert_eq!(
            day(&rows[0]),
            vec![
                (0, 84, "up"),
                (84, 1, "degraded"),
                (85, 10, "up"),
                (95, 1, "degraded")
            ]
        );
        // The month: before the node first reported, unknown; yesterday the
        // node down, its services unknown for that half hour (up the rest).
        let month = |row: &StatusRow| -> Vec<(usize, usize, &'static str)> {
            row.month
                .runs
                .iter()
                .map(|r| (r.x, r.width, r.class))
                .collect()
        };
        assert_eq!(
            month(&rows[0]),
            vec![
                (0, 13, "unknown"),
                (13, 15, "up"),
                (28, 1, "down"),
                (29, 1, "degraded")
            ]
        );
        assert_eq!(rows[0].month.runs[2].title, "Dec 5: down 30 min");
        assert_eq!(rows[0].month.runs[3].title, "Dec 6: degraded 30 min");
        assert_eq!(
            month(&rows[2]),
            vec![(0, 13, "unknown"), (13, 16, "up"), (29, 1, "degraded")]
        );
        assert!(
            rows[2].month.runs[1].title.ends_with("up (unknown 30 min)"),
            "{:?}",
            rows[2].month.runs[1]
        );
    }

    #[test]
    fn a_node_that_never_reported_is_unknown() {
        let now = t("2026-12-06T12:00:00Z");
        let names = [n("piha")];
        let rows = rows(&Inputs {
            names: &names,
            first_seen: None,
            services: &[],
            tracks: &[],
            open: &[],
            now,
        });
        assert_eq!(rows[0].day.uptime, "–");
        assert_eq!(rows[0].day.worst, "unknown");
        assert_eq!(rows[0].day.runs.len(), 1);
    }
}
