//! Commands from the executor to one node's agent on
//! `<prefix>/commands/<node>`: a closed set of operations, each with the
//! action it serves and a deadline past which the agent refuses it.

use serde::{Deserialize, Serialize};

use crate::action::ActionKind;
use crate::name::Name;
use crate::time::{self, Timestamp};

/// A redeploy carries its compose files, so commands may be this large.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// The largest compose file the supervisor puts into an action.
pub const MAX_COMPOSE_FILE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub v: u32,
    /// Unique per attempt; the agent runs a command id at most once.
    pub id: String,
    pub action_id: Name,
    pub node: Name,
    #[serde(flatten)]
    pub op: Operation,
    #[serde(with = "time")]
    pub issued_at: Timestamp,
    #[serde(with = "time")]
    pub deadline: Timestamp,
}

/// What the agent is asked to do. Tagged as `"type"` with its `"params"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    content = "params",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Operation {
    ContainerRestart {
        service: Name,
    },
    Redeploy {
        service: Name,
        /// The compose files from the repo revision the action was
        /// proposed from, as the operator approved them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compose: Option<ComposeBundle>,
    },
    DiskCleanup {
        /// Services the node should run: their stopped containers stay.
        #[serde(default)]
        keep_services: Vec<Name>,
        /// Stopped containers younger than this stay (seconds).
        #[serde(default = "default_older_than")]
        older_than_secs: u64,
    },
}

/// Stopped containers are removed by a cleanup only after this long.
pub const DEFAULT_CLEANUP_OLDER_THAN: u64 = 24 * 3600;

fn default_older_than() -> u64 {
    DEFAULT_CLEANUP_OLDER_THAN
}

/// What a redeploy runs: `up -d` of one Compose project made of these files,
/// in order (the service's `docker-compose.yml`, then the node's override).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeBundle {
    /// The Compose project name: stable, so `up -d` replaces what the last
    /// redeploy started.
    pub project: Name,
    /// `v1` (`docker-compose`) or `v2` (`docker compose`) as the node's
    /// `capabilities.yaml` says; absent: the agent detects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_version: Option<crate::desired::ComposeVersion>,
    pub files: Vec<ComposeFile>,
}

/// One compose file: where it is in the repo (shown, never used as a path
/// by the agent), its SHA-256 and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    pub path: String,
    pub sha256: String,
    pub content: String,
}

impl ComposeBundle {
    /// What the bundle deploys, in one value: the SHA-256 of its files'
    /// paths and SHA-256s, in order. Two bundles with the same digest
    /// deploy the same files.
    pub fn digest(&self) -> String {
        let mut all = String::new();
        for file in &self.files {
            all.push_str(&file.path);
            all.push('\0');
            all.push_str(&file.sha256);
            all.push('\n');
        }
        sha256_hex(all.as_bytes())
    }
}

impl ComposeFile {
    pub fn new(path: impl Into<String>, content: String) -> ComposeFile {
        ComposeFile {
            path: path.into(),
            sha256: sha256_hex(content.as_bytes()),
            content,
        }
    }

    /// Whether `content` is what `sha256` says.
    pub fn intact(&self) -> bool {
        sha256_hex(self.content.as_bytes()) == self.sha256
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Operation {
    /// The service it acts on, if any.
    pub fn service(&self) -> Option<&Name> {
        match self {
            Operation::ContainerRestart { service } | Operation::Redeploy { service, .. } => {
                Some(service)
            }
            Operation::DiskCleanup { .. } => None,
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Operation::ContainerRestart { .. } => ActionKind::ContainerRestart,
            Operation::Redeploy { .. } => ActionKind::Redeploy,
            Operation::DiskCleanup { .. } => ActionKind::DiskCleanup,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command is {0} bytes, at most {MAX_COMMAND_BYTES} allowed")]
    TooLarge(usize),
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("unsupported command version {0}")]
    Version(u32),
}

impl Command {
    pub fn from_payload(payload: &[u8]) -> Result<Command, CommandError> {
        if payload.len() > MAX_COMMAND_BYTES {
            return Err(CommandError::TooLarge(payload.len()));
        }
        let command: Command =
            serde_json::from_slice(payload).map_err(|e| CommandError::Malformed(e.to_string()))?;
        if command.v != 1 {
            return Err(CommandError::Version(command.v));
        }
        if command.id.is_empty()
            || command.id.len() > 64
            || !command
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(CommandError::Malformed(format!(
                "bad command id {:?}",
                command.id
            )));
        }
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let cmd = Command {
            v: 1,
            id: "01JD".into(),
            action_id: Name::parse("container-restart-piha-mosquitto").unwrap(),
            node: Name::parse("piha").unwrap(),
            op: Operation::ContainerRestart {
                service: Name::parse("mosquitto").unwrap(),
            },
            issued_at: "2026-11-22T10:00:00Z".parse().unwrap(),
            deadline: "2026-11-22T10:05:00Z".parse().unwrap(),
        };
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(
            json.contains(r#""type":"container_restart","params":{"service":"mosquitto"}"#),
            "{json}"
        );
        assert_eq!(Command::from_payload(json.as_bytes()).unwrap(), cmd);
        let forged = json.replace("mosquitto\"}", "../x\"}");
        assert!(Command::from_payload(forged.as_bytes()).is_err());
    }

    #[test]
    fn older_commands_still_parse_and_files_are_checked() {
        let cleanup = r#"{"v":1,"id":"01JD","action_id":"disk-cleanup-piha","node":"piha",
            "type":"disk_cleanup","params":{},"issued_at":"2026-11-22T10:00:00Z",
            "deadline":"2026-11-22T10:05:00Z"}"#;
        let cmd = Command::from_payload(cleanup.as_bytes()).unwrap();
        assert_eq!(
            cmd.op,
            Operation::DiskCleanup {
                keep_services: vec![],
                older_than_secs: DEFAULT_CLEANUP_OLDER_THAN
            }
        );
        let redeploy = cleanup.replace(
            "disk_cleanup\",\"params\":{}",
            "redeploy\",\"params\":{\"service\":\"npm\"}",
        );
        let cmd = Command::from_payload(redeploy.as_bytes()).unwrap();
        assert_eq!(cmd.op.service().map(Name::as_str), Some("npm"));

        let mut file = ComposeFile::new("services/npm/docker-compose.yml", "services: {}\n".into());
        assert_eq!(file.sha256.len(), 64);
        assert!(file.intact());
        file.content.push(' ');
        assert!(!file.intact());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
