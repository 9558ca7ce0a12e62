//! A clean stop leaves the outbox's acks durable: a child process (this
//! same test binary, in child mode) pushes events, takes the observer's
//! ack and ends without closing the database, as a process does that is
//! killed right after it said it stopped. The parent opens the outbox
//! again and reads what survived.

use homelab_agent::outbox::{Outbox, DEFAULT_MAX_BYTES};
use homelab_core::{Event, Name, Severity};

const CHILD: &str = "HOMELAB_OUTBOX_CHILD";

fn node() -> Name {
    Name::parse("edge").unwrap()
}

fn event(i: u32) -> Event {
    Event {
        v: 1,
        id: homelab_core::event::new_id(),
        ts: chrono::Utc::now(),
        node: node(),
        seq: 0,
        source: "node-agent".into(),
        kind: "test_event".into(),
        service: None,
        severity: Severity::Info,
        message: i.to_string(),
        data: serde_json::json!({}),
    }
}

/// Runs in the child: 3 events, all acknowledged, then `sync` if asked,
/// and an exit that runs no destructor (the database is never closed).
fn child(dir: &str, sync: bool) -> ! {
    let outbox = Outbox::open(std::path::Path::new(dir), node(), DEFAULT_MAX_BYTES).unwrap();
    for i in 0..3 {
        outbox.push(event(i)).unwrap();
    }
    while let Some(e) = outbox.next_to_send().unwrap() {
        outbox.mark_sent(e.seq);
    }
    outbox.ack(3).unwrap();
    if sync {
        outbox.sync().unwrap();
    }
    std::process::exit(0);
}

/// What the outbox holds after a child run: (unacknowledged, watermark).
fn after_child(sync: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_mode", "--nocapture"])
        .env(CHILD, format!("{}|{sync}", dir.path().display()))
        .status()
        .unwrap();
    assert!(status.success());
    let outbox = Outbox::open(dir.path(), node(), DEFAULT_MAX_BYTES).unwrap();
    (outbox.unacked(), outbox.acked())
}

#[test]
fn child_mode() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (dir, sync) = spec.rsplit_once('|').unwrap();
        child(dir, sync == "true");
    }
}

#[test]
fn a_synced_ack_survives_a_process_that_never_closed_its_outbox() {
    assert_eq!(after_child(true), (0, 3));
}

/// The control: without `sync` the same ack is rolled back on the next
/// open (the events come back and are sent again; the observer drops them
/// as duplicates). If redb ever makes this durable by itself, this says
/// so, and the sync can go.
#[test]
fn an_unsynced_ack_is_rolled_back() {
    assert_eq!(after_child(false), (3, 0));
}
