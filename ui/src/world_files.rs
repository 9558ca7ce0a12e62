//! The control plane's files as the pages and the API read them: world state, histories, deployments, each parsed once per change.

use std::sync::Arc;

use anyhow::Result;
use homelab_core::world::{Incident, NodeState, ServiceState};
use tracing::warn;

use crate::errors::AppError;
use crate::AppState;

/// A world file as last parsed: a request parses it again only when the
/// observer rewrote it ([`homelab_core::fsutil::Watched`]). A version that
/// does not parse leaves the last good one in use, said as a problem of
/// the system; with nothing good yet, the request fails (503).
pub(crate) struct Parsed<T> {
    file: homelab_core::fsutil::Watched,
    value: Arc<Vec<T>>,
    good: bool,
    problem: Option<String>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            file: Default::default(),
            value: Arc::new(Vec::new()),
            good: false,
            problem: None,
        }
    }
}

impl<T: serde::de::DeserializeOwned> Parsed<T> {
    pub(crate) fn get(&mut self, path: &std::path::Path) -> Result<Arc<Vec<T>>, AppError> {
        match self.file.changed::<Vec<T>>(path) {
            Ok(Some(value)) => {
                self.value = Arc::new(value);
                self.good = true;
                self.problem = None;
            }
            Ok(None) => {}
            Err(error) => {
                let error = format!("{error:#}");
                if self.problem.as_ref() != Some(&error) {
                    warn!(%error, "world state unreadable");
                }
                self.problem = Some(error);
                if !self.good {
                    return Err(AppError::Unavailable(format!(
                        "world state {} is unreadable",
                        path.display()
                    )));
                }
            }
        }
        Ok(self.value.clone())
    }
}

/// The world files, parsed once per version.
#[derive(Default)]
pub struct WorldCache {
    nodes: Parsed<NodeState>,
    services: Parsed<ServiceState>,
    incidents: Parsed<Incident>,
    history: Parsed<homelab_core::world::ResolvedIncident>,
    status: Parsed<homelab_core::uptime::Track>,
}

impl WorldCache {
    /// World files that do not parse now (the last good state is shown).
    pub(crate) fn problems(&self) -> Vec<String> {
        [
            &self.nodes.problem,
            &self.services.problem,
            &self.incidents.problem,
            &self.history.problem,
            &self.status.problem,
        ]
        .into_iter()
        .flatten()
        .map(|p| format!("{p} (showing its last good state)"))
        .collect()
    }
}

/// Problems of the system itself, as the UI sees them, for the banner:
/// unreadable world files, unreadable lines of the event log, no broker.
pub(crate) fn system_problems(state: &AppState) -> Vec<String> {
    let mut out = state.world.lock().expect("world cache lock").problems();
    out.extend(state.tail.lock().expect("tail lock").bad.iter().cloned());
    if let Some(broker) = state.broker_down.lock().expect("broker lock").as_ref() {
        out.push(broker.clone());
    }
    out
}

pub(crate) struct World {
    pub(crate) nodes: Arc<Vec<NodeState>>,
    pub(crate) services: Arc<Vec<ServiceState>>,
    pub(crate) incidents: Arc<Vec<Incident>>,
}

pub(crate) fn world(state: &AppState) -> Result<World, AppError> {
    let mut cache = state.world.lock().expect("world cache lock");
    let layout = &state.layout;
    Ok(World {
        nodes: cache.nodes.get(&layout.world_nodes())?,
        services: cache.services.get(&layout.world_services())?,
        incidents: cache.incidents.get(&layout.world_incidents())?,
    })
}

/// Incidents that closed, oldest first (`world/incident_history.json`;
/// none before the first closes).
pub(crate) fn incident_history(
    state: &AppState,
) -> Result<Arc<Vec<homelab_core::world::ResolvedIncident>>, AppError> {
    let path = state.layout.world_incident_history();
    let mut cache = state.world.lock().expect("world cache lock");
    if !path.exists() {
        return Ok(Arc::default());
    }
    cache.history.get(&path)
}

/// Time per state of each node and service (`world/status_history.json`;
/// none before the first incident closes).
pub(crate) fn status_history(
    state: &AppState,
) -> Result<Arc<Vec<homelab_core::uptime::Track>>, AppError> {
    let path = state.layout.world_status_history();
    let mut cache = state.world.lock().expect("world cache lock");
    if !path.exists() {
        return Ok(Arc::default());
    }
    cache.status.get(&path)
}

/// `world/deployments.json`, oldest first (empty when there is none yet).
pub(crate) fn read_deployments(state: &AppState) -> Vec<homelab_core::world::Deployment> {
    std::fs::read(state.layout.world_deployments())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
