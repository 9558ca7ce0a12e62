//! The operator token. `HOMELAB_UI_TOKEN` if set, else
//! `<root>/config/ui/token`, created with a random value (mode 0600) on
//! first start. Requests that change something present it as
//! `Authorization: Bearer <token>` or as the `homelab_token` cookie that the
//! login form sets (HttpOnly, SameSite=Strict, so other sites cannot ride it).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};
use axum::http::HeaderMap;
use homelab_core::Layout;
use rand::RngExt;

pub const COOKIE: &str = "homelab_token";

/// Loads the token, creating the file if needed.
pub fn load_token(layout: &Layout, from_env: Option<String>) -> Result<String> {
    if let Some(token) = from_env.filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_string());
    }
    let path = layout.ui_token_file();
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => anyhow::bail!("{} is empty; delete it to get a new token", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    let bytes: [u8; 24] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(path.parent().expect("token file has a folder"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "operator token created");
    Ok(token)
}

/// The token a request presents, if any.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some(token.trim().to_string());
        }
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Compares in time independent of where the first difference is.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
