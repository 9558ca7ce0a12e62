//! The services matrix: a row per service, a cell per node.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use homelab_core::time::Timestamp;
use homelab_core::world::{NodeStatus, ServiceState};
use homelab_core::Name;
use serde::Deserialize;

use crate::pages::frame;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::Frame;
use crate::present::{self, When};
use crate::{json_word, rejected, world, AppError, AppState};

#[derive(Debug, Default, Deserialize)]
pub struct ServicesQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    show: String,
}

pub struct Cell {
    pub status: String,
    pub icon: &'static str,
    pub since: Option<When>,
    pub last: String,
    pub title: String,
    /// The commit its compose files were deployed (or adopted) from, short
    /// (a git source only), and whether the repo wants other ones now.
    pub deployed: String,
    pub behind: bool,
    /// The node is not online: the status is what it last said, this long
    /// ago ("3 h ago"), shown greyed as last known.
    pub last_known: Option<String>,
}

/// What a cell says of a service whose node is `node`'s state: the status
/// as is while the node is online; otherwise the last known one, as of
/// when the node was last seen. A service of an offline node is not
/// "running": nobody knows.
pub fn last_known(
    node: Option<&homelab_core::world::NodeState>,
    now: &Timestamp,
) -> Option<String> {
    match node {
        Some(n) if n.status == NodeStatus::Online => None,
        Some(n) => Some(present::ago(&n.last_seen, now)),
        None => Some("never".into()),
    }
}

pub struct MatrixRow {
    pub service: String,
    pub cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "services.html")]
pub(crate) struct ServicesPage {
    frame: Frame,
    q: String,
    problems_only: bool,
    columns: Vec<String>,
    rows: Vec<MatrixRow>,
    total: usize,
}

/// Which services the matrix shows: `q` in the service's or the node's
/// name, and only the unwell ones when asked.
pub fn shown(s: &ServiceState, q: &str, problems_only: bool) -> bool {
    let q = q.trim().to_ascii_lowercase();
    (q.is_empty() || s.service.as_str().contains(&q) || s.node.as_str().contains(&q))
        && (!problems_only || !s.status.is_ok())
}

pub async fn services(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ServicesQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| rejected("query", e))?;
    if query.q.len() > 100 {
        return Err(AppError::BadRequest("q: at most 100 characters".into()));
    }
    let problems_only = match query.show.as_str() {
        "" | "all" => false,
        "problems" => true,
        other => {
            return Err(AppError::BadRequest(format!(
                "show: {other:?} is neither all nor problems"
            )))
        }
    };
    let now = Utc::now();
    let back = format!("/services?q={}&show={}", query.q, query.show);
    let (frame, set_csrf) = frame(&state, &headers, "services", back)?;
    let world = world(&state)?;
    let applied = homelab_core::repo::RepoStatus::read(&state.layout)
        .and_then(|_| homelab_core::repo::Applied::read(&state.layout))
        .unwrap_or_default();
    let tail = state.tail.lock().expect("tail lock");
    let shown: Vec<&ServiceState> = world
        .services
        .iter()
        .filter(|s| shown(s, &query.q, problems_only))
        .collect();
    let columns: BTreeSet<&Name> = shown.iter().map(|s| &s.node).collect();
    let mut rows: BTreeMap<&Name, BTreeMap<&Name, &ServiceState>> = BTreeMap::new();
    for s in &shown {
        rows.entry(&s.service).or_default().insert(&s.node, s);
    }
    // Worst first: a service down anywhere above one fine everywhere;
    // by name within the same.
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by_key(|(service, on)| {
        let worst = on.values().map(|s| s.status.rank()).max().unwrap_or(0);
        (std::cmp::Reverse(worst), *service)
    });
    let rows = rows
        .into_iter()
        .map(|(service, on)| MatrixRow {
            service: service.to_string(),
            cells: columns
                .iter()
                .map(|node| match on.get(node) {
                    Some(s) => {
                        let status = json_word(&s.status);
                        let last = tail
                            .services
                            .get(&s.node)
                            .and_then(|of_node| of_node.get(&s.service))
                            .map(|l| format!("{} {}", l.kind, present::ago(&l.ts, &now)))
                            .unwrap_or_default();
                        let entry = applied.entry(s.node.as_str(), s.service.as_str());
                        let node = world.nodes.iter().find(|n| n.node == s.node);
                        Cell {
                            last_known: last_known(node, &now),
                            icon: present::icon(&status),
                            title: s.message.clone(),
                            status,
                            since: Some(When::new(&s.since, &now)),
                            last,
                            deployed: entry
                                .and_then(|e| e.commit.as_deref())
                                .map(|c| c[..c.len().min(7)].to_string())
                                .unwrap_or_default(),
                            behind: entry.is_some_and(|e| e.wanted.is_some()),
                        }
                    }
                    None => Cell {
                        status: "absent".into(),
                        icon: "",
                        since: None,
                        last: String::new(),
                        title: "not on this node".into(),
                        deployed: String::new(),
                        behind: false,
                        last_known: None,
                    },
                })
                .collect(),
        })
        .collect();
    let page = ServicesPage {
        frame,
        q: query.q.clone(),
        problems_only,
        columns: columns.iter().map(|n| n.to_string()).collect(),
        rows,
        total: world.services.len(),
    };
    Ok(respond(render(page)?, set_csrf))
}
