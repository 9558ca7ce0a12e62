//! A model of delivery: the agent's send window (`homelab_agent::window`)
//! and the observer's per-node order (`homelab_observer::sequence`), the
//! real decision code of both, joined by a channel that loses, duplicates
//! and drops whole flights (a broker restart, an observer that is away),
//! driven by proptest on a simulated clock.
//!
//! The agent's side reads only what its outbox holds, as `Outbox::next_batch`
//! does, and the outbox has its byte bound: `Overflow` drops the oldest
//! events and puts an `events_dropped` notice in the slot of the newest
//! dropped one, as `Outbox::push_batch` does.
//!
//! What it proves: the observer's log is the node's events in `seq` order
//! with no gap and no duplicate at every step (a notice stands for the
//! range it announces); the watermark never covers an event that is not in
//! the log or announced dropped; the agent never lets go of an event the
//! watermark does not cover unless it announces it dropped; whatever the
//! window says to send next, the outbox holds; and once the faults stop,
//! everything the agent holds arrives within the default resend timeout.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use homelab_agent::window::{Ack, Window};
use homelab_core::{Event, Name, Severity};
use homelab_observer::sequence::{publish_ack, AckCue, Admit, Sequence};
use proptest::prelude::*;

const RESEND_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Op {
    Emit(u8),
    /// The agent sends what its window allows.
    Send,
    /// The agent takes a batch to send (its publish is under way)…
    Take,
    /// …and hands it to the broker, perhaps after a resend began.
    Flush,
    /// The next message to the observer: delivered, lost or twice.
    Deliver {
        lose: bool,
        twice: bool,
    },
    /// The next watermark to the agent: delivered or lost.
    DeliverAck {
        lose: bool,
    },
    /// The observer goes away: what reaches the broker meanwhile is lost.
    ObserverDown,
    /// It is back and republishes its watermark.
    ObserverUp,
    /// The broker restarts: everything in flight is gone; the agent
    /// reconnects and resends from the watermark (CONNACK).
    BrokerRestart,
    /// The agent restarts: its window is rebuilt from disk.
    AgentRestart,
    /// The outbox is over its bound: its oldest events (all but one at
    /// most) go, and a notice takes the slot of the newest dropped.
    Overflow(u16),
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..5).prop_map(Op::Emit),
        4 => Just(Op::Send),
        2 => Just(Op::Take),
        2 => Just(Op::Flush),
        8 => (prop::bool::weighted(0.2), prop::bool::weighted(0.1))
            .prop_map(|(lose, twice)| Op::Deliver { lose, twice }),
        4 => prop::bool::weighted(0.2).prop_map(|lose| Op::DeliverAck { lose }),
        1 => Just(Op::ObserverDown),
        1 => Just(Op::ObserverUp),
        1 => Just(Op::BrokerRestart),
        1 => Just(Op::AgentRestart),
        1 => (1u16..400).prop_map(Op::Overflow),
        2 => (1u16..2000).prop_map(Op::Wait),
    ]
}

/// What a slot of the outbox holds: an event, or a notice that the events
/// from `first` up to its own slot were dropped.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Event,
    Dropped { first: u64 },
}

struct Model {
    t0: Instant,
    now: Instant,
    // The agent: its outbox (seq → what it holds) and window.
    outbox: BTreeMap<u64, Item>,
    window: Window,
    emitted: u64,
    // The observer.
    up: bool,
    sequence: Sequence,
    log: Vec<(u64, Item)>,
    // The broker's queues, each way.
    to_observer: VecDeque<(u64, Item)>,
    to_agent: VecDeque<u64>,
    /// When the observer last published the watermark.
    acked_at: Option<Instant>,
    /// A batch taken to send, with the window's epoch then.
    taken: Option<(u64, Vec<(u64, Item)>)>,
}

fn event(seq: u64, item: &Item) -> Event {
    let (kind, data) = match item {
        Item::Event => ("test_event", serde_json::json!({})),
        Item::Dropped { first } => (
            "events_dropped",
            serde_json::json!({"first_seq": first, "through_seq": seq}),
        ),
    };
    Event {
        v: 1,
        id: match item {
            Item::Event => format!("E{seq}"),
            Item::Dropped { first } => format!("D{first}-{seq}"),
        },
        ts: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        node: Name::parse("edge").unwrap(),
        seq,
        source: "node-agent".into(),
        kind: kind.into(),
        service: None,
        severity: Severity::Info,
        message: String::new(),
        data,
    }
}

const DELIVER: Op = Op::Deliver {
    lose: false,
    twice: false,
};
const DELIVER_ACK: Op = Op::DeliverAck { lose: false };

impl Model {
    fn new() -> Model {
        let t0 = Instant::now();
        Model {
            t0,
            now: t0,
            outbox: BTreeMap::new(),
            window: Window::new(0, 0, t0),
            emitted: 0,
            up: true,
            sequence: Sequence::default(),
            log: Vec::new(),
            to_observer: VecDeque::new(),
            to_agent: VecDeque::new(),
            acked_at: None,
            taken: None,
        }
    }

