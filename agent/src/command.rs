//! Whether the agent carries out a command, when, how long it may take, and
//! when a restarted service is back: pure, table-tested. The caller asks
//! the outbox whether the command id is new ([`Outbox::take_command`],
//! durable across restarts, which also queues it) only for commands
//! addressed to this node.
//!
//! A command judged [`Verdict::Run`] waits in the queue until Docker is
//! there ([`next_step`]): one that arrives from the broker's saved session
//! a few milliseconds after the agent started, before its Docker
//! connection is up, runs once Docker answers, not never. Only its
//! deadline ends the wait.
//!
//! [`Outbox::take_command`]: crate::outbox::Outbox::take_command

use std::time::Duration;

use homelab_core::time::Timestamp;
use homelab_core::world::Container;
use homelab_core::Name;

/// How a command went: whether it worked, what to say, and what goes into
/// the outcome event's `data` (with the action and command ids).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    pub data: serde_json::Value,
}

impl Outcome {
    pub fn failed(message: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            message: message.into(),
            data: serde_json::json!({}),
        }
    }

    /// The outcome event's type and severity.
    pub fn kind(&self) -> (&'static str, homelab_core::Severity) {
        use homelab_core::event::kinds;
        match self.ok {
            true => (kinds::REMEDIATION_COMPLETED, homelab_core::Severity::Info),
            false => (kinds::REMEDIATION_FAILED, homelab_core::Severity::Error),
        }
    }
}

/// A restart's outcome: `containers` restarted, and either running (and
/// healthy) again after `waited`, or not within `budget` (`last` says
/// why).
pub fn restart_outcome(
    containers: &[String],
    ready: bool,
    waited: Duration,
    budget: Duration,
    last: &str,
) -> Outcome {
    let names = containers.join(", ");
    match ready {
        true => Outcome {
            ok: true,
            message: format!(
                "restarted {names}; running again after {:.1} s",
                waited.as_secs_f64()
            ),
            data: serde_json::json!({
                "containers": containers,
                "duration_ms": waited.as_millis() as u64,
            }),
        },
        false => Outcome {
            ok: false,
            message: format!(
                "restarted {names}, but not running and healthy within {} s: {last}",
                budget.as_secs()
            ),
            data: serde_json::json!({"containers": containers, "reason": "not_ready"}),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out (once: its id is now remembered).
    Run,
    /// For another node: not ours to answer.
    OtherNode,
    /// Seen before (delivered twice, or again after a restart): already
    /// carried out or refused; nothing more is said.
    Duplicate,
    /// Past its deadline: refused, and the refusal is reported (as
    /// `remediation_failed` with `data.reason = "expired"`).
    Expired,
}

impl Verdict {
    /// The `reason` label of `homelab_agent_commands_rejected_total`.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Verdict::Run => None,
            Verdict::OtherNode => Some("node_mismatch"),
            Verdict::Duplicate => Some("duplicate"),
            Verdict::Expired => Some("expired"),
        }
    }
}

/// The verdict on a command for `to`, delivered to the agent of `me` at
/// `now`; `first_time` says whether its id was new to this agent.
pub fn judge(
    to: &Name,
    me: &Name,
    first_time: bool,
    deadline: Timestamp,
    now: Timestamp,
) -> Verdict {
    if to != me {
        Verdict::OtherNode
    } else if !first_time {
        Verdict::Duplicate
    } else if now > deadline {
        Verdict::Expired
    } else {
        Verdict::Run
    }
}

/// What a queued command does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Docker is there: carry it out now.
    Run,
    /// Wait for Docker, at most this long (until the deadline).
    Wait(Duration),
    /// The deadline passed while it waited: refused as expired.
    Expired,
}

/// The next step of a queued command at `now`.
pub fn next_step(deadline: Timestamp, now: Timestamp, docker_up: bool) -> Step {
    match (deadline - now).to_std() {
        Err(_) => Step::Expired,
        Ok(_) if docker_up => Step::Run,
        Ok(left) if left.is_zero() => Step::Expired,
        Ok(left) => Step::Wait(left),
    }
}

/// What becomes of a command found in the queue when the agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// It never started: it goes on waiting (within its deadline).
    Carry,
    /// It was being carried out when the agent stopped: it may have partly
    /// run, and is never run twice, so it is reported failed
    /// (`data.reason = "interrupted"`) for the operator to decide.
    Interrupted,
}

pub fn resume(state: crate::outbox::QueuedState) -> Resume {
    match state {
        crate::outbox::QueuedState::Waiting => Resume::Carry,
        crate::outbox::QueuedState::Running => Resume::Interrupted,
    }
}

/// How long a command may take: until its deadline, at most `cap`, at
/// least a second (a command judged `Run` is still before its deadline).
pub fn budget(deadline: Timestamp, now: Timestamp, cap: Duration) -> Duration {
    (deadline - now)
        .to_std()
        .unwrap_or_default()
        .clamp(Duration::from_secs(1), cap.max(Duration::from_secs(1)))
}

