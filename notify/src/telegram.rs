//! Approvals from Telegram: a pending action's message carries Approve and
//! Reject buttons (an inline keyboard); the notifier long-polls the bot's
//! updates (`getUpdates`: no inbound port, as a home server behind NAT
//! needs) and acts on a press only from the configured chat and from a
//! Telegram user mapped to an operator in `notify.yaml`:
//!
//! ```yaml
//! telegram:
//!   bot_token: "123456:ABC…"
//!   chat_id: "-1001234"
//!   operators: {ann: 123456789}   # operator name: Telegram user id
//! ```
//!
//! A guarded action asks a second press (Confirm); the message is edited
//! to say what happened ("approved by ann at 12:03 — completed in 4 s");
//! a press on an action that is no longer pending is answered so. The
//! offset of the next update and the messages sent are kept in
//! `state/notify/telegram.json`; the offset is written before an update is
//! acted on, so after a crash no press is acted on twice (one may need
//! pressing again). 429 answers wait `retry_after`; a 409 (another bot
//! instance polls, or a webhook is set) is said with its fix and tried
//! again later. What to do is decided by the pure [`verdict`] and
//! [`status_line`]; the rest is the Bot API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use homelab_core::audit::{self, Entry, What};
use homelab_core::store::{Move, TransitionError};
use homelab_core::time::Timestamp;
use homelab_core::{Action, ActionKind, ActionState, ActionStore, Layout, Name, Risk};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::Telegram;

/// A message the bot sent for a pending action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub chat_id: i64,
    pub message_id: i64,
    pub action: Name,
    /// The action's `created_at` in ms: a later action with the same id
    /// is another one.
    pub created_ms: i64,
    /// The message as sent, without the status line.
    pub text: String,
    /// What the message shows now: `pending`, `confirm`, or a state.
    pub shown: String,
    /// When the message was sent, to forget it after a week.
    #[serde(with = "homelab_core::time")]
    pub at: Timestamp,
}

/// What is kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub v: u32,
    /// The next update to ask for (`getUpdates`' `offset`).
    pub offset: i64,
    pub messages: Vec<Sent>,
}

pub fn state_path(layout: &Layout) -> PathBuf {
    layout.state_dir("notify").join("telegram.json")
}

impl State {
    pub fn read(layout: &Layout) -> State {
        let path = state_path(layout);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                warn!(path = %path.display(), %error, "telegram state unreadable; starting afresh");
                State::default()
            }),
            Err(_) => State::default(),
        }
    }
    pub fn write(&self, layout: &Layout) -> Result<()> {
        homelab_core::fsutil::write_atomic(
            &state_path(layout),
            &homelab_core::fsutil::json_bytes(self)?,
        )
    }
    fn find(&mut self, chat_id: i64, message_id: i64) -> Option<&mut Sent> {
        self.messages
            .iter_mut()
            .find(|m| m.chat_id == chat_id && m.message_id == message_id)
    }
    /// Messages of actions long finished are forgotten after a week.
    pub fn forget_before(&mut self, cutoff: Timestamp) {
        self.messages.retain(|m| m.at >= cutoff);
    }
}

/// A button press, as the Bot API gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Press {
    pub query_id: String,
    pub user_id: i64,
    pub chat_id: i64,
    pub message_id: i64,
    pub data: String,
}

/// A press from an update, if it is one.
pub fn press_of(update: &Value) -> Option<Press> {
    let q = update.get("callback_query")?;
    Some(Press {
        query_id: q.get("id")?.as_str()?.to_string(),
        user_id: q.get("from")?.get("id")?.as_i64()?,
        chat_id: q.get("message")?.get("chat")?.get("id")?.as_i64()?,
        message_id: q.get("message")?.get("message_id")?.as_i64()?,
        data: q.get("data")?.as_str()?.to_string(),
    })
}

/// What a press does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes; the presser is told why.
    Refuse(String),
    /// The action is not pending (or not this one any more).
    NoLongerPending(String),
    /// A guarded action: ask for a second press.
    AskConfirm(String),
    /// Back to Approve and Reject.
    Restore,
    Decide(ActionState),
}

/// Who may press: the chat and the operators' Telegram user ids.
pub struct Access<'a> {
    pub chat_id: &'a str,
    pub operators: &'a BTreeMap<String, i64>,
}