    fn ts(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
            + chrono::TimeDelta::from_std(self.now - self.t0).unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Emit(n) => {
                for _ in 0..n {
                    self.emitted += 1;
                    self.outbox.insert(self.emitted, Item::Event);
                }
                self.window.pushed(self.emitted);
            }
            Op::Send => loop {
                // As the publisher does: batches read from the outbox
                // until one comes back empty.
                let batch = self.next_batch();
                if batch.is_empty() {
                    break;
                }
                for (seq, item) in batch {
                    self.window.sent(seq, self.now);
                    self.to_observer.push_back((seq, item));
                }
            },
            Op::Take => {
                if self.taken.is_none() {
                    self.taken = Some((self.window.epoch(), self.next_batch()));
                }
            }
            Op::Flush => {
                if let Some((epoch, batch)) = self.taken.take() {
                    for (seq, item) in batch {
                        self.window.sent_in(epoch, seq, self.now);
                        self.to_observer.push_back((seq, item));
                    }
                }
            }
            Op::Deliver { lose, twice } => {
                let Some((seq, item)) = self.to_observer.pop_front() else {
                    return;
                };
                if lose || !self.up {
                    return;
                }
                self.observe(seq, &item);
                if twice {
                    self.observe(seq, &item);
                }
            }
            Op::DeliverAck { lose } => {
                let Some(mark) = self.to_agent.pop_front() else {
                    return;
                };
                if !lose {
                    self.on_ack(mark);
                }
            }
            Op::ObserverDown => self.up = false,
            Op::ObserverUp => {
                if !self.up {
                    self.up = true;
                    self.ack();
                }
            }
            Op::BrokerRestart => {
                self.to_observer.clear();
                self.to_agent.clear();
                self.window.resend(self.now);
                if self.up {
                    self.ack();
                }
            }
            Op::AgentRestart => {
                self.taken = None;
                let acked = self.window.acked();
                self.window = Window::new(acked, self.emitted, self.now);
                // As `Outbox::open` does: what the outbox holds starts here.
                self.window
                    .held_from(self.outbox.keys().next().copied(), self.now);
            }
            Op::Overflow(n) => {
                let n = (n as usize).min(self.outbox.len().saturating_sub(1));
                if n == 0 {
                    return;
                }
                let mut first = u64::MAX;
                let mut slot = 0;
                for _ in 0..n {
                    let (seq, item) = self.outbox.pop_first().unwrap();
                    first = first.min(match item {
                        Item::Event => seq,
                        Item::Dropped { first } => first,
                    });
                    slot = seq;
                }
                self.outbox.insert(slot, Item::Dropped { first });
                self.window.notice_at(slot);
            }
            Op::Wait(ms) => {
                self.now += Duration::from_millis(ms as u64);
                self.window.on_timer(self.now, RESEND_AFTER);
            }
        }
    }

    /// The observer's ingest: dedup by id, then the node's order; the
    /// watermark is published when it moves, and repeated for an event
    /// ahead of a missing one.
    fn observe(&mut self, seq: u64, item: &Item) {
        let event = event(seq, item);
        let before = self.sequence.watermark();
        let mut cue = AckCue::default();
        if self
            .log
            .iter()
            .any(|(s, i)| event.id == crate::event(*s, i).id)
        {
            cue.duplicate = true;
        } else {
            let now = self.ts();
            match self.sequence.admit(&event, now) {
                Admit::Store => self.log.push((seq, item.clone())),
                Admit::Behind => cue.duplicate = true,
                Admit::Early => cue.early = true,
            }
        }
        cue.moved = self.sequence.watermark() != before;
        if publish_ack(cue, self.acked_at.map(|at| self.now - at)) {
            self.ack();
        }
    }

    /// The observer publishes its watermark.
    fn ack(&mut self) {
        self.to_agent.push_back(self.sequence.watermark());
        self.acked_at = Some(self.now);
    }

    fn on_ack(&mut self, mark: u64) {
        if self.window.on_ack(mark, self.now) == Ack::Progress {
            self.outbox.retain(|seq, _| *seq > mark);
        }
    }

    /// What the publisher takes next, as `Outbox::next_batch` reads it:
    /// the held events from the window's next `seq` up to its limit.
    fn next_batch(&self) -> Vec<(u64, Item)> {
        let Some(from) = self.window.next_to_send() else {
            return Vec::new();
        };
        self.outbox
            .range(from..=self.window.send_limit())
            .map(|(seq, item)| (*seq, item.clone()))
            .collect()
    }

    /// The highest `seq` the log accounts for: each event its own, a
    /// notice its whole range.
    fn covered(&self) -> u64 {
        self.log.last().map_or(0, |(seq, _)| *seq)
    }

    fn check(&self) {
        // The log: 1, 2, 3, … with nothing missing and nothing twice; a
        // notice stands for the range it announces, starting at or before
        // the next one expected.
        let mut next = 1;
        for (seq, item) in &self.log {
            match item {
                Item::Event => assert_eq!(*seq, next, "log {:?}", self.log),
                Item::Dropped { first } => {
                    assert!(*first <= next && *seq >= next, "log {:?}", self.log)
                }
            }
            next = seq + 1;
        }
        // The watermark covers exactly what is logged.
        assert_eq!(self.sequence.watermark(), self.covered());
        // The agent holds everything the observer may still need, or a
        // notice that announces it dropped.
        assert!(self.window.acked() <= self.sequence.watermark());
        for seq in self.window.acked() + 1..=self.emitted {
            let held = self.outbox.range(seq..).next().is_some_and(|(at, item)| {
                *at == seq || matches!(item, Item::Dropped { first } if *first <= seq)
            });
            assert!(held, "agent gave up seq {seq} without a word");
        }
        // Whatever the window would send next is there to be sent: a
        // window waiting on a seq the outbox no longer holds sends nothing
        // ever again.
        if let Some(seq) = self.window.next_to_send() {
            assert!(
                self.outbox.contains_key(&seq),
                "the window waits to send seq {seq}, which the outbox does not hold \
                 (it holds {:?}…)",
                self.outbox.keys().take(3).collect::<Vec<_>>()
            );
        }
    }

    /// One round on a channel without faults: send, deliver everything
    /// each way, let 100 ms pass.
    fn round(&mut self) {
        self.apply(&Op::Flush);
        self.apply(&Op::Send);
        while !self.to_observer.is_empty() {
            self.apply(&DELIVER);
        }
        while !self.to_agent.is_empty() {
            self.apply(&DELIVER_ACK);
        }
        self.check();
        self.apply(&Op::Wait(100));
    }

    /// The faults stop, time goes on: everything must arrive before the
    /// resend timeout has passed once more.
    fn heal(&mut self) -> Duration {
        self.up = true;
        let started = self.now;
        while self.covered() < self.emitted || self.window.acked() < self.emitted {
            self.round();
            assert!(
                self.now - started < Duration::from_secs(600),
                "not delivered after {:?}",
                self.now - started
            );
        }
        self.now - started
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn nothing_lost_nothing_twice_always_in_order(ops in prop::collection::vec(op(), 1..300)) {
        let mut model = Model::new();
        for op in &ops {
            model.apply(op);
            model.check();
        }
        let took = model.heal();
        prop_assert!(took <= RESEND_AFTER + Duration::from_secs(1), "took {:?}", took);
        prop_assert_eq!(model.covered(), model.emitted);
    }
}

