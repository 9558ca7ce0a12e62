//! What the repo changed since it was deployed: per node and service, the
//! compose files last deployed there (or adopted as running), and since
//! when the repo wants other ones. Pure: the shell reads and writes
//! `state/supervisor/applied.json` and passes the time.
//!
//! - A service first seen in the desired state is *adopted*: what the repo
//!   says now is taken as what runs (homelab cannot know what an older
//!   deployment used; the running containers say nothing it can compare).
//! - A redeploy that completes makes its bundle the deployed one.
//! - When the repo's bundle differs from the deployed one, the service has
//!   a change (`desired_changed`), dated from when this bundle was first
//!   wanted: a newer commit that changes it again starts a new change.
//! - A revert (or an unpin) that brings back the deployed bundle ends the
//!   change (its pending redeploy is then cancelled as resolved).

use std::collections::BTreeMap;

use homelab_core::command::ComposeBundle;
use homelab_core::time::Timestamp;
use homelab_core::Name;

pub use homelab_core::repo::{Applied, AppliedEntry as Entry, Wanted};

/// The repo wants other compose files for a service than those deployed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub since: Timestamp,
    /// The commit the deployed files came from.
    pub from_commit: Option<String>,
    /// The deployed files (path, text).
    pub from_files: Vec<(String, String)>,
}

/// A redeploy that completed: what it deployed.
#[derive(Debug, Clone)]
pub struct Deployed<'a> {
    pub node: &'a Name,
    pub service: &'a Name,
    pub bundle: &'a ComposeBundle,
    pub commit: Option<&'a str>,
    pub at: Timestamp,
}

fn key(node: &Name, service: &Name) -> String {
    format!("{node}/{service}")
}

fn files(bundle: &ComposeBundle) -> Vec<(String, String)> {
    bundle
        .files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone()))
        .collect()
}