impl Access<'_> {
    /// The operator a Telegram user is, if it is one.
    pub fn operator(&self, user_id: i64) -> Option<&str> {
        self.operators
            .iter()
            .find(|(_, id)| **id == user_id)
            .map(|(name, _)| name.as_str())
    }
}

/// The question a guarded action asks before it is approved.
pub fn confirm_question(action: &Action) -> String {
    let on = match &action.service {
        Some(service) => format!("{service} on {}", action.node),
        None => action.node.to_string(),
    };
    match action.kind {
        ActionKind::Redeploy => format!("Redeploy {on}? This recreates its containers. Confirm?"),
        ActionKind::DiskCleanup => format!(
            "Clean up disk space on {}? This removes unused images and stopped containers. Confirm?",
            action.node
        ),
        ActionKind::ContainerRestart => {
            format!("Restart {on}? Its containers stop for a moment. Confirm?")
        }
        ActionKind::AlertOnly => format!("Mark {on} as seen? Confirm?"),
    }
}

/// What `press` does, given who may press, the message it is on and the
/// action as it is now. Pure.
pub fn verdict(
    press: &Press,
    access: &Access<'_>,
    operator_exists: bool,
    sent: Option<&Sent>,
    action: Option<&Action>,
) -> Verdict {
    if press.chat_id.to_string() != access.chat_id.trim() {
        return Verdict::Refuse("This chat is not the homelab's.".into());
    }
    let Some(name) = access.operator(press.user_id) else {
        return Verdict::Refuse("You are not one of this homelab's operators.".into());
    };
    if !operator_exists {
        return Verdict::Refuse(format!("{name} is no longer an operator."));
    }
    let Some(sent) = sent else {
        return Verdict::NoLongerPending("This message is no longer followed.".into());
    };
    let Some(action) = action.filter(|a| a.created_at.timestamp_millis() == sent.created_ms) else {
        return Verdict::NoLongerPending(format!("{} is no longer pending.", sent.action));
    };
    if action.state != ActionState::Pending {
        return Verdict::NoLongerPending(format!(
            "{} is no longer pending: it is {}.",
            action.id, action.state
        ));
    }
    match press.data.as_str() {
        "approve" if action.risk == Risk::Guarded => Verdict::AskConfirm(confirm_question(action)),
        "approve" if action.risk != Risk::Guarded => Verdict::Decide(ActionState::Approved),
        "confirm" => Verdict::Decide(ActionState::Approved),
        "reject" => Verdict::Decide(ActionState::Rejected),
        "back" => Verdict::Restore,
        other => Verdict::Refuse(format!("Unknown button {:?}.", audit::clean(other, 20))),
    }
}

/// The buttons of a pending action, or of its confirmation.
pub fn keyboard(confirm: bool) -> Value {
    let button = |text: &str, data: &str| json!({"text": text, "callback_data": data});
    if confirm {
        json!({"inline_keyboard": [[button("Confirm", "confirm"), button("Back", "back")]]})
    } else {
        json!({"inline_keyboard": [[button("Approve", "approve"), button("Reject", "reject")]]})
    }
}

fn hhmm(at: &Timestamp) -> String {
    at.format("%H:%M UTC").to_string()
}

fn took(from: Timestamp, to: Timestamp) -> String {
    let secs = (to - from).num_seconds().max(0);
    if secs < 120 {
        format!("{secs} s")
    } else {
        format!("{} min", secs / 60)
    }
}

/// The line under a message once its action is no longer pending, e.g.
/// "✅ approved by ann at 12:03 UTC — completed in 4 s". Pure.
pub fn status_line(action: &Action) -> Option<String> {
    let step = |state: ActionState| action.history.iter().rev().find(|t| t.state == state);
    let decided = step(ActionState::Approved);
    let approved = decided.map(|t| format!("approved by {} at {}", t.by, hhmm(&t.at)));
    let line = match action.state {
        ActionState::Pending => return None,
        ActionState::Approved => format!("✅ {}", approved?),
        ActionState::Running => format!("▶ {} — running", approved?),
        ActionState::Completed => {
            let t = decided?;
            format!(
                "✅ approved by {} at {} — completed in {}",
                t.by,
                hhmm(&t.at),
                took(t.at, action.updated_at)
            )
        }
        ActionState::Failed => {
            let why = action
                .result
                .as_ref()
                .map(|r| r.message.clone())
                .unwrap_or_default();
            format!("❌ {} — failed: {}", approved?, audit::clean(&why, 200))
        }
        ActionState::Rejected => {
            let t = step(ActionState::Rejected)?;
            format!("✗ rejected by {} at {}", t.by, hhmm(&t.at))
        }
        ActionState::Cancelled => {
            let t = step(ActionState::Cancelled)?;
            format!("— cancelled at {}: {}", hhmm(&t.at), t.why)
        }
    };
    Some(line)
}

