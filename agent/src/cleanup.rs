//! Which stopped containers a `disk_cleanup` removes: pure, table-tested.
//! The rest of a cleanup is Docker's own prune of dangling images and build
//! cache ([`crate::docker::ContainerRuntime::cleanup`]); volumes are never
//! touched.

use homelab_core::Name;
use serde::Serialize;

/// A container as the cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    /// Its service (Compose label, else its name); `None` when that is not
    /// a valid name.
    pub service: Option<Name>,
    /// `running`, `exited`, `dead`, `created`, `paused`, `restarting`.
    pub state: String,
    /// When it was created (Unix seconds).
    pub created: i64,
    /// Bytes of its writable layer, when Docker said.
    pub size_rw: Option<u64>,
}

/// The containers to remove: stopped (`exited`, `dead`, or `created` and
/// never started) longer ago than `older_than_secs` counted from creation,
/// and not of a service the node should run (`keep`).
pub fn select<'a>(
    containers: &'a [Candidate],
    keep: &[Name],
    older_than_secs: u64,
    now: i64,
) -> Vec<&'a Candidate> {
    containers
        .iter()
        .filter(|c| matches!(c.state.as_str(), "exited" | "dead" | "created"))
        .filter(|c| c.service.as_ref().is_none_or(|s| !keep.contains(s)))
        .filter(|c| {
            now.saturating_sub(c.created) >= i64::try_from(older_than_secs).unwrap_or(i64::MAX)
        })
        .collect()
}

/// What a cleanup did: its figures go into the action's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub containers_removed: Vec<String>,
    pub container_bytes: u64,
    pub images_deleted: u64,
    pub image_bytes: u64,
    pub build_cache_bytes: u64,
    /// Parts that failed (the rest still ran).
    pub errors: Vec<String>,
}

impl Report {
    pub fn bytes_reclaimed(&self) -> u64 {
        self.container_bytes + self.image_bytes + self.build_cache_bytes
    }
}

/// What a cleanup's outcome says: failed only if every part failed (its
/// three prunes, and no container removed); the message counts what went.
pub fn outcome(report: &Report) -> crate::command::Outcome {
    let bytes = report.bytes_reclaimed();
    let failed = match report.errors.len() {
        0 => String::new(),
        n => format!(" ({n} parts failed: {})", report.errors.join("; ")),
    };
    let message = format!(
        "reclaimed {:.1} MB: {} stopped containers removed, {} dangling images deleted, build cache pruned{failed}",
        bytes as f64 / 1e6,
        report.containers_removed.len(),
        report.images_deleted,
    );
    let mut data = serde_json::to_value(report).expect("report serializes");
    data["bytes_reclaimed"] = serde_json::json!(bytes);
    crate::command::Outcome {
        ok: report.errors.len() < 3 || !report.containers_removed.is_empty(),
        message,
        data,
    }
}

/// How many images a prune deleted. Docker's answer lists an image and
/// each of its layers as separate `Deleted` entries (and `Untagged` ones
/// for names it dropped), so the images are those of the dangling ones
/// listed before the prune (`dangling`, image ids) that it names deleted.
pub fn images_deleted(dangling: &[String], deleted: &[String]) -> u64 {
    let deleted: std::collections::HashSet<&str> = deleted.iter().map(String::as_str).collect();
    dangling
        .iter()
        .filter(|id| deleted.contains(id.as_str()))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_counted_not_their_layers() {
        let ids = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
        for (dangling, deleted, want) in [
            // One dangling image with one layer: two Deleted entries.
            (
                ids(&["sha256:img"]),
                ids(&["sha256:img", "sha256:layer"]),
                1,
            ),
            (
                ids(&["sha256:a", "sha256:b"]),
                ids(&[
                    "sha256:a",
                    "sha256:l1",
                    "sha256:b",
                    "sha256:l2",
                    "sha256:l3",
                ]),
                2,
            ),
            // Dangling, but in use by a container: not deleted.
            (ids(&["sha256:a"]), ids(&[]), 0),
            (ids(&[]), ids(&["sha256:layer"]), 0),
        ] {
            assert_eq!(
                images_deleted(&dangling, &deleted),
                want,
                "{dangling:?} {deleted:?}"
            );
        }
    }

    fn c(name: &str, service: Option<&str>, state: &str, age: i64) -> Candidate {
        Candidate {
            id: format!("id-{name}"),
            name: name.into(),
            service: service.map(|s| Name::parse(s).unwrap()),
            state: state.into(),
            created: 1_000_000 - age,
            size_rw: Some(10),
        }
    }

    #[test]
    fn only_old_stopped_containers_of_no_desired_service() {
        let day = 86_400;
        let all = [
            c("old-tool", Some("tool"), "exited", 2 * day),
            c("old-dead", Some("tool"), "dead", 2 * day),
            c("never-started", Some("tool"), "created", 2 * day),
            c("young", Some("tool"), "exited", 3600),
            c("exactly", Some("tool"), "exited", day),
            c("running", Some("tool"), "running", 2 * day),
            c("paused", Some("tool"), "paused", 2 * day),
            c("restarting", Some("tool"), "restarting", 2 * day),
            c("desired", Some("npm"), "exited", 2 * day),
            c("odd-name", None, "exited", 2 * day),
        ];
        let keep = [Name::parse("npm").unwrap()];
        let names: Vec<&str> = select(&all, &keep, day as u64, 1_000_000)
            .into_iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "old-tool",
                "old-dead",
                "never-started",
                "exactly",
                "odd-name"
            ]
        );
        // With nothing to keep and no age, every stopped one goes.
        assert_eq!(select(&all, &[], 0, 1_000_000).len(), 7);
        let report = Report {
            container_bytes: 1,
            image_bytes: 20,
            build_cache_bytes: 300,
            ..Default::default()
        };
        assert_eq!(report.bytes_reclaimed(), 321);
    }

    #[test]
    fn what_a_cleanup_says() {
        let report = |removed: &[&str], errors: &[&str]| Report {
            containers_removed: removed.iter().map(|s| s.to_string()).collect(),
            container_bytes: 1_000_000,
            images_deleted: 2,
            image_bytes: 1_500_000,
            build_cache_bytes: 0,
            errors: errors.iter().map(|s| s.to_string()).collect(),
        };
        // (report, ok, message)
        let cases = [
            (
                report(&["old"], &[]),
                true,
                "reclaimed 2.5 MB: 1 stopped containers removed, 2 dangling images deleted, build cache pruned",
            ),
            (
                report(&[], &["images: busy", "cache: busy"]),
                true,
                "reclaimed 2.5 MB: 0 stopped containers removed, 2 dangling images deleted, build cache pruned (2 parts failed: images: busy; cache: busy)",
            ),
            (
                report(&[], &["containers: x", "images: y", "cache: z"]),
                false,
                "reclaimed 2.5 MB: 0 stopped containers removed, 2 dangling images deleted, build cache pruned (3 parts failed: containers: x; images: y; cache: z)",
            ),
            (report(&["old"], &["a", "b", "c"]), true, ""),
        ];
        for (report, ok, message) in cases {
            let outcome = outcome(&report);
            assert_eq!(outcome.ok, ok, "{report:?}");
            if !message.is_empty() {
                assert_eq!(outcome.message, message);
            }
            assert_eq!(outcome.data["bytes_reclaimed"], 2_500_000);
        }
    }
}
