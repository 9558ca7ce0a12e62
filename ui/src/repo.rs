//! The desired state's git history over HTTP: what is live, the recent
//! commits, pin and unpin (operator token), a fetch asked for, and the push
//! webhook. The ui never runs git: it reads what the sync wrote under
//! `state/repo/` and asks the sync by files there (`sync.request`,
//! `pin.json`), which also works when the sync runs in another process.
//!
//! The webhook takes GitHub's, Gitea's and Forgejo's push payloads, each
//! signed with HMAC-SHA256 over the body with the secret in
//! `<root>/config/repo/webhook-secret`: `X-Hub-Signature-256: sha256=<hex>`
//! (GitHub), `X-Gitea-Signature: <hex>` (Gitea; Forgejo sends it too) or
//! `X-Forgejo-Signature: <hex>`. A missing or wrong signature is 401 and
//! nothing is fetched; [`verify`] is pure.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use homelab_core::repo::{CommitChange, PinRequest, RepoStatus};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use tracing::{info, warn};

use crate::{authorize, AppError, AppState, Client};

/// The largest webhook payload taken (a push of many commits is large).
pub const WEBHOOK_MAX_BYTES: usize = 5 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    Gitea,
    Forgejo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    /// No signature header of a forge we know.
    Unsigned,
    /// A signature that is not hex, or does not match.
    BadSignature,
}

