//! `redeploy`: `up -d` of one Compose project with the files the command
//! carries (the service's `docker-compose.yml` and the node's override, as
//! the operator approved them), through Compose v1 (`docker-compose`) or v2
//! (`docker compose`).
//!
//! The files are written under the agent's root, `deploy/<project>/`, with
//! fixed names (a path in the command is shown, never used); that folder is
//! the project directory, so relative paths in the files resolve there and
//! stay put from one redeploy to the next. The project name is stable, so
//! `up -d` replaces what the last redeploy started.

use crate::command::Outcome;
use std::path::{Path, PathBuf};
use std::time::Duration;

use homelab_core::command::ComposeBundle;
use homelab_core::desired::ComposeVersion;
use homelab_core::Name;
use serde_json::json;

use crate::proc;

/// At most this many files in one project.
pub const MAX_FILES: usize = 8;

/// The name the `i`-th file of a bundle is written under.
pub fn file_name(i: usize) -> String {
    match i {
        0 => "docker-compose.yml".into(),
        1 => "docker-compose.override.yml".into(),
        i => format!("docker-compose.{i}.yml"),
    }
}

/// Whether a bundle can be run: some files, not too many, each intact.
pub fn check(bundle: &ComposeBundle) -> Result<(), String> {
    if bundle.files.is_empty() {
        return Err("the redeploy carries no compose file".into());
    }
    if bundle.files.len() > MAX_FILES {
        return Err(format!(
            "the redeploy carries {} compose files, at most {MAX_FILES}",
            bundle.files.len()
        ));
    }
    match bundle.files.iter().find(|f| !f.intact()) {
        Some(file) => Err(format!(
            "{} does not match its sha256 {}: not run",
            file.path, file.sha256
        )),
        None => Ok(()),
    }
}

/// The program and arguments of `up -d` for `project` made of `files`.
pub fn command_line(
    version: ComposeVersion,
    project: &Name,
    files: &[PathBuf],
) -> (String, Vec<String>) {
    let (program, mut args): (&str, Vec<String>) = match version {
        ComposeVersion::V1 => ("docker-compose", vec!["--ansi".into(), "never".into()]),
        ComposeVersion::V2 => (
            "docker",
            vec![
                "compose".into(),
                "--ansi".into(),
                "never".into(),
                "--progress".into(),
                "plain".into(),
            ],
        ),
    };
    args.extend(["-p".into(), project.to_string()]);
    for file in files {
        args.extend(["-f".into(), file.display().to_string()]);
    }
    args.extend(["up".into(), "-d".into()]);
    (program.into(), args)
}

/// Which Compose this node has: v2 if `docker compose version` answers,
/// else v1 if `docker-compose version` does.
pub async fn detect(dir: &Path) -> Option<ComposeVersion> {
    let probes = [
        (ComposeVersion::V2, "docker", &["compose", "version"][..]),
        (ComposeVersion::V1, "docker-compose", &["version"][..]),
    ];
    for (version, program, args) in probes {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Ok(done) = proc::run(program, &args, dir, &[], Duration::from_secs(20)).await {
            if done.ok() {
                return Some(version);
            }
        }
    }
    None
}

