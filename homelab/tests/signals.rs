//! `homelab up` as a user runs it: the real binary, stopped by SIGTERM or
//! ctrl-c (SIGINT), exits cleanly and promptly.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::healthy;

/// Ports from a counter below the ephemeral range, so the two tests here
/// (run at once) never pick the same port for their child processes.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 30_000 + (std::process::id() % 200) as u16 * 10;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % 2_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn stops_cleanly_on(signal: i32) {
    let root = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("inventory")).unwrap();
    std::fs::write(
        repo.path().join("inventory/topology.yaml"),
        "nodes:\n  sig: {}\n",
    )
    .unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let mut child = start_up(
        root.path(),
        repo.path(),
        "sig",
        (mqtt, http),
        Stdio::piped(),
    );
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("homelab up did not stop within 20 s of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit status {status}\n{logs}");
    assert!(logs.contains("homelab stopped"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(!healthy(http), "nothing listens after exit");
}

#[test]
fn up_stops_cleanly_on_sigterm() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn up_stops_cleanly_on_ctrl_c() {
    stops_cleanly_on(libc::SIGINT);
}

/// Starts `homelab up` (its local agent named `node`) on `root` and waits
/// until it answers on `http`.
fn start_up(
    root: &std::path::Path,
    repo: &std::path::Path,
    node: &str,
    (mqtt, http): (u16, u16),
    stderr: Stdio,
) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["up", "--node", node])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--root")
        .arg(root)
        .arg("--repo")
        .arg(repo)
        .env(
            "RUST_LOG",
            "info,homelab_mqtt=debug,homelab_observer=debug,rumqttd=off",
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start homelab up");
    let started = Instant::now();
    while !healthy(http) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("homelab up exited early: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "homelab up did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Defect found from outside: restarting `homelab up` on a root with much
/// retained state left the observer subscribed to nothing (its subscribe
/// was dropped by a request queue full of republished state). Each of
/// several restarts on a root with 400 nodes and 2,000 services must log
/// the next event.
#[test]
fn every_restart_logs_the_next_event() {
    // On tmpfs, as reported: no fsync delays the republishing of retained
    // state, so it fills the request queue before the CONNACK arrives.
    let root = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    };
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("inventory")).unwrap();
    std::fs::write(
        repo.path().join("inventory/topology.yaml"),
        "nodes:\n  restarter: {}\n",
    )
    .unwrap();
    // World state from the log: 400 nodes with 5 services each.
    let now = chrono::Utc::now();
    for n in 0..400 {
        let node = format!("node-{n}");
        let containers: Vec<serde_json::Value> = (0..5)
            .map(|s| {
                serde_json::json!({"id": format!("c{s}"), "name": format!("svc-{s}"),
                    "service": format!("svc-{s}"), "image": "i", "state": "running", "status": "Up"})
            })
            .collect();
        let event = serde_json::json!({"v": 1, "id": format!("seed-{n}"),
            "ts": homelab_core::time::format(&now), "node": node, "seq": 1,
            "source": "node-agent", "type": "node_snapshot", "severity": "info",
            "message": "", "data": {"containers": containers}});
        let path = homelab_core::Layout::new(root.path())
            .event_log(now.date_naive(), &homelab_core::Name::parse(&node).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{event}\n")).unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let logged = |message: &str| {
        let path = homelab_core::Layout::new(root.path()).event_log(
            chrono::Utc::now().date_naive(),
            &homelab_core::Name::parse("restarter").unwrap(),
        );
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(message)
    };
    for round in 0..5 {
        let (mqtt, http) = (free_port(), free_port());
        let log_path = logs.path().join(format!("up-{round}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = start_up(
            root.path(),
            repo.path(),
            "restarter",
            (mqtt, http),
            Stdio::from(log),
        );
        let message = format!("after restart {round}");
        let out = Command::new(env!("CARGO_BIN_EXE_homelab"))
            .args([
                "emit",
                "--node",
                "restarter",
                "--type",
                "test_event",
                "--message",
                &message,
            ])
            .arg("--root")
            .arg(root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started = Instant::now();
        while !logged(&message) {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                eprintln!("root kept in {}", root.keep().display());
                panic!("restart {round}: the event never reached the log; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let stopping = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if stopping.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("restart {round}: did not stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
