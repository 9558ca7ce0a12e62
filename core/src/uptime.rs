//! Status history: how each node and service fared over the last day and
//! the last month, for the status bars and uptime figures (Uptime Kuma's
//! bars). Kept as time per state in fixed buckets in
//! `world/status_history.json`, so a page never reads the event log:
//!
//! - the observer adds each incident as it closes, over its own event
//!   times (`opened_at` to `resolved_at`), so a backlog replayed after an
//!   outage lands where it happened;
//! - buckets are quarter-hours for the last two days, then UTC days, for
//!   31 days (Uptime Kuma 2 keeps minutes, hours and days the same way);
//!   older time is dropped;
//! - a reader adds the incidents still open, up to now, and the time
//!   before a node first reported as unknown.
//!
//! A service's time is down while it is not running or missing, degraded
//! while it has any other problem (unhealthy, a restart loop), unknown
//! while its node is offline. A node's time is down while it is offline,
//! unknown before it reported, degraded while it or one of its services
//! has a problem. Overlapping problems of one kind are counted once per
//! bucket at most (a bucket's figures never exceed its length).
//!
//! Everything here is pure: no clock, no files.

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::time::Timestamp;
use crate::world::{Incident, ResolvedIncident};

/// The fine buckets: a quarter of an hour.
pub const FINE_SECS: i64 = 900;
pub const DAY_SECS: i64 = 86_400;
/// How long fine buckets are kept before they are summed into days.
pub const FINE_KEPT_SECS: i64 = 2 * DAY_SECS;
/// How long anything is kept.
pub const KEPT_SECS: i64 = 31 * DAY_SECS;

/// A state over a span of time, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Up,
    Unknown,
    Degraded,
    Down,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Up => "up",
            Class::Unknown => "unknown",
            Class::Degraded => "degraded",
            Class::Down => "down",
        }
    }
}

/// Time not up within one bucket, in seconds; the rest of it was up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Its start, in seconds since the epoch: a quarter-hour or a UTC day.
    pub start: i64,
    /// [`FINE_SECS`] or [`DAY_SECS`].
    pub len: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub degraded: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub down: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Bucket {
    fn add(&mut self, class: Class, secs: i64) {
        let field = match class {
            Class::Up => return,
            Class::Unknown => &mut self.unknown,
            Class::Degraded => &mut self.degraded,
            Class::Down => &mut self.down,
        };
        *field = (*field + secs).min(self.len);
    }

    fn merge(&mut self, other: &Bucket) {
        self.add(Class::Unknown, other.unknown);
        self.add(Class::Degraded, other.degraded);
        self.add(Class::Down, other.down);
    }
}

/// One node's (no `service`) or one service's buckets, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub node: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    pub buckets: Vec<Bucket>,
}

/// What an incident makes of the time it was open: (node, service, class)
/// for each track it counts against.
pub fn classify(incident: &Incident) -> Vec<(Name, Option<Name>, Class)> {
    let node = incident.node.clone();
    match (&incident.service, incident.kind.as_str()) {
        (Some(service), kind) => {
            let class = match kind {
                "service_not_running" | "service_missing" => Class::Down,
                _ => Class::Degraded,
            };
            vec![
                (node.clone(), Some(service.clone()), class),
                (node, None, Class::Degraded),
            ]
        }
        (None, "node_offline") => vec![(node, None, Class::Down)],
        (None, "node_never_reported") => vec![(node, None, Class::Unknown)],
        (None, _) => vec![(node, None, Class::Degraded)],
    }
}

/// Adds `class` over `from..to` to the track of (`node`, `service`), in
/// fine buckets (at most [`KEPT_SECS`] before `now`).
pub fn add(
    tracks: &mut Vec<Track>,
    node: &Name,
    service: Option<&Name>,
    class: Class,
    from: Timestamp,
    to: Timestamp,
    now: Timestamp,
) {
    let (from, to) = (
        from.timestamp().max(now.timestamp() - KEPT_SECS),
        to.timestamp().min(now.timestamp()),
    );
    if class == Class::Up || from >= to {
        return;
    }
    let i = match tracks
        .iter()
        .position(|t| t.node == *node && t.service.as_ref() == service)
    {
        Some(i) => i,
        None => {
            tracks.push(Track {
                node: node.clone(),
                service: service.cloned(),
                buckets: Vec::new(),
            });
            tracks.len() - 1
        }
    };
    let track = &mut tracks[i];
    let mut t = from;
    while t < to {
        let start = t.div_euclid(FINE_SECS) * FINE_SECS;
        let end = (start + FINE_SECS).min(to);
        let bucket = match track.buckets.binary_search_by_key(&start, |b| b.start) {
            Ok(i) => &mut track.buckets[i],
            Err(i) => {
                track.buckets.insert(
                    i,
                    Bucket {
                        start,
                        len: FINE_SECS,
                        ..Bucket::default()
                    },
                );
                &mut track.buckets[i]
            }
        };
        bucket.add(class, end - t);
        t = end;
    }
}

