//! With a real container on the machine's Docker engine: the agent sees it
//! stop, the supervisor proposes container_restart, an operator approves,
//! the agent restarts it, and it runs again. Also: the agent keeps running
//! and says so when Docker is unreachable; a failing HEALTHCHECK is seen and
//! a redeploy proposed; a crash loop shows its restart count and exit code.
//!
//! Needs the image `homelab-test/busybox:latest` (`.ci/test-image`). Without
//! Docker or the image the test says loudly that it skips, unless
//! `HOMELAB_REQUIRE_DOCKER=1` (as in CI), where that is a failure.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{InspectContainerOptions, StopContainerOptions};
use bollard::Docker;
use homelab_tests::*;

const T: Duration = Duration::from_secs(30);
use serde_json::Value;

async fn start_container(docker: &Docker, name: &str, service: &str) -> Removal {
    let body = ContainerCreateBody {
        cmd: Some(vec!["sleep".into(), "3600".into()]),
        ..Default::default()
    };
    start_with(docker, name, service, body).await
}

async fn running(docker: &Docker, name: &str) -> bool {
    docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}

async fn service_running(system: &System, service: &str) -> bool {
    service_is(system, service, "running").await
}

async fn service_is(system: &System, service: &str, status: &str) -> bool {
    let (_, body) = system.get("/api/services").await;
    serde_json::from_str::<Value>(&body).is_ok_and(|v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == service && s["status"] == status)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_container_is_restarted_after_approval() {
    let Some(docker) = docker().await else { return };
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let service = format!("web-{}", &tag[tag.len() - 8..]);
    let container = format!("homelab-test-{service}");
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  dockhost: {role: server}\n",
        ),
        (
            "hosts/dockhost/services.yaml",
            &format!("services:\n  {service}: {{grace_period: 0s}}\n"),
        ),
    ]);
    let _removal = start_container(&docker, &container, &service).await;
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;

    // The agent lists it through bollard; the world shows it running.
    wait_for("world shows the container running", T, || {
        service_running(&system, &service)
    })
    .await;

    // It stops behind everyone's back.
    docker
        .stop_container(
            &container,
            Some(StopContainerOptions {
                t: Some(1),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let id = format!("container-restart-dockhost-{service}");
    wait_for("pending container_restart", T, || async {
        system.action_file("pending", &id).exists()
    })
    .await;
    let logged = system.logged("dockhost");
    assert!(
        logged
            .iter()
            .any(|e| e["type"] == "containers_not_running" && e["service"] == service.as_str()),
        "the event log records the stop"
    );

    // Approved; the agent restarts it with bollard.
    let (status, body) = system
        .post(&format!("/api/actions/{id}/approve"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for("completed", T, || async {
        system.action_file("completed", &id).exists()
    })
    .await;
    let completed = read_json(&system.action_file("completed", &id)).unwrap();
    assert_eq!(completed["result"]["ok"], true, "{completed}");
    assert!(
        running(&docker, &container).await,
        "the container runs again"
    );
    wait_for("world shows it running again", T, || {
        service_running(&system, &service)
    })
    .await;
    // Completion is final: the same drift is not proposed again.
    system.settle().await;
    assert!(!system.action_file("pending", &id).exists());
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_docker_unreachable_and_keeps_running() {
    init_logs();
    let root = tempfile::tempdir().unwrap();
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let mut probe = Probe::connect(
        mqtt,
        &["homelab/events/lonely", "homelab/nodes/lonely/status"],
    )
    .await;
    let mut config = homelab_agent::Config::new(
        homelab_core::Name::parse("lonely").unwrap(),
        &mqtt.to_string(),
        homelab_core::Layout::new(root.path()),
    );
    config.docker_host = Some(format!("unix://{}/no-docker.sock", root.path().display()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(homelab_agent::run(config, shutdown.clone()));

    probe
        .expect("homelab/nodes/lonely/status", T, |p| p == b"online")
        .await;
    let event = probe
        .expect("homelab/events/lonely", T, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|e| e["type"] == "docker_unreachable")
        })
        .await;
    let event: Value = serde_json::from_slice(&event).unwrap();
    assert_eq!(event["severity"], "error");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("no-docker.sock"),
        "{event}"
    );
    assert!(!agent.is_finished(), "the agent keeps running");

    shutdown.cancel();
    agent.await.unwrap().unwrap();
    probe
        .expect("homelab/nodes/lonely/status", T, |p| p == b"offline")
        .await;
}

/// A container whose HEALTHCHECK fails is reported `service_unhealthy` and
/// a redeploy is proposed; one that crashes under a restart policy shows
/// its restart count and last exit code in the node's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_healthcheck_and_a_crash_loop_are_seen() {
    use bollard::models::{HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum};
    let Some(docker) = docker().await else { return };
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let tag = &tag[tag.len() - 8..];
    let (sick, crash) = (format!("sick-{tag}"), format!("crash-{tag}"));
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  dockhost: {role: server}\n",
        ),
        (
            "hosts/dockhost/services.yaml",
            &format!(
                "services:\n  {sick}: {{grace_period: 0s}}\n  {crash}: {{grace_period: 1h}}\n"
            ),
        ),
    ]);
    let second = 1_000_000_000;
    let _sick = start_with(
        &docker,
        &format!("homelab-test-{sick}"),
        &sick,
        ContainerCreateBody {
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            healthcheck: Some(HealthConfig {
                test: Some(vec!["CMD".into(), "false".into()]),
                interval: Some(second),
                timeout: Some(second),
                retries: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let _crash = start_with(
        &docker,
        &format!("homelab-test-{crash}"),
        &crash,
        ContainerCreateBody {
            cmd: Some(vec!["sh".into(), "-c".into(), "exit 3".into()]),
            host_config: Some(HostConfig {
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: Some(2),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;

    let redeploy = format!("redeploy-dockhost-{sick}");
    wait_for("pending redeploy of the unhealthy service", T, || async {
        system.action_file("pending", &redeploy).exists()
    })
    .await;
    let pending = read_json(&system.action_file("pending", &redeploy)).unwrap();
    assert_eq!(pending["reason"], "service_unhealthy", "{pending}");
    assert!(
        system
            .logged("dockhost")
            .iter()
            .any(|e| e["type"] == "service_unhealthy" && e["service"] == sick.as_str()),
        "the event log records the failing health check"
    );

    // Docker gives up after 2 restarts; the snapshot says so.
    let crashed = |system: &System| {
        system
            .logged("dockhost")
            .iter()
            .rev()
            .filter(|e| e["type"] == "node_snapshot")
            .find_map(|e| {
                e["data"]["containers"]
                    .as_array()?
                    .iter()
                    .find(|c| c["service"] == crash.as_str())
                    .cloned()
            })
    };
    wait_for("the crash loop in a snapshot", T, || async {
        crashed(&system).is_some_and(|c| c["state"] == "exited" && c["restart_count"] == 2)
    })
    .await;
    let container = crashed(&system).unwrap();
    assert_eq!(container["exit_code"], 3, "{container}");
    system.stop().await.unwrap();
}

/// Removes a Compose project's containers and network when the test ends.
struct ProjectRemoval(Vec<String>);

impl Drop for ProjectRemoval {
    fn drop(&mut self) {
        for project in &self.0 {
            let script = format!(
                "docker ps -aq --filter label=com.docker.compose.project={project} | xargs -r docker rm -f; docker network rm {project}_default"
            );
            let _ = std::process::Command::new("sh")
                .args(["-c", &script])
                .output();
        }
    }
}

fn compose_file(service: &str, labels: &str) -> String {
    format!(
        "version: \"2.4\"\nservices:\n  {service}:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    labels: {{{labels}}}\n"
    )
}

/// Containers of a Compose project, with their labels.
async fn project_containers(
    docker: &Docker,
    project: &str,
) -> Vec<bollard::models::ContainerSummary> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("com.docker.compose.project={project}")],
    )]);
    docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
}

/// Two services deployed with the machine's docker-compose: one stopped is
/// restarted after approval and reported running again; one removed is
/// redeployed by Compose from the files (and the node's override) carried
/// in the action, with Compose's output in the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_services_are_restarted_and_redeployed_after_approval() {
    let Some(docker) = docker().await else { return };
    let required = std::env::var("HOMELAB_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let has_compose = std::process::Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_compose {
        assert!(
            !required,
            "HOMELAB_REQUIRE_DOCKER=1 but docker-compose is missing"
        );
        eprintln!("\n*** SKIPPED: no docker-compose ***\n");
        return;
    }
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let tag = &tag[tag.len() - 8..];
    let (web, api) = (format!("web-{tag}"), format!("api-{tag}"));
    let web_compose = compose_file(&web, &format!("homelab.test: \"{tag}\""));
    let api_compose = compose_file(&api, &format!("homelab.test: \"{tag}\""));
    let web_override = format!(
        "version: \"2.4\"\nservices:\n  {web}:\n    labels: {{homelab.override: \"yes\"}}\n"
    );
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  dockhost: {role: server}\n",
        ),
        (
            "hosts/dockhost/services.yaml",
            &format!("services:\n  {web}: {{grace_period: 0s}}\n  {api}: {{grace_period: 0s}}\n"),
        ),
        (&format!("services/{web}/docker-compose.yml"), &web_compose),
        (&format!("services/{api}/docker-compose.yml"), &api_compose),
        (
            &format!("hosts/dockhost/runtime/{web}/docker-compose.override.yml"),
            &web_override,
        ),
    ]);
    let _removal = ProjectRemoval(vec![web.clone(), api.clone()]);
    // Deployed as an operator would, before homelab watches.
    for service in [&web, &api] {
        let file = repo
            .path()
            .join(format!("services/{service}/docker-compose.yml"));
        let out = std::process::Command::new("docker-compose")
            .args(["-p", service, "-f", &file.display().to_string(), "up", "-d"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    for service in [&web, &api] {
        wait_for("world shows both services running", T, || {
            service_running(&system, service)
        })
        .await;
    }

    // api stops: a restart is proposed, approved, and it runs again.
    let api_container = project_containers(&docker, &api).await[0]
        .id
        .clone()
        .unwrap();
    docker
        .stop_container(
            &api_container,
            Some(StopContainerOptions {
                t: Some(1),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let restart = format!("container-restart-dockhost-{api}");
    wait_for("pending restart", T, || async {
        system.action_file("pending", &restart).exists()
    })
    .await;
    let done = approve(&system, &restart).await;
    assert_eq!(done["result"]["ok"], true, "{done}");
    let message = done["result"]["message"].as_str().unwrap();
    assert!(message.contains("running again"), "{message}");
    assert!(running(&docker, &api_container).await);

    // web is removed: a redeploy is proposed with the repo's files.
    let web_container = project_containers(&docker, &web).await[0]
        .id
        .clone()
        .unwrap();
    docker
        .remove_container(
            &web_container,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let redeploy = format!("redeploy-dockhost-{web}");
    wait_for("pending redeploy", T, || async {
        system.action_file("pending", &redeploy).exists()
    })
    .await;
    let pending = read_json(&system.action_file("pending", &redeploy)).unwrap();
    let files = pending["params"]["compose"]["files"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files.len(), 2, "{pending}");
    assert_eq!(
        files[0]["path"],
        format!("services/{web}/docker-compose.yml")
    );
    assert_eq!(
        files[0]["sha256"],
        homelab_core::command::sha256_hex(web_compose.as_bytes())
    );
    assert_eq!(
        files[1]["path"],
        format!("hosts/dockhost/runtime/{web}/docker-compose.override.yml")
    );
    assert_eq!(pending["params"]["compose"]["project"], web.as_str());

    let done = approve(&system, &redeploy).await;
    let result = &done["result"];
    assert_eq!(result["ok"], true, "{done}");
    // Detected: this machine has docker-compose (v1) only.
    assert_eq!(result["data"]["compose"], "v1", "{done}");
    let output = result["data"]["output"].as_str().unwrap();
    assert!(
        output.contains(&format!("{web}_{web}_1")),
        "Compose's output: {output}"
    );
    assert!(result["data"]["duration_ms"].as_u64().is_some());
    assert_eq!(result["data"]["files"][1]["sha256"], files[1]["sha256"]);
    // Compose recreated it, with the node's override applied.
    let now = project_containers(&docker, &web).await;
    assert_eq!(now.len(), 1);
    assert_eq!(
        now[0].state.map(|s| s.to_string()).as_deref(),
        Some("running")
    );
    let labels = now[0].labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("homelab.override").map(String::as_str),
        Some("yes")
    );
    wait_for("world shows web running again", T, || {
        service_running(&system, &web)
    })
    .await;
    system.stop().await.unwrap();
}

fn logged_of(system: &System, kind: &str, service: &str) -> Vec<Value> {
    system
        .logged("dockhost")
        .into_iter()
        .filter(|e| e["type"] == kind && e["service"] == service)
        .collect()
}

/// The repo's health check scripts and brokers reach the agent through the
/// control plane (no checkout on the node): a script failing `retries`
/// times makes the service unhealthy and a redeploy is proposed, then
/// cancelled when it passes again; a hanging script is killed at its
/// timeout; a broker that stops answering gets `mqtt_unreachable` and a
/// restart of the service that provides it, and `service_recovered` when it
/// answers again; a check removed from the repo takes its verdict with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_scripts_and_brokers_from_the_repo() {
    let Some(docker) = docker().await else { return };
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let tag = &tag[tag.len() - 8..];
    let (checked, hung, broker) = (
        format!("checked-{tag}"),
        format!("hung-{tag}"),
        format!("broker-{tag}"),
    );
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    let port = free_addr().port();
    let _mosquitto = mosquitto(port)
        .await
        .expect("mosquitto is installed (apt-get install mosquitto)");
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  dockhost: {role: server}\n"),
        (
            "hosts/dockhost/services.yaml",
            &format!(
                "services:\n  {checked}: {{grace_period: 0s}}\n  {hung}: {{grace_period: 0s, remediation: \"off\"}}\n  {broker}: {{grace_period: 0s, mqtt_broker: \"127.0.0.1:{port}\"}}\n"
            ),
        ),
        (
            &format!("services/{checked}/service.yaml"),
            "healthcheck: {script: healthcheck.sh, interval: 1s, timeout: 2s, retries: 3}\n",
        ),
        (
            &format!("services/{checked}/healthcheck.sh"),
            &format!("test -f {} || {{ echo \"flag is gone\"; exit 1; }}\n", flag.display()),
        ),
        (
            &format!("services/{hung}/service.yaml"),
            "healthcheck: {script: healthcheck.sh, interval: 1s, timeout: 1s, retries: 1}\n",
        ),
        (&format!("services/{hung}/healthcheck.sh"), "echo waiting\nsleep 60\n"),
    ]);
    let mut removals = Vec::new();
    for service in [&checked, &hung, &broker] {
        removals.push(start_container(&docker, &format!("homelab-test-{service}"), service).await);
    }
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            check_interval: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    for service in [&checked, &broker] {
        wait_for("world shows the service running", T, || {
            service_running(&system, service)
        })
        .await;
    }
    // The agent has its config from the control plane, kept on disk.
    wait_for("node config stored by the agent", T, || async {
        read_json(&system.root().join("state/agent/dockhost/config.json"))
            .is_ok_and(|c| c["healthchecks"].as_array().is_some_and(|h| h.len() == 2))
    })
    .await;

    // The hanging script is killed at its 1 s timeout, its output kept.
    wait_for("hung check reported", T, || async {
        !logged_of(&system, "healthcheck_failed", &hung).is_empty()
    })
    .await;
    let failed = &logged_of(&system, "healthcheck_failed", &hung)[0];
    assert_eq!(failed["data"]["timed_out"], true, "{failed}");
    assert!(
        failed["data"]["output"]
            .as_str()
            .unwrap()
            .contains("waiting"),
        "{failed}"
    );
    assert!(
        failed["data"]["duration_ms"].as_u64().unwrap() < 10_000,
        "{failed}"
    );

    // The flag goes: three failures, then unhealthy, then a redeploy.
    std::fs::remove_file(&flag).unwrap();
    let redeploy = format!("redeploy-dockhost-{checked}");
    wait_for("pending redeploy", T, || async {
        system.action_file("pending", &redeploy).exists()
    })
    .await;
    let pending = read_json(&system.action_file("pending", &redeploy)).unwrap();
    assert_eq!(pending["reason"], "service_unhealthy", "{pending}");
    let failures: Vec<u64> = logged_of(&system, "healthcheck_failed", &checked)
        .iter()
        .map(|e| e["data"]["failures"].as_u64().unwrap())
        .collect();
    assert_eq!(&failures[..3], &[1, 2, 3], "{failures:?}");
    let unhealthy = logged_of(&system, "service_unhealthy", &checked);
    assert_eq!(unhealthy.len(), 1);
    assert!(
        unhealthy[0]["message"]
            .as_str()
            .unwrap()
            .contains("flag is gone"),
        "{}",
        unhealthy[0]
    );
    // It passes again: recovered, and the proposal is cancelled.
    std::fs::write(&flag, "").unwrap();
    // This proposal's cancellation: an earlier one of the same id may be
    // there already (proposed as missing before the first snapshot was
    // judged, and cancelled at once), so it is told by its reason.
    wait_for("redeploy cancelled", T, || async {
        read_json(&system.action_file("cancelled", &redeploy))
            .is_ok_and(|a| a["reason"] == "service_unhealthy")
    })
    .await;
    assert_eq!(logged_of(&system, "service_recovered", &checked).len(), 1);

    // The broker stops answering: mqtt_unreachable, a restart proposed.
    drop(_mosquitto);
    let restart = format!("container-restart-dockhost-{broker}");
    wait_for("pending restart of the broker's service", T, || async {
        system.action_file("pending", &restart).exists()
    })
    .await;
    let unreachable = logged_of(&system, "mqtt_unreachable", &broker);
    assert_eq!(unreachable.len(), 1, "{unreachable:?}");
    assert_eq!(
        unreachable[0]["data"]["address"],
        format!("127.0.0.1:{port}")
    );
    assert!(
        unreachable[0]["message"]
            .as_str()
            .unwrap()
            .contains("connect to"),
        "{}",
        unreachable[0]
    );
    let done = approve(&system, &restart).await;
    assert_eq!(done["result"]["ok"], true, "{done}");
    // It answers again.
    let _mosquitto = mosquitto(port)
        .await
        .expect("mosquitto is installed (apt-get install mosquitto)");
    wait_for("broker recovered", T, || async {
        !logged_of(&system, "service_recovered", &broker).is_empty()
    })
    .await;

    // The hanging check leaves the repo: its verdict goes with it, and the
    // running container counts again.
    wait_for("hung service unhealthy", T, || {
        service_is(&system, &hung, "unhealthy")
    })
    .await;
    std::fs::write(
        system
            .repo
            .path()
            .join(format!("services/{hung}/service.yaml")),
        "{}\n",
    )
    .unwrap();
    wait_for("healthcheck_removed logged", T, || async {
        !logged_of(&system, "healthcheck_removed", &hung).is_empty()
    })
    .await;
    wait_for("hung service running again", T, || {
        service_running(&system, &hung)
    })
    .await;
    drop(removals);
    system.stop().await.unwrap();
}

/// A busy container's CPU and memory, as the agent reads them from Docker,
/// are on the node page and in the agent's retained status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_cpu_and_memory_are_on_the_node_page() {
    let Some(docker) = docker().await else { return };
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let service = format!("busy-{}", &tag[tag.len() - 8..]);
    let container = format!("homelab-test-{service}");
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  dockhost: {role: server}\n",
        ),
        (
            "hosts/dockhost/services.yaml",
            &format!("services:\n  {service}: {{}}\n"),
        ),
    ]);
    // A shell spinning on one core, with a memory limit.
    let body = ContainerCreateBody {
        cmd: Some(vec!["sh".into(), "-c".into(), "while :; do :; done".into()]),
        host_config: Some(bollard::models::HostConfig {
            memory: Some(256 * 1024 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    };
    let _removal = start_with(&docker, &container, &service, body).await;
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            check_interval: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let mut probe = Probe::connect(system.mqtt, &["homelab/nodes/dockhost/agent"]).await;
    let cpu_of = |status: &Value| {
        status["vitals"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container.as_str())
            .and_then(|c| c["cpu_pct"].as_f64().map(|cpu| (cpu, c.clone())))
    };
    let status = probe
        .expect("homelab/nodes/dockhost/agent", T, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|s| cpu_of(&s).is_some())
        })
        .await;
    let status: Value = serde_json::from_slice(&status).unwrap();
    let (cpu, figures) = cpu_of(&status).unwrap();
    // Busy on one core of two: about 100 % of a core; the machine's other
    // work may take some of it.
    assert!(cpu > 30.0 && cpu < 210.0, "{figures}");
    assert_eq!(
        figures["memory_limit_bytes"],
        256 * 1024 * 1024,
        "{figures}"
    );
    assert!(
        figures["memory_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0 && m < 64 << 20),
        "{figures}"
    );
    wait_for("the node page shows them", T, || async {
        let (_, page) = system.get("/nodes/dockhost").await;
        page.split("<tr>")
            .find(|row| row.contains(&format!(r#"<td data-label="container">{container}</td>"#)))
            .is_some_and(|row| {
                row.contains(r#"<td data-label="CPU" class="nowrap">"#)
                    && !row.contains(r#"<td data-label="CPU" class="nowrap">–</td>"#)
                    && row.contains(" of 268.4 MB</td>")
            })
    })
    .await;
    system.stop().await.unwrap();
}
