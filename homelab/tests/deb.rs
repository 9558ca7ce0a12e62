//! The Debian packages as a user installs them: `packaging/deb/build`
//! makes `homelab` and `homelab-agent` from this build's binaries; they are
//! installed with dpkg into a clean Debian root the test makes with
//! debootstrap (Debian's own packages), and checked: the files, the user,
//! /opt/homelab's owner and mode, the units (`systemd-analyze verify`,
//! enabled, started only once configured), `--version`; an upgrade over
//! the previous version keeps the data and the operator's settings; purge
//! removes the user and never the data. Prints the packages' sizes.
//!
//! Needs root (chroot) and debootstrap; CI has both. Elsewhere it says it
//! skips.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::run;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `chroot ROOT args…`, which must succeed: its stdout.
fn inside(root: &Path, args: &[&str]) -> String {
    let (out, err, ok) = run(Command::new("chroot")
        .arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(ok, "chroot {args:?}: {out}{err}");
    out
}

fn build(bin: &Path, version: &str, out: &Path) -> Vec<PathBuf> {
    let (stdout, err, ok) = run(Command::new(repo_root().join("packaging/deb/build"))
        .args(["--version", version, "--bin"])
        .arg(bin)
        .arg(out));
    assert!(ok, "packaging/deb/build: {err}");
    stdout.lines().map(PathBuf::from).collect()
}

#[test]
fn the_packages_install_upgrade_and_purge_as_debian_does() {
    // SAFETY: geteuid(2) has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    let debootstrap = run(Command::new("debootstrap").arg("--version")).2;
    if !(root_user && debootstrap) {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs this as root with debootstrap installed"
        );
        eprintln!("\n*** SKIPPED: needs root and debootstrap ***\n");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // Stripped copies of this build's binaries.
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["homelab", "homelab-agent"] {
        let from = match name {
            "homelab" => env!("CARGO_BIN_EXE_homelab"),
            _ => env!("CARGO_BIN_EXE_homelab-agent"),
        };
        std::fs::copy(from, bin.join(name)).unwrap();
        assert!(run(Command::new("strip").arg(bin.join(name))).2);
    }
    let old = build(&bin, "0.0.9", &work.path().join("old"));
    let new = build(&bin, "0.1.0", &work.path().join("new"));
    assert_eq!(old.len(), 2);
    for deb in &new {
        let size = std::fs::metadata(deb).unwrap().len();
        eprintln!(
            "{}: {:.1} MB",
            deb.file_name().unwrap().to_string_lossy(),
            size as f64 / 1e6
        );
    }

    // A clean Debian, from Debian's packages.
    let root = work.path().join("debian");
    let (out, err, ok) = run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=adduser,systemd", "bookworm"])
        .arg(&root)
        .arg("http://deb.debian.org/debian"));
    assert!(ok, "debootstrap: {out}{err}");
    let stage = |debs: &[PathBuf]| -> Vec<String> {
        debs.iter()
            .map(|deb| {
                let name = deb.file_name().unwrap().to_string_lossy().into_owned();
                std::fs::copy(deb, root.join("tmp").join(&name)).unwrap();
                format!("/tmp/{name}")
            })
            .collect()
    };
    let install = |debs: &[PathBuf]| {
        let staged = stage(debs);
        let mut args = vec!["dpkg", "-i"];
        args.extend(staged.iter().map(String::as_str));
        inside(&root, &args);
    };

    install(&old);
    // The files, the user, the folder.
    assert_eq!(
        inside(&root, &["stat", "-c", "%a", "/usr/bin/homelab"]).trim(),
        "755"
    );
    assert!(inside(&root, &["homelab", "--version"]).contains("homelab"));
    assert!(inside(&root, &["homelab-agent", "--version"]).contains("homelab-agent"));
    let user = inside(&root, &["getent", "passwd", "homelab"]);
    assert!(
        user.starts_with("homelab:x:")
            && user.trim_end().ends_with(":/opt/homelab:/usr/sbin/nologin"),
        "{user}"
    );
    assert_eq!(
        inside(&root, &["stat", "-c", "%U:%G %a", "/opt/homelab"]).trim(),
        "homelab:homelab 750"
    );
    assert_eq!(
        inside(&root, &["stat", "-c", "%U:%G %a", "/etc/homelab/up.env"]).trim(),
        "root:homelab 640"
    );
    // The units: valid, enabled, started only once configured.
    for unit in ["homelab.service", "homelab-agent.service"] {
        let path = format!("/lib/systemd/system/{unit}");
        let (out, err, ok) =
            run(Command::new("chroot")
                .arg(&root)
                .args(["systemd-analyze", "verify", &path]));
        let said = format!("{out}{err}");
        assert!(ok, "systemd-analyze verify {unit}: {said}");
        // The symlink names its target inside the Debian root.
        let link = std::fs::read_link(
            root.join("etc/systemd/system/multi-user.target.wants")
                .join(unit),
        );
        assert_eq!(link.ok(), Some(PathBuf::from(&path)), "{unit} enabled");
        let text = std::fs::read_to_string(root.join(path.trim_start_matches('/'))).unwrap();
        assert!(text.contains("ConditionPathExists=/etc/homelab/"), "{text}");
        assert!(
            text.contains("User=homelab") && text.contains("/opt/homelab"),
            "{text}"
        );
        assert!(
            !text.contains("/usr/local/bin") && !text.contains("/var/lib/homelab"),
            "{text}"
        );
    }

    // Data and the operator's settings, then the upgrade.
    std::fs::create_dir_all(root.join("opt/homelab/events/2026-12-07/n1")).unwrap();
    std::fs::write(
        root.join("opt/homelab/events/2026-12-07/n1/events.jsonl"),
        "{\"kept\":true}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/homelab/up.env"),
        "HOMELAB_UP_ARGS=--node vps\n",
    )
    .unwrap();
    install(&new);
    assert!(inside(&root, &["dpkg-query", "-W", "-f", "${Version}", "homelab"]).contains("0.1.0"));
    assert_eq!(
        std::fs::read_to_string(root.join("opt/homelab/events/2026-12-07/n1/events.jsonl"))
            .unwrap(),
        "{\"kept\":true}\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/homelab/up.env")).unwrap(),
        "HOMELAB_UP_ARGS=--node vps\n",
        "the operator's settings are kept"
    );

    // Purge: the user goes, the data stays.
    inside(&root, &["dpkg", "--purge", "homelab", "homelab-agent"]);
    let (_, _, found) = run(Command::new("chroot")
        .arg(&root)
        .args(["getent", "passwd", "homelab"]));
    assert!(!found, "the user is removed");
    assert!(!root.join("usr/bin/homelab").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("opt/homelab/events/2026-12-07/n1/events.jsonl"))
            .unwrap(),
        "{\"kept\":true}\n",
        "purge never removes the data"
    );
}
