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

#[cfg(test)]
mod tests {
    use super::*;

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
}
