//! `homelab notify` (and a task of `homelab up`): tells the operator about
//! new pending actions and incidents that open or resolve, through a
//! generic webhook, ntfy and Telegram, as `<root>/config/notify.yaml`
//! says:
//!
//! ```yaml
//! base_url: https://homelab.example.net   # links in the messages
//! webhook: {url: https://hooks.example.net/homelab}
//! ntfy: {url: https://ntfy.sh, topic: my-homelab, token: tk_…}
//! telegram: {bot_token: "123456:ABC…", chat_id: "-1001234"}
//! limits: {repeat_after: 30m, per_minute: 10}
//! ```
//!
//! It reads the observer's `world/incidents.json` and `actions/pending/`
//! every `interval`, decides with [`plan`] per channel, and keeps what
//! each channel was told in `state/notify/ledger.json`, so a restart
//! neither repeats nor forgets. A channel that fails is tried again on the
//! next pass; the others are not told twice. The file is read again on
//! every pass: edits take effect without a restart. Secrets in it are
//! never logged.

pub mod plan;
pub mod telegram;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use homelab_core::time::Timestamp;
use homelab_core::{fsutil, ActionState, ActionStore, Layout};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plan::{Limits, Notice, Said, Told};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// Where the operator reaches the page; links start with it.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub webhook: Option<Webhook>,
    pub ntfy: Option<Ntfy>,
    pub telegram: Option<Telegram>,
    #[serde(default)]
    pub limits: LimitsFile,
}

fn default_base_url() -> String {
    "http://127.0.0.1:18180".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntfy {
    #[serde(default = "default_ntfy")]
    pub url: String,
    pub topic: String,
    pub token: Option<String>,
}

fn default_ntfy() -> String {
    "https://ntfy.sh".into()
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telegram {
    pub bot_token: String,
    pub chat_id: String,
    /// The Bot API's address (a local Bot API server, or a test's).
    #[serde(default = "default_telegram")]
    pub api: String,
    /// Approvals by button: operator name → Telegram user id. Empty: the
    /// messages carry no buttons and no updates are read.
    #[serde(default)]
    pub operators: BTreeMap<String, i64>,
    /// How long one `getUpdates` long-poll waits (default 25s).
    #[serde(default)]
    pub poll: Option<String>,
}

impl Telegram {
    /// Whether presses are taken.
    pub fn approvals(&self) -> bool {
        !self.operators.is_empty()
    }
    pub fn poll_for(&self) -> Duration {
        self.poll
            .as_deref()
            .and_then(|p| homelab_core::time::parse_duration(p).ok())
            .unwrap_or(Duration::from_secs(25))
    }
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram")
            .field("chat_id", &self.chat_id)
            .field("api", &self.api)
            .field("operators", &self.operators)
            .finish_non_exhaustive()
    }
}

fn default_telegram() -> String {
    "https://api.telegram.org".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// e.g. `30m`: a subject is told at most once in this long.
    pub repeat_after: Option<String>,
    pub per_minute: Option<usize>,
}

/// A channel, checked.
#[derive(Debug, Clone)]
pub enum Channel {
    Webhook(Webhook),
    Ntfy(Ntfy),
    Telegram(Telegram),
}

impl Channel {
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Webhook(_) => "webhook",
            Channel::Ntfy(_) => "ntfy",
            Channel::Telegram(_) => "telegram",
        }
    }
}

/// The configuration, checked at the edge: addresses are http(s) URLs,
/// names hold no path tricks.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    pub channels: Vec<Channel>,
    pub limits: Limits,
}

