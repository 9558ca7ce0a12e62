//! Docker: connected with backoff, its event stream watched, and a full sync at start, after every reconnect and periodically.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use homelab_core::event::kinds;
use homelab_core::world::{Container, Snapshot};
use homelab_core::Severity;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::docker::ContainerRuntime;
use crate::{docker_advice, sync, Agent, BollardRuntime};

pub(crate) fn docker_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keeps a Docker connection, syncs on every container event and on a
/// timer, and reports the engine going away and coming back.
pub(crate) async fn docker_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut delays = docker_backoff();
    let mut reachable: Option<bool> = None;
    let mut state = SyncState::default();
    loop {
        let connected = match agent.config.runtime.clone() {
            Some(runtime) => Ok(runtime),
            None => BollardRuntime::connect(
                agent.config.docker_host.as_deref(),
                agent.config.docker_label.as_deref(),
                &agent.config.node,
            )
            .await
            .map(|r| r as Arc<dyn ContainerRuntime>),
        };
        let result = match connected {
            Ok(runtime) => {
                if reachable == Some(false) {
                    agent.emit(
                        kinds::DOCKER_RECOVERED,
                        None,
                        Severity::Info,
                        "docker engine reachable again",
                        json!({}),
                    );
                }
                reachable = Some(true);
                delays = docker_backoff();
                agent.runtime.send_replace(Some(runtime.clone()));
                let result = watch(&agent, runtime, &mut state, &shutdown).await;
                agent.runtime.send_replace(None);
                result
            }
            Err(error) => Err(error),
        };
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(error) = result {
            if reachable != Some(false) {
                let error_text = format!("{error:#}");
                warn!(
                    error = %error_text,
                    "docker engine unreachable: {}; retrying with backoff",
                    docker_advice(&error_text)
                );
                agent.emit(
                    kinds::DOCKER_UNREACHABLE,
                    None,
                    Severity::Error,
                    &format!("{error:#}"),
                    json!({}),
                );
                reachable = Some(false);
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Default)]
pub(crate) struct SyncState {
    services: Option<sync::Services>,
    snapshot: Option<Vec<Container>>,
    snapshot_at: Option<tokio::time::Instant>,
}

pub(crate) async fn watch(
    agent: &Agent,
    runtime: Arc<dyn ContainerRuntime>,
    state: &mut SyncState,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut changes = runtime.changes();
    full_sync(agent, runtime.as_ref(), state).await?;
    let mut tick = tokio::time::interval(agent.config.sync_interval);
    tick.reset();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            change = changes.next() => match change {
                Some(Ok(())) => {
                    // Docker sends several events for one change (kill, die,
                    // stop): let them settle, then sync once.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while let Some(Some(more)) = changes.next().now_or_never() { more?; }
                }
                Some(Err(error)) => return Err(error),
                None => anyhow::bail!("docker event stream ended"),
            },
        }
        full_sync(agent, runtime.as_ref(), state).await?;
    }
}

pub(crate) async fn full_sync(
    agent: &Agent,
    runtime: &dyn ContainerRuntime,
    state: &mut SyncState,
) -> Result<()> {
    let mut containers = runtime.list().await?;
    containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    let services = sync::services(&containers);
    let changes = sync::diff(state.services.as_ref(), &services);
    let shape = |cs: &[Container]| -> Vec<(String, String, String, Option<String>)> {
        cs.iter()
            .map(|c| {
                (
                    c.id.clone(),
                    c.service.to_string(),
                    c.state.clone(),
                    c.health.clone(),
                )
            })
            .collect()
    };
    let changed = state.snapshot.as_deref().map(shape) != Some(shape(&containers));
    let due = state
        .snapshot_at
        .is_none_or(|at| at.elapsed() >= agent.config.snapshot_interval);
    if changed || due {
        let message = format!("{} containers", containers.len());
        let data = serde_json::to_value(Snapshot {
            containers: containers.clone(),
        })?;
        agent.emit(kinds::NODE_SNAPSHOT, None, Severity::Info, &message, data);
        state.snapshot = Some(containers);
        state.snapshot_at = Some(tokio::time::Instant::now());
    }
    for change in changes {
        info!(kind = change.kind, service = %change.service, message = %change.message, "service changed");
        agent.emit(
            change.kind,
            Some(&change.service),
            change.severity,
            &change.message,
            json!({}),
        );
    }
    state.services = Some(services);
    Ok(())
}
