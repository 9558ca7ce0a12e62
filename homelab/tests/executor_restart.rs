//! The executor killed (SIGKILL) while an action runs, as its own process
//! next to `homelab broker` and `homelab observer` on one root: the action
//! ends in a clear, recorded state, and its command is never sent again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const ID: &str = "container-restart-n1-app";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Site {
    dir: tempfile::TempDir,
    port: u16,
    broker: Option<Proc>,
    _observer: Proc,
    executor: Option<Proc>,
    /// Commands the stand-in agent received.
    commands: Arc<Mutex<Vec<Value>>>,
    /// Subscriptions it has had confirmed.
    subscribed: Arc<AtomicUsize>,
    agent: AsyncClient,
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(args)
        .env("RUST_LOG", "info,rumqttd=off")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/inventory")).unwrap();
        std::fs::write(
            dir.path().join("repo/inventory/topology.yaml"),
            "nodes:\n  n1: {}\n",
        )
        .unwrap();
        let port = free_port();
        let broker = Site::start_broker(dir.path(), port).await;
        let observer = spawn(
            dir.path(),
            "observer",
            &[
                "observer".into(),
                "--broker".into(),
                format!("127.0.0.1:{port}"),
                "--root".into(),
                dir.path().join("root").display().to_string(),
                "--repo".into(),
                dir.path().join("repo").display().to_string(),
            ],
        );
        // The node's agent, played by a plain client that only listens.
        let mut options = MqttOptions::new("stand-in-agent-n1", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (agent, mut eventloop) = AsyncClient::new(options, 10);
        let commands = Arc::new(Mutex::new(Vec::new()));
        let got = commands.clone();
        let subscribed = Arc::new(AtomicUsize::new(0));
        let suback = subscribed.clone();
        let client = agent.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // A restarted broker has forgotten the subscription.
                    Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        let _ = client
                            .subscribe("homelab/commands/n1", QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => got
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&p.payload).unwrap()),
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        suback.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        wait_for(
            "the stand-in agent subscribed",
            Duration::from_secs(10),
            || subscribed.load(Ordering::SeqCst) > 0,
        )
        .await;
        Site {
            dir,
            port,
            broker: Some(broker),
            _observer: observer,
            executor: None,
            commands,
            subscribed,
            agent,
        }
    }

    async fn start_broker(dir: &Path, port: u16) -> Proc {
        let broker = spawn(
            dir,
            "broker",
            &[
                "broker".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ],
        );
        wait_for("the broker", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        broker
    }

    fn start_executor(&mut self) {
        self.executor = Some(spawn(
            self.dir.path(),
            "executor",
            &[
                "executor".into(),
                "--broker".into(),
                format!("127.0.0.1:{}", self.port),
                "--root".into(),
                self.root().display().to_string(),
                "--command-timeout".into(),
                "2s".into(),
            ],
        ));
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn action_file(&self, state: &str) -> PathBuf {
        self.root()
            .join("actions")
            .join(state)
            .join(format!("{ID}.json"))
    }

    fn action(&self, state: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.action_file(state)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// An approved action, as the ui leaves it.
    fn approve(&self) {
        let now = chrono::Utc::now().to_rfc3339();
        let action = json!({
            "v": 1, "id": ID, "type": "container_restart", "node": "n1", "service": "app",
            "risk": "low", "state": "approved", "reason": "containers_not_running",
            "message": "app is not running", "created_at": now, "updated_at": now,
            "history": [
                {"state": "pending", "at": now, "by": "supervisor", "why": "app exited"},
                {"state": "approved", "at": now, "by": "alice", "why": "go"}
            ]
        });
        let path = self.action_file("approved");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, action.to_string()).unwrap();
    }

    /// Approves, waits for the command, and kills the executor once the
    /// action is running with that command recorded. The command's id.
    async fn killed_mid_action(&mut self) -> String {
        self.start_executor();
        self.approve();
        wait_for("the command", Duration::from_secs(30), || {
            !self.commands.lock().unwrap().is_empty()
        })
        .await;
        let command = self.commands.lock().unwrap()[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_for(
            "running with the command recorded",
            Duration::from_secs(10),
            || {
                self.action("running")
                    .is_some_and(|a| a["command"]["id"] == command.as_str())
            },
        )
        .await;
        drop(self.executor.take()); // SIGKILL
        command
    }

    fn log_count(&self, name: &str, what: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default()
            .matches(what)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_outcome_is_taken_from_the_event_log_after_an_executor_restart() {
    let mut site = Site::start().await;
    let command = site.killed_mid_action().await;
    // The agent answers while no executor runs; the observer logs it.
    let now = chrono::Utc::now().to_rfc3339();
    for (seq, kind, message) in [
        (1, "remediation_started", "container_restart"),
        (2, "remediation_completed", "restarted app-1"),
    ] {
        let event = json!({
            "v": 1, "id": homelab_core::event::new_id(), "ts": now, "node": "n1", "seq": seq,
            "source": "node-agent", "type": kind, "service": "app", "severity": "info",
            "message": message, "data": {"action_id": ID, "command_id": command}
        });
        site.agent
            .publish(
                "homelab/events/n1",
                QoS::AtLeastOnce,
                false,
                event.to_string(),
            )
            .await
            .unwrap();
    }
    let log = site
        .root()
        .join("events")
        .join(chrono::Utc::now().format("%Y-%m-%d").to_string())
        .join("n1/events.jsonl");
    wait_for(
        "the outcome in the event log",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("remediation_completed")),
    )
    .await;
    // The broker restarts too: what it queued for the executor is gone, the
    // log is all there is.
    drop(site.broker.take());
    let subscribed = site.subscribed.load(Ordering::SeqCst);
    site.broker = Some(Site::start_broker(site.dir.path(), site.port).await);
    wait_for(
        "the stand-in agent subscribed again",
        Duration::from_secs(20),
        || site.subscribed.load(Ordering::SeqCst) > subscribed,
    )
    .await;
    site.start_executor();
    wait_for("completed", Duration::from_secs(30), || {
        site.action("completed").is_some()
    })
    .await;
    let done = site.action("completed").unwrap();
    assert_eq!(done["result"]["ok"], true, "{done}");
    assert_eq!(done["result"]["message"], "restarted app-1");
    assert_eq!(done["result"]["data"]["command_id"], command.as_str());
    assert_eq!(
        site.log_count("executor", "outcome found in the event log"),
        1
    );
    assert_eq!(
        site.log_count("executor", "command sent"),
        1,
        "sent once, never again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_outcome_it_fails_as_executor_restarted_and_is_never_sent_again() {
    let mut site = Site::start().await;
    let command = site.killed_mid_action().await;
    site.start_executor();
    // Deadline 2 s after sending, then 30 s for a late outcome.
    wait_for("failed", Duration::from_secs(60), || {
        site.action("failed").is_some()
    })
    .await;
    let failed = site.action("failed").unwrap();
    assert_eq!(failed["result"]["ok"], false, "{failed}");
    assert_eq!(
        failed["result"]["data"]["reason"], "executor_restarted",
        "{failed}"
    );
    assert_eq!(failed["result"]["data"]["command_id"], command.as_str());
    assert!(failed["result"]["message"]
        .as_str()
        .unwrap()
        .starts_with("executor_restarted"));
    let commands = site.commands.lock().unwrap().clone();
    assert_eq!(commands.len(), 1, "the command was sent once: {commands:?}");
}
