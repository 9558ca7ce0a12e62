//! Logs as journald, `docker logs` and a log collector get them: the
//! binary's stderr is not a terminal here, so no colour codes; with
//! `--log-format json` (or `HOMELAB_LOG_FORMAT=json`) one JSON object a
//! line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The first lines `homelab ui` writes until it listens.
fn first_lines(extra: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(extra)
        .arg("--root")
        .arg(root.path())
        .args(["ui", "--http", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("ui listening");
        lines.push(line);
        if done || lines.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal() {
    let lines = first_lines(&[], &[]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("ui listening")),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:#?}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    for (flag, env) in [
        (vec!["--log-format", "json"], vec![]),
        (vec![], vec![("HOMELAB_LOG_FORMAT", "json")]),
    ] {
        let lines = first_lines(&flag, &env);
        let listening = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|_| panic!("not JSON: {l}"))
            })
            .find(|v| v["fields"]["message"] == "ui listening")
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert_eq!(listening["level"], "INFO");
        assert_eq!(listening["fields"]["listen"], "127.0.0.1:0");
        assert!(listening["timestamp"].is_string());
    }
}

/// An agent pointed at a broker that is not there says so at once, with
/// what to do, not only in debug logs.
#[test]
fn an_unreachable_broker_is_said_with_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .arg("--root")
        .arg(root.path())
        .args([
            "agent",
            "--node",
            "lonely",
            "--broker",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = None;
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("cannot reach the broker") {
            said = Some(line);
            break;
        }
        seen.push(line);
        if seen.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let said = said.unwrap_or_else(|| panic!("{seen:#?}"));
    assert!(said.contains(" WARN "), "{said}");
    assert!(
        said.contains(&format!("nothing listens at 127.0.0.1:{port}")),
        "{said}"
    );
    assert!(said.contains("homelab doctor --broker"), "{said}");
}
