//! The delivery model of the observer's ingest: random histories of two
//! agents sending over a lossy bus (drops, redeliveries, resends after a
//! lost ack, events across midnight, an event handed over twice, a script's
//! unsequenced alerts) into [`Ingest`] with an in-memory [`LogStore`] that
//! crashes: for every step of every history, a run that crashes the store
//! there (leaving any prefix of each file's new bytes), recovers as a start
//! does (from a checkpoint when one was taken, else the whole log), and
//! goes on. Checked: no ack ever covers an event that is not in the log,
//! and once everything is delivered, each event is in the log exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;

use homelab_core::time::Timestamp;
use homelab_core::{eventlog, Event, Layout, Name, Severity};
use homelab_observer::checkpoint;
use homelab_observer::ingest::{self, Ingest, Lines, LogStore};
use proptest::prelude::*;

/// The log in memory; the append numbered `crash_at` fails after writing
/// a prefix of each file's bytes (`cuts` says how much, in turn).
struct MemLog {
    files: BTreeMap<PathBuf, Vec<u8>>,
    appends: usize,
    crash_at: Option<usize>,
    cuts: Vec<usize>,
}

impl LogStore for MemLog {
    fn append(&mut self, lines: &Lines) -> anyhow::Result<Vec<(PathBuf, u64)>> {
        let crash = self.crash_at == Some(self.appends);
        self.appends += 1;
        let mut sizes = Vec::new();
        for (i, (path, bytes)) in lines.iter().enumerate() {
            let file = self.files.entry(path.clone()).or_default();
            let mut new = Vec::new();
            if file.last().is_some_and(|b| *b != b'\n') {
                new.push(b'\n');
            }
            new.extend_from_slice(bytes);
            if crash {
                let cut = self.cuts.get(i).copied().unwrap_or(0) % (new.len() + 1);
                new.truncate(cut);
            }
            file.extend_from_slice(&new);
            sizes.push((path.clone(), file.len() as u64));
        }
        if crash {
            anyhow::bail!("the store crashed");
        }
        Ok(sizes)
    }
}

impl MemLog {
    fn on_disk(&self) -> Vec<(PathBuf, u64)> {
        self.files
            .iter()
            .map(|(p, b)| (p.clone(), b.len() as u64))
            .collect()
    }

    /// Every readable event from `from` on in each file, as a start reads
    /// them.
    fn read(&self, tails: &[(PathBuf, u64)], mut f: impl FnMut(Event)) {
        let mut bad = Vec::new();
        for (path, from) in tails {
            let bytes = &self.files[path][*from as usize..];
            eventlog::read_lines(bytes, path, &mut f, &mut bad).unwrap();
        }
    }

    fn ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        self.read(&self.tails_from_zero(), |e| ids.push(e.id));
        ids
    }

    fn tails_from_zero(&self) -> Vec<(PathBuf, u64)> {
        self.files.keys().map(|p| (p.clone(), 0)).collect()
    }
}

/// What a checkpoint keeps of the ingest, and the file sizes then.
struct Saved {
    sequences: BTreeMap<Name, homelab_observer::sequence::Sequence>,
    ids: Vec<(i64, String)>,
    files: BTreeMap<PathBuf, u64>,
}

fn checkpoint_of(ingest: &Ingest, log: &MemLog) -> Saved {
    Saved {
        sequences: ingest.sequences().clone(),
        ids: ingest
            .ids()
            .entries()
            .map(|(at, id)| (at.timestamp(), id.clone()))
            .collect(),
        files: log.on_disk().into_iter().collect(),
    }
}

/// A start: from the checkpoint and what the files gained since, or the
/// whole log.
fn recover(log: &MemLog, saved: Option<&Saved>, root: &std::path::Path) -> Ingest {
    let on_disk = log.on_disk();
    let (mut ingest, tails) = match saved {
        Some(saved) => {
            let relative = saved
                .files
                .iter()
                .map(|(p, n)| (p.strip_prefix(root).unwrap().to_path_buf(), *n))
                .collect();
            let tails = checkpoint::tails(&relative, &on_disk, root).expect("the log only grows");
            let ingest = Ingest::from_checkpoint(saved.sequences.clone(), saved.ids.clone());
            (ingest, tails)
        }
        None => (Ingest::default(), log.tails_from_zero()),
    };
    log.read(&tails, |event| {
        ingest.replay(&event);
    });
    ingest
}

