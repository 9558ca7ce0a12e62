//! The executor's decisions, pure and table-tested: which command an action
//! asks of the agent, when that command expires, what a pass does with a
//! running action, and whether an event is the outcome of one.

use std::time::Duration;

use homelab_core::action::{ActionParams, ActionResult};
use homelab_core::event::kinds;
use homelab_core::time::Timestamp;
use homelab_core::{Action, ActionKind, ActionState, Event, Name, Operation};
use serde_json::json;

/// Past the deadline, the agent refuses the command; this margin lets an
/// outcome that was on its way arrive.
pub const OUTCOME_MARGIN: Duration = Duration::from_secs(30);

/// The operation an action of `kind` on `service` asks of the agent, with
/// the params fixed when it was proposed, or why there is none to carry
/// out.
pub fn operation(
    kind: ActionKind,
    service: Option<&Name>,
    params: Option<&ActionParams>,
) -> Result<Operation, String> {
    match (kind, service) {
        (ActionKind::ContainerRestart, Some(service)) => Ok(Operation::ContainerRestart {
            service: service.clone(),
        }),
        (ActionKind::Redeploy, Some(service)) => {
            match params.and_then(|p| p.compose.as_ref()) {
                Some(compose) => Ok(Operation::Redeploy {
                    service: service.clone(),
                    compose: Some(compose.clone()),
                }),
                None => Err(match params.and_then(|p| p.compose_missing.as_ref()) {
                    Some(why) => format!("no compose files to redeploy {service} with: {why}"),
                    None => format!(
                        "no compose files to redeploy {service} with: the action was proposed without them; reject it and let it be proposed again"
                    ),
                }),
            }
        }
        (ActionKind::DiskCleanup, _) => Ok(Operation::DiskCleanup {
            keep_services: params
                .and_then(|p| p.keep_services.clone())
                .unwrap_or_default(),
            older_than_secs: params
                .and_then(|p| p.older_than_secs)
                .unwrap_or(homelab_core::command::DEFAULT_CLEANUP_OLDER_THAN),
        }),
        (ActionKind::ContainerRestart | ActionKind::Redeploy, None) => {
            Err(format!("{} names no service", kind.as_str()))
        }
        (ActionKind::AlertOnly, _) => Err(format!("{} has nothing to execute", kind.as_str())),
    }
}

/// The deadline of a command sent at `now` with `timeout` to carry it out.
pub fn deadline(now: Timestamp, timeout: Duration) -> Timestamp {
    now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::minutes(5))
}

/// What a pass does with an action in `running/`.
#[derive(Debug, Clone, PartialEq)]
pub enum Running {
    /// No command recorded yet (the executor stopped between claiming it
    /// and sending): send one.
    Send,
    /// Its command is out; its outcome may still come.
    Wait,
    /// No outcome came before the deadline and its margin: it failed.
    Fail(ActionResult),
}

/// `started` is when this executor started: a command sent before then
/// lost its executor while it ran, and says so when it fails (a late
/// outcome is still taken until then, from the bus or the event log).
pub fn running(action: &Action, now: Timestamp, started: Timestamp) -> Running {
    match &action.command {
        None => Running::Send,
        Some(sent) if now > deadline(sent.deadline, OUTCOME_MARGIN) => {
            let (reason, message) = if sent.sent_at < started {
                (
                    "executor_restarted",
                    "executor_restarted: no outcome before the command deadline",
                )
            } else {
                ("no_outcome", "no outcome before the command deadline")
            };
            Running::Fail(ActionResult {
                ok: false,
                message: message.into(),
                at: now,
                data: json!({"command_id": sent.id, "reason": reason}),
            })
        }
        Some(_) => Running::Wait,
    }
}

/// The UTC days whose event logs may hold the outcome of a command sent at
/// `sent`, up to `today` (at most a week: commands expire in minutes).
pub fn outcome_days(sent: Timestamp, today: chrono::NaiveDate) -> Vec<chrono::NaiveDate> {
    let first = sent.date_naive().max(today - chrono::Days::new(6));
    first.iter_days().take_while(|d| *d <= today).collect()
}

/// Whether an event of this type can end a running action.
pub fn is_outcome(kind: &str) -> bool {
    matches!(
        kind,
        kinds::REMEDIATION_COMPLETED | kinds::REMEDIATION_FAILED
    )
}