/// Whether a restarted service is back: every container of it running,
/// and healthy where it has a health check. `Err` says what it waits for.
pub fn readiness(service: &Name, containers: &[Container]) -> Result<(), String> {
    let mine: Vec<&Container> = containers
        .iter()
        .filter(|c| &c.service == service)
        .collect();
    if mine.is_empty() {
        return Err(format!("no container of {service} on this node"));
    }
    for c in mine {
        if c.state != "running" {
            return Err(format!("{} is {} ({})", c.name, c.state, c.status));
        }
        match c.health.as_deref() {
            Some("starting") => {
                return Err(format!(
                    "{} is running, its health check still starting",
                    c.name
                ))
            }
            Some("unhealthy") => return Err(format!("{} is running but unhealthy", c.name)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_a_queued_command() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let secs = Duration::from_secs;
        for (deadline, now, docker_up, want) in [
            (t(300), t(0), true, Step::Run),
            // Docker not there yet: wait, but only until the deadline.
            (t(300), t(0), false, Step::Wait(secs(300))),
            (t(300), t(299), false, Step::Wait(secs(1))),
            (t(300), t(300), false, Step::Expired),
            (t(300), t(301), false, Step::Expired),
            // Past its deadline, Docker or not.
            (t(300), t(301), true, Step::Expired),
            (t(300), t(300), true, Step::Run),
        ] {
            assert_eq!(
                next_step(deadline, now, docker_up),
                want,
                "{deadline} at {now}, docker {docker_up}"
            );
        }
        use crate::outbox::QueuedState;
        assert_eq!(resume(QueuedState::Waiting), Resume::Carry);
        assert_eq!(resume(QueuedState::Running), Resume::Interrupted);
    }

    #[test]
    fn budgets() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let cap = Duration::from_secs(120);
        let cases = [
            (t(300), t(0), 120),
            (t(60), t(0), 60),
            (t(0), t(0), 1),
            (t(0), t(5), 1),
        ];
        for (deadline, now, want) in cases {
            assert_eq!(
                budget(deadline, now, cap),
                Duration::from_secs(want),
                "{deadline} at {now}"
            );
        }
    }

    #[test]
    fn readiness_of_a_restarted_service() {
        let c = |name: &str, service: &str, state: &str, health: Option<&str>| Container {
            id: name.into(),
            name: name.into(),
            service: Name::parse(service).unwrap(),
            image: "img".into(),
            state: state.into(),
            status: format!("{state} status"),
            health: health.map(String::from),
            restart_count: None,
            exit_code: None,
        };
        let app = Name::parse("app").unwrap();
        let cases: Vec<(Vec<Container>, Result<(), &str>)> = vec![
            (vec![c("app-1", "app", "running", None)], Ok(())),
            (
                vec![
                    c("app-1", "app", "running", Some("healthy")),
                    c("db-1", "db", "exited", None),
                ],
                Ok(()),
            ),
            (
                vec![c("app-1", "app", "running", Some("starting"))],
                Err("app-1 is running, its health check still starting"),
            ),
            (
                vec![c("app-1", "app", "running", Some("unhealthy"))],
                Err("app-1 is running but unhealthy"),
            ),
            (
                vec![
                    c("app-1", "app", "running", None),
                    c("app-2", "app", "exited", None),
                ],
                Err("app-2 is exited (exited status)"),
            ),
            (
                vec![c("app-1", "app", "restarting", None)],
                Err("app-1 is restarting (restarting status)"),
            ),
            (
                vec![c("db-1", "db", "running", None)],
                Err("no container of app on this node"),
            ),
        ];
        for (containers, want) in cases {
            assert_eq!(
                readiness(&app, &containers),
                want.map_err(String::from),
                "{containers:?}"
            );
        }
    }

    #[test]
    fn verdicts() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let me = Name::parse("edge1").unwrap();
        let other = Name::parse("edge2").unwrap();
        let deadline = t(300);
        let cases = [
            // (to, first time, now, verdict)
            (&me, true, t(0), Verdict::Run),
            (&me, true, t(300), Verdict::Run),
            (&me, true, t(301), Verdict::Expired),
            (&me, false, t(0), Verdict::Duplicate),
            // A duplicate past its deadline was answered the first time.
            (&me, false, t(301), Verdict::Duplicate),
            (&other, true, t(0), Verdict::OtherNode),
            (&other, false, t(301), Verdict::OtherNode),
        ];
        for (to, first, now, want) in cases {
            assert_eq!(
                judge(to, &me, first, deadline, now),
                want,
                "to {to}, first {first}, at {now}"
            );
        }
    }

    #[test]
    fn what_a_restart_says() {
        let names = ["app-1".to_string(), "app-2".to_string()];
        let ready = restart_outcome(
            &names,
            true,
            Duration::from_millis(2340),
            Duration::from_secs(120),
            "",
        );
        assert!(ready.ok);
        assert_eq!(
            ready.message,
            "restarted app-1, app-2; running again after 2.3 s"
        );
        assert_eq!(ready.data["duration_ms"], 2340);
        assert_eq!(ready.kind().0, "remediation_completed");
        let late = restart_outcome(
            &names[..1],
            false,
            Duration::from_secs(120),
            Duration::from_secs(120),
            "app-1 is unhealthy",
        );
        assert!(!late.ok);
        assert_eq!(
            late.message,
            "restarted app-1, but not running and healthy within 120 s: app-1 is unhealthy"
        );
        assert_eq!(late.data["reason"], "not_ready");
        assert_eq!(late.kind().0, "remediation_failed");
    }
}
