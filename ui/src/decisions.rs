//! Approvals and rejections, from the API, the pages and MQTT; the repo's sync asked for from a page.

use crate::access::audit;
use crate::access::authorize;
use crate::access::client_ip;
use crate::access::csrf_refused;
use crate::access::Client;
use crate::api::parse_id;
use crate::errors::rejected;
use crate::errors::AppError;
use crate::AppState;
use crate::{repo, websec};

use anyhow::Result;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use chrono::Utc;
use homelab_core::store::{Move, TransitionError};
use homelab_core::{Action, ActionState, Name};
use serde::Deserialize;
use tracing::{info, warn};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

pub(crate) fn parse_decision(payload: &[u8]) -> Result<Decision, String> {
    if payload.len() > 4096 {
        return Err("payload larger than 4096 bytes".into());
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Decision::default());
    }
    let decision: Decision = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    for text in [&decision.by, &decision.note].into_iter().flatten() {
        if text.chars().count() > 500 || text.chars().any(char::is_control) {
            return Err(
                "by and note must be at most 500 characters, without control characters".into(),
            );
        }
    }
    Ok(decision)
}

/// `approve` or `reject`, the last level of a decision's path or topic.
pub(crate) fn verdict_state(verdict: homelab_core::topics::Verdict) -> ActionState {
    match verdict {
        homelab_core::topics::Verdict::Approve => ActionState::Approved,
        homelab_core::topics::Verdict::Reject => ActionState::Rejected,
    }
}

pub(crate) fn decision_state(verb: &str) -> Option<ActionState> {
    homelab_core::topics::Verdict::parse(verb).map(verdict_state)
}

pub(crate) fn parse_verb(verb: &str) -> Result<ActionState, AppError> {
    decision_state(verb).ok_or_else(|| {
        AppError::NotFound(format!("no such decision {verb:?}; use approve or reject"))
    })
}

/// `POST /api/actions/<id>/approve|reject`. The body is optional JSON
/// `{"by":"…","note":"…"}`, whatever its content type says.
pub(crate) async fn api_decision(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Action>, AppError> {
    let by = authorize(&state, &headers, &client)?;
    let to = parse_verb(&verb)?;
    let id = parse_id(&id)?;
    // The body's `by` is not believed: who decided is who logged in.
    let decision = parse_decision(&body)
        .map_err(|e| AppError::BadRequest(format!("bad request body: {e}")))?;
    let note = decision.note.as_deref().unwrap_or("");
    let decided = decide(&state, &id, to, &by, note).await;
    audit_decision(&state, &by, "api", &client, &id, to, note, &decided);
    Ok(Json(decided?))
}

#[derive(Deserialize)]
pub(crate) struct NoteForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    csrf: String,
    /// `yes` when the operator ticked "I understand" (guarded actions).
    #[serde(default)]
    confirm: String,
    /// The page the form was on, to go back to.
    #[serde(default)]
    back: String,
}

/// Where a form goes back to: a path of this site, else the overview.
pub fn back_to(back: &str) -> &str {
    let local = back.starts_with('/')
        && !back.starts_with("//")
        && back.len() <= 300
        && !back.contains('\\')
        && back.bytes().all(|b| b.is_ascii_graphic());
    if local {
        back
    } else {
        "/"
    }
}

/// The page's approve/reject buttons: a form post with the login cookie,
/// answered with a redirect back to the page.
pub(crate) async fn page_decision(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path((id, verb)): Path<(String, String)>,
    form: Result<axum::Form<NoteForm>, FormRejection>,
) -> Result<Response, AppError> {
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    let by = authorize(&state, &headers, &client)?;
    let to = parse_verb(&verb)?;
    let id = parse_id(&id)?;
    let note = form.note.trim();
    if note.chars().count() > 500 || note.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "the note must be at most 500 characters, without control characters".into(),
        ));
    }
    // A guarded action is approved from the page only with "I understand"
    // ticked (the browser asks for it; this holds without the browser).
    if to == ActionState::Approved {
        let guarded = state
            .store
            .find(&id)?
            .is_some_and(|a| a.risk == homelab_core::Risk::Guarded);
        if guarded && form.confirm != "yes" {
            return Err(AppError::BadRequest(format!(
                "{id} is guarded: tick \"I understand\" to approve it"
            )));
        }
    }
    let decided = decide(&state, &id, to, &by, note).await;
    audit_decision(&state, &by, "page", &client, &id, to, note, &decided);
    decided?;
    Ok(Redirect::to(back_to(&form.back)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RepoForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    back: String,
}

/// The page's pin and unpin buttons: a form post with the login cookie.
pub(crate) async fn page_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(verb): Path<String>,
    form: Result<axum::Form<RepoForm>, FormRejection>,
) -> Result<Response, AppError> {
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    let by = authorize(&state, &headers, &client)?;
    match verb.as_str() {
        "pin" => {
            repo::write_pin(&state, &form.commit, &by)?;
            repo::audit_pin(&state, &by, "page", &client, Some(&form.commit));
        }
        "unpin" => {
            repo::remove_pin(&state, &by)?;
            repo::audit_pin(&state, &by, "page", &client, None);
        }
        _ => return Err(AppError::NotFound("no such page".into())),
    }
    Ok(Redirect::to(back_to(&form.back)).into_response())
}

