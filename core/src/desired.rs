//! Desired state: the homelab repo (`inventory/topology.yaml`,
//! `inventory/maintenance.yaml`, `hosts/<node>/services.yaml`,
//! `hosts/<node>/capabilities.yaml`, `services/<service>/service.yaml`).
//! docs/desired-state.md is the user's reference.
//!
//! Loading never guesses: a file that does not parse, an unknown field, a bad
//! name, a reference to a node or service that does not exist, a name given
//! twice is a [`Problem`] with its file and line, and [`load`] returns every
//! problem it found instead of a partial desired state. Callers keep their
//! last good one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::maintenance::{self, Window};
use crate::name::Name;

mod check;
mod read;
pub use check::check;
pub use read::{read, Raw, RawDir, RawFile};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default, deserialize_with = "unique_map")]
    pub nodes: BTreeMap<Name, NodeSpec>,
}

impl Topology {
    /// Maps an alias (`node-1`) to its canonical node name (`vps`); other
    /// names map to themselves.
    pub fn canonical(&self, node: &Name) -> Name {
        if self.nodes.contains_key(node) {
            return node.clone();
        }
        self.nodes
            .iter()
            .find(|(_, spec)| spec.aliases.contains(node))
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| node.clone())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub aliases: Vec<Name>,
    #[serde(default)]
    pub offline_first: bool,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Remediation {
    Off,
    #[default]
    Propose,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exposure {
    /// Reachable only inside the host or its Docker networks.
    Internal,
    /// Reachable on the home network.
    Lan,
    /// Reachable from the internet (through a reverse proxy or tunnel).
    Public,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default = "yes")]
    pub monitor: bool,
    #[serde(default)]
    pub remediation: Remediation,
    #[serde(
        default,
        deserialize_with = "duration_opt",
        serialize_with = "ser_duration_opt"
    )]
    pub grace_period: Option<Duration>,
    #[serde(default)]
    pub exposure: Option<Exposure>,
    #[serde(default)]
    pub description: Option<String>,
    /// The service is an MQTT broker other services of the node depend on,
    /// answering at this `host:port` (seen from the node): the agent checks
    /// it answers an MQTT CONNECT.
    #[serde(default)]
    pub mqtt_broker: Option<String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            monitor: true,
            remediation: Remediation::Propose,
            grace_period: None,
            exposure: None,
            description: None,
            mqtt_broker: None,
        }
    }
}

/// Whether `raw` is a `host:port` an agent can dial: a port in 1..=65535
/// and a host of letters, digits, `.`, `-`, `_` or a bracketed IPv6.
pub fn host_port_ok(raw: &str) -> bool {
    let Some((host, port)) = raw.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    port_ok && host_ok
}

/// A map in which a key given twice is an error, not "the last one wins".
fn unique_map<'de, D, V>(d: D) -> Result<BTreeMap<Name, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visit<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
        type Value = BTreeMap<Name, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(raw) = map.next_key::<String>()? {
                let key = Name::parse(&raw)
                    .map_err(|e| serde::de::Error::custom(format!("bad name {raw:?}: {e}")))?;
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate entry {key}")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visit(std::marker::PhantomData))
}

fn yes() -> bool {
    true
}

fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw = String::deserialize(d)?;
    crate::time::parse_duration(&raw)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn ser_duration_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format!("{}s", d.as_secs())),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    #[serde(default, deserialize_with = "unique_map")]
    services: BTreeMap<Name, ServiceSpec>,
}

/// `services/<service>/service.yaml`: what a service is, wherever it runs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    #[serde(default)]
    pub description: Option<String>,
    /// The one node that runs it; listing it for another node is an error.
    /// None: any node may run it (an agent, an exporter).
    #[serde(default)]
    pub owner: Option<Name>,
    /// Services it needs running (anywhere in the homelab).
    #[serde(default)]
    pub depends_on: Vec<Name>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Absolute host paths holding its data: kept by redeploy and cleanup,
    /// what a backup must cover.
    #[serde(default)]
    pub persistence: Vec<String>,
    /// Names of the environment variables it needs; the values live in the
    /// runtime root's `config/`, never in git.
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// A script in the service folder; exits 0 when the service answers.
    pub script: String,
    #[serde(
        default,
        deserialize_with = "duration_opt",
        serialize_with = "ser_duration_opt"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "duration_opt",
        serialize_with = "ser_duration_opt"
    )]
    pub timeout: Option<Duration>,
    /// Failures in a row before the service counts as unhealthy.
    #[serde(default)]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure,
    #[default]
    UnlessStopped,
}

