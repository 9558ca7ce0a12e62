//! The event log page: filters, paging, the routine events folded.

use anyhow::Context as _;
use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use homelab_core::time::Timestamp;
use homelab_core::{Name, Severity};
use serde::Deserialize;

use crate::pages::frame;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::views::EventView;
use crate::pages::Frame;
use crate::present;
use crate::search::{self, Filter};
use crate::{rejected, world, AppError, AppState};

/// The events page's and `/api/events`' query.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub before_id: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Types to leave out, comma-separated.
    #[serde(default)]
    pub exclude: Option<String>,
    /// The events page: `on` shows the routine snapshots it hides.
    #[serde(default)]
    pub snapshots: Option<String>,
}

/// Event types the events page hides unless asked (`snapshots=on`) or
/// searched for by type: a node's periodic full state, about half of the
/// log, is rarely what an operator looks for.
pub const ROUTINE: [&str; 1] = [homelab_core::event::kinds::NODE_SNAPSHOT];

/// A time of the query: RFC 3339, or what a browser's `datetime-local`
/// field sends (`2026-11-24T10:00`, taken as UTC).
pub(crate) fn parse_time(what: &str, raw: &str) -> Result<Timestamp, AppError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(raw, format) {
            return Ok(t.and_utc());
        }
        if let Ok(d) = chrono::NaiveDate::parse_from_str(raw, format) {
            return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
        }
    }
    Err(AppError::BadRequest(format!(
        "bad {what} {raw:?}: RFC 3339 (2026-11-24T10:00:00Z) or 2026-11-24T10:00 (UTC) expected"
    )))
}

impl EventsQuery {
    /// The filter, every part checked; empty fields (a form's) are absent.
    pub fn filter(&self) -> Result<Filter, AppError> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let name = |what: &str, v: &Option<String>| {
            given(v)
                .map(Name::parse)
                .transpose()
                .map_err(|e| AppError::BadRequest(format!("bad {what}: {e}")))
        };
        let kind = given(&self.kind).map(str::to_string);
        if kind.as_ref().is_some_and(|k| {
            k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }) {
            return Err(AppError::BadRequest(
                "bad type: letters, digits and _ only, at most 64".into(),
            ));
        }
        let severity = given(&self.severity)
            .map(|s| {
                serde_json::from_value::<Severity>(serde_json::Value::String(s.into())).map_err(
                    |_| {
                        AppError::BadRequest(format!(
                            "bad severity {s:?}: info, warning, error or critical"
                        ))
                    },
                )
            })
            .transpose()?;
        let exclude: Vec<String> = given(&self.exclude)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if exclude.len() > 32
            || exclude
                .iter()
                .any(|k| k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(AppError::BadRequest(
                "bad exclude: at most 32 types of letters, digits and _".into(),
            ));
        }
        let before_id = given(&self.before_id).map(str::to_string);
        if before_id
            .as_ref()
            .is_some_and(|id| id.len() > 128 || id.chars().any(char::is_control))
        {
            return Err(AppError::BadRequest("bad before_id".into()));
        }
        Ok(Filter {
            node: name("node", &self.node)?,
            service: name("service", &self.service)?,
            kind,
            severity,
            since: given(&self.since)
                .map(|s| parse_time("since", s))
                .transpose()?,
            before: given(&self.before)
                .map(|s| parse_time("before", s))
                .transpose()?,
            before_id,
            exclude,
        })
    }

    /// The events page's filter: [`EventsQuery::filter`], leaving out the
    /// routine types unless they are asked for.
    pub fn page_filter(&self) -> Result<Filter, AppError> {
        let mut filter = self.filter()?;
        let shown = self.snapshots.as_deref() == Some("on") || filter.kind.is_some();
        if !shown {
            filter.exclude.extend(ROUTINE.iter().map(|k| k.to_string()));
        }
        Ok(filter)
    }
}

#[derive(Template)]
#[template(path = "events.html")]
pub(crate) struct EventsPage {
    frame: Frame,
    q: EventsForm,
    events: Vec<EventView>,
    older: String,
    /// The newest page: the live tail adds to it.
    live: bool,
    bad_lines: usize,
}

/// The filter form's values as given, to show them back.
#[derive(Default)]
pub struct EventsForm {
    pub node: String,
    pub service: String,
    pub kind: String,
    pub severity: String,
    pub since: String,
    pub before: String,
    pub nodes: Vec<String>,
    pub exclude: String,
    /// Routine snapshots shown.
    pub snapshots: bool,
}

/// `k=v&…` of the given parts, percent-encoded.
pub(crate) fn query_string(parts: &[(&str, &str)]) -> String {
    parts
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", present::path_segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn events_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    let filter = query.page_filter()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let now = Utc::now();
    let layout = state.layout.clone();
    let search_filter = filter.clone();
    let page = tokio::task::spawn_blocking(move || search::search(&layout, &search_filter, limit))
        .await
        .context("event search task")??;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let form = EventsForm {
        node: text(&query.node),
        service: text(&query.service),
        kind: text(&query.kind),
        severity: text(&query.severity),
        since: text(&query.since),
        exclude: text(&query.exclude),
        snapshots: query.snapshots.as_deref() == Some("on"),
        // A cursor (with before_id) is the paging's, not the operator's.
        before: if query.before_id.is_some() {
            String::new()
        } else {
            text(&query.before)
        },
        nodes: world(&state)?
            .nodes
            .iter()
            .map(|n| n.node.to_string())
            .collect(),
    };
    let older = match (page.more, page.events.last()) {
        (true, Some(last)) => format!(
            "/events?{}",
            query_string(&[
                ("node", &form.node),
                ("service", &form.service),
                ("type", &form.kind),
                ("severity", &form.severity),
                ("since", &form.since),
                ("exclude", &form.exclude),
                ("snapshots", if form.snapshots { "on" } else { "" }),
                ("before", &homelab_core::time::format(&last.ts)),
                ("before_id", &last.id),
            ])
        ),
        _ => String::new(),
    };
    let back = format!(
        "/events?{}",
        query_string(&[("node", &form.node), ("type", &form.kind)])
    );
    let (frame, set_csrf) = frame(&state, &headers, "events", back)?;
    let page = EventsPage {
        frame,
        live: filter.before.is_none(),
        events: page
            .events
            .iter()
            .map(|e| EventView::new(e, &now))
            .collect(),
        older,
        bad_lines: page.bad_lines,
        q: form,
    };
    Ok(respond(render(page)?, set_csrf))
}