/// Why a Bot API call failed.
#[derive(Debug)]
pub enum BotError {
    /// 429: wait this long.
    RetryAfter(Duration),
    /// 409: another instance polls, or a webhook is set.
    Conflict(String),
    /// Any other answer that is not ok.
    Api(u16, String),
    /// Not reached (the URL holds the token: only the kind is said).
    Net(&'static str),
}

impl std::fmt::Display for BotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BotError::RetryAfter(d) => write!(f, "429: retry after {} s", d.as_secs()),
            BotError::Conflict(d) => write!(f, "409: {d}"),
            BotError::Api(code, d) => write!(f, "{code}: {d}"),
            BotError::Net(kind) => write!(f, "not reached: {kind}"),
        }
    }
}

/// The Bot API at `telegram.api`, blocking.
#[derive(Clone)]
pub struct Bot {
    base: String,
    http: ureq::Agent,
}

impl Bot {
    /// `poll` is the long-poll's length; calls may take that and 10 s.
    pub fn new(telegram: &Telegram, poll: Duration) -> Bot {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(poll + Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Bot {
            base: format!(
                "{}/bot{}",
                telegram.api.trim_end_matches('/'),
                telegram.bot_token
            ),
            http,
        }
    }

    /// One method with a JSON body: its `result`, or why not.
    pub fn call(&self, method: &str, body: &Value) -> Result<Value, BotError> {
        let response = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| BotError::Net(crate::error_kind(&e)))?;
        let code = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .unwrap_or_default();
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| json!({"ok": false, "description": "not JSON"}));
        if answer["ok"] == json!(true) {
            return Ok(answer["result"].clone());
        }
        let description = audit::clean(answer["description"].as_str().unwrap_or(""), 300);
        match code {
            429 => {
                let secs = answer["parameters"]["retry_after"].as_u64().unwrap_or(5);
                Err(BotError::RetryAfter(Duration::from_secs(
                    secs.clamp(1, 3600),
                )))
            }
            409 => Err(BotError::Conflict(description)),
            _ => Err(BotError::Api(code, description)),
        }
    }

    /// [`Bot::call`], waiting out 429s up to three times.
    pub fn call_patiently(&self, method: &str, body: &Value) -> Result<Value, BotError> {
        let mut tries = 0;
        loop {
            match self.call(method, body) {
                Err(BotError::RetryAfter(wait)) if tries < 3 && wait <= Duration::from_secs(60) => {
                    tries += 1;
                    warn!(
                        method,
                        wait_s = wait.as_secs(),
                        "telegram: too many requests; waiting as asked"
                    );
                    std::thread::sleep(wait);
                }
                // "message is not modified": it already shows this.
                Err(BotError::Api(400, d)) if d.contains("not modified") => return Ok(Value::Null),
                other => return other,
            }
        }
    }
}

/// Sends a pending action's message with its buttons; the message's id.
pub fn send_pending(bot: &Bot, chat_id: &str, text: &str) -> Result<(i64, i64), BotError> {
    let result = bot.call(
        "sendMessage",
        &json!({
            "chat_id": chat_id,
            "text": text,
            "disable_web_page_preview": true,
            "reply_markup": keyboard(false),
        }),
    )?;
    let message_id = result["message_id"]
        .as_i64()
        .ok_or(BotError::Api(200, "no message_id".into()))?;
    let chat = result["chat"]["id"]
        .as_i64()
        .ok_or(BotError::Api(200, "no chat id".into()))?;
    Ok((chat, message_id))
}

fn edit(bot: &Bot, sent: &Sent, text: &str, buttons: Option<Value>) -> Result<(), BotError> {
    let mut body = json!({
        "chat_id": sent.chat_id,
        "message_id": sent.message_id,
        "text": text,
        "disable_web_page_preview": true,
    });
    if let Some(buttons) = buttons {
        body["reply_markup"] = buttons;
    }
    bot.call_patiently("editMessageText", &body).map(|_| ())
}

fn answer(bot: &Bot, press: &Press, text: &str) {
    let body = json!({"callback_query_id": press.query_id, "text": text, "show_alert": false});
    if let Err(error) = bot.call_patiently("answerCallbackQuery", &body) {
        warn!(%error, "telegram: press not answered");
    }
}