/// Adds the incidents that closed, over their own times, then
/// [`compact`]s.
pub fn record(tracks: &mut Vec<Track>, closed: &[ResolvedIncident], now: Timestamp) {
    for c in closed {
        for (node, service, class) in classify(&c.incident) {
            add(
                tracks,
                &node,
                service.as_ref(),
                class,
                c.incident.opened_at,
                c.resolved_at,
                now,
            );
        }
    }
    compact(tracks, now);
}

/// Sums fine buckets older than [`FINE_KEPT_SECS`] (from the start of
/// that day) into days, drops what ended more than [`KEPT_SECS`] ago and
/// tracks left empty.
pub fn compact(tracks: &mut Vec<Track>, now: Timestamp) {
    let now = now.timestamp();
    let coarse_before = (now - FINE_KEPT_SECS).div_euclid(DAY_SECS) * DAY_SECS;
    let drop_before = now - KEPT_SECS;
    for track in tracks.iter_mut() {
        let mut out: Vec<Bucket> = Vec::with_capacity(track.buckets.len());
        for b in &track.buckets {
            if b.start + b.len <= drop_before {
                continue;
            }
            let b = match b.start < coarse_before && b.len < DAY_SECS {
                true => Bucket {
                    start: b.start.div_euclid(DAY_SECS) * DAY_SECS,
                    len: DAY_SECS,
                    ..*b
                },
                false => *b,
            };
            match out.last_mut() {
                Some(last) if last.start == b.start && last.len == b.len => last.merge(&b),
                _ => out.push(b),
            }
        }
        track.buckets = out;
    }
    tracks.retain(|t| !t.buckets.is_empty());
}

/// A span of time in one class not yet in the buckets: an incident still
/// open, the time before a node reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub class: Class,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// One piece of a bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: i64,
    /// Up to `now`: the last segment may be shorter.
    pub len: i64,
    pub degraded: i64,
    pub down: i64,
    pub unknown: i64,
}

impl Segment {
    /// Down if it was down at all, else degraded if degraded at all, else
    /// unknown if unknown for half of it or more, else up.
    pub fn class(&self) -> Class {
        if self.down > 0 {
            Class::Down
        } else if self.degraded > 0 {
            Class::Degraded
        } else if self.unknown * 2 >= self.len {
            Class::Unknown
        } else {
            Class::Up
        }
    }
}

/// The bar of `count` segments of `step` seconds ending with the one that
/// holds `now`, from `buckets` (spread over the segments they overlap) and
/// `spans`; each figure at most the segment's length.
pub fn bar(
    buckets: &[&Bucket],
    spans: &[Span],
    step: i64,
    count: usize,
    now: Timestamp,
) -> Vec<Segment> {
    let now = now.timestamp();
    // The last segment ends at or after now.
    let last = (now - 1).div_euclid(step) * step;
    let first = last - step * (count as i64 - 1);
    let mut out: Vec<Segment> = (0..count as i64)
        .map(|i| {
            let start = first + i * step;
            Segment {
                start,
                len: (now - start).clamp(0, step),
                degraded: 0,
                down: 0,
                unknown: 0,
            }
        })
        .collect();
    let mut put = |class: Class, from: i64, to: i64, scale: f64| {
        // Only the segments the span overlaps.
        let lo = ((from - first).div_euclid(step)).max(0);
        let hi = ((to - 1 - first).div_euclid(step)).min(count as i64 - 1);
        for i in lo..=hi {
            let s = &mut out[i as usize];
            let overlap = to.min(s.start + s.len) - from.max(s.start);
            if overlap <= 0 {
                continue;
            }
            let secs = (overlap as f64 * scale).round() as i64;
            let field = match class {
                Class::Up => continue,
                Class::Unknown => &mut s.unknown,
                Class::Degraded => &mut s.degraded,
                Class::Down => &mut s.down,
            };
            *field = (*field + secs).min(s.len);
        }
    };
    for b in buckets {
        for (class, secs) in [
            (Class::Unknown, b.unknown),
            (Class::Degraded, b.degraded),
            (Class::Down, b.down),
        ] {
            if secs > 0 {
                // Within a bucket the time is taken as spread evenly.
                put(class, b.start, b.start + b.len, secs as f64 / b.len as f64);
            }
        }
    }
    for span in spans {
        put(span.class, span.from.timestamp(), span.to.timestamp(), 1.0);
    }
    out
}

