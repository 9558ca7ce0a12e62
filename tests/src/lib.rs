//! Test harness: the whole system (`homelab::up`) in-process on free
//! loopback ports, with a temporary root and repo, probed from outside the
//! way a user would: an independent MQTT client, plain HTTP, the files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-operator-token";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A loopback address for a listener the system under test binds itself.
/// Ports come from a process-wide counter in a range below the kernel's
/// ephemeral ports, so tests running at once never pick the same one (a
/// port from `bind(0)` is free again once released and may be handed to a
/// parallel test before ours binds it).
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % 10_000;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
}

/// Writes `files` (path, text) under a new temporary folder.
/// A desired-state repo with these files, plus an empty
/// `services/<service>/service.yaml` for each service a
/// `hosts/*/services.yaml` names and `files` does not define.
pub fn write_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    for (path, text) in files {
        if !(path.starts_with("hosts/") && path.ends_with("/services.yaml")) {
            continue;
        }
        let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
            continue;
        };
        let Some(services) = value.get("services").and_then(|s| s.as_mapping()) else {
            continue;
        };
        for name in services.keys().filter_map(|k| k.as_str()) {
            let def = dir.path().join("services").join(name).join("service.yaml");
            if !def.exists() {
                std::fs::create_dir_all(def.parent().unwrap()).unwrap();
                std::fs::write(def, "").unwrap();
            }
        }
    }
    dir
}

pub struct System {
    pub mqtt: SocketAddr,
    /// rumqttd's internal listener, past the broker's front.
    pub internal: SocketAddr,
    /// The TLS listener, in fleet mode.
    pub mqtts: Option<SocketAddr>,
    pub http: SocketAddr,
    pub root: tempfile::TempDir,
    pub repo: tempfile::TempDir,
    options: Options,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

#[derive(Clone)]
pub struct Options {
    pub agent_node: Option<&'static str>,
    pub sync_interval: Duration,
    /// How often the agent samples disks and probes brokers.
    pub check_interval: Duration,
    /// Fleet mode: `homelab tls init --name localhost` before `up`, which
    /// then also listens with TLS (`System::mqtts`).
    pub fleet: bool,
    /// Home Assistant approve/reject buttons (`--ha-buttons`).
    pub ha_buttons: bool,
    /// Home Assistant discovery's form (device configs by default).
    pub ha_form: homelab_observer::discovery::Form,
    /// `--repo` is this git URL (the sync runs, the components read its
    /// live tree) instead of the repo folder.
    pub repo_url: Option<String>,
    /// The local agent's `--docker-label`.
    pub docker_label: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            agent_node: None,
            sync_interval: Duration::from_secs(30),
            check_interval: Duration::from_secs(30),
            fleet: false,
            ha_buttons: false,
            ha_form: Default::default(),
            repo_url: None,
            docker_label: None,
        }
    }
}

impl System {
    pub async fn start(repo: tempfile::TempDir, options: Options) -> System {
        init_logs();
        let root = tempfile::tempdir().unwrap();
        let (mqtt, http) = (free_addr(), free_addr());
        let mqtts = options.fleet.then(free_addr);
        System::start_in(root, repo, options, (mqtt, mqtts, http)).await
    }

    /// Stops the whole system and starts it again on the same root, repo
    /// and HTTP address. The embedded broker cannot be stopped (rumqttd has
    /// no stop API): the new one listens on new ports and starts empty, as
    /// after a crash.
    pub async fn restart(self) -> System {
        let options = self.options.clone();
        self.restart_with(options).await
    }

