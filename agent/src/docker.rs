//! Docker, behind [`ContainerRuntime`]. Only this module talks to bollard.
//!
//! A container's canonical service name is its `com.docker.compose.service`
//! label, else its container name. Containers in state `created` never ran
//! and are ignored; containers whose name is not a valid [`Name`] are
//! skipped with a warning.
//!
//! Whose a container is ([`is_ours`]): with `--docker-label`, only the
//! containers carrying it (Docker's own filter). Without, every container
//! of the engine except those labelled `homelab.node=<another node>`:
//! several nodes may share one engine, and no agent reports, restarts or
//! cleans up another node's containers, whatever its flags.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, ListContainersOptions, ListImagesOptions, LogsOptions,
    PruneBuildOptions, PruneImagesOptions, RemoveContainerOptions, RestartContainerOptions,
    StatsOptions,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use homelab_core::world::Container;
use homelab_core::Name;
use tracing::{info, warn};

use crate::cleanup;

pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// The label that says which node a container belongs to.
pub const NODE_LABEL: &str = "homelab.node";

/// Whether a container with `labels` is `node`'s. `scoped`: the engine
/// already returned only the containers with the agent's `--docker-label`;
/// they are ours even if their `homelab.node` names another node (the
/// operator chose the label).
pub fn is_ours(labels: Option<&HashMap<String, String>>, node: &Name, scoped: bool) -> bool {
    scoped
        || labels
            .and_then(|l| l.get(NODE_LABEL))
            .is_none_or(|owner| owner.eq_ignore_ascii_case(node.as_str()))
}

pub trait ContainerRuntime: Send + Sync {
    /// All containers that have run, with their service names.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Container>>>;
    /// Restarts every container of `service`; returns their names.
    fn restart_service<'a>(&'a self, service: &'a Name) -> BoxFuture<'a, Result<Vec<String>>>;
    /// A stream that yields whenever a container changed. It ends when the
    /// engine goes away.
    fn changes(&self) -> BoxStream<'static, Result<()>>;
    /// Where the engine keeps its data (`docker info`'s root dir), whose
    /// filesystem is watched for pressure; `None` if it does not say.
    fn data_root(&self) -> BoxFuture<'_, Result<Option<std::path::PathBuf>>> {
        async { Ok(None) }.boxed()
    }
    /// One reading of every running container's counters
    /// ([`crate::stats`]); none from a runtime that cannot say.
    fn stats(&self) -> BoxFuture<'_, Result<Vec<crate::stats::Reading>>> {
        async { Ok(Vec::new()) }.boxed()
    }
    /// The last `lines` lines of container `id` (its output and errors,
    /// with Docker's timestamps), from `since` (seconds since the epoch)
    /// if given; with `follow`, then what it writes until the stream is
    /// dropped.
    fn logs(
        &self,
        id: &str,
        lines: u32,
        follow: bool,
        since: Option<i64>,
    ) -> BoxStream<'static, Result<homelab_core::logs::Line>> {
        let _ = (id, lines, follow, since);
        futures::stream::once(async { anyhow::bail!("this container runtime has no logs") }).boxed()
    }
    /// Removes the stopped containers [`cleanup::select`] picks, then
    /// prunes dangling images and build cache; never volumes.
    fn cleanup<'a>(
        &'a self,
        keep: &'a [Name],
        older_than_secs: u64,
    ) -> BoxFuture<'a, Result<cleanup::Report>> {
        let _ = (keep, older_than_secs);
        async { anyhow::bail!("this container runtime cannot clean up") }.boxed()
    }
}

pub struct BollardRuntime {
    docker: Docker,
    /// This node: containers labelled for another are not ours.
    node: Name,
    /// Only containers with this label (`key` or `key=value`) are this
    /// node's: several nodes on one engine.
    label: Option<String>,
    /// Restart counts by container id, with the status line they were read
    /// under: a container is inspected again only when its line changed.
    restarts: std::sync::Mutex<HashMap<String, (String, Option<u64>)>>,
}

impl BollardRuntime {
    /// Connects to the engine at `host` (`unix:///…`, `tcp://…`), else
    /// `DOCKER_HOST` or the local Unix socket, and negotiates the API
    /// version, which bollard does not do by itself.
    /// With `label`, only containers carrying it are seen, restarted or
    /// cleaned up; without, all but those labelled for another node.
    pub async fn connect(
        host: Option<&str>,
        label: Option<&str>,
        node: &Name,
    ) -> Result<Arc<BollardRuntime>> {
        let docker = match host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .context("docker client")?;
        let docker = docker
            .negotiate_version()
            .await
            .context("negotiate docker api version")?;
        docker.ping().await.context("ping docker")?;
        Ok(Arc::new(BollardRuntime {
            docker,
            node: node.clone(),
            label: label.map(str::to_string),
            restarts: Default::default(),
        }))
    }
}

