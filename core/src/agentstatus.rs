//! What an agent says of itself on `<prefix>/nodes/<node>/agent` (retained)
//! and in `state/agent/<node>/status.json`: connection, outbox backlog, and
//! the node's vitals. Written by the agent, read by `homelab agent status`
//! and the UI.

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: Name,
    /// Connected to the broker, subscriptions confirmed.
    pub connected: bool,
    /// Events held until the observer acknowledges them.
    pub outbox_events: u64,
    pub outbox_bytes: u64,
    /// The observer's watermark as last seen.
    pub acked: u64,
    /// The highest `seq` given out.
    pub last_seq: u64,
    /// When the oldest event still held was made.
    #[serde(default, with = "time::option")]
    pub oldest_unacked: Option<Timestamp>,
    /// When the agent wrote this.
    #[serde(with = "time")]
    pub updated: Timestamp,
    /// False once the agent has stopped.
    pub running: bool,
    /// Load, memory, uptime and disk use of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vitals: Option<Vitals>,
}

/// The node's vitals for the operator: state that is replaced, not a stream
/// of events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vitals {
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub uptime_secs: u64,
    /// The watched filesystems as last sampled.
    pub disks: Vec<DiskUse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUse {
    pub mount: String,
    pub used_pct: f64,
    pub free_bytes: u64,
}
