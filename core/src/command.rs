//! Commands from the executor to one node's agent on
//! `<prefix>/commands/<node>`: a closed set of operations, each with the
//! action it serves and a deadline past which the agent refuses it.

use serde::{Deserialize, Serialize};

use crate::action::ActionKind;
use crate::name::Name;
use crate::time::{self, Timestamp};

pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

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
    ContainerRestart { service: Name },
    Redeploy { service: Name },
    DiskCleanup {},
}

impl Operation {
    pub fn kind(&self) -> ActionKind {
        match self {
            Operation::ContainerRestart { .. } => ActionKind::ContainerRestart,
            Operation::Redeploy { .. } => ActionKind::Redeploy,
            Operation::DiskCleanup {} => ActionKind::DiskCleanup,
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
}
