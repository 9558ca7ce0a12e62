//! The event log on disk: [`DiskLog`], the [`LogStore`] the observer runs
//! with. One write and one fsync per touched file and stage; a new file's
//! directory entries are synced too.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use homelab_core::fsutil;
use tracing::warn;

use crate::ingest::{Lines, LogStore};

/// At most this many files are kept open (older days receive late events
/// rarely).
const OPEN_AT_MOST: usize = 256;

#[derive(Debug, Default)]
pub struct DiskLog {
    open: HashMap<PathBuf, File>,
}

impl DiskLog {
    /// Closes a file before it is rewritten or removed.
    pub fn close(&mut self, path: &Path) {
        self.open.remove(path);
    }

    /// Closes every file under `dir` (a day that goes).
    pub fn close_under(&mut self, dir: &Path) {
        self.open.retain(|path, _| !path.starts_with(dir));
    }
}

impl LogStore for DiskLog {
    fn append(&mut self, lines: &Lines) -> Result<Vec<(PathBuf, u64)>> {
        let mut touched = Vec::new();
        for (path, buffer) in lines {
            let new_file = !self.open.contains_key(path) && !path.exists();
            if !self.open.contains_key(path) {
                self.open.insert(path.clone(), open_log(path)?);
            }
            let file = self.open.get_mut(path).expect("file just opened");
            file.write_all(buffer)
                .with_context(|| format!("append events to {}", path.display()))?;
            let len = file
                .metadata()
                .with_context(|| format!("stat {}", path.display()))?
                .len();
            touched.push((path.clone(), len, new_file));
        }
        for (path, _, new_file) in &touched {
            self.open[path]
                .sync_data()
                .with_context(|| format!("fsync {}", path.display()))?;
            if *new_file {
                // The file's directory entry must be durable too.
                if let Some(dir) = path.parent() {
                    fsutil::sync_dir(dir)?;
                    if let Some(day) = dir.parent() {
                        fsutil::sync_dir(day)?;
                    }
                }
            }
        }
        if self.open.len() > OPEN_AT_MOST {
            self.open.clear();
        }
        Ok(touched
            .into_iter()
            .map(|(path, len, _)| (path, len))
            .collect())
    }
}

/// Opens an event log for append. A last line without its newline is the
/// torn tail of a crash: end it first, so the next event starts a line of
/// its own (the torn fragment stays, and recovery reports it).
fn open_log(path: &Path) -> Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fsutil::open_append(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    if len > 0 {
        let mut reader = File::open(path).with_context(|| format!("open {}", path.display()))?;
        reader.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        reader.read_exact(&mut last)?;
        if last[0] != b'\n' {
            warn!(path = %path.display(), "event log ends in a torn line; closing it");
            file.write_all(b"\n")
                .with_context(|| format!("append to {}", path.display()))?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_does_not_swallow_the_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"v\":1,\"id\":\"A\"}\n{\"v\":1,\"id\":\"tor").unwrap();
        let lines = Lines::from([(path.clone(), b"{\"next\":true}\n".to_vec())]);
        let sizes = DiskLog::default().append(&lines).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().last(), Some("{\"next\":true}"));
        assert_eq!(text.lines().count(), 3);
        assert_eq!(sizes, [(path, text.len() as u64)]);
    }
}
