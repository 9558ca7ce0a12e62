//! The node's uplink beyond Docker: on an edge site the mesh is what breaks
//! first. Where `tailscale` is installed, the agent reads `tailscale status
//! --json` every `--tailscale-interval` and says, each once when it begins
//! and once when it ends:
//!
//! - `tailscale_down` / `tailscale_recovered`: Tailscale is not `Running`,
//!   this node is offline in the tailnet, or its status cannot be read;
//! - `peer_unreachable` / `peer_recovered` (`data.peer`): a peer this node
//!   needs is offline or missing from the tailnet. The peers it needs are
//!   the broker's host when that is a tailnet peer (by name, MagicDNS name
//!   or Tailscale address), and every `--tailscale-peer`. Peers are judged
//!   only while Tailscale itself is up (its being down says it all).
//!
//! A peer is reached `direct <address>` (Tailscale's `CurAddr`) or through
//! a DERP relay (`relay <region>`), which is slower and worth knowing.
//!
//! Pure: [`parse`] reads the JSON as Tailscale documents it (the
//! `ipnstate.Status` shape: `BackendState`, `Self`, `Peer`, each peer's
//! `HostName`, `DNSName`, `TailscaleIPs`, `Online`, `CurAddr`, `Relay`;
//! other fields ignored), [`Rules::look`] decides what to say. The loop in
//! `lib.rs` runs the command.

use std::collections::{BTreeMap, BTreeSet};

use homelab_core::agentstatus::{Tailscale, TailscalePeer};
use homelab_core::Severity;
use serde::Deserialize;
use serde_json::{json, Value};

use homelab_core::event::kinds::{
    PEER_RECOVERED, PEER_UNREACHABLE, TAILSCALE_DOWN, TAILSCALE_RECOVERED,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Status {
    pub backend_state: String,
    #[serde(rename = "Self")]
    pub me: Option<Peer>,
    pub peer: BTreeMap<String, Peer>,
    pub health: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Peer {
    pub host_name: String,
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    #[serde(rename = "TailscaleIPs")]
    pub tailscale_ips: Vec<String>,
    pub online: bool,
    pub cur_addr: String,
    pub relay: String,
}

impl Peer {
    /// Whether `wanted` (a host name, MagicDNS name or address) names it.
    fn is(&self, wanted: &str) -> bool {
        let wanted = wanted.trim_end_matches('.').to_ascii_lowercase();
        let dns = self.dns_name.trim_end_matches('.').to_ascii_lowercase();
        self.host_name.eq_ignore_ascii_case(&wanted)
            || (!dns.is_empty()
                && (dns == wanted || dns.split('.').next() == Some(wanted.as_str())))
            || self.tailscale_ips.iter().any(|ip| ip == &wanted)
    }

    fn name(&self) -> String {
        if !self.host_name.is_empty() {
            return self.host_name.clone();
        }
        let dns = self.dns_name.trim_end_matches('.');
        dns.split('.').next().unwrap_or(dns).to_string()
    }

    fn path(&self) -> String {
        match (self.cur_addr.is_empty(), self.relay.is_empty()) {
            (false, _) => format!("direct {}", self.cur_addr),
            (true, false) => format!("relay {}", self.relay),
            (true, true) => "unknown".into(),
        }
    }
}

/// What `tailscale status --json` printed; an error says why it is not a
/// status.
pub fn parse(json: &[u8]) -> Result<Status, String> {
    serde_json::from_slice(json).map_err(|e| format!("tailscale status --json: {e}"))
}

/// The peers this node needs: the broker's host if it is a peer, and the
/// ones named.
pub fn needed(broker_host: &str, named: &[String], status: &Status) -> Vec<String> {
    let mut out: Vec<String> = named.to_vec();
    if status.peer.values().any(|p| p.is(broker_host)) {
        out.push(broker_host.to_string());
    }
    out.sort();
    out.dedup();
    out
}

/// For the agent's status.
pub fn summary(status: &Result<Status, String>, needed: &[String]) -> Tailscale {
    match status {
        Err(why) => Tailscale {
            state: why.clone(),
            online: false,
            peers: Vec::new(),
        },
        Ok(status) => Tailscale {
            state: status.backend_state.clone(),
            online: status.me.as_ref().is_some_and(|me| me.online),
            peers: needed
                .iter()
                .map(|wanted| match find(status, wanted) {
                    Some(peer) => TailscalePeer {
                        name: peer.name(),
                        online: peer.online,
                        path: peer.path(),
                    },
                    None => TailscalePeer {
                        name: wanted.clone(),
                        online: false,
                        path: "not in the tailnet".into(),
                    },
                })
                .collect(),
        },
    }
}

fn find<'a>(status: &'a Status, wanted: &str) -> Option<&'a Peer> {
    status.peer.values().find(|p| p.is(wanted))
}

