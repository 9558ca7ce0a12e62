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
    /// How the node's link to the broker fares, and its Tailscale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<Uplink>,
    /// The commit of the desired state its node config came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_commit: Option<String>,
}

/// The node's uplink as its agent sees it: measured on its own connection
/// to the broker (no probe traffic), and Tailscale where it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Uplink {
    /// Median round trip of its MQTT requests (PUBLISH to PUBACK, PINGREQ
    /// to PINGRESP) over the last 5 minutes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Their 90th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_p90_ms: Option<f64>,
    /// Share of them answered later than 5 s or not at all, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_pct: Option<f64>,
    /// Requests timed over those 5 minutes.
    #[serde(default)]
    pub samples: u64,
    /// How long the last outage (a lost connection until the next
    /// CONNACK) lasted, and when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outage_secs: Option<u64>,
    #[serde(
        default,
        with = "time::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_outage_ended: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale: Option<Tailscale>,
}

impl Uplink {
    /// One line for an operator, e.g. `42 ms (p90 120 ms), 0% late; last
    /// outage 3 min, ended 2 h ago`.
    pub fn summary(&self, now: Timestamp) -> String {
        let mut out = match (self.rtt_ms, self.rtt_p90_ms) {
            (Some(rtt), Some(p90)) if p90 > rtt => format!("{rtt:.0} ms (p90 {p90:.0} ms)"),
            (Some(rtt), _) => format!("{rtt:.0} ms"),
            _ => "no round trips timed yet".into(),
        };
        if let Some(late) = self.late_pct {
            out += &format!(", {late:.0}% late");
        }
        match (self.last_outage_secs, self.last_outage_ended) {
            (Some(lasted), Some(ended)) => {
                out += &format!(
                    "; last outage {}, ended {} ago",
                    humanize(lasted as i64),
                    humanize((now - ended).num_seconds().max(0))
                )
            }
            _ => out += "; no outage since the agent started",
        }
        out
    }
}

impl Tailscale {
    /// E.g. `Running, online; vps relay fra` or `Stopped`.
    pub fn summary(&self) -> String {
        let mut out = self.state.clone();
        if self.state == "Running" {
            out += if self.online { ", online" } else { ", offline" };
        }
        for peer in &self.peers {
            out += &format!(
                "; {} {}",
                peer.name,
                if peer.online { &peer.path } else { "offline" }
            );
        }
        out
    }
}

/// `42 s`, `3 min`, `2 h 5 min`, `1 d 3 h`.
pub fn humanize(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `tailscale status --json`, as much as the operator needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tailscale {
    /// `Running`, `Stopped`, `NeedsLogin`, … (or why it could not be read).
    pub state: String,
    /// This node is online in the tailnet.
    pub online: bool,
    /// The peers this node needs (the control host), as last seen.
    #[serde(default)]
    pub peers: Vec<TailscalePeer>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailscalePeer {
    pub name: String,
    pub online: bool,
    /// `direct <address>`, `relay <DERP region>`, or `unknown`.
    pub path: String,
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
    /// Each running container's CPU and memory, as last read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStats>,
}

/// One running container's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub name: String,
    /// Of one core (200 is two cores busy); none until a second reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    /// In use, without the inactive page cache.
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUse {
    pub mount: String,
    pub used_pct: f64,
    pub free_bytes: u64,
}

#[cfg(test)]
mod uplink_tests {
    use super::*;

    #[test]
    fn summaries() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let now = at("2026-12-06T12:00:00Z");
        let mut u = Uplink {
            rtt_ms: Some(42.3),
            rtt_p90_ms: Some(120.0),
            late_pct: Some(0.0),
            samples: 60,
            last_outage_secs: Some(190),
            last_outage_ended: Some(at("2026-12-06T10:00:00Z")),
            tailscale: None,
        };
        assert_eq!(
            u.summary(now),
            "42 ms (p90 120 ms), 0% late; last outage 3 min, ended 2 h 0 min ago"
        );
        u.rtt_p90_ms = Some(42.3);
        u.last_outage_secs = None;
        assert_eq!(
            u.summary(now),
            "42 ms, 0% late; no outage since the agent started"
        );
        assert_eq!(
            Uplink::default().summary(now),
            "no round trips timed yet; no outage since the agent started"
        );
        let peer = |name: &str, online, path: &str| TailscalePeer {
            name: name.into(),
            online,
            path: path.into(),
        };
        let t = Tailscale {
            state: "Running".into(),
            online: true,
            peers: vec![
                peer("vps", true, "relay fra"),
                peer("nas", false, "direct 1.2.3.4:41641"),
            ],
        };
        assert_eq!(t.summary(), "Running, online; vps relay fra; nas offline");
        let stopped = Tailscale {
            state: "Stopped".into(),
            ..Default::default()
        };
        assert_eq!(stopped.summary(), "Stopped");
    }
}
