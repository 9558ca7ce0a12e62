//! The send window: which `seq` to send next, what an ack from the observer
//! means, and when to send again. Pure protocol state, like rumqttc's
//! `state.rs`: it changes state and does no I/O; the caller passes the
//! time. The outbox holds one under its lock and does the disk work.
//!
//! The promise it keeps: an event the outbox still holds is sent again
//! until the observer's watermark covers it, and a watermark that stalls is
//! answered with a resend within about a second of the observer being there
//! to receive it, whatever else is being sent.
//!
//! - The observer's watermark only grows while it works. A watermark that
//!   *repeats* while events are in flight means the observer is there but
//!   lacks the next one: it republishes its watermarks each time it
//!   (re)subscribes, and whenever an event arrives ahead of a missing one.
//!   That is a go-back-N request: everything past the watermark is sent
//!   again at once. Repeats that arrive within [`REPEAT_HOLDOFF`] of a
//!   resend are answered once, when the holdoff ends, unless the watermark
//!   moves first (the repeats were about events sent before the resend).
//! - No ack at all while events are in flight (an observer that is away
//!   says nothing, a broker that dropped a window says nothing either):
//!   everything past the watermark is sent again after [`FIRST_STALL`],
//!   then after twice as long each time until the watermark moves, at most
//!   `resend_after`. The timer counts from the last progress or resend,
//!   absolute instants, so new events being sent never postpone it.
//! - A watermark above the last `seq` this node ever gave out means the
//!   node's own state was lost: the outbox renumbers what it holds.
//! - The outbox's bound drops the oldest events and puts an
//!   `events_dropped` notice in the slot of the newest dropped one. The
//!   seqs between the watermark and that slot are then *gone*: nothing
//!   holds them, so the window sends from the notice on and counts its
//!   room from there ([`Window::notice_at`]). A window that counted from
//!   the watermark would wait, forever, to send a seq the outbox no longer
//!   has (a drop wider than the window, during an outage); the invariant
//!   the delivery model checks is that whatever the window sends next,
//!   the outbox holds.

use std::time::{Duration, Instant};

/// At most this many events are sent and not yet acknowledged. Brokers
/// queue a bounded number of messages for a subscriber (the embedded
/// broker 16 MiB per subscription, Mosquitto 1,000 messages by default)
/// and drop the rest; every agent of a fleet replaying its backlog at once
/// shares the observer's queue. The window keeps what one agent has in
/// flight small enough that 100 of them fit (100 x 250 events of about
/// 500 bytes is 12 MiB), and large enough that the observer's acks arrive
/// before it runs dry. Measured with both, in one run: one agent replays
/// 100,000 events at 75k/s with 500, 53k/s with 250; 100 agents with
/// 1,000 each drain in 31 s at 500 (the broker dropped windows, and only
/// the stall timer recovered them) and in 1.5 s at 250. What a broker drops
/// anyway is asked for again by the observer's repeated watermark, or sent
/// again by the stall timer.
pub const SEND_WINDOW: u64 = 250;

/// The first resend of a stalled window comes this soon (or at
/// `resend_after`, if that is shorter); each further one without progress
/// waits twice as long, up to `resend_after`. A broker that dropped a window
/// while the observer stayed subscribed gives no other sign: nothing
/// arrives, so nothing is repeated. The backoff keeps an observer that is
/// away (or busy) from being flooded.
pub const FIRST_STALL: Duration = Duration::from_secs(2);

/// Repeated watermarks within this long of a resend are answered once, when
/// it has passed.
pub const REPEAT_HOLDOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// The watermark moved: events up to it may go.
    Progress,
    /// Older than one already seen (a stale retained message): ignored.
    Old,
    /// The same watermark again; `resend` says whether it started one.
    Repeat { resend: bool },
    /// Above anything this node ever sent: its state was lost.
    AheadOfUs,
}

#[derive(Debug, Clone)]
pub struct Window {
    acked: u64,
    last: u64,
    sent_upto: u64,
    /// Every `seq` above the watermark up to this one was dropped by the
    /// outbox's bound (a notice that says so sits just above it): none is
    /// held, none is sent. At or below `acked` once the watermark passes.
    gone: u64,
    /// The last time the watermark moved, a resend started, or sending
    /// started with nothing in flight: the stall timer counts from here.
    progress_at: Instant,
    resent_at: Option<Instant>,
    /// A repeat arrived during the holdoff: resend when it ends.
    owed: bool,
    /// Counts resends: what was taken to send before one must not mark
    /// anything sent after it (that would skip the resend).
    epoch: u64,
    /// Stall resends since the watermark last moved (the backoff).
    stalls: u32,
}

