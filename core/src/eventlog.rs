//! Reading the event log, `events/YYYY-MM-DD/<node>/events.jsonl`. Only the
//! observer writes it (append-only, one event a line, UTC date of the event).
//! Older days are compressed to `events.jsonl.zst` (zstd, the same lines);
//! a day may have both while a late event waits to be folded in, and
//! readers read both, the compressed one first.
//!
//! A line that does not parse (a torn last line after a crash, or a hand
//! edit) is reported to the caller and skipped; it never stops the scan.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::event::Event;
use crate::layout::Layout;
use crate::name::Name;

/// One unreadable line.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub path: PathBuf,
    pub line: usize,
    pub error: String,
}

/// The log's date folders, oldest first; only well-formed `YYYY-MM-DD` names.
pub fn days(layout: &Layout) -> Result<Vec<String>> {
    let dir = layout.events_dir();
    let mut days = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    days.sort();
    Ok(days)
}

/// The log files of one day, by node name (compressed before plain).
pub fn day_files(layout: &Layout, day: &str) -> Result<Vec<(Name, PathBuf)>> {
    let dir = layout.events_dir().join(day);
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let Ok(node) = Name::parse(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        for name in ["events.jsonl.zst", "events.jsonl"] {
            let path = entry.path().join(name);
            if path.is_file() {
                files.push((node.clone(), path));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Whether `path` is a compressed day.
pub fn is_compressed(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// Calls `f` with every readable event of one file, in file order.
pub fn read_file(path: &PathBuf, f: impl FnMut(Event), bad: &mut Vec<BadLine>) -> Result<()> {
    read_file_from(path, 0, f, bad)
}

/// Like [`read_file`], from byte `offset` on (a line boundary). Line
/// numbers in `bad` count from there.
pub fn read_file_from(
    path: &PathBuf,
    offset: u64,
    f: impl FnMut(Event),
    bad: &mut Vec<BadLine>,
) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let reader: Box<dyn Read> = if is_compressed(path) {
        anyhow::ensure!(
            offset == 0,
            "{} is compressed: read it whole",
            path.display()
        );
        Box::new(
            zstd::Decoder::new(file).with_context(|| format!("decompress {}", path.display()))?,
        )
    } else {
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("seek {}", path.display()))?;
        Box::new(file)
    };
    read_lines(reader, path, f, bad)
}

/// Calls `f` with every readable event of `reader` (a log file's lines,
/// read from `path`), in order; the unreadable lines go to `bad`.
pub fn read_lines(
    reader: impl std::io::Read,
    path: &std::path::Path,
    mut f: impl FnMut(Event),
    bad: &mut Vec<BadLine>,
) -> Result<()> {
    for (i, line) in BufReader::with_capacity(1 << 16, reader)
        .split(b'\n')
        .enumerate()
    {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.is_empty() {
            continue;
        }
        match Event::from_payload(&line) {
            Ok(event) => f(event),
            Err(e) => bad.push(BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                error: e.to_string(),
            }),
        }
    }
    Ok(())
}

/// Every log file with its size in bytes, day by day.
pub fn files(layout: &Layout) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for day in days(layout)? {
        for (_, path) in day_files(layout, &day)? {
            let len = fs::metadata(&path)
                .with_context(|| format!("stat {}", path.display()))?
                .len();
            out.push((path, len));
        }
    }
    Ok(out)
}

/// Every readable event, day by day, each node's file in order.
pub fn scan(layout: &Layout, mut f: impl FnMut(Event)) -> Result<Vec<BadLine>> {
    let mut bad = Vec::new();
    for day in days(layout)? {
        for (_, path) in day_files(layout, &day)? {
            read_file(&path, &mut f, &mut bad)?;
        }
    }
    Ok(bad)
}
