//! Delivery figures (issue: no event lost). Prints, does not assert:
//! `cargo bench -p homelab --bench delivery`.
//!
//! - outbox append rate: events/s durably in the agent's outbox, one commit
//!   per event and one per batch of 1,000;
//! - observer durable ingestion through the embedded broker: a client
//!   publishes N events (QoS 1) as fast as it can; time until the observer's
//!   watermark covers them all (so they are fsynced in the log);
//! - replay after a long outage: an agent starts with N events in its
//!   outbox; time until the observer's watermark covers them;
//! - the agent's idle RSS, as its own process, connected and watching Docker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homelab_core::{Event, Layout, Name, Severity};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn event(node: &Name, seq: u64) -> Event {
    Event {
        v: 1,
        id: homelab_core::event::new_id(),
        ts: chrono::Utc::now(),
        node: node.clone(),
        seq,
        source: "node-agent".into(),
        kind: "bench".into(),
        service: Some(Name::parse("svc").unwrap()),
        severity: Severity::Info,
        message: "a typical event message of modest length".into(),
        data: json!({"i": seq, "detail": "x".repeat(100)}),
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn outbox_append() {
    let node = Name::parse("bench").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outbox = homelab_agent::outbox::Outbox::open(dir.path(), node.clone(), u64::MAX).unwrap();
    let n = 2_000;
    let start = Instant::now();
    for i in 0..n {
        outbox.push(event(&node, i)).unwrap();
    }
    let single = n as f64 / start.elapsed().as_secs_f64();
    let batches = 50;
    let start = Instant::now();
    for _ in 0..batches {
        outbox
            .push_batch((0..1000).map(|i| event(&node, i)).collect())
            .unwrap();
    }
    let batched = (batches * 1000) as f64 / start.elapsed().as_secs_f64();
    println!("outbox append, one commit per event:     {single:>9.0} events/s");
    println!("outbox append, one commit per 1,000:     {batched:>9.0} events/s");
}

/// Subscribes to the node's ack topic and returns when it reaches `target`;
/// `latest` follows the watermark.
async fn wait_ack(
    mqtt: std::net::SocketAddr,
    node: &str,
    target: u64,
    timeout: Duration,
    latest: Arc<AtomicU64>,
) -> Duration {
    let start = Instant::now();
    let mut options = MqttOptions::new(
        format!("bench-acks-{}", homelab_core::event::new_id()),
        "127.0.0.1",
        mqtt.port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe(format!("homelab/acks/{node}"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => {
                let got: u64 = String::from_utf8_lossy(&p.payload).parse().unwrap_or(0);
                latest.fetch_max(got, Ordering::SeqCst);
                if got >= target {
                    return start.elapsed();
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => panic!("watermark did not reach {target} within {timeout:?}"),
        }
    }
}

struct Plant {
    mqtt: std::net::SocketAddr,
    root: tempfile::TempDir,
    shutdown: CancellationToken,
}

async fn plant() -> Plant {
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let config = homelab_observer::Config {
        broker: mqtt.to_string(),
        layout: Layout::new(root.path()),
        topics: homelab_core::Topics::default(),
        repo: None,
    };
    tokio::spawn(homelab_observer::run(config, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    Plant {
        mqtt,
        root,
        shutdown,
    }
}

/// The broker alone, same client library and message size: a publisher
/// with the same window and a subscriber that only counts.
async fn broker_baseline(n: u64) {
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let node = Name::parse("base").unwrap();
    let payloads: Vec<String> = (1..=n).map(|seq| event(&node, seq).to_json()).collect();
    let received = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new("bench-counter", "127.0.0.1", mqtt.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_clean_session(std::env::var("BASE_CLEAN").is_err());
    let (sub, mut sub_loop) = AsyncClient::new(options, 100);
    sub.subscribe("homelab/events/base", QoS::AtLeastOnce)
        .await
        .unwrap();
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok(event) = sub_loop.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(_)) = event {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut options = MqttOptions::new("bench-base-publisher", "127.0.0.1", mqtt.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    const WINDOW: u64 = 5_000;
    let start = Instant::now();
    for (i, payload) in payloads.into_iter().enumerate() {
        while i as u64 >= received.load(Ordering::SeqCst) + WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client
            .publish("homelab/events/base", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    while received.load(Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "baseline subscriber got {} of {n}",
            received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    println!(
        "broker alone, publisher -> counting subscriber: {:>9.0} events/s (same window, same payloads)",
        n as f64 / took.as_secs_f64()
    );
}

async fn observer_ingestion(n: u64) {
    let plant = plant().await;
    let node = Name::parse("ingest").unwrap();
    let payloads: Vec<String> = (1..=n).map(|seq| event(&node, seq).to_json()).collect();
    let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", plant.mqtt.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let acked = Arc::new(AtomicU64::new(0));
    let waiter = tokio::spawn(wait_ack(
        plant.mqtt,
        "ingest",
        n,
        Duration::from_secs(300),
        acked.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Like an agent, keep a bounded window of unacknowledged events: the
    // broker's bounded log drops what a lagging subscriber has not read.
    const WINDOW: u64 = 5_000;
    let start = Instant::now();
    for (i, payload) in payloads.into_iter().enumerate() {
        while i as u64 >= acked.load(Ordering::SeqCst) + WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client
            .publish("homelab/events/ingest", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let published = start.elapsed();
    waiter.await.unwrap();
    let total = start.elapsed();
    println!(
        "observer durable ingestion (embedded broker): {:>9.0} events/s ({n} events on disk in {:.2} s; publishing took {:.2} s)",
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
        published.as_secs_f64()
    );
    plant.shutdown.cancel();
    drop(plant.root);
}

async fn replay_after_outage(n: u64) {
    let plant = plant().await;
    let node = Name::parse("edge").unwrap();
    let agent_root = tempfile::tempdir().unwrap();
    let layout = Layout::new(agent_root.path());
    {
        let outbox =
            homelab_agent::outbox::Outbox::open(&layout.agent_dir(&node), node.clone(), u64::MAX)
                .unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            outbox
                .push_batch(chunk.iter().map(|i| event(&node, *i)).collect())
                .unwrap();
        }
    }
    let mut config = homelab_agent::Config::new(node.clone(), &plant.mqtt.to_string(), layout);
    config.docker_host = Some(format!("unix://{}/none.sock", agent_root.path().display()));
    let shutdown = CancellationToken::new();
    let waiter = tokio::spawn(wait_ack(
        plant.mqtt,
        "edge",
        n,
        Duration::from_secs(600),
        Arc::default(),
    ));
    let start = Instant::now();
    tokio::spawn(homelab_agent::run(config, shutdown.clone()));
    waiter.await.unwrap();
    let took = start.elapsed();
    println!(
        "replay after an outage ({n} events backlog):   {:>9.0} events/s ({:.2} s until on the observer's disk)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    shutdown.cancel();
    plant.shutdown.cancel();
}

async fn agent_idle_rss() {
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["agent", "--node", "idle", "--broker", &mqtt.to_string()])
        .arg("--root")
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    let docker = if std::path::Path::new("/var/run/docker.sock").exists() {
        "watching Docker"
    } else {
        "no Docker"
    };
    println!(
        "agent idle RSS ({docker}, after 8 s):      {}",
        rss.trim_start_matches("VmRSS:").trim()
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    // `cargo test` runs benches once with --bench absent; only measure when asked.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    outbox_append();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(broker_baseline(n));
    runtime.block_on(observer_ingestion(n));
    runtime.block_on(replay_after_outage(n));
    runtime.block_on(agent_idle_rss());
}