    /// [`System::restart`] with other options (an upgrade that changes a
    /// setting).
    pub async fn restart_with(mut self, options: Options) -> System {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("up task").expect("up stops cleanly");
        }
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        let repo = std::mem::replace(&mut self.repo, tempfile::tempdir().unwrap());
        let addresses = (free_addr(), self.mqtts.map(|_| free_addr()), self.http);
        System::start_in(root, repo, options, addresses).await
    }

    async fn start_in(
        root: tempfile::TempDir,
        repo: tempfile::TempDir,
        options: Options,
        (mqtt, mqtts, http): (SocketAddr, Option<SocketAddr>, SocketAddr),
    ) -> System {
        let fresh = !homelab_core::Layout::new(root.path())
            .tls_ca_cert()
            .exists();
        if let Some(mqtts) = mqtts.filter(|_| fresh) {
            homelab::fleet_cli::tls_init(
                &homelab_core::Layout::new(root.path()),
                &["localhost".to_string()],
                mqtts.port(),
                false,
            )
            .expect("tls init");
        }
        let layout = homelab_core::Layout::new(root.path());
        let internal = free_addr();
        let choice = match &options.repo_url {
            Some(url) => homelab::repo_choice(url, None, Duration::from_secs(60), &layout),
            None => homelab::RepoChoice {
                folder: repo.path().to_path_buf(),
                sync: None,
            },
        };
        let config = homelab::UpConfig {
            root: root.path().to_path_buf(),
            repo: choice.folder,
            mqtt,
            mqtts,
            http,
            topics: homelab_core::Topics::default(),
            agent_node: options
                .agent_node
                .map(|n| homelab_core::Name::parse(n).unwrap()),
            ui_token: Some(TOKEN.into()),
            command_timeout: std::time::Duration::from_secs(300),
            repo_sync: choice.sync,
            internal_mqtt: Some(internal),
            default_grace: Duration::ZERO,
            agent: homelab::agent_cli::AgentSettings {
                sync_interval: options.sync_interval,
                disk_interval: options.check_interval,
                broker_interval: options.check_interval,
                stats_interval: options.check_interval,
                docker_label: options.docker_label.clone(),
                ..Default::default()
            },
            retention: Default::default(),
            home_assistant: Some(homelab_observer::HomeAssistant {
                buttons: options.ha_buttons,
                form: options.ha_form,
                ..Default::default()
            }),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(homelab::up(config, shutdown.clone()));
        let system = System {
            mqtt,
            internal,
            mqtts,
            http,
            root,
            repo,
            options,
            shutdown,
            task: Some(task),
        };
        wait_for("ui answers /healthz", Duration::from_secs(20), || async {
            matches!(
                http_request(http, "GET", "/healthz", None, None).await,
                Ok((200, _))
            )
        })
        .await;
        // An event published before the observer listens goes to no one
        // (a test's publisher, unlike an agent, does not resend).
        wait_for("components subscribed", Duration::from_secs(20), || async {
            let Ok((200, metrics)) = http_request(http, "GET", "/metrics", None, None).await else {
                return false;
            };
            // They reach rumqttd past the front, on its internal port.
            ["homelab-observer", "homelab-supervisor", "homelab-executor"]
                .iter()
                .all(|client| subscribed(&metrics, client))
        })
        .await;
        system
    }

    /// rumqttd's internal listener, past the front (the control plane's
    /// own components use it; a test uses it to reach the broker as one
    /// without per-topic rules would be).
    pub async fn internal_mqtt(&self) -> SocketAddr {
        self.internal
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Reconcile passes the supervisor has finished, from its status file.
    pub fn passes(&self) -> u64 {
        read_json(&self.root().join("state/supervisor/status.json"))
            .ok()
            .and_then(|v| v["passes"].as_u64())
            .unwrap_or(0)
    }

    /// Waits for two more reconcile passes: at least one started after
    /// everything visible now, so the supervisor has had its chance to act
    /// on it. The positive sign that "nothing happened" needs.
    pub async fn settle(&self) {
        let from = self.passes();
        wait_for(
            "two more reconcile passes",
            Duration::from_secs(30),
            || async { self.passes() >= from + 2 },
        )
        .await;
    }

    pub fn action_file(&self, state: &str, id: &str) -> PathBuf {
        self.root()
            .join("actions")
            .join(state)
            .join(format!("{id}.json"))
    }

    pub fn event_log(&self, node: &str) -> PathBuf {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        self.root()
            .join("events")
            .join(day)
            .join(node)
            .join("events.jsonl")
    }

    /// Events on disk for `node`, every day's file in date order (a test
    /// that runs across midnight UTC finds its events in two files).
    pub fn logged(&self, node: &str) -> Vec<Value> {
        let mut days: Vec<PathBuf> = std::fs::read_dir(self.root().join("events"))
            .into_iter()
            .flatten()
            .filter_map(|entry| Some(entry.ok()?.path().join(node).join("events.jsonl")))
            .filter(|path| path.exists())
            .collect();
        days.sort();
        days.iter()
            .flat_map(|path| {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("event log line is JSON"))
                    .collect::<Vec<Value>>()
            })
            .collect()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_request(self.http, "GET", path, None, None)
            .await
            .expect("http get")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        http_request(self.http, "POST", path, token, body)
            .await
            .expect("http post")
    }

    /// Stops the system and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.context("up task")?,
            None => Ok(()),
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
/// Whether `/metrics` says `client` is subscribed.
fn subscribed(metrics: &str, client: &str) -> bool {
    metrics.lines().any(|line| {
        line.starts_with("homelab_mqtt_subscribed{")
            && line.contains(&format!("client=\"{client}\""))
            && line.ends_with(" 1")
    })
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let body = body.unwrap_or("");
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let (status, _, body) = exchange(addr, method, path, &headers, body).await?;
    Ok((status, body))
}

/// A GET of a server-sent event stream (with the operator token if
/// given), left open: read what it sends from the socket.
pub async fn sse_connect(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Accept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// One HTTP/1.1 exchange with the given headers (a browser's cookies,
/// origin, form body): status, the response's header block, its body.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    exchange(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("http response without header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, head.to_string(), body))
}

/// The value of `name` in a response's header block (first one).
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// Every `Set-Cookie` of a response.
pub fn set_cookies(head: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out += &tail[..size];
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An independent MQTT client (plain rumqttc), as a user's script or Home
/// Assistant would be.
pub struct Probe {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
}

impl Probe {
    pub async fn connect(addr: SocketAddr, subscriptions: &[&str]) -> Probe {
        let id = format!("probe-{}", ulid::Ulid::generate());
        Probe::connect_with(
            &addr.ip().to_string(),
            addr.port(),
            &id,
            None,
            None,
            subscriptions,
        )
        .await
    }

    /// With a login and, given a CA (PEM), over TLS.
    pub async fn connect_with(
        host: &str,
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        tls_ca: Option<&str>,
        subscriptions: &[&str],
    ) -> Probe {
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        if let Some(ca) = tls_ca {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(homelab_mqtt::tls_client(ca).unwrap()),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for filter in subscriptions {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
                .await
                .expect("suback")
                .unwrap();
        }
        Probe { client, rx }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// A node as its agent reports it: its status (retained), then its
    /// first snapshot with these containers (service, state).
    pub async fn report(&self, node: &str, status: &str, containers: &[(&str, &str)]) {
        let snapshot = event(node, 1, "node_snapshot", None, snapshot(containers));
        if status == "online" {
            self.publish_retained(&format!("homelab/nodes/{node}/status"), status)
                .await;
        }
        self.publish(&format!("homelab/events/{node}"), snapshot.to_string())
            .await;
        if status != "online" {
            self.publish_retained(&format!("homelab/nodes/{node}/status"), status)
                .await;
        }
    }

    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await
            .unwrap();
    }

    /// The next message whose topic is `topic` and for which `accept` holds.
    pub async fn expect(
        &mut self,
        topic: &str,
        timeout: Duration,
        accept: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((t, payload, _))) if t == topic && accept(&payload) => return payload,
                Ok(Some(_)) => continue,
                _ => panic!("no matching message on {topic} within {timeout:?}"),
            }
        }
    }

    /// The last payload of every topic received, until `done` holds for
    /// them (in whatever order they come: retained messages arrive in the
    /// broker's order).
    pub async fn latest_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&std::collections::BTreeMap<String, Vec<u8>>) -> bool,
    ) -> std::collections::BTreeMap<String, Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut latest = std::collections::BTreeMap::new();
        while !done(&latest) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((t, payload, _))) => {
                    latest.insert(t, payload);
                }
                _ => panic!(
                    "not done within {timeout:?}; last of each topic: {:?}",
                    latest.keys().collect::<Vec<_>>()
                ),
            }
        }
        latest
    }

    /// Everything received up to and including the next message on
    /// `topic` for which `accept` holds: what came before a marker.
    pub async fn until(
        &mut self,
        topic: &str,
        timeout: Duration,
        accept: impl Fn(&[u8]) -> bool,
    ) -> Vec<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((t, payload, _))) => {
                    let done = t == topic && accept(&payload);
                    seen.push((t, payload));
                    if done {
                        return seen;
                    }
                }
                _ => {
                    panic!("no matching message on {topic} within {timeout:?}; before it: {seen:?}")
                }
            }
        }
    }
}

