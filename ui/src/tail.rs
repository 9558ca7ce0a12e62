//! Following the event log as the observer appends to it: the newest
//! day's files are read from where the last look stopped, whole lines
//! only. What arrives tells the browsers (the events page's live tail) and
//! keeps the last event of every service and node for the pages. It reads
//! what is on disk, so it shows exactly what the log holds.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context, Result};
use homelab_core::time::Timestamp;
use homelab_core::{eventlog, Event, Layout, Name};

/// The last event seen of a service or a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Last {
    pub kind: String,
    pub ts: Timestamp,
    pub message: String,
}

/// How many unreadable lines the banner names.
const BAD_KEPT: usize = 5;

#[derive(Debug, Default)]
pub struct Tail {
    /// Bytes and lines of each file already read.
    offsets: HashMap<PathBuf, (u64, usize)>,
    /// Lines that do not parse, `file:line: error`, the last few.
    pub bad: Vec<String>,
    /// By node, then service.
    pub services: BTreeMap<Name, BTreeMap<Name, Last>>,
    pub nodes: BTreeMap<Name, Last>,
}

/// How far a chunk read from a file can be taken: up to and with its last
/// newline (a line still being written waits for the next look).
pub fn complete(chunk: &[u8]) -> usize {
    chunk.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

impl Tail {
    /// Takes one event into the index (a later one replaces an earlier).
    pub fn note(&mut self, e: &Event) {
        let last = Last {
            kind: e.kind.clone(),
            ts: e.ts,
            message: e.message.clone(),
        };
        let newer = |old: &Last| old.ts <= e.ts;
        if self.nodes.get(&e.node).is_none_or(newer) {
            self.nodes.insert(e.node.clone(), last.clone());
        }
        if let Some(service) = &e.service {
            let of_node = self.services.entry(e.node.clone()).or_default();
            if of_node.get(service).is_none_or(newer) {
                of_node.insert(service.clone(), last);
            }
        }
    }

    /// Reads what was appended to the last two days' plain files since the
    /// last look (on the first look: all of them). The number of events
    /// read.
    pub fn poll(&mut self, layout: &Layout) -> Result<usize> {
        let days = eventlog::days(layout)?;
        let mut read = 0;
        for day in days.iter().rev().take(2) {
            for (_, path) in eventlog::day_files(layout, day)? {
                if eventlog::is_compressed(&path) {
                    continue;
                }
                read += self.follow(&path, layout.root())?;
            }
        }
        // Forget files of days no longer followed.
        let keep: Vec<String> = days.iter().rev().take(2).cloned().collect();
        self.offsets.retain(|path, _| {
            keep.iter()
                .any(|d| path.components().any(|c| c.as_os_str() == d.as_str()))
        });
        Ok(read)
    }

    fn follow(&mut self, path: &PathBuf, root: &std::path::Path) -> Result<usize> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        let (from, mut line_no) = self.offsets.get(path).copied().unwrap_or((0, 0));
        let from = from.min(len);
        if from == len {
            return Ok(0);
        }
        let mut file =
            std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        file.seek(SeekFrom::Start(from))?;
        let mut chunk = Vec::with_capacity((len - from) as usize);
        file.take(len - from).read_to_end(&mut chunk)?;
        let upto = complete(&chunk);
        let mut read = 0;
        let upto_lines = chunk[..upto].strip_suffix(b"\n").unwrap_or(&chunk[..upto]);
        for line in upto_lines.split(|b| *b == b'\n') {
            line_no += 1;
            if line.is_empty() {
                continue;
            }
            match Event::from_payload(line) {
                Ok(event) => {
                    self.note(&event);
                    read += 1;
                }
                Err(error) => {
                    let file = path.strip_prefix(root).unwrap_or(path);
                    self.bad
                        .push(format!("{}:{line_no}: {error}", file.display()));
                    let excess = self.bad.len().saturating_sub(BAD_KEPT);
                    self.bad.drain(..excess);
                }
            }
        }
        if upto > 0 {
            self.offsets
                .insert(path.clone(), (from + upto as u64, line_no));
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_are_taken() {
        for (chunk, expected) in [
            (&b""[..], 0),
            (b"{\"a\":1}", 0),
            (b"{\"a\":1}\n", 8),
            (b"{\"a\":1}\n{\"b\"", 8),
            (b"x\ny\n", 4),
        ] {
            assert_eq!(complete(chunk), expected, "{chunk:?}");
        }
    }

    fn line(ts: &str, id: &str, service: Option<&str>, kind: &str) -> String {
        let mut json = serde_json::json!({
            "v": 1, "id": id, "ts": ts, "node": "n1", "source": "test",
            "type": kind, "message": kind,
        });
        if let Some(s) = service {
            json["service"] = s.into();
        }
        json.to_string() + "\n"
    }

    #[test]
    fn follows_appends_and_keeps_the_last_event_of_each_service() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let n1 = Name::parse("n1").unwrap();
        let path = layout.event_log("2026-11-24".parse().unwrap(), &n1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let first = line(
            "2026-11-24T10:00:00Z",
            "e1",
            Some("app"),
            "service_unhealthy",
        );
        let second = line(
            "2026-11-24T10:01:00Z",
            "e2",
            Some("app"),
            "service_recovered",
        );
        // The second line is half written at the first look.
        std::fs::write(&path, format!("{first}{}", &second[..10])).unwrap();
        let mut tail = Tail::default();
        assert_eq!(tail.poll(&layout).unwrap(), 1);
        let app = Name::parse("app").unwrap();
        assert_eq!(tail.services[&n1][&app].kind, "service_unhealthy");
        assert_eq!(tail.poll(&layout).unwrap(), 0, "nothing new");
        std::fs::write(&path, format!("{first}{second}")).unwrap();
        assert_eq!(tail.poll(&layout).unwrap(), 1, "the rest of the line");
        assert_eq!(tail.services[&n1][&app].kind, "service_recovered");
        // A late event (older) does not replace the newer.
        let late = line("2026-11-24T09:00:00Z", "e0", Some("app"), "old");
        std::fs::write(&path, format!("{first}{second}{late}")).unwrap();
        assert_eq!(tail.poll(&layout).unwrap(), 1);
        assert_eq!(tail.services[&n1][&app].kind, "service_recovered");
        assert_eq!(tail.nodes[&n1].kind, "service_recovered");
        // A line that does not parse is named by file and line.
        std::fs::write(&path, format!("{first}{second}{late}{{not json\n")).unwrap();
        assert_eq!(tail.poll(&layout).unwrap(), 0);
        assert_eq!(tail.bad.len(), 1);
        assert!(
            tail.bad[0].starts_with("events/2026-11-24/n1/events.jsonl:4: "),
            "{:?}",
            tail.bad
        );
    }
}