/// Which forge signed `body`, if its signature matches `secret`.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Forge, WebhookError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let (forge, hex) = if let Some(v) = get("x-hub-signature-256") {
        (
            Forge::GitHub,
            v.strip_prefix("sha256=")
                .ok_or(WebhookError::BadSignature)?,
        )
    } else if let Some(v) = get("x-forgejo-signature") {
        (Forge::Forgejo, v)
    } else if let Some(v) = get("x-gitea-signature") {
        (Forge::Gitea, v)
    } else {
        return Err(WebhookError::Unsigned);
    };
    let given = decode_hex(hex).ok_or(WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    // Constant time.
    mac.verify_slice(&given)
        .map_err(|_| WebhookError::BadSignature)?;
    Ok(forge)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a push payload says that matters here.
#[derive(Debug, Deserialize)]
struct Push {
    /// `refs/heads/<branch>`.
    #[serde(rename = "ref")]
    reference: String,
}

fn not_git() -> AppError {
    AppError::NotFound("the desired state is a folder, not a git repo (--repo)".into())
}

fn status(state: &AppState) -> Result<RepoStatus, AppError> {
    RepoStatus::read(&state.layout).ok_or_else(not_git)
}

/// Asks the sync for a fetch now.
fn ask_fetch(state: &AppState) -> Result<(), AppError> {
    let path = state.layout.repo_sync_request();
    std::fs::create_dir_all(state.layout.repo_dir()).map_err(|e| AppError::Internal(e.into()))?;
    std::fs::write(&path, b"").map_err(|e| AppError::Internal(e.into()))
}

/// `GET /api/repo`: the sync's status.
pub async fn get_status(State(state): State<AppState>) -> Result<Json<RepoStatus>, AppError> {
    Ok(Json(status(&state)?))
}

/// The recent commits, newest first, with what each changed.
pub fn recent(state: &AppState) -> Vec<CommitChange> {
    std::fs::read(state.layout.repo_dir().join("commits.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// `GET /api/repo/commits`.
pub async fn commits(State(state): State<AppState>) -> Result<Json<Vec<CommitChange>>, AppError> {
    status(&state)?;
    Ok(Json(recent(&state)))
}

/// `POST /api/repo/sync` (operator token): fetch now.
pub async fn sync(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    authorize(&state, &headers, &client)?;
    status(&state)?;
    ask_fetch(&state)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"fetch": "asked"}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    commit: String,
    /// Accepted from clients of earlier releases, not believed.
    #[serde(default)]
    #[allow(dead_code)]
    by: Option<String>,
}

/// Whether `commit` can name a commit: 4 to 64 lower-case hex digits.
pub fn commit_ok(commit: &str) -> bool {
    (4..=64).contains(&commit.len())
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes the pin for the sync: `commit` (checked), by `by`.
pub fn write_pin(state: &AppState, commit: &str, by: &str) -> Result<PinRequest, AppError> {
    let commit = commit.trim().to_ascii_lowercase();
    if !commit_ok(&commit) {
        return Err(AppError::BadRequest(format!(
            "commit {commit:?}: 4 to 64 hex digits of a commit's name expected"
        )));
    }
    status(&state.clone())?;
    let pin = PinRequest {
        commit,
        by: by.to_string(),
        at: chrono::Utc::now(),
    };
    homelab_core::fsutil::write_json_atomic(&state.layout.repo_pin(), &pin)
        .map_err(AppError::Internal)?;
    info!(commit = %pin.commit, by = %pin.by, "pin asked for");
    Ok(pin)
}

pub fn remove_pin(state: &AppState, by: &str) -> Result<(), AppError> {
    status(state)?;
    match std::fs::remove_file(state.layout.repo_pin()) {
        Ok(()) => {
            info!(by, "unpin asked for");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AppError::Internal(e.into())),
    }
}

/// The trail's line for a pin (`commit`) or an unpin.
pub(crate) fn audit_pin(
    state: &AppState,
    by: &str,
    via: &str,
    client: &Client,
    commit: Option<&str>,
) {
    use homelab_core::audit::{Entry, What};
    let what = if commit.is_some() {
        What::Pin
    } else {
        What::Unpin
    };
    let mut entry =
        Entry::new(by, what, via, true, chrono::Utc::now()).client(crate::client_ip(client));
    if let Some(commit) = commit {
        entry = entry.target(commit);
    }
    crate::audit(state, entry);
}

/// `POST /api/repo/pin` (operator token): `{"commit": "3f2a91c", "by": …}`.
pub async fn pin(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let by = authorize(&state, &headers, &client)?;
    // The body's `by` is not believed: who pinned is who logged in.
    let body: PinBody = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("bad request body: {e}")))?;
    let pin = write_pin(&state, &body.commit, &by)?;
    audit_pin(&state, &by, "api", &client, Some(&pin.commit));
    Ok((StatusCode::ACCEPTED, Json(pin)).into_response())
}

/// `POST /api/repo/unpin` (operator token).
pub async fn unpin(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let by = authorize(&state, &headers, &client)?;
    remove_pin(&state, &by)?;
    audit_pin(&state, &by, "api", &client, None);
    Ok((StatusCode::ACCEPTED, Json(json!({"pinned": false}))).into_response())
}

/// `POST /api/repo/webhook`: a push from the git server, signed.
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let secret = std::fs::read_to_string(state.layout.repo_webhook_secret())
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(not_git)?;
    let forge = match verify(&headers, &body, secret.as_bytes()) {
        Ok(forge) => forge,
        Err(error) => {
            warn!(?error, "repo webhook refused");
            metrics::counter!("homelab_repo_webhook_refused_total").increment(1);
            return Err(AppError::Unsigned(match error {
                WebhookError::Unsigned => "the webhook is not signed (X-Hub-Signature-256, X-Gitea-Signature or X-Forgejo-Signature)".into(),
                WebhookError::BadSignature => "the webhook's signature does not match the secret in config/repo/webhook-secret".into(),
            }));
        }
    };
    let event = ["x-github-event", "x-forgejo-event", "x-gitea-event"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or("push");
    if event == "ping" {
        return Ok(Json(json!({"pong": true})).into_response());
    }
    if event != "push" {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"ignored": format!("a {event} event")})),
        )
            .into_response());
    }
    let push: Push = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("not a push payload: {e}")))?;
    let status = status(&state)?;
    let tracked = format!("refs/heads/{}", status.branch);
    if !status.branch.is_empty() && push.reference != tracked {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"ignored": format!("a push to {}, not to {tracked}", push.reference)})),
        )
            .into_response());
    }
    ask_fetch(&state)?;
    info!(?forge, reference = %push.reference, "repo webhook: fetch asked for");
    metrics::counter!("homelab_repo_webhooks_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(json!({"fetch": "asked"}))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn signatures_of_each_forge() {
        let (secret, body) = (
            b"s3cret".as_slice(),
            br#"{"ref":"refs/heads/main"}"#.as_slice(),
        );
        let good = sign(secret, body);
        let headers = |pairs: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        for (given, want) in [
            (
                headers(&[("x-hub-signature-256", format!("sha256={good}"))]),
                Ok(Forge::GitHub),
            ),
            (
                headers(&[("x-gitea-signature", good.clone())]),
                Ok(Forge::Gitea),
            ),
            (
                headers(&[
                    ("x-forgejo-signature", good.clone()),
                    ("x-gitea-signature", good.clone()),
                ]),
                Ok(Forge::Forgejo),
            ),
            (headers(&[]), Err(WebhookError::Unsigned)),
            (
                headers(&[("x-hub-signature", "sha1=abcd".into())]),
                Err(WebhookError::Unsigned),
            ),
            (
                headers(&[("x-hub-signature-256", good.clone())]),
                Err(WebhookError::BadSignature),
            ),
            (
                headers(&[("x-gitea-signature", sign(b"other", body))]),
                Err(WebhookError::BadSignature),
            ),
            (
                headers(&[("x-gitea-signature", "zz".into())]),
                Err(WebhookError::BadSignature),
            ),
            (
                headers(&[("x-gitea-signature", good[..10].into())]),
                Err(WebhookError::BadSignature),
            ),
        ] {
            assert_eq!(verify(&given, body, secret), want, "{given:?}");
        }
        // The body is what is signed.
        let h = headers(&[("x-gitea-signature", good)]);
        assert_eq!(verify(&h, b"{}", secret), Err(WebhookError::BadSignature));
    }

    #[test]
    fn commit_names() {
        for (commit, ok) in [
            ("3f2a91c", true),
            ("3f2a", true),
            ("3f2", false),
            ("3F2A91C", false),
            ("main", false),
            ("HEAD~1", false),
        ] {
            assert_eq!(commit_ok(commit), ok, "{commit}");
        }
    }
}
