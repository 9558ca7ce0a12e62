//! How the link to the broker fares, measured on the connection itself: no
//! probe of its own, so nothing extra crosses an LTE uplink and the broker
//! sees no extra clients. Every QoS 1 PUBLISH the client writes is timed
//! until its PUBACK, and every PINGREQ until its PINGRESP (an idle agent
//! publishes its status every 30 s and pings when nothing else went out
//! for its 15 s keepalive, so there are samples while connected); one that
//! is not answered within [`LATE`], or
//! never (the connection dropped first), counts against the link. An
//! outage runs from a lost connection to the next CONNACK.
//!
//! Pure: the caller passes the time. [`LinkStats`] lives under a lock
//! beside the event loop, which records what passes; [`LinkStats::link`]
//! is what an agent reports.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// An answer slower than this counts as late (TCP's retransmissions on a
/// lossy link show as late answers, not as lost packets).
pub const LATE: Duration = Duration::from_secs(5);
/// The figures cover this long.
pub const WINDOW: Duration = Duration::from_secs(300);
/// At most this many samples are kept (a replay times thousands a minute).
const MAX_SAMPLES: usize = 4096;
/// At most this many requests are timed at once.
const MAX_OUTSTANDING: usize = 2048;

/// What the link looks like now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Link {
    pub connected: bool,
    /// Median round trip over [`WINDOW`], in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The slowest tenth: the 90th percentile, in milliseconds.
    pub rtt_p90_ms: Option<f64>,
    /// Share of requests answered late or not at all, in percent.
    pub late_pct: Option<f64>,
    /// Requests timed in [`WINDOW`].
    pub samples: usize,
    /// How long the last outage lasted, and how long ago it ended.
    pub last_outage: Option<(Duration, Duration)>,
    /// Since when the link is down, if it is.
    pub down_for: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct LinkStats {
    /// Packet id (0: the ping) → when it was written.
    outstanding: HashMap<u16, Instant>,
    /// When each request ended, and its round trip (`None`: not answered).
    samples: VecDeque<(Instant, Option<Duration>)>,
    connected: bool,
    down_since: Option<Instant>,
    /// (how long, when it ended).
    last_outage: Option<(Duration, Instant)>,
}

const PING: u16 = 0;

impl LinkStats {
    pub fn sent(&mut self, pkid: u16, now: Instant) {
        if self.outstanding.len() < MAX_OUTSTANDING {
            self.outstanding.insert(pkid, now);
        }
    }

    pub fn answered(&mut self, pkid: u16, now: Instant) {
        if let Some(sent) = self.outstanding.remove(&pkid) {
            self.sample(now, Some(now.saturating_duration_since(sent)));
        }
    }

    pub fn ping_sent(&mut self, now: Instant) {
        self.sent(PING, now);
    }

    pub fn ping_answered(&mut self, now: Instant) {
        self.answered(PING, now);
    }

    /// CONNACK: connected; an outage, if there was one, is over.
    pub fn connected(&mut self, now: Instant) {
        if let Some(since) = self.down_since.take() {
            self.last_outage = Some((now.saturating_duration_since(since), now));
        }
        self.connected = true;
    }

    /// The connection failed: what was not answered never will be (rumqttc
    /// numbers afresh), and an outage begins (the first failure counts).
    pub fn disconnected(&mut self, now: Instant) {
        for _ in self.outstanding.drain() {
            self.samples.push_back((now, None));
        }
        self.trim(now);
        self.down_since.get_or_insert(now);
        self.connected = false;
    }

    fn sample(&mut self, at: Instant, rtt: Option<Duration>) {
        self.samples.push_back((at, rtt));
        self.trim(at);
    }

