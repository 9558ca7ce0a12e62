//! The desired state as a git history: what the repo sync (`homelab-repo`)
//! writes under `state/repo/` and every component reads. Pure types and
//! the few file helpers that find them.
//!
//! The contract: a component's repo is a folder. For a git source it is
//! `state/repo/live`, a symlink to `state/repo/trees/<sha>/`, the files of
//! the live commit, written once and never changed; the sync replaces the
//! symlink atomically, and only with a commit whose tree validated. A
//! reader resolves the link once per load ([`resolve`]), so one load reads
//! one commit, and knows which ([`commit_of`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::time::{self, Timestamp};
use crate::Layout;

/// One commit, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The full object name (40 hex digits, 64 in a SHA-256 repository).
    pub sha: String,
    pub subject: String,
    pub author: String,
    #[serde(with = "time")]
    pub time: Timestamp,
}

impl Commit {
    /// The short form shown on the page: the first 7 digits.
    pub fn short(&self) -> &str {
        &self.sha[..self.sha.len().min(7)]
    }
}

/// An earlier commit made the desired state, until unpinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub commit: Commit,
    /// Who pinned it (the operator).
    pub by: String,
    #[serde(with = "time")]
    pub at: Timestamp,
}

/// A commit that did not validate: never applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid {
    pub commit: Commit,
    /// Each problem as `file:line: problem`, relative to the repo.
    pub problems: Vec<String>,
}

/// The branch was force-pushed: its new head is live, and these commits
/// of the old history are no longer on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    #[serde(with = "time")]
    pub at: Timestamp,
    pub from: String,
    pub to: String,
    pub dropped: Vec<Commit>,
}

/// Fetching fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    #[serde(with = "time")]
    pub since: Timestamp,
    /// Failures in a row.
    pub failures: u32,
    /// Why, as git said it (credentials removed).
    pub message: String,
}

/// Failures in a row after which the remote counts as unreachable (an
/// incident).
pub const UNREACHABLE_AFTER: u32 = 3;

/// `state/repo/status.json`, written by the sync after every look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoStatus {
    /// The URL or path (credentials in a URL are redacted).
    pub source: String,
    pub branch: String,
    /// The commit whose tree is the desired state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Commit>,
    /// The branch's head as last fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Commit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Invalid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<Failing>,
    #[serde(
        default,
        with = "time::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub fetched_at: Option<Timestamp>,
    #[serde(with = "time")]
    pub updated: Timestamp,
}

impl RepoStatus {
    /// Whether the remote counts as unreachable (an incident).
    pub fn unreachable(&self) -> Option<&Failing> {
        self.failing
            .as_ref()
            .filter(|f| f.failures >= UNREACHABLE_AFTER)
    }

    pub fn read(layout: &Layout) -> Option<RepoStatus> {
        let bytes = std::fs::read(layout.repo_status()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// `state/repo/pin.json`, written for the operator (page, API,
/// `homelab repo pin`); the sync resolves `commit` (a full name or a
/// prefix of one) in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRequest {
    pub commit: String,
    pub by: String,
    #[serde(with = "time")]
    pub at: Timestamp,
}

/// One of the recent commits (`state/repo/commits.json`, newest first),
/// with what it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitChange {
    pub commit: Commit,
    /// Nodes whose files it changed (`hosts/<node>/…`).
    pub nodes: Vec<String>,
    /// Services whose files it changed (`services/<service>/…`,
    /// `hosts/<node>/runtime/<service>/…`).
    pub services: Vec<String>,
    /// It changed the inventory (`inventory/…`).
    pub inventory: bool,
    /// How many files it changed.
    pub files: usize,
}

impl CommitChange {
    /// What `paths` (changed by `commit`, repo-relative) touch.
    pub fn of(commit: Commit, paths: &[String]) -> CommitChange {
        let mut nodes = std::collections::BTreeSet::new();
        let mut services = std::collections::BTreeSet::new();
        let mut inventory = false;
        for path in paths {
            let parts: Vec<&str> = path.split('/').collect();
            match parts.as_slice() {
                ["hosts", node, "runtime", service, _, ..] => {
                    nodes.insert(node.to_string());
                    services.insert(service.to_string());
                }
                ["hosts", node, _, ..] => {
                    nodes.insert(node.to_string());
                }
                ["services", service, _, ..] => {
                    services.insert(service.to_string());
                }
                ["inventory", ..] => inventory = true,
                _ => {}
            }
        }
        CommitChange {
            commit,
            nodes: nodes.into_iter().collect(),
            services: services.into_iter().collect(),
            inventory,
            files: paths.len(),
        }
    }
}

/// What `/summary` and the page say of the desired state of a git source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredView {
    pub source: String,
    pub branch: String,
    /// The live commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Commit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pin>,
    /// The branch's head, when it is not the live commit (pinned, or not
    /// valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Commit>,
    #[serde(
        default,
        with = "time::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub fetched_at: Option<Timestamp>,
    /// A commit that does not validate, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Commit>,
    /// The last force-push, when it dropped commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten: Option<Rewrite>,
    pub unreachable: bool,
}

impl DesiredView {
    pub fn of(status: &RepoStatus) -> DesiredView {
        let live = status.live.as_ref().map(|c| c.sha.as_str());
        DesiredView {
            source: status.source.clone(),
            branch: status.branch.clone(),
            commit: status.live.clone(),
            pinned: status.pinned.clone(),
            head: status.head.clone().filter(|h| Some(h.sha.as_str()) != live),
            fetched_at: status.fetched_at,
            invalid: status.invalid.as_ref().map(|i| i.commit.clone()),
            rewritten: status.rewritten.clone().filter(|r| !r.dropped.is_empty()),
            unreachable: status.unreachable().is_some(),
        }
    }
}

