//! `homelab actions list|show|approve|reject`: the operator's actions from a
//! shell, over the ui's HTTP API (the same checks, the same operator token
//! as the page). Blocking (a short CLI call); rendering is pure and tested.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use homelab_core::time::Timestamp;
use homelab_core::{Action, Layout};

#[derive(Subcommand, Debug, Clone)]
pub enum ActionsCommand {
    /// Lists actions, newest first.
    List {
        /// pending, approved, running, completed, failed, rejected,
        /// cancelled, open (pending, approved, running) or all.
        #[arg(long, default_value = "open")]
        state: String,
        /// Print the JSON the API answers.
        #[arg(long)]
        json: bool,
    },
    /// Shows one action: what, why, its history and result.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approves a pending action (the executor then carries it out).
    Approve {
        id: String,
        /// Why, kept in the action's history.
        #[arg(long)]
        note: Option<String>,
        /// Ignored: who decides is the operator of the token (kept so
        /// scripts of earlier releases keep working).
        #[arg(long, hide = true)]
        by: Option<String>,
    },
    /// Rejects a pending action.
    Reject {
        id: String,
        #[arg(long)]
        note: Option<String>,
        /// Ignored, as for approve.
        #[arg(long, hide = true)]
        by: Option<String>,
    },
}

/// Where the ui is and how to prove the operator.
pub struct Client {
    pub url: String,
    pub token: Option<String>,
}