    fn trim(&mut self, now: Instant) {
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    pub fn link(&self, now: Instant) -> Link {
        let recent: Vec<Option<Duration>> = self
            .samples
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= WINDOW)
            .map(|(_, rtt)| *rtt)
            // Still waiting past LATE counts as late already.
            .chain(
                self.outstanding
                    .values()
                    .filter(|sent| now.saturating_duration_since(**sent) > LATE)
                    .map(|_| None),
            )
            .collect();
        let mut answered: Vec<f64> = recent
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        answered.sort_by(f64::total_cmp);
        let late = recent
            .iter()
            .filter(|rtt| rtt.is_none_or(|d| d > LATE))
            .count();
        let quantile = |q: f64| {
            (!answered.is_empty()).then(|| {
                let i = ((answered.len() - 1) as f64 * q).round() as usize;
                round1(answered[i])
            })
        };
        Link {
            connected: self.connected,
            rtt_ms: quantile(0.5),
            rtt_p90_ms: quantile(0.9),
            late_pct: (!recent.is_empty())
                .then(|| round1(late as f64 * 100.0 / recent.len() as f64)),
            samples: recent.len(),
            last_outage: self
                .last_outage
                .map(|(lasted, ended)| (lasted, now.saturating_duration_since(ended))),
            down_for: self
                .down_since
                .map(|since| now.saturating_duration_since(since)),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Sent(u16),
        Answered(u16),
        Ping,
        Pong,
        Up,
        Down,
        /// Milliseconds pass.
        Wait(u64),
    }
    use Step::*;

    fn run(steps: &[Step]) -> Link {
        let t0 = Instant::now();
        let mut now = t0;
        let mut stats = LinkStats::default();
        for step in steps {
            match *step {
                Sent(p) => stats.sent(p, now),
                Answered(p) => stats.answered(p, now),
                Ping => stats.ping_sent(now),
                Pong => stats.ping_answered(now),
                Up => stats.connected(now),
                Down => stats.disconnected(now),
                Wait(ms) => now += Duration::from_millis(ms),
            }
        }
        stats.link(now)
    }

    #[test]
    fn round_trips_and_their_spread() {
        let link = run(&[
            Up,
            Sent(1),
            Wait(40),
            Answered(1),
            Sent(2),
            Wait(60),
            Answered(2),
            Ping,
            Wait(500),
            Pong,
        ]);
        assert!(link.connected);
        assert_eq!(link.rtt_ms, Some(60.0));
        assert_eq!(link.rtt_p90_ms, Some(500.0));
        assert_eq!(link.late_pct, Some(0.0));
        assert_eq!(link.samples, 3);
        assert_eq!(link.last_outage, None);
        // An answer to nothing timed (a duplicate PUBACK) is no sample.
        assert_eq!(run(&[Up, Answered(7)]).samples, 0);
        assert_eq!(run(&[Up]).rtt_ms, None);
        assert_eq!(run(&[Up]).late_pct, None);
    }

    #[test]
    fn late_and_lost_count_against_the_link() {
        // One answered in 6 s, one waiting 6 s already, two fine.
        let link = run(&[
            Up,
            Sent(1),
            Wait(6000),
            Answered(1),
            Sent(2),
            Wait(10),
            Answered(2),
            Sent(3),
            Wait(10),
            Answered(3),
            Sent(4),
            Wait(6000),
        ]);
        assert_eq!(link.samples, 4);
        assert_eq!(link.late_pct, Some(50.0));
        // What was in flight when the link dropped is lost.
        let link = run(&[Up, Sent(1), Sent(2), Wait(10), Answered(1), Down]);
        assert_eq!(link.late_pct, Some(50.0));
        assert!(!link.connected);
    }

    #[test]
    fn outages_last_from_the_drop_to_the_connack() {
        let link = run(&[
            Up,
            Wait(1000),
            Down,
            Wait(2000),
            Down, // a failed reconnect: still the same outage
            Wait(1000),
            Up,
            Wait(500),
        ]);
        assert_eq!(
            link.last_outage,
            Some((Duration::from_secs(3), Duration::from_millis(500)))
        );
        assert_eq!(link.down_for, None);
        // Down now, since the first failure (also before any connect).
        let link = run(&[Down, Wait(700), Down, Wait(300)]);
        assert_eq!(link.down_for, Some(Duration::from_secs(1)));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let link = run(&[
            Up,
            Sent(1),
            Down,
            Up,
            Wait(WINDOW.as_millis() as u64 + 1),
            Sent(2),
            Wait(20),
            Answered(2),
        ]);
        assert_eq!((link.samples, link.late_pct), (1, Some(0.0)));
    }
}