/// The case, deterministic: events sent while the observer was
/// away are resent as soon as it is back and says its watermark, not after
/// the resend timeout, while new events keep coming.
#[test]
fn an_observer_back_is_answered_within_a_second() {
    let mut m = Model::new();
    m.apply(&Op::Emit(3));
    m.round();
    assert_eq!(m.log.len(), 3);
    m.apply(&Op::ObserverDown);
    // 2 events a second for 10 s, sent into the void.
    for _ in 0..20 {
        m.apply(&Op::Emit(1));
        m.apply(&Op::Send);
        m.apply(&DELIVER);
        m.apply(&Op::Wait(500));
    }
    m.apply(&Op::ObserverUp);
    let back = m.now;
    while m.sequence.watermark() < m.emitted {
        m.apply(&Op::Emit(1));
        m.round();
        assert!(
            m.now - back <= Duration::from_secs(1),
            "still missing a second after the observer came back"
        );
    }
}

/// The case: the watermark is at 1 when the uplink goes; 400
/// events later the bound has dropped 2 to 340 (more than a send window)
/// and holds a notice at 341 and the 60 newest. After the reconnect the
/// notice and every kept event arrive at once, in order, not never.
#[test]
fn an_overflow_wider_than_the_window_is_delivered_after_the_reconnect() {
    let mut m = Model::new();
    m.apply(&Op::Emit(1));
    m.round();
    assert_eq!(m.covered(), 1);
    m.apply(&Op::ObserverDown);
    for _ in 0..100 {
        m.apply(&Op::Emit(4));
        m.apply(&Op::Send);
        m.apply(&Op::Wait(100));
    }
    m.apply(&Op::Overflow(340));
    assert_eq!(m.outbox.keys().next(), Some(&341));
    m.check();
    // The link is back on a kept session: CONNACK, the agent resends from
    // the watermark, the observer (back too) says its watermark.
    m.apply(&Op::ObserverUp);
    m.apply(&Op::BrokerRestart);
    let back = m.now;
    while m.covered() < m.emitted {
        m.round();
        assert!(
            m.now - back <= Duration::from_secs(1),
            "the kept events did not arrive within a second of the reconnect"
        );
    }
    assert_eq!(m.log[1], (341, Item::Dropped { first: 2 }));
    assert_eq!(m.log.len(), 1 + 1 + 60);
}
