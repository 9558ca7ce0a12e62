//! The search page: over nodes, services, incidents, actions and events.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use homelab_core::ActionState;
use serde::Deserialize;

use crate::pages::actions;
use crate::pages::finished_states;
use crate::pages::frame;
use crate::pages::overview::node_cards;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::views::ActionView;
use crate::pages::views::IncidentView;
use crate::pages::Frame;
use crate::present;
use crate::{json_word, rejected, world, AppError, AppState};

/// One thing a search found: what it is, in words, and its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub title: String,
    pub link: String,
    pub detail: String,
}

/// What a search shows: nodes, services, incidents and actions whose
/// name, id or title holds every word of `q` (case aside), at most `limit`
/// of each, in the order given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hits {
    pub nodes: Vec<Hit>,
    pub services: Vec<Hit>,
    pub incidents: Vec<Hit>,
    pub actions: Vec<Hit>,
}

/// Keeps the candidates (text searched, hit) that match every word of `q`.
pub fn matching(q: &str, candidates: Vec<(String, Hit)>, limit: usize) -> Vec<Hit> {
    let words: Vec<String> = q.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return Vec::new();
    }
    candidates
        .into_iter()
        .filter(|(text, _)| {
            let text = text.to_lowercase();
            words.iter().all(|w| text.contains(w.as_str()))
        })
        .map(|(_, hit)| hit)
        .take(limit)
        .collect()
}

#[derive(Template)]
#[template(path = "search.html")]
pub(crate) struct SearchPage {
    frame: Frame,
    q: String,
    /// (heading, its hits), those with hits.
    groups: Vec<(&'static str, Vec<Hit>)>,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: String,
}

pub async fn search_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    if query.q.chars().count() > 100 {
        return Err(AppError::BadRequest("q: at most 100 characters".into()));
    }
    let now = Utc::now();
    let back = format!("/search?q={}", present::path_segment(&query.q));
    let (frame, set_csrf) = frame(&state, &headers, "search", back)?;
    let q = query.q.trim();
    const LIMIT: usize = 20;
    let nodes = node_cards(&state, &now)?
        .into_iter()
        .map(|c| {
            let text = format!("{} {} {}", c.node, c.role, c.description);
            let detail = format!("{} {}", c.status.replace('_', " "), c.role);
            let hit = Hit {
                link: format!("/nodes/{}", c.node),
                title: c.node,
                detail: detail.trim().to_string(),
            };
            (text, hit)
        })
        .collect();
    let world = world(&state)?;
    let services = world
        .services
        .iter()
        .map(|s| {
            let status = json_word(&s.status);
            (
                format!("{} {} {status}", s.service, s.node),
                Hit {
                    title: format!("{} on {}", s.service, s.node),
                    link: format!("/nodes/{}", s.node),
                    detail: status,
                },
            )
        })
        .collect();
    let resolved = crate::incident_history(&state)?;
    let incidents = world
        .incidents
        .iter()
        .map(|i| (i, "open"))
        .chain(resolved.iter().rev().map(|r| (&r.incident, "resolved")))
        .map(|(i, state)| {
            let view = IncidentView::new(i, None, &now);
            (
                format!("{} {} {}", view.title, i.id, i.message),
                Hit {
                    title: view.title,
                    link: view.link,
                    detail: format!("{state} · {}", i.id),
                },
            )
        })
        .collect();
    let mut all = actions(
        &state,
        &[
            ActionState::Pending,
            ActionState::Approved,
            ActionState::Running,
        ],
    )?;
    let mut finished = actions(&state, &finished_states())?;
    finished.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
    all.extend(finished);
    let actions_found = all
        .iter()
        .map(|a| {
            let view = ActionView::new(a, &now);
            (
                format!("{} {} {}", view.title, view.id, view.state),
                Hit {
                    title: view.title,
                    link: format!("/actions/{}", view.id),
                    detail: format!("{} · {}", view.state, view.id),
                },
            )
        })
        .collect();
    let hits = Hits {
        nodes: matching(q, nodes, LIMIT),
        services: matching(q, services, LIMIT),
        incidents: matching(q, incidents, LIMIT),
        actions: matching(q, actions_found, LIMIT),
    };
    let groups = [
        ("Nodes", hits.nodes),
        ("Services", hits.services),
        ("Incidents", hits.incidents),
        ("Actions", hits.actions),
    ]
    .into_iter()
    .filter(|(_, list)| !list.is_empty())
    .collect();
    let page = SearchPage {
        frame,
        q: query.q.clone(),
        groups,
    };
    Ok(respond(render(page)?, set_csrf))
}
