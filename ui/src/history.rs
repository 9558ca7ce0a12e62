//! Each node's vitals over the last day, for its page's chart: one sample
//! per five minutes from the agent's retained status
//! (`<prefix>/nodes/<node>/agent`), kept in `state/ui/vitals/<node>.json`
//! so a restart of the UI keeps the day. The rules (buckets, the day's
//! window, the chart's points) are pure and tested by table.

use chrono::Duration;
use homelab_core::agentstatus::Vitals;
use homelab_core::time::{self, Timestamp};
use serde::{Deserialize, Serialize};

/// One sample per bucket; the last sample of a bucket wins.
pub const BUCKET_SECS: i64 = 300;
/// What the chart shows.
pub const WINDOW_SECS: i64 = 86_400;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    #[serde(with = "time")]
    pub ts: Timestamp,
    /// The 1-minute load average.
    pub load: f64,
    /// Memory in use (total less available), percent.
    pub memory_pct: f64,
    /// The fullest watched filesystem, percent.
    pub disk_pct: f64,
}

impl Sample {
    pub fn of(vitals: &Vitals, at: Timestamp) -> Sample {
        let memory_pct = if vitals.memory_total_bytes == 0 {
            0.0
        } else {
            100.0
                * (vitals
                    .memory_total_bytes
                    .saturating_sub(vitals.memory_available_bytes)) as f64
                / vitals.memory_total_bytes as f64
        };
        Sample {
            ts: at,
            load: vitals.load[0],
            memory_pct,
            disk_pct: vitals.disks.iter().map(|d| d.used_pct).fold(0.0, f64::max),
        }
    }
}

fn bucket(ts: &Timestamp) -> i64 {
    ts.timestamp().div_euclid(BUCKET_SECS)
}

/// Adds `sample` (replacing the last one if it is of the same bucket) and
/// drops what fell out of the day. True when a new bucket began: the time
/// to write the history down.
pub fn record(history: &mut Vec<Sample>, sample: Sample) -> bool {
    let new_bucket = match history.last() {
        Some(last) if bucket(&last.ts) == bucket(&sample.ts) => {
            history.pop();
            false
        }
        // A clock that went back: start over rather than keep disorder.
        Some(last) if last.ts > sample.ts => {
            history.clear();
            true
        }
        _ => true,
    };
    let from = sample.ts - Duration::seconds(WINDOW_SECS);
    history.push(sample);
    history.retain(|s| s.ts > from);
    new_bucket
}