/// `hosts/<node>/capabilities.yaml`: what a node offers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub arch: Option<Arch>,
    /// Which Compose the node has: `v1` (`docker-compose`) or `v2`
    /// (`docker compose`); absent: the agent detects it.
    #[serde(default)]
    pub docker_compose: Option<ComposeVersion>,
    #[serde(default)]
    pub uplink: Option<Uplink>,
    #[serde(default)]
    pub disk_gb: Option<u32>,
    #[serde(default)]
    pub memory_gb: Option<u32>,
    #[serde(default)]
    pub public_ip: bool,
    /// Device files services may be given (`/dev/ttyUSB0`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// How the agent watches its disks and what a cleanup removes.
    #[serde(default)]
    pub disk: Option<DiskPolicy>,
}

/// `disk:` in `capabilities.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskPolicy {
    /// `disk_pressure high` at or above this percentage of a filesystem.
    #[serde(default)]
    pub high: Option<f64>,
    /// `disk_pressure low` again at or below this percentage.
    #[serde(default)]
    pub low: Option<f64>,
    /// Filesystems watched besides `/` and Docker's data root.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// A cleanup removes stopped containers only once they are this old.
    #[serde(
        default,
        deserialize_with = "duration_opt",
        serialize_with = "ser_duration_opt"
    )]
    pub cleanup_older_than: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    Armv7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComposeVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Uplink {
    Wired,
    Wifi,
    Lte,
}

/// The whole desired state of a repo.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub topology: Topology,
    /// Desired services per canonical node name.
    pub hosts: BTreeMap<Name, BTreeMap<Name, ServiceSpec>>,
    /// Every service defined under `services/`.
    pub services: BTreeMap<Name, ServiceDef>,
    pub capabilities: BTreeMap<Name, Capabilities>,
    pub maintenance: Vec<Window>,
    /// Nodes whose desired services are not known (their files do not load
    /// and nothing good was read before): nothing is proposed or cancelled
    /// for them.
    pub frozen: BTreeSet<Name>,
}

/// What a repo with problems still says: everything that loaded, and which
/// parts did not.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// What loaded; a host listed in `bad_hosts` is left out of `hosts`.
    pub desired: Desired,
    /// Every problem, sorted by file and line.
    pub problems: Vec<Problem>,
    /// The inventory does not load: nothing in the repo can be judged.
    pub inventory_bad: bool,
    /// Hosts whose own files have problems, or that list a service whose
    /// definition has one.
    pub bad_hosts: BTreeSet<Name>,
    /// `inventory/maintenance.yaml` has problems.
    pub maintenance_bad: bool,
}

impl Loaded {
    /// This load where it is good, and `last` (the previous result) for
    /// each part that is not; a bad host with nothing good before is frozen.
    /// `None` when nothing can be judged (the inventory does not load and
    /// nothing loaded before).
    pub fn or_last_good(self, last: Option<&Desired>) -> Option<Desired> {
        if self.inventory_bad {
            return last.cloned();
        }
        let mut desired = self.desired;
        for node in &self.bad_hosts {
            match last.and_then(|l| l.hosts.get(node).map(|h| (l, h))) {
                Some((last, services)) if !last.frozen.contains(node) => {
                    for service in services.keys() {
                        if let Some(def) = last.services.get(service) {
                            desired
                                .services
                                .entry(service.clone())
                                .or_insert(def.clone());
                        }
                    }
                    desired.hosts.insert(node.clone(), services.clone());
                }
                _ => {
                    desired.hosts.remove(node);
                    desired.frozen.insert(node.clone());
                }
            }
        }
        if self.maintenance_bad {
            desired.maintenance = last.map(|l| l.maintenance.clone()).unwrap_or_default();
        }
        Some(desired)
    }
}

