//! The desired state as a git history, end to end with real git, a real
//! container and Compose: `homelab up --repo file://…` (every timer at its
//! default; each look asked for by a push webhook with a real signature or
//! by the API, as users do). A commit's change to a service's compose file
//! proposes a redeploy naming that commit with its diff; approval runs
//! exactly that commit's files; a bad commit stays out with `repo_invalid`
//! and file:line until a fix; a pin of an older commit proposes what
//! restores it and an unpin returns; a force-push is followed and said; an
//! unreachable remote keeps the last good commit; a webhook with a wrong
//! signature changes nothing. Another test reaches the repo through
//! `git daemon` on loopback.

use std::time::Duration;

use hmac::Mac;
use homelab_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn compose(service: &str, tag: &str, version: &str) -> String {
    format!(
        "version: \"2.4\"\nservices:\n  {service}:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    environment:\n      VERSION: \"{version}\"\n    labels:\n      homelab.test.git: \"{tag}\"\n"
    )
}

/// Removes the Compose project's containers and network at the end.
struct Project(String);

impl Drop for Project {
    fn drop(&mut self) {
        let script = format!(
            "docker ps -aq --filter label=com.docker.compose.project={0} | xargs -r docker rm -f; docker network rm {0}_default",
            self.0
        );
        let _ = std::process::Command::new("sh")
            .args(["-c", &script])
            .output();
    }
}

