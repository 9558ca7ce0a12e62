//! The agent's durable outbox (redb, `state/agent/<node>/outbox.redb`).
//!
//! Constraints: an event counts as emitted only once it is on disk with the
//! node's next `seq`; it leaves the outbox only when the observer's
//! watermark on `<prefix>/acks/<node>` covers it; the outbox is bounded by
//! bytes, and when full the oldest events go and an `events_dropped` event
//! says how many and through which `seq`.
//!
//! Layout: table `events` maps `seq` → event JSON; table `meta` holds
//! `next_seq` and `acked`.
//!
//! Flows:
//! - push: one write transaction per batch (one fsync), assigning `seq`s,
//!   enforcing the bound;
//! - send: the publisher takes events past `sent_upto` in `seq` order while
//!   connected, within the send window (`crate::window`, which lives in
//!   memory: after a restart everything not acknowledged is sent again);
//! - ack: drops every event with `seq <= watermark`. Its commit is not
//!   synced: a crash can only bring back events the observer already has,
//!   which it drops as duplicates; a clean stop makes it durable
//!   ([`Outbox::sync`]);
//! - resend: after every CONNACK, when the observer repeats its watermark,
//!   and when acks stall (`crate::window` decides), `sent_upto` falls back
//!   to the watermark;
//! - lost state: a watermark above our own last `seq` means this node's
//!   state was lost (a new disk, a wiped root). Unacknowledged events are
//!   renumbered above it rather than taken as delivered;
//! - commands: a command for this node is taken once by id (table
//!   `commands`, id → deadline) and, if not past its deadline, queued
//!   (table `command_queue`, id → [`Queued`]) in the same durable commit,
//!   before its MQTT PUBACK goes out. It waits there for Docker; starting
//!   it marks it `running` in the commit that stores its
//!   `remediation_started`, and its outcome event is stored in the commit
//!   that removes it. So after a crash a queued command is resumed, one
//!   that was running is reported interrupted (never run twice), and a
//!   copy of either is a duplicate.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::window::Window;
pub use crate::window::{Ack, SEND_WINDOW};

use anyhow::{Context, Result};
use homelab_core::event::{kinds, SOURCE_AGENT};
use homelab_core::{Event, Name, Severity};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde_json::json;
use tokio::sync::Notify;
use tracing::warn;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Command ids this agent has taken, with their deadline (unix seconds).
const COMMANDS: TableDefinition<&str, i64> = TableDefinition::new("commands");
/// Commands taken and not finished: id → [`Queued`] as JSON.
const COMMAND_QUEUE: TableDefinition<&str, &[u8]> = TableDefinition::new("command_queue");

/// A command taken and not finished.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Queued {
    pub state: QueuedState,
    pub command: homelab_core::Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuedState {
    /// Taken; waiting until it can be carried out (Docker up).
    Waiting,
    /// Being carried out: its `remediation_started` is stored.
    Running,
}

/// How long a command id is remembered past its deadline. A copy that
/// comes later is refused as expired all the same; this margin covers a
/// clock that moved back a little.
pub const COMMANDS_KEPT_PAST_DEADLINE: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// redb's page cache for the outbox.
const OUTBOX_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Events to send: each `seq` with the event as stored (its JSON).
pub type Batch = Vec<(u64, Vec<u8>)>;

/// Default bound: a day of a busy node (an event a second of 1 KiB is
/// 84 MiB) with room for snapshots.
pub const DEFAULT_MAX_BYTES: u64 = 128 * 1024 * 1024;

pub struct Outbox {
    db: Database,
    node: Name,
    max_bytes: u64,
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    next_seq: u64,
    window: Window,
    bytes: u64,
    count: u64,
}