/// The result `event` gives `action`: only an outcome event for this
/// action, while it runs, and for the command last sent (the outcome of an
/// earlier attempt is ignored).
pub fn outcome(action: &Action, event: &Event) -> Option<ActionResult> {
    let ok = match event.kind.as_str() {
        kinds::REMEDIATION_COMPLETED => true,
        kinds::REMEDIATION_FAILED => false,
        _ => return None,
    };
    if action.state != ActionState::Running || event.action_id() != Some(action.id.as_str()) {
        return None;
    }
    let command_id = event.data.get("command_id").and_then(|v| v.as_str());
    if let (Some(sent), Some(got)) = (&action.command, command_id) {
        if sent.id != got {
            return None;
        }
    }
    // What the agent reported (Compose's output, the duration, the bytes
    // reclaimed) goes into the result, under the event's own keys.
    let mut data = match &event.data {
        serde_json::Value::Object(map) => map.clone(),
        _ => Default::default(),
    };
    data.remove("action_id");
    data.insert("event_id".into(), json!(event.id));
    data.insert("command_id".into(), json!(command_id));
    data.insert("node".into(), json!(event.node));
    Some(ActionResult {
        ok,
        message: event.message.clone(),
        at: event.ts,
        data: serde_json::Value::Object(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::action::SentCommand;
    use homelab_core::Severity;

    fn t(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn action(state: ActionState, command: Option<&str>) -> Action {
        Action {
            v: 1,
            id: name("container-restart-n1-app"),
            kind: ActionKind::ContainerRestart,
            node: name("n1"),
            target: None,
            service: Some(name("app")),
            risk: homelab_core::action::Risk::Low,
            state,
            reason: "containers_not_running".into(),
            message: String::new(),
            created_at: t(0),
            updated_at: t(0),
            history: vec![],
            params: None,
            command: command.map(|id| SentCommand {
                id: id.into(),
                sent_at: t(0),
                deadline: t(300),
            }),
            result: None,
            origin: None,
        }
    }

    fn event(kind: &str, action_id: &str, command_id: Option<&str>) -> Event {
        let mut data = json!({"action_id": action_id, "duration_ms": 1200});
        if let Some(id) = command_id {
            data["command_id"] = json!(id);
        }
        Event {
            v: 1,
            id: "E1".into(),
            ts: t(10),
            node: name("n1"),
            seq: 7,
            source: "node-agent".into(),
            kind: kind.into(),
            service: Some(name("app")),
            severity: Severity::Info,
            message: "restarted app-1".into(),
            data,
        }
    }

    #[test]
    fn kind_to_operation() {
        use homelab_core::command::{ComposeBundle, ComposeFile, DEFAULT_CLEANUP_OLDER_THAN};
        let app = name("app");
        let bundle = ComposeBundle {
            project: app.clone(),
            compose_version: None,
            files: vec![ComposeFile::new(
                "services/app/docker-compose.yml",
                "services: {}".into(),
            )],
        };
        let with_compose = ActionParams {
            compose: Some(bundle.clone()),
            ..Default::default()
        };
        let missing = ActionParams {
            compose_missing: Some("services/app/docker-compose.yml: not found".into()),
            ..Default::default()
        };
        let keep = ActionParams {
            keep_services: Some(vec![app.clone()]),
            older_than_secs: Some(60),
            ..Default::default()
        };
        let cleanup = |keep: Vec<Name>, older_than_secs| Operation::DiskCleanup {
            keep_services: keep,
            older_than_secs,
        };
        type Case<'a> = (
            ActionKind,
            Option<&'a Name>,
            Option<&'a ActionParams>,
            Result<Operation, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                ActionKind::ContainerRestart,
                Some(&app),
                None,
                Ok(Operation::ContainerRestart {
                    service: app.clone(),
                }),
            ),
            (
                ActionKind::Redeploy,
                Some(&app),
                Some(&with_compose),
                Ok(Operation::Redeploy {
                    service: app.clone(),
                    compose: Some(bundle.clone()),
                }),
            ),
            (
                ActionKind::Redeploy,
                Some(&app),
                Some(&missing),
                Err("no compose files to redeploy app with: services/app/docker-compose.yml: not found"),
            ),
            (
                ActionKind::Redeploy,
                Some(&app),
                None,
                Err("no compose files to redeploy app with: the action was proposed without them; reject it and let it be proposed again"),
            ),
            (ActionKind::DiskCleanup, None, Some(&keep), Ok(cleanup(vec![app.clone()], 60))),
            (ActionKind::DiskCleanup, Some(&app), None, Ok(cleanup(vec![], DEFAULT_CLEANUP_OLDER_THAN))),
            (
                ActionKind::ContainerRestart,
                None,
                None,
                Err("container_restart names no service"),
            ),
            (ActionKind::Redeploy, None, None, Err("redeploy names no service")),
            (
                ActionKind::AlertOnly,
                Some(&app),
                None,
                Err("alert_only has nothing to execute"),
            ),
        ];
        for (kind, service, params, want) in cases {
            assert_eq!(
                operation(kind, service, params),
                want.map_err(String::from),
                "{kind:?} {service:?} {params:?}"
            );
        }
    }

    #[test]
    fn deadlines_and_running_actions() {
        assert_eq!(deadline(t(0), Duration::from_secs(300)), t(300));
        // The command was sent at t(0); its deadline is t(300), the margin
        // 30 s. `started`: when this executor started.
        let cases = [
            (action(ActionState::Running, None), t(0), t(-10), "send"),
            (action(ActionState::Running, None), t(999), t(500), "send"),
            (
                action(ActionState::Running, Some("C1")),
                t(0),
                t(-10),
                "wait",
            ),
            (
                action(ActionState::Running, Some("C1")),
                t(330),
                t(-10),
                "wait",
            ),
            (
                action(ActionState::Running, Some("C1")),
                t(330),
                t(100),
                "wait",
            ),
            (
                action(ActionState::Running, Some("C1")),
                t(331),
                t(-10),
                "fail no_outcome",
            ),
            (
                action(ActionState::Running, Some("C1")),
                t(331),
                t(0),
                "fail no_outcome",
            ),
            (
                action(ActionState::Running, Some("C1")),
                t(331),
                t(100),
                "fail executor_restarted",
            ),
        ];
        for (action, now, started, want) in cases {
            let got = match running(&action, now, started) {
                Running::Send => "send".to_string(),
                Running::Wait => "wait".to_string(),
                Running::Fail(result) => {
                    assert!(!result.ok);
                    assert_eq!(result.data["command_id"], "C1");
                    assert!(result
                        .message
                        .contains("no outcome before the command deadline"));
                    format!("fail {}", result.data["reason"].as_str().unwrap())
                }
            };
            assert_eq!(got, want, "at {now}, started {started}");
        }
        let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2027, 1, d).unwrap();
        let sent = |d: u32| day(d).and_hms_opt(23, 59, 0).unwrap().and_utc();
        assert_eq!(outcome_days(sent(15), day(15)), vec![day(15)]);
        assert_eq!(outcome_days(sent(15), day(16)), vec![day(15), day(16)]);
        assert_eq!(
            outcome_days(sent(1), day(20)),
            (14..=20).map(day).collect::<Vec<_>>()
        );
        assert_eq!(
            outcome_days(sent(16), day(15)),
            Vec::<chrono::NaiveDate>::new()
        );
    }

    #[test]
    fn outcomes_match_the_action_and_its_last_command() {
        let running = action(ActionState::Running, Some("C2"));
        let id = running.id.as_str();
        let cases = [
            (
                event(kinds::REMEDIATION_COMPLETED, id, Some("C2")),
                Some(true),
            ),
            (
                event(kinds::REMEDIATION_FAILED, id, Some("C2")),
                Some(false),
            ),
            // An agent that does not say which command: taken.
            (event(kinds::REMEDIATION_COMPLETED, id, None), Some(true)),
            // The outcome of an earlier attempt.
            (event(kinds::REMEDIATION_COMPLETED, id, Some("C1")), None),
            // Another action's, or not an outcome.
            (
                event(kinds::REMEDIATION_COMPLETED, "redeploy-n1-app", Some("C2")),
                None,
            ),
            (event(kinds::REMEDIATION_STARTED, id, Some("C2")), None),
            (event("containers_not_running", id, Some("C2")), None),
        ];
        for (event, want) in cases {
            let got = outcome(&running, &event);
            assert_eq!(
                got.as_ref().map(|r| r.ok),
                want,
                "{} {}",
                event.kind,
                event.data
            );
            if let Some(result) = got {
                assert_eq!(result.message, "restarted app-1");
                assert_eq!(result.at, t(10));
                assert_eq!(result.data["event_id"], "E1");
                // What the agent reported is kept; the action id is not
                // repeated.
                assert_eq!(result.data["duration_ms"], 1200);
                assert_eq!(result.data.get("action_id"), None);
            }
        }
        // Only while it runs.
        let done = action(ActionState::Completed, Some("C2"));
        assert_eq!(
            outcome(&done, &event(kinds::REMEDIATION_FAILED, id, Some("C2"))),
            None
        );
        assert!(is_outcome(kinds::REMEDIATION_FAILED) && !is_outcome(kinds::REMEDIATION_STARTED));
    }
}