fn operator_exists(layout: &Layout, name: &str) -> bool {
    name == homelab_core::operator::ADMIN
        || Name::parse(name)
            .ok()
            .and_then(|n| homelab_core::operator::read(layout, &n).ok().flatten())
            .is_some()
}

/// Acts on one press (blocking: files and the Bot API).
pub fn handle_press(
    layout: &Layout,
    bot: &Bot,
    telegram: &Telegram,
    state: &mut State,
    press: &Press,
) {
    let access = Access {
        chat_id: &telegram.chat_id,
        operators: &telegram.operators,
    };
    let store = ActionStore::new(layout.clone());
    let name = access.operator(press.user_id).map(str::to_string);
    let exists = name.as_deref().is_some_and(|n| operator_exists(layout, n));
    let sent = state.find(press.chat_id, press.message_id).cloned();
    let action = sent
        .as_ref()
        .and_then(|s| store.find(&s.action).ok().flatten());
    let verdict = verdict(press, &access, exists, sent.as_ref(), action.as_ref());
    let who = name
        .clone()
        .unwrap_or_else(|| format!("telegram:{}", press.user_id));
    let now = chrono::Utc::now();
    let target = sent
        .as_ref()
        .map(|s| s.action.to_string())
        .unwrap_or_default();
    let trail = |what: What, ok: bool, detail: &str| {
        let mut entry = Entry::new(&who, what, "telegram", ok, chrono::Utc::now());
        if !target.is_empty() {
            entry = entry.target(&target);
        }
        let entry = entry
            .client(format!("telegram user {}", press.user_id))
            .detail(detail);
        if let Err(error) = audit::append(layout, &entry) {
            warn!(error = format!("{error:#}"), "audit entry not written");
        }
    };
    let what = if press.data == "reject" {
        What::Reject
    } else {
        What::Approve
    };
    info!(user = press.user_id, operator = ?name, verdict = ?verdict, "telegram press");
    match verdict {
        Verdict::Refuse(why) => {
            metrics::counter!("homelab_telegram_presses_refused_total").increment(1);
            trail(what, false, &why);
            answer(bot, press, &why);
        }
        Verdict::NoLongerPending(why) => {
            trail(what, false, &why);
            answer(bot, press, &why);
            if let (Some(sent), Some(action)) = (sent, action) {
                show_state(bot, state, &sent, &action);
            }
        }
        Verdict::AskConfirm(question) => {
            let sent = sent.expect("a confirmation is asked on a known message");
            answer(bot, press, "Guarded: press Confirm to approve.");
            let text = format!("{}\n\n{question}", sent.text);
            if edit(bot, &sent, &text, Some(keyboard(true))).is_ok() {
                set_shown(state, &sent, "confirm");
            }
        }
        Verdict::Restore => {
            let sent = sent.expect("a restore is on a known message");
            answer(bot, press, "Back.");
            if edit(bot, &sent, &sent.text, Some(keyboard(false))).is_ok() {
                set_shown(state, &sent, "pending");
            }
        }
        Verdict::Decide(to) => {
            let sent = sent.expect("a decision is on a known message");
            let by = name.clone().expect("a decision has an operator");
            let why = format!("{} by operator via Telegram", to.dir());
            let moved = store.transition(
                &sent.action,
                Move {
                    from: ActionState::Pending,
                    to,
                    by: &by,
                    why: &why,
                    at: now,
                    result: None,
                },
            );
            match moved {
                Ok(action) => {
                    info!(id = %action.id, state = %to, by, "operator decision over telegram");
                    metrics::counter!("homelab_actions_decided_total", "state" => to.dir())
                        .increment(1);
                    trail(what, true, "");
                    answer(
                        bot,
                        press,
                        &format!(
                            "{} {}.",
                            if to == ActionState::Approved {
                                "Approved"
                            } else {
                                "Rejected"
                            },
                            action.id
                        ),
                    );
                    show_state(bot, state, &sent, &action);
                }
                Err(TransitionError::WrongState { actual, .. }) => {
                    let why = format!("{} is no longer pending: it is {actual}.", sent.action);
                    trail(what, false, &why);
                    answer(bot, press, &why);
                }
                Err(error) => {
                    warn!(%error, "telegram decision not taken");
                    trail(what, false, "not taken");
                    answer(
                        bot,
                        press,
                        "Not taken: the control host could not write it; try the page.",
                    );
                }
            }
        }
    }
}

