//! The agent's own state, for an operator who cannot see inside it: is it
//! connected, how many events wait in its outbox, and how old the oldest
//! unacknowledged one is. Published retained on `<prefix>/nodes/<node>/agent`
//! (JSON) and written to `state/agent/<node>/status.json` every few seconds,
//! on every change of connection and on the way out; `homelab agent status`
//! reads the file, so it works while the agent is down or cut off.

use chrono::{DateTime, Utc};
use homelab_core::agentstatus::humanize;
pub use homelab_core::agentstatus::AgentStatus;
use homelab_core::time::{self, Timestamp};

/// The text `homelab agent status` prints.
pub fn render(status: &AgentStatus, now: DateTime<Utc>) -> String {
    let ago = |t: Timestamp| humanize((now - t).num_seconds().max(0));
    let mut out = format!("node:            {}\n", status.node);
    let state = match (status.running, status.connected) {
        (false, _) => "stopped".to_string(),
        (true, true) => "connected".to_string(),
        (true, false) => "running, not connected to the broker".to_string(),
    };
    out += &format!(
        "agent:           {state} (as of {} ago)\n",
        ago(status.updated)
    );
    out += &format!(
        "outbox:          {} events, {} bytes not yet acknowledged\n",
        status.outbox_events, status.outbox_bytes
    );
    out += &format!(
        "oldest unacked:  {}\n",
        match status.oldest_unacked {
            Some(t) => format!("{} ({} ago)", time::format(&t), ago(t)),
            None => "none".into(),
        }
    );
    out += &format!(
        "seq:             {} given out, {} acknowledged\n",
        status.last_seq, status.acked
    );
    if let Some(v) = &status.vitals {
        out += &format!(
            "load:            {:.2} {:.2} {:.2}\n",
            v.load[0], v.load[1], v.load[2]
        );
        out += &format!(
            "memory:          {:.1} of {:.1} GB available\n",
            v.memory_available_bytes as f64 / 1e9,
            v.memory_total_bytes as f64 / 1e9
        );
        out += &format!("up:              {}\n", humanize(v.uptime_secs as i64));
        for d in &v.disks {
            out += &format!(
                "disk:            {} {:.1}% used, {:.1} GB free\n",
                d.mount,
                d.used_pct,
                d.free_bytes as f64 / 1e9
            );
        }
    }
    if let Some(commit) = &status.config_commit {
        out += &format!(
            "config:          from commit {}\n",
            &commit[..commit.len().min(7)]
        );
    }
    if let Some(u) = &status.uplink {
        out += &format!("link:            {}\n", u.summary(now));
        if let Some(t) = &u.tailscale {
            out += &format!("tailscale:       {}\n", t.summary());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::Name;

    #[test]
    fn renders_what_an_operator_asks() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let status = AgentStatus {
            node: Name::parse("chelsty-infra").unwrap(),
            connected: false,
            outbox_events: 412,
            outbox_bytes: 180_000,
            acked: 9,
            last_seq: 421,
            oldest_unacked: Some(at("2026-11-22T09:00:00Z")),
            updated: at("2026-11-22T10:59:55Z"),
            running: true,
            vitals: Some(homelab_core::agentstatus::Vitals {
                load: [0.5, 0.25, 1.0],
                memory_total_bytes: 4_000_000_000,
                memory_available_bytes: 1_500_000_000,
                uptime_secs: 90_000,
                containers: Vec::new(),
                disks: vec![homelab_core::agentstatus::DiskUse {
                    mount: "/".into(),
                    used_pct: 91.5,
                    free_bytes: 2_500_000_000,
                }],
            }),
            uplink: Some(homelab_core::agentstatus::Uplink {
                rtt_ms: Some(310.0),
                late_pct: Some(4.0),
                samples: 60,
                tailscale: Some(homelab_core::agentstatus::Tailscale {
                    state: "Running".into(),
                    online: true,
                    peers: vec![],
                }),
                ..Default::default()
            }),
            config_commit: Some("3f2a91c0d0a1b2c3d4e5f60718293a4b5c6d7e8f".into()),
        };
        let text = render(&status, at("2026-11-22T11:00:00Z"));
        assert!(
            text.contains("running, not connected to the broker (as of 5 s ago)"),
            "{text}"
        );
        assert!(text.contains("412 events, 180000 bytes"), "{text}");
        assert!(
            text.contains("2026-11-22T09:00:00.000Z (2 h 0 min ago)"),
            "{text}"
        );
        assert!(text.contains("421 given out, 9 acknowledged"), "{text}");
        assert!(text.contains("load:            0.50 0.25 1.00"), "{text}");
        assert!(text.contains("1.5 of 4.0 GB available"), "{text}");
        assert!(text.contains("up:              1 d 1 h"), "{text}");
        assert!(
            text.contains("disk:            / 91.5% used, 2.5 GB free"),
            "{text}"
        );
        assert!(
            text.contains("link:            310 ms, 4% late; no outage since the agent started"),
            "{text}"
        );
        assert!(text.contains("tailscale:       Running, online"), "{text}");
        assert!(
            text.contains("config:          from commit 3f2a91c"),
            "{text}"
        );
        let back: AgentStatus =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        assert_eq!(back, status);
    }
}
