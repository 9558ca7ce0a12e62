//! The recent events the rules need, read from the observer's log (the
//! durable truth), incrementally: each pass reads only what was appended
//! to today's and yesterday's files since the last pass, up to the last
//! complete line.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use chrono::TimeDelta;
use homelab_core::time::Timestamp;
use homelab_core::{Event, Layout};
use tracing::warn;

/// How long events are kept for the rules.
pub const KEEP: TimeDelta = TimeDelta::hours(24);

#[derive(Default)]
pub struct Recent {
    offsets: BTreeMap<PathBuf, u64>,
    events: Vec<Event>,
    ids: HashSet<String>,
}

impl Recent {
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Reads what was appended since the last call; forgets what is older
    /// than [`KEEP`].
    pub fn refresh(&mut self, layout: &Layout, now: Timestamp) {
        let today = now.date_naive();
        let dates = [today - chrono::Days::new(1), today];
        let mut files = Vec::new();
        for date in dates {
            let dir = layout
                .events_dir()
                .join(date.format("%Y-%m-%d").to_string());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path().join("events.jsonl");
                if path.is_file() {
                    files.push(path);
                }
            }
        }
        self.offsets.retain(|path, _| files.contains(path));
        for path in files {
            let offset = self.offsets.get(&path).copied().unwrap_or(0);
            match read_from(&path, offset) {
                Ok((lines, next)) => {
                    self.offsets.insert(path, next);
                    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        // Only the types the rules read are parsed in full;
                        // a torn line that recovery closed is skipped.
                        if !Event::peek_kind(line).is_some_and(|kind| crate::plan::reads(&kind)) {
                            continue;
                        }
                        let Ok(event) = Event::from_payload(line) else {
                            continue;
                        };
                        self.add(event);
                    }
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "event log not read")
                }
            }
        }
        self.events.retain(|e| now - e.ts < KEEP);
        if self.ids.len() > 2 * self.events.len() + 1024 {
            self.ids = self.events.iter().map(|e| e.id.clone()).collect();
        }
    }

    /// An event from elsewhere (an alert this supervisor just raised, not
    /// yet in the log).
    pub fn add(&mut self, event: Event) {
        if crate::plan::reads(&event.kind) && self.ids.insert(event.id.clone()) {
            self.events.push(event);
        }
    }
}

/// The complete lines from `offset` on (from the start if the file is now
/// shorter: replaced or truncated), and the offset after them.
fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let offset = if file.metadata()?.len() < offset {
        0
    } else {
        offset
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(complete);
    Ok((bytes, offset + complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::{Name, Severity};
    use std::io::Write;

    fn event(kind: &str, ts: Timestamp) -> Event {
        Event {
            v: 1,
            id: homelab_core::event::new_id(),
            ts,
            node: Name::parse("piha").unwrap(),
            seq: 1,
            source: "t".into(),
            kind: kind.into(),
            service: None,
            severity: Severity::Info,
            message: String::new(),
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn reads_appended_complete_lines_once() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let now = chrono::Utc::now();
        let path = layout.event_log(now.date_naive(), &Name::parse("piha").unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = std::fs::File::create(&path).unwrap();
        let a = event("ha_recorder_lag", now);
        let b = event("node_snapshot", now);
        let c = event("disk_pressure", now);
        writeln!(file, "{}", a.to_json()).unwrap();
        writeln!(file, "{}", b.to_json()).unwrap();
        let c_json = c.to_json();
        write!(file, "{}", &c_json[..10]).unwrap();
        let mut recent = Recent::default();
        recent.refresh(&layout, now);
        assert_eq!(recent.events().len(), 1, "only relevant, complete lines");
        writeln!(file, "{}", &c_json[10..]).unwrap();
        recent.refresh(&layout, now);
        recent.refresh(&layout, now);
        let kinds: Vec<&str> = recent.events().iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["ha_recorder_lag", "disk_pressure"]);
        recent.refresh(&layout, now + KEEP);
        assert!(recent.events().is_empty(), "old events are forgotten");
    }
}
