//! Desired state: the homelab repo (`inventory/topology.yaml`,
//! `hosts/<node>/services.yaml`).
//!
//! Loading never guesses: a file that does not parse, an unknown field, a bad
//! name or a host folder for a node the inventory does not know is a
//! [`Problem`] with its file and line, and [`load`] returns every problem it
//! found instead of a partial desired state. Callers keep their last good one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

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
    #[serde(default)]
    pub nodes: BTreeMap<Name, NodeSpec>,
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
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            monitor: true,
            remediation: Remediation::Propose,
            grace_period: None,
            exposure: None,
            description: None,
        }
    }
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
    #[serde(default)]
    services: BTreeMap<Name, ServiceSpec>,
}

/// The whole desired state of a repo.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub topology: Topology,
    /// Desired services per canonical node name.
    pub hosts: BTreeMap<Name, BTreeMap<Name, ServiceSpec>>,
}

impl Desired {
    /// Maps an alias (`node-1`) to its canonical node name (`vps`); other
    /// names map to themselves.
    pub fn canonical(&self, node: &Name) -> Name {
        if self.topology.nodes.contains_key(node) {
            return node.clone();
        }
        self.topology
            .nodes
            .iter()
            .find(|(_, spec)| spec.aliases.contains(node))
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| node.clone())
    }
}

/// Loads and checks the repo at `repo`.
pub fn load(repo: &Path) -> Result<Desired, Vec<Problem>> {
    let mut problems = Vec::new();
    let topology_path = repo.join("inventory").join("topology.yaml");
    let topology: Topology = read_yaml(&topology_path, &mut problems).unwrap_or_default();

    let mut aliases: BTreeMap<&Name, &Name> = BTreeMap::new();
    for (node, spec) in &topology.nodes {
        for alias in &spec.aliases {
            if topology.nodes.contains_key(alias) {
                problems.push(problem(
                    &topology_path,
                    None,
                    format!("alias {alias} of node {node} is itself a node"),
                ));
            } else if let Some(other) = aliases.insert(alias, node) {
                problems.push(problem(
                    &topology_path,
                    None,
                    format!("alias {alias} is given to both {other} and {node}"),
                ));
            }
        }
    }

    let mut hosts = BTreeMap::new();
    let hosts_dir = repo.join("hosts");
    match std::fs::read_dir(&hosts_dir) {
        Ok(entries) => {
            let mut dirs: Vec<_> = entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .collect();
            dirs.sort_by_key(|e| e.file_name());
            for entry in dirs {
                let path = entry.path();
                let raw = entry.file_name().to_string_lossy().to_string();
                let node = match Name::parse(&raw) {
                    Ok(node) if node.as_str() == raw => node,
                    Ok(_) => {
                        problems.push(problem(
                            &path,
                            None,
                            format!("host folder {raw:?} must be lower case"),
                        ));
                        continue;
                    }
                    Err(e) => {
                        problems.push(problem(
                            &path,
                            None,
                            format!("host folder {raw:?} is not a valid node name: {e}"),
                        ));
                        continue;
                    }
                };
                if !topology.nodes.contains_key(&node) {
                    problems.push(problem(
                        &path,
                        None,
                        format!("node {node} is not in inventory/topology.yaml"),
                    ));
                }
                let services_path = path.join("services.yaml");
                if !services_path.exists() {
                    continue;
                }
                if let Some(file) = read_yaml::<ServicesFile>(&services_path, &mut problems) {
                    hosts.insert(node, file.services);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(problem(&hosts_dir, None, format!("cannot read: {e}"))),
    }

    if problems.is_empty() {
        Ok(Desired { topology, hosts })
    } else {
        Err(problems)
    }
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
) -> Option<T> {
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
        return Some(T::default());
    }
    match serde_yaml::from_str::<T>(&text) {
        Ok(value) => Some(value),
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let message = e.to_string();
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
        ]);
        let desired = load(dir.path()).unwrap();
        let vps = &desired.hosts[&Name::parse("vps").unwrap()];
        let mosquitto = &vps[&Name::parse("mosquitto").unwrap()];
        assert_eq!(mosquitto.remediation, Remediation::Auto);
        assert_eq!(mosquitto.grace_period, Some(Duration::from_secs(30)));
        assert!(!vps[&Name::parse("homeassistant").unwrap()].monitor);
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
        let got = problems(&[
            ("inventory/topology.yaml", TOPOLOGY),
            (
                "hosts/vps/services.yaml",
                "services:\n  mosquitto:\n    exposure: internal\n    colour: blue\n",
            ),
            (
                "hosts/piha/services.yaml",
                "services:\n  mosquitto: {grace_period: 30}\n",
            ),
            ("hosts/saturn/services.yaml", "services: {}\n"),
        ]);
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
}
