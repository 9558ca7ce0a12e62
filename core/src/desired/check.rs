//! Checking a repo as read ([`super::read`]): every rule of
//! docs/desired-state.md, one function per file kind, and which parts are
//! spoiled by a problem. Pure: no file is opened here, paths only label
//! problems.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::read::{Raw, RawDir, RawFile};
use super::{
    host_port_ok, problem, Capabilities, Desired, Loaded, Problem, ServiceDef, ServiceSpec,
    ServicesFile, Topology,
};
use crate::maintenance::{MaintenanceFile, Window};
use crate::name::Name;

/// Checks a repo as read: every problem, sorted by file and line, and
/// whatever loads (a bad file spoils only what it describes).
pub fn check(raw: &Raw) -> Loaded {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let topology = topology(&raw.topology, &mut c);
    // With an unreadable inventory, node references cannot be judged: its
    // own problem is the one to report, not one per host.
    let inventory_read = c.problems.is_empty();
    let known_node = |node: &Name| !inventory_read || topology.nodes.contains_key(node);
    c.problems.extend(raw.problems.iter().cloned());

    let mut services = BTreeMap::new();
    let mut service_files = BTreeMap::new();
    for (name, dir) in named_dirs(&raw.services, "service", &mut c) {
        if let Some((def, file)) = service(&name, dir, &known_node, &mut c) {
            services.insert(name.clone(), def);
            service_files.insert(name, file);
        }
    }
    service_references(&services, &service_files, &mut c);

    let mut hosts = BTreeMap::new();
    let mut capabilities = BTreeMap::new();
    for (node, dir) in named_dirs(&raw.hosts, "host", &mut c) {
        if !known_node(&node) {
            c.problems.push(problem(
                &dir.path,
                None,
                format!("node {node} is not in inventory/topology.yaml"),
            ));
        }
        if let Some(file) = dir.yaml.get("services.yaml") {
            if let Some(listed) = host_services(&node, file, &services, &service_files, &mut c) {
                hosts.insert(node.clone(), listed);
            }
        }
        if let Some(file) = dir.yaml.get("capabilities.yaml") {
            if let Some(value) = host_capabilities(file, &mut c) {
                capabilities.insert(node, value);
            }
        }
    }

    let maintenance = match &raw.maintenance {
        Some(file) => maintenance(file, &hosts, &known_node, &mut c),
        None => Vec::new(),
    };

    let mut problems = c.problems;
    problems.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    let spoiled = Spoiled::find(raw, &problems, &services, &service_files, &hosts);
    for node in &spoiled.hosts {
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
        inventory_bad: spoiled.inventory,
        bad_hosts: spoiled.hosts,
        maintenance_bad: spoiled.maintenance,
    }
}

/// What the problems spoil: the inventory, hosts (their own files, or a
/// service they list), the maintenance windows.
struct Spoiled {
    inventory: bool,
    hosts: BTreeSet<Name>,
    maintenance: bool,
}

impl Spoiled {
    fn find(
        raw: &Raw,
        problems: &[Problem],
        services: &BTreeMap<Name, ServiceDef>,
        service_files: &BTreeMap<Name, (PathBuf, String)>,
        hosts: &BTreeMap<Name, BTreeMap<Name, ServiceSpec>>,
    ) -> Spoiled {
        let under = |dir: &Path| problems.iter().any(|p| p.path.starts_with(dir));
        let bad_services: BTreeSet<&Name> = service_files
            .keys()
            .chain(services.keys())
            .filter(|s| {
                raw.services
                    .iter()
                    .any(|dir| dir.name == s.as_str() && under(&dir.path))
            })
            .collect();
        let mut bad_hosts = BTreeSet::new();
        for dir in &raw.hosts {
            let Ok(node) = Name::parse(&dir.name) else {
                continue;
            };
            let uses_bad = hosts.get(&node).is_some_and(|listed| {
                listed
                    .keys()
                    .any(|s| bad_services.contains(s) || !services.contains_key(s))
            });
            if under(&dir.path) || uses_bad {
                bad_hosts.insert(node);
            }
        }
        Spoiled {
            inventory: problems.iter().any(|p| p.path == raw.topology.path),
            hosts: bad_hosts,
            maintenance: raw
                .maintenance
                .as_ref()
                .is_some_and(|m| problems.iter().any(|p| p.path == m.path)),
        }
    }
}

