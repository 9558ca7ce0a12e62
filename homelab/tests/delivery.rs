//! No event lost: the agent, observer and broker each run as their own
//! process (the real binary; Mosquitto too), the agent reaches the broker
//! through a TCP proxy the test can cut, and faults are injected mid-stream.
//! After each, the observer's event log must hold every emitted event
//! exactly once, in `seq` order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homelab_core::{Event, Layout, Name, Severity};
use serde_json::{json, Value};

mod common;
use common::{free_port, Proc};

/// A node name of its own for each lab.
fn node_name() -> String {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(1);
    format!("edge{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A TCP proxy between the agent and the broker: the node's uplink.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                links2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, up, links }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    /// `homelab broker`, with `homelab observer` beside it.
    Embedded,
    Mosquitto,
    /// `homelab up --no-agent`: the embedded broker and the whole control
    /// plane in one process (the observer is part of it).
    Up,
}

struct Lab {
    node: String,
    dir: tempfile::TempDir,
    kind: Broker,
    broker_port: u16,
    proxy: Proxy,
    agent_args: Vec<String>,
    broker: Option<Proc>,
    observer: Option<Proc>,
    agent: Option<Proc>,
    /// `homelab agent`, or the slim `homelab-agent` when true.
    slim_agent: bool,
    /// The agent's PATH: a folder put before the test's own.
    agent_path: Option<PathBuf>,
    /// `homelab up`'s web UI (Broker::Up).
    http_port: u16,
    next_i: u64,
}

impl Drop for Lab {
    /// A failed test keeps its logs (processes, logs and roots).
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

impl Lab {
    async fn start(kind: Broker, agent_args: &[&str]) -> Option<Lab> {
        Lab::start_with(kind, agent_args, None).await
    }

    /// [`Lab::start`], with `agent_path` before the agent's PATH.
    async fn start_with(
        kind: Broker,
        agent_args: &[&str],
        agent_path: Option<PathBuf>,
    ) -> Option<Lab> {
        if kind == Broker::Mosquitto && Command::new("mosquitto").arg("-h").output().is_err() {
            assert!(std::env::var("CI").is_err(), "mosquitto is not installed");
            eprintln!("\n*** SKIPPED: mosquitto is not installed ***\n");
            return None;
        }
        let node = node_name();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/inventory")).unwrap();
        std::fs::write(
            dir.path().join("repo/inventory/topology.yaml"),
            format!("nodes:\n  {node}: {{}}\n"),
        )
        .unwrap();
        let broker_port = free_port();
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], broker_port))).await;
        let mut lab = Lab {
            node,
            dir,
            kind,
            broker_port,
            proxy,
            agent_args: agent_args.iter().map(|s| s.to_string()).collect(),
            broker: None,
            observer: None,
            agent: None,
            slim_agent: false,
            agent_path,
            http_port: free_port(),
            next_i: 0,
        };
        lab.start_broker().await;
        lab.start_observer();
        lab.start_agent();
        Some(lab)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&self, name: &str, program: &str, args: &[String]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .unwrap();
        let mut command = Command::new(program);
        if let (Some(dir), "agent") = (&self.agent_path, name) {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![dir.clone()];
            dirs.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(dirs).unwrap());
        }
        let child = command
            .args(args)
            .env("RUST_LOG", "info,rumqttd=off")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc(child)
    }

    async fn start_broker(&mut self) {
        let listen = format!("127.0.0.1:{}", self.broker_port);
        let proc = match self.kind {
            Broker::Embedded => self.spawn(
                "broker",
                env!("CARGO_BIN_EXE_homelab"),
                &["broker".into(), "--listen".into(), listen],
            ),
            Broker::Up => {
                let args = vec![
                    "up".into(),
                    "--no-agent".into(),
                    "--mqtt".into(),
                    listen,
                    "--http".into(),
                    format!("127.0.0.1:{}", self.http_port),
                    "--root".into(),
                    self.path("observer-root").display().to_string(),
                    "--repo".into(),
                    self.path("repo").display().to_string(),
                ];
                self.spawn("broker", env!("CARGO_BIN_EXE_homelab"), &args)
            }
            // Debian's Mosquitto with its default configuration.
            Broker::Mosquitto => self.spawn(
                "broker",
                "mosquitto",
                &["-p".into(), self.broker_port.to_string()],
            ),
        };
        self.broker = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.broker_port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // It is our broker that answers, not someone else's on that port.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let exited = self.broker.as_mut().unwrap().0.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "broker exited: {exited:?}; see {}",
            self.path("broker.log").display()
        );
    }

    fn start_observer(&mut self) {
        if self.kind == Broker::Up {
            return; // part of `up`
        }
        let args = vec![
            "observer".into(),
            "--broker".into(),
            format!("127.0.0.1:{}", self.broker_port),
            "--root".into(),
            self.path("observer-root").display().to_string(),
            "--repo".into(),
            self.path("repo").display().to_string(),
        ];
        self.observer = Some(self.spawn("observer", env!("CARGO_BIN_EXE_homelab"), &args));
    }

    /// The agent's program and the arguments that come before its flags.
    fn agent_program(&self) -> (&'static str, Vec<String>) {
        if self.slim_agent {
            (env!("CARGO_BIN_EXE_homelab-agent"), vec![])
        } else {
            (env!("CARGO_BIN_EXE_homelab"), vec!["agent".into()])
        }
    }

    fn start_agent(&mut self) {
        let (program, mut args) = self.agent_program();
        args.extend([
            "--broker".into(),
            self.proxy.addr.to_string(),
            "--node".into(),
            self.node.clone(),
            "--root".into(),
            self.agent_root().display().to_string(),
            // No Docker here: the agent reports that and goes on.
            "--docker-host".into(),
            format!("unix://{}/no-docker.sock", self.dir.path().display()),
        ]);
        // Every timer at its default (`--resend-after` 30 s): recovery
        // must not rest on a shortened one.
        args.extend(self.agent_args.iter().cloned());
        self.agent = Some(self.spawn("agent", program, &args));
    }

    fn agent_root(&self) -> PathBuf {
        self.path("agent-root")
    }

    /// Hands `n` events to the agent as `homelab emit` does (the same
    /// spool), numbered in `data.i`.
    fn emit(&mut self, n: u64) {
        let spool = Layout::new(self.agent_root()).agent_spool(&Name::parse(&self.node).unwrap());
        for _ in 0..n {
            let event = Event {
                v: 1,
                id: homelab_core::event::new_id(),
                ts: chrono::Utc::now(),
                node: Name::parse(&self.node).unwrap(),
                seq: 0,
                source: "emit".into(),
                kind: "test_event".into(),
                service: None,
                severity: Severity::Info,
                message: format!("event {}", self.next_i),
                data: json!({"i": self.next_i, "pad": "x".repeat(200)}),
            };
            homelab_agent::spool::hand_over(&spool, &event).unwrap();
            self.next_i += 1;
        }
    }

    /// The same through the real command line.
    fn emit_cli(&mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_homelab"))
            .args([
                "emit",
                "--node",
                &self.node,
                "--type",
                "test_event",
                "--message",
                "from the cli",
            ])
            .arg("--data")
            .arg(json!({"i": self.next_i}).to_string())
            .arg("--root")
            .arg(self.agent_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim().len(),
            26,
            "emit prints the event id"
        );
        self.next_i += 1;
    }

    /// Every event of the node in the observer's log, in file order.
    fn logged(&self) -> Vec<Value> {
        let events = self.path("observer-root/events");
        let mut days: Vec<PathBuf> = std::fs::read_dir(&events)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        days.sort();
        let mut out = Vec::new();
        for day in days {
            let text = std::fs::read_to_string(day.join(&self.node).join("events.jsonl"))
                .unwrap_or_default();
            out.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
        }
        out
    }

    fn test_events(&self) -> BTreeMap<u64, usize> {
        let mut seen = BTreeMap::new();
        for e in self.logged().iter().filter(|e| e["type"] == "test_event") {
            *seen.entry(e["data"]["i"].as_u64().unwrap()).or_default() += 1;
        }
        seen
    }

    async fn wait_logged(&self, count: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.test_events();
            if (0..count).all(|i| seen.contains_key(&i)) {
                return;
            }
            if Instant::now() > deadline {
                let missing: Vec<u64> = (0..count).filter(|i| !seen.contains_key(i)).collect();
                panic!(
                    "{} of {count} events missing after {timeout:?}: {:?}…\nlogs in {}",
                    missing.len(),
                    &missing[..missing.len().min(20)],
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every emitted event once, and the node's log in `seq` order.
    async fn assert_delivered_exactly_once(&mut self) {
        self.wait_logged(self.next_i, Duration::from_secs(90)).await;
        self.quiesce().await;
        let seen = self.test_events();
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "stored more than once: {twice:?}");
        assert_eq!(seen.len() as u64, self.next_i);
        let seqs: Vec<u64> = self
            .logged()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "log not in seq order: {seqs:?}"
        );
        self.assert_emit_order();
    }

    /// A positive sign that nothing more is on its way: one more event is
    /// logged and the watermark covers it. Events reach the observer in
    /// the order the agent sends them, and once everything is acknowledged
    /// nothing is sent again, so no late duplicate can follow.
    async fn quiesce(&mut self) {
        self.emit(1);
        self.wait_logged_from(self.next_i - 1).await;
        let last = self
            .logged()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap();
        self.wait_ack(last).await;
    }

    /// Events emitted one after another are logged in that order.
    fn assert_emit_order(&self) {
        let order: Vec<u64> = self
            .logged()
            .iter()
            .filter(|e| e["type"] == "test_event")
            .map(|e| e["data"]["i"].as_u64().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "test events not logged in the order they were emitted: {order:?}"
        );
    }
}

