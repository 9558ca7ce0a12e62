//! Approvals from Telegram's buttons, against a Bot API on loopback that
//! speaks getUpdates (long-poll with `offset` and `timeout`, confirmed by
//! the next offset), sendMessage, answerCallbackQuery and editMessageText
//! as the Bot API's documentation gives them, error answers included (429
//! with `parameters.retry_after`, 409 "terminated by other getUpdates
//! request", 400 "message is not modified"). The notifier runs on a real
//! root with real action files and operators; it is stopped and started
//! again in the middle.
//!
//! What the operator relies on: a press by a stranger, an operator that
//! was removed or another chat changes nothing; a guarded action needs
//! Confirm; a press on a cancelled action answers "no longer pending";
//! every message ends saying who decided and how it ended; after 429s, a
//! 409 and a restart, no press is acted on twice; the audit trail holds
//! each decision once, with its operator.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use homelab_core::store::Move;
use homelab_core::{Action, ActionKind, ActionState, ActionStore, Layout, Name, Risk};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "123456:test-token_x";
const CHAT: i64 = -1001;
const ANN: i64 = 111;
const T: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Bot {
    next_update: i64,
    updates: VecDeque<Value>,
    next_message: i64,
    /// message_id → (text, reply_markup)
    messages: BTreeMap<i64, (String, Value)>,
    /// (callback_query_id, text)
    answers: Vec<(String, String)>,
    edits: usize,
    /// The next answers of a method: (status, body).
    faults: Vec<(String, u16, Value)>,
    calls: Vec<String>,
}

#[derive(Clone)]
struct Api {
    bot: Arc<Mutex<Bot>>,
    arrived: Arc<Notify>,
}

fn error(code: u16, description: &str) -> Value {
    json!({"ok": false, "error_code": code, "description": description})
}

