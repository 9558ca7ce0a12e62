//! A model of delivery: the agent's send window (`homelab_agent::window`)
//! and the observer's per-node order (`homelab_observer::sequence`), the
//! real decision code of both, joined by a channel that loses, duplicates
//! and drops whole flights (a broker restart, an observer that is away),
//! driven by proptest on a simulated clock.
//!
//! What it proves: the observer's log is the node's events in `seq` order
//! with no gap and no duplicate at every step; the watermark never covers
//! an event that is not in the log; the agent never lets go of an event
//! the watermark does not cover; and once the faults stop, everything the
//! agent holds arrives within the default resend timeout.

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
        2 => (1u16..2000).prop_map(Op::Wait),
    ]
}

struct Model {
    t0: Instant,
    now: Instant,
    // The agent: its outbox (seq → id) and window.
    outbox: BTreeMap<u64, String>,
    window: Window,
    emitted: u64,
    // The observer.
    up: bool,
    sequence: Sequence,
    log: Vec<(u64, String)>,
    // The broker's queues, each way.
    to_observer: VecDeque<u64>,
    to_agent: VecDeque<u64>,
    /// When the observer last published the watermark.
    acked_at: Option<Instant>,
    /// A batch taken to send, with the window's epoch then.
    taken: Option<(u64, Vec<u64>)>,
}

fn event(seq: u64) -> Event {
    Event {
        v: 1,
        id: format!("E{seq}"),
        ts: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        node: Name::parse("edge").unwrap(),
        seq,
        source: "node-agent".into(),
        kind: "test_event".into(),
        service: None,
        severity: Severity::Info,
        message: String::new(),
        data: serde_json::json!({}),
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
                    self.outbox
                        .insert(self.emitted, format!("E{}", self.emitted));
                }
                self.window.pushed(self.emitted);
            }
            Op::Send => {
                while let Some(seq) = self.window.next_to_send() {
                    self.window.sent(seq, self.now);
                    self.to_observer.push_back(seq);
                }
            }
            Op::Take => {
                if self.taken.is_none() {
                    let mut seqs = Vec::new();
                    let mut from = self.window.next_to_send();
                    let upto = self.window.acked() + homelab_agent::window::SEND_WINDOW;
                    while let Some(seq) = from.filter(|s| *s <= self.emitted && *s <= upto) {
                        seqs.push(seq);
                        from = Some(seq + 1);
                    }
                    self.taken = Some((self.window.epoch(), seqs));
                }
            }
            Op::Flush => {
                if let Some((epoch, seqs)) = self.taken.take() {
                    for seq in seqs {
                        self.to_observer.push_back(seq);
                        self.window.sent_in(epoch, seq, self.now);
                    }
                }
            }
            Op::Deliver { lose, twice } => {
                let Some(seq) = self.to_observer.pop_front() else {
                    return;
                };
                if lose || !self.up {
                    return;
                }
                self.observe(seq);
                if twice {
                    self.observe(seq);
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
    fn observe(&mut self, seq: u64) {
        let event = event(seq);
        let before = self.sequence.watermark();
        let mut cue = AckCue::default();
        if self.log.iter().any(|(_, id)| *id == event.id) {
            cue.duplicate = true;
        } else {
            let now = self.ts();
            match self.sequence.admit(&event, now) {
                Admit::Store => self.log.push((seq, event.id)),
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

    fn check(&self) {
        // The log: 1, 2, 3, … with nothing missing and nothing twice.
        for (i, (seq, id)) in self.log.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "log {:?}", self.log);
            assert_eq!(*id, format!("E{seq}"));
        }
        // The watermark covers exactly what is logged.
        assert_eq!(self.sequence.watermark(), self.log.len() as u64);
        // The agent holds everything the observer may still need.
        assert!(self.window.acked() <= self.sequence.watermark());
        for seq in self.window.acked() + 1..=self.emitted {
            assert!(self.outbox.contains_key(&seq), "agent gave up seq {seq}");
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
        while self.sequence.watermark() < self.emitted || self.window.acked() < self.emitted {
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
        prop_assert_eq!(model.log.len() as u64, model.emitted);
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
