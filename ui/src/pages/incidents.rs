//! The incidents: open and closed, and a page per incident with its timeline.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{Duration, Utc};
use homelab_core::time::Timestamp;
use homelab_core::world::ResolvedIncident;

use crate::pages::frame;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::views::EventView;
use crate::pages::views::IncidentView;
use crate::pages::Frame;
use crate::present;
use crate::search::{self, Filter};
use crate::{world, AppError, AppState};

#[derive(Template)]
#[template(path = "incidents.html")]
pub(crate) struct IncidentsPage {
    frame: Frame,
    open: Vec<IncidentView>,
    resolved: Vec<IncidentView>,
}

pub async fn incidents_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let (frame, set_csrf) = frame(&state, &headers, "incidents", "/incidents".into())?;
    let world = world(&state)?;
    let history = crate::incident_history(&state)?;
    let page = IncidentsPage {
        frame,
        open: world
            .incidents
            .iter()
            .map(|i| IncidentView::new(i, None, &now))
            .collect(),
        resolved: history
            .iter()
            .rev()
            .take(100)
            .map(|r| IncidentView::new(&r.incident, Some(r.resolved_at), &now))
            .collect(),
    };
    Ok(respond(render(page)?, set_csrf))
}

pub struct Occurrence {
    pub incident: IncidentView,
    pub events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "incident.html")]
pub(crate) struct IncidentPage {
    frame: Frame,
    title: String,
    id: String,
    occurrences: Vec<Occurrence>,
}

/// The events around one occurrence of an incident: its node's (and
/// service's, if it has one) from a minute before it opened to a minute
/// after it closed, oldest first.
pub fn timeline_filter(
    i: &homelab_core::world::Incident,
    resolved: Option<Timestamp>,
    now: Timestamp,
) -> Filter {
    Filter {
        node: Some(i.node.clone()),
        service: i.service.clone(),
        since: Some(i.opened_at - Duration::minutes(1)),
        before: Some(resolved.unwrap_or(now) + Duration::minutes(1)),
        ..Default::default()
    }
}

pub async fn incident_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    if id.len() > 300 || id.chars().any(char::is_control) {
        return Err(AppError::BadRequest("bad incident id".into()));
    }
    let now = Utc::now();
    let world = world(&state)?;
    let history = crate::incident_history(&state)?;
    let mut found: Vec<(homelab_core::world::Incident, Option<Timestamp>)> = world
        .incidents
        .iter()
        .filter(|i| i.id == id)
        .map(|i| (i.clone(), None))
        .collect();
    found.extend(
        history
            .iter()
            .rev()
            .filter(|r: &&ResolvedIncident| r.incident.id == id)
            .take(5)
            .map(|r| (r.incident.clone(), Some(r.resolved_at))),
    );
    if found.is_empty() {
        return Err(AppError::NotFound(format!(
            "no incident {id}: neither open nor among the last resolved"
        )));
    }
    let (frame, set_csrf) = frame(
        &state,
        &headers,
        "incidents",
        format!("/incidents/{}", present::path_segment(&id)),
    )?;
    let mut occurrences = Vec::new();
    for (incident, resolved) in found {
        let filter = timeline_filter(&incident, resolved, now);
        let mut events = search::search(&state.layout, &filter, 100)?.events;
        events.reverse();
        occurrences.push(Occurrence {
            incident: IncidentView::new(&incident, resolved, &now),
            events: events.iter().map(|e| EventView::new(e, &now)).collect(),
        });
    }
    let page = IncidentPage {
        frame,
        title: present::incident_title_of_id(&id),
        id,
        occurrences,
    };
    Ok(respond(render(page)?, set_csrf))
}