async fn method(
    State(api): State<Api>,
    Path((token, method)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let reply = |code: u16, v: Value| (axum::http::StatusCode::from_u16(code).unwrap(), Json(v));
    if token != format!("bot{TOKEN}") {
        return reply(401, error(401, "Unauthorized"));
    }
    if method == "getUpdates" {
        let wait = body["timeout"].as_u64().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        loop {
            let notified = api.arrived.notified();
            {
                let mut bot = api.bot.lock().unwrap();
                bot.calls.push(method.clone());
                if let Some(i) = bot.faults.iter().position(|(m, _, _)| *m == method) {
                    let (_, code, v) = bot.faults.remove(i);
                    return reply(code, v);
                }
                // An offset confirms every update before it.
                let offset = body["offset"].as_i64().unwrap_or(0);
                bot.updates
                    .retain(|u| u["update_id"].as_i64().unwrap() >= offset);
                if !bot.updates.is_empty() || tokio::time::Instant::now() >= deadline {
                    let updates: Vec<Value> = bot.updates.iter().cloned().collect();
                    return reply(200, json!({"ok": true, "result": updates}));
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
    let mut bot = api.bot.lock().unwrap();
    bot.calls.push(method.clone());
    if let Some(i) = bot.faults.iter().position(|(m, _, _)| *m == method) {
        let (_, code, v) = bot.faults.remove(i);
        return reply(code, v);
    }
    match method.as_str() {
        "sendMessage" => {
            bot.next_message += 1;
            let id = bot.next_message;
            let chat: i64 = body["chat_id"].as_str().unwrap().parse().unwrap();
            let text = body["text"].as_str().unwrap().to_string();
            bot.messages
                .insert(id, (text.clone(), body["reply_markup"].clone()));
            reply(
                200,
                json!({"ok": true, "result": {"message_id": id, "chat": {"id": chat, "type": "supergroup"}, "date": 1, "text": text}}),
            )
        }
        "editMessageText" => {
            let id = body["message_id"].as_i64().unwrap();
            let text = body["text"].as_str().unwrap().to_string();
            let markup = body.get("reply_markup").cloned().unwrap_or(Value::Null);
            let Some(message) = bot.messages.get_mut(&id) else {
                return reply(400, error(400, "Bad Request: message to edit not found"));
            };
            if *message == (text.clone(), markup.clone()) {
                return reply(400, error(400, "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message"));
            }
            *message = (text, markup);
            bot.edits += 1;
            reply(200, json!({"ok": true, "result": {"message_id": id}}))
        }
        "answerCallbackQuery" => {
            bot.answers.push((
                body["callback_query_id"].as_str().unwrap().to_string(),
                body["text"].as_str().unwrap_or("").to_string(),
            ));
            reply(200, json!({"ok": true, "result": true}))
        }
        _ => reply(404, error(404, "Not Found")),
    }
}

impl Api {
    async fn start() -> (Api, String) {
        let api = Api {
            bot: Default::default(),
            arrived: Arc::new(Notify::new()),
        };
        api.bot.lock().unwrap().next_update = 500;
        let app = axum::Router::new()
            .route("/{token}/{method}", axum::routing::post(method))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (api, url)
    }

    /// A press of `data` under message `message` by `user` in `chat`; the
    /// query's id.
    fn press(&self, user: i64, chat: i64, message: i64, data: &str) -> String {
        let mut bot = self.bot.lock().unwrap();
        bot.next_update += 1;
        let id = bot.next_update;
        let query = format!("q{id}");
        bot.updates.push_back(json!({
            "update_id": id,
            "callback_query": {
                "id": query,
                "from": {"id": user, "is_bot": false, "first_name": "U"},
                "message": {"message_id": message, "chat": {"id": chat, "type": "supergroup"}, "date": 1, "text": "…"},
                "chat_instance": "42",
                "data": data,
            }
        }));
        drop(bot);
        self.arrived.notify_waiters();
        query
    }

    fn fault(&self, method: &str, code: u16, body: Value) {
        self.bot
            .lock()
            .unwrap()
            .faults
            .push((method.into(), code, body));
    }

    /// Waits until `check` holds of the bot's state.
    async fn until<R>(&self, what: &str, check: impl Fn(&Bot) -> Option<R>) -> R {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(r) = check(&self.bot.lock().unwrap()) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                let bot = self.bot.lock().unwrap();
                panic!(
                    "no {what} within {T:?}: messages {:#?}, answers {:?}, calls {:?}",
                    bot.messages,
                    bot.answers,
                    bot.calls.iter().rev().take(20).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The answer to query `q`.
    async fn answer(&self, q: &str) -> String {
        self.until(&format!("answer to {q}"), |b| {
            b.answers
                .iter()
                .find(|(id, _)| id == q)
                .map(|(_, t)| t.clone())
        })
        .await
    }

    /// The message whose text names `id`: (message id, text, buttons).
    async fn message_of(&self, id: &Name) -> (i64, String, Vec<String>) {
        self.until(&format!("message for {id}"), |b| {
            b.messages.iter().find_map(|(m, (text, markup))| {
                text.contains(&format!("/actions/{id}")).then(|| {
                    let buttons = markup["inline_keyboard"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|row| row.as_array().unwrap().clone())
                        .map(|b| {
                            format!(
                                "{}={}",
                                b["text"].as_str().unwrap(),
                                b["callback_data"].as_str().unwrap()
                            )
                        })
                        .collect();
                    (*m, text.clone(), buttons)
                })
            })
        })
        .await
    }
}

fn pending(store: &ActionStore, kind: ActionKind, service: &str, risk: Risk) -> Name {
    let action = Action::new(
        kind,
        Name::parse("n1").unwrap(),
        Some(Name::parse(service).unwrap()),
        risk,
        "containers_not_running",
        "exited (1)",
        chrono::Utc::now(),
    );
    store.create(&action).unwrap();
    action.id
}

fn step(store: &ActionStore, id: &Name, from: ActionState, to: ActionState, by: &str, why: &str) {
    let result = (to == ActionState::Completed).then(|| homelab_core::action::ActionResult {
        ok: true,
        message: "restarted".into(),
        at: chrono::Utc::now(),
        data: Value::Null,
    });
    store
        .transition(
            id,
            Move {
                from,
                to,
                by,
                why,
                at: chrono::Utc::now(),
                result,
            },
        )
        .unwrap();
}

fn start(
    layout: &Layout,
    interval: Duration,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let config = homelab_notify::Config {
        layout: layout.clone(),
        interval,
    };
    let task = tokio::spawn(homelab_notify::run(config, shutdown.clone()));
    (shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_approve_from_telegram_buttons_and_only_they() {
    buttons_with(Some("1s"), Duration::from_millis(200)).await;
}

/// The same with the defaults a user gets: a 25 s long-poll, the
/// notifier's pass every 2 s (as in `homelab up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_approve_from_telegram_buttons_with_the_defaults() {
    buttons_with(None, Duration::from_secs(2)).await;
}

async fn buttons_with(poll: Option<&str>, interval: Duration) {
    let poll = poll.map(|p| format!("  poll: {p}\n")).unwrap_or_default();
    let (api, url) = Api::start().await;
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let store = ActionStore::new(layout.clone());
    let (ann, _) =
        homelab_core::operator::Operator::new(Name::parse("ann").unwrap(), chrono::Utc::now());
    homelab_core::operator::write(&layout, &ann).unwrap();
    // bob is mapped, but not (or no longer) an operator.
    std::fs::create_dir_all(layout.config_dir()).unwrap();
    std::fs::write(
        layout.config_dir().join("notify.yaml"),
        format!(
            "base_url: https://lab.example\ntelegram:\n  bot_token: \"{TOKEN}\"\n  chat_id: \"{CHAT}\"\n  api: {url}\n  operators: {{ann: {ANN}, bob: 222}}\n{poll}"
        ),
    )
    .unwrap();
    let app = pending(&store, ActionKind::ContainerRestart, "app", Risk::Low);
    let web = pending(&store, ActionKind::Redeploy, "web", Risk::Guarded);
    let db = pending(&store, ActionKind::ContainerRestart, "db", Risk::Low);
    let (shutdown, task) = start(&layout, interval);

    // Each pending action's message carries Approve and Reject.
    let (app_msg, _, buttons) = api.message_of(&app).await;
    assert_eq!(buttons, ["Approve=approve", "Reject=reject"]);
    let (web_msg, _, _) = api.message_of(&web).await;
    let (db_msg, _, _) = api.message_of(&db).await;

    // A stranger, an operator that is not one, another chat: refused.
    let stranger = api.press(999, CHAT, app_msg, "approve");
    assert_eq!(
        api.answer(&stranger).await,
        "You are not one of this homelab's operators."
    );
    let bob = api.press(222, CHAT, app_msg, "approve");
    assert_eq!(api.answer(&bob).await, "bob is no longer an operator.");
    let elsewhere = api.press(ANN, -5, app_msg, "approve");
    assert_eq!(
        api.answer(&elsewhere).await,
        "This chat is not the homelab's."
    );
    assert!(layout.action_file(ActionState::Pending, &app).exists());

    // Through a 429 on the poll, ann approves; the message says so.
    api.fault(
        "getUpdates",
        429,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
    );
    let yes = api.press(ANN, CHAT, app_msg, "approve");
    assert_eq!(api.answer(&yes).await, format!("Approved {app}."));
    let approved = store.find(&app).unwrap().unwrap();
    assert_eq!(approved.state, ActionState::Approved);
    assert_eq!(approved.history.last().unwrap().by, "ann");
    let (_, text, buttons) = api.message_of(&app).await;
    assert!(
        text.contains("✅ approved by ann at ") && buttons.is_empty(),
        "{text}"
    );
    // The executor's outcome is written into the message.
    step(
        &store,
        &app,
        ActionState::Approved,
        ActionState::Running,
        "executor",
        "sent",
    );
    step(
        &store,
        &app,
        ActionState::Running,
        ActionState::Completed,
        "executor",
        "done",
    );
    api.until("the outcome in the message", |b| {
        b.messages[&app_msg]
            .0
            .contains(" — completed in ")
            .then_some(())
    })
    .await;

    // A guarded action asks for Confirm before it is approved.
    let first = api.press(ANN, CHAT, web_msg, "approve");
    assert_eq!(
        api.answer(&first).await,
        "Guarded: press Confirm to approve."
    );
    let (_, text, buttons) = api.message_of(&web).await;
    assert!(
        text.ends_with("Redeploy web on n1? This recreates its containers. Confirm?"),
        "{text}"
    );
    assert_eq!(buttons, ["Confirm=confirm", "Back=back"]);
    assert!(layout.action_file(ActionState::Pending, &web).exists());
    let confirm = api.press(ANN, CHAT, web_msg, "confirm");
    assert_eq!(api.answer(&confirm).await, format!("Approved {web}."));
    assert_eq!(
        store.find(&web).unwrap().unwrap().state,
        ActionState::Approved
    );

    // A press after the supervisor cancelled the action.
    step(
        &store,
        &db,
        ActionState::Pending,
        ActionState::Cancelled,
        "supervisor",
        "drift_resolved_auto",
    );
    let late = api.press(ANN, CHAT, db_msg, "approve");
    assert_eq!(
        api.answer(&late).await,
        format!("{db} is no longer pending: it is cancelled.")
    );
    api.until("the cancel in the message", |b| {
        b.messages[&db_msg]
            .0
            .contains("— cancelled at ")
            .then_some(())
    })
    .await;

    // Stopped and started again: the offset is on disk; a 409 from the
    // other poll is waited out; nothing is acted on twice.
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let kept: Value = serde_json::from_slice(
        &std::fs::read(root.path().join("state/notify/telegram.json")).unwrap(),
    )
    .unwrap();
    assert!(kept["offset"].as_i64().unwrap() > 500, "{kept}");
    api.fault(
        "getUpdates",
        409,
        json!({"ok": false, "error_code": 409, "description": "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}),
    );
    let cache = pending(&store, ActionKind::ContainerRestart, "cache", Risk::Low);
    let (shutdown, task) = start(&layout, interval);
    let (cache_msg, _, _) = api.message_of(&cache).await;
    let no = api.press(ANN, CHAT, cache_msg, "reject");
    assert_eq!(api.answer(&no).await, format!("Rejected {cache}."));
    let (_, text, _) = api.message_of(&cache).await;
    assert!(text.contains("✗ rejected by ann at "), "{text}");
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let bot = api.bot.lock().unwrap();
    assert!(bot.faults.is_empty(), "the 429 and the 409 were met");
    let mut per_query: BTreeMap<&str, usize> = BTreeMap::new();
    for (q, _) in &bot.answers {
        *per_query.entry(q.as_str()).or_default() += 1;
    }
    assert!(
        per_query.values().all(|n| *n == 1),
        "each press answered once: {:?}",
        bot.answers
    );
    assert_eq!(per_query.len(), 8);
    assert_eq!(
        bot.messages.len(),
        4,
        "one message per action, none again after the restart"
    );

    // The trail: each decision once, with its operator; the refusals too.
    let trail = homelab_core::audit::read(&layout, &Default::default(), 100).unwrap();
    let lines: Vec<String> = trail
        .iter()
        .rev()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e.operator,
                e.what.as_str(),
                e.ok,
                e.target.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            format!("telegram:999 approve false {app}"),
            format!("bob approve false {app}"),
            "ann approve false ".to_string(),
            format!("ann approve true {app}"),
            format!("ann approve true {web}"),
            format!("ann approve false {db}"),
            format!("ann reject true {cache}"),
        ]
    );
    assert!(trail.iter().all(|e| e.via == "telegram"));
}
