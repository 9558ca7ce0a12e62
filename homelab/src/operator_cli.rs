//! `homelab operator` and `homelab audit`: the operators under
//! `<root>/config/operators/` and the audit trail under `<root>/audit/`,
//! read and written on the control host directly (no HTTP: these are the
//! files the ui checks on every request). Rendering is pure and tested.

use std::fmt::Write;

use anyhow::{bail, Result};
use clap::Subcommand;
use homelab_core::audit::{self, Entry, What};
use homelab_core::operator::{self, Operator, Secrets};
use homelab_core::time::Timestamp;
use homelab_core::{Layout, Name};

#[derive(Subcommand, Debug, Clone)]
pub enum OperatorCommand {
    /// Adds an operator; prints its password and API token, once.
    Add { name: String },
    /// The operators (the operator token is `admin`, always there).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Removes an operator: its sessions and its token stop at once.
    Remove { name: String },
    /// A new password (its sessions end); `--token` makes a new API token too.
    Passwd {
        name: String,
        #[arg(long)]
        token: bool,
    },
}

/// Who ran the command, for the trail.
fn shell_user() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

fn existing(raw: &str) -> Result<Name> {
    let name = Name::parse(raw).map_err(|e| anyhow::anyhow!("operator name {raw:?}: {e}"))?;
    if name.as_str() == operator::ADMIN {
        bail!("admin is the operator token (config/ui/token): delete that file and restart the ui for a new one");
    }
    Ok(name)
}

pub fn run(layout: &Layout, command: OperatorCommand, now: Timestamp) -> Result<String> {
    let trail = |what: What, name: &Name| {
        audit::append(
            layout,
            &Entry::new(&shell_user(), what, "cli", true, now).target(name.as_str()),
        )
    };
    match command {
        OperatorCommand::Add { name } => {
            let name = operator::check_new_name(&name)?;
            if operator::read(layout, &name)?.is_some() {
                bail!("operator {name} exists: `homelab operator passwd {name}` gives it a new password");
            }
            let (op, secrets) = Operator::new(name.clone(), now);
            operator::write(layout, &op)?;
            trail(What::OperatorAdded, &name)?;
            Ok(secrets_text(&name, &secrets, true, "added"))
        }
        OperatorCommand::List { json } => {
            let operators = operator::list(layout)?;
            if json {
                let list: Vec<_> = operators
                    .iter()
                    .map(|o| serde_json::json!({"name": o.name, "created": o.created}))
                    .collect();
                return Ok(format!("{}\n", serde_json::to_string_pretty(&list)?));
            }
            Ok(list_text(&operators))
        }
        OperatorCommand::Remove { name } => {
            let name = existing(&name)?;
            if !operator::remove(layout, &name)? {
                bail!("no operator {name} (`homelab operator list` shows them)");
            }
            trail(What::OperatorRemoved, &name)?;
            Ok(format!(
                "operator {name} removed: its sessions and its token are refused from now on\n"
            ))
        }
        OperatorCommand::Passwd { name, token } => {
            let name = existing(&name)?;
            let Some(mut op) = operator::read(layout, &name)? else {
                bail!("no operator {name} (`homelab operator add {name}` adds it)");
            };
            let (fresh, secrets) = Operator::new(name.clone(), now);
            op.password = fresh.password;
            if token {
                op.token_sha256 = fresh.token_sha256;
            }
            operator::write(layout, &op)?;
            trail(What::PasswordChanged, &name)?;
            Ok(secrets_text(&name, &secrets, token, "has a new password"))
        }
    }
}

/// What `add` and `passwd` print: the secrets, once.
pub fn secrets_text(name: &Name, secrets: &Secrets, token: bool, done: &str) -> String {
    let mut out = format!("operator {name} {done}.\n");
    let _ = writeln!(
        out,
        "  password:  {}   (the page's login: name {name} and this)",
        secrets.password
    );
    if token {
        let _ = writeln!(
            out,
            "  API token: {}   (Authorization: Bearer …, or homelab actions --token)",
            secrets.token
        );
    }
    let _ = writeln!(
        out,
        "Shown once, kept only as hashes; `homelab operator passwd {name}` makes new ones."
    );
    out
}

