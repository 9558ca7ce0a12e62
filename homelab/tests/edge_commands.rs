//! An approval made while an edge node's agent cannot act is carried out
//! once it can, exactly once: the agent is stopped, frozen and killed, or
//! up without its Docker engine when the command arrives. The control
//! plane is `homelab up --node ctl…` (a local agent that is not given any
//! `--docker-label`), the edge node `homelab agent --docker-label
//! homelab.node=<node>` on the same engine, both real processes with every
//! timer at its default; the container is real, and the approval goes
//! through `homelab actions approve` as an operator's would.
//!
//! Needs Docker and `homelab-test/busybox:latest` (`.ci/test-image`);
//! skips loudly without them unless `HOMELAB_REQUIRE_DOCKER=1` (CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{free_port, Proc};

const BUSYBOX: &str = "homelab-test/busybox:latest";
const TOKEN: &str = "edge-test-operator-token";
const T: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> (String, bool) {
    match Command::new("docker").args(args).output() {
        Ok(out) => (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            out.status.success(),
        ),
        Err(_) => (String::new(), false),
    }
}

fn docker_present() -> bool {
    let found = docker(&["image", "inspect", BUSYBOX]).1;
    if !found {
        let required = std::env::var("HOMELAB_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "HOMELAB_REQUIRE_DOCKER=1 but Docker or {BUSYBOX} is missing (run .ci/test-image)"
        );
        eprintln!("\n*** SKIPPED: no Docker engine or no image {BUSYBOX} ***\n");
    }
    found
}

