//! `homelab backup` while the system runs and `homelab restore` on a
//! fresh root: the restored system answers `/summary`, the action history
//! and the event log as the original did; `--no-secrets` leaves config/
//! out; a root that holds data is not restored into.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{copy_dir, free_port, get_ok as get, up_command, Proc};

fn homelab(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homelab"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

/// `homelab up` on `root`, healthy; its HTTP port.
fn up(root: &Path, repo: &Path) -> (Proc, u16) {
    let http = free_port();
    let child = Proc(
        up_command(root, repo, (free_port(), http))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while get(http, "/healthz").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "homelab up did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, http)
}

/// What a user compares: the summary, each action with its history, the
/// events.
fn answers(http: u16) -> (Value, Value, Value) {
    let json = |path: &str| -> Value { serde_json::from_str(&get(http, path).unwrap()).unwrap() };
    (
        json("/summary"),
        json("/api/actions?state=all"),
        json("/api/events?limit=1000"),
    )
}

fn entries(archive: &Path) -> Vec<String> {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(zstd::Decoder::new(file).unwrap());
    tar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn a_backup_taken_while_running_restores_on_a_fresh_root() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root-v0");
    let dir = tempfile::tempdir().unwrap();
    let (root, repo) = (dir.path().join("root"), dir.path().join("repo"));
    copy_dir(&fixture.join("root"), &root);
    copy_dir(&fixture.join("repo"), &repo);
    let added = homelab(&root, &["operator", "add", "ann"]);
    assert!(added.status.success());
    let (original, http) = up(&root, &repo);
    let before = answers(http);

    let archive = dir.path().join("lab.tar.zst");
    let made = homelab(&root, &["backup", "--out", archive.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&made.stdout);
    assert!(
        made.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(
        said.starts_with("backup of ") && said.contains(" files, "),
        "{said}"
    );
    let names = entries(&archive);
    assert_eq!(names[0], "homelab-backup.json");
    for wanted in [
        "config/ui/token",
        "config/operators/ann.json",
        "actions/pending/container-restart-n1-app.json",
        "actions/rejected/container-restart-n1-db.json",
        "world/incidents.json",
        "audit/",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(wanted)),
            "{wanted} in {names:#?}"
        );
    }
    let bare = dir.path().join("bare.tar.zst");
    assert!(homelab(
        &root,
        &["backup", "--no-secrets", "--out", bare.to_str().unwrap()]
    )
    .status
    .success());
    assert!(
        entries(&bare).iter().all(|n| !n.starts_with("config")),
        "{:#?}",
        entries(&bare)
    );
    assert_eq!(answers(http), before, "the running system did not notice");
    assert!(original.stop().success());

    // A fresh root: restored, then started.
    let fresh = dir.path().join("fresh");
    let restored = homelab(&fresh, &["restore", archive.to_str().unwrap()]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fresh.join("config/operators/ann.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(fresh.join("config/ui/token")).unwrap(),
        std::fs::read(root.join("config/ui/token")).unwrap()
    );
    let (again, http) = up(&fresh, &repo);
    assert_eq!(
        answers(http),
        before,
        "the restored system answers as the original did"
    );
    assert!(again.stop().success());

    // Not over data.
    let refused = homelab(&fresh, &["restore", archive.to_str().unwrap()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("already holds") && why.contains("empty root"),
        "{why}"
    );
}
