//! The operator token. `HOMELAB_UI_TOKEN` if set, else
//! `<root>/config/ui/token`, created with a random value (mode 0600) on
//! first start. Requests that change something present it as
//! `Authorization: Bearer <token>`, or the session cookie the login form
//! sets ([`crate::websec`]). The token is never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};
use axum::http::HeaderMap;
use homelab_core::Layout;
use rand::RngExt;

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

/// The bearer token a request presents, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| token.trim().to_string())
}

/// Compares in time independent of where the first difference is.
pub fn matches(expected: &str, given: &str) -> bool {
    crate::websec::same(expected, given)
}
