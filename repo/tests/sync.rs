//! The repo sync against real git: a bare repository made here, reached as
//! `file://`, pushed to from a working clone as a user would. Every poll
//! is at its default (60 s): each look is asked for through
//! `state/repo/sync.request`, as the webhook and `homelab repo sync` do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use homelab_core::repo::{CommitChange, PinRequest, RepoStatus};
use homelab_core::Layout;
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ann Operator")
        .env("GIT_AUTHOR_EMAIL", "ann@example.net")
        .env("GIT_COMMITTER_NAME", "Ann Operator")
        .env("GIT_COMMITTER_EMAIL", "ann@example.net")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Remote {
    dir: tempfile::TempDir,
}

impl Remote {
    fn bare(&self) -> PathBuf {
        self.dir.path().join("origin.git")
    }
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
    fn url(&self) -> String {
        format!("file://{}", self.bare().display())
    }

    fn new() -> Remote {
        let remote = Remote {
            dir: tempfile::tempdir().unwrap(),
        };
        git(
            remote.dir.path(),
            &["init", "--bare", "-b", "main", "origin.git"],
        );
        git(remote.dir.path(), &["clone", "-q", &remote.url(), "work"]);
        remote
    }

    /// Writes `files` in the working clone, commits them with `subject`
    /// and pushes; the commit's sha.
    fn commit(&self, subject: &str, files: &[(&str, &str)]) -> String {
        for (path, text) in files {
            let path = self.work().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", subject]);
        git(&self.work(), &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}

const GOOD: &[(&str, &str)] = &[
    ("inventory/topology.yaml", "nodes:\n  n1: {}\n"),
    (
        "hosts/n1/services.yaml",
        "services:\n  app: {grace_period: 0s}\n",
    ),
    ("services/app/service.yaml", "description: the app\n"),
    (
        "services/app/docker-compose.yml",
        "services:\n  app:\n    image: app:1\n",
    ),
];

struct Sync {
    root: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sync {
    fn start(url: &str) -> Sync {
        let root = tempfile::tempdir().unwrap();
        let config = homelab_repo::Config {
            source: homelab_repo::source::parse(url),
            branch: None,
            poll: Duration::from_secs(60),
            layout: Layout::new(root.path()),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(homelab_repo::run(config, shutdown.clone()));
        Sync {
            root,
            shutdown,
            task,
        }
    }

    fn layout(&self) -> Layout {
        Layout::new(self.root.path())
    }

    fn status(&self) -> Option<RepoStatus> {
        RepoStatus::read(&self.layout())
    }

    /// Asks for a look, as the webhook does, and waits until `check`
    /// holds for the status written after it.
    async fn look_until(&self, what: &str, check: impl Fn(&RepoStatus) -> bool) -> RepoStatus {
        let before = self.status().map(|s| s.updated);
        std::fs::create_dir_all(self.layout().repo_dir()).unwrap();
        std::fs::write(self.layout().repo_sync_request(), "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.status() {
                if Some(status.updated) != before && check(&status) {
                    return status;
                }
            }
            assert!(Instant::now() < deadline, "{what}: {:#?}", self.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The live tree's file, as a component reads it through the link.
    fn live_file(&self, path: &str) -> String {
        std::fs::read_to_string(self.layout().repo_live().join(path)).unwrap_or_default()
    }

    fn live_commit(&self) -> Option<String> {
        let layout = self.layout();
        let resolved = homelab_core::repo::resolve(&layout.repo_live());
        homelab_core::repo::commit_of(&layout, &resolved).map(|c| c.sha)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn live_is(sha: &str) -> impl Fn(&RepoStatus) -> bool + '_ {
    move |s| s.live.as_ref().is_some_and(|c| c.sha == sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_followed_through_bad_commits_force_pushes_and_pins() {
    let remote = Remote::new();
    let first = remote.commit("start", GOOD);
    let sync = Sync::start(&remote.url());
    let status = sync.look_until("first commit live", live_is(&first)).await;
    assert_eq!(status.branch, "main", "the remote's default branch");
    let live = status.live.unwrap();
    assert_eq!(
        (live.subject.as_str(), live.author.as_str()),
        ("start", "Ann Operator")
    );
    assert_eq!(
        sync.live_file("inventory/topology.yaml"),
        "nodes:\n  n1: {}\n"
    );
    assert_eq!(sync.live_commit().as_deref(), Some(first.as_str()));
    assert!(sync.layout().repo_webhook_secret().exists());

    // A commit that does not validate is never applied.
    let bad = remote.commit(
        "typo",
        &[(
            "hosts/n1/services.yaml",
            "services:\n  app: {monitr: false}\n",
        )],
    );
    let status = sync
        .look_until("bad commit recorded", |s| {
            s.invalid.as_ref().is_some_and(|i| i.commit.sha == bad)
        })
        .await;
    assert_eq!(
        status.live.as_ref().unwrap().sha,
        first,
        "the last good one stays"
    );
    assert_eq!(status.head.as_ref().unwrap().sha, bad);
    let problems = &status.invalid.as_ref().unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("hosts/n1/services.yaml:2:") && p.contains("monitr")),
        "{problems:?}"
    );
    assert_eq!(sync.live_commit().as_deref(), Some(first.as_str()));

    // The fix makes it live and ends the invalid commit.
    let fixed = remote.commit(
        "app: image 2",
        &[
            (
                "hosts/n1/services.yaml",
                "services:\n  app: {grace_period: 0s}\n",
            ),
            (
                "services/app/docker-compose.yml",
                "services:\n  app:\n    image: app:2\n",
            ),
        ],
    );
    let status = sync.look_until("fix live", live_is(&fixed)).await;
    assert!(status.invalid.is_none());
    assert!(sync
        .live_file("services/app/docker-compose.yml")
        .contains("app:2"));
    // The recent commits say what each changed.
    let commits: Vec<CommitChange> = serde_json::from_slice(
        &std::fs::read(sync.layout().repo_dir().join("commits.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(commits[0].commit.sha, fixed);
    assert_eq!(commits[0].nodes, vec!["n1"]);
    assert_eq!(commits[0].services, vec!["app"]);
    assert_eq!(commits.last().unwrap().commit.sha, first);
    assert!(commits.last().unwrap().inventory);

    // A force-push: the new head is live, the dropped commits are said.
    git(&remote.work(), &["reset", "-q", "--hard", &first]);
    std::fs::write(remote.work().join("README.md"), "rewritten\n").unwrap();
    git(&remote.work(), &["add", "-A"]);
    git(&remote.work(), &["commit", "-q", "-m", "rewrite"]);
    git(&remote.work(), &["push", "-q", "-f", "origin", "HEAD:main"]);
    let rewritten = git(&remote.work(), &["rev-parse", "HEAD"]);
    let status = sync
        .look_until("rewrite followed", live_is(&rewritten))
        .await;
    let rewrite = status.rewritten.unwrap();
    assert_eq!(
        (rewrite.from.as_str(), rewrite.to.as_str()),
        (fixed.as_str(), rewritten.as_str())
    );
    let dropped: Vec<&str> = rewrite.dropped.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(dropped, vec!["app: image 2", "typo"]);

    // Pinned to the first commit (by a prefix), then unpinned.
    let pin = PinRequest {
        commit: first[..10].to_string(),
        by: "ann".into(),
        at: chrono::Utc::now(),
    };
    std::fs::write(sync.layout().repo_pin(), serde_json::to_vec(&pin).unwrap()).unwrap();
    let status = sync.look_until("pinned", live_is(&first)).await;
    assert_eq!(status.pinned.as_ref().unwrap().by, "ann");
    assert_eq!(
        status.head.as_ref().unwrap().sha,
        rewritten,
        "the head is still known"
    );
    std::fs::remove_file(sync.layout().repo_pin()).unwrap();
    let status = sync.look_until("unpinned", live_is(&rewritten)).await;
    assert!(status.pinned.is_none());
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_keeps_the_last_good_commit() {
    let remote = Remote::new();
    let first = remote.commit("start", GOOD);
    let sync = Sync::start(&remote.url());
    sync.look_until("first commit live", live_is(&first)).await;
    let away = remote.dir.path().join("away.git");
    std::fs::rename(remote.bare(), &away).unwrap();
    for failures in 1..=homelab_core::repo::UNREACHABLE_AFTER {
        let status = sync
            .look_until("a failed fetch", |s| {
                s.failing.as_ref().is_some_and(|f| f.failures == failures)
            })
            .await;
        assert_eq!(status.live.as_ref().unwrap().sha, first);
        assert_eq!(
            status.unreachable().is_some(),
            failures >= homelab_core::repo::UNREACHABLE_AFTER
        );
        let message = &status.failing.as_ref().unwrap().message;
        assert!(message.contains("git fetch"), "{message}");
    }
    assert_eq!(sync.live_file("hosts/n1/services.yaml"), GOOD[1].1);
    std::fs::rename(&away, remote.bare()).unwrap();
    let status = sync.look_until("reachable", |s| s.failing.is_none()).await;
    assert_eq!(status.live.unwrap().sha, first);
    sync.stop().await;
}