/// How a connect attempt ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Accepted,
    Refused(String),
}

pub struct Login<'a> {
    pub tls_ca: Option<&'a str>,
    pub credentials: Option<(&'a str, &'a str)>,
    pub client_id: &'a str,
}

/// Connects once (no retry) and says whether the broker accepted.
pub async fn try_connect(host: &str, port: u16, login: Login<'_>) -> Outcome {
    let mut options = rumqttc::MqttOptions::new(login.client_id, host, port);
    options.set_keep_alive(Duration::from_secs(10));
    if let Some((user, password)) = login.credentials {
        options.set_credentials(user, password);
    }
    if let Some(ca) = login.tls_ca {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(homelab_mqtt::tls_client(ca).unwrap()),
        ));
    }
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let attempt = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    return if ack.code == rumqttc::ConnectReturnCode::Success {
                        Outcome::Accepted
                    } else {
                        Outcome::Refused(format!("{:?}", ack.code))
                    };
                }
                Ok(_) => continue,
                Err(error) => return Outcome::Refused(error.to_string()),
            }
        }
    })
    .await;
    attempt.unwrap_or_else(|_| Outcome::Refused("no answer".into()))
}

/// The agent's answer to `command` (as the executor sent it): the action
/// it was for is done.
pub fn outcome(node: &str, seq: u64, service: &str, command: &Value) -> Value {
    event(
        node,
        seq,
        "remediation_completed",
        Some(service),
        json!({"action_id": command["action_id"], "command_id": command["id"]}),
    )
}