fn check_url(what: &str, url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(()),
        _ => bail!("{what}: {url:?} is not an http:// or https:// address"),
    }
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings> {
        let file: NotifyFile = serde_yaml::from_str(text).context("config/notify.yaml")?;
        check_url("base_url", &file.base_url)?;
        let mut channels = Vec::new();
        if let Some(webhook) = file.webhook {
            check_url("webhook.url", &webhook.url)?;
            channels.push(Channel::Webhook(webhook));
        }
        if let Some(ntfy) = file.ntfy {
            check_url("ntfy.url", &ntfy.url)?;
            let ok = !ntfy.topic.is_empty()
                && ntfy.topic.len() <= 64
                && ntfy
                    .topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                bail!("ntfy.topic: letters, digits, - and _ only (at most 64)");
            }
            channels.push(Channel::Ntfy(ntfy));
        }
        if let Some(telegram) = file.telegram {
            check_url("telegram.api", &telegram.api)?;
            let token_ok = telegram
                .bot_token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '_' || c == '-')
                && telegram.bot_token.contains(':');
            if !token_ok {
                bail!("telegram.bot_token: the token @BotFather gave (digits:letters)");
            }
            if telegram.chat_id.trim().is_empty() {
                bail!("telegram.chat_id is empty");
            }
            for (name, id) in &telegram.operators {
                let ok = homelab_core::Name::parse(name).is_ok_and(|n| n.as_str() == name);
                if !ok {
                    bail!("telegram.operators: {name:?} is not an operator's name (homelab operator list)");
                }
                if *id <= 0 {
                    bail!("telegram.operators.{name}: a Telegram user id is a positive number (the bot sees it in the user's first message; @userinfobot tells it)");
                }
            }
            if telegram.approvals() && telegram.chat_id.trim().parse::<i64>().is_err() {
                bail!("telegram.chat_id: approvals need the chat's numeric id (e.g. -1001234), not {:?}", telegram.chat_id);
            }
            if let Some(poll) = &telegram.poll {
                let poll = homelab_core::time::parse_duration(poll)
                    .map_err(|e| anyhow::anyhow!("telegram.poll: {e}"))?;
                if poll > Duration::from_secs(50) {
                    bail!("telegram.poll: at most 50s");
                }
            }
            channels.push(Channel::Telegram(telegram));
        }
        let mut limits = Limits::default();
        if let Some(raw) = &file.limits.repeat_after {
            limits.repeat_after = homelab_core::time::parse_duration(raw)
                .map_err(|e| anyhow::anyhow!("limits.repeat_after: {e}"))?;
        }
        if let Some(n) = file.limits.per_minute {
            if n == 0 {
                bail!("limits.per_minute: at least 1");
            }
            limits.per_minute = n;
        }
        Ok(Settings {
            base_url: file.base_url,
            channels,
            limits,
        })
    }
}

/// What each channel was told, on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    v: u32,
    entries: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    channel: String,
    subject: String,
    said: Said,
    #[serde(with = "homelab_core::time")]
    at: Timestamp,
}

fn read_ledger(path: &Path) -> BTreeMap<String, Told> {
    let Ok(bytes) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let ledger: Ledger = match serde_json::from_slice(&bytes) {
        Ok(ledger) => ledger,
        Err(error) => {
            warn!(path = %path.display(), %error, "notification ledger unreadable; starting afresh");
            return BTreeMap::new();
        }
    };
    let mut out: BTreeMap<String, Told> = BTreeMap::new();
    for e in ledger.entries {
        out.entry(e.channel)
            .or_default()
            .insert(e.subject, (e.said, e.at));
    }
    out
}

fn write_ledger(path: &Path, told: &BTreeMap<String, Told>) -> Result<()> {
    let entries = told
        .iter()
        .flat_map(|(channel, subjects)| {
            subjects.iter().map(move |(subject, (said, at))| Entry {
                channel: channel.clone(),
                subject: subject.clone(),
                said: *said,
                at: *at,
            })
        })
        .collect();
    fsutil::write_atomic(path, &fsutil::json_bytes(&Ledger { v: 1, entries })?)
}

