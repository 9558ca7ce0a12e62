//! Upgrades keep the data: a root written by the release before format
//! versions (`fixtures/root-v0`, kept as it was written) starts under this
//! binary with every event, action and incident, and is stamped with this
//! release's format; a root from a newer format is refused with a clear
//! message and left as it is.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{copy_dir, free_port, http_get as get, up_command, Proc};

fn json(port: u16, path: &str) -> Value {
    let (status, body) = get(port, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"))
}

#[test]
fn a_root_of_the_previous_release_starts_with_everything_in_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root-v0");
    let dir = tempfile::tempdir().unwrap();
    let (root, repo) = (dir.path().join("root"), dir.path().join("repo"));
    copy_dir(&fixture.join("root"), &root);
    copy_dir(&fixture.join("repo"), &repo);
    assert!(!root.join("format.json").exists());
    let http = free_port();
    let child = Proc(
        up_command(&root, &repo, (free_port(), http))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while get(http, "/healthz").is_none_or(|(s, _)| s != 200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "homelab up did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary = json(http, "/summary");
    assert_eq!(summary["nodes"]["total"], 1, "{summary}");
    assert_eq!(summary["services"]["not_running"], 2, "{summary}");
    assert_eq!(summary["incidents"], 2, "{summary}");
    assert_eq!(summary["actions"]["pending"], 1, "{summary}");
    let actions = json(http, "/api/actions?state=all");
    let mut seen: Vec<String> = actions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let steps: Vec<String> = a["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    format!(
                        "{} by {}",
                        t["state"].as_str().unwrap(),
                        t["by"].as_str().unwrap()
                    )
                })
                .collect();
            format!("{}: {}", a["id"].as_str().unwrap(), steps.join(", "))
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "container-restart-n1-app: pending by supervisor",
            "container-restart-n1-db: pending by supervisor, rejected by admin",
        ]
    );
    let events = json(http, "/api/events?limit=100");
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"] == "n1")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 1], "both events of the old log: {events}");
    let incidents = json(http, "/api/incidents");
    assert_eq!(incidents.as_array().unwrap().len(), 2, "{incidents}");
    assert!(child.stop().success());
    let stamp: Value =
        serde_json::from_slice(&std::fs::read(root.join("format.json")).unwrap()).unwrap();
    assert_eq!(stamp["v"], homelab_core::format::CURRENT);
    assert!(stamp["written_by"]
        .as_str()
        .unwrap()
        .starts_with("homelab "));
}

#[test]
fn a_root_of_a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (root, repo) = (dir.path().join("root"), dir.path().join("repo"));
    std::fs::create_dir_all(root.join("events")).unwrap();
    std::fs::create_dir_all(repo.join("inventory")).unwrap();
    std::fs::write(repo.join("inventory/topology.yaml"), "nodes: {}\n").unwrap();
    let newer = br#"{"v":99,"written_by":"homelab 9.0.0"}"#;
    std::fs::write(root.join("format.json"), newer).unwrap();
    let output = up_command(&root, &repo, (free_port(), free_port()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("is in format 99 (written by homelab 9.0.0), newer than this binary's format 1: upgrade homelab"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(root.join("format.json")).unwrap(), newer);
    let names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing else written: {names:?}");
}
