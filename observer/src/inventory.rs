//! The desired state as the observer uses it: which nodes should report,
//! which services are monitored, the maintenance windows, and the repo's
//! problems as incidents.

use std::collections::BTreeMap;

use chrono::Utc;
use homelab_core::{desired, Name};
use tracing::warn;

use crate::{world, Observer};

/// The repo's problems as incidents: one per host they concern (named by
/// the host's folder), and one `repo_problem:repo` for the rest; the
/// message lists each as `file:line: problem`, relative to the repo.
pub(crate) fn repo_problems(
    repo: &std::path::Path,
    problems: &[desired::Problem],
    now: chrono::DateTime<Utc>,
) -> Vec<homelab_core::world::Incident> {
    let repo_node = Name::parse("repo").expect("a valid name");
    let mut by_node: BTreeMap<Name, Vec<String>> = BTreeMap::new();
    for problem in problems {
        let relative = problem.path.strip_prefix(repo).unwrap_or(&problem.path);
        let node = match relative.components().collect::<Vec<_>>()[..] {
            [first, host, ..] if first.as_os_str() == "hosts" => {
                Name::parse(&host.as_os_str().to_string_lossy()).unwrap_or(repo_node.clone())
            }
            _ => repo_node.clone(),
        };
        let shown = desired::Problem {
            path: relative.to_path_buf(),
            ..problem.clone()
        };
        by_node.entry(node).or_default().push(shown.to_string());
    }
    by_node
        .into_iter()
        .map(|(node, lines)| homelab_core::world::Incident {
            id: format!("repo_problem:{node}"),
            kind: homelab_core::world::REPO_PROBLEM.into(),
            node,
            service: None,
            severity: homelab_core::Severity::Error,
            message: lines.join("\n"),
            // The caller keeps the first time while the problem lasts.
            opened_at: now,
            count: Some(lines.len() as u64),
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        })
        .collect()
}

impl Observer {
    /// Reloads the desired state (inventory, desired services, windows);
    /// true if what the observer uses of it changed. A bad file spoils
    /// only what it describes; its problems become incidents.
    pub(crate) fn load_inventory(&mut self) -> bool {
        let Some(configured) = &self.config.repo else {
            return false;
        };
        // A git source: its live commit's tree (resolved once, so one load
        // reads one commit), and the sync's own incidents.
        let git = configured == &self.config.layout.repo_live();
        let repo = &homelab_core::repo::resolve(configured);
        let status = git
            .then(|| homelab_core::repo::RepoStatus::read(&self.config.layout))
            .flatten();
        let mut problems = status
            .as_ref()
            .map(|status| homelab_core::world::repo_incidents(status, Utc::now()))
            .unwrap_or_default();
        // Every look moves `fetched_at`: only what the summary shows of the
        // commit counts as a change.
        let view = status.as_ref().map(|s| homelab_core::repo::DesiredView {
            fetched_at: None,
            ..homelab_core::repo::DesiredView::of(s)
        });
        let moved = view != self.desired_view;
        self.desired_view = view;
        if git && !repo.exists() {
            // Nothing is live yet (the first fetch has not worked).
            for problem in &mut problems {
                if let Some(old) = self.repo_problems.iter().find(|o| o.id == problem.id) {
                    problem.opened_at = old.opened_at;
                }
            }
            let changed = problems != self.repo_problems || moved;
            self.repo_problems = problems;
            return changed;
        }
        let loaded = desired::load_partial(repo);
        problems.extend(repo_problems(repo, &loaded.problems, Utc::now()));
        for problem in &mut problems {
            if let Some(old) = self.repo_problems.iter().find(|o| o.id == problem.id) {
                problem.opened_at = old.opened_at;
            }
        }
        let mut changed = problems != self.repo_problems || moved;
        if problems != self.repo_problems {
            for problem in &loaded.problems {
                warn!(%problem, "desired state has a problem; what it describes keeps its last good state");
            }
        }
        self.repo_problems = problems;
        let last = self.last_desired.take();
        let Some(desired) = loaded.or_last_good(last.as_ref()) else {
            return changed;
        };
        let services: world::DesiredServices = desired
            .hosts
            .iter()
            .map(|(node, services)| {
                let monitored = services
                    .iter()
                    .filter(|(_, spec)| spec.monitor)
                    .map(|(name, _)| name.clone())
                    .collect();
                (node.clone(), monitored)
            })
            .collect();
        changed |= desired.topology != self.inventory
            || desired.maintenance != self.maintenance
            || services != self.desired;
        self.inventory = desired.topology.clone();
        self.maintenance = desired.maintenance.clone();
        self.desired = services;
        self.last_desired = Some(desired);
        changed
    }
}