/// ntfy's headers for a notice: its title, the link a tap opens, a tag;
/// for a pending action also a button that opens the action's page, where
/// the operator decides (a view action: no secret rides in the message).
pub fn ntfy_headers(notice: &Notice) -> Vec<(&'static str, String)> {
    let tag = match notice.said {
        Said::ActionPending => "question",
        Said::IncidentOpened => "warning",
        Said::IncidentResolved => "white_check_mark",
    };
    let mut headers = vec![
        ("Title", notice.title.clone()),
        ("Click", notice.link.clone()),
        ("Tags", tag.to_string()),
    ];
    // ntfy's action syntax separates fields by commas and actions by
    // semicolons: a link holding either is left to the Click header.
    if notice.said == Said::ActionPending && !notice.link.contains([',', ';']) {
        headers.push(("Actions", format!("view, Open to decide, {}", notice.link)));
    }
    headers
}

/// The HTTP client of every channel: 10 s at most, a status that is not
/// 2xx is an error. HTTPS with the same TLS stack as the rest (ureq takes
/// the process's provider, ring as everywhere; installed already by another component is fine).
fn http_agent() -> ureq::Agent {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(true)
        .build()
        .into()
}

/// A test message to `channel` (`homelab doctor --send-test`), blocking.
pub fn send_test(channel: &Channel, base_url: &str) -> Result<()> {
    let agent = http_agent();
    let notice = Notice {
        subject: "test".into(),
        said: Said::IncidentResolved,
        title: "homelab: a test message".into(),
        text: "If you read this, homelab can reach you here (homelab doctor --send-test).".into(),
        link: base_url.trim_end_matches('/').to_string(),
    };
    send(&agent, channel, &notice, chrono::Utc::now())
}

/// Sends one notice to one channel (blocking HTTP, 10 s at most).
pub fn send(agent: &ureq::Agent, channel: &Channel, notice: &Notice, now: Timestamp) -> Result<()> {
    let result = match channel {
        Channel::Webhook(hook) => agent
            .post(&hook.url)
            .header("Content-Type", "application/json")
            .send(
                serde_json::json!({
                    "v": 1,
                    "kind": notice.said.as_str(),
                    "subject": notice.subject,
                    "title": notice.title,
                    "text": notice.text,
                    "link": notice.link,
                    "at": homelab_core::time::format(&now),
                })
                .to_string(),
            ),
        Channel::Ntfy(ntfy) => {
            let mut request =
                agent.post(format!("{}/{}", ntfy.url.trim_end_matches('/'), ntfy.topic));
            for (name, value) in ntfy_headers(notice) {
                request = request.header(name, &value);
            }
            if let Some(token) = &ntfy.token {
                request = request.header("Authorization", &format!("Bearer {token}"));
            }
            request.send(notice.text.clone())
        }
        Channel::Telegram(telegram) => agent
            .post(format!(
                "{}/bot{}/sendMessage",
                telegram.api.trim_end_matches('/'),
                telegram.bot_token
            ))
            .header("Content-Type", "application/json")
            .send(
                serde_json::json!({
                    "chat_id": telegram.chat_id,
                    "text": format!("{}\n{}\n{}", notice.title, notice.text, notice.link),
                    "disable_web_page_preview": true,
                })
                .to_string(),
            ),
    };
    match result {
        Ok(_) => Ok(()),
        // The URL may hold a secret (Telegram's token): say the channel
        // and the status only.
        Err(ureq::Error::StatusCode(code)) => bail!("{} answered {code}", channel.name()),
        Err(error) => bail!("{} not reached: {}", channel.name(), error_kind(&error)),
    }
}

pub(crate) fn error_kind(error: &ureq::Error) -> &'static str {
    match error {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::Io(_) => "connection failed",
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS failed",
        ureq::Error::HostNotFound => "host not found",
        _ => "request failed",
    }
}

pub struct Config {
    pub layout: Layout,
    pub interval: Duration,
}

/// Runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let layout = config.layout.clone();
    let ledger_path = layout.state_dir("notify").join("ledger.json");
    let mut told = read_ledger(&ledger_path);
    let mut sent_at: BTreeMap<String, Vec<Timestamp>> = BTreeMap::new();
    let mut last_problem: Option<String> = None;
    let http = http_agent();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Telegram's buttons: the settings for the poll, the messages sent.
    let (approvals_tx, approvals_rx) = tokio::sync::watch::channel::<Option<Telegram>>(None);
    let tg_state = Arc::new(Mutex::new(telegram::State::read(&layout)));
    let poller = tokio::spawn(poll_updates(
        layout.clone(),
        approvals_rx,
        tg_state.clone(),
        shutdown.clone(),
    ));
    info!("notifier started");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let path = layout.config_dir().join("notify.yaml");
        let settings = match std::fs::read_to_string(&path) {
            Ok(text) => Settings::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(anyhow::Error::new(e).context(format!("read {}", path.display()))),
        };
        let settings = match settings {
            Ok(settings) => {
                last_problem = None;
                settings
            }
            Err(error) => {
                let text = format!("{error:#}");
                if last_problem.as_ref() != Some(&text) {
                    warn!(error = %text, "notifications off until the file is fixed");
                    metrics::counter!("homelab_notify_config_errors_total").increment(1);
                    last_problem = Some(text);
                }
                continue;
            }
        };
        let approvals = settings.channels.iter().find_map(|c| match c {
            Channel::Telegram(t) if t.approvals() => Some(t.clone()),
            _ => None,
        });
        approvals_tx.send_if_modified(|now| {
            let changed = *now != approvals;
            *now = approvals.clone();
            changed
        });
        if let Some(tg) = &approvals {
            let (layout, bot, state) = (
                layout.clone(),
                telegram::Bot::new(tg, Duration::from_secs(0)),
                tg_state.clone(),
            );
            let _ = tokio::task::spawn_blocking(move || {
                let mut state = state.lock().expect("telegram state lock");
                state.forget_before(chrono::Utc::now() - chrono::Duration::days(7));
                if telegram::follow_outcomes(&layout, &bot, &mut state) {
                    if let Err(error) = state.write(&layout) {
                        warn!(error = format!("{error:#}"), "telegram state not written");
                    }
                }
            })
            .await;
        }
        let incidents: Vec<homelab_core::world::Incident> =
            match std::fs::read(layout.world_incidents()) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => Vec::new(),
            };
        let pending = ActionStore::new(layout.clone())
            .list(ActionState::Pending)
            .unwrap_or_default();
        let now = chrono::Utc::now();
        let mut changed = false;
        for channel in &settings.channels {
            let name = channel.name().to_string();
            let recent = sent_at.entry(name.clone()).or_default();
            recent.retain(|at| (now - *at).num_seconds() < 60);
            let channel_told = told.entry(name.clone()).or_default();
            let before = channel_told.len();
            plan::forget(channel_told, &pending, &settings.limits, now);
            changed |= channel_told.len() != before;
            let notices = plan::plan(
                channel_told,
                &pending,
                &incidents,
                &settings.base_url,
                &settings.limits,
                recent.len(),
                now,
            );
            for notice in notices {
                let (agent, channel_owned, notice_owned) =
                    (http.clone(), channel.clone(), notice.clone());
                let buttons = match channel {
                    Channel::Telegram(tg) if tg.approvals() => pending
                        .iter()
                        .find(|a| plan::action_subject(a) == notice.subject)
                        .cloned(),
                    _ => None,
                };
                let (layout, tg_state) = (layout.clone(), tg_state.clone());
                let sent = tokio::task::spawn_blocking(move || match (&channel_owned, buttons) {
                    (Channel::Telegram(tg), Some(action)) => {
                        send_with_buttons(&layout, tg, &tg_state, &notice_owned, &action)
                    }
                    _ => send(&agent, &channel_owned, &notice_owned, now),
                })
                .await
                .context("send task")
                .and_then(|r| r);
                match sent {
                    Ok(()) => {
                        info!(channel = %name, subject = %notice.subject, kind = notice.said.as_str(), "notification sent");
                        metrics::counter!("homelab_notifications_sent_total", "channel" => name.clone(), "kind" => notice.said.as_str()).increment(1);
                        channel_told.insert(notice.subject.clone(), (notice.said, now));
                        recent.push(now);
                        changed = true;
                    }
                    Err(error) => {
                        warn!(channel = %name, error = format!("{error:#}"), "notification not sent; tried again on the next pass");
                        metrics::counter!("homelab_notifications_failed_total", "channel" => name.clone()).increment(1);
                        // The rest waits for the next pass too.
                        break;
                    }
                }
            }
        }
        if changed {
            if let Err(error) = write_ledger(&ledger_path, &told) {
                warn!(
                    error = format!("{error:#}"),
                    "notification ledger not written"
                );
            }
        }
    }
    drop(approvals_tx);
    let _ = poller.await;
    info!("notifier stopped");
    Ok(())
}