impl BollardRuntime {
    /// Every container of this node ([`is_ours`]), stopped ones included;
    /// with `size`, their writable layers' sizes too (slower).
    async fn summaries(&self, size: bool) -> Result<Vec<bollard::models::ContainerSummary>> {
        let options = ListContainersOptions {
            all: true,
            size,
            filters: self.label_filter(),
            ..Default::default()
        };
        let mut all = self
            .docker
            .list_containers(Some(options))
            .await
            .context("list containers")?;
        all.retain(|c| is_ours(c.labels.as_ref(), &self.node, self.label.is_some()));
        Ok(all)
    }

    fn label_filter(&self) -> Option<HashMap<String, Vec<String>>> {
        let label = self.label.clone()?;
        Some(HashMap::from([("label".to_string(), vec![label])]))
    }
}

/// Checks a `--label` scope: `key` or `key=value`, as Docker's label
/// filter takes it.
pub fn check_label(label: &str) -> Result<()> {
    let key = label.split_once('=').map_or(label, |(key, _)| key);
    anyhow::ensure!(
        !key.is_empty() && !key.contains(char::is_whitespace),
        "a label is KEY or KEY=VALUE, with a key and no spaces in it: {label:?}"
    );
    anyhow::ensure!(
        !label.contains(char::is_control),
        "a label has no control characters: {label:?}"
    );
    Ok(())
}

/// A container's name (without Docker's leading `/`) and its raw service
/// name: its Compose service label, else its name.
fn name_and_service(summary: &bollard::models::ContainerSummary) -> (String, String) {
    let name = summary
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let service = summary
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .cloned()
        .unwrap_or_else(|| name.clone());
    (name, service)
}

