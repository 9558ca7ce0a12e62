//! The audit trail: every decision and every login, one JSON line each in
//! `audit/YYYY-MM-DD.jsonl` (the UTC date of the entry), appended and
//! fsynced, never rewritten.
//!
//! Several processes may append (the ui, the notifier's Telegram buttons,
//! `homelab operator`): each entry is one `write` on a file opened with
//! `O_APPEND`, so lines never interleave.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::time::Timestamp;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    Login,
    Logout,
    Approve,
    Reject,
    Pin,
    Unpin,
    Logs,
    OperatorAdded,
    OperatorRemoved,
    PasswordChanged,
}

impl What {
    pub fn as_str(self) -> &'static str {
        match self {
            What::Login => "login",
            What::Logout => "logout",
            What::Approve => "approve",
            What::Reject => "reject",
            What::Pin => "pin",
            What::Unpin => "unpin",
            What::Logs => "logs",
            What::OperatorAdded => "operator_added",
            What::OperatorRemoved => "operator_removed",
            What::PasswordChanged => "password_changed",
        }
    }
}

/// One line of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub ts: Timestamp,
    /// Who: the operator from the login (or the name a refused login
    /// tried, cut to 64 characters).
    pub operator: String,
    pub what: What,
    /// An action id, a commit, `node/container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `page`, `api`, `telegram`, `mqtt`, `cli`.
    pub via: String,
    /// The client's address, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// False for a refused login or a decision that did not take effect.
    pub ok: bool,
    /// Why it was refused, or the operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Text from outside, made fit for the trail: at most `max` characters,
/// control characters replaced.
pub fn clean(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '�' } else { c })
        .collect()
}

impl Entry {
    pub fn new(operator: &str, what: What, via: &str, ok: bool, ts: Timestamp) -> Entry {
        Entry {
            ts,
            operator: clean(operator, 64),
            what,
            target: None,
            via: clean(via, 16),
            client: None,
            ok,
            detail: None,
        }
    }
    pub fn target(mut self, target: &str) -> Entry {
        self.target = Some(clean(target, 200));
        self
    }
    pub fn client(mut self, client: impl ToString) -> Entry {
        self.client = Some(clean(&client.to_string(), 64));
        self
    }
    pub fn detail(mut self, detail: &str) -> Entry {
        if !detail.is_empty() {
            self.detail = Some(clean(detail, 500));
        }
        self
    }
}

fn dir(layout: &Layout) -> PathBuf {
    layout.audit_dir()
}

/// Appends `entry` and fsyncs it.
pub fn append(layout: &Layout, entry: &Entry) -> Result<()> {
    let path = layout.audit_file(entry.ts.date_naive());
    let mut line = serde_json::to_vec(entry).context("audit entry serializes")?;
    line.push(b'\n');
    let mut file = crate::fsutil::open_append(&path)?;
    file.write_all(&line)
        .with_context(|| format!("append to {}", path.display()))?;
    file.sync_data()
        .with_context(|| format!("fsync {}", path.display()))
}

/// Which entries to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub operator: Option<String>,
    pub since: Option<Timestamp>,
    pub what: Option<What>,
}

impl Filter {
    pub fn keeps(&self, entry: &Entry) -> bool {
        self.operator.as_ref().is_none_or(|o| &entry.operator == o)
            && self.since.is_none_or(|s| entry.ts >= s)
            && self.what.is_none_or(|w| entry.what == w)
    }
}

/// The newest `limit` entries that `filter` keeps, newest first. A line
/// that does not parse (a torn last line after a crash) is skipped.
pub fn read(layout: &Layout, filter: &Filter, limit: usize) -> Result<Vec<Entry>> {
    let dir = dir(layout);
    let mut days: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    days.sort();
    let since_day = filter.since.map(|s| s.format("%Y-%m-%d.jsonl").to_string());
    let mut found = Vec::new();
    for day in days.iter().rev() {
        let name = day.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if since_day.as_deref().is_some_and(|s| name < s) {
            break;
        }
        let text =
            std::fs::read_to_string(day).with_context(|| format!("read {}", day.display()))?;
        let mut lines: Vec<Entry> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
            .filter(|e| filter.keeps(e))
            .collect();
        lines.reverse();
        for entry in lines {
            found.push(entry);
            if found.len() >= limit {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn entries_are_appended_by_day_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(read(&layout, &Filter::default(), 10).unwrap(), vec![]);
        let entries = [
            Entry::new("ann", What::Login, "page", true, at("2026-12-06T23:59:00Z"))
                .client("127.0.0.1"),
            Entry::new(
                "ann",
                What::Approve,
                "page",
                true,
                at("2026-12-07T00:01:00Z"),
            )
            .target("redeploy-vps-outline")
            .detail("looks fine"),
            Entry::new(
                "bob\n\u{1b}[31m",
                What::Login,
                "page",
                false,
                at("2026-12-07T00:02:00Z"),
            )
            .detail("wrong password"),
        ];
        for e in &entries {
            append(&layout, e).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit/2026-12-07.jsonl"))
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let all = read(&layout, &Filter::default(), 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].operator, "bob��[31m");
        assert_eq!(all[2], entries[0]);
        let ann = Filter {
            operator: Some("ann".into()),
            ..Default::default()
        };
        let got: Vec<What> = read(&layout, &ann, 10)
            .unwrap()
            .iter()
            .map(|e| e.what)
            .collect();
        assert_eq!(got, [What::Approve, What::Login]);
        let since = Filter {
            since: Some(at("2026-12-07T00:00:00Z")),
            ..Default::default()
        };
        assert_eq!(read(&layout, &since, 10).unwrap().len(), 2);
        assert_eq!(read(&layout, &Filter::default(), 1).unwrap().len(), 1);
        let line = std::fs::read_to_string(dir.path().join("audit/2026-12-06.jsonl")).unwrap();
        assert_eq!(
            line,
            "{\"ts\":\"2026-12-06T23:59:00Z\",\"operator\":\"ann\",\"what\":\"login\",\"via\":\"page\",\"client\":\"127.0.0.1\",\"ok\":true}\n"
        );
    }
}