fn compose_present() -> bool {
    let found = std::process::Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required = std::env::var("HOMELAB_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "HOMELAB_REQUIRE_DOCKER=1 but docker-compose is missing"
        );
        eprintln!("\n*** SKIPPED: no docker-compose ***\n");
    }
    found
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn json(system: &System, path: &str) -> Value {
    let (status, body) = system.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn repo_status(system: &System) -> Value {
    json(system, "/api/repo").await
}

/// The sync's status, or null before it wrote one.
async fn repo_status_now(system: &System) -> Value {
    let (status, body) = system.get("/api/repo").await;
    match status {
        200 => serde_json::from_str(&body).unwrap(),
        _ => Value::Null,
    }
}

/// A push webhook as GitHub sends it, signed with the root's secret.
async fn push_webhook(system: &System, signature: Option<String>) -> (u16, String) {
    let body = r#"{"ref":"refs/heads/main","after":"0","repository":{"name":"lab"}}"#;
    let secret =
        std::fs::read_to_string(homelab_core::Layout::new(system.root()).repo_webhook_secret())
            .unwrap();
    let signature = signature.unwrap_or_else(|| format!("sha256={}", sign(secret.trim(), body)));
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    let (status, _, body) =
        http_exchange(system.http, "POST", "/api/repo/webhook", &headers, body).await;
    (status, body)
}

/// Asks for a fetch with a good webhook and waits until `check` holds
/// for the status the sync writes after it.
async fn fetch_until(system: &System, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let before = repo_status(system).await["updated"].clone();
    let (status, body) = push_webhook(system, None).await;
    assert_eq!(status, 202, "{body}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let status = repo_status(system).await;
        if status["updated"] != before && check(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live_is(sha: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s| s["live"]["sha"] == sha
}

/// Approves the pending `id` and waits for this very proposal (by its
/// creation time) to complete.
async fn approve_pending(system: &System, id: &str) -> Value {
    let pending = read_json(&system.action_file("pending", id)).unwrap();
    let (status, body) = system
        .post(&format!("/api/actions/{id}/approve"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut done = Value::Null;
    wait_for(&format!("{id} finished"), Duration::from_secs(120), || {
        let found = ["completed", "failed"]
            .iter()
            .filter_map(|state| read_json(&system.action_file(state, id)).ok())
            .find(|a| a["created_at"] == pending["created_at"]);
        if let Some(found) = &found {
            done = found.clone();
        }
        async move { found.is_some() }
    })
    .await;
    assert_eq!(done["state"], "completed", "{done:#}");
    done
}

fn env_of(container_filter: &str) -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' $(docker ps -q --filter {container_filter})"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_drive_the_loop_from_push_to_running_container() {
    let Some(_docker) = docker().await else {
        return;
    };
    if !compose_present() {
        return;
    }
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let tag = &tag[tag.len() - 8..];
    let service = format!("app{tag}");
    let _project = Project(service.clone());
    let remote = GitRemote::new();
    let services_yaml = format!("services:\n  {service}: {{grace_period: 0s}}\n");
    let compose_path = format!("services/{service}/docker-compose.yml");
    let c1 = remote.commit(
        "start",
        &[
            (
                "inventory/topology.yaml",
                "nodes:\n  gitnode: {role: server}\n",
            ),
            ("hosts/gitnode/services.yaml", &services_yaml),
            (
                &format!("services/{service}/service.yaml"),
                "description: the app\n",
            ),
            (&compose_path, &compose(&service, tag, "1")),
        ],
    );
    let system = System::start(
        write_repo(&[]),
        Options {
            agent_node: Some("gitnode"),
            sync_interval: Duration::from_secs(2),
            repo_url: Some(remote.url()),
            docker_label: Some(format!("homelab.test.git={tag}")),
            ..Default::default()
        },
    )
    .await;
    let id = format!("redeploy-gitnode-{service}");
    let label = format!("label=homelab.test.git={tag}");

    // The first commit is live (the sync's first look is at start).
    wait_for("first commit live", T, || async {
        system.get("/summary").await.1.contains(&c1)
    })
    .await;
    let summary = json(&system, "/summary").await;
    assert_eq!(summary["desired"]["commit"]["subject"], "start");
    assert_eq!(summary["desired"]["branch"], "main");
    let page = system.get("/").await.1;
    assert!(
        page.contains(&format!(
            "desired state: <a href=\"/repo\"><code>{}</code></a> <i>start</i> by Ann Operator",
            &c1[..7]
        )),
        "{page}"
    );

    // Not running yet: the repo's files deploy it, from commit 1.
    wait_for("pending redeploy of the missing service", T, || async {
        system.action_file("pending", &id).exists()
    })
    .await;
    let pending = read_json(&system.action_file("pending", &id)).unwrap();
    assert_eq!(
        pending["origin"]["commit"]["sha"],
        c1.as_str(),
        "{pending:#}"
    );
    approve_pending(&system, &id).await;
    assert!(env_of(&label).contains("VERSION=1"));

    // A commit changes the compose file: a redeploy of that commit, with
    // its diff; a wrong signature first changes nothing.
    let c2 = remote.commit(
        &format!("{service}: version 2"),
        &[(&compose_path, &compose(&service, tag, "2"))],
    );
    let (status, body) = push_webhook(&system, Some("sha256=00".into())).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        !homelab_core::Layout::new(system.root())
            .repo_sync_request()
            .exists(),
        "nothing fetched"
    );
    assert_eq!(repo_status(&system).await["live"]["sha"], c1.as_str());
    fetch_until(&system, "commit 2 live", live_is(&c2)).await;
    wait_for("pending redeploy of the change", T, || async {
        read_json(&system.action_file("pending", &id))
            .is_ok_and(|a| a["origin"]["commit"]["sha"] == c2.as_str())
    })
    .await;
    let pending = read_json(&system.action_file("pending", &id)).unwrap();
    assert_eq!(pending["reason"], "desired_changed", "{pending:#}");
    assert_eq!(pending["origin"]["from_commit"], c1.as_str());
    let diff = pending["origin"]["diff"].as_str().unwrap();
    assert!(diff.contains(&format!("--- a/{compose_path}")), "{diff}");
    assert!(
        diff.contains("-      VERSION: \"1\"\n+      VERSION: \"2\""),
        "{diff}"
    );
    let page = system.get(&format!("/actions/{id}")).await.1;
    assert!(
        page.contains("Compose files, old → new") && page.contains(&c2[..7]),
        "{page}"
    );

    // Before it is approved, a newer commit changes the same files: the
    // proposal is replaced by one for that commit, and says so.
    let c3 = remote.commit(
        &format!("{service}: version 3"),
        &[(&compose_path, &compose(&service, tag, "3"))],
    );
    fetch_until(&system, "commit 3 live", live_is(&c3)).await;
    wait_for("the proposal replaced", T, || async {
        read_json(&system.action_file("pending", &id))
            .is_ok_and(|a| a["origin"]["commit"]["sha"] == c3.as_str())
    })
    .await;
    let replaced = read_json(&system.action_file("cancelled", &id)).unwrap();
    assert_eq!(replaced["created_at"], pending["created_at"]);
    let why = replaced["history"].as_array().unwrap().last().unwrap()["why"]
        .as_str()
        .unwrap();
    assert!(
        why.starts_with("superseded_by_newer_commit") && why.contains(&c3[..7]),
        "{why}"
    );
    let pending = read_json(&system.action_file("pending", &id)).unwrap();
    let why = pending["history"][0]["why"].as_str().unwrap();
    assert!(
        why.contains(&format!("replaces the proposal for {}", &c2[..7])),
        "{why}"
    );
    assert!(pending["origin"]["diff"]
        .as_str()
        .unwrap()
        .contains("+      VERSION: \"3\""));
    approve_pending(&system, &id).await;
    assert!(
        env_of(&label).contains("VERSION=3"),
        "the approved commit's files run"
    );
    // The deployment history says which commit runs, and who approved.
    let deployments = json(&system, &format!("/api/deployments?service={service}")).await;
    let deployments = deployments.as_array().unwrap();
    assert_eq!(deployments.len(), 2, "{deployments:#?}");
    assert_eq!(deployments[0]["commit"]["sha"], c3.as_str());
    assert_eq!(deployments[0]["ok"], true);
    assert_eq!(deployments[0]["approved_by"], "admin");
    assert_eq!(deployments[1]["commit"]["sha"], c1.as_str());
    wait_for("the matrix says what is deployed", T, || async {
        let page = system.get("/services").await.1;
        page.contains(&format!("deployed <code>{}</code>", &c3[..7]))
            && !page.contains("behind the repo")
    })
    .await;
    let c2 = c3;

    // A bad commit stays out; the fix makes it live.
    let bad = remote.commit(
        "typo",
        &[(
            "hosts/gitnode/services.yaml",
            &format!("services:\n  {service}: {{monitr: false}}\n"),
        )],
    );
    let status = fetch_until(&system, "bad commit judged", |s| {
        s["invalid"]["commit"]["sha"] == bad.as_str()
    })
    .await;
    assert_eq!(
        status["live"]["sha"],
        c2.as_str(),
        "the last good one stays live"
    );
    wait_for("repo_invalid incident", T, || async {
        let incidents = system.get("/api/incidents").await.1;
        incidents.contains("repo_invalid:repo")
            && incidents.contains("hosts/gitnode/services.yaml:2:")
    })
    .await;
    let c4 = remote.commit(
        "fix the typo",
        &[("hosts/gitnode/services.yaml", &services_yaml)],
    );
    fetch_until(&system, "fix live", live_is(&c4)).await;
    wait_for("repo_invalid resolved", T, || async {
        !system
            .get("/api/incidents")
            .await
            .1
            .contains("repo_invalid")
    })
    .await;

    // Pinned to commit 1: a redeploy that restores its files, naming the
    // pin; unpinned: the branch's head is wanted again, the proposal goes.
    let (status, body) = system
        .post(
            "/api/repo/pin",
            Some(TOKEN),
            Some(&format!(r#"{{"commit":"{}","by":"ann"}}"#, &c1[..8])),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_for("restoring redeploy", T, || async {
        read_json(&system.action_file("pending", &id)).is_ok_and(|a| a["origin"]["pinned"] == true)
    })
    .await;
    let pending = read_json(&system.action_file("pending", &id)).unwrap();
    assert_eq!(pending["origin"]["commit"]["sha"], c1.as_str());
    assert!(pending["origin"]["diff"]
        .as_str()
        .unwrap()
        .contains("-      VERSION: \"3\"\n+      VERSION: \"1\""));
    assert!(system.get("/").await.1.contains("📌 Pinned:"));
    let (status, _) = system
        .post("/api/repo/unpin", Some(TOKEN), Some("{}"))
        .await;
    assert_eq!(status, 202);
    wait_for("restoring redeploy cancelled", T, || async {
        read_json(&system.action_file("cancelled", &id))
            .is_ok_and(|a| a["created_at"] == pending["created_at"])
    })
    .await;
    assert_eq!(repo_status(&system).await["live"]["sha"], c4.as_str());

    // A force-push: the new head is live, the dropped commits are said.
    remote.git(&["reset", "-q", "--hard", &c2]);
    std::fs::write(remote.work().join("README.md"), "rewritten\n").unwrap();
    remote.git(&["add", "-A"]);
    remote.git(&["commit", "-q", "-m", "rewrite"]);
    remote.git(&["push", "-q", "-f", "origin", "HEAD:main"]);
    let c5 = remote.git(&["rev-parse", "HEAD"]);
    let status = fetch_until(&system, "rewrite followed", live_is(&c5)).await;
    let dropped: Vec<&str> = status["rewritten"]["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(dropped, vec!["fix the typo", "typo"]);
    assert!(system.get("/").await.1.contains("history was rewritten"));
    // The node's config carries the commit, and its agent says so; the
    // metrics name the live commit.
    let agent_status = system.root().join("state/agent/gitnode/status.json");
    wait_for("the agent's config at the live commit", T, || async {
        read_json(&agent_status).is_ok_and(|s| s["config_commit"] == c5.as_str())
    })
    .await;
    let metrics = system.get("/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("homelab_repo_live_info{")
                && l.contains(&format!("commit=\"{}\"", &c5[..7]))
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // Unreachable: the last good commit stays; an incident after a few
    // failures; over when a fetch works again.
    let away = remote.dir.path().join("away.git");
    std::fs::rename(remote.bare(), &away).unwrap();
    for failures in 1..=homelab_core::repo::UNREACHABLE_AFTER {
        fetch_until(&system, "a failed fetch", |s| {
            s["failing"]["failures"] == failures
        })
        .await;
    }
    wait_for("repo_unreachable incident", T, || async {
        system
            .get("/api/incidents")
            .await
            .1
            .contains("repo_unreachable:repo")
    })
    .await;
    assert_eq!(repo_status(&system).await["live"]["sha"], c5.as_str());
    std::fs::rename(&away, remote.bare()).unwrap();
    fetch_until(&system, "reachable again", |s| s["failing"].is_null()).await;
    wait_for("repo_unreachable resolved", T, || async {
        !system
            .get("/api/incidents")
            .await
            .1
            .contains("repo_unreachable")
    })
    .await;
    system.stop().await.unwrap();
}

/// A git server on loopback (`git daemon`, the git:// transport, with
/// push enabled): a commit pushed to it is live after a fetch asked for
/// with `POST /api/repo/sync`, and the recent commits say what each one
/// changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_served_by_git_daemon() {
    let remote = GitRemote::new();
    let c1 = remote.commit(
        "start",
        &[
            ("inventory/topology.yaml", "nodes:\n  n1: {}\n"),
            ("hosts/n1/services.yaml", "services:\n  web: {}\n"),
            ("services/web/service.yaml", ""),
        ],
    );
    let port = free_addr().port();
    let daemon = std::process::Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", remote.dir.path().display()))
        .arg(remote.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = KillOnDrop(daemon);
    let url = format!("git://127.0.0.1:{port}/origin.git");
    wait_for("git daemon answers", T, || async {
        std::process::Command::new("git")
            .args(["ls-remote", &url])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    // Pushes go over the daemon too.
    remote.git(&["remote", "set-url", "origin", &url]);
    let system = System::start(
        write_repo(&[]),
        Options {
            repo_url: Some(url.clone()),
            ..Default::default()
        },
    )
    .await;
    wait_for("first commit live", T, || async {
        repo_status_now(&system).await["live"]["sha"] == c1.as_str()
    })
    .await;
    let c2 = remote.commit(
        "web: on n1 and a db",
        &[
            ("hosts/n1/services.yaml", "services:\n  web: {}\n  db: {}\n"),
            ("services/db/service.yaml", ""),
        ],
    );
    let (status, body) = system.post("/api/repo/sync", Some(TOKEN), Some("{}")).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = system.post("/api/repo/sync", None, Some("{}")).await;
    assert_eq!(status, 401, "a fetch needs the operator token");
    wait_for("commit 2 live", T, || async {
        repo_status(&system).await["live"]["sha"] == c2.as_str()
    })
    .await;
    let commits = json(&system, "/api/repo/commits").await;
    assert_eq!(commits[0]["commit"]["sha"], c2.as_str());
    assert_eq!(commits[0]["nodes"], serde_json::json!(["n1"]));
    assert_eq!(commits[0]["services"], serde_json::json!(["db"]));
    let page = system.get("/repo").await.1;
    assert!(
        page.contains("web: on n1 and a db") && page.contains(&c1[..7]),
        "{page}"
    );
    system.stop().await.unwrap();
}