/// `state/supervisor/applied.json`: what is deployed per `node/service`
/// (written by the supervisor, read by the page). See the supervisor's
/// `changes` module for the rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub services: std::collections::BTreeMap<String, AppliedEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedEntry {
    /// `ComposeBundle::digest` of what is deployed.
    pub digest: String,
    /// The commit it came from, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Its files (path, text), for the diff a change shows.
    pub files: Vec<(String, String)>,
    /// Adopted (seen in the repo first) or deployed by a redeploy, when.
    #[serde(with = "time")]
    pub at: Timestamp,
    /// The bundle the repo wants instead, since when: the service is
    /// behind the desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted: Option<Wanted>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wanted {
    pub digest: String,
    #[serde(with = "time")]
    pub since: Timestamp,
}

impl Applied {
    pub fn read(layout: &Layout) -> Option<Applied> {
        serde_json::from_slice(&std::fs::read(layout.supervisor_applied()).ok()?).ok()
    }

    pub fn entry(&self, node: &str, service: &str) -> Option<&AppliedEntry> {
        self.services.get(&format!("{node}/{service}"))
    }
}

/// Whether `sha` is a full object name.
pub fn sha_ok(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64)
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Where a load reads from: `repo` with its symlinks resolved (the live
/// commit's tree, for a git source), or `repo` as given when it cannot be
/// resolved (a folder that is not there: its loader says so).
pub fn resolve(repo: &Path) -> PathBuf {
    std::fs::canonicalize(repo).unwrap_or_else(|_| repo.to_path_buf())
}

/// The commit a resolved repo folder is the tree of, if it is one of
/// `layout`'s trees.
pub fn commit_of(layout: &Layout, resolved: &Path) -> Option<Commit> {
    let trees = std::fs::canonicalize(layout.repo_dir().join("trees")).ok()?;
    let sha = resolved.strip_prefix(&trees).ok()?.to_str()?;
    if !sha_ok(sha) {
        return None;
    }
    let bytes = std::fs::read(layout.repo_commit(sha)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A URL with any password in it replaced, for logs and the page.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let slash = if rest.contains('/') { "/" } else { "" };
    match userinfo.contains(':') {
        true => format!("{scheme}://{user}:***@{host}{slash}{path}"),
        false => format!("{scheme}://***@{host}{slash}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        for (sha, ok) in [
            ("3f2a91c0d0a1b2c3d4e5f60718293a4b5c6d7e8f", true),
            (&"a".repeat(64), true),
            ("3f2a91c", false),
            ("3F2A91C0D0A1B2C3D4E5F60718293A4B5C6D7E8F", false),
            ("../../../etc/passwd/../../../../../../xx", false),
            ("", false),
        ] {
            assert_eq!(sha_ok(sha), ok, "{sha}");
        }
    }

    #[test]
    fn credentials_never_show() {
        for (url, shown) in [
            (
                "https://github.com/me/lab.git",
                "https://github.com/me/lab.git",
            ),
            (
                "https://me:ghp_secret@github.com/me/lab.git",
                "https://me:***@github.com/me/lab.git",
            ),
            (
                "https://token@github.com/me/lab.git",
                "https://***@github.com/me/lab.git",
            ),
            ("ssh://git@host:2222/lab.git", "ssh://***@host:2222/lab.git"),
            ("git@github.com:me/lab.git", "git@github.com:me/lab.git"),
            ("file:///srv/lab.git", "file:///srv/lab.git"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn what_a_commit_changed() {
        let commit = Commit {
            sha: "a".repeat(40),
            subject: "s".into(),
            author: "a".into(),
            time: "2026-12-06T10:00:00Z".parse().unwrap(),
        };
        let paths: Vec<String> = [
            "hosts/piha/services.yaml",
            "hosts/piha/runtime/zigbee2mqtt/docker-compose.override.yml",
            "services/outline/docker-compose.yml",
            "inventory/topology.yaml",
            "README.md",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let change = CommitChange::of(commit, &paths);
        assert_eq!(change.nodes, vec!["piha"]);
        assert_eq!(change.services, vec!["outline", "zigbee2mqtt"]);
        assert!(change.inventory);
        assert_eq!(change.files, 5);
    }

    #[test]
    fn a_tree_knows_its_commit() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let sha = "3f2a91c0d0a1b2c3d4e5f60718293a4b5c6d7e8f";
        std::fs::create_dir_all(layout.repo_tree(sha)).unwrap();
        std::fs::create_dir_all(layout.repo_commit(sha).parent().unwrap()).unwrap();
        let commit = Commit {
            sha: sha.into(),
            subject: "zigbee2mqtt: pin 1.40".into(),
            author: "Ann".into(),
            time: "2026-12-06T10:00:00Z".parse().unwrap(),
        };
        std::fs::write(
            layout.repo_commit(sha),
            serde_json::to_vec(&commit).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(layout.repo_tree(sha), layout.repo_live()).unwrap();
        let resolved = resolve(&layout.repo_live());
        assert_eq!(commit_of(&layout, &resolved), Some(commit));
        assert_eq!(commit_of(&layout, root.path()), None, "a plain folder");
        assert_eq!(resolve(&root.path().join("nope")), root.path().join("nope"));
    }
}