impl Desired {
    /// Maps an alias (`node-1`) to its canonical node name (`vps`); other
    /// names map to themselves.
    pub fn canonical(&self, node: &Name) -> Name {
        self.topology.canonical(node)
    }

    /// The maintenance window covering `node` (and `service`) at `now`.
    pub fn in_maintenance(
        &self,
        node: &Name,
        service: Option<&Name>,
        now: crate::time::Timestamp,
    ) -> Option<maintenance::Active> {
        maintenance::active(&self.maintenance, node, service, now)
    }
}

/// Loads and checks the repo at `repo`: every problem, or the desired state.
pub fn load(repo: &Path) -> Result<Desired, Vec<Problem>> {
    let loaded = load_partial(repo);
    if loaded.problems.is_empty() {
        Ok(loaded.desired)
    } else {
        Err(loaded.problems)
    }
}

/// Loads and checks the repo at `repo`, keeping whatever loads: a bad file
/// spoils only what it describes. [`read`] then [`check`].
pub fn load_partial(repo: &Path) -> Loaded {
    check(&read(repo))
}

fn problem(path: &Path, line: Option<usize>, message: String) -> Problem {
    Problem {
        path: path.to_path_buf(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const TOPOLOGY: &str = "nodes:\n  vps: {role: edge, aliases: [node-1]}\n  piha: {role: home}\n";

    /// A repo with the topology above and a definition for each service.
    fn with_defs<'a>(services: &[&'a str], files: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> =
            vec![("inventory/topology.yaml".into(), TOPOLOGY.into())];
        for s in services {
            all.push((format!("services/{s}/service.yaml"), String::new()));
        }
        for (p, t) in files {
            all.retain(|(q, _)| q != p);
            all.push((p.to_string(), t.to_string()));
        }
        all
    }

    fn problems_in(files: &[(String, String)]) -> Vec<String> {
        let borrowed: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        problems(&borrowed)
    }

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        let dir = repo(files);
        match load(dir.path()) {
            Ok(_) => vec![],
            Err(problems) => problems
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}: {}",
                        p.path.strip_prefix(dir.path()).unwrap().display(),
                        p.line.unwrap_or(0),
                        p.message
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn loads_services_and_aliases() {
        let dir = repo(&[
            ("inventory/topology.yaml", TOPOLOGY),
            (
                "hosts/vps/services.yaml",
                "services:\n  mosquitto: {exposure: internal, remediation: auto, grace_period: 30s}\n  homeassistant: {monitor: false}\n",
            ),
            ("services/mosquitto/service.yaml", "owner: vps\nrestart: always\n"),
            ("services/homeassistant/service.yaml", "depends_on: [mosquitto]\n"),
        ]);
        let desired = load(dir.path()).unwrap();
        let vps = &desired.hosts[&Name::parse("vps").unwrap()];
        let mosquitto = &vps[&Name::parse("mosquitto").unwrap()];
        assert_eq!(mosquitto.remediation, Remediation::Auto);
        assert_eq!(mosquitto.grace_period, Some(Duration::from_secs(30)));
        assert!(!vps[&Name::parse("homeassistant").unwrap()].monitor);
        assert_eq!(
            desired.services[&Name::parse("mosquitto").unwrap()].restart,
            RestartPolicy::Always
        );
        assert_eq!(
            desired.canonical(&Name::parse("node-1").unwrap()).as_str(),
            "vps"
        );
        assert_eq!(
            desired.canonical(&Name::parse("other").unwrap()).as_str(),
            "other"
        );
    }

    #[test]
    fn every_problem_has_file_and_line() {
        let got = problems_in(&with_defs(
            &["mosquitto"],
            &[
                (
                    "hosts/vps/services.yaml",
                    "services:\n  mosquitto:\n    exposure: internal\n    colour: blue\n",
                ),
                (
                    "hosts/piha/services.yaml",
                    "services:\n  mosquitto: {grace_period: 30}\n",
                ),
                ("hosts/saturn/services.yaml", "services: {}\n"),
            ],
        ));
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(
            got[0].starts_with("hosts/piha/services.yaml:2: "),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("hosts/saturn:0: node saturn is not in inventory"),
            "{got:#?}"
        );
        assert!(
            got[2].starts_with("hosts/vps/services.yaml:4: ")
                && got[2].contains("unknown field `colour`"),
            "{got:#?}"
        );
    }

    #[test]
    fn mqtt_broker_addresses() {
        let cases = [
            ("127.0.0.1:1883", true),
            ("mosquitto:1883", true),
            ("[::1]:8883", true),
            ("broker.lan:0", false),
            ("broker.lan", false),
            (":1883", false),
            ("a b:1883", false),
            ("[zz]:1883", false),
            ("host:99999", false),
        ];
        for (raw, ok) in cases {
            assert_eq!(host_port_ok(raw), ok, "{raw}");
        }
        let got = problems_in(&with_defs(
            &["mosquitto"],
            &[(
                "hosts/vps/services.yaml",
                "services:\n  mosquitto:\n    mqtt_broker: nowhere\n",
            )],
        ));
        assert_eq!(
            got,
            ["hosts/vps/services.yaml:3: service mosquitto: mqtt_broker \"nowhere\" must be host:port"]
        );
    }

    #[test]
    fn disk_policy_in_capabilities() {
        let cases: &[(&str, &[&str])] = &[
            ("disk: {high: 85, low: 70, mounts: [/srv], cleanup_older_than: 2h}\n", &[]),
            ("disk: {}\n", &[]),
            (
                "disk: {mounts: [srv, /srv, /srv]}\n",
                &[
                    "hosts/vps/capabilities.yaml:1: disk mount \"srv\" must be an absolute path",
                    "hosts/vps/capabilities.yaml:1: disk mount /srv is listed twice",
                ],
            ),
            (
                "disk:\n  high: 70\n  low: 80\n",
                &["hosts/vps/capabilities.yaml:1: disk thresholds must be percentages with low below high (high 70, low 80)"],
            ),
            ("disk: {high: 190}\n", &["hosts/vps/capabilities.yaml:1: disk thresholds must be percentages with low below high (high 190, low 80)"]),
            ("disk: {cleanup_older_than: soon}\n", &["hosts/vps/capabilities.yaml:1: "]),
        ];
        for (text, want) in cases {
            let got = problems_in(&with_defs(&[], &[("hosts/vps/capabilities.yaml", text)]));
            assert_eq!(got.len(), want.len(), "{text}: {got:#?}");
            for (got, want) in got.iter().zip(want.iter()) {
                assert!(got.starts_with(want), "{text}: {got} vs {want}");
            }
        }
        let dir = repo(&[
            ("inventory/topology.yaml", TOPOLOGY),
            (
                "hosts/vps/capabilities.yaml",
                "disk: {high: 85, mounts: [/srv], cleanup_older_than: 2h}\n",
            ),
        ]);
        let disk = load(dir.path()).unwrap().capabilities[&Name::parse("vps").unwrap()]
            .disk
            .clone()
            .unwrap();
        assert_eq!(disk.high, Some(85.0));
        assert_eq!(disk.low, None);
        assert_eq!(disk.mounts, ["/srv"]);
        assert_eq!(disk.cleanup_older_than, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn references_must_resolve() {
        let got = problems_in(&with_defs(
            &["mosquitto", "zigbee2mqtt"],
            &[
                (
                    "hosts/piha/services.yaml",
                    "services:\n  zigbee2mqtt: {}\n  mosquitto: {}\n  grafana: {}\n",
                ),
                (
                    "services/zigbee2mqtt/service.yaml",
                    "description: z2m\nowner: piha\ndepends_on:\n  - mosquitto\n  - postgres\n",
                ),
                ("services/mosquitto/service.yaml", "owner: vps\n"),
                ("services/npm/service.yaml", "owner: mars\n"),
            ],
        ));
        assert_eq!(
            got,
            vec![
                "hosts/piha/services.yaml:3: service mosquitto belongs to node vps (services/mosquitto/service.yaml), not piha",
                "hosts/piha/services.yaml:4: service grafana is not defined: there is no services/grafana/service.yaml",
                "services/npm/service.yaml:1: owner mars is not a node of inventory/topology.yaml",
                "services/zigbee2mqtt/service.yaml:5: service zigbee2mqtt depends on postgres, which is not defined under services/",
            ]
        );
    }

    #[test]
    fn duplicates_cycles_and_bad_values() {
        let got = problems_in(&with_defs(
            &[],
            &[
                (
                    "inventory/topology.yaml",
                    "nodes:\n  vps: {aliases: [node-1, node-1]}\n  piha: {aliases: [vps]}\n",
                ),
                ("services/a/service.yaml", "depends_on: [b]\n"),
                ("services/b/service.yaml", "depends_on: [c]\n"),
                ("services/c/service.yaml", "depends_on: [a]\n"),
                (
                    "services/d/service.yaml",
                    "depends_on: [d]\nenv: [DB_PASSWORD, db-user, DB_PASSWORD]\npersistence: [/srv/d, ../etc]\nhealthcheck: {script: check.sh}\n",
                ),
                (
                    "hosts/vps/capabilities.yaml",
                    "arch: arm64\ndocker_compose: v1\ndevices: [/dev/ttyUSB0, /etc/passwd]\n",
                ),
            ],
        ));
        let expected = [
            "hosts/vps/capabilities.yaml:3: device \"/etc/passwd\" must be a path under /dev/",
            "inventory/topology.yaml:2: alias node-1 is listed twice",
            "inventory/topology.yaml:3: alias vps of node piha is itself a node",
            "services/a/service.yaml:1: dependency cycle: a -> b -> c -> a",
            "services/d/service.yaml:1: service d depends on itself",
            "services/d/service.yaml:2: env name \"db-user\" must be upper case letters, digits and _",
            "services/d/service.yaml:2: env name DB_PASSWORD is listed twice",
            "services/d/service.yaml:3: persistence path \"../etc\" must be absolute, without . or ..",
            "services/d/service.yaml:4: healthcheck script check.sh does not exist in services/d/",
        ];
        assert_eq!(got, expected, "{got:#?}");
    }

    #[test]
    fn yaml_duplicate_keys_are_an_error() {
        let got = problems_in(&with_defs(
            &["mosquitto"],
            &[(
                "hosts/vps/services.yaml",
                "services:\n  mosquitto: {}\n  mosquitto: {monitor: false}\n",
            )],
        ));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].starts_with("hosts/vps/services.yaml:3: ") && got[0].contains("duplicate"),
            "{got:#?}"
        );
    }

    #[test]
    fn maintenance_windows_are_checked() {
        let got = problems_in(&with_defs(
            &["outline"],
            &[
                ("hosts/vps/services.yaml", "services:\n  outline: {}\n"),
                (
                    "inventory/maintenance.yaml",
                    "windows:\n  - {name: nightly, node: vps, services: [outline], cron: '0 3 * * *', duration: 1h}\n  - {name: nightly, node: mars, cron: '0 4 * * *', duration: 1h}\n  - {name: swap, node: piha, services: [outline], from: 2026-12-05T08:00:00Z}\n",
                ),
            ],
        ));
        assert_eq!(
            got,
            vec![
                "inventory/maintenance.yaml:3: window nightly is listed twice",
                "inventory/maintenance.yaml:3: window nightly: node mars is not in inventory/topology.yaml",
                "inventory/maintenance.yaml:4: window swap: service outline is not in hosts/piha/services.yaml",
                "inventory/maintenance.yaml:4: window swap: a fixed window needs both from and until",
            ],
            "{got:#?}"
        );
        let dir = repo(
            &with_defs(
                &["outline"],
                &[
                    ("hosts/vps/services.yaml", "services:\n  outline: {}\n"),
                    (
                        "inventory/maintenance.yaml",
                        "windows:\n  - {name: nightly, node: vps, services: [outline], cron: '0 3 * * *', duration: 1h}\n",
                    ),
                ],
            )
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect::<Vec<_>>(),
        );
        let desired = load(dir.path()).unwrap();
        let (vps, outline) = (Name::parse("vps").unwrap(), Name::parse("outline").unwrap());
        let at = |s: &str| s.parse().unwrap();
        let active = desired
            .in_maintenance(&vps, Some(&outline), at("2026-12-01T03:10:00Z"))
            .unwrap();
        assert_eq!(active.window.as_str(), "nightly");
        assert!(desired
            .in_maintenance(&vps, None, at("2026-12-01T03:10:00Z"))
            .is_none());
        assert!(desired
            .in_maintenance(&vps, Some(&outline), at("2026-12-01T04:10:00Z"))
            .is_none());
    }

    #[test]
    fn unparsable_is_never_empty() {
        let got = problems(&[
            ("inventory/topology.yaml", TOPOLOGY),
            ("hosts/vps/services.yaml", "services: [\n"),
        ]);
        assert_eq!(got.len(), 1, "{got:#?}");
        let got = problems(&[("inventory/topology.yaml", "nodes:\n  Bad/Name: {}\n")]);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("topology.yaml:2"), "{got:#?}");
        let got = problems(&[]);
        assert!(got[0].contains("cannot read"), "{got:#?}");
    }

    /// One bad host file and one missing service definition freeze only
    /// the hosts they concern; the others follow the repo as it is now.
    #[test]
    fn a_bad_file_spoils_only_what_it_describes() {
        let good = [
            (
                "inventory/topology.yaml",
                "nodes:\n  a: {}\n  b: {}\n  c: {}\n",
            ),
            ("hosts/a/services.yaml", "services:\n  web: {}\n"),
            ("hosts/b/services.yaml", "services:\n  db: {}\n"),
            ("hosts/c/services.yaml", "services:\n  cache: {}\n"),
            ("services/web/service.yaml", ""),
            ("services/db/service.yaml", ""),
            ("services/cache/service.yaml", ""),
        ];
        let last = load(repo(&good).path()).unwrap();

        let mut files = good.to_vec();
        files[1] = ("hosts/a/services.yaml", "services:\n  web: {}\n  api: {}\n");
        files.push(("services/api/service.yaml", ""));
        files[2] = ("hosts/b/services.yaml", "services:\n  db: {bogus: 1}\n");
        files.retain(|(p, _)| *p != "services/cache/service.yaml");
        files.push(("services/cache/README", "no service.yaml"));
        let dir = repo(&files);
        let loaded = load_partial(dir.path());
        assert!(!loaded.inventory_bad);
        let bad: Vec<&str> = loaded.bad_hosts.iter().map(Name::as_str).collect();
        assert_eq!(bad, vec!["b", "c"]);
        let shown: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            shown.iter().any(|p| p.contains("hosts/b/services.yaml:2")),
            "{shown:?}"
        );

        let merged = loaded.clone().or_last_good(Some(&last)).unwrap();
        let services = |node: &str| -> Vec<String> {
            merged.hosts[&Name::parse(node).unwrap()]
                .keys()
                .map(|s| s.to_string())
                .collect()
        };
        assert_eq!(services("a"), vec!["api", "web"], "a follows the repo");
        assert_eq!(services("b"), vec!["db"], "b keeps its last good state");
        assert_eq!(services("c"), vec!["cache"]);
        assert!(merged.services.contains_key(&Name::parse("cache").unwrap()));
        assert!(merged.frozen.is_empty());

        // Nothing good before: the bad hosts are frozen, not empty.
        let first = loaded.or_last_good(None).unwrap();
        let frozen: Vec<&str> = first.frozen.iter().map(Name::as_str).collect();
        assert_eq!(frozen, vec!["b", "c"]);
        assert!(first.hosts.contains_key(&Name::parse("a").unwrap()));

        // A bad inventory: the last good state as a whole, or nothing.
        let mut files = good.to_vec();
        files[0] = ("inventory/topology.yaml", "nodes: [");
        let loaded = load_partial(repo(&files).path());
        assert!(loaded.inventory_bad);
        assert_eq!(loaded.clone().or_last_good(Some(&last)), Some(last));
        assert_eq!(loaded.or_last_good(None), None);
    }
}
