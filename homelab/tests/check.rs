//! `homelab check`, as a pre-commit hook or CI job runs it.

use std::path::Path;
use std::process::Command;

fn check(repo: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["check", "--repo"])
        .arg(repo)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_repo_is_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (code, stdout, stderr) = check(&repo);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: 6 nodes"), "{stdout}");
}

#[test]
fn every_problem_is_printed_with_file_and_line_and_exit_1() {
    let repo = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = repo.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "inventory/topology.yaml",
        "nodes:\n  vps: {role: edge}\n  piha: {role: home}\n",
    );
    write("hosts/piha/capabilities.yaml", "arch: arm64\ncolour: red\n");
    write(
        "hosts/vps/services.yaml",
        "services:\n  npm: {}\n  Bad/Name: {}\n",
    );
    write("hosts/mars/services.yaml", "services: {}\n");
    write(
        "services/npm/service.yaml",
        "description: proxy\ndepends_on: [postgres]\n",
    );
    let (code, stdout, stderr) = check(repo.path());
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let expect = [
        "hosts/mars: node mars is not in inventory/topology.yaml",
        "hosts/piha/capabilities.yaml:2: ",
        "hosts/vps/services.yaml:3: services: bad name \"Bad/Name\"",
        "services/npm/service.yaml:2: service npm depends on postgres, which is not defined under services/",
    ];
    assert_eq!(lines.len(), expect.len(), "{stdout}");
    for (line, expected) in lines.iter().zip(expect) {
        let line = line
            .strip_prefix(&format!("{}/", repo.path().display()))
            .unwrap_or(line);
        assert!(line.starts_with(expected), "{line:?} vs {expected:?}");
    }
    assert!(stdout.contains("unknown field `colour`"), "{stdout}");
    assert!(stderr.contains("4 problems"), "{stderr}");
}
