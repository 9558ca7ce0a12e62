//! What the control plane gives each agent from the repo, on
//! `<prefix>/config/<node>` (retained): the node's health checks (with the
//! scripts' text), the MQTT brokers its services depend on, its disk
//! thresholds and mounts, its Compose. An agent has no checkout of the
//! repo; it keeps the last config it got in its root and runs on it until
//! a newer one comes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::command::sha256_hex;
use crate::desired::{ComposeVersion, Desired};
use crate::name::Name;

pub const MAX_CONFIG_BYTES: usize = 512 * 1024;
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub v: u32,
    pub node: Name,
    /// SHA-256 of everything else: the agent applies a config only when
    /// this changes.
    pub revision: String,
    #[serde(default)]
    pub healthchecks: Vec<HealthcheckSpec>,
    #[serde(default)]
    pub mqtt_brokers: Vec<BrokerSpec>,
    #[serde(default)]
    pub disk: DiskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<ComposeVersion>,
    /// When the control plane issued it (fleet mode, signed with it): an
    /// agent refuses a config older than the one it has, so an old signed
    /// config replayed on its topic cannot take a newer one back. Not part
    /// of the revision.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::option"
    )]
    pub issued_at: Option<crate::time::Timestamp>,
    /// The commit of the desired state it was built from (a git source).
    /// Not part of the revision: a commit that leaves the node's config as
    /// it was restarts nothing on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckSpec {
    pub service: Name,
    /// The script's text (`services/<service>/<script>`), run with `sh`.
    pub script: String,
    pub sha256: String,
    pub interval_secs: u64,
    pub timeout_secs: u64,
    /// Failures in a row before the service counts as unhealthy.
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// The service that provides the broker (restarted when it does not
    /// answer).
    pub service: Name,
    /// `host:port`, as the node reaches it.
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_pct: Option<f64>,
    #[serde(default)]
    pub mounts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is {0} bytes, at most {MAX_CONFIG_BYTES} allowed")]
    TooLarge(usize),
    #[error("malformed config: {0}")]
    Malformed(String),
    #[error("config is for node {got}, not {want}")]
    OtherNode { got: Name, want: Name },
    #[error("config revision does not match its content")]
    Revision,
}

impl NodeConfig {
    /// The config of `node` from `desired`; `scripts` holds the text of
    /// each service's health check script, by service. A service whose
    /// script is missing from `scripts` gets no health check.
    pub fn build(node: &Name, desired: &Desired, scripts: &BTreeMap<Name, String>) -> NodeConfig {
        let services = desired.hosts.get(node);
        let mut healthchecks = Vec::new();
        let mut mqtt_brokers = Vec::new();
        for (service, spec) in services.into_iter().flatten() {
            if !spec.monitor {
                continue;
            }
            let check = desired
                .services
                .get(service)
                .and_then(|d| d.healthcheck.as_ref());
            if let (Some(check), Some(script)) = (check, scripts.get(service)) {
                healthchecks.push(HealthcheckSpec {
                    service: service.clone(),
                    sha256: sha256_hex(script.as_bytes()),
                    script: script.clone(),
                    interval_secs: check.interval.unwrap_or(DEFAULT_INTERVAL).as_secs().max(1),
                    timeout_secs: check.timeout.unwrap_or(DEFAULT_TIMEOUT).as_secs().max(1),
                    retries: check.retries.unwrap_or(DEFAULT_RETRIES).max(1),
                });
            }
            if let Some(address) = &spec.mqtt_broker {
                mqtt_brokers.push(BrokerSpec {
                    service: service.clone(),
                    address: address.clone(),
                });
            }
        }
        let capabilities = desired.capabilities.get(node);
        let disk = capabilities
            .and_then(|c| c.disk.as_ref())
            .map(|d| DiskSpec {
                high_pct: d.high,
                low_pct: d.low,
                mounts: d.mounts.clone(),
            })
            .unwrap_or_default();
        let mut config = NodeConfig {
            v: 1,
            node: node.clone(),
            revision: String::new(),
            healthchecks,
            mqtt_brokers,
            disk,
            compose: capabilities.and_then(|c| c.docker_compose),
            issued_at: None,
            commit: None,
        };
        config.revision = config.digest();
        config
    }

