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
    let token = homelab_core::operator::new_secret();
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

/// Who a request is: [`operator::ADMIN`] for the operator token (bearer or
/// its session), else the named operator whose API token or live session
/// it carries ([`homelab_core::operator`]). Reads the operator's file, so
/// a removed operator or a new password is refused at once.
pub fn who(layout: &Layout, admin_token: &str, headers: &HeaderMap) -> Option<String> {
    use homelab_core::operator;
    if let Some(bearer) = bearer(headers) {
        if matches(admin_token, &bearer) {
            return Some(operator::ADMIN.into());
        }
        let (name, secret) = operator::parse_token(&bearer)?;
        let found = operator::read(layout, &name).ok().flatten()?;
        return found.token_ok(secret).then(|| name.to_string());
    }
    let cookie = crate::websec::cookie(headers, crate::websec::SESSION_COOKIE)?;
    if crate::websec::same(&crate::websec::session_value(admin_token), cookie) {
        return Some(operator::ADMIN.into());
    }
    let name = operator::session_name(cookie)?;
    let found = operator::read(layout, &name).ok().flatten()?;
    found
        .session_ok(cookie, admin_token)
        .then(|| name.to_string())
}

/// A login's verdict: the session cookie's value for the operator `name`
/// with `password`, or None. `admin` logs in with the operator token.
/// Slow on purpose for a named operator (argon2): call it off the runtime.
pub fn login(layout: &Layout, admin_token: &str, name: &str, password: &str) -> Option<String> {
    use homelab_core::operator;
    if name == operator::ADMIN {
        return matches(admin_token, password).then(|| crate::websec::session_value(admin_token));
    }
    let found = homelab_core::Name::parse(name)
        .ok()
        .and_then(|name| operator::read(layout, &name).ok().flatten());
    let Some(found) = found else {
        // As slow as a wrong password, so a try does not tell whether the
        // name exists.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| homelab_core::identity::hash_password("dummy"));
        homelab_core::identity::verify_password(password, dummy);
        return None;
    };
    found
        .password_ok(password)
        .then(|| operator::session_for(&found, admin_token))
}