fn base() -> Timestamp {
    chrono::DateTime::parse_from_rfc3339("2026-03-01T23:59:00Z")
        .unwrap()
        .into()
}

fn event(node: &Name, seq: u64, id: String, next_day: bool) -> Event {
    Event {
        v: 1,
        id,
        ts: base() + chrono::TimeDelta::seconds(if next_day { 120 } else { 0 }),
        node: node.clone(),
        seq,
        source: "node-agent".into(),
        kind: "container_started".into(),
        service: None,
        severity: Severity::Info,
        message: String::new(),
        data: serde_json::json!({}),
    }
}

/// One node's events: seq 1..=n, each on day one or two, some handed over
/// twice (the id of the one before under the next seq).
#[derive(Debug, Clone)]
struct NodeEvents {
    days: Vec<bool>,
    twins: Vec<bool>,
}

/// A delivery: which node, from where in its outbox, which of those the
/// bus drops, whether an old copy comes too, whether the ack is lost on
/// the way back, a script's alert, and how much time passed.
#[derive(Debug, Clone)]
struct Step {
    node: usize,
    from: usize,
    drops: Vec<bool>,
    old_copy: bool,
    lose_ack: bool,
    alert: Option<u8>,
    millis: u64,
    checkpoint: bool,
}

fn node_events() -> impl Strategy<Value = NodeEvents> {
    (1usize..10).prop_flat_map(|n| {
        (
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(proptest::bool::weighted(0.15), n),
        )
            .prop_map(|(days, twins)| NodeEvents { days, twins })
    })
}

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..2,
        0usize..4,
        proptest::collection::vec(proptest::bool::weighted(0.3), 0..8),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.3),
        proptest::option::weighted(0.2, 0u8..3),
        prop_oneof![Just(100u64), Just(3000u64)],
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(node, from, drops, old_copy, lose_ack, alert, millis, checkpoint)| Step {
                node,
                from,
                drops,
                old_copy,
                lose_ack,
                alert,
                millis,
                checkpoint,
            },
        )
}

struct Agent {
    node: Name,
    /// Every event it made, in seq order.
    all: Vec<Event>,
    /// Those not acknowledged yet.
    outbox: VecDeque<Event>,
}

fn agents(nodes: &[NodeEvents]) -> Vec<Agent> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let node = Name::parse(["a", "b"][i]).unwrap();
            let mut all: Vec<Event> = Vec::new();
            for (k, (day, twin)) in n.days.iter().zip(&n.twins).enumerate() {
                let seq = k as u64 + 1;
                let id = match (twin, all.last()) {
                    (true, Some(before)) => before.id.clone(),
                    _ => format!("{node}-{seq}"),
                };
                // A twin is the same event: its day too.
                let day = match (twin, all.last()) {
                    (true, Some(before)) => before.ts > base(),
                    _ => *day,
                };
                all.push(event(&node, seq, id, day));
            }
            Agent {
                node,
                outbox: all.iter().cloned().collect(),
                all,
            }
        })
        .collect()
}

