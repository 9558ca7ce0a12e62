//! `homelab-repo`: the desired state as a git history. Run by `homelab up`
//! (and `homelab supervisor`) when `--repo` is a git checkout or URL.
//!
//! Flow of one look (every `--repo-poll`, at once when
//! `state/repo/sync.request` appears, and when the pin changes):
//! 1. the remote is cloned bare into `state/repo/mirror.git` the first
//!    time, then its branch fetched (the old head kept under
//!    `refs/homelab/previous`, so a force-push loses nothing we need);
//! 2. [`sync::fetched`] says what that was: the same, a fast-forward, a
//!    rewrite (followed, and reported), or a failure (counted);
//! 3. the commit to make live ([`sync::target`]: the pin, else the head)
//!    is written once as `state/repo/trees/<sha>/` from `git archive`
//!    (symlinks in it are not followed), and its tree is validated as
//!    `homelab check` would;
//! 4. a tree that validates becomes live: `state/repo/live` is pointed at
//!    it atomically (a new symlink renamed over the old one); one that does
//!    not is recorded in the status and never applied;
//! 5. `state/repo/status.json` and `state/repo/commits.json` (the recent
//!    commits, with what each changed) are written; old trees are removed.
//!
//! Architecture invariant: only this crate runs git, and only through
//! [`git`]. Readers see a tree only once it is whole and valid.