    pub fn digest(&self) -> String {
        let mut copy = self.clone();
        copy.revision.clear();
        copy.issued_at = None;
        copy.commit = None;
        sha256_hex(&serde_json::to_vec(&copy).expect("config serializes"))
    }

    /// Parses and checks a config for `me`: its size, its shape, its node,
    /// that its revision matches its content, and every script and address.
    pub fn from_payload(payload: &[u8], me: &Name) -> Result<NodeConfig, ConfigError> {
        if payload.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge(payload.len()));
        }
        let config: NodeConfig =
            serde_json::from_slice(payload).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        if config.v != 1 {
            return Err(ConfigError::Malformed(format!("version {}", config.v)));
        }
        if &config.node != me {
            return Err(ConfigError::OtherNode {
                got: config.node,
                want: me.clone(),
            });
        }
        for check in &config.healthchecks {
            if check.script.len() > MAX_SCRIPT_BYTES
                || sha256_hex(check.script.as_bytes()) != check.sha256
            {
                return Err(ConfigError::Malformed(format!(
                    "health check script of {} is too large or does not match its sha256",
                    check.service
                )));
            }
        }
        if let Some(bad) = config
            .mqtt_brokers
            .iter()
            .find(|b| !crate::desired::host_port_ok(&b.address))
        {
            return Err(ConfigError::Malformed(format!(
                "broker address {:?} of {} is not host:port",
                bad.address, bad.service
            )));
        }
        if let Some(bad) = config.disk.mounts.iter().find(|m| !m.starts_with('/')) {
            return Err(ConfigError::Malformed(format!(
                "disk mount {bad:?} is not absolute"
            )));
        }
        if config.digest() != config.revision {
            return Err(ConfigError::Revision);
        }
        Ok(config)
    }

    /// The config of a node the repo says nothing about.
    pub fn empty(node: &Name) -> NodeConfig {
        NodeConfig::build(node, &Desired::default(), &BTreeMap::new())
    }

    /// Whether this config, with other content than `current`, was issued
    /// before it: a replay of an older one. Configs without an issue time
    /// (open mode, or stored by an older agent) are never stale.
    pub fn is_stale(&self, current: &NodeConfig) -> bool {
        match (self.issued_at, current.issued_at) {
            (Some(new), Some(old)) => new < old && self.revision != current.revision,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Capabilities, DiskPolicy, Healthcheck, ServiceDef, ServiceSpec};

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn desired() -> Desired {
        let mut d = Desired::default();
        let spec = |monitor: bool, broker: Option<&str>| ServiceSpec {
            monitor,
            mqtt_broker: broker.map(String::from),
            ..Default::default()
        };
        d.hosts.insert(
            n("piha"),
            [
                (n("mosquitto"), spec(true, Some("127.0.0.1:1883"))),
                (n("z2m"), spec(true, None)),
                (n("quiet"), spec(false, Some("127.0.0.1:1884"))),
                (n("nocheck"), spec(true, None)),
            ]
            .into_iter()
            .collect(),
        );
        let check = |retries| ServiceDef {
            healthcheck: Some(Healthcheck {
                script: "healthcheck.sh".into(),
                interval: Some(Duration::from_secs(5)),
                timeout: None,
                retries,
            }),
            ..Default::default()
        };
        d.services.insert(n("z2m"), check(Some(2)));
        d.services.insert(n("quiet"), check(None));
        d.services.insert(n("nocheck"), check(None));
        d.capabilities.insert(
            n("piha"),
            Capabilities {
                docker_compose: Some(ComposeVersion::V1),
                disk: Some(DiskPolicy {
                    high: Some(85.0),
                    mounts: vec!["/srv".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        d
    }

    #[test]
    fn built_from_the_repo_and_checked_by_the_agent() {
        let scripts: BTreeMap<Name, String> = [
            (n("z2m"), "exit 0\n".to_string()),
            (n("quiet"), "exit 0\n".to_string()),
        ]
        .into_iter()
        .collect();
        let config = NodeConfig::build(&n("piha"), &desired(), &scripts);
        // Only monitored services; a check without its script is left out.
        assert_eq!(config.healthchecks.len(), 1);
        let check = &config.healthchecks[0];
        assert_eq!(
            (
                check.service.as_str(),
                check.interval_secs,
                check.timeout_secs,
                check.retries
            ),
            ("z2m", 5, 10, 2)
        );
        assert_eq!(
            config.mqtt_brokers,
            [BrokerSpec {
                service: n("mosquitto"),
                address: "127.0.0.1:1883".into()
            }]
        );
        assert_eq!(config.disk.high_pct, Some(85.0));
        assert_eq!(config.compose, Some(ComposeVersion::V1));

        let payload = serde_json::to_vec(&config).unwrap();
        assert_eq!(
            NodeConfig::from_payload(&payload, &n("piha")).unwrap(),
            config
        );
        // The same repo, the same revision; a change, another.
        assert_eq!(
            NodeConfig::build(&n("piha"), &desired(), &scripts).revision,
            config.revision
        );
        let mut other = scripts.clone();
        other.insert(n("z2m"), "exit 1\n".into());
        assert_ne!(
            NodeConfig::build(&n("piha"), &desired(), &other).revision,
            config.revision
        );

        let text = String::from_utf8(payload).unwrap();
        let cases = [
            (
                text.replace("exit 0", "exit 7"),
                "does not match its sha256",
            ),
            (
                text.replace("\"retries\":2", "\"retries\":3"),
                "revision does not match",
            ),
            (
                text.replace("127.0.0.1:1883", "nowhere"),
                "is not host:port",
            ),
            (text.replace("\"v\":1", "\"v\":2"), "version 2"),
            ("{".to_string(), "malformed"),
            (
                text.replace("\"disk\"", "\"colour\":1,\"disk\""),
                "unknown field",
            ),
        ];
        for (payload, want) in cases {
            let got = NodeConfig::from_payload(payload.as_bytes(), &n("piha"))
                .unwrap_err()
                .to_string();
            assert!(got.contains(want), "{got} vs {want}");
        }
        let got = NodeConfig::from_payload(text.as_bytes(), &n("vps"))
            .unwrap_err()
            .to_string();
        assert_eq!(got, "config is for node piha, not vps");
        let empty = NodeConfig::empty(&n("vps"));
        assert!(empty.healthchecks.is_empty() && empty.mqtt_brokers.is_empty());
    }

    #[test]
    fn an_older_config_with_other_content_is_stale() {
        let at = |secs: i64| chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0);
        let config = |revision: &str, issued: Option<i64>| {
            let mut c = NodeConfig::empty(&n("piha"));
            c.revision = revision.into();
            c.issued_at = issued.and_then(at);
            c
        };
        // (new, current, stale)
        let cases = [
            (config("a", Some(10)), config("b", Some(20)), true),
            (config("a", Some(20)), config("b", Some(10)), false),
            // The same content again (a supervisor restarted): harmless.
            (config("b", Some(10)), config("b", Some(20)), false),
            (config("a", None), config("b", Some(20)), false),
            (config("a", Some(10)), config("b", None), false),
        ];
        for (new, current, stale) in cases {
            assert_eq!(new.is_stale(&current), stale, "{new:?} after {current:?}");
        }
        // The issue time is not part of the revision.
        let mut issued = NodeConfig::empty(&n("piha"));
        issued.issued_at = at(5);
        assert_eq!(issued.digest(), NodeConfig::empty(&n("piha")).revision);
    }
}
