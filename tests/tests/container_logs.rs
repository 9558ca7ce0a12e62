//! Container logs on demand, from a real container through a real agent
//! on the machine's Docker engine: the last lines on the page and from the
//! API, a live follow as server-sent events, refused when logged out, said
//! at once for a node that is not online, and in fleet mode sealed on the
//! bus so that only the UI that asked reads them.
//!
//! Needs the image `homelab-test/busybox:latest` (`.ci/test-image`).

use std::time::Duration;

use homelab_tests::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;

const T: Duration = Duration::from_secs(30);

fn repo(service: &str) -> tempfile::TempDir {
    write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  dockhost: {role: server}\n  edge1: {role: edge-lte}\n",
        ),
        (
            "hosts/dockhost/services.yaml",
            &format!("services:\n  {service}: {{}}\n"),
        ),
    ])
}

async fn online(system: &System) {
    wait_for("dockhost online", T, || async {
        let (_, body) = system.get("/api/nodes").await;
        serde_json::from_str::<Value>(&body).is_ok_and(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .any(|n| n["node"] == "dockhost" && n["status"] == "online")
        })
    })
    .await;
}

/// A chatty container on the engine and the system with its local agent
/// as `dockhost` (in fleet mode if `fleet`), once that node is online:
/// the system, the container's name, the test's tag and the container's
/// guard. `None` without Docker (skipped loudly).
async fn started(fleet: bool) -> Option<(System, String, String, Removal)> {
    let docker = docker().await?;
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let service = format!("chat-{}", &tag[tag.len() - 8..]);
    let container = format!("homelab-test-{service}");
    let removal = start_script_container(&docker, &container, &service, CHATTY).await;
    let system = System::start(
        repo(&service),
        Options {
            fleet,
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    online(&system).await;
    Some((system, container, tag, removal))
}

/// Reads a server-sent event stream until `enough` holds for what came.
async fn sse_until(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
    enough: impl Fn(&str) -> bool,
) -> String {
    let mut stream = sse_connect(addr, path, Some(TOKEN)).await;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    while !enough(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => panic!("the stream did not say enough within {timeout:?}: {seen}"),
        }
    }
    seen
}

/// The ticks in `text`, as numbers.
fn ticks(text: &str) -> Vec<u64> {
    text.split("\"text\":\"tick ")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_logs_through_its_agent_for_an_operator_only() {
    let Some((system, container, tag, _removal)) = started(false).await else {
        return;
    };
    let api = format!("/api/nodes/dockhost/containers/{container}/logs");
    let page = format!("/nodes/dockhost/logs/{container}");

    // Logged out: refused, and nothing of the container shown.
    let (status, body) = system.get(&page).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Log in to read container logs") && !body.contains("hello from"));
    let (status, _) = system.get(&format!("{api}?lines=10")).await;
    assert_eq!(status, 401);
    let (status, _) = http_request(
        system.http,
        "GET",
        &format!("{api}?lines=10"),
        Some("wrong"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // An operator reads the last lines, stdout and stderr apart.
    let lines = loop {
        let (status, body) = http_request(
            system.http,
            "GET",
            &format!("{api}?lines=1000"),
            Some(TOKEN),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let got: Value = serde_json::from_str(&body).unwrap();
        assert!(got.get("error").is_none(), "{got}");
        if got["lines"].as_array().is_some_and(|l| l.len() > 3) {
            break got["lines"].as_array().unwrap().clone();
        }
    };
    // stdout and stderr are two pipes: Docker stamps each line as it reads
    // it, so "oops" may come before "hello"; within a stream the order holds.
    let stdout: Vec<&Value> = lines.iter().filter(|l| l["stream"] == "stdout").collect();
    assert_eq!(stdout[0]["text"], "hello from the container", "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["text"] == "oops" && l["stream"] == "stderr"),
        "{lines:?}"
    );
    assert!(
        lines[0]["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{lines:?}"
    );
    // The page, with the bearer token: the lines in order.
    let (status, body) = http_request(
        system.http,
        "GET",
        &format!("{page}?lines=100"),
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let log = body
        .split(r#"<pre id="log""#)
        .nth(1)
        .expect("the log on the page");
    assert!(
        log.contains("hello from the container") && log.contains(r#"class="line stderr""#),
        "{log}"
    );
    assert!(
        body.contains(r#"id="log-follow""#),
        "the follow button: {body}"
    );
    // The bound: at most 1000 lines back.
    let (status, body) = http_request(
        system.http,
        "GET",
        &format!("{api}?lines=5000"),
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");

    // A live follow: ticks the container writes after it began arrive.
    let stream = sse_until(system.http, &format!("{api}?follow=1&lines=1"), T, |seen| {
        let t = ticks(seen);
        t.len() >= 6 && t.windows(2).all(|w| w[1] == w[0] + 1)
    })
    .await;
    assert!(stream.contains("text/event-stream"), "{stream}");

    // Only containers this agent reports; names are checked at the edge.
    let (_, body) = http_request(
        system.http,
        "GET",
        &format!("/api/nodes/dockhost/containers/no-such-{tag}/logs"),
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert!(
        body.contains(&format!("no container no-such-{tag} on dockhost")),
        "{body}"
    );
    let (status, _) = http_request(
        system.http,
        "GET",
        "/api/nodes/dockhost/containers/..%2Fetc/logs",
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    // A node that is not online says so at once.
    let asked = std::time::Instant::now();
    let (status, body) = http_request(
        system.http,
        "GET",
        "/api/nodes/edge1/containers/app-1/logs",
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("edge1 is not online"), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(5), "not a timeout");
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fleet_mode_the_logs_are_sealed_on_the_bus() {
    let Some((system, container, _, _removal)) = started(true).await else {
        return;
    };
    // The control plane's own login sees what crosses the bus.
    let fleet = homelab_core::fleet::Fleet::load(&homelab_core::Layout::new(system.root()))
        .unwrap()
        .expect("fleet mode");
    let (user, password) = fleet.control_credentials();
    let mut bus = Probe::connect_with(
        "127.0.0.1",
        system.mqtt.port(),
        &format!("{user}:watch"),
        Some((&user, &password)),
        None,
        &["homelab/logs/#"],
    )
    .await;
    let api = format!("/api/nodes/dockhost/containers/{container}/logs?lines=50");
    let (status, body) = http_request(system.http, "GET", &api, Some(TOKEN), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from the container"), "{body}");
    // On the bus: the request sealed for dockhost, the replies sealed too;
    // neither says what the container wrote or which it is.
    let request = bus
        .expect("homelab/logs/dockhost/request", T, |_| true)
        .await;
    let reply = bus.expect("homelab/logs/dockhost/reply", T, |_| true).await;
    for payload in [&request, &reply] {
        let text = String::from_utf8_lossy(payload);
        let sealed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sealed["to"], "dockhost", "{text}");
        assert!(sealed["box"].is_string(), "{text}");
        assert!(
            !text.contains("hello") && !text.contains(&container),
            "{text}"
        );
    }
    system.stop().await.unwrap();
}
