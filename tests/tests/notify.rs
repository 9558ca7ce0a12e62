//! Notifications as the operator gets them: `homelab up` with
//! `config/notify.yaml` pointing at three local HTTP receivers standing in
//! for a webhook, an ntfy server and Telegram's Bot API, each checking
//! every request. A pending action and an incident are told once to each,
//! with links; a flapping node gives one message when it goes and one when
//! it is back, not one per flap.

use std::collections::BTreeMap;
use std::time::Duration;

use homelab_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// An HTTP receiver on a free loopback port: every request it gets, in
/// order; it answers 200.
async fn receiver() -> (u16, mpsc::UnboundedReceiver<Request>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let request = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split_whitespace();
                    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                    let headers: BTreeMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let length: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    break Request {
                        method: method.into(),
                        path: path.into(),
                        headers,
                        body: body[..length].to_string(),
                    };
                };
                let _ = tx.send(request);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}")
                    .await;
            });
        }
    });
    (port, rx)
}

/// The next request for which `accept` holds (the others are kept in
/// `seen`).
async fn next(
    rx: &mut mpsc::UnboundedReceiver<Request>,
    seen: &mut Vec<Request>,
    what: &str,
    accept: impl Fn(&Request) -> bool,
) -> Request {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(request)) => {
                seen.push(request.clone());
                if accept(&request) {
                    return request;
                }
            }
            _ => panic!("no {what} within {T:?}; got {seen:#?}"),
        }
    }
}

fn json(request: &Request) -> Value {
    serde_json::from_str(&request.body).unwrap_or_else(|_| panic!("not JSON: {}", request.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_actions_and_incidents_reach_the_operator_once_with_links() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  n2: {role: edge}\n",
        ),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let (hook_port, mut hook) = receiver().await;
    let (ntfy_port, mut ntfy) = receiver().await;
    let (tg_port, mut telegram) = receiver().await;
    std::fs::create_dir_all(system.root().join("config")).unwrap();
    std::fs::write(
        system.root().join("config/notify.yaml"),
        format!(
            "base_url: http://lab.example:18180/\n\
             webhook: {{url: \"http://127.0.0.1:{hook_port}/hook\"}}\n\
             ntfy: {{url: \"http://127.0.0.1:{ntfy_port}\", topic: homelab-test, token: tk_secret}}\n\
             telegram: {{bot_token: \"123:ABC\", chat_id: \"-100\", api: \"http://127.0.0.1:{tg_port}\"}}\n\
             limits: {{repeat_after: 12s, per_minute: 100}}\n"
        ),
    )
    .unwrap();

    // app is down on n1 (a pending restart); n2 goes offline (an incident).
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe.report("n1", "online", &[("app", "exited")]).await;
    probe.report("n2", "offline", &[]).await;

    // The webhook: both, as JSON, with links to their rows on the page.
    let mut hooks = Vec::new();
    let action = next(&mut hook, &mut hooks, "the action on the webhook", |r| {
        r.body.contains("action_pending")
    })
    .await;
    assert_eq!(
        (action.method.as_str(), action.path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(action.headers["content-type"], "application/json");
    let body = json(&action);
    assert!(body["subject"]
        .as_str()
        .unwrap()
        .starts_with("action:container-restart-n1-app:"));
    assert_eq!(
        body["link"],
        "http://lab.example:18180/actions/container-restart-n1-app"
    );
    assert_eq!(body["title"], "Approve? container_restart of app on n1");
    let opened = next(&mut hook, &mut hooks, "the incident on the webhook", |r| {
        r.body.contains("incident_opened") && r.body.contains("node_offline:n2")
    })
    .await;
    assert_eq!(
        json(&opened)["link"],
        "http://lab.example:18180/incidents/node_offline:n2"
    );

    // ntfy: the topic's path, title and click link in headers, the token.
    let mut seen = Vec::new();
    let pushed = next(&mut ntfy, &mut seen, "the action on ntfy", |r| {
        r.headers
            .get("title")
            .is_some_and(|t| t.starts_with("Approve?"))
    })
    .await;
    assert_eq!(
        (pushed.method.as_str(), pushed.path.as_str()),
        ("POST", "/homelab-test")
    );
    assert_eq!(pushed.headers["authorization"], "Bearer tk_secret");
    assert_eq!(
        pushed.headers["click"],
        "http://lab.example:18180/actions/container-restart-n1-app"
    );
    assert_eq!(pushed.headers["tags"], "question");
    // A button that opens the action's page, to decide there.
    assert_eq!(
        pushed.headers["actions"],
        "view, Open to decide, http://lab.example:18180/actions/container-restart-n1-app"
    );
    assert!(
        pushed.body.contains("containers_not_running"),
        "{}",
        pushed.body
    );

    // Telegram: sendMessage of the bot, to the chat, with the link.
    let mut seen = Vec::new();
    let sent = next(&mut telegram, &mut seen, "the action on Telegram", |r| {
        r.body.contains("Approve?")
    })
    .await;
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/bot123:ABC/sendMessage")
    );
    let body = json(&sent);
    assert_eq!(body["chat_id"], "-100");
    assert!(body["text"]
        .as_str()
        .unwrap()
        .contains("http://lab.example:18180/actions/container-restart-n1-app"));

    // n2 flaps: back and gone twice, each state longer than the notifier's
    // 2 s between looks, so it sees them all; then it stays online. One
    // more message only, its resolution, once the repeat window (12 s)
    // since the opening has passed.
    for _ in 0..2 {
        for status in ["online", "offline"] {
            probe
                .publish_retained("homelab/nodes/n2/status", status)
                .await;
            tokio::time::sleep(Duration::from_millis(2_200)).await;
        }
    }
    probe
        .publish_retained("homelab/nodes/n2/status", "online")
        .await;
    // The webhook's last word on n2, after the flapping ended: resolved
    // (the ledger is written after the receiver has the message, so
    // everything sent until then is in the channel).
    let ended = chrono::Utc::now();
    let ledger_path = system.root().join("state/notify/ledger.json");
    wait_for("n2's resolution told after the flapping", T, || async {
        read_json(&ledger_path).is_ok_and(|ledger| {
            ledger["entries"].as_array().unwrap().iter().any(|e| {
                e["channel"] == "webhook"
                    && e["subject"] == "incident:node_offline:n2"
                    && e["said"] == "incident_resolved"
                    && e["at"]
                        .as_str()
                        .and_then(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
                        .is_some_and(|at| at >= ended)
            })
        })
    })
    .await;
    while let Ok(request) = hook.try_recv() {
        hooks.push(request);
    }
    let about_n2: Vec<String> = hooks
        .iter()
        .map(json)
        .filter(|b| b["subject"] == "incident:node_offline:n2")
        .map(|b| b["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        about_n2,
        ["incident_opened", "incident_resolved"],
        "not one per flap"
    );
    let actions = hooks
        .iter()
        .filter(|r| r.body.contains("action_pending"))
        .count();
    assert_eq!(actions, 1, "the action was told once");

    // What each channel was told is kept, so a restart does not repeat it.
    let ledger = read_json(&system.root().join("state/notify/ledger.json")).unwrap();
    let channels: std::collections::BTreeSet<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(
        channels,
        ["ntfy", "telegram", "webhook"].into_iter().collect()
    );
    system.stop().await.unwrap();
}
