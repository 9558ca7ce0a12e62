//! The desired-state repo's page: its commits, what each changed, the sync.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;

use crate::pages::frame;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::Frame;
use crate::present::When;
use crate::{AppError, AppState};

/// One of the recent commits on the repo page.
pub struct CommitRow {
    pub sha: String,
    pub short: String,
    pub subject: String,
    pub author: String,
    pub when: When,
    /// What it changed: nodes, services, the inventory.
    pub changed: String,
    pub live: bool,
    pub head: bool,
}

#[derive(Template)]
#[template(path = "repo.html")]
pub(crate) struct RepoPage {
    frame: Frame,
    source: String,
    branch: String,
    pinned: bool,
    commits: Vec<CommitRow>,
}

/// What a commit changed, in words.
pub fn changed_words(change: &homelab_core::repo::CommitChange) -> String {
    let mut parts = Vec::new();
    if change.inventory {
        parts.push("inventory".to_string());
    }
    if !change.nodes.is_empty() {
        parts.push(format!("nodes {}", change.nodes.join(", ")));
    }
    if !change.services.is_empty() {
        parts.push(format!("services {}", change.services.join(", ")));
    }
    if parts.is_empty() {
        format!("{} other files", change.files)
    } else {
        parts.join("; ")
    }
}

/// `GET /repo`: the desired state's recent history, a pin button beside
/// each commit.
pub async fn repo_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let Some(status) = homelab_core::repo::RepoStatus::read(&state.layout) else {
        return Err(AppError::NotFound(
            "the desired state is a folder, not a git repo (--repo)".into(),
        ));
    };
    let (frame, set_csrf) = frame(&state, &headers, "repo", "/repo".into())?;
    let live = status.live.as_ref().map(|c| c.sha.clone());
    let head = status.head.as_ref().map(|c| c.sha.clone());
    let commits = crate::repo::recent(&state)
        .iter()
        .map(|c| CommitRow {
            sha: c.commit.sha.clone(),
            short: c.commit.short().to_string(),
            subject: c.commit.subject.clone(),
            author: c.commit.author.clone(),
            when: When::new(&c.commit.time, &now),
            changed: changed_words(c),
            live: live.as_deref() == Some(c.commit.sha.as_str()),
            head: head.as_deref() == Some(c.commit.sha.as_str()),
        })
        .collect();
    let page = RepoPage {
        frame,
        source: status.source.clone(),
        branch: status.branch.clone(),
        pinned: status.pinned.is_some(),
        commits,
    };
    Ok(respond(render(page)?, set_csrf))
}