/// A Unix socket the agent takes for its Docker engine, passed through to
/// the real one while it is up: the test turns the engine off and on for
/// this agent alone.
struct DockerDoor {
    path: PathBuf,
    open: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl DockerDoor {
    fn new(dir: &Path) -> DockerDoor {
        DockerDoor {
            path: dir.join("docker.sock"),
            open: Arc::default(),
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn open(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        *self.open.lock().unwrap() = Some(task.abort_handle());
    }

    /// Closes it: open connections (the event stream) end, new ones are
    /// refused.
    fn close(&self) {
        if let Some(task) = self.open.lock().unwrap().take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerDoor {
    fn drop(&mut self) {
        self.close();
    }
}

struct Site {
    dir: tempfile::TempDir,
    ctl: String,
    node: String,
    service: String,
    container: String,
    mqtt: u16,
    http: u16,
    up: Option<Proc>,
    agent: Option<Proc>,
    door: Option<DockerDoor>,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

impl Site {
    /// The control plane, a running container of `service` labelled for
    /// the edge node, and its agent (`through_door`: its Docker engine is
    /// a [`DockerDoor`]), until the world shows the service running.
    async fn start(through_door: bool) -> Option<Site> {
        if !docker_present() {
            return None;
        }
        let tag = homelab_core::event::new_id().to_lowercase();
        let tag = &tag[tag.len() - 6..];
        let (ctl, node, service) = (
            format!("ctl{tag}"),
            format!("edge{tag}"),
            format!("app{tag}"),
        );
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        for (path, text) in [
            (
                "inventory/topology.yaml".to_string(),
                format!("nodes:\n  {ctl}: {{role: server}}\n  {node}: {{role: edge-lte, offline_first: true}}\n"),
            ),
            (
                format!("hosts/{node}/services.yaml"),
                format!("services:\n  {service}: {{grace_period: 0s}}\n"),
            ),
            (format!("services/{service}/service.yaml"), String::new()),
        ] {
            let path = repo.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let mut site = Site {
            container: format!("homelab-test-{node}-{service}"),
            dir,
            ctl,
            node,
            service,
            mqtt: free_port(),
            http: free_port(),
            up: None,
            agent: None,
            door: None,
        };
        if through_door {
            let door = DockerDoor::new(site.dir.path());
            door.open();
            site.door = Some(door);
        }
        let (_, ok) = docker(&[
            "run",
            "-d",
            "--name",
            &site.container,
            "--label",
            &format!("homelab.node={}", site.node),
            "--label",
            &format!("com.docker.compose.service={}", site.service),
            BUSYBOX,
            "sleep",
            "3600",
        ]);
        assert!(ok, "docker run");
        site.start_up();
        site.start_agent();
        site.wait_service("running").await;
        Some(site)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&self, log: &str, args: &[String]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(log))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_homelab"))
            .args(args)
            .env("RUST_LOG", "info,rumqttd=off")
            .env("HOMELAB_UI_TOKEN", TOKEN)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn start_up(&mut self) {
        let args: Vec<String> = [
            "up",
            "--node",
            &self.ctl,
            "--repo",
            &self.path("repo").display().to_string(),
            "--root",
            &self.path("root").display().to_string(),
            "--mqtt",
            &format!("127.0.0.1:{}", self.mqtt),
            "--http",
            &format!("127.0.0.1:{}", self.http),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.up = Some(self.spawn("up.log", &args));
    }

    fn start_agent(&mut self) {
        let mut args: Vec<String> = [
            "agent",
            "--node",
            &self.node,
            "--docker-label",
            &format!("homelab.node={}", self.node),
            "--broker",
            &format!("127.0.0.1:{}", self.mqtt),
            "--root",
            &self.path("agent-root").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(door) = &self.door {
            args.extend(["--docker-host".to_string(), door.host()]);
        }
        self.agent = Some(self.spawn("agent.log", &args));
    }

    fn get(&self, path: &str) -> Option<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent
            .get(&format!("http://127.0.0.1:{}{path}", self.http))
            .call()
            .ok()?;
        serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
    }

    fn service_status(&self, node: &str) -> Option<String> {
        self.get("/api/services")?
            .as_array()?
            .iter()
            .find(|s| s["node"] == node && s["service"] == self.service.as_str())
            .map(|s| s["status"].as_str().unwrap_or_default().to_string())
    }

    async fn wait_service(&self, status: &str) {
        self.wait(&format!("{} {status}", self.service), || {
            self.service_status(&self.node).as_deref() == Some(status)
        })
        .await;
    }

    async fn wait(&self, what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + T;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {T:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn action_id(&self) -> String {
        format!("container-restart-{}-{}", self.node, self.service)
    }

    fn action_in(&self, state: &str) -> bool {
        self.path("root/actions")
            .join(state)
            .join(format!("{}.json", self.action_id()))
            .exists()
    }

    /// The container stops; the supervisor proposes its restart.
    async fn stop_container(&self) {
        assert!(docker(&["stop", "-t", "1", &self.container]).1);
        self.wait("pending restart", || self.action_in("pending"))
            .await;
    }

    /// `homelab actions approve`, as an operator types it.
    fn approve(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_homelab"))
            .args([
                "actions",
                "approve",
                &self.action_id(),
                "--note",
                "edge test",
            ])
            .args(["--url", &format!("http://127.0.0.1:{}", self.http)])
            .args(["--token", TOKEN])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "approve: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The executor claimed it and sent its command (recorded in the file).
    async fn wait_sent(&self) {
        self.wait("command sent", || {
            let path = self
                .path("root/actions/running")
                .join(format!("{}.json", self.action_id()));
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|a| !a["command"].is_null())
        })
        .await;
    }

    fn container_running(&self) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}}", &self.container]).0 == "true"
    }

    /// The edge node's events in the control plane's log.
    fn logged(&self, node: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let Ok(days) = std::fs::read_dir(self.path("root/events")) else {
            return out;
        };
        let mut days: Vec<PathBuf> = days.map(|d| d.unwrap().path()).collect();
        days.sort();
        for day in days {
            let text =
                std::fs::read_to_string(day.join(node).join("events.jsonl")).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        out
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// The action completed, the container runs, and the agent carried it
    /// out exactly once.
    async fn assert_restarted_once(&self) {
        self.wait("action completed", || self.action_in("completed"))
            .await;
        let path = self
            .path("root/actions/completed")
            .join(format!("{}.json", self.action_id()));
        let action: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(action["result"]["ok"], true, "{action}");
        assert!(self.container_running(), "the container runs again");
        self.wait_service("running").await;
        let id = self.action_id();
        let about = |kind: &str| {
            self.logged(&self.node)
                .iter()
                .filter(|e| e["type"] == kind && e["data"]["action_id"] == id.as_str())
                .count()
        };
        assert_eq!(about("remediation_started"), 1, "started once");
        assert_eq!(about("remediation_completed"), 1, "completed once");
        assert_eq!(about("remediation_failed"), 0, "never failed");
    }
}

/// The reproduction: the container stops, its agent is stopped,
/// the restart is approved, the agent starts again. The command waits in
/// the broker's session for the agent, arrives before its Docker
/// connection is up, waits for Docker and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_while_the_agent_is_down_runs_when_it_is_back() {
    let Some(mut site) = Site::start(false).await else {
        return;
    };
    // `up`'s own agent has no --docker-label and shares the engine: it
    // leaves the container labelled for the edge node alone. (A positive
    // sign first: its own snapshot is in the log.)
    let ctl = site.ctl.clone();
    site.wait("ctl's snapshot", || {
        site.logged(&ctl)
            .iter()
            .any(|e| e["type"] == "node_snapshot")
    })
    .await;
    assert_eq!(
        site.service_status(&ctl),
        None,
        "ctl claims the edge's container"
    );
    for snapshot in site
        .logged(&ctl)
        .iter()
        .filter(|e| e["type"] == "node_snapshot")
    {
        let names: Vec<&str> = snapshot["data"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(!names.contains(&site.container.as_str()), "{names:?}");
    }

    site.stop_container().await;
    assert!(site.agent.take().unwrap().stop().success());
    site.approve();
    site.wait_sent().await;
    site.start_agent();
    site.assert_restarted_once().await;
}

/// A command in flight when the agent is frozen (SIGSTOP) and then killed:
/// the broker keeps it for the session, the next agent carries it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_a_frozen_agent_that_is_killed_runs_after_the_restart() {
    let Some(mut site) = Site::start(false).await else {
        return;
    };
    site.stop_container().await;
    site.agent.as_ref().unwrap().signal(libc::SIGSTOP);
    site.approve();
    site.wait_sent().await;
    drop(site.agent.take()); // SIGKILL
    site.start_agent();
    site.assert_restarted_once().await;
}

/// The command arrives while the agent is up but its Docker engine is
/// not: it waits (the agent says so) and runs when Docker answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_waits_for_docker_and_then_runs() {
    let Some(mut site) = Site::start(true).await else {
        return;
    };
    site.stop_container().await;
    assert!(site.agent.take().unwrap().stop().success());
    site.door.as_ref().unwrap().close();
    site.approve();
    site.wait_sent().await;
    site.start_agent();
    site.wait("the agent waits for Docker", || {
        site.agent_log()
            .contains("command waits for the docker engine")
    })
    .await;
    assert!(!site.container_running());
    site.door.as_ref().unwrap().open();
    site.assert_restarted_once().await;
}