pub mod git;
pub mod source;
pub mod sync;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use homelab_core::repo::{Commit, CommitChange, Pin, PinRequest, RepoStatus};
use homelab_core::{desired, fsutil, Layout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use source::Source;

/// How often a local checkout is looked at (it costs a local fetch).
pub const CHECKOUT_POLL: Duration = Duration::from_secs(5);
/// How many recent commits `commits.json` lists.
pub const RECENT: usize = 30;
/// Trees kept besides the live, pinned and head ones.
const TREES_KEPT: usize = 10;

#[derive(Debug, Clone)]
pub struct Config {
    /// A git source (a checkout or a URL).
    pub source: Source,
    /// The branch to follow; `None`: the remote's default branch.
    pub branch: Option<String>,
    /// How often a URL is fetched.
    pub poll: Duration,
    pub layout: Layout,
}

impl Config {
    fn poll(&self) -> Duration {
        match self.source {
            Source::Checkout(_) => self.poll.min(CHECKOUT_POLL),
            _ => self.poll,
        }
    }
}

/// Makes the webhook's secret once (random, mode 0600): the file the
/// operator copies into the git server's webhook settings.
pub fn ensure_webhook_secret(layout: &Layout) -> Result<()> {
    let path = layout.repo_webhook_secret();
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fsutil::write_secret(&path, format!("{secret}\n").as_bytes())
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let url = config
        .source
        .git_url()
        .context("the repo sync needs a git checkout or URL")?;
    ensure_webhook_secret(&config.layout)?;
    let mut sync = Sync::new(config.clone(), url);
    info!(source = %sync.status.source, "repo sync started");
    let mut next = tokio::time::Instant::now();
    let mut pin_seen = pin_stamp(&config.layout);
    loop {
        let request = config.layout.repo_sync_request();
        let asked = request.exists();
        let pin_now = pin_stamp(&config.layout);
        if asked || pin_now != pin_seen || tokio::time::Instant::now() >= next {
            if asked {
                let _ = std::fs::remove_file(&request);
                info!("repo fetch asked for");
            }
            pin_seen = pin_now;
            sync.look().await;
            next = tokio::time::Instant::now() + config.poll();
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    info!("repo sync stopped");
    Ok(())
}

/// When the pin file last changed (its absence is a state too).
fn pin_stamp(layout: &Layout) -> Option<std::time::SystemTime> {
    std::fs::metadata(layout.repo_pin())
        .and_then(|m| m.modified())
        .ok()
}

struct Sync {
    config: Config,
    url: String,
    git: git::Git,
    status: RepoStatus,
    /// The commit `/metrics` names as live.
    shown_commit: Option<String>,
}

impl Sync {
    fn new(config: Config, url: String) -> Sync {
        let layout = &config.layout;
        let git = git::Git::at(&layout.repo_mirror());
        let status = RepoStatus::read(layout)
            .filter(|s| s.source == homelab_core::repo::redact(&url))
            .unwrap_or_else(|| RepoStatus {
                source: homelab_core::repo::redact(&url),
                branch: config.branch.clone().unwrap_or_default(),
                live: None,
                head: None,
                pinned: None,
                invalid: None,
                rewritten: None,
                failing: None,
                fetched_at: None,
                updated: Utc::now(),
            });
        Sync {
            config,
            url,
            git,
            status,
            shown_commit: None,
        }
    }

    async fn look(&mut self) {
        let now = Utc::now();
        let found = self.fetch().await;
        for note in sync::fetched(&mut self.status, found, now) {
            log(&note);
        }
        self.apply_pin().await;
        if let Some(target) = sync::target(&self.status).cloned() {
            if sync::needs_judging(&self.status, &target) {
                match self.judge(&target).await {
                    Ok(problems) => {
                        let valid = problems.is_empty();
                        for note in sync::judged(&mut self.status, target.clone(), problems, now) {
                            log(&note);
                        }
                        if valid {
                            if let Err(error) = self.make_live(&target.sha) {
                                warn!(error = format!("{error:#}"), "live link not switched");
                            }
                        }
                    }
                    Err(error) => {
                        warn!(sha = %target.sha, error = format!("{error:#}"), "commit not judged; tried again next time")
                    }
                }
            }
        }
        if self.status.head.is_some() {
            if let Err(error) = self.write_commits().await {
                warn!(error = format!("{error:#}"), "recent commits not written");
            }
        }
        self.status.updated = Utc::now();
        if let Err(error) = fsutil::replace_json(&self.config.layout.repo_status(), &self.status) {
            warn!(error = format!("{error:#}"), "repo status not written");
        }
        metrics::gauge!("homelab_repo_fetch_failures").set(
            self.status
                .failing
                .as_ref()
                .map_or(0.0, |f| f.failures as f64),
        );
        self.collect_trees();
    }

    /// Clones or fetches, and says how the head moved.
    async fn fetch(&mut self) -> Result<sync::Look, String> {
        self.try_fetch().await.map_err(|e| format!("{e:#}"))
    }

    async fn try_fetch(&mut self) -> Result<sync::Look> {
        if !self.git.exists() {
            info!(source = %self.status.source, "cloning the repo");
            self.git = git::Git::clone_bare(&self.url, &self.config.layout.repo_mirror()).await?;
        } else if self.git.remote_url().await.ok().as_deref() != Some(self.url.as_str()) {
            self.git.set_remote_url(&self.url).await?;
        }
        if self.status.branch.is_empty() {
            self.status.branch = match &self.config.branch {
                Some(branch) => branch.clone(),
                None => git::default_branch(&self.url).await?,
            };
        }
        let branch = self.status.branch.clone();
        let before = self.status.head.as_ref().map(|c| c.sha.clone());
        if let Some(before) = &before {
            self.git.keep("previous", before).await?;
        }
        self.git.fetch(&branch).await?;
        let sha = self
            .git
            .resolve(&format!("refs/remotes/origin/{branch}"))
            .await
            .with_context(|| format!("the remote has no branch {branch}"))?;
        let head = self.git.commit(&sha).await?;
        let ancestry = match before {
            None => sync::Ancestry::First,
            Some(before) if before == sha => sync::Ancestry::Same,
            Some(before) if self.git.is_ancestor(&before, &sha).await? => {
                sync::Ancestry::FastForward
            }
            Some(before) => sync::Ancestry::Rewritten {
                dropped: self.git.only_in(&before, &sha).await?,
            },
        };
        Ok(sync::Look { head, ancestry })
    }

    /// Reads the pin the operator asked for, if any, and resolves it.
    async fn apply_pin(&mut self) {
        let path = self.config.layout.repo_pin();
        let request: Option<PinRequest> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(request) = request else {
            if self.status.pinned.take().is_some() {
                info!("unpinned: the branch's head is the desired state again");
            }
            return;
        };
        if self
            .status
            .pinned
            .as_ref()
            .is_some_and(|p| p.commit.sha.starts_with(&request.commit))
        {
            return;
        }
        match self.git.resolve(&request.commit).await {
            Ok(sha) => match self.git.commit(&sha).await {
                Ok(commit) => {
                    info!(sha = %commit.sha, by = %request.by, "pinned: an earlier commit is the desired state");
                    sync::pin(
                        &mut self.status,
                        Some(Pin {
                            commit,
                            by: request.by,
                            at: request.at,
                        }),
                    );
                }
                Err(error) => warn!(error = format!("{error:#}"), "pinned commit unreadable"),
            },
            Err(_) => {
                warn!(commit = %request.commit, "pinned commit is not in the repo's history; pin ignored")
            }
        }
    }

    /// Writes the tree of `commit` (once) and validates it: its problems.
    async fn judge(&self, commit: &Commit) -> Result<Vec<String>> {
        let layout = &self.config.layout;
        let tree = layout.repo_tree(&commit.sha);
        let mut problems = Vec::new();
        if !tree.exists() {
            let archive = self.git.archive(&commit.sha).await?;
            let skipped = unpack(&archive, &tree)?;
            for path in skipped {
                problems.push(format!("{path}: a symlink; the repo's files must be files"));
            }
            fsutil::write_json_atomic(&layout.repo_commit(&commit.sha), commit)?;
        } else if !layout.repo_commit(&commit.sha).exists() {
            fsutil::write_json_atomic(&layout.repo_commit(&commit.sha), commit)?;
        }
        let resolved = homelab_core::repo::resolve(&tree);
        if let Err(found) = desired::load(&resolved) {
            problems.extend(found.into_iter().map(|p| {
                let relative = p
                    .path
                    .strip_prefix(&resolved)
                    .unwrap_or(&p.path)
                    .to_path_buf();
                desired::Problem {
                    path: relative,
                    ..p
                }
                .to_string()
            }));
        }
        Ok(problems)
    }

    fn make_live(&mut self, sha: &str) -> Result<()> {
        let layout = &self.config.layout;
        let live = layout.repo_live();
        let tmp = layout
            .repo_dir()
            .join(format!(".live-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("trees").join(sha), &tmp)
            .with_context(|| format!("symlink {}", tmp.display()))?;
        std::fs::rename(&tmp, &live).with_context(|| format!("replace {}", live.display()))?;
        fsutil::sync_dir(&layout.repo_dir())?;
        if let Some(live) = &self.status.live {
            metrics::gauge!("homelab_repo_live_commit_time_seconds")
                .set(live.time.timestamp() as f64);
            // One series per commit; the one before goes to 0.
            if let Some(before) = self.shown_commit.replace(live.short().to_string()) {
                metrics::gauge!("homelab_repo_live_info", "commit" => before).set(0.0);
            }
            metrics::gauge!("homelab_repo_live_info", "commit" => live.short().to_string(), "branch" => self.status.branch.clone()).set(1.0);
        }
        Ok(())
    }

    async fn write_commits(&self) -> Result<()> {
        let branch = format!("refs/remotes/origin/{}", self.status.branch);
        let log = self.git.log(&branch, RECENT).await?;
        let changes: Vec<CommitChange> = log
            .into_iter()
            .map(|(commit, paths)| CommitChange::of(commit, &paths))
            .collect();
        fsutil::replace_json(
            &self.config.layout.repo_dir().join("commits.json"),
            &changes,
        )
    }

    /// Removes old trees: keeps the live, pinned, head and invalid ones and
    /// the newest few others.
    fn collect_trees(&self) {
        let dir = self.config.layout.repo_dir().join("trees");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let keep: Vec<&str> = [
            self.status.live.as_ref(),
            self.status.head.as_ref(),
            self.status.pinned.as_ref().map(|p| &p.commit),
            self.status.invalid.as_ref().map(|i| &i.commit),
        ]
        .into_iter()
        .flatten()
        .map(|c| c.sha.as_str())
        .collect();
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| !keep.contains(&e.file_name().to_string_lossy().as_ref()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        others.sort();
        let excess = others.len().saturating_sub(TREES_KEPT);
        for (_, path) in others.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn log(note: &sync::Note) {
    match note {
        sync::Note::Moved { from, to } => {
            info!(from = from.as_deref().unwrap_or("none"), to = %to, "repo branch moved")
        }
        sync::Note::Rewritten { from, to, dropped } => {
            warn!(%from, %to, dropped, "repo history was rewritten (force-push): the branch's new head is followed")
        }
        sync::Note::Failed {
            failures,
            message,
            unreachable,
        } => {
            if *unreachable {
                warn!(failures, %message, "repo unreachable: the last good commit stays the desired state");
            } else {
                warn!(failures, %message, "repo fetch failed; the last good commit stays");
            }
        }
        sync::Note::Reachable { after } => info!(after_failures = after, "repo reachable again"),
        sync::Note::Live { sha, pinned } => info!(%sha, pinned, "desired state is now this commit"),
        sync::Note::Invalid { sha, problems } => {
            warn!(%sha, problems, "commit does not validate: not applied; the last good one stays")
        }
    }
}

/// Unpacks `git archive`'s tar into `dir` (via a temporary folder, then a
/// rename: a tree is whole or absent). Symlinks and other special entries
/// are left out; their paths are returned.
fn unpack(tar: &[u8], dir: &Path) -> Result<Vec<String>> {
    let parent = dir.parent().context("a tree needs a parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let tmp = parent.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut skipped = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().context("read git archive")? {
        let mut entry = entry.context("read git archive")?;
        let kind = entry.header().entry_type();
        let path = entry.path().context("a path in the archive")?.into_owned();
        if kind.is_dir() || kind.is_file() {
            // unpack_in refuses paths that would leave `tmp`.
            entry
                .unpack_in(&tmp)
                .with_context(|| format!("unpack {}", path.display()))?;
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        } else {
            skipped.push(path.display().to_string());
        }
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("move the tree to {}", dir.display()))?;
    Ok(skipped)
}