/// One thing to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Said {
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    pub data: Value,
}

/// What was said last: each problem once when it begins, once when it ends.
#[derive(Debug, Default)]
pub struct Rules {
    down: Option<String>,
    unreachable: BTreeSet<String>,
}

/// Why Tailscale counts as down, if it does.
fn down_because(status: &Result<Status, String>) -> Option<String> {
    match status {
        Err(why) => Some(why.clone()),
        Ok(s) if s.backend_state != "Running" => Some(match s.backend_state.as_str() {
            "" | "NoState" => "tailscaled is not running".into(),
            "NeedsLogin" => "tailscale needs a login (tailscale up)".into(),
            "NeedsMachineAuth" => "this machine waits for approval in the admin console".into(),
            state => format!("tailscale is {state}"),
        }),
        Ok(s) if !s.me.as_ref().is_some_and(|me| me.online) => {
            Some("this node is offline in the tailnet (no connection to coordination)".into())
        }
        Ok(_) => None,
    }
}

impl Rules {
    pub fn look(&mut self, status: &Result<Status, String>, needed: &[String]) -> Vec<Said> {
        let mut said = Vec::new();
        match (down_because(status), self.down.take()) {
            (Some(why), None) => {
                let health = status
                    .as_ref()
                    .map(|s| s.health.clone())
                    .unwrap_or_default();
                said.push(Said {
                    kind: TAILSCALE_DOWN,
                    severity: Severity::Warning,
                    message: why.clone(),
                    data: json!({"source": "tailscale", "reason": why, "health": health}),
                });
                self.down = Some(why);
            }
            (Some(why), Some(_)) => self.down = Some(why),
            (None, Some(was)) => said.push(Said {
                kind: TAILSCALE_RECOVERED,
                severity: Severity::Info,
                message: "tailscale is running and this node is online again".into(),
                data: json!({"source": "tailscale", "was": was}),
            }),
            (None, None) => {}
        }
        let Ok(status) = status else {
            return said;
        };
        if self.down.is_some() {
            return said;
        }
        for wanted in needed {
            let peer = find(status, wanted);
            let reachable = peer.is_some_and(|p| p.online);
            let name = peer.map_or_else(|| wanted.clone(), Peer::name);
            match (reachable, self.unreachable.contains(wanted)) {
                (false, false) => {
                    let why = match peer {
                        Some(_) => format!("peer {name} is offline in the tailnet"),
                        None => format!("peer {name} is not in this node's tailnet"),
                    };
                    said.push(Said {
                        kind: PEER_UNREACHABLE,
                        severity: Severity::Warning,
                        message: why,
                        data: json!({"source": "tailscale", "peer": name}),
                    });
                    self.unreachable.insert(wanted.clone());
                }
                (true, true) => {
                    let path = peer.map(Peer::path).unwrap_or_default();
                    said.push(Said {
                        kind: PEER_RECOVERED,
                        severity: Severity::Info,
                        message: format!("peer {name} is reachable again ({path})"),
                        data: json!({"source": "tailscale", "peer": name, "path": path}),
                    });
                    self.unreachable.remove(wanted);
                }
                _ => {}
            }
        }
        // A peer no longer needed is no longer judged.
        self.unreachable.retain(|p| needed.contains(p));
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as `tailscale status --json` prints it (trimmed to what
    /// matters, plus fields we ignore).
    fn status(state: &str, online: bool, peers: &[(&str, bool, &str, &str)]) -> Vec<u8> {
        let peer: serde_json::Map<String, Value> = peers
            .iter()
            .enumerate()
            .map(|(i, (host, online, cur, relay))| {
                (
                    format!("nodekey:{i:064x}"),
                    json!({
                        "ID": format!("n{i}"), "HostName": host,
                        "DNSName": format!("{host}.tail1234.ts.net."),
                        "TailscaleIPs": [format!("100.64.0.{}", i + 2), "fd7a:115c:a1e0::2"],
                        "Online": online, "CurAddr": cur, "Relay": relay,
                        "RxBytes": 1024, "TxBytes": 2048, "Active": true,
                        "LastSeen": "2026-12-06T10:00:00Z", "OS": "linux",
                    }),
                )
            })
            .collect();
        json!({
            "Version": "1.78.1-t1234", "TUN": true, "BackendState": state,
            "AuthURL": "", "TailscaleIPs": ["100.64.0.1"],
            "Self": {"ID": "self", "HostName": "edge1", "DNSName": "edge1.tail1234.ts.net.",
                     "TailscaleIPs": ["100.64.0.1"], "Online": online, "Relay": "fra"},
            "Health": if online { json!([]) } else { json!(["not connected to home DERP region 4"]) },
            "MagicDNSSuffix": "tail1234.ts.net", "Peer": peer, "User": {},
        })
        .to_string()
        .into_bytes()
    }

    fn kinds(said: &[Said]) -> Vec<String> {
        said.iter()
            .map(|s| match s.data.get("peer") {
                Some(p) => format!("{} {}", s.kind, p.as_str().unwrap()),
                None => s.kind.to_string(),
            })
            .collect()
    }

    #[test]
    fn reads_what_tailscale_prints() {
        let s = parse(&status(
            "Running",
            true,
            &[("vps", true, "203.0.113.5:41641", "fra")],
        ))
        .unwrap();
        assert_eq!(s.backend_state, "Running");
        let peers = vec!["vps".to_string()];
        let summary = summary(&Ok(s), &peers);
        assert!(summary.online);
        assert_eq!(summary.peers[0].path, "direct 203.0.113.5:41641");
        assert!(parse(b"tailscaled not running").is_err());
    }

    #[test]
    fn the_peers_needed_are_the_brokers_host_and_the_named() {
        let s = parse(&status(
            "Running",
            true,
            &[("vps", true, "", "fra"), ("nas", true, "", "")],
        ))
        .unwrap();
        let named = vec!["nas".to_string()];
        for (broker, want) in [
            ("vps", vec!["nas", "vps"]),
            ("vps.tail1234.ts.net", vec!["nas", "vps.tail1234.ts.net"]),
            ("100.64.0.2", vec!["100.64.0.2", "nas"]),
            // Not a peer (the broker is reached otherwise).
            ("127.0.0.1", vec!["nas"]),
            ("ctl.example.net", vec!["nas"]),
        ] {
            assert_eq!(needed(broker, &named, &s), want, "{broker}");
        }
    }

    #[test]
    fn each_problem_is_said_when_it_begins_and_when_it_ends() {
        let peers = vec!["vps".to_string()];
        let look = |rules: &mut Rules, json: Vec<u8>| kinds(&rules.look(&parse(&json), &peers));
        let mut rules = Rules::default();
        let up = || status("Running", true, &[("vps", true, "", "fra")]);
        assert_eq!(look(&mut rules, up()), Vec::<String>::new());
        // The peer goes offline: said once.
        let peer_off = || status("Running", true, &[("vps", false, "", "fra")]);
        assert_eq!(look(&mut rules, peer_off()), vec!["peer_unreachable vps"]);
        assert_eq!(look(&mut rules, peer_off()), Vec::<String>::new());
        // Tailscale goes down: said once; peers are not judged meanwhile.
        let down = || status("Stopped", false, &[]);
        assert_eq!(look(&mut rules, down()), vec!["tailscale_down"]);
        assert_eq!(look(&mut rules, down()), Vec::<String>::new());
        // Back, and the peer too.
        assert_eq!(
            look(&mut rules, up()),
            vec!["tailscale_recovered", "peer_recovered vps"]
        );
        // Online in name but not in the tailnet (no coordination server).
        assert_eq!(
            look(&mut rules, status("Running", false, &[])),
            vec!["tailscale_down"]
        );
        // The command fails: down, with why; it is already down.
        let failed: Result<Status, String> = Err("tailscale status: exit 1".into());
        assert!(rules.look(&failed, &peers).is_empty());
        assert_eq!(look(&mut rules, up()), vec!["tailscale_recovered"]);
        // A peer that left the tailnet.
        assert_eq!(
            look(&mut rules, status("Running", true, &[])),
            vec!["peer_unreachable vps"]
        );
    }

    #[test]
    fn why_it_is_down() {
        for (state, online, why) in [
            ("NoState", false, "tailscaled is not running"),
            (
                "NeedsLogin",
                false,
                "tailscale needs a login (tailscale up)",
            ),
            ("Stopped", false, "tailscale is Stopped"),
            (
                "Running",
                false,
                "this node is offline in the tailnet (no connection to coordination)",
            ),
        ] {
            let said = Rules::default().look(&parse(&status(state, online, &[])), &[]);
            assert_eq!(said[0].message, why, "{state}");
            assert_eq!(said[0].severity, Severity::Warning);
        }
    }

    #[test]
    fn a_relayed_peer_says_so() {
        let s = parse(&status("Running", true, &[("vps", true, "", "fra")])).unwrap();
        let t = summary(&Ok(s), &["vps".to_string(), "gone".to_string()]);
        assert_eq!(t.peers[0].path, "relay fra");
        assert_eq!(
            (
                t.peers[1].name.as_str(),
                t.peers[1].online,
                t.peers[1].path.as_str()
            ),
            ("gone", false, "not in the tailnet")
        );
    }
}