impl Window {
    /// After a start: everything past `acked` up to `last` is unsent.
    pub fn new(acked: u64, last: u64, now: Instant) -> Window {
        Window {
            acked,
            last: last.max(acked),
            sent_upto: acked,
            gone: 0,
            progress_at: now,
            resent_at: None,
            owed: false,
            epoch: 0,
            stalls: 0,
        }
    }

    /// Changes with every resend; see [`Window::sent_in`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Events up to `seq`, taken to send in `epoch`, are handed to the
    /// broker; ignored if a resend started since.
    pub fn sent_in(&mut self, epoch: u64, seq: u64, now: Instant) {
        if epoch == self.epoch {
            self.sent(seq, now);
        }
    }

    /// The observer's watermark.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The highest `seq` given out.
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn sent_upto(&self) -> u64 {
        self.sent_upto
    }

    /// New events are stored up to `last`.
    pub fn pushed(&mut self, last: u64) {
        self.last = self.last.max(last);
    }

    /// The bound dropped the oldest events and an `events_dropped` notice
    /// took `slot`, the newest dropped one's: every `seq` between the
    /// watermark and `slot` is gone, and the notice, which may sit below
    /// what was already sent, goes next.
    pub fn notice_at(&mut self, slot: u64) {
        self.gone = self.gone.max(slot.saturating_sub(1));
        self.sent_upto = self.sent_upto.min(slot.saturating_sub(1)).max(self.acked);
    }

    /// Below this every `seq` is acknowledged or gone: the window counts
    /// its room from here.
    fn base(&self) -> u64 {
        self.acked.max(self.gone)
    }

    /// Something was sent that the watermark does not cover yet.
    fn in_flight(&self) -> bool {
        self.sent_upto > self.base()
    }

    /// The highest `seq` the window lets out now.
    pub fn send_limit(&self) -> u64 {
        self.base() + SEND_WINDOW
    }

    /// After a start: the outbox holds events from `first` on (`None`:
    /// none). Anything between the watermark and `first` was dropped by
    /// the bound before the restart.
    pub fn held_from(&mut self, first: Option<u64>, _now: Instant) {
        let first = first.unwrap_or(self.last + 1);
        self.gone = self.gone.max(first.saturating_sub(1));
    }

    /// The first `seq` to send, if the window has room and anything waits.
    pub fn next_to_send(&self) -> Option<u64> {
        let from = self.sent_upto.max(self.gone);
        (from < self.last && from < self.send_limit()).then_some(from + 1)
    }

    /// Events up to `seq` are handed to the broker.
    pub fn sent(&mut self, seq: u64, now: Instant) {
        if !self.in_flight() {
            // Nothing was in flight: the stall timer starts now, not at the
            // last ack, which may be long ago.
            self.progress_at = now;
        }
        self.sent_upto = self.sent_upto.max(seq);
    }

    pub fn on_ack(&mut self, watermark: u64, now: Instant) -> Ack {
        if watermark > self.last {
            return Ack::AheadOfUs;
        }
        if watermark < self.acked {
            return Ack::Old;
        }
        if watermark > self.acked {
            self.acked = watermark;
            self.sent_upto = self.sent_upto.max(watermark);
            self.progress_at = now;
            self.owed = false;
            self.stalls = 0;
            return Ack::Progress;
        }
        if !self.in_flight() {
            // Nothing in flight: the next send carries on from here anyway.
            return Ack::Repeat { resend: false };
        }
        if self
            .resent_at
            .is_some_and(|at| now.saturating_duration_since(at) < REPEAT_HOLDOFF)
        {
            self.owed = true;
            return Ack::Repeat { resend: false };
        }
        self.resend(now);
        Ack::Repeat { resend: true }
    }

    /// Everything past the watermark goes again (after every CONNACK too:
    /// the broker may have lost what was in flight).
    pub fn resend(&mut self, now: Instant) {
        self.epoch += 1;
        self.sent_upto = self.acked;
        self.progress_at = now;
        self.resent_at = Some(now);
        self.owed = false;
    }

    /// State was lost and the outbox renumbered its events to follow
    /// `watermark`, up to `last`.
    pub fn renumbered(&mut self, watermark: u64, last: u64, now: Instant) {
        let epoch = self.epoch + 1;
        *self = Window::new(watermark, last, now);
        self.epoch = epoch;
    }

    /// How long without progress makes the next stall resend.
    fn stall_after(&self, resend_after: Duration) -> Duration {
        FIRST_STALL
            .saturating_mul(1 << self.stalls.min(16))
            .min(resend_after)
    }

