//! The audit log page: who approved, rejected or logged in, when.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use homelab_core::Name;
use serde::Deserialize;

use crate::pages::frame;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::Frame;
use crate::present::When;
use crate::{rejected, AppError, AppState};

pub struct AuditRow {
    pub at: When,
    pub operator: String,
    pub what: &'static str,
    pub target: String,
    /// The action's page, for a decision.
    pub link: Option<String>,
    pub via: String,
    pub client: String,
    pub ok: bool,
    pub detail: String,
}

impl AuditRow {
    pub fn of(entry: &homelab_core::audit::Entry, now: &chrono::DateTime<Utc>) -> AuditRow {
        use homelab_core::audit::What;
        let target = entry.target.clone().unwrap_or_default();
        let link = match entry.what {
            What::Approve | What::Reject => {
                Name::parse(&target).ok().map(|id| format!("/actions/{id}"))
            }
            What::Logs => target.split_once('/').and_then(|(node, container)| {
                Some(format!(
                    "/nodes/{}/logs/{container}",
                    Name::parse(node).ok()?
                ))
                .filter(|_| homelab_core::logs::container_name_ok(container))
            }),
            _ => None,
        };
        AuditRow {
            at: When::new(&entry.ts, now),
            operator: entry.operator.clone(),
            what: entry.what.as_str(),
            target,
            link,
            via: entry.via.clone(),
            client: entry.client.clone().unwrap_or_default(),
            ok: entry.ok,
            detail: entry.detail.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
pub(crate) struct AuditPage {
    frame: Frame,
    operator: Option<String>,
    rows: Vec<AuditRow>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    pub operator: Option<String>,
    pub since: Option<String>,
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// The filter asked for, checked.
    pub fn filter(&self) -> Result<homelab_core::audit::Filter, AppError> {
        let operator = match self.operator.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(o) if o.chars().count() <= 64 && !o.chars().any(char::is_control) => {
                Some(o.to_string())
            }
            Some(_) => {
                return Err(AppError::BadRequest(
                    "operator: at most 64 characters, no control characters".into(),
                ))
            }
        };
        let since = match self.since.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        AppError::BadRequest(format!("since {s:?}: {e} (RFC 3339 expected)"))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        Ok(homelab_core::audit::Filter {
            operator,
            since,
            what: None,
        })
    }
}

/// `GET /audit`: the trail, for a logged-in operator.
pub async fn audit_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let filter = query.filter()?;
    let (frame, set_csrf) = frame(&state, &headers, "audit", "/audit".into())?;
    let authed = frame.authed;
    let rows = if authed {
        let now = Utc::now();
        homelab_core::audit::read(
            &state.layout,
            &filter,
            query.limit.unwrap_or(500).clamp(1, 5000),
        )?
        .iter()
        .map(|e| AuditRow::of(e, &now))
        .collect()
    } else {
        Vec::new()
    };
    let page = AuditPage {
        frame,
        operator: filter.operator,
        rows,
    };
    let mut response = respond(render(page)?, set_csrf);
    if !authed {
        *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    }
    Ok(response)
}
