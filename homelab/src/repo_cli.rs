//! `homelab repo`: the desired state's git history from a shell, over the
//! ui's HTTP API (as `homelab actions`): what is live, the recent commits,
//! a fetch now, pin and unpin. Rendering is pure and tested.

use std::fmt::Write;

use anyhow::{Context, Result};
use clap::Subcommand;
use homelab_core::repo::{CommitChange, RepoStatus};
use homelab_core::time::Timestamp;

use crate::actions_cli::Client;

#[derive(Subcommand, Debug, Clone)]
pub enum RepoCommand {
    /// What is live, the branch's head, a pin, a commit that does not
    /// validate, fetch failures.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The recent commits, with what each changed.
    Commits {
        #[arg(long)]
        json: bool,
    },
    /// Fetches now (as a push webhook would).
    Sync,
    /// Makes an earlier commit the desired state until `homelab repo
    /// unpin`; the supervisor proposes what restores it.
    Pin {
        /// A commit's name, or a prefix of it (at least 4 hex digits).
        commit: String,
        /// Ignored: who decides is the operator of the token (kept so
        /// scripts of earlier releases keep working).
        #[arg(long, hide = true)]
        by: Option<String>,
    },
    /// The branch's head is the desired state again.
    Unpin,
}

pub fn run(client: &Client, command: RepoCommand, now: Timestamp) -> Result<String> {
    match command {
        RepoCommand::Status { json } => {
            let value = client.json("GET", "/api/repo", None)?;
            if json {
                return Ok(format!("{value:#}\n"));
            }
            let status: RepoStatus =
                serde_json::from_value(value).context("the API's repo status")?;
            Ok(render_status(&status, now))
        }
        RepoCommand::Commits { json } => {
            let value = client.json("GET", "/api/repo/commits", None)?;
            if json {
                return Ok(format!("{value:#}\n"));
            }
            let commits: Vec<CommitChange> =
                serde_json::from_value(value).context("the API's commits")?;
            Ok(render_commits(&commits, now))
        }
        RepoCommand::Sync => {
            client.json("POST", "/api/repo/sync", Some("{}".into()))?;
            Ok("fetch asked for; `homelab repo status` shows what it found\n".into())
        }
        RepoCommand::Pin { commit, by } => {
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "cli".into());
            let body = serde_json::json!({"commit": commit, "by": by}).to_string();
            client.json("POST", "/api/repo/pin", Some(body))?;
            Ok(format!(
                "pin of {commit} asked for; the supervisor proposes what restores it (`homelab actions list`)\n"
            ))
        }
        RepoCommand::Unpin => {
            client.json("POST", "/api/repo/unpin", Some("{}".into()))?;
            Ok("unpinned: the branch's head is the desired state again\n".into())
        }
    }
}

fn age(t: &Timestamp, now: Timestamp) -> String {
    homelab_core::agentstatus::humanize((now - *t).num_seconds().max(0)) + " ago"
}

pub fn render_status(s: &RepoStatus, now: Timestamp) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "source:   {} (branch {})", s.source, s.branch);
    let commit = |c: &homelab_core::repo::Commit| {
        format!(
            "{} {} (by {}, {})",
            c.short(),
            c.subject,
            c.author,
            age(&c.time, now)
        )
    };
    match &s.live {
        Some(live) => {
            let _ = writeln!(out, "live:     {}", commit(live));
        }
        None => {
            let _ = writeln!(out, "live:     nothing yet (no commit fetched and valid)");
        }
    }
    if let Some(pin) = &s.pinned {
        let _ = writeln!(out, "pinned:   by {} {}", pin.by, age(&pin.at, now));
    }
    if let Some(head) = s
        .head
        .as_ref()
        .filter(|h| s.live.as_ref().is_none_or(|l| l.sha != h.sha))
    {
        let _ = writeln!(out, "head:     {}", commit(head));
    }
    if let Some(invalid) = &s.invalid {
        let _ = writeln!(
            out,
            "invalid:  {} does not validate, not applied:",
            commit(&invalid.commit)
        );
        for p in &invalid.problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    if let Some(r) = s.rewritten.as_ref().filter(|r| !r.dropped.is_empty()) {
        let _ = writeln!(
            out,
            "rewritten {} (force-push); no longer on the branch:",
            age(&r.at, now)
        );
        for c in &r.dropped {
            let _ = writeln!(out, "  {} {}", c.short(), c.subject);
        }
    }
    if let Some(f) = &s.failing {
        let _ = writeln!(
            out,
            "failing:  {} fetches in a row since {}: {}",
            f.failures,
            age(&f.since, now),
            f.message
        );
    }
    if let Some(t) = &s.fetched_at {
        let _ = writeln!(out, "fetched:  {}", age(t, now));
    }
    out
}

pub fn render_commits(commits: &[CommitChange], now: Timestamp) -> String {
    let mut out = String::new();
    for c in commits {
        let what = [
            c.inventory.then(|| "inventory".to_string()),
            (!c.nodes.is_empty()).then(|| format!("nodes {}", c.nodes.join(","))),
            (!c.services.is_empty()).then(|| format!("services {}", c.services.join(","))),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ");
        let _ = writeln!(
            out,
            "{}  {:<40}  {:<16}  {:>12}  {}",
            c.commit.short(),
            c.commit.subject,
            c.commit.author,
            age(&c.commit.time, now),
            what
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::repo::{Commit, Failing, Invalid, Pin};

    fn t(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn commit(c: char, subject: &str) -> Commit {
        Commit {
            sha: c.to_string().repeat(40),
            subject: subject.into(),
            author: "Ann".into(),
            time: t(0),
        }
    }

    #[test]
    fn status_as_an_operator_reads_it() {
        let status = RepoStatus {
            source: "https://git.example.net/lab.git".into(),
            branch: "main".into(),
            live: Some(commit('a', "start")),
            head: Some(commit('b', "typo")),
            pinned: Some(Pin {
                commit: commit('a', "start"),
                by: "ann".into(),
                at: t(3000),
            }),
            invalid: Some(Invalid {
                commit: commit('b', "typo"),
                problems: vec!["hosts/n1/services.yaml:2: unknown field `monitr`".into()],
            }),
            rewritten: None,
            failing: Some(Failing {
                since: t(3500),
                failures: 2,
                message: "Could not resolve host".into(),
            }),
            fetched_at: Some(t(3590)),
            updated: t(3590),
        };
        let text = render_status(&status, t(3600));
        for want in [
            "source:   https://git.example.net/lab.git (branch main)",
            "live:     aaaaaaa start (by Ann, 1 h 0 min ago)",
            "pinned:   by ann 10 min ago",
            "head:     bbbbbbb typo",
            "invalid:  bbbbbbb typo (by Ann, 1 h 0 min ago) does not validate, not applied:",
            "  hosts/n1/services.yaml:2: unknown field `monitr`",
            "failing:  2 fetches in a row since 1 min ago: Could not resolve host",
            "fetched:  10 s ago",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn commits_in_one_line_each() {
        let commits = vec![CommitChange {
            commit: commit('c', "app: image 2"),
            nodes: vec!["piha".into()],
            services: vec!["app".into()],
            inventory: false,
            files: 2,
        }];
        let text = render_commits(&commits, t(120));
        assert!(text.starts_with("ccccccc  app: image 2"), "{text}");
        assert!(
            text.trim_end()
                .ends_with("2 min ago  nodes piha; services app"),
            "{text}"
        );
    }
}