impl ContainerRuntime for BollardRuntime {
    fn cleanup<'a>(
        &'a self,
        keep: &'a [Name],
        older_than_secs: u64,
    ) -> BoxFuture<'a, Result<cleanup::Report>> {
        async move {
            let summaries = self.summaries(true).await?;
            let candidates: Vec<cleanup::Candidate> = summaries
                .into_iter()
                .map(|s| {
                    let (name, service) = name_and_service(&s);
                    cleanup::Candidate {
                        id: s.id.unwrap_or_default(),
                        service: Name::parse(&service).ok(),
                        name,
                        state: s.state.map(|s| s.to_string()).unwrap_or_default(),
                        created: s.created.unwrap_or(i64::MAX),
                        size_rw: s.size_rw.and_then(|n| u64::try_from(n).ok()),
                    }
                })
                .collect();
            let now = chrono::Utc::now().timestamp();
            let mut report = cleanup::Report::default();
            for container in cleanup::select(&candidates, keep, older_than_secs, now) {
                // `v: false`: its volumes stay, anonymous ones included.
                let options = RemoveContainerOptions {
                    v: false,
                    force: false,
                    link: false,
                };
                match self
                    .docker
                    .remove_container(&container.id, Some(options))
                    .await
                {
                    Ok(()) => {
                        info!(container = %container.name, "stopped container removed");
                        report.containers_removed.push(container.name.clone());
                        report.container_bytes += container.size_rw.unwrap_or(0);
                    }
                    Err(error) => report
                        .errors
                        .push(format!("remove container {}: {error}", container.name)),
                }
            }
            // Only dangling images (the API's default for a prune). Which
            // ones are dangling now, to count images and not their layers.
            let dangling: Vec<String> = match self
                .docker
                .list_images(Some(ListImagesOptions {
                    filters: Some(HashMap::from([(
                        "dangling".to_string(),
                        vec!["true".to_string()],
                    )])),
                    ..Default::default()
                }))
                .await
            {
                Ok(images) => images.into_iter().map(|i| i.id).collect(),
                Err(error) => {
                    report.errors.push(format!("list dangling images: {error}"));
                    Vec::new()
                }
            };
            match self.docker.prune_images(None::<PruneImagesOptions>).await {
                Ok(pruned) => {
                    let deleted: Vec<String> = pruned
                        .images_deleted
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|d| d.deleted)
                        .collect();
                    report.images_deleted = cleanup::images_deleted(&dangling, &deleted);
                    report.image_bytes = pruned
                        .space_reclaimed
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0);
                }
                Err(error) => report.errors.push(format!("prune images: {error}")),
            }
            match self.docker.prune_build(None::<PruneBuildOptions>).await {
                Ok(pruned) => {
                    report.build_cache_bytes = pruned
                        .space_reclaimed
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0);
                }
                Err(error) => report.errors.push(format!("prune build cache: {error}")),
            }
            Ok(report)
        }
        .boxed()
    }

    fn data_root(&self) -> BoxFuture<'_, Result<Option<std::path::PathBuf>>> {
        async move {
            let info = self.docker.info().await.context("docker info")?;
            Ok(info.docker_root_dir.map(std::path::PathBuf::from))
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Container>>> {
        async move {
            let summaries = self.summaries(false).await?;
            let mut containers: Vec<Container> =
                summaries.into_iter().filter_map(to_container).collect();
            // The list has no restart count; inspect what changed.
            let known: HashMap<String, (String, Option<u64>)> =
                std::mem::take(&mut *self.restarts.lock().expect("restarts lock"));
            let mut now = HashMap::new();
            for container in &mut containers {
                let count = match known.get(&container.id) {
                    Some((status, count)) if *status == container.status => *count,
                    _ => self
                        .docker
                        .inspect_container(&container.id, None::<InspectContainerOptions>)
                        .await
                        .ok()
                        .and_then(|c| c.restart_count)
                        .and_then(|n| u64::try_from(n).ok()),
                };
                container.restart_count = count;
                now.insert(container.id.clone(), (container.status.clone(), count));
            }
            *self.restarts.lock().expect("restarts lock") = now;
            Ok(containers)
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<crate::stats::Reading>>> {
        async move {
            let summaries = self.summaries(false).await?;
            let mut out = Vec::new();
            for container in summaries.into_iter().filter_map(to_container) {
                if container.state != "running" {
                    continue;
                }
                // One reading, without Docker's second one a second later:
                // the agent keeps the last and works the CPU out itself.
                let options = StatsOptions {
                    stream: false,
                    one_shot: true,
                };
                let mut stream = self.docker.stats(&container.id, Some(options));
                let reading = match stream.next().await {
                    Some(Ok(stats)) => stats,
                    // Gone between the list and the read: not an error.
                    Some(Err(_)) | None => continue,
                };
                out.push(reading_of(container.id, container.name, reading));
            }
            Ok(out)
        }
        .boxed()
    }

    fn logs(
        &self,
        id: &str,
        lines: u32,
        follow: bool,
        since: Option<i64>,
    ) -> BoxStream<'static, Result<homelab_core::logs::Line>> {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            since: since.unwrap_or(0).clamp(0, i32::MAX as i64) as i32,
            until: 0,
            timestamps: true,
            tail: lines.to_string(),
        };
        self.docker
            .logs(id, Some(options))
            .flat_map(|chunk| {
                let lines: Vec<Result<homelab_core::logs::Line>> = match chunk {
                    Ok(output) => {
                        let (stream, message) = match output {
                            bollard::container::LogOutput::StdErr { message } => {
                                ("stderr", message)
                            }
                            bollard::container::LogOutput::StdOut { message }
                            | bollard::container::LogOutput::Console { message } => {
                                ("stdout", message)
                            }
                            bollard::container::LogOutput::StdIn { message } => ("stdin", message),
                        };
                        log_lines(stream, &String::from_utf8_lossy(&message))
                            .into_iter()
                            .map(Ok)
                            .collect()
                    }
                    Err(error) => vec![Err(anyhow::Error::from(error).context("read logs"))],
                };
                futures::stream::iter(lines)
            })
            .boxed()
    }

    fn restart_service<'a>(&'a self, service: &'a Name) -> BoxFuture<'a, Result<Vec<String>>> {
        async move {
            let containers: Vec<Container> = self
                .list()
                .await?
                .into_iter()
                .filter(|c| &c.service == service)
                .collect();
            anyhow::ensure!(
                !containers.is_empty(),
                "no container of service {service} on this node"
            );
            let mut restarted = Vec::new();
            for container in containers {
                self.docker
                    .restart_container(&container.id, None::<RestartContainerOptions>)
                    .await
                    .with_context(|| format!("restart container {}", container.name))?;
                restarted.push(container.name);
            }
            Ok(restarted)
        }
        .boxed()
    }

    fn changes(&self) -> BoxStream<'static, Result<()>> {
        let mut filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        if let Some(label) = &self.label {
            filters.insert("label".to_string(), vec![label.clone()]);
        }
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        self.docker
            .events(Some(options))
            .map(|item| item.map(|_| ()).context("docker event stream"))
            .boxed()
    }
}

/// Docker's log output (`<RFC 3339 time> <text>` per line, as asked with
/// timestamps) as lines, each bounded ([`homelab_core::logs::bound_line`]).
pub fn log_lines(stream: &str, text: &str) -> Vec<homelab_core::logs::Line> {
    text.split_terminator('\n')
        .map(|line| {
            let (ts, text) = match line.split_once(' ') {
                Some((ts, rest))
                    if ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.ends_with('Z') =>
                {
                    (Some(ts.to_string()), rest)
                }
                _ => (None, line),
            };
            homelab_core::logs::Line {
                ts,
                stream: stream.to_string(),
                text: homelab_core::logs::bound_line(text),
            }
        })
        .collect()
}

