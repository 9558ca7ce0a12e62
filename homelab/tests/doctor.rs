//! `homelab doctor` as a user runs it: against a running `homelab up`
//! everything it can check is good (the broker takes the login, the clock
//! agrees, the repo is valid, a test notification arrives), exit 0; a
//! secret readable by others and a broker that is not there fail with
//! their fix, exit 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, healthy, Proc};

fn doctor(root: &Path, args: &[&str]) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .arg("--root")
        .arg(root)
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        stderr.is_empty() || status.success() || !text.is_empty(),
        "{}",
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

/// A webhook receiver: the first request's body.
fn receiver() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
    });
    (port, rx)
}

#[test]
fn a_healthy_control_host_passes_and_says_so() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root-v0/repo");
    let root = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let up = Proc(
        Command::new(env!("CARGO_BIN_EXE_homelab"))
            .args(["up", "--no-agent"])
            .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .arg("--root")
            .arg(root.path())
            .arg("--repo")
            .arg(&fixture)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !healthy(http) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "homelab up did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (hook, received) = receiver();
    std::fs::write(
        root.path().join("config/notify.yaml"),
        format!("webhook: {{url: http://127.0.0.1:{hook}/hook}}\n"),
    )
    .unwrap();
    let (ok, text) = doctor(
        root.path(),
        &[
            "--broker",
            &format!("127.0.0.1:{mqtt}"),
            "--url",
            &format!("http://127.0.0.1:{http}"),
            "--repo",
            fixture.to_str().unwrap(),
            "--send-test",
        ],
    );
    let line = |check: &str| {
        text.lines()
            .find(|l| l[5..].starts_with(check))
            .unwrap_or_else(|| panic!("no {check} line: {text}"))
            .to_string()
    };
    assert!(
        line("broker").starts_with("ok   broker   127.0.0.1:")
            && line("broker").ends_with("accepts our login without a login (open mode)"),
        "{text}"
    );
    assert!(
        line("clock").starts_with("ok   clock    this clock is 0 s")
            || line("clock").contains(" 1 s "),
        "{text}"
    );
    assert!(
        line("repo").starts_with("ok   repo") && line("repo").ends_with("is valid: 1 nodes"),
        "{text}"
    );
    assert!(line("disk").contains("GiB free of"), "{text}");
    assert!(text.contains("test message sent to webhook"), "{text}");
    let body = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(body.contains("homelab: a test message"), "{body}");
    assert!(
        line("secrets").starts_with("ok   secrets"),
        "the token is 0600: {text}"
    );
    // Docker: CI has it; the line says which.
    if std::env::var("HOMELAB_REQUIRE_DOCKER").is_ok() {
        assert!(
            line("docker").starts_with("ok   docker   Docker "),
            "{text}"
        );
        assert!(ok, "{text}");
    }
    assert!(up.stop().success());
}

#[test]
fn a_loose_secret_and_a_missing_broker_fail_with_their_fix() {
    let root = tempfile::tempdir().unwrap();
    let token = root.path().join("config/ui/token");
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "t\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A fleet's certificates, as `homelab tls init` makes them.
    let init = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .arg("--root")
        .arg(root.path())
        .args(["tls", "init", "--name", "localhost"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let closed = free_port();
    let (ok, text) = doctor(
        root.path(),
        &[
            "--broker",
            &format!("127.0.0.1:{closed}"),
            "--url",
            &format!("http://127.0.0.1:{closed}"),
            "--timeout",
            "3s",
        ],
    );
    assert!(!ok, "exit status 1: {text}");
    assert!(
        text.contains(&format!(
            "FAIL secrets  {} is readable by others (mode 644)",
            token.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("fix: chmod 600 {}", token.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("FAIL broker   127.0.0.1:{closed} not reached")),
        "{text}"
    );
    assert!(text.contains("skip clock    not compared"), "{text}");
    for what in ["the broker's certificate", "the fleet's CA"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("ok   tls      {what} valid until "))),
            "{what}: {text}"
        );
    }
    assert!(text.lines().last().unwrap().contains("failed"), "{text}");
}
