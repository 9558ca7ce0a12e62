//! Installed as a Compose stack, with the real `docker-compose` (1.29 here,
//! as Debian 12 ships it): the control plane's image and the agent's, built
//! FROM scratch from this build's binaries by `packaging/*-image/build`,
//! started with `packaging/compose/docker-compose.yml` and
//! `packaging/compose/agent/docker-compose.yml`. The stack comes up
//! healthy, `/summary` answers, five agents join over TLS with the tokens
//! `homelab node add` printed, and `down` then `up` keeps every event and
//! action. Prints the images' sizes, the time to healthy and the control
//! plane's memory idle with five nodes. `HOMELAB_PACKAGING_BINARIES=DIR`
//! builds the images from DIR's binaries instead (a release build:
//! `cargo build --release -p homelab -p homelab-agent`, then
//! `HOMELAB_PACKAGING_BINARIES=target/release cargo test -p homelab --test compose`).
//!
//! This machine's Docker engine cannot start a container with a negative
//! `oom_score_adj` ("can't get final child's PID from pipe"), so the test
//! checks the file's `-900` and starts the stack with an override file
//! that sets it to 0.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{free_port, get_ok as get, run};

const T: Duration = Duration::from_secs(60);

/// The fleet of the test: five nodes, as the figure asks.
const NODES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn docker(args: &[&str]) -> (String, String, bool) {
    run(Command::new("docker").args(args))
}

/// A Compose project: its name, its files, its environment.
type Stack = (String, Vec<PathBuf>, Vec<(String, String)>);

/// Everything this test made, removed when it ends (also when it fails).
struct Cleanup {
    stacks: Vec<Stack>,
    images: Vec<String>,
    data: Option<tempfile::TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (project, files, env) in self.stacks.iter().rev() {
            if std::thread::panicking() {
                let (out, err, _) =
                    run(compose(project, files, env).args(["logs", "--tail", "40"]));
                eprintln!("--- {project}:\n{out}{err}");
            }
            let _ = run(compose(project, files, env).args(["down", "-v", "--timeout", "10"]));
        }
        for image in &self.images {
            let _ = docker(&["rmi", "-f", image]);
        }
        if let Some(data) = self.data.take() {
            // Files the container's user wrote: owned by 1000, removable by us.
            let _ = std::fs::remove_dir_all(data.path());
        }
    }
}