    /// When [`Window::on_timer`] has something to do, if ever.
    pub fn deadline(&self, resend_after: Duration) -> Option<Instant> {
        let stall = self
            .in_flight()
            .then(|| self.progress_at + self.stall_after(resend_after));
        let owed = self
            .resent_at
            .filter(|_| self.owed)
            .map(|at| at + REPEAT_HOLDOFF);
        match (stall, owed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Resends if a holdoff ended with a repeat owed, or nothing moved for
    /// the stall backoff with events in flight. True if it did.
    pub fn on_timer(&mut self, now: Instant, resend_after: Duration) -> bool {
        let owed_due = self.owed
            && self
                .resent_at
                .is_none_or(|at| now.saturating_duration_since(at) >= REPEAT_HOLDOFF);
        let stalled = self.in_flight()
            && now.saturating_duration_since(self.progress_at) >= self.stall_after(resend_after);
        if owed_due || stalled {
            self.resend(now);
            if stalled {
                self.stalls = self.stalls.saturating_add(1);
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESEND: Duration = Duration::from_secs(30);

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Push(u64),
        /// Send everything the window allows.
        Send,
        Mark(u64),
        /// Milliseconds pass, then the timer is looked at.
        Wait(u64),
    }

    /// Runs `steps` from a fresh window at `acked` 0, and checks what each
    /// answered: the ack outcome, or for `Send` the seqs sent, or for
    /// `Wait` whether a resend started.
    fn check(steps: &[(Step, &str)]) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut w = Window::new(0, 0, now);
        for (i, (step, expected)) in steps.iter().enumerate() {
            let got = match *step {
                Step::Push(last) => {
                    w.pushed(last);
                    String::new()
                }
                Step::Send => {
                    let mut seqs = Vec::new();
                    while let Some(seq) = w.next_to_send() {
                        w.sent(seq, now);
                        seqs.push(seq.to_string());
                    }
                    seqs.join(",")
                }
                Step::Mark(mark) => format!("{:?}", w.on_ack(mark, now)),
                Step::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    w.on_timer(now, RESEND).to_string()
                }
            };
            assert_eq!(got, *expected, "step {i}: {step:?}");
        }
    }

    use Step::*;

    #[test]
    fn sends_in_order_within_the_window() {
        check(&[
            (Push(3), ""),
            (Send, "1,2,3"),
            (Send, ""),
            (Mark(2), "Progress"),
            (Mark(1), "Old"),
            (Push(4), ""),
            (Send, "4"),
        ]);
        let mut w = Window::new(0, 2000, Instant::now());
        let mut sent = 0;
        while let Some(seq) = w.next_to_send() {
            w.sent(seq, Instant::now());
            sent += 1;
        }
        assert_eq!(sent, SEND_WINDOW);
    }

    #[test]
    fn a_repeated_watermark_resends_at_once() {
        check(&[
            (Push(5), ""),
            (Send, "1,2,3,4,5"),
            (Mark(2), "Progress"),
            // The observer came back, or 4 arrived ahead of a lost 3.
            (Mark(2), "Repeat { resend: true }"),
            (Send, "3,4,5"),
        ]);
    }

    #[test]
    fn a_repeat_with_nothing_in_flight_is_ignored() {
        check(&[
            (Push(2), ""),
            (Send, "1,2"),
            (Mark(2), "Progress"),
            (Mark(2), "Repeat { resend: false }"),
            (Send, ""),
        ]);
    }

    #[test]
    fn repeats_during_the_holdoff_are_answered_once_after_it() {
        check(&[
            (Push(5), ""),
            (Send, "1,2,3,4,5"),
            (Mark(1), "Progress"),
            (Mark(1), "Repeat { resend: true }"),
            (Send, "2,3,4,5"),
            (Mark(1), "Repeat { resend: false }"),
            (Mark(1), "Repeat { resend: false }"),
            (Wait(100), "false"),
            (Wait(400), "true"),
            (Send, "2,3,4,5"),
            (Wait(1000), "false"),
        ]);
        // The watermark moved in the meantime: nothing owed.
        check(&[
            (Push(5), ""),
            (Send, "1,2,3,4,5"),
            (Mark(1), "Progress"),
            (Mark(1), "Repeat { resend: true }"),
            (Send, "2,3,4,5"),
            (Mark(1), "Repeat { resend: false }"),
            (Mark(5), "Progress"),
            (Wait(600), "false"),
        ]);
    }

    #[test]
    fn the_stall_timer_is_not_postponed_by_new_sends() {
        let mut steps = vec![(Push(1), ""), (Send, "1")];
        // An event every half second, and no ack: the old loop restarted
        // its timer on each send and never resent.
        for i in 2..5 {
            steps.push((Wait(500), "false"));
            steps.push((Push(i), ""));
            steps.push((Send, Box::leak(i.to_string().into_boxed_str())));
        }
        steps.push((Wait(500), "true"));
        check(&steps);
    }

    #[test]
    fn the_stall_timer_starts_when_sending_starts() {
        check(&[
            (Wait(3_600_000), "false"),
            (Push(1), ""),
            (Send, "1"),
            (Wait(1_900), "false"),
            (Wait(100), "true"),
        ]);
    }

    #[test]
    fn stall_resends_back_off_until_the_watermark_moves() {
        let mut steps = vec![(Push(1), ""), (Send, "1")];
        // 2 s, then 4, 8, 16, and 30 (resend_after) from then on.
        for gap in [2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
            steps.push((Wait(gap - 1), "false"));
            steps.push((Wait(1), "true"));
            steps.push((Send, "1"));
        }
        // Progress starts the backoff over.
        steps.extend([
            (Mark(1), "Progress"),
            (Push(2), ""),
            (Send, "2"),
            (Wait(1_999), "false"),
            (Wait(1), "true"),
        ]);
        check(&steps);
    }

    #[test]
    fn a_watermark_past_our_last_seq_means_lost_state() {
        check(&[(Push(3), ""), (Mark(40), "AheadOfUs")]);
        let mut w = Window::new(0, 3, Instant::now());
        w.renumbered(40, 43, Instant::now());
        assert_eq!((w.acked(), w.last(), w.next_to_send()), (40, 43, Some(41)));
    }

    #[test]
    fn a_batch_taken_before_a_resend_does_not_skip_it() {
        let t0 = Instant::now();
        let mut w = Window::new(0, 10, t0);
        let epoch = w.epoch();
        w.sent_in(epoch, 5, t0);
        assert_eq!(w.on_ack(0, t0), Ack::Repeat { resend: true });
        // 6..10 were taken before the resend and go out after it.
        w.sent_in(epoch, 10, t0);
        assert_eq!(w.next_to_send(), Some(1), "the resend starts over");
    }

    #[test]
    fn a_drop_wider_than_the_window_sends_from_the_notice() {
        let t0 = Instant::now();
        let mut w = Window::new(1, 1, t0);
        w.pushed(401);
        // 2..=100 went out before the link was cut; the bound then dropped
        // 2..=340 and put its notice at 341.
        w.sent(100, t0);
        w.notice_at(341);
        assert_eq!(w.next_to_send(), Some(341));
        assert_eq!(w.send_limit(), 340 + SEND_WINDOW);
        assert_eq!(w.deadline(RESEND), None, "nothing held is in flight");
        // CONNACK: the resend starts from the notice, not from seq 2.
        w.resend(t0);
        assert_eq!(w.next_to_send(), Some(341));
        w.sent(401, t0);
        assert_eq!(w.deadline(RESEND), Some(t0 + FIRST_STALL));
        // The observer still says 1 a second later (it had none of them):
        // go back to the notice.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.on_ack(1, t1), Ack::Repeat { resend: true });
        assert_eq!(w.next_to_send(), Some(341));
        assert_eq!(w.on_ack(401, t1), Ack::Progress);
        assert_eq!(w.next_to_send(), None);
        // A restart after such a drop: what is held starts at the notice.
        let mut w = Window::new(1, 401, t0);
        w.held_from(Some(341), t0);
        assert_eq!(w.next_to_send(), Some(341));
        let mut w = Window::new(1, 1, t0);
        w.held_from(None, t0);
        assert_eq!(w.next_to_send(), None);
    }

    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        let mut w = Window::new(0, 3, t0);
        assert_eq!(w.deadline(RESEND), None, "nothing in flight");
        w.sent(3, t0);
        assert_eq!(w.deadline(RESEND), Some(t0 + FIRST_STALL));
        assert_eq!(
            w.deadline(Duration::from_secs(1)),
            Some(t0 + Duration::from_secs(1)),
            "resend_after shorter than the first stall"
        );
        assert_eq!(w.on_ack(0, t0), Ack::Repeat { resend: true });
        w.sent(3, t0);
        assert_eq!(w.on_ack(0, t0), Ack::Repeat { resend: false });
        assert_eq!(w.deadline(RESEND), Some(t0 + REPEAT_HOLDOFF));
    }
}