fn db_err(e: impl Into<redb::Error>) -> anyhow::Error {
    anyhow::Error::new(e.into())
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path, node: Name, max_bytes: u64) -> Result<Outbox> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("outbox.redb");
        // A small cache: the outbox is written once and read once per
        // event, and the agent should stay small on an edge node.
        let db = Database::builder()
            .set_cache_size(OUTBOX_CACHE_BYTES)
            .create(&path)
            .map_err(db_err)
            .with_context(|| format!("open outbox {}", path.display()))?;
        let txn = db.begin_write().map_err(db_err)?;
        let (next_seq, acked, bytes, count, first_held) = {
            let meta = txn.open_table(META).map_err(db_err)?;
            let events = txn.open_table(EVENTS).map_err(db_err)?;
            let next_seq = meta
                .get("next_seq")
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(1);
            let acked = meta
                .get("acked")
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut bytes = 0u64;
            for entry in events.iter().map_err(db_err)? {
                bytes += entry.map_err(db_err)?.1.value().len() as u64;
            }
            let first_held = events.first().map_err(db_err)?.map(|(k, _)| k.value());
            (
                next_seq,
                acked,
                bytes,
                events.len().map_err(db_err)?,
                first_held,
            )
        };
        txn.commit().map_err(db_err)?;
        let now = Instant::now();
        let mut window = Window::new(acked, next_seq - 1, now);
        // A drop before the restart left seqs between the watermark and
        // the notice that nothing holds.
        window.held_from(first_held, now);
        let state = State {
            next_seq,
            window,
            bytes,
            count,
        };
        Ok(Outbox {
            db,
            node,
            max_bytes,
            state: Mutex::new(state),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }

    /// Remembers command `id` durably (committed before this returns, so a
    /// restart cannot run it twice); true if it was new. Ids whose deadline
    /// is long past are forgotten on the way.
    pub fn remember_command(
        &self,
        id: &str,
        deadline: homelab_core::time::Timestamp,
        now: homelab_core::time::Timestamp,
    ) -> Result<bool> {
        self.take(id, deadline, now, None)
    }

    /// Takes `command` by its id, as [`Outbox::remember_command`] does,
    /// and if it is new and not past its deadline, queues it to be carried
    /// out ([`QueuedState::Waiting`]) in the same durable commit. True if
    /// it was new.
    pub fn take_command(
        &self,
        command: &homelab_core::Command,
        now: homelab_core::time::Timestamp,
    ) -> Result<bool> {
        self.take(&command.id, command.deadline, now, Some(command))
    }

    fn take(
        &self,
        id: &str,
        deadline: homelab_core::time::Timestamp,
        now: homelab_core::time::Timestamp,
        queue: Option<&homelab_core::Command>,
    ) -> Result<bool> {
        let _state = self.lock();
        let txn = self.db.begin_write().map_err(db_err)?;
        let new = {
            let mut table = txn.open_table(COMMANDS).map_err(db_err)?;
            let forget_before = (now - COMMANDS_KEPT_PAST_DEADLINE).timestamp();
            table
                .retain(|_, deadline| deadline >= forget_before)
                .map_err(db_err)?;
            let known = table.get(id).map_err(db_err)?.is_some();
            if !known {
                table.insert(id, deadline.timestamp()).map_err(db_err)?;
            }
            !known
        };
        if let Some(command) = queue.filter(|c| new && now <= c.deadline) {
            let queued = Queued {
                state: QueuedState::Waiting,
                command: command.clone(),
            };
            let bytes = serde_json::to_vec(&queued).context("queued command")?;
            txn.open_table(COMMAND_QUEUE)
                .map_err(db_err)?
                .insert(id, bytes.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(new)
    }

    /// The commands taken and not finished, in id order.
    pub fn queued_commands(&self) -> Result<Vec<Queued>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(COMMAND_QUEUE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut queued = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (id, bytes) = entry.map_err(db_err)?;
            match serde_json::from_slice::<Queued>(bytes.value()) {
                Ok(q) => queued.push(q),
                Err(error) => {
                    warn!(id = id.value(), %error, "unreadable queued command skipped")
                }
            }
        }
        Ok(queued)
    }

    /// Command `id` starts: it is marked running in the commit that
    /// stores `started` (its `remediation_started`).
    pub fn start_command(&self, id: &str, started: Event) -> Result<()> {
        self.commit_with(vec![started], |txn| {
            let mut table = txn.open_table(COMMAND_QUEUE).map_err(db_err)?;
            let found = table
                .get(id)
                .map_err(db_err)?
                .map(|v| serde_json::from_slice::<Queued>(v.value()));
            let Some(Ok(mut queued)) = found else {
                anyhow::bail!("command {id} is not queued");
            };
            queued.state = QueuedState::Running;
            let bytes = serde_json::to_vec(&queued).context("queued command")?;
            table.insert(id, bytes.as_slice()).map_err(db_err)?;
            Ok(())
        })?;
        Ok(())
    }

    /// Command `id` is over: `outcome` is stored in the commit that
    /// removes it from the queue.
    pub fn finish_command(&self, id: &str, outcome: Event) -> Result<()> {
        self.commit_with(vec![outcome], |txn| {
            txn.open_table(COMMAND_QUEUE)
                .map_err(db_err)?
                .remove(id)
                .map_err(db_err)?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn push(&self, event: Event) -> Result<Event> {
        Ok(self.push_batch(vec![event])?.remove(0))
    }

    /// Gives each event the next `seq` and stores them all in one durable
    /// commit; returns them as stored (possibly followed by an
    /// `events_dropped` event if the bound was reached).
    pub fn push_batch(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        self.commit_with(events, |_| Ok(()))
    }

    /// [`Outbox::push_batch`], with `also` written in the same commit.
    fn commit_with(
        &self,
        events: Vec<Event>,
        also: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<Vec<Event>> {
        let mut state = self.lock();
        let txn = self.db.begin_write().map_err(db_err)?;
        also(&txn)?;
        let mut stored = Vec::with_capacity(events.len());
        let (mut next_seq, mut bytes, mut count) = (state.next_seq, state.bytes, state.count);
        {
            let mut table = txn.open_table(EVENTS).map_err(db_err)?;
            for mut event in events {
                event.seq = next_seq;
                next_seq += 1;
                let line = event.to_json();
                table.insert(event.seq, line.as_bytes()).map_err(db_err)?;
                bytes += line.len() as u64;
                count += 1;
                stored.push(event);
            }
            // Over the bound: the oldest go. The notice takes the slot of the
            // newest dropped event, so it reaches the observer in order, just
            // before what survived; a notice among the dropped is folded in.
            let mut dropped = 0u64;
            let mut first: Option<u64> = None;
            let mut slot = None;
            while bytes > self.max_bytes.saturating_sub(1024) && count > 1 {
                let Some((seq, value)) = table
                    .pop_first()
                    .map_err(db_err)?
                    .map(|(k, v)| (k.value(), v.value().to_vec()))
                else {
                    break;
                };
                bytes -= value.len() as u64;
                count -= 1;
                slot = Some(seq);
                match Event::from_payload(&value) {
                    Ok(old) if old.kind == kinds::EVENTS_DROPPED => {
                        dropped += old.data["dropped"].as_u64().unwrap_or(0);
                        let from = old.data["first_seq"].as_u64().unwrap_or(seq);
                        first = Some(first.map_or(from, |f| f.min(from)));
                    }
                    _ => {
                        dropped += 1;
                        first = Some(first.map_or(seq, |f| f.min(seq)));
                    }
                }
            }
            if let Some(slot) = slot {
                let first = first.unwrap_or(slot);
                let notice = Event {
                    v: 1,
                    id: homelab_core::event::new_id(),
                    ts: chrono::Utc::now(),
                    node: self.node.clone(),
                    seq: slot,
                    source: SOURCE_AGENT.into(),
                    kind: kinds::EVENTS_DROPPED.into(),
                    service: None,
                    severity: Severity::Warning,
                    message: format!(
                        "outbox full: {dropped} oldest events dropped (seq {first} to {slot})"
                    ),
                    data: json!({"dropped": dropped, "first_seq": first, "through_seq": slot}),
                };
                let line = notice.to_json();
                table.insert(notice.seq, line.as_bytes()).map_err(db_err)?;
                bytes += line.len() as u64;
                count += 1;
                warn!(
                    dropped,
                    first,
                    through = slot,
                    "outbox full; oldest events dropped"
                );
                metrics::counter!("homelab_agent_events_dropped_total").increment(dropped);
                stored.retain(|e| e.seq > slot);
                stored.insert(0, notice);
                // The notice may sit below what was already sent.
                state.window.notice_at(slot);
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert("next_seq", next_seq).map_err(db_err)?;
        }
        txn.commit().map_err(db_err).context("commit outbox")?;
        state.next_seq = next_seq;
        state.window.pushed(next_seq - 1);
        state.bytes = bytes;
        state.count = count;
        drop(state);
        metrics::counter!("homelab_agent_events_emitted_total").increment(stored.len() as u64);
        self.notify.notify_one();
        Ok(stored)
    }

    /// The observer's watermark arrived: it has every event up to it on
    /// disk. Returns what the window made of it (a repeat may have started
    /// a resend).
    pub fn ack(&self, watermark: u64) -> Result<Ack> {
        let mut state = self.lock();
        let answer = state.window.on_ack(watermark, Instant::now());
        match answer {
            Ack::AheadOfUs => {
                drop(state);
                self.renumber_above(watermark)?;
                return Ok(answer);
            }
            Ack::Old | Ack::Repeat { resend: false } => return Ok(answer),
            Ack::Repeat { resend: true } => {
                drop(state);
                self.notify.notify_one();
                return Ok(answer);
            }
            Ack::Progress => {}
        }
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (mut freed, mut removed) = (0u64, 0u64);
        {
            let mut table = txn.open_table(EVENTS).map_err(db_err)?;
            loop {
                let first = table
                    .first()
                    .map_err(db_err)?
                    .map(|(k, v)| (k.value(), v.value().len() as u64));
                let Some((seq, size)) = first.filter(|(seq, _)| *seq <= watermark) else {
                    break;
                };
                table.remove(seq).map_err(db_err)?;
                freed += size;
                removed += 1;
            }
            txn.open_table(META)
                .map_err(db_err)?
                .insert("acked", watermark)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        state.bytes -= freed;
        state.count -= removed;
        drop(state);
        // The send window has room again.
        self.notify.notify_one();
        Ok(answer)
    }

    fn renumber_above(&self, watermark: u64) -> Result<()> {
        let mut state = self.lock();
        warn!(
            watermark,
            next_seq = state.next_seq,
            "observer is ahead of this node's seq: local state was lost; renumbering"
        );
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut next_seq = watermark + 1;
        {
            let mut table = txn.open_table(EVENTS).map_err(db_err)?;
            let mut events = Vec::new();
            while let Some((_, bytes)) = table
                .pop_first()
                .map_err(db_err)?
                .map(|(k, v)| (k.value(), v.value().to_vec()))
            {
                events.push(bytes);
            }
            for bytes in events {
                let mut event =
                    Event::from_payload(&bytes).context("outbox holds an unreadable event")?;
                event.seq = next_seq;
                next_seq += 1;
                table
                    .insert(event.seq, event.to_json().as_bytes())
                    .map_err(db_err)?;
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert("next_seq", next_seq).map_err(db_err)?;
            meta.insert("acked", watermark).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        state.next_seq = next_seq;
        state
            .window
            .renumbered(watermark, next_seq - 1, Instant::now());
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    /// Makes every commit so far durable. Acks commit without an fsync
    /// (a crash can only bring back events the observer already has); a
    /// clean stop calls this so that what the observer acknowledged stays
    /// acknowledged, whatever happens to the process after it.
    pub fn sync(&self) -> Result<()> {
        let _state = self.lock();
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.commit().map_err(db_err).context("sync outbox")
    }

    /// Sends everything not acknowledged again.
    pub fn resend(&self) {
        self.lock().window.resend(Instant::now());
        self.notify.notify_one();
    }

    /// When [`Outbox::on_timer`] has something to do, if ever.
    pub fn deadline(&self, resend_after: Duration) -> Option<Instant> {
        self.lock().window.deadline(resend_after)
    }

    /// Resends if acks stalled or a repeated watermark is owed an answer;
    /// true if it did.
    pub fn on_timer(&self, resend_after: Duration) -> bool {
        let resend = self.lock().window.on_timer(Instant::now(), resend_after);
        if resend {
            self.notify.notify_one();
        }
        resend
    }

    /// Up to `max` events to send next, as stored (the event JSON), with
    /// their `seq`, within the send window, read in one transaction; and the
    /// window's epoch to hand back to [`Outbox::mark_sent`].
    pub fn next_batch(&self, max: usize) -> Result<(u64, Batch)> {
        let (epoch, from, upto) = {
            let state = self.lock();
            let window = &state.window;
            let Some(from) = window.next_to_send() else {
                return Ok((window.epoch(), Vec::new()));
            };
            (window.epoch(), from, window.send_limit())
        };
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        let mut batch = Vec::new();
        for entry in table.range(from..=upto).map_err(db_err)?.take(max) {
            let (seq, bytes) = entry.map_err(db_err)?;
            batch.push((seq.value(), bytes.value().to_vec()));
        }
        // The window only ever names a seq the outbox holds (the delivery
        // model checks it). If that broke, say so loudly: a publisher that
        // silently found nothing would never send again.
        if batch.first().is_none_or(|(seq, _)| *seq != from) {
            warn!(
                from,
                found = ?batch.first().map(|(seq, _)| *seq),
                "outbox does not hold the next seq the send window names"
            );
        }
        Ok((epoch, batch))
    }

    /// The next event to send, if any, and if the send window has room.
    pub fn next_to_send(&self) -> Result<Option<Event>> {
        let (_, batch) = self.next_batch(1)?;
        batch
            .first()
            .map(|(_, bytes)| {
                Event::from_payload(bytes).context("outbox holds an unreadable event")
            })
            .transpose()
    }

    /// Events up to `seq` (taken in `epoch`) are handed to the broker.
    pub fn mark_sent_in(&self, epoch: u64, seq: u64) {
        self.lock().window.sent_in(epoch, seq, Instant::now());
    }

    pub fn mark_sent(&self, seq: u64) {
        self.lock().window.sent(seq, Instant::now());
    }

    /// The observer's watermark as last seen.
    pub fn acked(&self) -> u64 {
        self.lock().window.acked()
    }

    /// Events not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.lock().count
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The highest `seq` given out.
    pub fn last_seq(&self) -> u64 {
        self.lock().window.last()
    }

    /// When the oldest event still held was made, if any.
    pub fn oldest(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        let Some((_, bytes)) = table.first().map_err(db_err)? else {
            return Ok(None);
        };
        let event =
            Event::from_payload(bytes.value()).context("outbox holds an unreadable event")?;
        Ok(Some(event.ts))
    }

    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Name {
        Name::parse("piha").unwrap()
    }

    fn event(message: &str) -> Event {
        Event {
            v: 1,
            id: homelab_core::event::new_id(),
            ts: chrono::Utc::now(),
            node: node(),
            seq: 0,
            source: "node-agent".into(),
            kind: "test".into(),
            service: None,
            severity: Severity::Info,
            message: message.into(),
            data: json!({}),
        }
    }

    fn drain(outbox: &Outbox) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(e) = outbox.next_to_send().unwrap() {
            outbox.mark_sent(e.seq);
            seqs.push(e.seq);
        }
        seqs
    }

    #[test]
    fn seq_ack_resend_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        for i in 0..3 {
            outbox.push(event(&i.to_string())).unwrap();
        }
        assert_eq!(drain(&outbox), vec![1, 2, 3]);
        outbox.ack(1).unwrap();
        assert_eq!(outbox.unacked(), 2);
        outbox.resend();
        assert_eq!(drain(&outbox), vec![2, 3]);
        // After a crash everything not acknowledged is still there, and seq
        // goes on.
        drop(outbox);
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(outbox.unacked(), 2);
        assert_eq!(drain(&outbox), vec![2, 3]);
        assert_eq!(outbox.push(event("4")).unwrap().seq, 4);
        outbox.ack(4).unwrap();
        assert_eq!((outbox.unacked(), outbox.bytes()), (0, 0));
    }

    #[test]
    fn a_command_id_is_taken_once_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        assert!(outbox.remember_command("C1", t(300), t(0)).unwrap());
        assert!(!outbox.remember_command("C1", t(300), t(1)).unwrap());
        assert!(outbox.remember_command("C2", t(300), t(1)).unwrap());
        drop(outbox);
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        assert!(!outbox.remember_command("C1", t(300), t(2)).unwrap());
        // Long past its deadline it is forgotten (a copy would be refused
        // as expired anyway), so the table stays small.
        let later = t(300) + COMMANDS_KEPT_PAST_DEADLINE + chrono::TimeDelta::seconds(1);
        assert!(outbox.remember_command("C3", later, later).unwrap());
        assert!(outbox.remember_command("C1", later, later).unwrap());
    }

    #[test]
    fn a_command_is_queued_started_and_finished_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let command = |id: &str, deadline: i64| {
            homelab_core::Command::from_payload(
                json!({
                    "v": 1, "id": id, "action_id": "container-restart-piha-app",
                    "node": "piha", "type": "container_restart",
                    "params": {"service": "app"},
                    "issued_at": t(0), "deadline": t(deadline),
                })
                .to_string()
                .as_bytes(),
            )
            .unwrap()
        };
        let states = |outbox: &Outbox| -> Vec<(String, QueuedState)> {
            outbox
                .queued_commands()
                .unwrap()
                .into_iter()
                .map(|q| (q.command.id, q.state))
                .collect()
        };
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(states(&outbox), vec![]);
        assert!(outbox.take_command(&command("C1", 300), t(0)).unwrap());
        assert!(!outbox.take_command(&command("C1", 300), t(1)).unwrap());
        // Past its deadline: taken (so a copy is a duplicate), not queued.
        assert!(outbox.take_command(&command("C2", 300), t(301)).unwrap());
        assert_eq!(states(&outbox), vec![("C1".into(), QueuedState::Waiting)]);
        drop(outbox);
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(states(&outbox), vec![("C1".into(), QueuedState::Waiting)]);
        outbox.start_command("C1", event("started")).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(states(&outbox), vec![("C1".into(), QueuedState::Running)]);
        assert!(
            outbox.start_command("C9", event("x")).is_err(),
            "not queued"
        );
        outbox.finish_command("C1", event("done")).unwrap();
        assert_eq!(states(&outbox), vec![]);
        // The started and finished events went out with them.
        let messages: Vec<String> = std::iter::from_fn(|| outbox.next_to_send().unwrap())
            .map(|e| {
                outbox.mark_sent(e.seq);
                e.message
            })
            .collect();
        assert_eq!(messages, vec!["started", "done"]);
    }

    #[test]
    fn bound_drops_oldest_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let size = event("x").to_json().len() as u64;
        let outbox = Outbox::open(dir.path(), node(), 1024 + 10 * size).unwrap();
        for i in 0..30 {
            outbox.push(event(&format!("{i:>1}"))).unwrap();
        }
        let mut sent = Vec::new();
        while let Some(e) = outbox.next_to_send().unwrap() {
            outbox.mark_sent(e.seq);
            sent.push(e);
        }
        assert!(outbox.bytes() <= 1024 + 10 * size);
        // The newest survive, in order, and each drop is announced.
        let last = sent
            .iter()
            .rev()
            .find(|e| e.kind != "events_dropped")
            .unwrap();
        assert_eq!(last.message, "29");
        let notices: Vec<&Event> = sent.iter().filter(|e| e.kind == "events_dropped").collect();
        assert!(!notices.is_empty());
        let through = notices.last().unwrap().data["through_seq"]
            .as_u64()
            .unwrap();
        let kept: Vec<u64> = sent
            .iter()
            .filter(|e| e.kind == "test")
            .map(|e| e.seq)
            .collect();
        assert!(
            kept.iter().all(|s| *s > through),
            "nothing older than the announced drop survives"
        );
        let dropped: u64 = notices
            .iter()
            .map(|e| e.data["dropped"].as_u64().unwrap())
            .sum::<u64>();
        assert!(dropped >= 1);
    }

    /// The numbers: acked at 1, 400 events in a 16 KiB outbox
    /// while the link is down. The kept events and the notice go out, also
    /// after a restart.
    #[test]
    fn a_drop_wider_than_the_send_window_still_sends() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), node(), 16 * 1024).unwrap();
        outbox.push(event("first")).unwrap();
        assert_eq!(drain(&outbox), vec![1]);
        outbox.ack(1).unwrap();
        for i in 0..400 {
            outbox.push(event(&format!("{i:0>200}"))).unwrap();
        }
        let notice_seq = |outbox: &Outbox| {
            let (_, batch) = outbox.next_batch(1).unwrap();
            let first = Event::from_payload(&batch[0].1).unwrap();
            assert_eq!(first.kind, "events_dropped");
            assert_eq!(first.data["first_seq"], 2);
            first.seq
        };
        let slot = notice_seq(&outbox);
        assert!(slot > 1 + SEND_WINDOW, "the drop is wider than the window");
        outbox.resend();
        let sent = drain(&outbox);
        assert_eq!(sent, (slot..=401).collect::<Vec<_>>());
        drop(outbox);
        let outbox = Outbox::open(dir.path(), node(), 16 * 1024).unwrap();
        assert_eq!(notice_seq(&outbox), slot);
        assert_eq!(drain(&outbox), sent);
    }

    #[test]
    fn at_most_a_window_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        outbox
            .push_batch(
                (0..SEND_WINDOW + 10)
                    .map(|i| event(&i.to_string()))
                    .collect(),
            )
            .unwrap();
        assert_eq!(drain(&outbox).len() as u64, SEND_WINDOW);
        outbox.ack(5).unwrap();
        assert_eq!(
            drain(&outbox),
            (SEND_WINDOW + 1..=SEND_WINDOW + 5).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_watermark_from_the_future_renumbers() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
        outbox.push(event("a")).unwrap();
        outbox.push(event("b")).unwrap();
        outbox.ack(500).unwrap();
        assert_eq!(outbox.unacked(), 2, "nothing is taken as delivered");
        assert_eq!(drain(&outbox), vec![501, 502]);
        assert_eq!(outbox.push(event("c")).unwrap().seq, 503);
    }
}