/// Runs a history, crashing the store at append `crash_at`; returns the
/// number of appends made, so the caller knows every step was tried.
fn run(
    nodes: &[NodeEvents],
    steps: &[Step],
    crash_at: Option<usize>,
    cuts: &[usize],
) -> Result<usize, TestCaseError> {
    let root = std::path::Path::new("/root");
    let layout = Layout::new(root);
    let mut agents = agents(nodes);
    let mut log = MemLog {
        files: BTreeMap::new(),
        appends: 0,
        crash_at,
        cuts: cuts.to_vec(),
    };
    let mut ingest = Ingest::default();
    let mut saved: Option<Saved> = None;
    let mut now = base();
    // Alerts stored by a batch that was stored: they must stay.
    let mut alerts_kept: BTreeSet<String> = BTreeSet::new();
    let mut deliver = |ingest: &mut Ingest,
                       log: &mut MemLog,
                       saved: &mut Option<Saved>,
                       agents: &mut [Agent],
                       batch: Vec<Event>,
                       lose_ack: bool,
                       now: Timestamp|
     -> Result<bool, TestCaseError> {
        let alerts: Vec<String> = batch
            .iter()
            .filter(|e| e.seq == 0)
            .map(|e| e.id.clone())
            .collect();
        let effects = ingest.receive(batch, now);
        let stages = ingest::stages(&effects.append, &layout).unwrap();
        if ingest::store(log, &stages).is_err() {
            return Ok(false);
        }
        if effects.filled {
            *saved = Some(checkpoint_of(ingest, log));
        }
        alerts_kept.extend(alerts);
        let stored: BTreeSet<String> = log.ids().into_iter().collect();
        for (node, mark) in effects.acks {
            let agent = agents.iter_mut().find(|a| a.node == node).unwrap();
            // The invariant: an ack covers only what is in the log.
            for e in agent.all.iter().filter(|e| e.seq <= mark) {
                prop_assert!(
                    stored.contains(&e.id),
                    "ack {mark} of {node} covers {} ({}), not in the log",
                    e.seq,
                    e.id
                );
            }
            if !lose_ack {
                agent.outbox.retain(|e| e.seq > mark);
            }
        }
        Ok(true)
    };
    for step in steps {
        now += chrono::TimeDelta::milliseconds(step.millis as i64);
        let agent = &agents[step.node.min(agents.len() - 1)];
        let mut batch: Vec<Event> = agent
            .outbox
            .iter()
            .skip(step.from.min(agent.outbox.len()))
            .enumerate()
            .filter(|(i, _)| !step.drops.get(*i).copied().unwrap_or(false))
            .map(|(_, e)| e.clone())
            .collect();
        if step.old_copy {
            if let Some(old) = agent.all.iter().find(|e| !agent.outbox.contains(e)) {
                batch.insert(0, old.clone());
            }
        }
        if let Some(alert) = step.alert {
            batch.push(event(&agent.node, 0, format!("alert-{alert}"), false));
        }
        if !deliver(
            &mut ingest,
            &mut log,
            &mut saved,
            &mut agents,
            batch,
            step.lose_ack,
            now,
        )? {
            // Crashed: a start recovers from what the store holds.
            ingest = recover(&log, saved.as_ref(), root);
            continue;
        }
        if step.checkpoint {
            saved = Some(checkpoint_of(&ingest, &log));
        }
    }
    let appends = log.appends;
    // Then the link holds: each agent sends its whole outbox until it is
    // acknowledged (a resend after every lost ack or gap).
    for _ in 0..20 {
        now += chrono::TimeDelta::seconds(3);
        let batch: Vec<Event> = agents.iter().flat_map(|a| a.outbox.clone()).collect();
        if batch.is_empty() {
            break;
        }
        prop_assert!(deliver(
            &mut ingest,
            &mut log,
            &mut saved,
            &mut agents,
            batch,
            false,
            now
        )?);
    }
    for agent in &agents {
        prop_assert!(
            agent.outbox.is_empty(),
            "{} never acknowledged: {:?}",
            agent.node,
            agent.outbox.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in log.ids() {
        *counts.entry(id).or_default() += 1;
    }
    for (id, n) in &counts {
        prop_assert_eq!(*n, 1, "{} stored {} times", id, n);
    }
    for agent in &agents {
        for e in &agent.all {
            prop_assert!(counts.contains_key(&e.id), "{} lost", e.id);
        }
    }
    for alert in &alerts_kept {
        prop_assert!(counts.contains_key(alert), "{} lost", alert);
    }
    Ok(appends)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_event_is_stored_exactly_once_whatever_the_crash(
        nodes in proptest::collection::vec(node_events(), 1..=2),
        steps in proptest::collection::vec(step(), 1..16),
        cuts in proptest::collection::vec(0usize..400, 4),
    ) {
        let appends = run(&nodes, &steps, None, &cuts)?;
        for crash_at in 0..appends {
            run(&nodes, &steps, Some(crash_at), &cuts)?;
        }
    }
}
