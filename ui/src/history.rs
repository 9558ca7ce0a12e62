//! Each node's vitals over the last hour, day and week, for its page's
//! charts: from the agent's retained status
//! (`<prefix>/nodes/<node>/agent`), one sample a minute for the hour, one
//! per five minutes for the day, the highest of each hour for the week,
//! kept in `state/ui/vitals/<node>.json` so a restart of the UI keeps
//! them. The rules (buckets, windows, scales, the chart's points) are pure
//! and tested by table.

use chrono::Duration;
use homelab_core::agentstatus::Vitals;
use homelab_core::time::{self, Timestamp};
use serde::{Deserialize, Serialize};
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

/// A chart's span: how far back it reaches and the bucket of its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
    Week,
}

impl Range {
    pub const ALL: [Range; 3] = [Range::Hour, Range::Day, Range::Week];

    /// As in `?range=`: `1h`, `24h`, `7d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    pub fn parse(raw: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.as_str() == raw)
    }

    /// How a person says it: "last hour", …
    pub fn words(self) -> &'static str {
        match self {
            Range::Hour => "last hour",
            Range::Day => "last 24 hours",
            Range::Week => "last 7 days",
        }
    }

    pub fn bucket_secs(self) -> i64 {
        match self {
            Range::Hour => 60,
            Range::Day => 300,
            Range::Week => 3_600,
        }
    }

    pub fn window_secs(self) -> i64 {
        match self {
            Range::Hour => 3_600,
            Range::Day => 86_400,
            Range::Week => 7 * 86_400,
        }
    }
}

/// A node's samples for each range, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub hour: Vec<Sample>,
    #[serde(default)]
    pub day: Vec<Sample>,
    #[serde(default)]
    pub week: Vec<Sample>,
}

impl History {
    pub fn samples(&self, range: Range) -> &[Sample] {
        match range {
            Range::Hour => &self.hour,
            Range::Day => &self.day,
            Range::Week => &self.week,
        }
    }

    /// A file as this version writes it, or as the last one did (the day
    /// alone).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<History> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OnDisk {
            Now(History),
            DayOnly(Vec<Sample>),
        }
        Ok(match serde_json::from_slice(bytes)? {
            OnDisk::Now(h) => h,
            OnDisk::DayOnly(day) => History {
                day,
                ..History::default()
            },
        })
    }
}

/// Adds `sample` to each range. True when a new five-minute bucket began:
/// the time to write the history down.
pub fn record(history: &mut History, sample: Sample) -> bool {
    record_in(&mut history.hour, sample.clone(), Range::Hour, Keep::Last);
    record_in(
        &mut history.week,
        sample.clone(),
        Range::Week,
        Keep::Highest,
    );
    record_in(&mut history.day, sample, Range::Day, Keep::Last)
}

#[derive(Clone, Copy)]
enum Keep {
    /// The last sample of a bucket wins.
    Last,
    /// Each figure's highest of the bucket, at the bucket's last time.
    Highest,
}

/// Adds `sample` to one range's samples (replacing or joining the last if
/// it is of the same bucket) and drops what fell out of the window. True
/// when a new bucket began.
fn record_in(samples: &mut Vec<Sample>, sample: Sample, range: Range, keep: Keep) -> bool {
    let bucket = |ts: &Timestamp| ts.timestamp().div_euclid(range.bucket_secs());
    let mut sample = sample;
    let new_bucket = match samples.last() {
        Some(last) if bucket(&last.ts) == bucket(&sample.ts) => {
            let last = samples.pop().expect("a last sample");
            if let Keep::Highest = keep {
                sample.load = sample.load.max(last.load);
                sample.memory_pct = sample.memory_pct.max(last.memory_pct);
                sample.disk_pct = sample.disk_pct.max(last.disk_pct);
            }
            false
        }
        // A clock that went back: start over rather than keep disorder.
        Some(last) if last.ts > sample.ts => {
            samples.clear();
            true
        }
        _ => true,
    };
    let from = sample.ts - Duration::seconds(range.window_secs());
    samples.push(sample);
    samples.retain(|s| s.ts > from);
    new_bucket
}