/// The share of the known time (not unknown) that was not down, as a
/// fraction; none when nothing of it is known.
pub fn uptime(segments: &[Segment]) -> Option<f64> {
    let (mut known, mut down) = (0, 0);
    for s in segments {
        let k = s.len - s.unknown.min(s.len);
        known += k;
        down += s.down.min(k);
    }
    (known > 0).then(|| (known - down) as f64 / known as f64)
}

/// Consecutive segments of one class as (class, first index, how many):
/// what a bar draws.
pub fn runs(segments: &[Segment]) -> Vec<(Class, usize, usize)> {
    let mut out: Vec<(Class, usize, usize)> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if s.len == 0 {
            continue;
        }
        match out.last_mut() {
            Some((class, _, n)) if *class == s.class() => *n += 1,
            _ => out.push((s.class(), i, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn incident(kind: &str, service: Option<&str>, opened: &str) -> Incident {
        Incident {
            id: format!("{kind}:n1"),
            kind: kind.into(),
            node: n("n1"),
            service: service.map(n),
            severity: Severity::Warning,
            message: String::new(),
            opened_at: t(opened),
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        }
    }

    #[test]
    fn incidents_count_against_their_service_and_node() {
        let cases = [
            (
                "service_not_running",
                Some("app"),
                vec![(Some("app"), Class::Down), (None, Class::Degraded)],
            ),
            (
                "service_missing",
                Some("app"),
                vec![(Some("app"), Class::Down), (None, Class::Degraded)],
            ),
            (
                "service_unhealthy",
                Some("app"),
                vec![(Some("app"), Class::Degraded), (None, Class::Degraded)],
            ),
            (
                "restart_loop",
                Some("app"),
                vec![(Some("app"), Class::Degraded), (None, Class::Degraded)],
            ),
            ("node_offline", None, vec![(None, Class::Down)]),
            ("node_never_reported", None, vec![(None, Class::Unknown)]),
            ("docker_unreachable", None, vec![(None, Class::Degraded)]),
        ];
        for (kind, service, expected) in cases {
            let got: Vec<(Option<String>, Class)> =
                classify(&incident(kind, service, "2026-12-01T00:00:00Z"))
                    .into_iter()
                    .map(|(node, s, c)| {
                        assert_eq!(node, n("n1"));
                        (s.map(|s| s.to_string()), c)
                    })
                    .collect();
            let expected: Vec<(Option<String>, Class)> = expected
                .into_iter()
                .map(|(s, c)| (s.map(String::from), c))
                .collect();
            assert_eq!(got, expected, "{kind}");
        }
    }

    #[test]
    fn closed_incidents_fill_quarter_hours_then_days() {
        let now = t("2026-12-06T12:00:00Z");
        let closed = |kind: &str, service: Option<&str>, from: &str, to: &str| ResolvedIncident {
            incident: incident(kind, service, from),
            resolved_at: t(to),
        };
        let mut tracks = Vec::new();
        record(
            &mut tracks,
            &[
                // 10 minutes across a quarter-hour boundary.
                closed(
                    "service_not_running",
                    Some("app"),
                    "2026-12-06T10:10:00Z",
                    "2026-12-06T10:20:00Z",
                ),
                // Five days ago: summed into its day.
                closed(
                    "node_offline",
                    None,
                    "2026-12-01T23:50:00Z",
                    "2026-12-02T00:20:00Z",
                ),
                // Older than 31 days: dropped.
                closed(
                    "node_offline",
                    None,
                    "2026-10-01T00:00:00Z",
                    "2026-10-01T01:00:00Z",
                ),
            ],
            now,
        );
        let app = tracks
            .iter()
            .find(|t| t.service == Some(n("app")))
            .expect("app's track");
        let quarter = |s: &str| t(s).timestamp();
        assert_eq!(
            app.buckets,
            vec![
                Bucket {
                    start: quarter("2026-12-06T10:00:00Z"),
                    len: FINE_SECS,
                    down: 300,
                    ..Bucket::default()
                },
                Bucket {
                    start: quarter("2026-12-06T10:15:00Z"),
                    len: FINE_SECS,
                    down: 300,
                    ..Bucket::default()
                },
            ]
        );
        let node = tracks
            .iter()
            .find(|t| t.service.is_none())
            .expect("n1's track");
        let day = |s: &str| t(s).timestamp();
        assert_eq!(
            node.buckets
                .iter()
                .map(|b| (b.start, b.len, b.down, b.degraded))
                .collect::<Vec<_>>(),
            vec![
                (day("2026-12-01T00:00:00Z"), DAY_SECS, 600, 0),
                (day("2026-12-02T00:00:00Z"), DAY_SECS, 1200, 0),
                (quarter("2026-12-06T10:00:00Z"), FINE_SECS, 0, 300),
                (quarter("2026-12-06T10:15:00Z"), FINE_SECS, 0, 300),
            ]
        );
        // Twenty days on, only the days are left; 40 days on, nothing.
        compact(&mut tracks, t("2026-12-26T12:00:00Z"));
        assert!(tracks
            .iter()
            .all(|t| t.buckets.iter().all(|b| b.len == DAY_SECS)));
        compact(&mut tracks, t("2027-01-15T12:00:00Z"));
        assert!(tracks.is_empty(), "{tracks:?}");
    }

    #[test]
    fn overlapping_problems_never_exceed_the_bucket() {
        let now = t("2026-12-06T12:00:00Z");
        let mut tracks = Vec::new();
        for _ in 0..3 {
            add(
                &mut tracks,
                &n("n1"),
                None,
                Class::Degraded,
                t("2026-12-06T10:00:00Z"),
                t("2026-12-06T10:15:00Z"),
                now,
            );
        }
        assert_eq!(tracks[0].buckets[0].degraded, FINE_SECS);
    }

    #[test]
    fn a_bar_from_buckets_and_open_spans() {
        let now = t("2026-12-06T12:10:00Z");
        let buckets = [
            Bucket {
                start: t("2026-12-06T11:00:00Z").timestamp(),
                len: FINE_SECS,
                down: 60,
                ..Bucket::default()
            },
            // A day bucket spread over a bar of hours: outside this one.
            Bucket {
                start: t("2026-12-01T00:00:00Z").timestamp(),
                len: DAY_SECS,
                down: 3600,
                ..Bucket::default()
            },
        ];
        let spans = [
            Span {
                class: Class::Unknown,
                from: t("2026-12-06T08:00:00Z"),
                to: t("2026-12-06T09:00:00Z"),
            },
            Span {
                class: Class::Degraded,
                from: t("2026-12-06T12:05:00Z"),
                to: now,
            },
        ];
        let bar = bar(&buckets.iter().collect::<Vec<_>>(), &spans, 3600, 5, now);
        let classes: Vec<&str> = bar.iter().map(|s| s.class().as_str()).collect();
        // 08:00 unknown, 09:00 up, 10:00 up, 11:00 down a minute, 12:00–12:10 degraded.
        assert_eq!(classes, ["unknown", "up", "up", "down", "degraded"]);
        assert_eq!(bar[4].len, 600, "the last segment ends now");
        assert_eq!(bar[3].down, 60);
        // Known: 4 h 10 min less the unknown hour; down one minute of it.
        let known = (3 * 3600 + 600) as f64;
        assert_eq!(uptime(&bar), Some((known - 60.0) / known));
        assert_eq!(
            runs(&bar),
            vec![
                (Class::Unknown, 0, 1),
                (Class::Up, 1, 2),
                (Class::Down, 3, 1),
                (Class::Degraded, 4, 1)
            ]
        );
        // Over 30 days the day bucket is a day with an hour down.
        let month = super::bar(&buckets.iter().collect::<Vec<_>>(), &[], DAY_SECS, 30, now);
        let dec1 = month
            .iter()
            .find(|s| s.start == t("2026-12-01T00:00:00Z").timestamp())
            .unwrap();
        assert_eq!((dec1.down, dec1.class()), (3600, Class::Down));
        let all_unknown = [Span {
            class: Class::Unknown,
            from: t("2026-11-01T00:00:00Z"),
            to: now,
        }];
        assert_eq!(uptime(&super::bar(&[], &all_unknown, 3600, 24, now)), None);
    }
}
