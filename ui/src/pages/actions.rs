//! The actions: the list, and a page per action with its steps.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use homelab_core::{Action, ActionState};

use crate::pages::actions;
use crate::pages::finished_states;
use crate::pages::frame;
use crate::pages::render;
use crate::pages::respond;
use crate::pages::views::ActionView;
use crate::pages::Frame;
use crate::present::{self, When};
use crate::{AppError, AppState};

#[derive(Template)]
#[template(path = "actions.html")]
pub(crate) struct ActionsPage {
    frame: Frame,
    pending: Vec<ActionView>,
    running: Vec<ActionView>,
    finished: Vec<ActionView>,
}

pub async fn actions_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let (frame, set_csrf) = frame(&state, &headers, "actions", "/actions".into())?;
    let view = |list: Vec<Action>| -> Vec<ActionView> {
        list.iter().map(|a| ActionView::new(a, &now)).collect()
    };
    let pending = view(actions(&state, &[ActionState::Pending])?);
    let running = view(actions(
        &state,
        &[ActionState::Approved, ActionState::Running],
    )?);
    let mut finished = actions(&state, &finished_states())?;
    finished.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
    finished.truncate(50);
    let page = ActionsPage {
        frame,
        pending,
        running,
        finished: view(finished),
    };
    Ok(respond(render(page)?, set_csrf))
}

pub struct Step {
    pub state: String,
    pub icon: &'static str,
    pub at: When,
    pub by: String,
    pub why: String,
}

#[derive(Template)]
#[template(path = "action.html")]
pub(crate) struct ActionPage {
    frame: Frame,
    a: ActionView,
    pending: bool,
    steps: Vec<Step>,
    result_data: String,
    command: String,
}

pub async fn action_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, AppError> {
    let id = crate::parse_id(&raw)?;
    let action = state
        .store
        .find(&id)?
        .ok_or_else(|| AppError::NotFound(format!("no action {id}")))?;
    let now = Utc::now();
    let (frame, set_csrf) = frame(&state, &headers, "actions", format!("/actions/{id}"))?;
    let steps = action
        .history
        .iter()
        .map(|t| Step {
            state: t.state.dir().into(),
            icon: present::action_icon(t.state.dir()),
            at: When::new(&t.at, &now),
            by: t.by.clone(),
            why: t.why.clone(),
        })
        .collect();
    let result_data = action
        .result
        .as_ref()
        .filter(|r| !r.data.is_null() && r.data != serde_json::json!({}))
        .map(|r| serde_json::to_string_pretty(&r.data).unwrap_or_default())
        .unwrap_or_default();
    let command = action
        .command
        .as_ref()
        .map(|c| {
            format!(
                "command {} sent {}, deadline {}",
                c.id,
                homelab_core::time::format(&c.sent_at),
                homelab_core::time::format(&c.deadline)
            )
        })
        .unwrap_or_default();
    let page = ActionPage {
        frame,
        pending: action.state == ActionState::Pending,
        a: ActionView::new(&action, &now),
        steps,
        result_data,
        command,
    };
    Ok(respond(render(page)?, set_csrf))
}