fn set_shown(state: &mut State, sent: &Sent, shown: &str) {
    if let Some(m) = state.find(sent.chat_id, sent.message_id) {
        m.shown = shown.to_string();
    }
}

/// Edits a message to show its action's state, if that is new to it.
fn show_state(bot: &Bot, state: &mut State, sent: &Sent, action: &Action) {
    let shown = action.state.dir();
    if sent.shown == shown || action.created_at.timestamp_millis() != sent.created_ms {
        return;
    }
    let Some(line) = status_line(action) else {
        return;
    };
    match edit(bot, sent, &format!("{}\n\n{line}", sent.text), None) {
        Ok(()) => set_shown(state, sent, shown),
        Err(error) => {
            warn!(%error, id = %action.id, "telegram: message not edited; tried again later")
        }
    }
}

/// Brings every followed message up to its action's state (an approval
/// from the page, the executor's outcome, a cancel).
pub fn follow_outcomes(layout: &Layout, bot: &Bot, state: &mut State) -> bool {
    let store = ActionStore::new(layout.clone());
    let before = state.clone();
    let open: Vec<Sent> = state
        .messages
        .iter()
        .filter(|m| {
            !matches!(
                m.shown.as_str(),
                "completed" | "failed" | "rejected" | "cancelled"
            )
        })
        .cloned()
        .collect();
    for sent in open {
        if let Ok(Some(action)) = store.find(&sent.action) {
            if action.state != ActionState::Pending {
                show_state(bot, state, &sent, &action);
            }
        }
    }
    *state != before
}

/// The long-poll: updates from `state.offset` on (callback queries only).
pub fn get_updates(bot: &Bot, offset: i64, poll: Duration) -> Result<Vec<Value>, BotError> {
    let result = bot.call(
        "getUpdates",
        &json!({
            "offset": offset,
            "timeout": poll.as_secs(),
            "allowed_updates": ["callback_query"],
        }),
    )?;
    Ok(result.as_array().cloned().unwrap_or_default())
}

