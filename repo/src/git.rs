//! The system `git` binary, behind the few calls the sync makes. Chosen
//! over a library (gix) because the homelab's credentials are the user's
//! own and live where git looks for them: ssh keys and the ssh agent,
//! `known_hosts`, `~/.gitconfig` with its credential helpers and
//! `insteadOf` rewrites. The system git honours all of them exactly as the
//! user's shell does; a library would re-implement some and miss others.
//!
//! Every call runs with a timeout (a dead remote must not hang the sync),
//! in its own process group killed with it, never prompts
//! (`GIT_TERMINAL_PROMPT=0`, and ssh in batch mode unless the user set
//! `GIT_SSH_COMMAND`), with `LC_ALL=C` so its messages can be quoted, and
//! with credentials removed from what it says.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use homelab_core::repo::{redact, Commit};

/// How long a fetch or clone may take.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a local call may take.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A bare repository the sync keeps (its mirror of the remote).
#[derive(Debug, Clone)]
pub struct Git {
    dir: std::path::PathBuf,
}

/// Runs `git args…` (in `dir` when given); its stdout, or an error with
/// what it printed on stderr.
async fn run(dir: Option<&Path>, args: &[&str], timeout: Duration) -> Result<Vec<u8>> {
    let mut command = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    let what = format!("git {}", redact_args(args));
    let child = command
        .spawn()
        .with_context(|| format!("{what}: cannot run git (is it installed?)"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| what.clone())?,
        Err(_) => bail!("{what}: no answer within {} s", timeout.as_secs()),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
            .collect();
        bail!("{what}: {}", redact_text(&said.join("; ")));
    }
    Ok(out.stdout)
}

fn redact_args(args: &[&str]) -> String {
    args.iter().map(|a| redact(a)).collect::<Vec<_>>().join(" ")
}