/// Writes the files into `dir` (the project's folder) and runs `up -d`
/// for at most `timeout`: what it did, for the action's result.
pub async fn redeploy(
    dir: &Path,
    bundle: &ComposeBundle,
    version: Option<ComposeVersion>,
    timeout: Duration,
) -> Outcome {
    let failed = Outcome::failed;
    if let Err(why) = check(bundle) {
        return failed(why);
    }
    let files = match write_files(dir, bundle) {
        Ok(files) => files,
        Err(error) => return failed(format!("compose files not written: {error:#}")),
    };
    let version = match bundle.compose_version.or(version) {
        Some(version) => version,
        None => match detect(dir).await {
            Some(version) => version,
            None => {
                return failed(
                    "neither `docker compose` nor `docker-compose` answers on this node".into(),
                )
            }
        },
    };
    let (program, args) = command_line(version, &bundle.project, &files);
    let shown = format!("{program} {}", args.join(" "));
    let done = match proc::run(&program, &args, dir, &[], timeout).await {
        Ok(done) => done,
        Err(error) => return failed(format!("{shown}: cannot start: {error}")),
    };
    let data = json!({
        "command": shown,
        "compose": match version { ComposeVersion::V1 => "v1", ComposeVersion::V2 => "v2" },
        "project": bundle.project,
        "files": bundle.files.iter().map(|f| json!({"path": f.path, "sha256": f.sha256})).collect::<Vec<_>>(),
        "exit_code": done.code,
        "duration_ms": done.duration.as_millis() as u64,
        "output": done.output,
    });
    let secs = done.duration.as_secs_f64();
    let (ok, message) = match (done.timed_out, done.code) {
        (true, _) => (
            false,
            format!(
                "compose up -d of {} killed after its timeout of {:.0} s",
                bundle.project,
                timeout.as_secs_f64()
            ),
        ),
        (false, Some(0)) => (
            true,
            format!("compose up -d of {} done in {secs:.1} s", bundle.project),
        ),
        (false, code) => (
            false,
            format!(
                "compose up -d of {} failed (exit {}): {}",
                bundle.project,
                code.map_or("by a signal".to_string(), |c| c.to_string()),
                done.last_line()
            ),
        ),
    };
    Outcome { ok, message, data }
}

fn write_files(dir: &Path, bundle: &ComposeBundle) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // Files of an earlier redeploy that this one does not carry (an
    // override since removed from the repo) must not be read again.
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("docker-compose.") && name.ends_with(".yml") {
            std::fs::remove_file(&path)?;
        }
    }
    let mut paths = Vec::new();
    for (i, file) in bundle.files.iter().enumerate() {
        let path = dir.join(file_name(i));
        homelab_core::fsutil::write_atomic(&path, file.content.as_bytes())?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::command::ComposeFile;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn command_lines_for_v1_and_v2() {
        let files = [
            PathBuf::from("/r/deploy/npm/docker-compose.yml"),
            PathBuf::from("/r/deploy/npm/docker-compose.override.yml"),
        ];
        let cases = [
            (
                ComposeVersion::V1,
                "docker-compose --ansi never -p npm -f /r/deploy/npm/docker-compose.yml -f /r/deploy/npm/docker-compose.override.yml up -d",
            ),
            (
                ComposeVersion::V2,
                "docker compose --ansi never --progress plain -p npm -f /r/deploy/npm/docker-compose.yml -f /r/deploy/npm/docker-compose.override.yml up -d",
            ),
        ];
        for (version, want) in cases {
            let (program, args) = command_line(version, &n("npm"), &files);
            assert_eq!(format!("{program} {}", args.join(" ")), want);
        }
        assert_eq!(
            [file_name(0), file_name(1), file_name(2)],
            [
                "docker-compose.yml",
                "docker-compose.override.yml",
                "docker-compose.2.yml"
            ]
        );
    }

    #[test]
    fn bundles_are_checked_before_anything_runs() {
        let good = ComposeFile::new("services/npm/docker-compose.yml", "services: {}\n".into());
        let mut tampered = good.clone();
        tampered.content = "services: {evil: {}}\n".into();
        let bundle = |files: Vec<ComposeFile>| ComposeBundle {
            project: n("npm"),
            compose_version: None,
            files,
        };
        let cases = [
            (bundle(vec![good.clone()]), Ok(())),
            (bundle(vec![]), Err("carries no compose file")),
            (bundle(vec![good.clone(); 9]), Err("at most 8")),
            (
                bundle(vec![good.clone(), tampered]),
                Err("does not match its sha256"),
            ),
        ];
        for (bundle, want) in cases {
            match (check(&bundle), want) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{got:?} vs {want:?}"),
            }
        }
    }
}
