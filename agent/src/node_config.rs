//! The node config the control plane sends from the repo: checked, kept on disk, and handed to the tasks that use it.
use std::sync::Arc;

use homelab_core::nodeconfig::NodeConfig;
use homelab_core::{fsutil, Layout, Name};
use tracing::{info, warn};

use crate::{blocking, Agent};

/// The node config stored by an earlier run, if it is still good.
pub(crate) fn load_node_config(layout: &Layout, node: &Name) -> NodeConfig {
    let path = layout.agent_config(node);
    match std::fs::read(&path) {
        Ok(bytes) => match NodeConfig::from_payload(&bytes, node) {
            Ok(config) => {
                info!(revision = %config.revision, "node config from the last run");
                config
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "stored node config ignored");
                NodeConfig::empty(node)
            }
        },
        Err(_) => NodeConfig::empty(node),
    }
}

/// A node config from the control plane: checked, kept on disk, and
/// applied when its revision is new. An empty payload (the node left the
/// inventory) stops every check.
pub(crate) fn apply_node_config(agent: &Agent, payload: &[u8]) {
    let node = &agent.config.node;
    // Fleet mode: sealed for this node and signed by the control plane,
    // also an empty one (a node that left the inventory gets a signed
    // empty config).
    let Some(payload) = agent.config_from_control(payload) else {
        return;
    };
    let payload: &[u8] = &payload;
    let config = if payload.is_empty() {
        NodeConfig::empty(node)
    } else {
        match NodeConfig::from_payload(payload, node) {
            Ok(config) => config,
            Err(error) => {
                warn!(%error, "node config rejected; the last good one stays");
                metrics::counter!("homelab_agent_config_rejected_total").increment(1);
                return;
            }
        }
    };
    if agent.node_config.borrow().revision == config.revision {
        // The same config from a later commit: only which commit it is at
        // moves (nothing restarts).
        if agent.node_config.borrow().commit != config.commit {
            info!(
                commit = config.commit.as_deref().unwrap_or("none"),
                "node config unchanged at a new commit"
            );
            let path = agent.config.layout.agent_config(node);
            if let Ok(bytes) = serde_json::to_vec(&config) {
                let _ = blocking(|| fsutil::write_atomic(&path, &bytes));
            }
            agent.node_config.send_if_modified(|current| {
                *current = Arc::new(config);
                false
            });
        }
        return;
    }
    // Fleet mode: an older signed config replayed on the topic.
    if agent.keys.is_some() && config.is_stale(&agent.node_config.borrow()) {
        warn!(revision = %config.revision, "node config refused: older than the one in use");
        metrics::counter!("homelab_agent_refused_total", "what" => "config", "reason" => "stale")
            .increment(1);
        return;
    }
    let path = agent.config.layout.agent_config(node);
    let written = serde_json::to_vec(&config)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| blocking(|| fsutil::write_atomic(&path, &bytes)));
    if let Err(error) = written {
        warn!(
            error = format!("{error:#}"),
            "node config not stored (applied all the same)"
        );
    }
    info!(
        revision = %config.revision,
        commit = config.commit.as_deref().unwrap_or("none"),
        healthchecks = config.healthchecks.len(),
        brokers = config.mqtt_brokers.len(),
        "node config applied"
    );
    agent.node_config.send_replace(Arc::new(config));
}