/// Removes credentials from any URL git quotes.
fn redact_text(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let trimmed = word.trim_matches(|c| c == '\'' || c == '"');
            if trimmed.contains("://") {
                word.replace(trimmed, &redact(trimmed))
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The branch `url`'s HEAD names (`main`, say).
pub async fn default_branch(url: &str) -> Result<String> {
    let out = text(
        run(
            None,
            &["ls-remote", "--symref", url, "HEAD"],
            NETWORK_TIMEOUT,
        )
        .await?,
    );
    // ref: refs/heads/main	HEAD
    out.lines()
        .find_map(|l| l.strip_prefix("ref: refs/heads/"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("{}: its HEAD names no branch", redact(url)))
}

/// One `git log` record: commit, subject, author, time, and the paths it
/// changed against its first parent.
const LOG_FORMAT: &str = "--format=%x1e%H%x1f%s%x1f%an%x1f%aI";

fn parse_log(out: &str) -> Vec<(Commit, Vec<String>)> {
    out.split('\x1e')
        .filter(|r| !r.trim().is_empty())
        .filter_map(|record| {
            let (head, paths) = record.split_once('\n').unwrap_or((record, ""));
            let mut fields = head.split('\x1f');
            let sha = fields.next()?.trim().to_string();
            let subject = fields.next()?.to_string();
            let author = fields.next()?.to_string();
            let time = chrono::DateTime::parse_from_rfc3339(fields.next()?.trim())
                .ok()?
                .with_timezone(&chrono::Utc);
            let paths = paths
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            Some((
                Commit {
                    sha,
                    subject,
                    author,
                    time,
                },
                paths,
            ))
        })
        .collect()
}

impl Git {
    pub fn at(dir: &Path) -> Git {
        Git {
            dir: dir.to_path_buf(),
        }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("HEAD").is_file()
    }

    /// A bare clone of `url` (without checking anything out).
    pub async fn clone_bare(url: &str, dir: &Path) -> Result<Git> {
        let parent = dir.parent().context("a mirror needs a parent folder")?;
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        let tmp = parent.join(format!(".clone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let tmp_arg = tmp.to_string_lossy().to_string();
        run(
            None,
            &["clone", "--bare", "--quiet", url, &tmp_arg],
            NETWORK_TIMEOUT,
        )
        .await?;
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("move the clone to {}", dir.display()))?;
        Ok(Git::at(dir))
    }

    /// The remote the mirror fetches from, as configured.
    pub async fn remote_url(&self) -> Result<String> {
        Ok(text(
            run(
                Some(&self.dir),
                &["config", "--get", "remote.origin.url"],
                LOCAL_TIMEOUT,
            )
            .await?,
        ))
    }

    pub async fn set_remote_url(&self, url: &str) -> Result<()> {
        run(
            Some(&self.dir),
            &["remote", "set-url", "origin", url],
            LOCAL_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Fetches `branch` into `refs/remotes/origin/<branch>`, forced: a
    /// force-push replaces it (the caller tells from the ancestry).
    pub async fn fetch(&self, branch: &str) -> Result<()> {
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        run(
            Some(&self.dir),
            &["fetch", "--quiet", "--no-tags", "origin", &refspec],
            NETWORK_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// The commit `reference` names.
    pub async fn resolve(&self, reference: &str) -> Result<String> {
        let spec = format!("{reference}^{{commit}}");
        Ok(text(
            run(
                Some(&self.dir),
                &["rev-parse", "--verify", "--quiet", &spec],
                LOCAL_TIMEOUT,
            )
            .await?,
        ))
    }

    /// Keeps `sha` reachable (and its history) under `refs/homelab/<name>`,
    /// so a force-push or a gc never loses a commit the sync still needs.
    pub async fn keep(&self, name: &str, sha: &str) -> Result<()> {
        let reference = format!("refs/homelab/{name}");
        run(
            Some(&self.dir),
            &["update-ref", &reference, sha],
            LOCAL_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    pub async fn commit(&self, sha: &str) -> Result<Commit> {
        let out = text(
            run(
                Some(&self.dir),
                &["log", "-1", LOG_FORMAT, sha],
                LOCAL_TIMEOUT,
            )
            .await?,
        );
        parse_log(&out)
            .into_iter()
            .next()
            .map(|(c, _)| c)
            .with_context(|| format!("commit {sha} not found"))
    }

    /// Whether `ancestor` is in the history of `of`.
    pub async fn is_ancestor(&self, ancestor: &str, of: &str) -> Result<bool> {
        let mut command = tokio::process::Command::new("git");
        command
            .arg("-C")
            .arg(&self.dir)
            .args(["merge-base", "--is-ancestor", ancestor, of])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let status = tokio::time::timeout(LOCAL_TIMEOUT, command.status())
            .await
            .context("git merge-base: no answer")?
            .context("git merge-base")?;
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!("git merge-base --is-ancestor {ancestor} {of}: {status}"),
        }
    }

    /// The commits reachable from `from` but not from `not`, newest first
    /// (the ones a force-push dropped).
    pub async fn only_in(&self, from: &str, not: &str) -> Result<Vec<Commit>> {
        let range = format!("{not}..{from}");
        let out = text(run(Some(&self.dir), &["log", LOG_FORMAT, &range], LOCAL_TIMEOUT).await?);
        Ok(parse_log(&out).into_iter().map(|(c, _)| c).collect())
    }

    /// The newest `limit` commits of `reference`, with the paths each
    /// changed against its first parent.
    pub async fn log(&self, reference: &str, limit: usize) -> Result<Vec<(Commit, Vec<String>)>> {
        let limit = format!("-{limit}");
        let out = text(
            run(
                Some(&self.dir),
                &[
                    "log",
                    &limit,
                    "--first-parent",
                    "--name-only",
                    LOG_FORMAT,
                    reference,
                ],
                LOCAL_TIMEOUT,
            )
            .await?,
        );
        Ok(parse_log(&out))
    }

    /// The tree of `sha` as a tar archive.
    pub async fn archive(&self, sha: &str) -> Result<Vec<u8>> {
        run(
            Some(&self.dir),
            &["archive", "--format=tar", sha],
            LOCAL_TIMEOUT,
        )
        .await
    }

    /// A unified diff of `paths` between two commits (`from` may be a
    /// commit that does not have them: new files).
    pub async fn diff(&self, from: &str, to: &str, paths: &[&str]) -> Result<String> {
        let mut args = vec!["diff", "--no-color", "--no-ext-diff", from, to, "--"];
        args.extend(paths);
        Ok(
            String::from_utf8_lossy(&run(Some(&self.dir), &args, LOCAL_TIMEOUT).await?)
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records() {
        let out = "\x1eaaaa\x1ffix: a\x1fAnn\x1f2026-12-06T10:00:00+01:00\n\nhosts/piha/services.yaml\nservices/x/docker-compose.yml\n\x1ebbbb\x1fstart\x1fBob\x1f2026-12-05T09:00:00Z\n";
        let log = parse_log(out);
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].0.sha, "aaaa");
        assert_eq!(log[0].0.subject, "fix: a");
        assert_eq!(log[0].0.time.to_rfc3339(), "2026-12-06T09:00:00+00:00");
        assert_eq!(
            log[0].1,
            vec!["hosts/piha/services.yaml", "services/x/docker-compose.yml"]
        );
        assert!(log[1].1.is_empty());
    }

    #[test]
    fn what_git_says_keeps_no_password() {
        assert_eq!(
            redact_text(
                "fatal: unable to access 'https://me:tok@host/r.git/': Could not resolve host"
            ),
            "fatal: unable to access 'https://me:***@host/r.git/': Could not resolve host"
        );
    }
}
