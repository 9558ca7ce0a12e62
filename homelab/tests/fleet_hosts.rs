//! The fleet across hosts, packaged as a user installs it: the control
//! plane started by the command line of `packaging/systemd/homelab.service`,
//! two agents in the image `packaging/agent-image` builds from the project's
//! binary, started with the command line of
//! `packaging/systemd/homelab-agent.service`, each on its own host of a
//! private Docker network this test creates, with the Docker socket mounted.
//! They enroll with the tokens `homelab node add` printed and connect over
//! TLS to the control host's address on that network. Then the loop: a
//! container of one node stops → action → approval → restart on that node
//! → completed.
//!
//! The two nodes share this machine's Docker engine; each agent sees only
//! the containers labelled for it (`--docker-label homelab.node=<node>`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BUSYBOX: &str = "homelab-test/busybox:latest";
const TOKEN: &str = "fleet-test-operator-token";

/// Everything this test made, removed when it ends (also when it fails).
struct Cleanup {
    containers: Vec<String>,
    network: Option<String>,
    image: Option<String>,
    control: Option<Child>,
    root: Option<tempfile::TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.control.take() {
            // SIGTERM, as systemd stops it.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in &self.containers {
                if name.ends_with("-agent") {
                    let out = docker(&["logs", "--tail", "40", name]);
                    eprintln!("--- {name}:\n{}{}", out.0, out.1);
                }
            }
            if let Some(root) = self.root.take() {
                eprintln!("control plane's root kept in {}", root.keep().display());
            }
        }
        for name in &self.containers {
            let _ = docker(&["rm", "-f", "-v", name]);
        }
        if let Some(network) = &self.network {
            let _ = docker(&["network", "rm", network]);
        }
        if let Some(image) = &self.image {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

/// `docker args…`: (stdout, stderr, success).
fn docker(args: &[&str]) -> (String, String, bool) {
    match Command::new("docker").args(args).output() {
        Ok(out) => (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        ),
        Err(error) => (String::new(), error.to_string(), false),
    }
}

fn docker_ok(args: &[&str]) -> String {
    let (out, err, ok) = docker(args);
    assert!(ok, "docker {args:?} failed: {err}");
    out.trim().to_string()
}

/// Whether this machine has Docker and the test image; under
/// `HOMELAB_REQUIRE_DOCKER=1` (CI) it must.
fn docker_present() -> bool {
    let found = docker(&["image", "inspect", BUSYBOX]).2;
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A systemd unit's `Environment=` defaults and its `ExecStart=` words.
struct Unit {
    env: BTreeMap<String, String>,
    exec: Vec<String>,
}

fn read_unit(name: &str) -> Unit {
    let path = repo_root().join("packaging/systemd").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut env = BTreeMap::new();
    let mut exec = Vec::new();
    for line in text.lines() {
        if let Some(pair) = line.strip_prefix("Environment=") {
            let (key, value) = pair.split_once('=').unwrap();
            env.insert(key.to_string(), value.to_string());
        } else if let Some(command) = line.strip_prefix("ExecStart=") {
            exec = command.split_whitespace().map(str::to_string).collect();
        }
    }
    assert!(!exec.is_empty(), "{} has no ExecStart", path.display());
    Unit { env, exec }
}

impl Unit {
    /// The command line systemd runs: `${VAR}` is one word, `$VAR` splits
    /// on whitespace (and is no word when empty).
    fn command(&self, env: &BTreeMap<String, String>) -> Vec<String> {
        let value = |key: &str| -> String {
            env.get(key)
                .or_else(|| self.env.get(key))
                .unwrap_or_else(|| panic!("{key} is not set"))
                .clone()
        };
        let mut words = Vec::new();
        for word in &self.exec {
            if let Some(key) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                words.push(value(key));
            } else if let Some(key) = word.strip_prefix('$') {
                words.extend(value(key).split_whitespace().map(str::to_string));
            } else {
                assert!(!word.contains('$'), "a variable inside a word: {word}");
                words.push(word.clone());
            }
        }
        words
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (status, body) = http(addr, "GET", path, None);
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A port free on `ip` now.
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Docker socket on this machine, to mount into the agents.
fn docker_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string())
}

fn service_status(addr: SocketAddr, node: &str, service: &str) -> Option<String> {
    let services = get_json(addr, "/api/services")?;
    services
        .as_array()?
        .iter()
        .find(|s| s["node"] == node && s["service"] == service)
        .and_then(|s| s["status"].as_str().map(str::to_string))
}

fn action_state(addr: SocketAddr, id: &str) -> Option<String> {
    let action = get_json(addr, &format!("/api/actions/{id}"))?;
    action["state"].as_str().map(str::to_string)
}

#[test]
fn two_agents_in_containers_join_over_tls_and_the_loop_runs_across_hosts() {
    if !docker_present() {
        return;
    }
    let tag = format!("fleet{}", std::process::id());
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        network: None,
        image: None,
        control: None,
        root: None,
    };

    // The agent's image, from the binary this build made.
    let image = format!("homelab-test/agent:{tag}");
    let built = Command::new(repo_root().join("packaging/agent-image/build"))
        .arg(env!("CARGO_BIN_EXE_homelab-agent"))
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "agent image: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    cleanup.image = Some(image.clone());

    // A private network; the control host is its gateway, the host side of
    // the bridge.
    let network = format!("homelab-{tag}");
    docker_ok(&["network", "create", &network]);
    cleanup.network = Some(network.clone());
    let gateway = docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &network,
    ]);
    assert!(
        gateway.parse::<std::net::Ipv4Addr>().is_ok(),
        "gateway {gateway:?}"
    );

    // The desired state: web on piha, cache on edge.
    let repo = tempfile::tempdir().unwrap();
    for (path, text) in [
        (
            "inventory/topology.yaml",
            "nodes:\n  piha: {role: home}\n  edge: {role: edge}\n",
        ),
        (
            "hosts/piha/services.yaml",
            "services:\n  web: {grace_period: 0s}\n",
        ),
        (
            "hosts/edge/services.yaml",
            "services:\n  cache: {grace_period: 0s}\n",
        ),
        ("services/web/service.yaml", "description: a web server\n"),
        ("services/cache/service.yaml", "description: a cache\n"),
    ] {
        let path = repo.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    // The services' containers, each labelled for its node.
    for (node, service) in [("piha", "web"), ("edge", "cache")] {
        let name = format!("homelab-{tag}-{service}");
        cleanup.containers.push(name.clone());
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network,
            "--label",
            &format!("com.docker.compose.service={service}"),
            "--label",
            &format!("homelab.node={node}"),
            BUSYBOX,
            "sleep",
            "3600",
        ]);
    }

    // The control host: identities, then `homelab up` as its unit runs it.
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_str().unwrap().to_string();
    cleanup.root = Some(root);
    let port = free_port(&gateway);
    let homelab = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_homelab"))
            .arg("--root")
            .arg(&root_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "homelab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    homelab(&[
        "tls",
        "init",
        "--name",
        &gateway,
        "--port",
        &port.to_string(),
    ]);
    let mut joins = BTreeMap::new();
    for node in ["piha", "edge"] {
        let printed = homelab(&["node", "add", node]);
        let words: Vec<&str> = printed.split_whitespace().collect();
        let token = words
            .iter()
            .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
            .expect("the printed command has the token")
            .to_string();
        let broker = words
            .windows(2)
            .find(|w| w[0] == "--broker")
            .map(|w| w[1].to_string())
            .expect("the printed command names the broker");
        assert_eq!(broker, format!("mqtts://{gateway}:{port}"));
        joins.insert(node, (token, broker));
    }

    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let unit = read_unit("homelab.service");
    let env = BTreeMap::from([
        ("HOMELAB_ROOT".to_string(), root_path.clone()),
        (
            "HOMELAB_REPO".to_string(),
            repo.path().to_str().unwrap().to_string(),
        ),
        ("HOMELAB_MQTTS".to_string(), format!("{gateway}:{port}")),
        ("HOMELAB_HTTP".to_string(), http_addr.to_string()),
        (
            "HOMELAB_UP_ARGS".to_string(),
            format!(
                "--no-agent --grace-period 0s --mqtt 127.0.0.1:{}",
                free_port("127.0.0.1")
            ),
        ),
    ]);
    let command = unit.command(&env);
    assert_eq!(command[0], "/usr/local/bin/homelab");
    let log = std::fs::File::create(Path::new(&root_path).join("up.log")).unwrap();
    cleanup.control = Some(
        Command::new(env!("CARGO_BIN_EXE_homelab"))
            .args(&command[1..])
            .env("HOMELAB_UI_TOKEN", TOKEN)
            .env("RUST_LOG", "info,rumqttd=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("the UI answers", Duration::from_secs(30), || {
        TcpStream::connect(http_addr).is_ok() && http(http_addr, "GET", "/healthz", None).0 == 200
    });

    // Each agent on its own host of the network, as its unit runs it.
    let unit = read_unit("homelab-agent.service");
    let socket = docker_socket();
    for (node, (token, broker)) in &joins {
        let env = BTreeMap::from([
            ("HOMELAB_ROOT".to_string(), "/var/lib/homelab".to_string()),
            ("HOMELAB_NODE".to_string(), node.to_string()),
            ("HOMELAB_BROKER".to_string(), broker.clone()),
            (
                "HOMELAB_AGENT_ARGS".to_string(),
                format!("--docker-label homelab.node={node}"),
            ),
        ]);
        let command = unit.command(&env);
        assert_eq!(command[0], "/usr/local/bin/homelab-agent");
        let name = format!("homelab-{tag}-{node}-agent");
        cleanup.containers.push(name.clone());
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            node,
            "--network",
            &network,
            "-v",
            &format!("{socket}:/var/run/docker.sock"),
            "-e",
            &format!("HOMELAB_ENROLL={token}"),
            "-e",
            "RUST_LOG=info",
            &image,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(command[1..].iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
    }

    // Both nodes report over TLS, signed with their own keys: their
    // services are known, each on its own node only.
    wait_for(
        "both nodes' services running",
        Duration::from_secs(60),
        || {
            service_status(http_addr, "piha", "web").as_deref() == Some("running")
                && service_status(http_addr, "edge", "cache").as_deref() == Some("running")
        },
    );
    assert_eq!(service_status(http_addr, "edge", "web"), None);
    assert_eq!(service_status(http_addr, "piha", "cache"), None);
    let nodes = get_json(http_addr, "/api/nodes").unwrap();
    for node in ["piha", "edge"] {
        let state = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap_or_else(|| panic!("{node} in {nodes}"));
        assert_eq!(state["status"], "online", "{state}");
    }
    // The agent in its image answers `status` as on any host.
    let status = docker_ok(&[
        "exec",
        &format!("homelab-{tag}-piha-agent"),
        "/usr/local/bin/homelab-agent",
        "status",
        "--node",
        "piha",
    ]);
    assert!(status.contains("connected"), "{status}");

    // The loop across hosts: web stops on piha…
    let web = format!("homelab-{tag}-web");
    docker_ok(&["stop", "-t", "0", &web]);
    let id = "container-restart-piha-web";
    wait_for("the restart proposed", Duration::from_secs(60), || {
        action_state(http_addr, id).as_deref() == Some("pending")
    });
    // …approved by the operator over HTTP…
    let (status, body) = http(
        http_addr,
        "POST",
        &format!("/api/actions/{id}/approve"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    // …carried out by piha's agent, and completed.
    wait_for("the restart completed", Duration::from_secs(90), || {
        matches!(
            action_state(http_addr, id).as_deref(),
            Some("completed" | "failed")
        )
    });
    let action = get_json(http_addr, &format!("/api/actions/{id}")).unwrap();
    assert_eq!(action["state"], "completed", "{action}");
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Running}}", &web]),
        "true"
    );
    wait_for("web running again", Duration::from_secs(60), || {
        service_status(http_addr, "piha", "web").as_deref() == Some("running")
    });
    // The outcome came from piha's agent, in piha's event log.
    let events = get_json(http_addr, "/api/events?node=piha&limit=1000").unwrap();
    let outcome = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "remediation_completed" && e["data"]["action_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no remediation_completed for {id} in {events}"));
    assert_eq!(outcome["source"], "node-agent", "{outcome}");
    // edge was not touched.
    assert_eq!(
        service_status(http_addr, "edge", "cache").as_deref(),
        Some("running")
    );
    // No secret in any log: not the operator token (used above), not an
    // enrollment token or the passwords in it.
    let mut logs = std::fs::read_to_string(Path::new(&root_path).join("up.log")).unwrap();
    for node in joins.keys() {
        let (out, err, _) = docker(&["logs", &format!("homelab-{tag}-{node}-agent")]);
        logs += &out;
        logs += &err;
    }
    assert!(!logs.contains(TOKEN), "the operator token is logged");
    for (token, _) in joins.values() {
        let secrets = homelab_core::identity::AgentSecrets::from_token(token).unwrap();
        assert!(
            !logs.contains(token.as_str()) && !logs.contains(&secrets.password),
            "a node's secret is logged"
        );
    }

    // Removed, edge's agent is cut off and says why and what to do, once,
    // instead of retrying in silence.
    let edge_agent = format!("homelab-{tag}-edge-agent");
    let removed = Instant::now();
    homelab(&["node", "remove", "edge"]);
    let refused = "the broker refused this client's login: was node edge removed from the \
                   fleet, or its password rotated? enrol it again: run `homelab node add edge`";
    let agent_log = || {
        let (out, err, _) = docker(&["logs", &edge_agent]);
        out + &err
    };
    wait_for(
        "edge's agent says it was refused",
        Duration::from_secs(30),
        || agent_log().contains(refused),
    );
    eprintln!(
        "edge's agent refused {:?} after its removal",
        removed.elapsed()
    );
    wait_for("edge offline on the page", Duration::from_secs(30), || {
        get_json(http_addr, "/api/nodes").is_some_and(|nodes| {
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["node"] == "edge" && n["status"] != "online")
        })
    });
    assert_eq!(
        agent_log().matches(refused).count(),
        1,
        "said once, not on every attempt:\n{}",
        agent_log()
    );
    // piha, still enrolled, is not affected.
    assert_eq!(
        service_status(http_addr, "piha", "web").as_deref(),
        Some("running")
    );
}
