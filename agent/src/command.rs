//! Whether the agent carries out a command: pure, table-tested. The caller
//! asks the outbox whether the command id is new ([`Outbox::remember_command`],
//! durable across restarts) only for commands addressed to this node.
//!
//! [`Outbox::remember_command`]: crate::outbox::Outbox::remember_command

use homelab_core::time::Timestamp;
use homelab_core::Name;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