/// One line of the chart: SVG polyline points for `value` of the samples
/// within `range` before `now`, time across `width`, `scale` up `height`
/// (values outside it are drawn at its edge). A gap of more than two
/// buckets (the node was off) breaks the line: one string per piece.
pub fn lines(
    samples: &[Sample],
    range: Range,
    now: Timestamp,
    value: impl Fn(&Sample) -> f64,
    scale: Scale,
    width: f64,
    height: f64,
) -> Vec<String> {
    let window = range.window_secs();
    let start = now - Duration::seconds(window);
    let mut pieces: Vec<Vec<String>> = Vec::new();
    let mut last: Option<Timestamp> = None;
    for s in samples.iter().filter(|s| s.ts > start && s.ts <= now) {
        let gap = last.is_none_or(|l| (s.ts - l).num_seconds() > 2 * range.bucket_secs());
        if gap {
            pieces.push(Vec::new());
        }
        last = Some(s.ts);
        let x = (s.ts - start).num_seconds() as f64 / window as f64 * width;
        let y = height - scale.fraction(value(s)) * height;
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

/// What a chart's height spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub low: f64,
    pub high: f64,
}

impl Scale {
    /// Where `v` sits, 0 at `low` to 1 at `high`, clamped.
    pub fn fraction(self, v: f64) -> f64 {
        match self.high > self.low {
            true => ((v - self.low) / (self.high - self.low)).clamp(0.0, 1.0),
            false => 0.0,
        }
    }
}

/// The scale for load: from 0 to at least 1, else the highest rounded up
/// to a whole number.
pub fn load_scale(samples: &[Sample]) -> Scale {
    Scale {
        low: 0.0,
        high: samples.iter().map(|s| s.load).fold(1.0, f64::max).ceil(),
    }
}

/// The scale for a percentage: the values (and `marks`, the thresholds to
/// draw) with some room, in tens, within 0–100; at least 20 points tall so
/// a flat line is not a wall of noise.
pub fn percent_scale(values: impl Iterator<Item = f64>, marks: &[f64]) -> Scale {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.chain(marks.iter().copied()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return Scale {
            low: 0.0,
            high: 100.0,
        };
    }
    let mut low = (((lo - 5.0) / 10.0).floor() * 10.0).max(0.0);
    let mut high = (((hi + 5.0) / 10.0).ceil() * 10.0).min(100.0);
    if high - low < 20.0 {
        match low + 20.0 <= 100.0 {
            true => high = low + 20.0,
            false => (low, high) = (80.0, 100.0),
        }
    }
    Scale { low, high }
}

/// Hover zones: the chart cut into `count` strips, each with the last
/// sample within it as (x, width, the sample), for what a hover or a tap
/// shows.
pub fn zones(
    samples: &[Sample],
    range: Range,
    now: Timestamp,
    count: usize,
    width: f64,
) -> Vec<(f64, f64, Sample)> {
    let window = range.window_secs();
    let start = now - Duration::seconds(window);
    let strip = width / count as f64;
    let mut out: Vec<(f64, f64, Sample)> = Vec::new();
    for s in samples.iter().filter(|s| s.ts > start && s.ts <= now) {
        let x = (s.ts - start).num_seconds() as f64 / window as f64 * width;
        let i = ((x / strip) as usize).min(count - 1);
        let zone_x = i as f64 * strip;
        match out.last_mut() {
            Some(last) if (last.0 - zone_x).abs() < 1e-9 => last.2 = s.clone(),
            _ => out.push((zone_x, strip, s.clone())),
        }
    }
    out
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
            containers: Vec::new(),
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
            let began = record_in(&mut history, new.clone(), Range::Day, Keep::Last);
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
        let two = Scale {
            low: 0.0,
            high: 2.0,
        };
        let got = lines(&history, Range::Day, now, |s| s.load, two, 240.0, 40.0);
        assert_eq!(
            got,
            vec![
                "120.0,40.0 120.8,0.0".to_string(),
                // 4 over a scale of 2: drawn at the top.
                "180.0,0.0 180.8,20.0".to_string(),
            ]
        );
        assert!(lines(&[], Range::Day, now, |s| s.load, two, 240.0, 40.0).is_empty());
        assert_eq!(
            lines(&history[4..], Range::Day, now, |s| s.load, two, 240.0, 40.0),
            vec!["177.8,20.0 180.8,20.0".to_string()],
            "a lone sample is a short dash"
        );
        assert_eq!(load_scale(&history[1..]).high, 4.0);
        assert_eq!(load_scale(&[sample("2026-11-24T00:00:00Z", 0.2)]).high, 1.0);
        assert_eq!(load_scale(&[sample("2026-11-24T00:00:00Z", 2.3)]).high, 3.0);
    }

    #[test]
    fn the_hour_the_day_and_the_week() {
        let mut history = History::default();
        // A sample every 30 s for two hours; load rises to a peak at
        // 10:20 and falls.
        for i in 0..240 {
            let ts = at("2026-11-24T10:00:00Z") + Duration::seconds(30 * i);
            let load = if i == 40 { 9.0 } else { 1.0 };
            record(
                &mut history,
                Sample {
                    ts,
                    load,
                    memory_pct: 50.0,
                    disk_pct: 10.0,
                },
            );
        }
        let last = at("2026-11-24T11:59:30Z");
        // The hour: one a minute, the last hour.
        assert_eq!(history.hour.len(), 60);
        assert!(history.hour[0].ts > last - Duration::hours(1));
        // The day: one per five minutes, the last of each (the peak lost).
        assert_eq!(history.day.len(), 24);
        assert!(history.day.iter().all(|s| s.load == 1.0));
        // The week: each hour's highest.
        assert_eq!(
            history.week.iter().map(|s| s.load).collect::<Vec<_>>(),
            vec![9.0, 1.0]
        );
        // A file of the last version (the day alone) still reads.
        let old = serde_json::to_vec(&history.day).unwrap();
        let read = History::from_json(&old).unwrap();
        assert_eq!((read.day.len(), read.hour.len()), (24, 0));
        let now = serde_json::to_vec(&history).unwrap();
        assert_eq!(History::from_json(&now).unwrap(), history);
        assert_eq!(Range::parse("7d"), Some(Range::Week));
        assert_eq!(Range::parse("2d"), None);
    }

    #[test]
    fn scales_fit_the_figures_and_their_thresholds() {
        // (values, marks, low, high)
        let cases: [(&[f64], &[f64], f64, f64); 6] = [
            (&[], &[], 0.0, 100.0),
            (&[41.0, 43.0], &[], 30.0, 50.0),
            (&[41.0, 43.0], &[80.0, 90.0], 30.0, 100.0),
            (&[99.0], &[], 80.0, 100.0),
            (&[0.5], &[], 0.0, 20.0),
            (&[12.0, 77.0], &[], 0.0, 90.0),
        ];
        for (values, marks, low, high) in cases {
            let got = percent_scale(values.iter().copied(), marks);
            assert_eq!((got.low, got.high), (low, high), "{values:?} {marks:?}");
        }
        let s = Scale {
            low: 30.0,
            high: 50.0,
        };
        assert_eq!(
            (s.fraction(40.0), s.fraction(10.0), s.fraction(70.0)),
            (0.5, 0.0, 1.0)
        );
    }

    #[test]
    fn hover_zones_hold_the_last_sample_of_their_strip() {
        let now = at("2026-11-24T12:00:00Z");
        let history = vec![
            sample("2026-11-24T11:10:00Z", 1.0),
            sample("2026-11-24T11:20:00Z", 2.0),
            sample("2026-11-24T11:50:00Z", 3.0),
        ];
        // The hour in four strips of 15 minutes, 60 units wide.
        let got: Vec<(f64, f64)> = zones(&history, Range::Hour, now, 4, 60.0)
            .into_iter()
            .map(|(x, _, s)| (x, s.load))
            .collect();
        assert_eq!(got, vec![(0.0, 1.0), (15.0, 2.0), (45.0, 3.0)]);
    }
}
