//! Remediation actions: one JSON file per action under
//! `actions/<state>/<id>.json`, carrying its whole history.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::name::Name;
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Pending,
    Approved,
    Running,
    Completed,
    Failed,
    Rejected,
    Cancelled,
}

impl ActionState {
    pub const ALL: [ActionState; 7] = [
        ActionState::Pending,
        ActionState::Approved,
        ActionState::Running,
        ActionState::Completed,
        ActionState::Failed,
        ActionState::Rejected,
        ActionState::Cancelled,
    ];
    /// States in which an id is taken: at most one open action per id.
    pub const OPEN: [ActionState; 3] = [
        ActionState::Pending,
        ActionState::Approved,
        ActionState::Running,
    ];

    pub fn dir(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Approved => "approved",
            ActionState::Running => "running",
            ActionState::Completed => "completed",
            ActionState::Failed => "failed",
            ActionState::Rejected => "rejected",
            ActionState::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<ActionState> {
        ActionState::ALL.into_iter().find(|s| s.dir() == raw)
    }

    pub fn is_open(self) -> bool {
        ActionState::OPEN.contains(&self)
    }

    /// The transitions the contract allows.
    pub fn can_move_to(self, to: ActionState) -> bool {
        use ActionState::*;
        matches!(
            (self, to),
            (Pending, Approved | Rejected | Cancelled)
                | (Approved, Running)
                | (Running, Completed | Failed)
        )
    }
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    ContainerRestart,
    Redeploy,
    DiskCleanup,
    AlertOnly,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::ContainerRestart => "container_restart",
            ActionKind::Redeploy => "redeploy",
            ActionKind::DiskCleanup => "disk_cleanup",
            ActionKind::AlertOnly => "alert_only",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Guarded,
}

/// Why a pending action was cancelled automatically.
pub mod cancel_reasons {
    pub const DRIFT_RESOLVED: &str = "drift_resolved_auto";
    pub const REMOVED_FROM_DESIRED: &str = "service_removed_from_desired_state";
    /// A newer commit changed the files a pending redeploy would deploy: it
    /// is replaced by a proposal for that commit.
    pub const SUPERSEDED: &str = "superseded_by_newer_commit";
}

/// The desired state an action was proposed from: the commit (when the
/// repo is a git history), and for a redeploy the repo's change to the
/// service's compose files since what was last deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    pub commit: crate::repo::Commit,
    /// The commit was pinned (`homelab repo pin`), not the branch's head.
    #[serde(default)]
    pub pinned: bool,
    /// The commit the compose files change from (what was deployed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_commit: Option<String>,
    /// A unified diff of the compose files, old → new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// Who approves an action of a `remediation: auto` service, in its history.
pub const APPROVED_BY_POLICY: &str = "policy";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub state: ActionState,
    #[serde(with = "time")]
    pub at: Timestamp,
    pub by: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    pub ok: bool,
    pub message: String,
    #[serde(with = "time")]
    pub at: Timestamp,
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub v: u32,
    pub id: Name,
    #[serde(rename = "type")]
    pub kind: ActionKind,
    pub node: Name,
    /// The name the node's agent reports under, when that is one of its
    /// aliases: commands go to `homelab/commands/<target>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    pub risk: Risk,
    pub state: ActionState,
    /// The trigger, e.g. `containers_not_running` or `service_missing`.
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(with = "time")]
    pub created_at: Timestamp,
    #[serde(with = "time")]
    pub updated_at: Timestamp,
    pub history: Vec<Transition>,
    /// What it carries out, fixed when it was proposed: for a redeploy the
    /// compose files (with their SHA-256), for a cleanup the services whose
    /// containers stay. The executor sends exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ActionParams>,
    /// The command the executor sent for this action, once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<SentCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ActionResult>,
    /// The commit it was proposed from, when the repo is a git history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<crate::command::ComposeBundle>,
    /// Why a redeploy has no compose files (none in the repo, too large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_missing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_services: Option<Vec<Name>>,
    /// A cleanup removes stopped containers only once they are this old
    /// (seconds; the node's `disk.cleanup_older_than`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentCommand {
    pub id: String,
    #[serde(with = "time")]
    pub sent_at: Timestamp,
    #[serde(with = "time")]
    pub deadline: Timestamp,
}

impl Action {
    /// `container-restart-<node>-<service>`, `redeploy-<node>-<service>`, `disk-cleanup-<node>`.
    pub fn id_for(kind: ActionKind, node: &Name, service: Option<&Name>) -> Name {
        let stem = kind.as_str().replace('_', "-");
        let raw = match service {
            Some(service) => format!("{stem}-{node}-{service}"),
            None => format!("{stem}-{node}"),
        };
        // Node and service are names of at most 63 characters each, so the
        // joined id may be too long; shorten it deterministically.
        Name::parse(&raw).unwrap_or_else(|_| {
            let digest = fnv1a(raw.as_bytes());
            Name::parse(&format!("{}-{digest:016x}", &raw[..46]))
                .expect("shortened id is a valid name")
        })
    }

    pub fn new(
        kind: ActionKind,
        node: Name,
        service: Option<Name>,
        risk: Risk,
        reason: &str,
        message: &str,
        now: Timestamp,
    ) -> Action {
        let id = Action::id_for(kind, &node, service.as_ref());
        Action {
            v: 1,
            id,
            kind,
            node,
            target: None,
            service,
            risk,
            state: ActionState::Pending,
            reason: reason.to_string(),
            message: message.to_string(),
            created_at: now,
            updated_at: now,
            history: vec![Transition {
                state: ActionState::Pending,
                at: now,
                by: "supervisor".into(),
                why: format!("{reason}: {message}"),
            }],
            params: None,
            origin: None,
            command: None,
            result: None,
        }
    }

    pub fn record(&mut self, state: ActionState, by: &str, why: &str, at: Timestamp) {
        self.state = state;
        self.updated_at = at;
        self.history.push(Transition {
            state,
            at,
            by: by.to_string(),
            why: why.to_string(),
        });
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn deterministic_ids() {
        fn id(k: ActionKind, node: &str, svc: Option<&str>) -> String {
            Action::id_for(k, &n(node), svc.map(n).as_ref()).to_string()
        }
        assert_eq!(
            id(ActionKind::ContainerRestart, "piha", Some("mosquitto")),
            "container-restart-piha-mosquitto"
        );
        assert_eq!(
            id(ActionKind::Redeploy, "vps", Some("npm")),
            "redeploy-vps-npm"
        );
        assert_eq!(
            id(ActionKind::DiskCleanup, "saturn", None),
            "disk-cleanup-saturn"
        );
        let (a, b, c) = ("a".repeat(60), "b".repeat(60), "c".repeat(60));
        let long = id(ActionKind::Redeploy, &a, Some(&b));
        assert_eq!(long.len(), 63);
        assert_eq!(long, id(ActionKind::Redeploy, &a, Some(&b)));
        assert_ne!(long, id(ActionKind::Redeploy, &a, Some(&c)));
    }

    #[test]
    fn transitions() {
        use ActionState::*;
        assert!(Pending.can_move_to(Approved));
        assert!(Pending.can_move_to(Cancelled));
        assert!(!Approved.can_move_to(Cancelled));
        assert!(!Running.can_move_to(Cancelled));
        assert!(!Completed.can_move_to(Pending));
    }
}
