//! The agent's identity in a fleet: its secrets file under the root
//! (`config/agent/<node>.json`, mode 0600), written once from the
//! enrollment token `homelab node add` printed (`HOMELAB_ENROLL`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use homelab_core::fsutil;
use homelab_core::identity::AgentSecrets;
use homelab_core::{Layout, Name};

/// On a node: the agent's secrets, from `HOMELAB_ENROLL` (stored, mode
/// 0600, replacing older ones) or from the file a previous enrollment
/// wrote. `None` when neither exists (open mode).
pub fn load(layout: &Layout, node: &Name, token: Option<&str>) -> Result<Option<AgentSecrets>> {
    let path = layout.agent_secrets(node);
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        let secrets =
            AgentSecrets::from_token(token).map_err(|e| anyhow::anyhow!("HOMELAB_ENROLL: {e}"))?;
        if &secrets.node != node {
            bail!(
                "HOMELAB_ENROLL holds the identity of {}, not of {node}",
                secrets.node
            );
        }
        fsutil::write_secret(&path, &fsutil::json_bytes(&secrets)?)?;
        tracing::info!(path = %path.display(), "enrolled: secrets stored");
        return Ok(Some(secrets));
    }
    read_agent_secrets(&path)
}

fn read_agent_secrets(path: &Path) -> Result<Option<AgentSecrets>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let secrets: AgentSecrets = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("{} does not hold agent secrets", path.display()))?;
    secrets
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some(secrets))
}