/// `inventory/topology.yaml`: the nodes, and aliases given once, to one
/// node, and not a node's own name.
fn topology(file: &RawFile, c: &mut Checker) -> Topology {
    let read = parse_yaml::<Topology>(file, &mut c.problems);
    let text = read.as_ref().map(|r| r.text.clone()).unwrap_or_default();
    let topology = read.map(|r| r.value).unwrap_or_default();
    let (path, text_ref) = (&file.path, &text);
    let mut aliases: BTreeMap<&Name, &Name> = BTreeMap::new();
    for (node, spec) in &topology.nodes {
        let node_line = line_of(text_ref, node.as_str());
        let mut seen = BTreeSet::new();
        for alias in &spec.aliases {
            let message = if !seen.insert(alias) {
                format!("alias {alias} is listed twice")
            } else if topology.nodes.contains_key(alias) {
                format!("alias {alias} of node {node} is itself a node")
            } else if let Some(other) = aliases.insert(alias, node) {
                format!("alias {alias} is given to both {other} and {node}")
            } else {
                continue;
            };
            c.after(path, text_ref, node_line, alias.as_str(), message);
        }
    }
    topology
}

/// `services/<service>/service.yaml`: its owner a node, its dependencies
/// listed once and not itself, its healthcheck script in its folder, its
/// persistence paths and env names well formed. The definition and its
/// file (path, text) when it parses.
fn service(
    service: &Name,
    dir: &RawDir,
    known_node: &dyn Fn(&Name) -> bool,
    c: &mut Checker,
) -> Option<(ServiceDef, (PathBuf, String))> {
    let Some(file) = dir.yaml.get("service.yaml") else {
        c.problems.push(problem(
            &dir.path,
            None,
            format!("service {service} has no service.yaml"),
        ));
        return None;
    };
    let Read { value: def, text } = parse_yaml::<ServiceDef>(file, &mut c.problems)?;
    let path = &file.path;
    let mut at = |key: &str, message: String| c.at(path, Some(&text), key, message);
    if let Some(owner) = &def.owner {
        if !known_node(owner) {
            at(
                "owner",
                format!("owner {owner} is not a node of inventory/topology.yaml"),
            );
        }
    }
    if def.depends_on.contains(service) {
        at("depends_on", format!("service {service} depends on itself"));
    }
    if let Some(check) = &def.healthcheck {
        if !plain_relative(&check.script) {
            at(
                "script",
                format!(
                    "healthcheck script {:?} must be a path inside the service folder",
                    check.script
                ),
            );
        } else if !dir.files.contains(&normal(&check.script)) {
            at(
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
            at(
                p,
                format!("persistence path {p:?} must be absolute, without . or .."),
            );
        }
    }
    for var in &def.env {
        if !env_name_ok(var) {
            at(
                var,
                format!("env name {var:?} must be upper case letters, digits and _"),
            );
        }
    }
    c.duplicates(path, &text, "dependency", &def.depends_on);
    c.duplicates(path, &text, "persistence path", &def.persistence);
    c.duplicates(path, &text, "env name", &def.env);
    let file = (path.clone(), text);
    Some((def, file))
}

/// A relative path as [`RawDir::files`] holds it.
fn normal(relative: &str) -> String {
    Path::new(relative)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Across service definitions: every dependency defined, no cycle.
fn service_references(
    services: &BTreeMap<Name, ServiceDef>,
    service_files: &BTreeMap<Name, (PathBuf, String)>,
    c: &mut Checker,
) {
    for (service, def) in services {
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
    for cycle in dependency_cycles(services) {
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
}

/// `hosts/<node>/services.yaml`: each service defined (and not owned by
/// another node), its `mqtt_broker` a host:port. The services when it
/// parses.
fn host_services(
    node: &Name,
    file: &RawFile,
    services: &BTreeMap<Name, ServiceDef>,
    service_files: &BTreeMap<Name, (PathBuf, String)>,
    c: &mut Checker,
) -> Option<BTreeMap<Name, ServiceSpec>> {
    let Read { value, text } = parse_yaml::<ServicesFile>(file, &mut c.problems)?;
    let path = &file.path;
    for (service, spec) in &value.services {
        if let Some(address) = &spec.mqtt_broker {
            if !host_port_ok(address) {
                c.at(
                    path,
                    Some(&text),
                    "mqtt_broker",
                    format!("service {service}: mqtt_broker {address:?} must be host:port"),
                );
            }
        }
        match services.get(service) {
            None if !service_files.contains_key(service) => c.at(
                path,
                Some(&text),
                service.as_str(),
                format!(
                    "service {service} is not defined: there is no services/{service}/service.yaml"
                ),
            ),
            Some(ServiceDef {
                owner: Some(owner), ..
            }) if owner != node => c.at(
                path,
                Some(&text),
                service.as_str(),
                format!(
                    "service {service} belongs to node {owner} (services/{service}/service.yaml), not {node}"
                ),
            ),
            _ => {}
        }
    }
    Some(value.services)
}

/// `hosts/<node>/capabilities.yaml`: devices under /dev/, disk mounts
/// absolute and listed once, thresholds percentages with low below high.
fn host_capabilities(file: &RawFile, c: &mut Checker) -> Option<Capabilities> {
    let Read { value, text } = parse_yaml::<Capabilities>(file, &mut c.problems)?;
    let path = &file.path;
    for device in &value.devices {
        if !device.starts_with("/dev/") || !clean_absolute(device) {
            c.at(
                path,
                Some(&text),
                device,
                format!("device {device:?} must be a path under /dev/"),
            );
        }
    }
    c.duplicates(path, &text, "device", &value.devices);
    if let Some(disk) = &value.disk {
        for mount in &disk.mounts {
            if !clean_absolute(mount) {
                c.at(
                    path,
                    Some(&text),
                    mount,
                    format!("disk mount {mount:?} must be an absolute path"),
                );
            }
        }
        c.duplicates(path, &text, "disk mount", &disk.mounts);
        let (high, low) = (disk.high.unwrap_or(90.0), disk.low.unwrap_or(80.0));
        let valid = |p: f64| (0.0..=100.0).contains(&p);
        if !valid(high) || !valid(low) || low >= high {
            c.at(
                path,
                Some(&text),
                "disk",
                format!(
                    "disk thresholds must be percentages with low below high (high {high}, low {low})"
                ),
            );
        }
    }
    Some(value)
}

/// `inventory/maintenance.yaml`: windows named once, on a node of the
/// inventory, for services desired there, each a valid window.
fn maintenance(
    file: &RawFile,
    hosts: &BTreeMap<Name, BTreeMap<Name, ServiceSpec>>,
    known_node: &dyn Fn(&Name) -> bool,
    c: &mut Checker,
) -> Vec<Window> {
    let Some(Read { value, text }) = parse_yaml::<MaintenanceFile>(file, &mut c.problems) else {
        return Vec::new();
    };
    let path = &file.path;
    let items = list_items(&text);
    let mut names = BTreeSet::new();
    let mut windows = Vec::new();
    for (i, spec) in value.windows.into_iter().enumerate() {
        let name = spec.name.clone();
        let item = items.get(i).copied();
        let mut after = |key: &str, message: String| c.after(path, &text, item, key, message);
        if !names.insert(name.clone()) {
            after("name", format!("window {name} is listed twice"));
        }
        if !known_node(&spec.node) {
            after(
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
                .is_some_and(|s| s.contains_key(service));
            if !desired_here {
                after(
                    service.as_str(),
                    format!(
                        "window {name}: service {service} is not in hosts/{}/services.yaml",
                        spec.node
                    ),
                );
            }
        }
        match spec.check() {
            Ok(window) => windows.push(window),
            Err(why) => after("name", format!("window {name}: {why}")),
        }
    }
    windows
}

/// The folders with valid names (a name must be lower case, as written).
fn named_dirs<'a>(dirs: &'a [RawDir], what: &str, c: &mut Checker) -> Vec<(Name, &'a RawDir)> {
    let mut out = Vec::new();
    for dir in dirs {
        let raw = &dir.name;
        match Name::parse(raw) {
            Ok(name) if name.as_str() == raw => out.push((name, dir)),
            Ok(_) => c.problems.push(problem(
                &dir.path,
                None,
                format!("{what} folder {raw:?} must be lower case"),
            )),
            Err(e) => c.problems.push(problem(
                &dir.path,
                None,
                format!("{what} folder {raw:?} is not a valid name: {e}"),
            )),
        }
    }
    out
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

/// A file's value, or its problem (a read error, or where it does not
/// parse).
fn parse_yaml<T: serde::de::DeserializeOwned + Default>(
    file: &RawFile,
    problems: &mut Vec<Problem>,
) -> Option<Read<T>> {
    let path = &file.path;
    let text = match &file.text {
        Ok(text) => text.clone(),
        Err(why) => {
            problems.push(problem(path, None, why.clone()));
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
    //! Each file kind's rules on a repo held in memory: no file is read.
    use super::*;

    const TOPOLOGY: &str = "nodes:\n  vps: {role: edge, aliases: [node-1]}\n  piha: {role: home}\n";

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn file(path: &str, text: &str) -> RawFile {
        RawFile {
            path: PathBuf::from("/repo").join(path),
            text: Ok(text.to_string()),
        }
    }

    fn dir(kind: &str, name: &str, yaml: &[(&str, &str)], files: &[&str]) -> RawDir {
        let path = PathBuf::from("/repo").join(kind).join(name);
        RawDir {
            name: name.to_string(),
            yaml: yaml
                .iter()
                .map(|(f, text)| {
                    let file = RawFile {
                        path: path.join(f),
                        text: Ok(text.to_string()),
                    };
                    (f.to_string(), file)
                })
                .collect(),
            files: files.iter().map(|f| f.to_string()).collect(),
            path,
        }
    }

    /// A repo of the topology above, services `app` and `db` defined.
    fn raw() -> Raw {
        Raw {
            topology: file("inventory/topology.yaml", TOPOLOGY),
            maintenance: None,
            services: vec![
                dir(
                    "services",
                    "app",
                    &[("service.yaml", "")],
                    &["service.yaml"],
                ),
                dir("services", "db", &[("service.yaml", "")], &["service.yaml"]),
            ],
            hosts: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn said(loaded: &Loaded) -> Vec<String> {
        loaded
            .problems
            .iter()
            .map(|p| p.to_string().replace("/repo/", ""))
            .collect()
    }

    #[test]
    fn line_of_finds_whole_names() {
        let text = "services:\n  mosquitto-2: {}\n  mosquitto: {}\n  # npm\n  x: [npm]\n";
        assert_eq!(line_of(text, "mosquitto"), Some(3));
        assert_eq!(line_of(text, "npm"), Some(5));
        assert_eq!(line_of(text, "zz"), None);
    }

    #[test]
    fn topology_rules() {
        let cases: &[(&str, &[&str])] = &[
            (TOPOLOGY, &[]),
            (
                "nodes:\n  vps: {aliases: [a, a]}\n",
                &["inventory/topology.yaml:2: alias a is listed twice"],
            ),
            (
                "nodes:\n  vps: {}\n  piha:\n    aliases: [vps]\n",
                &["inventory/topology.yaml:4: alias vps of node piha is itself a node"],
            ),
            (
                "nodes:\n  vps: {aliases: [a]}\n  piha: {aliases: [a]}\n",
                // Nodes are judged in name order: vps is the second to claim it.
                &["inventory/topology.yaml:2: alias a is given to both piha and vps"],
            ),
        ];
        for (text, want) in cases {
            let mut raw = raw();
            raw.topology = file("inventory/topology.yaml", text);
            let loaded = check(&raw);
            assert_eq!(said(&loaded), *want, "{text}");
            assert_eq!(loaded.inventory_bad, !want.is_empty(), "{text}");
        }
        let mut unreadable = raw();
        unreadable.topology.text = Err("cannot read: gone".into());
        let loaded = check(&unreadable);
        assert_eq!(
            said(&loaded),
            ["inventory/topology.yaml: cannot read: gone"]
        );
        assert!(loaded.inventory_bad);
    }

    #[test]
    fn service_definition_rules() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("owner: vps\n", &["service.yaml"], &[]),
            (
                "owner: nas\n",
                &[],
                &["services/app/service.yaml:1: owner nas is not a node of inventory/topology.yaml"],
            ),
            (
                "depends_on: [app]\n",
                &[],
                &["services/app/service.yaml:1: service app depends on itself"],
            ),
            (
                "depends_on: [db, db]\n",
                &[],
                &["services/app/service.yaml:1: dependency db is listed twice"],
            ),
            (
                "depends_on: [cache]\n",
                &[],
                &["services/app/service.yaml:1: service app depends on cache, which is not defined under services/"],
            ),
            (
                "healthcheck: {script: check.sh}\n",
                &["checks/check.sh"],
                &["services/app/service.yaml:1: healthcheck script check.sh does not exist in services/app/"],
            ),
            ("healthcheck: {script: checks//check.sh}\n", &["checks/check.sh"], &[]),
            (
                "healthcheck: {script: ../x.sh}\n",
                &[],
                &["services/app/service.yaml:1: healthcheck script \"../x.sh\" must be a path inside the service folder"],
            ),
            (
                "persistence: [data]\n",
                &[],
                &["services/app/service.yaml:1: persistence path \"data\" must be absolute, without . or .."],
            ),
            (
                "env: [lower]\n",
                &[],
                &["services/app/service.yaml:1: env name \"lower\" must be upper case letters, digits and _"],
            ),
        ];
        for (text, files, want) in cases {
            let mut raw = raw();
            raw.services[0] = dir("services", "app", &[("service.yaml", text)], files);
            let loaded = check(&raw);
            assert_eq!(said(&loaded), *want, "{text}");
            assert_eq!(loaded.desired.services.len(), 2, "{text}: it still loads");
        }
        let mut cycle = raw();
        cycle.services = vec![
            dir(
                "services",
                "app",
                &[("service.yaml", "depends_on: [db]\n")],
                &[],
            ),
            dir(
                "services",
                "db",
                &[("service.yaml", "depends_on: [app]\n")],
                &[],
            ),
        ];
        assert_eq!(
            said(&check(&cycle)),
            ["services/app/service.yaml:1: dependency cycle: app -> db -> app"]
        );
        let mut none = raw();
        none.services[0].yaml.clear();
        assert_eq!(
            said(&check(&none)),
            ["services/app: service app has no service.yaml"]
        );
        let mut upper = raw();
        upper.services[0] = dir("services", "App", &[("service.yaml", "")], &[]);
        assert_eq!(
            said(&check(&upper)),
            ["services/App: service folder \"App\" must be lower case"]
        );
    }

    #[test]
    fn host_rules_and_what_they_spoil() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("vps", "services:\n  app: {}\n", &[]),
            (
                "nas",
                "services:\n  app: {}\n",
                &["hosts/nas: node nas is not in inventory/topology.yaml"],
            ),
            (
                "vps",
                "services:\n  web: {}\n",
                &["hosts/vps/services.yaml:2: service web is not defined: there is no services/web/service.yaml"],
            ),
            (
                "vps",
                "services:\n  app: {mqtt_broker: nowhere}\n",
                &["hosts/vps/services.yaml:2: service app: mqtt_broker \"nowhere\" must be host:port"],
            ),
        ];
        for (node, text, want) in cases {
            let mut raw = raw();
            raw.hosts = vec![
                dir("hosts", node, &[("services.yaml", text)], &[]),
                dir(
                    "hosts",
                    "piha",
                    &[("services.yaml", "services:\n  db: {}\n")],
                    &[],
                ),
            ];
            let loaded = check(&raw);
            assert_eq!(said(&loaded), *want, "{text}");
            let bad: Vec<&str> = loaded.bad_hosts.iter().map(Name::as_str).collect();
            let want_bad: &[&str] = if want.is_empty() { &[] } else { &[node] };
            assert_eq!(bad, want_bad, "{text}: only that host is spoiled");
            assert!(loaded.desired.hosts.contains_key(&n("piha")), "{text}");
        }
        // A host listing a service whose definition has a problem is spoiled too.
        let mut raw = raw();
        raw.services[0] = dir("services", "app", &[("service.yaml", "owner: nas\n")], &[]);
        raw.hosts = vec![dir(
            "hosts",
            "vps",
            &[("services.yaml", "services:\n  app: {}\n")],
            &[],
        )];
        let loaded = check(&raw);
        assert!(loaded.bad_hosts.contains(&n("vps")));
        assert!(!loaded.desired.hosts.contains_key(&n("vps")));
    }

    #[test]
    fn capabilities_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("devices: [/dev/ttyUSB0]\ndisk: {mounts: [/], high: 90, low: 80}\n", &[]),
            (
                "devices: [/etc/passwd]\n",
                &["hosts/vps/capabilities.yaml:1: device \"/etc/passwd\" must be a path under /dev/"],
            ),
            (
                "disk: {mounts: [data]}\n",
                &["hosts/vps/capabilities.yaml:1: disk mount \"data\" must be an absolute path"],
            ),
            (
                "disk: {high: 70, low: 80}\n",
                &["hosts/vps/capabilities.yaml:1: disk thresholds must be percentages with low below high (high 70, low 80)"],
            ),
        ];
        for (text, want) in cases {
            let mut raw = raw();
            raw.hosts = vec![dir("hosts", "vps", &[("capabilities.yaml", text)], &[])];
            let loaded = check(&raw);
            assert_eq!(said(&loaded), *want, "{text}");
            assert!(
                loaded.desired.capabilities.contains_key(&n("vps")),
                "{text}: read even with a problem"
            );
        }
    }

    #[test]
    fn maintenance_rules() {
        let window = |node: &str, services: &str| {
            format!("windows:\n  - name: w\n    node: {node}\n    services: [{services}]\n    from: 2026-01-01T00:00:00Z\n    until: 2026-01-01T01:00:00Z\n")
        };
        let cases: Vec<(String, Vec<&str>)> = vec![
            (window("vps", "app"), vec![]),
            (
                window("nas", ""),
                vec!["inventory/maintenance.yaml:3: window w: node nas is not in inventory/topology.yaml"],
            ),
            (
                window("vps", "db"),
                vec!["inventory/maintenance.yaml:4: window w: service db is not in hosts/vps/services.yaml"],
            ),
        ];
        for (text, want) in cases {
            let mut raw = raw();
            raw.hosts = vec![dir(
                "hosts",
                "vps",
                &[("services.yaml", "services:\n  app: {}\n")],
                &[],
            )];
            raw.maintenance = Some(file("inventory/maintenance.yaml", &text));
            let loaded = check(&raw);
            assert_eq!(said(&loaded), want, "{text}");
            assert_eq!(loaded.maintenance_bad, !want.is_empty(), "{text}");
            assert_eq!(loaded.desired.maintenance.len(), 1, "{text}");
        }
    }
}