/// The trail's line for a decision: taken, or refused with the reason.
#[allow(clippy::too_many_arguments)]
pub(crate) fn audit_decision(
    state: &AppState,
    by: &str,
    via: &str,
    client: &Client,
    id: &Name,
    to: ActionState,
    note: &str,
    decided: &Result<Action, AppError>,
) {
    use homelab_core::audit::{Entry, What};
    let what = if to == ActionState::Approved {
        What::Approve
    } else {
        What::Reject
    };
    let entry = Entry::new(by, what, via, decided.is_ok(), Utc::now())
        .target(id.as_str())
        .client(client_ip(client));
    let entry = match decided {
        Ok(_) => entry.detail(note),
        Err(AppError::Conflict(why) | AppError::NotFound(why)) => entry.detail(why),
        Err(_) => entry.detail("not taken"),
    };
    audit(state, entry);
}

/// Moves a pending action to approved or rejected; the loser of a race with
/// the supervisor's cancel (or another operator) gets a conflict naming the
/// state the action is in now.
pub(crate) async fn decide(
    state: &AppState,
    id: &Name,
    to: ActionState,
    by: &str,
    note: &str,
) -> Result<Action, AppError> {
    let why = if note.is_empty() {
        format!("{} by operator", to.dir())
    } else {
        note.to_string()
    };
    let mv = Move {
        from: ActionState::Pending,
        to,
        by,
        why: &why,
        at: Utc::now(),
        result: None,
    };
    let action = state.store.transition(id, mv).map_err(|e| match e {
        TransitionError::NotFound(id) => AppError::NotFound(format!("no action {id}")),
        TransitionError::WrongState { id, actual, .. } => {
            AppError::Conflict(format!("action {id} is {actual}, not pending"))
        }
        other => AppError::Internal(anyhow::Error::new(other)),
    })?;
    info!(id = %id, state = %to, by, "operator decision");
    metrics::counter!("homelab_actions_decided_total", "state" => to.dir()).increment(1);
    if let Some(mqtt) = &state.mqtt {
        let payload = serde_json::to_vec(&action).expect("action serializes");
        if let Err(error) = mqtt.publish(&state.topics.action(id), payload, true).await {
            warn!(%error, "action not published");
        }
    }
    Ok(action)
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The approval decoder (MQTT `actions/<id>/approve|reject` and
        /// the HTTP body) answers any bytes, and what it accepts is short
        /// and free of control characters.
        #[test]
        fn any_decision_payload_is_answered_safely(payload in proptest::collection::vec(any::<u8>(), 0..5000)) {
            if let Ok(decision) = parse_decision(&payload) {
                for text in [&decision.by, &decision.note].into_iter().flatten() {
                    prop_assert!(text.chars().count() <= 500);
                    prop_assert!(!text.chars().any(char::is_control));
                }
            }
        }

        #[test]
        fn mutated_decisions_are_answered_safely(
            by in "\\PC{0,600}",
            note in ".{0,40}",
            cut in 0usize..200,
        ) {
            let json = serde_json::json!({"by": by, "note": note}).to_string();
            let bytes = &json.as_bytes()[..cut.min(json.len())];
            if let Ok(decision) = parse_decision(bytes) {
                prop_assert!(decision.by.is_none_or(|b| b.chars().count() <= 500));
            }
        }
    }
}