impl Client {
    /// `token`, else the file `<root>/config/ui/token` when readable.
    pub fn new(url: &str, token: Option<String>, root: &Path) -> Client {
        let token = token.filter(|t| !t.trim().is_empty()).or_else(|| {
            std::fs::read_to_string(Layout::new(root).ui_token_file())
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Client {
            url: url.trim_end_matches('/').to_string(),
            token,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match (method, body) {
            ("GET", _) => {
                let mut request = agent.get(&url);
                if let Some(bearer) = &bearer {
                    request = request.header("Authorization", bearer);
                }
                request.call()
            }
            (_, body) => {
                let mut request = agent.post(&url).header("Content-Type", "application/json");
                if let Some(bearer) = &bearer {
                    request = request.header("Authorization", bearer);
                }
                request.send(body.unwrap_or_default())
            }
        };
        let mut response = response.with_context(|| {
            format!("{method} {url}: no answer (is homelab up or homelab ui running there? --url)")
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        Ok((status, text))
    }

    /// The JSON of a 2xx answer, or the API's `error` as this call's error.
    pub(crate) fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<serde_json::Value> {
        let (status, text) = self.call(method, path, body)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if !(200..300).contains(&status) {
            let why = value["error"].as_str().map(str::to_string).unwrap_or(text);
            if status == 401 {
                bail!("{why} (HTTP 401): pass --token or set HOMELAB_UI_TOKEN, or run with --root where config/ui/token is");
            }
            bail!("{why} (HTTP {status})");
        }
        Ok(value)
    }
}

/// Runs one `homelab actions` command; the text to print.
pub fn run(client: &Client, command: ActionsCommand, now: Timestamp) -> Result<String> {
    match command {
        ActionsCommand::List { state, json } => {
            let value = client.json(
                "GET",
                &format!("/api/actions?state={}", query(&state)),
                None,
            )?;
            if json {
                return Ok(format!("{value:#}\n"));
            }
            let mut actions: Vec<Action> =
                serde_json::from_value(value).context("the API's actions")?;
            actions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
            Ok(render_list(&actions, now))
        }
        ActionsCommand::Show { id, json } => {
            let value = client.json("GET", &format!("/api/actions/{}", query(&id)), None)?;
            if json {
                return Ok(format!("{value:#}\n"));
            }
            let action: Action = serde_json::from_value(value).context("the API's action")?;
            Ok(render_action(&action))
        }
        ActionsCommand::Approve { id, note, by } => decide(client, "approve", &id, note, by),
        ActionsCommand::Reject { id, note, by } => decide(client, "reject", &id, note, by),
    }
}

fn decide(
    client: &Client,
    verb: &str,
    id: &str,
    note: Option<String>,
    by: Option<String>,
) -> Result<String> {
    if client.token.is_none() {
        bail!("{verb} needs the operator token: pass --token or set HOMELAB_UI_TOKEN, or run with --root where config/ui/token is");
    }
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    let body = serde_json::json!({"by": by, "note": note}).to_string();
    let value = client.json(
        "POST",
        &format!("/api/actions/{}/{verb}", query(id)),
        Some(body),
    )?;
    let action: Action = serde_json::from_value(value).context("the API's action")?;
    Ok(format!("{} is {} now\n", action.id, action.state))
}

/// Percent-encodes what goes into a path segment or query value.
fn query(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ago(now: Timestamp, at: Timestamp) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// One line per action under a header; "no actions" when there are none.
pub fn render_list(actions: &[Action], now: Timestamp) -> String {
    if actions.is_empty() {
        return "no actions\n".into();
    }
    let rows: Vec<[String; 6]> = actions
        .iter()
        .map(|a| {
            [
                a.id.to_string(),
                a.state.to_string(),
                a.kind.as_str().to_string(),
                a.node.to_string(),
                a.service.as_ref().map_or("-".into(), ToString::to_string),
                ago(now, a.created_at),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "TYPE", "NODE", "SERVICE", "CREATED"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// An action in full: what, why, history, result.
pub fn render_action(a: &Action) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:       {}", a.id);
    let _ = writeln!(out, "state:    {}", a.state);
    let _ = writeln!(
        out,
        "type:     {} (risk {})",
        a.kind.as_str(),
        serde_json::to_value(a.risk)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "node:     {}", a.node);
    if let Some(service) = &a.service {
        let _ = writeln!(out, "service:  {service}");
    }
    let _ = writeln!(out, "reason:   {}", a.reason);
    if !a.message.is_empty() {
        let _ = writeln!(out, "message:  {}", a.message);
    }
    if let Some(origin) = &a.origin {
        let _ = writeln!(
            out,
            "commit:   {} {} ({}, {}){}",
            origin.commit.short(),
            origin.commit.subject,
            origin.commit.author,
            homelab_core::time::format(&origin.commit.time),
            if origin.pinned { ", pinned" } else { "" }
        );
        if let Some(from) = &origin.from_commit {
            let _ = writeln!(
                out,
                "changes:  what {} deployed",
                &from[..from.len().min(7)]
            );
        }
    }
    if let Some(command) = &a.command {
        let _ = writeln!(
            out,
            "command:  {} (deadline {})",
            command.id,
            homelab_core::time::format(&command.deadline)
        );
    }
    if let Some(result) = &a.result {
        let _ = writeln!(
            out,
            "result:   {} {}",
            if result.ok { "ok:" } else { "failed:" },
            result.message
        );
    }
    if let Some(diff) = a.origin.as_ref().and_then(|o| o.diff.as_deref()) {
        let _ = writeln!(out, "compose files, old -> new:");
        for line in diff.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "history:");
    for t in &a.history {
        let _ = writeln!(
            out,
            "  {}  {:<9}  by {}: {}",
            homelab_core::time::format(&t.at),
            t.state.to_string(),
            t.by,
            t.why
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::{ActionKind, ActionState, Name, Risk};

    fn t(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn action(id: &str, state: ActionState, service: Option<&str>, created: i64) -> Action {
        Action {
            v: 1,
            id: Name::parse(id).unwrap(),
            kind: ActionKind::ContainerRestart,
            node: Name::parse("piha").unwrap(),
            target: None,
            service: service.map(|s| Name::parse(s).unwrap()),
            risk: Risk::Low,
            state,
            reason: "containers_not_running".into(),
            message: String::new(),
            created_at: t(created),
            updated_at: t(created),
            history: vec![homelab_core::action::Transition {
                state,
                at: t(created),
                by: "supervisor".into(),
                why: "mosquitto exited".into(),
            }],
            params: None,
            command: None,
            result: None,
            origin: None,
        }
    }

    #[test]
    fn ages() {
        for (secs, want) in [
            (0, "0s ago"),
            (59, "59s ago"),
            (60, "1m ago"),
            (3_599, "59m ago"),
            (3_600, "1h ago"),
            (86_400, "1d ago"),
            (-5, "0s ago"),
        ] {
            assert_eq!(ago(t(secs), t(0)), want);
        }
    }

    #[test]
    fn list_is_a_table() {
        assert_eq!(render_list(&[], t(0)), "no actions\n");
        let actions = [
            action(
                "container-restart-piha-mosquitto",
                ActionState::Pending,
                Some("mosquitto"),
                0,
            ),
            action("disk-cleanup-piha", ActionState::Approved, None, 100),
        ];
        assert_eq!(
            render_list(&actions, t(130)),
            "ID                                STATE     TYPE               NODE  SERVICE    CREATED\n\
             container-restart-piha-mosquitto  pending   container_restart  piha  mosquitto  2m ago\n\
             disk-cleanup-piha                 approved  container_restart  piha  -          30s ago\n"
        );
    }

    #[test]
    fn one_action_in_full() {
        let text = render_action(&action(
            "container-restart-piha-mosquitto",
            ActionState::Pending,
            Some("mosquitto"),
            0,
        ));
        assert!(text.starts_with("id:       container-restart-piha-mosquitto\nstate:    pending\ntype:     container_restart (risk low)\n"), "{text}");
        assert!(
            text.contains("service:  mosquitto\nreason:   containers_not_running\n"),
            "{text}"
        );
        assert!(text.ends_with("history:\n  2027-01-15T08:00:00.000Z  pending    by supervisor: mosquitto exited\n"), "{text}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(query("container-restart-a_b.c"), "container-restart-a_b.c");
        assert_eq!(query("a/../b?x=1&y"), "a%2F..%2Fb%3Fx%3D1%26y");
    }
}