/// An event as an agent would publish it.
pub fn event(node: &str, seq: u64, kind: &str, service: Option<&str>, data: Value) -> Value {
    let mut event = json!({
        "v": 1,
        "id": ulid::Ulid::generate().to_string(),
        "ts": homelab_core::time::format(&chrono::Utc::now()),
        "node": node,
        "seq": seq,
        "source": "node-agent",
        "type": kind,
        "severity": "info",
        "message": format!("{kind} #{seq}"),
        "data": data,
    });
    if let Some(service) = service {
        event["service"] = json!(service);
    }
    event
}

/// A `node_snapshot` data object for (service, docker state) pairs.
pub fn snapshot(containers: &[(&str, &str)]) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .map(|(service, state)| {
            json!({"id": format!("id-{service}"), "name": format!("{service}-1"), "service": service,
                   "image": "test:latest", "state": state, "status": state})
        })
        .collect();
    json!({ "containers": containers })
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

pub fn ensure(cond: bool, what: &str) -> Result<()> {
    if !cond {
        bail!("{what}");
    }
    Ok(())
}

/// The test image built by `.ci/test-image`.
pub const IMAGE: &str = "homelab-test/busybox:latest";

/// Removes the container when the test ends, passed or failed.
pub struct Removal(pub String);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// Creates and starts a test container from `body` as service `service`
/// (the image and Compose's service label filled in); removed when the
/// guard drops.
pub async fn start_with(
    docker: &bollard::Docker,
    name: &str,
    service: &str,
    mut body: bollard::models::ContainerCreateBody,
) -> Removal {
    body.image = Some(IMAGE.into());
    body.labels = Some(std::collections::HashMap::from([(
        "com.docker.compose.service".to_string(),
        service.to_string(),
    )]));
    let options = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    docker
        .create_container(Some(options), body)
        .await
        .expect("create test container");
    let removal = Removal(name.to_string());
    docker
        .start_container(name, None)
        .await
        .expect("start test container");
    removal
}

/// [`start_with`] a container running `script` in `sh -c`.
pub async fn start_script_container(
    docker: &bollard::Docker,
    name: &str,
    service: &str,
    script: &str,
) -> Removal {
    let body = bollard::models::ContainerCreateBody {
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    };
    start_with(docker, name, service, body).await
}

/// What a chatty container writes: a hello, one complaint on stderr, then
/// `tick N` five times a second.
pub const CHATTY: &str = "echo hello from the container; echo oops >&2; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done";

/// The machine's Docker engine with the test image, or `None` (the test
/// then says loudly that it skips; under `HOMELAB_REQUIRE_DOCKER=1`, as in
/// CI, a missing engine or image fails it).
pub async fn docker() -> Option<bollard::Docker> {
    let required = std::env::var("HOMELAB_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let found = async {
        let docker = bollard::Docker::connect_with_defaults()
            .ok()?
            .negotiate_version()
            .await
            .ok()?;
        docker.inspect_image(IMAGE).await.ok()?;
        Some(docker)
    }
    .await;
    if found.is_none() {
        assert!(!required, "HOMELAB_REQUIRE_DOCKER=1 but Docker or the image {IMAGE} is missing (run .ci/test-image)");
        eprintln!("\n*** SKIPPED: no Docker engine or no image {IMAGE}; run .ci/test-image ***\n");
    }
    found
}