/// Takes the updates of one poll: the offset is written past each before
/// it is acted on.
pub fn take(
    layout: &Layout,
    bot: &Bot,
    telegram: &Telegram,
    state: &mut State,
    updates: &[Value],
) -> Result<()> {
    for update in updates {
        let Some(id) = update["update_id"].as_i64() else {
            continue;
        };
        if id < state.offset {
            continue;
        }
        state.offset = id + 1;
        state.write(layout).context("write the telegram offset")?;
        if let Some(press) = press_of(update) {
            handle_press(layout, bot, telegram, state, &press);
            state.write(layout).context("write the telegram state")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::action::{ActionResult, Transition};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn action(risk: Risk, state: ActionState) -> Action {
        let mut a = Action::new(
            ActionKind::Redeploy,
            Name::parse("vps").unwrap(),
            Some(Name::parse("outline").unwrap()),
            risk,
            "service_missing",
            "missing",
            at("2026-12-07T12:00:00Z"),
        );
        a.state = state;
        a
    }

    fn sent(a: &Action) -> Sent {
        Sent {
            chat_id: -100,
            message_id: 7,
            action: a.id.clone(),
            created_ms: a.created_at.timestamp_millis(),
            text: "t".into(),
            shown: "pending".into(),
            at: a.created_at,
        }
    }

    #[test]
    fn a_press_is_taken_only_from_an_operator_in_the_chat_on_a_pending_action() {
        let operators = BTreeMap::from([("ann".to_string(), 42)]);
        let access = Access {
            chat_id: "-100",
            operators: &operators,
        };
        let press = |user: i64, chat: i64, data: &str| Press {
            query_id: "q".into(),
            user_id: user,
            chat_id: chat,
            message_id: 7,
            data: data.into(),
        };
        let low = action(Risk::Low, ActionState::Pending);
        let guarded = action(Risk::Guarded, ActionState::Pending);
        let cancelled = action(Risk::Low, ActionState::Cancelled);
        let mut recreated = low.clone();
        recreated.created_at = at("2026-12-07T13:00:00Z");
        let s = sent(&low);
        use Verdict::*;
        let cases: Vec<(Press, bool, Option<&Action>, Verdict)> = vec![
            (
                press(42, -100, "approve"),
                true,
                Some(&low),
                Decide(ActionState::Approved),
            ),
            (
                press(42, -100, "reject"),
                true,
                Some(&guarded),
                Decide(ActionState::Rejected),
            ),
            (
                press(42, -100, "approve"),
                true,
                Some(&guarded),
                AskConfirm(
                    "Redeploy outline on vps? This recreates its containers. Confirm?".into(),
                ),
            ),
            (
                press(42, -100, "confirm"),
                true,
                Some(&guarded),
                Decide(ActionState::Approved),
            ),
            (press(42, -100, "back"), true, Some(&guarded), Restore),
            (
                press(7, -100, "approve"),
                true,
                Some(&low),
                Refuse("You are not one of this homelab's operators.".into()),
            ),
            (
                press(42, -5, "approve"),
                true,
                Some(&low),
                Refuse("This chat is not the homelab's.".into()),
            ),
            (
                press(42, -100, "approve"),
                false,
                Some(&low),
                Refuse("ann is no longer an operator.".into()),
            ),
            (
                press(42, -100, "approve"),
                true,
                Some(&cancelled),
                NoLongerPending(
                    "redeploy-vps-outline is no longer pending: it is cancelled.".into(),
                ),
            ),
            (
                press(42, -100, "approve"),
                true,
                Some(&recreated),
                NoLongerPending("redeploy-vps-outline is no longer pending.".into()),
            ),
            (
                press(42, -100, "approve"),
                true,
                None,
                NoLongerPending("redeploy-vps-outline is no longer pending.".into()),
            ),
            (
                press(42, -100, "x"),
                true,
                Some(&low),
                Refuse("Unknown button \"x\".".into()),
            ),
        ];
        for (p, exists, a, want) in cases {
            assert_eq!(
                verdict(&p, &access, exists, Some(&s), a),
                want,
                "{p:?} on {:?}",
                a.map(|a| (a.risk, a.state))
            );
        }
        assert_eq!(
            verdict(&press(42, -100, "approve"), &access, true, None, Some(&low)),
            NoLongerPending("This message is no longer followed.".into())
        );
    }

    #[test]
    fn the_status_line_says_who_and_how_it_ended() {
        let mut a = action(Risk::Guarded, ActionState::Pending);
        assert_eq!(status_line(&a), None);
        let step = |state, by: &str, why: &str, t: &str| Transition {
            state,
            at: at(t),
            by: by.into(),
            why: why.into(),
        };
        a.history.push(step(
            ActionState::Approved,
            "ann",
            "approved",
            "2026-12-07T12:03:00Z",
        ));
        a.state = ActionState::Approved;
        assert_eq!(status_line(&a).unwrap(), "✅ approved by ann at 12:03 UTC");
        a.state = ActionState::Completed;
        a.updated_at = at("2026-12-07T12:03:04Z");
        assert_eq!(
            status_line(&a).unwrap(),
            "✅ approved by ann at 12:03 UTC — completed in 4 s"
        );
        a.state = ActionState::Failed;
        a.result = Some(ActionResult {
            ok: false,
            message: "compose failed".into(),
            at: at("2026-12-07T12:03:09Z"),
            data: Value::Null,
        });
        assert_eq!(
            status_line(&a).unwrap(),
            "❌ approved by ann at 12:03 UTC — failed: compose failed"
        );
        let mut c = action(Risk::Low, ActionState::Cancelled);
        c.history.push(step(
            ActionState::Cancelled,
            "supervisor",
            "drift_resolved_auto",
            "2026-12-07T12:10:00Z",
        ));
        assert_eq!(
            status_line(&c).unwrap(),
            "— cancelled at 12:10 UTC: drift_resolved_auto"
        );
        let mut r = action(Risk::Low, ActionState::Rejected);
        r.history.push(step(
            ActionState::Rejected,
            "bob",
            "rejected",
            "2026-12-07T12:11:00Z",
        ));
        assert_eq!(status_line(&r).unwrap(), "✗ rejected by bob at 12:11 UTC");
    }

    #[test]
    fn presses_are_read_from_updates() {
        let update = json!({"update_id": 5, "callback_query": {"id": "77", "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
            "message": {"message_id": 9, "chat": {"id": -100, "type": "group"}, "date": 1, "text": "x"}, "chat_instance": "1", "data": "approve"}});
        assert_eq!(
            press_of(&update),
            Some(Press {
                query_id: "77".into(),
                user_id: 42,
                chat_id: -100,
                message_id: 9,
                data: "approve".into()
            })
        );
        assert_eq!(press_of(&json!({"update_id": 6, "message": {}})), None);
    }
}