/// One line of the chart: SVG polyline points for `value` of the samples
/// within the day before `now`, time across `width`, 0..=`max` up
/// `height` (values above `max` are drawn at the top). A gap of more than
/// two buckets (the node was off) breaks the line: one string per piece.
pub fn lines(
    history: &[Sample],
    now: Timestamp,
    value: impl Fn(&Sample) -> f64,
    max: f64,
    width: f64,
    height: f64,
) -> Vec<String> {
    let start = now - Duration::seconds(WINDOW_SECS);
    let mut pieces: Vec<Vec<String>> = Vec::new();
    let mut last: Option<Timestamp> = None;
    for s in history.iter().filter(|s| s.ts > start && s.ts <= now) {
        let gap = last.is_none_or(|l| (s.ts - l).num_seconds() > 2 * BUCKET_SECS);
        if gap {
            pieces.push(Vec::new());
        }
        last = Some(s.ts);
        let x = (s.ts - start).num_seconds() as f64 / WINDOW_SECS as f64 * width;
        let v = if max > 0.0 {
            (value(s) / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let y = height - v * height;
        pieces
            .last_mut()
            .expect("a piece")
            .push(format!("{x:.1},{y:.1}"));
    }
    // A lone sample is drawn as a short dash ending at it: a browser draws
    // nothing for a line of no length.
    pieces
        .into_iter()
        .map(|p| match p.as_slice() {
            [one] => {
                let (x, y) = one.split_once(',').expect("x,y");
                let x: f64 = x.parse().expect("a number");
                format!("{:.1},{y} {one}", (x - LONE_DASH).max(0.0))
            }
            _ => p.join(" "),
        })
        .collect()
}

/// How long the dash of a lone sample is, in chart units (1/80 of its
/// width).
const LONE_DASH: f64 = 3.0;

/// The chart's scale for load: at least 1, else the day's highest rounded
/// up to a whole number.
pub fn load_scale(history: &[Sample]) -> f64 {
    history.iter().map(|s| s.load).fold(1.0, f64::max).ceil()
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::agentstatus::DiskUse;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sample(ts: &str, load: f64) -> Sample {
        Sample {
            ts: at(ts),
            load,
            memory_pct: 50.0,
            disk_pct: 10.0,
        }
    }

    #[test]
    fn a_sample_is_read_from_the_vitals() {
        let vitals = Vitals {
            load: [0.75, 0.5, 0.25],
            memory_total_bytes: 4_000,
            memory_available_bytes: 1_000,
            uptime_secs: 10,
            disks: vec![
                DiskUse {
                    mount: "/".into(),
                    used_pct: 40.0,
                    free_bytes: 1,
                },
                DiskUse {
                    mount: "/srv".into(),
                    used_pct: 91.5,
                    free_bytes: 1,
                },
            ],
        };
        let s = Sample::of(&vitals, at("2026-11-24T10:00:00Z"));
        assert_eq!((s.load, s.memory_pct, s.disk_pct), (0.75, 75.0, 91.5));
        let empty = Sample::of(&Vitals::default(), at("2026-11-24T10:00:00Z"));
        assert_eq!((empty.memory_pct, empty.disk_pct), (0.0, 0.0));
    }

    #[test]
    fn one_sample_per_bucket_over_one_day() {
        // (history before, new sample, new bucket?, history after by load)
        let cases: Vec<(Vec<Sample>, Sample, bool, Vec<f64>)> = vec![
            (vec![], sample("2026-11-24T10:00:00Z", 1.0), true, vec![1.0]),
            // Same bucket: the newer replaces it.
            (
                vec![sample("2026-11-24T10:00:00Z", 1.0)],
                sample("2026-11-24T10:04:59Z", 2.0),
                false,
                vec![2.0],
            ),
            (
                vec![sample("2026-11-24T10:00:00Z", 1.0)],
                sample("2026-11-24T10:05:00Z", 2.0),
                true,
                vec![1.0, 2.0],
            ),
            // A day later the first is out of the window.
            (
                vec![
                    sample("2026-11-23T10:00:00Z", 1.0),
                    sample("2026-11-23T10:05:00Z", 2.0),
                ],
                sample("2026-11-24T10:02:00Z", 3.0),
                true,
                vec![2.0, 3.0],
            ),
            // The clock went back: start over.
            (
                vec![sample("2026-11-24T10:00:00Z", 1.0)],
                sample("2026-11-24T09:00:00Z", 2.0),
                true,
                vec![2.0],
            ),
        ];
        for (before, new, expect_new, after) in cases {
            let mut history = before.clone();
            let began = record(&mut history, new.clone());
            let loads: Vec<f64> = history.iter().map(|s| s.load).collect();
            assert_eq!((began, loads), (expect_new, after), "{before:?} + {new:?}");
        }
    }

    #[test]
    fn the_chart_spans_the_day_and_breaks_at_gaps() {
        let now = at("2026-11-24T12:00:00Z");
        let history = vec![
            sample("2026-11-23T11:00:00Z", 9.0), // before the window
            sample("2026-11-24T00:00:00Z", 0.0),
            sample("2026-11-24T00:05:00Z", 2.0),
            // 6 hours without a sample: the node was off.
            sample("2026-11-24T06:00:00Z", 4.0),
            sample("2026-11-24T06:05:00Z", 1.0),
        ];
        let got = lines(&history, now, |s| s.load, 2.0, 240.0, 40.0);
        assert_eq!(
            got,
            vec![
                "120.0,40.0 120.8,0.0".to_string(),
                // 4 over a scale of 2: drawn at the top.
                "180.0,0.0 180.8,20.0".to_string(),
            ]
        );
        assert!(lines(&[], now, |s| s.load, 1.0, 240.0, 40.0).is_empty());
        assert_eq!(
            lines(&history[4..], now, |s| s.load, 2.0, 240.0, 40.0),
            vec!["177.8,20.0 180.8,20.0".to_string()],
            "a lone sample is a short dash"
        );
        assert_eq!(load_scale(&history[1..]), 4.0);
        assert_eq!(load_scale(&[sample("2026-11-24T00:00:00Z", 0.2)]), 1.0);
        assert_eq!(load_scale(&[sample("2026-11-24T00:00:00Z", 2.3)]), 3.0);
    }
}