/// Approves `id` over HTTP with the operator token and waits until it
/// finished; fails the test unless it completed. The completed file.
pub async fn approve(system: &System, id: &str) -> Value {
    let (status, body) = system
        .post(&format!("/api/actions/{id}/approve"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        &format!("{id} finished"),
        Duration::from_secs(90),
        || async {
            system.action_file("completed", id).exists()
                || system.action_file("failed", id).exists()
        },
    )
    .await;
    let done = system.action_file("completed", id);
    assert!(
        done.exists(),
        "{id} failed: {}",
        read_json(&system.action_file("failed", id)).unwrap()
    );
    read_json(&done).unwrap()
}

/// A small tmpfs, unmounted when dropped (also when the test fails).
pub struct Tmpfs(pub tempfile::TempDir);

impl Tmpfs {
    /// `None` where mounting is not allowed (not in CI: there it must run).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            assert!(std::env::var("CI").is_err(), "cannot mount a tmpfs: {why}");
            eprintln!("\n*** SKIPPED: cannot mount a tmpfs: {why} ***\n");
            return None;
        }
        Some(Tmpfs(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .output();
    }
}

/// What an agent publishes retained on `homelab/nodes/<node>/agent`,
/// connected and with nothing waiting, with its vitals: load `load`,
/// memory 75 % of 8 GB in use, the root filesystem 41 % full.
pub fn agent_status(node: &str, load: f64) -> String {
    json!({"node": node, "connected": true, "outbox_events": 0,
           "updated": homelab_core::time::format(&chrono::Utc::now()),
           "vitals": {"load": [load, 0.5, 0.4], "memory_total_bytes": 8_000_000_000u64,
                      "memory_available_bytes": 2_000_000_000u64, "uptime_secs": 5000,
                      "disks": [{"mount": "/", "used_pct": 41.0, "free_bytes": 50_000_000_000u64}]}})
    .to_string()
}

/// A child process killed (and reaped) when this is dropped, also when the
/// test fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mosquitto drops root for its own user before it reads the password
/// file and the key: hand it the directory, as the printed hint says.
pub fn hand_to_mosquitto(dir: &Path) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg("mosquitto")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "chown mosquitto {}", dir.display());
}

/// Mosquitto with what `homelab mosquitto-config` wrote into `conf`
/// (handed to its user first), logging verbosely to `log`, once it
/// listens on `listen`.
pub async fn configured_mosquitto(conf: &Path, listen: SocketAddr, log: &Path) -> KillOnDrop {
    hand_to_mosquitto(conf);
    let log = std::fs::File::create(log).unwrap();
    let child = KillOnDrop(
        std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(conf.join("homelab.conf"))
            .arg("-v")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("mosquitto listens", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect(listen).await.is_ok()
    })
    .await;
    child
}

/// Mosquitto on loopback `port` with its defaults (no persistence), or
/// `None` when it is not installed (skipped loudly; CI installs it and
/// must run the test).
pub async fn mosquitto(port: u16) -> Option<KillOnDrop> {
    let child = match std::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => KillOnDrop(child),
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "mosquitto is not installed");
            eprintln!("\n*** SKIPPED: mosquitto is not installed ***\n");
            return None;
        }
    };
    wait_for("mosquitto listens", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Some(child)
}

/// A git remote made for a test: a bare repository and a working clone
/// that commits and pushes as a user does (real git).
pub struct GitRemote {
    pub dir: tempfile::TempDir,
}

impl GitRemote {
    pub fn new() -> GitRemote {
        let remote = GitRemote {
            dir: tempfile::tempdir().unwrap(),
        };
        remote.git_in(
            remote.dir.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        remote.git_in(remote.dir.path(), &["clone", "-q", &remote.url(), "work"]);
        remote
    }

    pub fn bare(&self) -> PathBuf {
        self.dir.path().join("origin.git")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare().display())
    }

    fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "Ann Operator")
            .env("GIT_AUTHOR_EMAIL", "ann@example.net")
            .env("GIT_COMMITTER_NAME", "Ann Operator")
            .env("GIT_COMMITTER_EMAIL", "ann@example.net")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `git args…` in the working clone.
    pub fn git(&self, args: &[&str]) -> String {
        self.git_in(&self.work(), args)
    }

    /// Writes `files` (path, text) in the working clone, commits them with
    /// `subject` and pushes; the commit's name.
    pub fn commit(&self, subject: &str, files: &[(&str, &str)]) -> String {
        for (path, text) in files {
            let path = self.work().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", subject]);
        self.git(&["push", "-q", "origin", "HEAD:main"]);
        self.git(&["rev-parse", "HEAD"])
    }
}

impl Default for GitRemote {
    fn default() -> Self {
        GitRemote::new()
    }
}