/// Brings `applied` up to date with the repo's bundles (`desired`, per
/// node and service, from `commit`) and the redeploys that completed;
/// returns the services that have a change, and whether `applied` moved.
/// Entries of services no longer desired go.
pub fn track(
    applied: &mut Applied,
    desired: &BTreeMap<(Name, Name), ComposeBundle>,
    deployed: &[Deployed<'_>],
    commit: Option<&str>,
    now: Timestamp,
) -> (BTreeMap<(Name, Name), Change>, bool) {
    let mut moved = false;
    for d in deployed {
        let entry = applied.services.get(&key(d.node, d.service));
        if entry.is_some_and(|e| e.at >= d.at) {
            continue;
        }
        applied.services.insert(
            key(d.node, d.service),
            Entry {
                digest: d.bundle.digest(),
                commit: d.commit.map(str::to_string),
                files: files(d.bundle),
                at: d.at,
                wanted: None,
            },
        );
        moved = true;
    }
    let wanted: std::collections::BTreeSet<String> =
        desired.keys().map(|(n, s)| key(n, s)).collect();
    let before = applied.services.len();
    applied.services.retain(|k, _| wanted.contains(k));
    moved |= applied.services.len() != before;
    let mut changes = BTreeMap::new();
    for ((node, service), bundle) in desired {
        let digest = bundle.digest();
        let entry = applied
            .services
            .entry(key(node, service))
            .or_insert_with(|| {
                moved = true;
                Entry {
                    digest: digest.clone(),
                    commit: commit.map(str::to_string),
                    files: files(bundle),
                    at: now,
                    wanted: None,
                }
            });
        if entry.digest == digest {
            moved |= entry.wanted.take().is_some();
            continue;
        }
        if entry.wanted.as_ref().is_none_or(|w| w.digest != digest) {
            entry.wanted = Some(Wanted { digest, since: now });
            moved = true;
        }
        changes.insert(
            (node.clone(), service.clone()),
            Change {
                since: entry.wanted.as_ref().expect("just set").since,
                from_commit: entry.commit.clone(),
                from_files: entry.files.clone(),
            },
        );
    }
    (changes, moved)
}

/// A unified diff of the compose files, `old` → `new` (path, text), each
/// file under its repo path; empty when nothing differs.
pub fn diff(old: &[(String, String)], new: &[(String, String)]) -> String {
    let mut paths: Vec<&String> = old.iter().chain(new).map(|(p, _)| p).collect();
    paths.sort();
    paths.dedup();
    let text = |files: &[(String, String)], path: &String| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
    };
    let mut out = String::new();
    for path in paths {
        let (before, after) = (text(old, path), text(new, path));
        if before == after {
            continue;
        }
        let (a, b) = (before.unwrap_or_default(), after.unwrap_or_default());
        let diff = similar::TextDiff::from_lines(&a, &b);
        out += &diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::command::ComposeFile;

    fn at(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn bundle(image: &str) -> ComposeBundle {
        ComposeBundle {
            project: n("app"),
            compose_version: None,
            files: vec![ComposeFile::new(
                "services/app/docker-compose.yml",
                format!("services:\n  app:\n    image: {image}\n"),
            )],
        }
    }

    fn desired(image: &str) -> BTreeMap<(Name, Name), ComposeBundle> {
        BTreeMap::from([((n("piha"), n("app")), bundle(image))])
    }

    #[test]
    fn adopted_then_changed_then_deployed() {
        let mut applied = Applied::default();
        // First seen: adopted, no change.
        let (changes, moved) = track(&mut applied, &desired("app:1"), &[], Some("c1"), at(0));
        assert!(moved, "adopted");
        assert!(changes.is_empty());
        assert_eq!(applied.services["piha/app"].commit.as_deref(), Some("c1"));
        // A commit changes the image: a change since then, from c1.
        let (changes, _) = track(&mut applied, &desired("app:2"), &[], Some("c2"), at(10));
        let change = &changes[&(n("piha"), n("app"))];
        assert_eq!(
            (change.since, change.from_commit.as_deref()),
            (at(10), Some("c1"))
        );
        // Still wanted later: the same change, same since.
        let (changes, _) = track(&mut applied, &desired("app:2"), &[], Some("c2"), at(20));
        assert_eq!(changes[&(n("piha"), n("app"))].since, at(10));
        // Changed again before it was deployed: a new change.
        let (changes, _) = track(&mut applied, &desired("app:3"), &[], Some("c3"), at(30));
        assert_eq!(changes[&(n("piha"), n("app"))].since, at(30));
        // Deployed: no change any more; c3 is what runs.
        let done = bundle("app:3");
        let deployed = [Deployed {
            node: &n("piha"),
            service: &n("app"),
            bundle: &done,
            commit: Some("c3"),
            at: at(40),
        }];
        let (changes, _) = track(
            &mut applied,
            &desired("app:3"),
            &deployed,
            Some("c3"),
            at(41),
        );
        assert!(changes.is_empty());
        assert_eq!(applied.services["piha/app"].commit.as_deref(), Some("c3"));
        // The same completion seen again changes nothing.
        let (_, moved) = track(
            &mut applied,
            &desired("app:3"),
            &deployed,
            Some("c3"),
            at(50),
        );
        assert!(!moved);
        assert_eq!(applied.services["piha/app"].at, at(40));
    }

    #[test]
    fn a_revert_ends_the_change_and_a_removed_service_is_forgotten() {
        let mut applied = Applied::default();
        track(&mut applied, &desired("app:1"), &[], Some("c1"), at(0));
        assert_eq!(
            track(&mut applied, &desired("app:2"), &[], Some("c2"), at(1))
                .0
                .len(),
            1
        );
        assert!(
            track(&mut applied, &desired("app:1"), &[], Some("c3"), at(2))
                .0
                .is_empty()
        );
        assert!(applied.services["piha/app"].wanted.is_none());
        track(&mut applied, &BTreeMap::new(), &[], Some("c4"), at(3));
        assert!(applied.services.is_empty());
    }

    #[test]
    fn diffs_show_old_to_new_per_file() {
        let old = vec![(
            "services/app/docker-compose.yml".to_string(),
            "image: app:1\nports: []\n".to_string(),
        )];
        let new = vec![
            (
                "services/app/docker-compose.yml".to_string(),
                "image: app:2\nports: []\n".to_string(),
            ),
            (
                "hosts/piha/runtime/app/docker-compose.override.yml".to_string(),
                "x: 1\n".to_string(),
            ),
        ];
        let text = diff(&old, &new);
        assert!(
            text.contains("--- a/services/app/docker-compose.yml"),
            "{text}"
        );
        assert!(text.contains("-image: app:1\n+image: app:2\n"), "{text}");
        assert!(
            text.contains("+++ b/hosts/piha/runtime/app/docker-compose.override.yml"),
            "{text}"
        );
        assert!(text.contains("+x: 1"), "{text}");
        assert_eq!(diff(&old, &old), "");
    }
}