/// A stats answer as the counters [`crate::stats`] works with.
fn reading_of(
    id: String,
    name: String,
    stats: bollard::models::ContainerStatsResponse,
) -> crate::stats::Reading {
    let cpu = stats.cpu_stats.unwrap_or_default();
    let memory = stats.memory_stats.unwrap_or_default();
    let extra = memory.stats.unwrap_or_default();
    crate::stats::Reading {
        id,
        name,
        cpu_total_ns: cpu.cpu_usage.and_then(|u| u.total_usage).unwrap_or(0),
        system_ns: cpu.system_cpu_usage.unwrap_or(0),
        online_cpus: cpu.online_cpus.unwrap_or(1),
        memory_usage: memory.usage.unwrap_or(0),
        inactive_file: extra
            .get("inactive_file")
            .or_else(|| extra.get("total_inactive_file"))
            .copied()
            .unwrap_or(0),
        memory_limit: memory.limit.unwrap_or(0),
    }
}

fn to_container(summary: bollard::models::ContainerSummary) -> Option<Container> {
    let state = summary.state.map(|s| s.to_string()).unwrap_or_default();
    if state == "created" {
        return None;
    }
    let (name, raw_service) = name_and_service(&summary);
    let service = match Name::parse(&raw_service) {
        Ok(service) => service,
        Err(error) => {
            warn!(container = %name, service = %raw_service, %error, "container skipped: its service name is not a valid name");
            return None;
        }
    };
    let status = summary.status.unwrap_or_default();
    let health = summary
        .health
        .and_then(|h| h.status)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty() && s != "none")
        .or_else(|| health_from_status(&status));
    Some(Container {
        id: summary.id.unwrap_or_default(),
        name,
        service,
        image: summary.image.unwrap_or_default(),
        state,
        exit_code: homelab_core::world::exit_code_in_status(&status),
        status,
        health,
        restart_count: None,
    })
}

/// Engines older than API 1.52 give health only in the status line,
/// e.g. `Up 5 minutes (unhealthy)`.
fn health_from_status(status: &str) -> Option<String> {
    ["(unhealthy)", "(healthy)", "(health: starting)"]
        .iter()
        .find(|marker| status.contains(*marker))
        .map(|marker| {
            marker
                .trim_matches(|c| c == '(' || c == ')')
                .trim_start_matches("health: ")
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_log_output_as_lines() {
        let got = log_lines(
            "stderr",
            "2026-12-07T10:00:00.123456789Z ready on :8080\n2026-12-07T10:00:01.5Z  two spaces\r\nno time here\n",
        );
        let got: Vec<(Option<&str>, &str, &str)> = got
            .iter()
            .map(|l| (l.ts.as_deref(), l.stream.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some("2026-12-07T10:00:00.123456789Z"),
                    "stderr",
                    "ready on :8080"
                ),
                (Some("2026-12-07T10:00:01.5Z"), "stderr", " two spaces"),
                (None, "stderr", "no time here"),
            ]
        );
    }

    #[test]
    fn label_scopes_take_docker_filter_syntax() {
        for good in ["homelab.node", "homelab.node=piha", "a=", "k=v=w"] {
            assert!(check_label(good).is_ok(), "{good}");
        }
        for bad in ["", "=piha", "a b=c", "k=v\n"] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn containers_labelled_for_another_node_are_left_alone() {
        let piha = Name::parse("piha").unwrap();
        let labels = |owner: Option<&str>| -> HashMap<String, String> {
            owner
                .map(|o| HashMap::from([(NODE_LABEL.to_string(), o.to_string())]))
                .unwrap_or_default()
        };
        for (owner, scoped, ours) in [
            (None, false, true),
            (Some("piha"), false, true),
            (Some("PIHA"), false, true),
            (Some("pihb"), false, false),
            (Some(""), false, false),
            // The operator's --docker-label chose them.
            (Some("pihb"), true, true),
        ] {
            let labels = labels(owner);
            assert_eq!(
                is_ours(Some(&labels), &piha, scoped),
                ours,
                "{owner:?} scoped {scoped}"
            );
        }
        assert!(is_ours(None, &piha, false), "no labels at all");
    }

    #[test]
    fn health_from_status_line() {
        assert_eq!(
            health_from_status("Up 5 minutes (unhealthy)").as_deref(),
            Some("unhealthy")
        );
        assert_eq!(
            health_from_status("Up 5 minutes (healthy)").as_deref(),
            Some("healthy")
        );
        assert_eq!(
            health_from_status("Up 1 second (health: starting)").as_deref(),
            Some("starting")
        );
        assert_eq!(health_from_status("Exited (137) 2 seconds ago"), None);
    }
}