fn until(lab: &Lab, n: u64) -> impl std::future::Future<Output = ()> + '_ {
    lab.wait_logged(n, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_cut_and_restored() {
    let Some(mut lab) = Lab::start(Broker::Embedded, &[]).await else {
        return;
    };
    for _ in 0..5 {
        lab.emit_cli();
    }
    until(&lab, 5).await;
    lab.proxy.cut();
    lab.emit(100);
    // The agent has them all in its outbox and knows its link is down.
    lab.wait_spool_drained().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(lab.path("agent.log"))
        .unwrap()
        .contains("mqtt connection lost")
    {
        assert!(Instant::now() < deadline, "the agent never noticed the cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lab.test_events().len(), 5, "nothing crosses a cut link");
    // What the operator sees of the cut-off agent.
    lab.wait_agent_status(|s| {
        s.contains("running, not connected to the broker") && outbox_events(s) >= 100
    })
    .await;
    lab.emit_cli();
    lab.proxy.restore();
    lab.assert_delivered_exactly_once().await;
    lab.wait_agent_status(|s| s.contains("agent:           connected") && outbox_events(s) == 0)
        .await;
    // The same, retained on the bus.
    let out = Command::new("mosquitto_sub")
        .args(["-p", &lab.broker_port.to_string(), "-C", "1", "-W", "5"])
        .args(["-t", &format!("homelab/nodes/{}/agent", lab.node)])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["node"], lab.node.as_str());
}

/// `outbox: N events, …` of `homelab agent status`.
fn outbox_events(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("outbox:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Lab {
    /// Polls `homelab agent status` (or `homelab-agent status`) until
    /// `check` holds for its output.
    async fn wait_agent_status(&self, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (program, args) = self.agent_program();
        loop {
            let out = Command::new(program)
                .args(&args)
                .args(["status", "--node", &self.node, "--root"])
                .arg(self.agent_root())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() && check(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent status never showed what was expected:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The agent SIGKILLed mid-stream and started again on the same root
/// (`slim`: as `homelab-agent`): its backlog is delivered exactly once.
async fn agent_killed_and_restarted(slim: bool) -> Lab {
    let mut lab = Lab::start(Broker::Embedded, &[])
        .await
        .expect("embedded broker");
    lab.emit(300);
    until(&lab, 20).await;
    drop(lab.agent.take()); // SIGKILL
    lab.emit(50);
    lab.slim_agent = slim;
    lab.start_agent();
    lab.emit_cli();
    lab.assert_delivered_exactly_once().await;
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_stream_and_restarted() {
    agent_killed_and_restarted(false).await;
}

/// A host moves from `homelab agent` to the slim `homelab-agent` (same
/// root): the backlog the old one left is delivered by the new one, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slim_agent_binary_takes_over_the_outbox() {
    let lab = agent_killed_and_restarted(true).await;
    lab.wait_agent_status(|s| s.contains("agent:           connected") && outbox_events(s) == 0)
        .await;
}

impl Lab {
    /// Publishes a `container_restart` command to the agent as the
    /// executor does (QoS 1, straight to the broker); `deadline_in` may be
    /// negative.
    fn send_command(&self, id: &str, deadline_in: chrono::TimeDelta) {
        let now = chrono::Utc::now();
        let command = json!({
            "v": 1,
            "id": id,
            "action_id": format!("container-restart-{}-app", self.node),
            "node": self.node,
            "type": "container_restart",
            "params": {"service": "app"},
            "issued_at": now.to_rfc3339(),
            "deadline": (now + deadline_in).to_rfc3339(),
        });
        let out = Command::new("mosquitto_pub")
            .args(["-p", &self.broker_port.to_string(), "-q", "1"])
            .args(["-t", &format!("homelab/commands/{}", self.node)])
            .args(["-m", &command.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The logged events about command `id`, by type.
    fn command_events(&self, id: &str) -> BTreeMap<String, Vec<Value>> {
        let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for e in self.logged() {
            if e["data"]["command_id"] == id {
                by_type
                    .entry(e["type"].as_str().unwrap().to_string())
                    .or_default()
                    .push(e);
            }
        }
        by_type
    }

    async fn wait_agent_log(&self, what: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(self.path("agent.log")).unwrap_or_default();
            if log.matches(what).count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent log never said {what:?} {times} times"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_command_event(&self, id: &str, kind: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.command_events(id).contains_key(kind) {
            assert!(
                Instant::now() < deadline,
                "no {kind} for command {id} in the log"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A command delivered twice is taken once, also when the second copy
/// comes after the agent was killed and restarted; one past its deadline
/// is refused as expired. (No Docker here: a command that is taken waits
/// for Docker until its deadline, across the restart, and is then
/// refused as expired without ever starting.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_at_most_once_and_an_expired_one_is_refused() {
    let Some(mut lab) = Lab::start(Broker::Embedded, &[]).await else {
        return;
    };
    lab.wait_agent_status(|s| s.contains("agent:           connected"))
        .await;
    let once = homelab_core::event::new_id();
    lab.send_command(&once, chrono::TimeDelta::seconds(8));
    lab.send_command(&once, chrono::TimeDelta::seconds(8));
    lab.wait_agent_log("command waits for the docker engine", 1)
        .await;
    lab.wait_agent_log("command already handled", 1).await;

    drop(lab.agent.take()); // SIGKILL
    lab.start_agent();
    lab.wait_agent_status(|s| s.contains("agent:           connected"))
        .await;
    // Taken before the kill: carried on after it, still waiting.
    lab.wait_agent_log("command taken before the restart carried on", 1)
        .await;
    let seen = lab.agent_log().matches("command already handled").count();
    lab.send_command(&once, chrono::TimeDelta::seconds(8));
    let expired = homelab_core::event::new_id();
    lab.send_command(&expired, chrono::TimeDelta::seconds(-1));
    lab.wait_agent_log("command already handled", seen + 1)
        .await;
    lab.wait_command_event(&expired, "remediation_failed").await;
    lab.wait_command_event(&once, "remediation_failed").await;
    lab.quiesce().await;

    let ran = lab.command_events(&once);
    assert!(!ran.contains_key("remediation_started"), "{ran:?}");
    let failed = &ran["remediation_failed"];
    assert_eq!(failed.len(), 1, "{ran:?}");
    assert_eq!(failed[0]["data"]["reason"], "expired");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("docker engine was unreachable"),
        "{ran:?}"
    );
    let refused = lab.command_events(&expired);
    assert!(!refused.contains_key("remediation_started"), "{refused:?}");
    let failed = &refused["remediation_failed"];
    assert_eq!(failed.len(), 1, "{refused:?}");
    assert_eq!(failed[0]["data"]["reason"], "expired");
    assert_eq!(failed[0]["service"], "app");
}

/// A small tmpfs, unmounted when dropped (also when the test fails).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` where mounting is not allowed (not in CI: there it must run).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
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
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).output();
    }
}

/// A filesystem the agent watches fills past the high line and empties
/// below the low one: `disk_pressure` high, then low, each once, with the
/// mount, the used percentage and the free bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_filesystem_is_reported_high_then_low() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let mount = tmpfs.0.path().display().to_string();
    let args = ["--disk-mount", &mount, "--disk-interval", "1s"];
    let Some(mut lab) = Lab::start(Broker::Embedded, &args).await else {
        return;
    };
    let pressure = |lab: &Lab| -> Vec<Value> {
        lab.logged()
            .into_iter()
            .filter(|e| e["type"] == "disk_pressure" && e["data"]["mount"] == mount.as_str())
            .collect()
    };
    let wait_levels = |levels: usize| {
        let lab = &lab;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while pressure(lab).len() < levels {
                assert!(
                    Instant::now() < deadline,
                    "disk_pressure events: {:?}",
                    pressure(lab)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let ballast = tmpfs.0.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 3_900_000]).unwrap();
    wait_levels(1).await;
    std::fs::remove_file(&ballast).unwrap();
    wait_levels(2).await;
    lab.quiesce().await;
    let events = pressure(&lab);
    assert_eq!(events.len(), 2, "{events:?}");
    let (high, low) = (&events[0], &events[1]);
    assert_eq!(high["data"]["level"], "high");
    assert_eq!(high["severity"], "warning");
    assert!(high["data"]["used_pct"].as_f64().unwrap() >= 90.0, "{high}");
    assert!(
        high["data"]["free_bytes"].as_u64().unwrap() < 420_000,
        "{high}"
    );
    assert_eq!(low["data"]["level"], "low");
    assert!(low["data"]["used_pct"].as_f64().unwrap() <= 80.0, "{low}");
    assert!(
        low["data"]["free_bytes"].as_u64().unwrap() > 3_000_000,
        "{low}"
    );
}

/// A mount the repo names for the node (`capabilities.yaml`) that is
/// already full is judged as soon as the node config naming it arrives,
/// not at the next sample (every 30 s by default, the interval this test
/// runs with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mount_the_repo_names_is_judged_when_its_config_arrives() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let mount = tmpfs.0.path().display().to_string();
    std::fs::write(tmpfs.0.path().join("ballast"), vec![1u8; 3_900_000]).unwrap();
    let Some(lab) = Lab::start(Broker::Up, &[]).await else {
        return;
    };
    // The first sample is taken (the agent's vitals list the root).
    lab.wait_agent_status(|s| s.contains("connected")).await;
    let status = lab
        .agent_root()
        .join(format!("state/agent/{}/status.json", lab.node));
    let deadline = Instant::now() + Duration::from_secs(30);
    let sampled_root = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .is_some_and(|s| {
                s["vitals"]["disks"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["mount"] == "/"))
            })
    };
    while !sampled_root(&status) {
        assert!(Instant::now() < deadline, "no first disk sample");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let applied = lab.agent_log().matches("node config applied").count();
    let hosts = lab.path("repo/hosts").join(&lab.node);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(hosts.join("services.yaml"), "services: {}\n").unwrap();
    std::fs::write(
        hosts.join("capabilities.yaml"),
        format!("disk: {{mounts: [{mount}]}}\n"),
    )
    .unwrap();
    lab.wait_agent_log("node config applied", applied + 1).await;
    let applied_at = Instant::now();
    let high = |lab: &Lab| {
        lab.logged().into_iter().any(|e| {
            e["type"] == "disk_pressure"
                && e["data"]["mount"] == mount.as_str()
                && e["data"]["level"] == "high"
        })
    };
    while !high(&lab) {
        assert!(
            applied_at.elapsed() < Duration::from_secs(10),
            "the full mount was not judged when its config arrived; logs in {}",
            lab.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn broker_restarted(kind: Broker) {
    let Some(mut lab) = Lab::start(kind, &[]).await else {
        return;
    };
    lab.emit(300);
    until(&lab, 20).await;
    drop(lab.broker.take()); // SIGKILL: queued and retained messages are gone
    lab.emit(50);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.start_broker().await;
    lab.assert_delivered_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_restarted_mid_stream() {
    broker_restarted(Broker::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_mid_stream() {
    broker_restarted(Broker::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_killed_mid_stream_and_restarted() {
    let Some(mut lab) = Lab::start(Broker::Embedded, &[]).await else {
        return;
    };
    lab.emit(300);
    until(&lab, 20).await;
    drop(lab.observer.take()); // SIGKILL
    lab.emit(50);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.start_observer();
    lab.assert_delivered_exactly_once().await;
}

/// Mosquitto's default `max_queued_messages 1000` drops QoS 1 messages to a
/// subscriber that is away: the end-to-end ack makes the agent send them
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_queue_limit_loses_nothing() {
    let Some(mut lab) = Lab::start(Broker::Mosquitto, &[]).await else {
        return;
    };
    lab.emit(5);
    until(&lab, 5).await;
    drop(lab.observer.take());
    lab.emit(1500);
    tokio::time::sleep(Duration::from_secs(4)).await;
    lab.start_observer();
    lab.assert_delivered_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_bound_drops_the_oldest_and_says_so() {
    let Some(mut lab) = Lab::start(Broker::Embedded, &["--outbox-max-bytes", "40000"]).await else {
        return;
    };
    lab.proxy.cut();
    // About 150 kB of events for a 40 kB outbox; wait until the spool is
    // drained into the outbox.
    lab.emit(300);
    lab.wait_spool_drained().await;
    lab.proxy.restore();
    // The newest arrive; the oldest went, and events_dropped says so.
    lab.wait_logged_from(299).await;
    lab.quiesce().await;
    let logged = lab.logged();
    let notices: Vec<&Value> = logged
        .iter()
        .filter(|e| e["type"] == "events_dropped")
        .collect();
    assert!(!notices.is_empty(), "an events_dropped event is logged");
    let through = notices
        .iter()
        .map(|e| e["data"]["through_seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let dropped: u64 = notices
        .iter()
        .map(|e| e["data"]["dropped"].as_u64().unwrap())
        .sum();
    assert!(
        logged
            .iter()
            .filter(|e| e["type"] == "test_event")
            .all(|e| e["seq"].as_u64().unwrap() > through),
        "no test event at or below the announced drop survives"
    );
    // Nothing after the announced drop is missing, nothing is twice.
    let seen = lab.test_events();
    assert!(seen.values().all(|n| *n == 1));
    lab.assert_emit_order();
    let first_kept = *seen.keys().next().unwrap();
    let missing: Vec<u64> = (first_kept..lab.next_i)
        .filter(|i| !seen.contains_key(i))
        .collect();
    assert!(
        missing.is_empty(),
        "events after the oldest kept one ({first_kept}) are missing: {missing:?}; logs in {}",
        lab.dir.path().display()
    );
    assert!(
        first_kept >= 1 && dropped >= first_kept,
        "{dropped} dropped announced, {first_kept} test events missing"
    );
    let seqs: Vec<u64> = logged.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "log in seq order");
    // The observer's watermark moved past the announced drop (quiesce
    // waited for it to cover the last event).
}

/// The sequence, with every timer at its default: the watermark
/// stands at the first event when the uplink is cut; 400 events (about
/// 40 a second) overflow a 16 KiB outbox, which drops far more than a send
/// window's worth; the link comes back and the agent reconnects on its
/// kept session. Within the resend timeout (so by the reconnect, not by a
/// stall timer) the kept events arrive in order, with `events_dropped`
/// notices that count exactly the ones that went.
async fn overflow_during_a_cut(kind: Broker) {
    let Some(mut lab) = Lab::start(kind, &["--outbox-max-bytes", "16384"]).await else {
        return;
    };
    lab.emit(1);
    until(&lab, 1).await;
    let first_seq = lab.logged().last().unwrap()["seq"].as_u64().unwrap();
    lab.wait_ack(first_seq).await;
    // The agent itself has the ack (not only the broker's retained copy).
    lab.wait_agent_status(|s| s.contains(&format!("{first_seq} acknowledged")))
        .await;
    lab.proxy.cut();
    lab.wait_agent_log("mqtt connection lost", 1).await;
    let connects = lab.agent_connects();
    for _ in 0..40 {
        lab.emit(10);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lab.wait_spool_drained().await;
    lab.wait_agent_log("outbox full; oldest events dropped", 1)
        .await;
    lab.wait_agent_status(|s| s.contains("running, not connected to the broker"))
        .await;
    lab.proxy.restore();
    let back = Instant::now();
    // The reconnect: on the session the broker kept.
    let deadline = back + Duration::from_secs(30);
    while lab.agent_connects() <= connects {
        assert!(Instant::now() < deadline, "the agent never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = lab.agent_log();
    let last_connect = log.rfind("mqtt connected").unwrap();
    assert!(
        log[last_connect..]
            .lines()
            .next()
            .unwrap()
            .contains("session_present=true"),
        "the reconnect was not on a kept session"
    );
    // Every default timer: resend_after is 30 s. Delivery must come from
    // the reconnect itself.
    let deadline = back + Duration::from_secs(30);
    while !lab.test_events().contains_key(&400) {
        assert!(
            Instant::now() < deadline,
            "the kept events did not arrive within 30 s of the reconnect; logs in {}",
            lab.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.quiesce().await;
    let logged = lab.logged();
    let notices: Vec<&Value> = logged
        .iter()
        .filter(|e| e["type"] == "events_dropped")
        .collect();
    assert!(!notices.is_empty(), "no events_dropped notice was logged");
    let dropped: u64 = notices
        .iter()
        .map(|e| e["data"]["dropped"].as_u64().unwrap())
        .sum();
    // What went, the notices count: every seq the node gave out is in the
    // log, or inside a notice's range (the agent's own events, such as its
    // docker_unreachable, may be among the dropped too).
    let mut covered = std::collections::BTreeSet::new();
    for e in &logged {
        let seq = e["seq"].as_u64().unwrap();
        match e["type"].as_str() {
            Some("events_dropped") => {
                let first = e["data"]["first_seq"].as_u64().unwrap();
                covered.extend(first..=seq);
            }
            _ => {
                covered.insert(seq);
            }
        }
    }
    let last = *covered.iter().next_back().unwrap();
    let gaps: Vec<u64> = (1..=last).filter(|s| !covered.contains(s)).collect();
    assert!(
        gaps.is_empty(),
        "seqs neither logged nor announced dropped: {gaps:?}"
    );
    let seen = lab.test_events();
    assert!(seen.values().all(|n| *n == 1), "stored twice: {seen:?}");
    let kept_of_the_cut = seen.keys().filter(|i| (1..=400).contains(*i)).count() as u64;
    let missing = 400 - kept_of_the_cut;
    assert!(
        missing <= dropped && dropped <= missing + 3,
        "{missing} test events missing, {dropped} announced dropped"
    );
    assert!(
        dropped > homelab_agent::outbox::SEND_WINDOW,
        "the drop ({dropped}) must be wider than a send window to test this"
    );
    // The kept ones are the newest, with nothing missing among them.
    let first_kept = *seen.keys().find(|i| **i >= 1).unwrap();
    assert!((first_kept..=401).all(|i| seen.contains_key(&i)));
    lab.assert_emit_order();
    let seqs: Vec<u64> = logged.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "log not in seq order");
    // The notice comes right after the last event acknowledged before the
    // cut, and covers the range from there.
    let notice = notices[0];
    assert_eq!(notice["data"]["first_seq"], first_seq + 1, "{notice}");
    lab.wait_agent_status(|s| s.contains("agent:           connected") && outbox_events(s) == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_during_a_cut_on_up() {
    overflow_during_a_cut(Broker::Up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_during_a_cut_on_mosquitto() {
    overflow_during_a_cut(Broker::Mosquitto).await;
}

impl Lab {
    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Every event handed over is in the agent's outbox.
    async fn wait_spool_drained(&self) {
        let spool = Layout::new(self.agent_root()).agent_spool(&Name::parse(&self.node).unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0) > 0 {
            assert!(Instant::now() < deadline, "spool not drained");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_logged_from(&self, last: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.test_events().contains_key(&last) {
            assert!(
                Instant::now() < deadline,
                "event {last} never arrived; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the retained watermark on `homelab/acks/<node>`, read
    /// with mosquitto_sub, reaches `seq`.
    async fn wait_ack(&self, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sub = Command::new("mosquitto_sub")
                .args([
                    "-p",
                    &self.broker_port.to_string(),
                    "-t",
                    &format!("homelab/acks/{}", self.node),
                    "-C",
                    "1",
                    "-W",
                    "2",
                ])
                .output();
            if let Ok(out) = sub {
                let got: u64 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if got >= seq {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "watermark did not reach {seq}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Lab {
    /// How many times the agent has logged a CONNACK.
    fn agent_connects(&self) -> usize {
        std::fs::read_to_string(self.path("agent.log"))
            .unwrap_or_default()
            .matches("mqtt connected")
            .count()
    }
}

/// The sequence: the broker and the observer die; the broker is
/// back at once, the observer only `delay` after the agent reconnected,
/// while the node emits about 2 events a second throughout (70 s at
/// least). Events the agent resent while nobody listened must not be
/// given up: the observer never skips them, and its watermark repeated on
/// resubscribing makes the agent send them again.
async fn observer_back_after_agent(kind: Broker, delay: Duration) {
    let Some(mut lab) = Lab::start(kind, &[]).await else {
        return;
    };
    let started = Instant::now();
    for _ in 0..10 {
        lab.emit(1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    until(&lab, 10).await;
    let connects = lab.agent_connects();
    drop(lab.broker.take());
    drop(lab.observer.take());
    lab.start_broker().await;
    let mut reconnected: Option<Instant> = None;
    let mut observer_at: Option<Instant> = None;
    loop {
        lab.emit(1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if reconnected.is_none() && lab.agent_connects() > connects {
            reconnected = Some(Instant::now());
        }
        if let Some(at) = reconnected {
            if observer_at.is_none() && at.elapsed() >= delay {
                lab.start_observer();
                observer_at = Some(Instant::now());
            }
        }
        let done = observer_at.is_some_and(|at| at.elapsed() >= Duration::from_secs(5));
        if done && started.elapsed() >= Duration::from_secs(70) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the agent never reconnected; logs in {}",
            lab.dir.path().display()
        );
    }
    lab.assert_delivered_exactly_once().await;
    let log = std::fs::read_to_string(lab.path("observer.log")).unwrap();
    assert!(!log.contains("gap"), "the observer skipped events: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_back_1s_after_the_agent() {
    observer_back_after_agent(Broker::Embedded, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_back_3s_after_the_agent() {
    observer_back_after_agent(Broker::Embedded, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_back_3s_after_the_agent_on_mosquitto() {
    observer_back_after_agent(Broker::Mosquitto, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_back_10s_after_the_agent() {
    observer_back_after_agent(Broker::Embedded, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_back_120s_after_the_agent() {
    observer_back_after_agent(Broker::Embedded, Duration::from_secs(120)).await;
}

/// A `tailscale` program on the agent's PATH that prints what the test
/// writes into `status.json` beside it (the shape `tailscale status
/// --json` documents), and exits with the code in `exit`.
struct FakeTailscale(PathBuf);

impl FakeTailscale {
    fn new(dir: &std::path::Path) -> FakeTailscale {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("tailscale");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1 $2\" = \"status --json\" ] || exit 2\ncat '{0}/status.json'\nexit $(cat '{0}/exit' 2>/dev/null || echo 0)\n",
                bin.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeTailscale(bin)
    }

    /// Tailscale `state`, this node `online`, and the peer vps.
    fn set(&self, state: &str, online: bool, vps_online: bool) {
        let status = json!({
            "Version": "1.78.1-t1234", "TUN": true, "BackendState": state,
            "TailscaleIPs": ["100.64.0.1"],
            "Self": {"ID": "s", "HostName": "edge", "DNSName": "edge.tail1234.ts.net.",
                     "TailscaleIPs": ["100.64.0.1"], "Online": online, "Relay": "fra"},
            "Health": [],
            "MagicDNSSuffix": "tail1234.ts.net",
            "Peer": {"nodekey:0001": {
                "ID": "p", "HostName": "vps", "DNSName": "vps.tail1234.ts.net.",
                "TailscaleIPs": ["100.64.0.2"], "Online": vps_online,
                "CurAddr": "", "Relay": "fra", "Active": true, "OS": "linux",
                "LastSeen": "2026-12-06T10:00:00Z", "RxBytes": 1, "TxBytes": 2}},
            "User": {},
        });
        std::fs::write(self.0.join("status.json"), status.to_string()).unwrap();
        let code = if state == "Running" { "0" } else { "1" };
        std::fs::write(self.0.join("exit"), code).unwrap();
    }
}

impl Lab {
    fn uplink_events(&self) -> Vec<(String, String)> {
        self.logged()
            .into_iter()
            .filter(|e| {
                [
                    "tailscale_down",
                    "tailscale_recovered",
                    "peer_unreachable",
                    "peer_recovered",
                ]
                .contains(&e["type"].as_str().unwrap())
            })
            .map(|e| {
                let kind = e["type"].as_str().unwrap().to_string();
                let peer = e["data"]["peer"].as_str().unwrap_or_default().to_string();
                (kind, peer)
            })
            .collect()
    }

    async fn wait_uplink_events(&self, n: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.uplink_events();
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "uplink events: {events:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn incident_ids(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("observer-root/world/incidents.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn page(&self, path: &str) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .get(&format!("http://127.0.0.1:{}{path}", self.http_port))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }
}

/// The uplink watched: Tailscale (a fake one on the agent's PATH, read
/// every second here) and a peer the node needs go down and come back,
/// each said once when it begins and once when it ends; the observer
/// holds them as incidents meanwhile; the agent's status, its `status`
/// command and the node's card show the link's round trip and Tailscale's
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_tailscale_and_a_needed_peer_are_watched() {
    let dir = tempfile::tempdir().unwrap();
    let tailscale = FakeTailscale::new(dir.path());
    tailscale.set("Running", true, true);
    let args = ["--tailscale-peer", "vps", "--tailscale-interval", "1s"];
    let Some(lab) = Lab::start_with(Broker::Up, &args, Some(tailscale.0.clone())).await else {
        return;
    };
    // Watched, and fine: the status says so (and the link has round trips).
    lab.wait_agent_status(|s| {
        s.contains("tailscale:       Running, online; vps relay fra") && s.contains(" ms")
    })
    .await;
    tailscale.set("Running", true, false);
    assert_eq!(
        lab.wait_uplink_events(1).await,
        vec![("peer_unreachable".into(), "vps".into())]
    );
    let peer_incident = format!("peer_unreachable:{}:vps", lab.node);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.incident_ids().contains(&peer_incident) {
        assert!(Instant::now() < deadline, "{:?}", lab.incident_ids());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tailscale.set("Stopped", false, false);
    lab.wait_uplink_events(2).await;
    tailscale.set("Running", true, true);
    let events = lab.wait_uplink_events(4).await;
    assert_eq!(
        events,
        vec![
            ("peer_unreachable".into(), "vps".into()),
            ("tailscale_down".into(), String::new()),
            ("tailscale_recovered".into(), String::new()),
            ("peer_recovered".into(), "vps".into()),
        ]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab
        .incident_ids()
        .iter()
        .any(|i| i.contains("tailscale_down") || i.contains("peer_unreachable"))
    {
        assert!(Instant::now() < deadline, "{:?}", lab.incident_ids());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node's card shows link quality and Tailscale.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = lab.page("/");
        if page.contains("link: ") && page.contains("tailscale: Running, online; vps relay fra") {
            break;
        }
        assert!(Instant::now() < deadline, "the card shows no link: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Said once each: a later event is logged, and nothing more was said.
    let mut lab = lab;
    lab.quiesce().await;
    assert_eq!(lab.uplink_events().len(), 4);
}

/// With every timer at its default (a look every 30 s), a Tailscale that
/// is already stopped when the agent starts is said at the first look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_tailscale_is_said_at_start_with_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let tailscale = FakeTailscale::new(dir.path());
    tailscale.set("Stopped", false, true);
    let Some(lab) = Lab::start_with(Broker::Up, &[], Some(tailscale.0.clone())).await else {
        return;
    };
    let events = lab.wait_uplink_events(1).await;
    assert_eq!(events, vec![("tailscale_down".into(), String::new())]);
    let down = lab
        .logged()
        .into_iter()
        .find(|e| e["type"] == "tailscale_down")
        .unwrap();
    assert_eq!(down["message"], "tailscale is Stopped");
    assert_eq!(down["severity"], "warning");
}
