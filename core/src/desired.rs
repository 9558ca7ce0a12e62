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

use crate::maintenance::{self, MaintenanceFile, Window};
use crate::name::Name;

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

/// A YAML file read for checking: its value and its text (for lines).
struct Read<T> {
    value: T,
    text: String,
}

/// The 1-based line where `key` first appears as a YAML key or list item
/// (`key:`, `- key`, `[a, key]`, `{key: …}`), if it does.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    text.lines()
        .position(|line| {
            let code = match line.trim_start().starts_with('#') {
                true => "",
                false => line.split(" #").next().unwrap_or(line),
            };
            code.match_indices(key).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                let after = code[at + key.len()..].chars().next();
                !before.is_some_and(is_name) && !after.is_some_and(is_name)
            })
        })
        .map(|i| i + 1)
}

/// Like [`line_of`], looking only from line `from` (1-based) on.
fn line_after(text: &str, from: Option<usize>, key: &str) -> Option<usize> {
    let skip = from.unwrap_or(1).saturating_sub(1);
    let rest: String = text.lines().skip(skip).collect::<Vec<_>>().join("\n");
    line_of(&rest, key).map(|l| l + skip)
}

/// The 1-based first line of each item of the outermost YAML list.
fn list_items(text: &str) -> Vec<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let items: Vec<(usize, usize)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- "))
        .map(|(i, l)| (i + 1, indent(l)))
        .collect();
    let outer = items.iter().map(|(_, i)| *i).min().unwrap_or(0);
    items
        .into_iter()
        .filter(|(_, i)| *i == outer)
        .map(|(line, _)| line)
        .collect()
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn at(&mut self, path: &Path, text: Option<&str>, key: &str, message: String) {
        let line = text.and_then(|t| line_of(t, key));
        self.problems.push(problem(path, line, message));
    }

    /// A problem about `key` inside the part of the file from line `from`.
    fn after(&mut self, path: &Path, text: &str, from: Option<usize>, key: &str, message: String) {
        let line = line_after(text, from, key).or(from);
        self.problems.push(problem(path, line, message));
    }

    /// Entries listed twice in one list.
    fn duplicates<T: Ord + fmt::Display>(
        &mut self,
        path: &Path,
        text: &str,
        what: &str,
        items: &[T],
    ) {
        let mut seen = std::collections::BTreeSet::new();
        for item in items {
            if !seen.insert(item) {
                let key = item.to_string();
                self.at(
                    path,
                    Some(text),
                    &key,
                    format!("{what} {key} is listed twice"),
                );
            }
        }
    }
}

/// Folders under `dir`, sorted, each with its name checked as a [`Name`].
fn named_dirs(dir: &Path, what: &str, checker: &mut Checker) -> Vec<(Name, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            checker
                .problems
                .push(problem(dir, None, format!("cannot read: {e}")));
            return Vec::new();
        }
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for entry in dirs {
        let path = entry.path();
        let raw = entry.file_name().to_string_lossy().to_string();
        match Name::parse(&raw) {
            Ok(name) if name.as_str() == raw => out.push((name, path)),
            Ok(_) => checker.problems.push(problem(
                &path,
                None,
                format!("{what} folder {raw:?} must be lower case"),
            )),
            Err(e) => checker.problems.push(problem(
                &path,
                None,
                format!("{what} folder {raw:?} is not a valid name: {e}"),
            )),
        }
    }
    out
}

fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn clean_absolute(path: &str) -> bool {
    path.starts_with('/')
        && Path::new(path).components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
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
/// spoils only what it describes.
pub fn load_partial(repo: &Path) -> Loaded {
    let mut checker = Checker {
        problems: Vec::new(),
    };
    let c = &mut checker;

    // inventory/topology.yaml
    let topology_path = repo.join("inventory").join("topology.yaml");
    let topology = read_yaml::<Topology>(&topology_path, &mut c.problems);
    let topology_text = topology
        .as_ref()
        .map(|r| r.text.clone())
        .unwrap_or_default();
    let topology = topology.map(|r| r.value).unwrap_or_default();
    let mut aliases: BTreeMap<&Name, &Name> = BTreeMap::new();
    for (node, spec) in &topology.nodes {
        let node_line = line_of(&topology_text, node.as_str());
        let mut seen = std::collections::BTreeSet::new();
        for alias in &spec.aliases {
            let (path, text) = (&topology_path, &topology_text);
            if !seen.insert(alias) {
                c.after(
                    path,
                    text,
                    node_line,
                    alias.as_str(),
                    format!("alias {alias} is listed twice"),
                );
            } else if topology.nodes.contains_key(alias) {
                c.after(
                    path,
                    text,
                    node_line,
                    alias.as_str(),
                    format!("alias {alias} of node {node} is itself a node"),
                );
            } else if let Some(other) = aliases.insert(alias, node) {
                c.after(
                    path,
                    text,
                    node_line,
                    alias.as_str(),
                    format!("alias {alias} is given to both {other} and {node}"),
                );
            }
        }
    }
    // With an unreadable inventory, node references cannot be judged: its
    // own problem is the one to report, not one per host.
    let inventory_read = c.problems.is_empty();
    let known_node = |node: &Name| !inventory_read || topology.nodes.contains_key(node);

    // services/<service>/service.yaml
    let services_dir = repo.join("services");
    let mut services: BTreeMap<Name, ServiceDef> = BTreeMap::new();
    let mut service_files: BTreeMap<Name, (PathBuf, String)> = BTreeMap::new();
    for (service, dir) in named_dirs(&services_dir, "service", c) {
        let path = dir.join("service.yaml");
        if !path.exists() {
            c.problems.push(problem(
                &dir,
                None,
                format!("service {service} has no service.yaml"),
            ));
            continue;
        }
        let Some(Read { value: def, text }) = read_yaml::<ServiceDef>(&path, &mut c.problems)
        else {
            continue;
        };
        if let Some(owner) = &def.owner {
            if !known_node(owner) {
                c.at(
                    &path,
                    Some(&text),
                    "owner",
                    format!("owner {owner} is not a node of inventory/topology.yaml"),
                );
            }
        }
        c.duplicates(&path, &text, "dependency", &def.depends_on);
        if def.depends_on.contains(&service) {
            c.at(
                &path,
                Some(&text),
                "depends_on",
                format!("service {service} depends on itself"),
            );
        }
        if let Some(check) = &def.healthcheck {
            if !plain_relative(&check.script) {
                c.at(
                    &path,
                    Some(&text),
                    "script",
                    format!(
                        "healthcheck script {:?} must be a path inside the service folder",
                        check.script
                    ),
                );
            } else if !dir.join(&check.script).is_file() {
                c.at(
                    &path,
                    Some(&text),
                    "script",
                    format!(
                        "healthcheck script {} does not exist in services/{service}/",
                        check.script
                    ),
                );
            }
        }
        for p in &def.persistence {
            if !clean_absolute(p) {
                c.at(
                    &path,
                    Some(&text),
                    p,
                    format!("persistence path {p:?} must be absolute, without . or .."),
                );
            }
        }
        c.duplicates(&path, &text, "persistence path", &def.persistence);
        for var in &def.env {
            if !env_name_ok(var) {
                c.at(
                    &path,
                    Some(&text),
                    var,
                    format!("env name {var:?} must be upper case letters, digits and _"),
                );
            }
        }
        c.duplicates(&path, &text, "env name", &def.env);
        services.insert(service.clone(), def);
        service_files.insert(service, (path, text));
    }
    for (service, def) in &services {
        let (path, text) = &service_files[service];
        for dep in &def.depends_on {
            if dep != service && !services.contains_key(dep) {
                c.at(
                    path,
                    Some(text),
                    dep.as_str(),
                    format!(
                        "service {service} depends on {dep}, which is not defined under services/"
                    ),
                );
            }
        }
    }
    for cycle in dependency_cycles(&services) {
        let first = &cycle[0];
        let (path, text) = &service_files[first];
        let shown: Vec<&str> = cycle.iter().map(Name::as_str).collect();
        c.at(
            path,
            Some(text),
            "depends_on",
            format!("dependency cycle: {} -> {}", shown.join(" -> "), first),
        );
    }

    // hosts/<node>/{services,capabilities}.yaml
    let mut hosts = BTreeMap::new();
    let mut capabilities = BTreeMap::new();
    for (node, dir) in named_dirs(&repo.join("hosts"), "host", c) {
        if !known_node(&node) {
            c.problems.push(problem(
                &dir,
                None,
                format!("node {node} is not in inventory/topology.yaml"),
            ));
        }
        let services_path = dir.join("services.yaml");
        if services_path.exists() {
            if let Some(Read { value, text }) =
                read_yaml::<ServicesFile>(&services_path, &mut c.problems)
            {
                for (service, spec) in &value.services {
                    if let Some(address) = &spec.mqtt_broker {
                        if !host_port_ok(address) {
                            c.at(
                                &services_path,
                                Some(&text),
                                "mqtt_broker",
                                format!(
                                    "service {service}: mqtt_broker {address:?} must be host:port"
                                ),
                            );
                        }
                    }
                    match services.get(service) {
                        None if !service_files.contains_key(service) => c.at(
                            &services_path,
                            Some(&text),
                            service.as_str(),
                            format!(
                                "service {service} is not defined: there is no services/{service}/service.yaml"
                            ),
                        ),
                        Some(ServiceDef {
                            owner: Some(owner), ..
                        }) if owner != &node => c.at(
                            &services_path,
                            Some(&text),
                            service.as_str(),
                            format!(
                                "service {service} belongs to node {owner} (services/{service}/service.yaml), not {node}"
                            ),
                        ),
                        _ => {}
                    }
                }
                hosts.insert(node.clone(), value.services);
            }
        }
        let capabilities_path = dir.join("capabilities.yaml");
        if capabilities_path.exists() {
            if let Some(Read { value, text }) =
                read_yaml::<Capabilities>(&capabilities_path, &mut c.problems)
            {
                for device in &value.devices {
                    if !device.starts_with("/dev/") || !clean_absolute(device) {
                        c.at(
                            &capabilities_path,
                            Some(&text),
                            device,
                            format!("device {device:?} must be a path under /dev/"),
                        );
                    }
                }
                c.duplicates(&capabilities_path, &text, "device", &value.devices);
                if let Some(disk) = &value.disk {
                    for mount in &disk.mounts {
                        if !clean_absolute(mount) {
                            c.at(
                                &capabilities_path,
                                Some(&text),
                                mount,
                                format!("disk mount {mount:?} must be an absolute path"),
                            );
                        }
                    }
                    c.duplicates(&capabilities_path, &text, "disk mount", &disk.mounts);
                    let (high, low) = (disk.high.unwrap_or(90.0), disk.low.unwrap_or(80.0));
                    let valid = |p: f64| (0.0..=100.0).contains(&p);
                    if !valid(high) || !valid(low) || low >= high {
                        c.at(
                            &capabilities_path,
                            Some(&text),
                            "disk",
                            format!("disk thresholds must be percentages with low below high (high {high}, low {low})"),
                        );
                    }
                }
                capabilities.insert(node, value);
            }
        }
    }

    // inventory/maintenance.yaml (optional)
    let mut maintenance = Vec::new();
    let maintenance_path = repo.join("inventory").join("maintenance.yaml");
    if maintenance_path.exists() {
        if let Some(Read { value, text }) =
            read_yaml::<MaintenanceFile>(&maintenance_path, &mut c.problems)
        {
            let items = list_items(&text);
            let mut names = std::collections::BTreeSet::new();
            for (i, spec) in value.windows.into_iter().enumerate() {
                let name = spec.name.clone();
                let item = items.get(i).copied();
                let path = &maintenance_path;
                if !names.insert(name.clone()) {
                    c.after(
                        path,
                        &text,
                        item,
                        "name",
                        format!("window {name} is listed twice"),
                    );
                }
                if !known_node(&spec.node) {
                    c.after(
                        path,
                        &text,
                        item,
                        spec.node.as_str(),
                        format!(
                            "window {name}: node {} is not in inventory/topology.yaml",
                            spec.node
                        ),
                    );
                }
                for service in &spec.services {
                    let desired_here = hosts
                        .get(&spec.node)
                        .is_some_and(|s: &BTreeMap<Name, ServiceSpec>| s.contains_key(service));
                    if !desired_here {
                        c.after(
                            path,
                            &text,
                            item,
                            service.as_str(),
                            format!(
                                "window {name}: service {service} is not in hosts/{}/services.yaml",
                                spec.node
                            ),
                        );
                    }
                }
                match spec.check() {
                    Ok(window) => maintenance.push(window),
                    Err(why) => c.after(path, &text, item, "name", format!("window {name}: {why}")),
                }
            }
        }
    }

    let mut problems = checker.problems;
    problems.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    let under = |problem: &Problem, dir: &Path| problem.path.starts_with(dir);
    let inventory_bad = problems.iter().any(|p| p.path == topology_path);
    let maintenance_bad = problems.iter().any(|p| p.path == maintenance_path);
    let bad_services: BTreeSet<&Name> = service_files
        .keys()
        .chain(services.keys())
        .filter(|s| {
            problems
                .iter()
                .any(|p| under(p, &services_dir.join(s.as_str())))
        })
        .collect();
    let hosts_dir = repo.join("hosts");
    let mut bad_hosts = BTreeSet::new();
    for entry in std::fs::read_dir(&hosts_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(node) = Name::parse(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let own = problems.iter().any(|p| under(p, &entry.path()));
        let uses_bad = hosts.get(&node).is_some_and(|listed| {
            listed
                .keys()
                .any(|s| bad_services.contains(s) || !services.contains_key(s))
        });
        if own || uses_bad {
            bad_hosts.insert(node);
        }
    }
    for node in &bad_hosts {
        hosts.remove(node);
    }
    Loaded {
        desired: Desired {
            topology,
            hosts,
            services,
            capabilities,
            maintenance,
            frozen: BTreeSet::new(),
        },
        problems,
        inventory_bad,
        bad_hosts,
        maintenance_bad,
    }
}

/// Each dependency cycle once, starting at its smallest name.
fn dependency_cycles(services: &BTreeMap<Name, ServiceDef>) -> Vec<Vec<Name>> {
    let mut cycles = Vec::new();
    for start in services.keys() {
        // Depth-first from `start`, only through names greater than it, so
        // each cycle is found from its smallest member.
        let mut stack: Vec<(Name, usize)> = vec![(start.clone(), 0)];
        let mut on_path: Vec<Name> = vec![start.clone()];
        while let Some((node, next)) = stack.last_mut() {
            let deps = services.get(node).map(|d| &d.depends_on[..]).unwrap_or(&[]);
            if *next >= deps.len() {
                stack.pop();
                on_path.pop();
                continue;
            }
            let dep = deps[*next].clone();
            *next += 1;
            if &dep == start && on_path.len() > 1 {
                cycles.push(on_path.clone());
            } else if dep > *start && !on_path.contains(&dep) && services.contains_key(&dep) {
                on_path.push(dep.clone());
                stack.push((dep, 0));
            }
        }
    }
    cycles
}

fn problem(path: &Path, line: Option<usize>, message: String) -> Problem {
    Problem {
        path: path.to_path_buf(),
        line,
        message,
    }
}

fn read_yaml<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Read<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(problem(path, None, format!("cannot read: {e}")));
            return None;
        }
    };
    // An empty file (or one with only comments) is an empty document.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Some(Read {
            value: T::default(),
            text,
        });
    }
    match serde_yaml::from_str::<T>(&text) {
        Ok(value) => Some(Read { value, text }),
        Err(e) => {
            let mut line = e.location().map(|l| l.line());
            let message = e.to_string();
            // Errors about a key are reported where its map starts: point
            // at the key itself (for a duplicate, its second entry).
            if let Some(key) = message
                .split("duplicate entry ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                let first = line_after(&text, line, key);
                if let Some(second) = first.and_then(|f| line_after(&text, Some(f + 1), key)) {
                    line = Some(second);
                }
            } else if let Some(raw) = message
                .split("bad name \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            {
                line = line_after(&text, line, raw).or(line);
            }
            // serde_norway appends " at line L column C"; the line is ours to print.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            problems.push(problem(path, line, message));
            None
        }
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

    #[test]
    fn line_of_finds_whole_names() {
        let text = "services:\n  mosquitto-2: {}\n  mosquitto: {}\n  # npm\n  x: [npm]\n";
        assert_eq!(line_of(text, "mosquitto"), Some(3));
        assert_eq!(line_of(text, "npm"), Some(5));
        assert_eq!(line_of(text, "zz"), None);
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