fn compose(project: &str, files: &[PathBuf], env: &[(String, String)]) -> Command {
    let mut command = Command::new("docker-compose");
    command.args(["-p", project]);
    for file in files {
        command.arg("-f").arg(file);
    }
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

fn json(port: u16, path: &str) -> Value {
    serde_json::from_str(&get(port, path).unwrap_or_default()).unwrap_or(Value::Null)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !ok() {
        assert!(Instant::now() < deadline, "no {what} within {T:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A stripped copy of a binary of this build (the image's size is then
/// near a release build's code, without the debug sections).
fn stripped(bin: &str, dir: &Path) -> PathBuf {
    let to = dir.join(Path::new(bin).file_name().unwrap());
    std::fs::copy(bin, &to).unwrap();
    assert!(run(Command::new("strip").arg(&to)).2, "strip {bin}");
    to
}

fn image_size(tag: &str) -> f64 {
    let (out, _, _) = docker(&["image", "inspect", "-f", "{{.Size}}", tag]);
    out.trim().parse::<f64>().unwrap_or(0.0) / 1e6
}

#[test]
fn the_control_plane_runs_as_a_compose_stack_and_an_agent_joins() {
    let compose_present = run(Command::new("docker-compose").arg("version")).2;
    let docker_present = docker(&["info"]).2;
    if !(compose_present && docker_present) {
        assert!(
            std::env::var("HOMELAB_REQUIRE_DOCKER").is_err(),
            "docker and docker-compose are needed (CI installs them)"
        );
        eprintln!("\n*** SKIPPED: no docker-compose or Docker engine ***\n");
        return;
    }
    let file = repo_root().join("packaging/compose/docker-compose.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    for line in [
        "oom_score_adj: -900",
        "mem_limit: 512m",
        "restart: unless-stopped",
        "user: \"1000:1000\"",
        "network_mode: host",
    ] {
        assert!(text.contains(line), "the stack's file has {line}");
    }
    let tag = format!("compose{}", std::process::id());
    // Dropped after the cleanup, which needs its override file.
    let work = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup {
        stacks: Vec::new(),
        images: Vec::new(),
        data: None,
    };

    // The images, from this build's binaries.
    let (control_image, agent_image) = (
        format!("homelab-test/homelab:{tag}"),
        format!("homelab-test/agent:{tag}"),
    );
    for (script, bin, image) in [
        (
            "packaging/control-image/build",
            env!("CARGO_BIN_EXE_homelab"),
            &control_image,
        ),
        (
            "packaging/agent-image/build",
            env!("CARGO_BIN_EXE_homelab-agent"),
            &agent_image,
        ),
    ] {
        let bin = match std::env::var_os("HOMELAB_PACKAGING_BINARIES") {
            Some(dir) => stripped(
                &Path::new(&dir)
                    .join(Path::new(bin).file_name().unwrap())
                    .display()
                    .to_string(),
                work.path(),
            ),
            None => stripped(bin, work.path()),
        };
        let (_, err, ok) = run(Command::new(repo_root().join(script)).arg(&bin).arg(image));
        assert!(ok, "{script}: {err}");
        cleanup.images.push(image.clone());
    }

    // The runtime root on the host, owned by the image's user; the fleet's
    // CA and n1's enrolment made by the same binary.
    let data = tempfile::tempdir().unwrap();
    let root = data.path().join("opt-homelab");
    std::fs::create_dir_all(&root).unwrap();
    let repo = data.path().join("repo");
    for (path, text) in [
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  n2: {role: server}\n  n3: {role: server}\n  n4: {role: server}\n  n5: {role: server}\n",
        ),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
        (
            "services/app/service.yaml",
            "description: a service that is not there\n",
        ),
    ] {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let (http, mqtt, mqtts) = (free_port(), free_port(), free_port());
    let homelab = |args: &[&str]| {
        let (out, err, ok) = run(Command::new(env!("CARGO_BIN_EXE_homelab"))
            .arg("--root")
            .arg(&root)
            .args(args));
        assert!(ok, "homelab {args:?}: {err}");
        out
    };
    homelab(&[
        "tls",
        "init",
        "--name",
        "127.0.0.1",
        "--port",
        &mqtts.to_string(),
    ]);
    // Five nodes, each with the token `homelab node add` printed for it.
    let tokens: Vec<(String, String)> = NODES
        .iter()
        .map(|node| {
            let printed = homelab(&["node", "add", node]);
            let token = printed
                .split_whitespace()
                .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
                .expect("the printed command has the token")
                .to_string();
            (node.to_string(), token)
        })
        .collect();
    assert!(
        run(Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(data.path()))
        .2
    );

    // The control plane's stack, with the override this engine needs.
    let override_file = work.path().join("override.yml");
    std::fs::write(
        &override_file,
        "version: \"2.4\"\nservices:\n  homelab:\n    oom_score_adj: 0\n",
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("HOMELAB_IMAGE", control_image.clone()),
        ("HOMELAB_DATA", root.display().to_string()),
        ("HOMELAB_REPO", repo.display().to_string()),
        ("HOMELAB_HTTP_PORT", http.to_string()),
        ("HOMELAB_MQTT_PORT", mqtt.to_string()),
        ("HOMELAB_MQTTS", format!("127.0.0.1:{mqtts}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let control = (
        format!("homelab-test-{tag}"),
        vec![file.clone(), override_file],
        env,
    );
    cleanup.stacks.push(control.clone());
    cleanup.data = Some(data);
    let up = |stack: &Stack| {
        let started = Instant::now();
        let (_, err, ok) = run(compose(&stack.0, &stack.1, &stack.2).args(["up", "-d"]));
        assert!(ok, "docker-compose up: {err}");
        started
    };
    let health = |project: &str| {
        let name = format!("{project}_homelab_1");
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &name])
            .0
            .trim()
            .to_string()
    };
    let started = up(&control);
    wait_for("the page answering", || get(http, "/healthz").is_some());
    let to_answer = started.elapsed();
    wait_for("a healthy control plane", || {
        health(&control.0) == "healthy"
    });
    let to_healthy = started.elapsed();
    let summary = json(http, "/summary");
    assert!(summary["nodes"]["total"].is_number(), "{summary}");

    // An agent's stack per node joins over TLS.
    for (node, token) in &tokens {
        let agent_env: Vec<(String, String)> = [
            ("HOMELAB_AGENT_IMAGE", agent_image.clone()),
            ("HOMELAB_NODE", node.clone()),
            ("HOMELAB_BROKER", format!("mqtts://127.0.0.1:{mqtts}")),
            ("HOMELAB_ENROLL", token.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let agent = (
            format!("homelab-test-{tag}-{node}"),
            vec![repo_root().join("packaging/compose/agent/docker-compose.yml")],
            agent_env,
        );
        cleanup.stacks.push(agent.clone());
        up(&agent);
    }
    wait_for("the five nodes online through their agents", || {
        json(http, "/api/nodes").as_array().is_some_and(|nodes| {
            NODES.iter().all(|node| {
                nodes
                    .iter()
                    .any(|n| n["node"] == *node && n["status"] == "online")
            })
        })
    });
    // app is desired and missing: the supervisor proposes its redeploy.
    wait_for("a pending action", || {
        json(http, "/summary")["actions"]["pending"] == 1
    });
    let events = json(http, "/api/events?node=n1&limit=1000")
        .as_array()
        .map_or(0, |e| e.len());
    let actions = json(http, "/api/actions?state=all");
    assert!(events > 0);

    // The control plane's memory, idle with its five nodes.
    std::thread::sleep(Duration::from_secs(2));
    let pid = docker(&[
        "inspect",
        "-f",
        "{{.State.Pid}}",
        &format!("{}_homelab_1", control.0),
    ])
    .0;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
    let kb = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (rss_kb, anon_kb, file_kb) = (kb("VmRSS:"), kb("RssAnon:"), kb("RssFile:"));
    assert!(rss_kb > 0, "the control plane's RSS");

    // down and up: everything is still there.
    let (_, err, ok) =
        run(compose(&control.0, &control.1, &control.2).args(["down", "--timeout", "20"]));
    assert!(ok, "docker-compose down: {err}");
    assert!(get(http, "/healthz").is_none(), "down");
    up(&control);
    wait_for("the page answering again", || {
        get(http, "/healthz").is_some()
    });
    let after = json(http, "/api/events?node=n1&limit=1000")
        .as_array()
        .map_or(0, |e| e.len());
    assert!(
        after >= events,
        "{after} events after down and up, {events} before"
    );
    assert_eq!(
        json(http, "/api/actions?state=all"),
        actions,
        "every action kept"
    );

    eprintln!(
        "\n== compose ==\ncontrol plane image {:.1} MB, agent image {:.1} MB ({}, stripped)\ndocker-compose up -d to /healthz answering: {:.1} s; to Docker's \"healthy\" (its first check is one 30 s interval in): {:.1} s\ncontrol plane's RSS idle with five nodes: {:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed: the binary's pages)\n",
        image_size(&control_image),
        image_size(&agent_image),
        match std::env::var_os("HOMELAB_PACKAGING_BINARIES") {
            Some(dir) => format!("binaries from {}", Path::new(&dir).display()),
            None => "this debug build".to_string(),
        },
        to_answer.as_secs_f64(),
        to_healthy.as_secs_f64(),
        rss_kb as f64 / 1024.0,
        anon_kb as f64 / 1024.0,
        file_kb as f64 / 1024.0
    );
}