/// A pending action's Telegram message, with its Approve and Reject
/// buttons; the message is followed from then on.
fn send_with_buttons(
    layout: &Layout,
    tg: &Telegram,
    state: &Mutex<telegram::State>,
    notice: &Notice,
    action: &homelab_core::Action,
) -> Result<()> {
    let bot = telegram::Bot::new(tg, Duration::from_secs(0));
    let text = format!("{}\n{}\n{}", notice.title, notice.text, notice.link);
    let (chat_id, message_id) = telegram::send_pending(&bot, &tg.chat_id, &text)
        .map_err(|e| anyhow::anyhow!("telegram answered {e}"))?;
    let mut state = state.lock().expect("telegram state lock");
    state.messages.push(telegram::Sent {
        chat_id,
        message_id,
        action: action.id.clone(),
        created_ms: action.created_at.timestamp_millis(),
        text,
        shown: "pending".into(),
        at: chrono::Utc::now(),
    });
    state.write(layout)
}

/// Long-polls the bot's updates while approvals are configured, and acts
/// on each press ([`telegram::take`]).
async fn poll_updates(
    layout: Layout,
    mut settings: tokio::sync::watch::Receiver<Option<Telegram>>,
    state: Arc<Mutex<telegram::State>>,
    shutdown: CancellationToken,
) {
    use telegram::BotError;
    const MAX_BACKOFF: Duration = Duration::from_secs(60);
    let mut backoff = Duration::from_secs(1);
    let mut conflict_said = false;
    let pause = |wait: Duration| {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(wait) => true,
            }
        }
    };
    loop {
        let current = settings.borrow_and_update().clone();
        let Some(tg) = current else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = settings.changed() => if changed.is_err() { return } else { continue },
            }
        };
        let poll = tg.poll_for();
        let bot = telegram::Bot::new(&tg, poll);
        let offset = state.lock().expect("telegram state lock").offset;
        let asked = {
            let bot = bot.clone();
            tokio::task::spawn_blocking(move || telegram::get_updates(&bot, offset, poll))
        };
        let got = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = asked => got,
        };
        let wait = match got {
            Ok(Ok(updates)) => {
                backoff = Duration::from_secs(1);
                if conflict_said {
                    info!("telegram: updates are read again");
                    conflict_said = false;
                }
                if updates.is_empty() {
                    continue;
                }
                let (layout, state) = (layout.clone(), state.clone());
                let taken = tokio::task::spawn_blocking(move || {
                    let mut state = state.lock().expect("telegram state lock");
                    telegram::take(&layout, &bot, &tg, &mut state, &updates)
                })
                .await;
                match taken {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => {
                        warn!(error = format!("{error:#}"), "telegram: updates not taken");
                        backoff
                    }
                    Err(error) => {
                        warn!(%error, "telegram: update task failed");
                        backoff
                    }
                }
            }
            Ok(Err(BotError::RetryAfter(wait))) => {
                warn!(
                    wait_s = wait.as_secs(),
                    "telegram: too many requests; waiting as asked"
                );
                metrics::counter!("homelab_telegram_poll_errors_total", "kind" => "429")
                    .increment(1);
                wait
            }
            Ok(Err(BotError::Conflict(description))) => {
                if !conflict_said {
                    warn!(%description, "telegram: another program reads this bot's updates (or a webhook is set): stop the other instance, or call deleteWebhook; tried again with a backoff");
                    conflict_said = true;
                }
                metrics::counter!("homelab_telegram_poll_errors_total", "kind" => "409")
                    .increment(1);
                backoff
            }
            Ok(Err(error)) => {
                warn!(%error, "telegram: updates not read; tried again with a backoff");
                metrics::counter!("homelab_telegram_poll_errors_total", "kind" => "other")
                    .increment(1);
                backoff
            }
            Err(error) => {
                warn!(%error, "telegram: poll task failed");
                backoff
            }
        };
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if !pause(wait).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfy_offers_a_button_only_for_an_action() {
        let notice = |said: Said, link: &str| Notice {
            subject: "s".into(),
            said,
            title: "Approve? Restart app on n1".into(),
            text: "t".into(),
            link: link.into(),
        };
        let actions = |n: &Notice| {
            ntfy_headers(n)
                .into_iter()
                .find(|(name, _)| *name == "Actions")
                .map(|(_, v)| v)
        };
        let link = "https://lab.example/actions/container-restart-n1-app";
        assert_eq!(
            actions(&notice(Said::ActionPending, link)).as_deref(),
            Some("view, Open to decide, https://lab.example/actions/container-restart-n1-app")
        );
        assert_eq!(actions(&notice(Said::IncidentOpened, link)), None);
        assert_eq!(actions(&notice(Said::ActionPending, "https://x/a,b")), None);
        let headers = ntfy_headers(&notice(Said::IncidentResolved, link));
        assert_eq!(headers[2], ("Tags", "white_check_mark".to_string()));
    }

    #[test]
    fn the_file_is_checked_at_the_edge() {
        let good = "base_url: https://h.example\nwebhook: {url: http://127.0.0.1:9/hook}\nntfy: {topic: my-lab}\ntelegram: {bot_token: \"123:ABC_d-e\", chat_id: \"-100\"}\nlimits: {repeat_after: 5m, per_minute: 4}\n";
        let settings = Settings::parse(good).unwrap();
        let names: Vec<&str> = settings.channels.iter().map(Channel::name).collect();
        assert_eq!(names, ["webhook", "ntfy", "telegram"]);
        assert_eq!(settings.limits.repeat_after, Duration::from_secs(300));
        assert_eq!(settings.limits.per_minute, 4);
        assert!(
            !format!("{settings:?}").contains("123:ABC"),
            "the token is not in Debug"
        );
        // (text, what the error names)
        let bad = [
            ("webhook: {url: ftp://x}\n", "webhook.url"),
            ("webhook: {url: http://x, extra: 1}\n", "unknown field"),
            ("ntfy: {topic: ../etc}\n", "ntfy.topic"),
            ("telegram: {bot_token: nope, chat_id: \"1\"}\n", "bot_token"),
            (
                "telegram: {bot_token: \"1:a\", chat_id: \" \"}\n",
                "chat_id",
            ),
            (
                "telegram: {bot_token: \"1:a\", chat_id: \"@lab\", operators: {ann: 5}}\n",
                "numeric id",
            ),
            (
                "telegram: {bot_token: \"1:a\", chat_id: \"-1\", operators: {\"../x\": 5}}\n",
                "not an operator's name",
            ),
            (
                "telegram: {bot_token: \"1:a\", chat_id: \"-1\", operators: {ann: -5}}\n",
                "positive number",
            ),
            (
                "telegram: {bot_token: \"1:a\", chat_id: \"-1\", poll: 2m}\n",
                "at most 50s",
            ),
            ("limits: {repeat_after: soon}\n", "repeat_after"),
            ("limits: {per_minute: 0}\n", "per_minute"),
            ("base_url: h.example\n", "base_url"),
        ];
        for (text, names) in bad {
            let error = format!("{:#}", Settings::parse(text).unwrap_err());
            assert!(error.contains(names), "{text}: {error}");
        }
    }
}