pub fn list_text(operators: &[Operator]) -> String {
    let mut out = format!("{:<24}  since\n", "operator");
    let _ = writeln!(
        out,
        "{:<24}  (the operator token, config/ui/token)",
        operator::ADMIN
    );
    for o in operators {
        let _ = writeln!(
            out,
            "{:<24}  {}",
            o.name.as_str(),
            o.created.format("%Y-%m-%d %H:%M UTC")
        );
    }
    out
}

/// `homelab audit`: the trail, newest first.
pub fn audit_text(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "nothing in the audit trail yet\n".into();
    }
    let mut out = String::new();
    for e in entries {
        let _ = write!(
            out,
            "{}  {:<12}  {}{:<16}  {:<8}",
            e.ts.format("%Y-%m-%d %H:%M:%S"),
            e.operator,
            if e.ok { "" } else { "REFUSED " },
            e.what.as_str(),
            e.via,
        );
        if let Some(target) = &e.target {
            let _ = write!(out, "  {target}");
        }
        if let Some(client) = &e.client {
            let _ = write!(out, "  from {client}");
        }
        if let Some(detail) = &e.detail {
            let _ = write!(out, "  ({detail})");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn operators_are_added_listed_renewed_and_removed_with_a_trail() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let now = at("2026-12-07T12:00:00Z");
        let add = |name: &str| run(&layout, OperatorCommand::Add { name: name.into() }, now);
        let text = add("Ann").unwrap();
        assert!(
            text.starts_with("operator ann added.\n  password:  "),
            "{text}"
        );
        assert!(text.contains("API token: hlo.ann."), "{text}");
        let password = text.split_whitespace().nth(4).unwrap().to_string();
        let ann = operator::read(&layout, &Name::parse("ann").unwrap())
            .unwrap()
            .unwrap();
        assert!(ann.password_ok(&password));
        for (name, says) in [
            ("ann", "exists"),
            ("admin", "operator token"),
            ("a/b", "operator name"),
        ] {
            let error = format!("{:#}", add(name).unwrap_err());
            assert!(error.contains(says), "{name}: {error}");
        }
        let list = run(&layout, OperatorCommand::List { json: false }, now).unwrap();
        assert_eq!(
            list,
            "operator                  since\nadmin                     (the operator token, config/ui/token)\nann                       2026-12-07 12:00 UTC\n"
        );
        let renewed = run(
            &layout,
            OperatorCommand::Passwd {
                name: "ann".into(),
                token: false,
            },
            now,
        )
        .unwrap();
        assert!(!renewed.contains("API token"), "{renewed}");
        let after = operator::read(&layout, &ann.name).unwrap().unwrap();
        assert!(!after.password_ok(&password));
        assert_eq!(after.token_sha256, ann.token_sha256, "the token is kept");
        run(&layout, OperatorCommand::Remove { name: "ann".into() }, now).unwrap();
        let error = run(&layout, OperatorCommand::Remove { name: "ann".into() }, now).unwrap_err();
        assert!(format!("{error}").contains("no operator ann"));
        let trail: Vec<(What, Option<String>)> =
            audit::read(&layout, &audit::Filter::default(), 10)
                .unwrap()
                .into_iter()
                .rev()
                .map(|e| (e.what, e.target))
                .collect();
        let ann = Some("ann".to_string());
        assert_eq!(
            trail,
            [
                (What::OperatorAdded, ann.clone()),
                (What::PasswordChanged, ann.clone()),
                (What::OperatorRemoved, ann)
            ]
        );
    }

    #[test]
    fn the_trail_reads_as_lines() {
        let entries = [
            Entry::new(
                "bob",
                What::Login,
                "page",
                false,
                at("2026-12-07T12:01:02Z"),
            )
            .client("10.0.0.9")
            .detail("wrong name or password"),
            Entry::new(
                "ann",
                What::Approve,
                "telegram",
                true,
                at("2026-12-07T12:00:00Z"),
            )
            .target("redeploy-vps-outline"),
        ];
        assert_eq!(
            audit_text(&entries),
            "2026-12-07 12:01:02  bob           REFUSED login             page      from 10.0.0.9  (wrong name or password)\n\
             2026-12-07 12:00:00  ann           approve           telegram  redeploy-vps-outline\n"
        );
        assert_eq!(audit_text(&[]), "nothing in the audit trail yet\n");
    }
}
