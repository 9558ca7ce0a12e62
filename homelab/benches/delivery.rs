//! Delivery figures (issue: no event lost). Prints, does not assert:
//! `cargo bench -p homelab --bench delivery`.
//!
//! - outbox append rate: events/s durably in the agent's outbox, one commit
//!   per event and one per batch of 1,000;
//! - observer durable ingestion through the embedded broker: a client
//!   publishes N events (QoS 1) as fast as it can; time until the observer's
//!   watermark covers them all (so they are fsynced in the log);
//! - the floor of any durable ingestion through this broker: a subscriber
//!   that only parses, appends and fsyncs per batch, next to the broker
//!   alone;
//! - durable ingestion from outside: `homelab up` in its own process fed by a
//!   publisher that keeps an agent's window, next to `homelab broker` in its
//!   own process passing the same payloads to a counting subscriber;
//! - replay after a long outage: an agent starts with N events in its
//!   outbox; time until the observer's watermark covers them;
//! - fair under a flood: a quiet node's publish → log latency (p50, p99,
//!   max), alone and while another node floods the observer as an agent
//!   would and as a node ignoring the protocol would (`BENCH_ONLY=fair`);
//! - replay over an LTE-like link (1 Mbit/s each way, 300 ms round trip,
//!   emulated in user space): events/s and bytes per event each way, next
//!   to a plain TCP stream through the same link (`BENCH_ONLY=lte`);
//! - 100 agents with 1,000-event backlogs reconnecting together: time until
//!   every watermark covers its backlog (`BENCH_ONLY=fleet`, next to one
//!   agent replaying the same total);
//! - Mosquitto killed and restarted: time until an event handed to the
//!   agent at the restart is in the observer's log, next to the time until
//!   the broker passes messages again (`BENCH_ONLY=restart`);
//! - the agent's idle RSS, as its own process, connected and watching Docker:
//!   the slim `homelab-agent` next to `homelab agent`;
//! - the agent idle with 100 containers and 20 health checks: its CPU share
//!   and RSS, next to the same binary without checks and dockerd's CPU in
//!   the same window (`BENCH_ONLY=idle`, `BENCH_IDLE_SECS`, default 60);
//! - latency from an event published (a service's container exits) to its
//!   pending action file, through `homelab up` in-process, next to the
//!   broker's own publish → receive round trip in the same run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// CPU time this process has used so far (all threads, user + system).
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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
    wait_ack_as(mqtt, node, target, timeout, latest, None).await
}

/// A node's login on a broker in fleet mode: its password and its key.
#[derive(Clone)]
struct NodeLogin {
    password: String,
    key: homelab_core::identity::SecretKey,
}

/// MQTT options for a client of `node` (`suffix` tells its clients apart),
/// logged in as the node when `login` is given.
fn node_options(
    mqtt: std::net::SocketAddr,
    node: &str,
    suffix: &str,
    login: Option<&NodeLogin>,
) -> MqttOptions {
    let id = match login {
        Some(_) => format!("{node}:{suffix}"),
        None => format!("bench-{suffix}-{}", homelab_core::event::new_id()),
    };
    let mut options = MqttOptions::new(id, "127.0.0.1", mqtt.port());
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(login) = login {
        options.set_credentials(node, login.password.clone());
    }
    options
}

/// What a node sends for `event`: signed with its key in fleet mode.
fn payload_of(event: &Event, login: Option<&NodeLogin>) -> String {
    let json = serde_json::to_string(event).unwrap();
    match login {
        Some(login) => String::from_utf8(homelab_core::identity::seal(
            json.as_bytes(),
            homelab_core::identity::Context::Event,
            &login.key,
        ))
        .unwrap(),
        None => json,
    }
}

async fn wait_ack_as(
    mqtt: std::net::SocketAddr,
    node: &str,
    target: u64,
    timeout: Duration,
    latest: Arc<AtomicU64>,
    login: Option<NodeLogin>,
) -> Duration {
    let start = Instant::now();
    let options = node_options(mqtt, node, "acks", login.as_ref());
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe(format!("homelab/acks/{node}"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => {
                // `42`, or `42 <signature>` in fleet mode.
                let got: u64 = String::from_utf8_lossy(&p.payload)
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0);
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
    plant_with(None).await
}

/// In fleet mode (the node `fleet` enrolled), the observer checks every
/// event's signature; the broker stays open (anonymous on loopback), so
/// only the signatures' cost differs from [`plant`].
async fn plant_with(fleet: Option<&Name>) -> Plant {
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let fleet = match fleet {
        Some(node) => {
            homelab::fleet_cli::tls_init(&layout, &["localhost".into()], 8883, false).unwrap();
            let secrets = homelab::fleet_cli::enroll(&layout, node).unwrap();
            *NODE_KEY.lock().unwrap() = Some(secrets.signing_key().unwrap());
            homelab_core::fleet::Fleet::load(&layout).unwrap()
        }
        None => None,
    };
    observe(mqtt, mqtt.to_string().into(), root, fleet).await
}

/// The observer on the broker at `mqtt` (reached as `broker`), in `root`.
async fn observe(
    mqtt: std::net::SocketAddr,
    broker: homelab_mqtt::Endpoint,
    root: tempfile::TempDir,
    fleet: Option<homelab_core::fleet::Fleet>,
) -> Plant {
    let shutdown = CancellationToken::new();
    let config = homelab_observer::Config {
        broker,
        layout: Layout::new(root.path()),
        topics: homelab_core::Topics::default(),
        repo: None,
        retention: Default::default(),
        feed: None,
        fleet,
        home_assistant: None,
    };
    tokio::spawn(homelab_observer::run(config, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    Plant {
        mqtt,
        root,
        shutdown,
    }
}

/// A subscriber that only counts what it receives on `topic`.
async fn count_received(mqtt: std::net::SocketAddr, topic: &str, clean: bool) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new(
        format!("bench-counter-{}", homelab_core::event::new_id()),
        "127.0.0.1",
        mqtt.port(),
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_clean_session(clean);
    let (sub, mut sub_loop) = AsyncClient::new(options, 100);
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let counter = received.clone();
    tokio::spawn(async move {
        let _sub = sub;
        while let Ok(event) = sub_loop.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(_)) = event {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    received
}

/// Waits until the counting subscriber has all `n`.
async fn all_received(received: &AtomicU64, n: u64, start: Instant) {
    while received.load(Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the counting subscriber got {} of {n}",
            received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The broker alone, same client library and message size: a publisher
/// with the same window and a subscriber that only counts.
async fn broker_baseline(n: u64) -> f64 {
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let node = Name::parse("base").unwrap();
    let payloads: Vec<String> = (1..=n).map(|seq| event(&node, seq).to_json()).collect();
    let topic = "homelab/events/base";
    let received = count_received(mqtt, topic, std::env::var("BASE_CLEAN").is_ok()).await;
    const WINDOW: u64 = 5_000;
    let start = Instant::now();
    let cpu = cpu_time();
    publish_windowed(mqtt, topic, payloads, WINDOW, received.clone()).await;
    all_received(&received, n, start).await;
    let took = start.elapsed();
    let cpu = cpu_time() - cpu;
    println!(
        "broker alone, publisher -> counting subscriber: {:>9.0} events/s (same window, same payloads; CPU {:.1} us/event, {:.2} cores)",
        n as f64 / took.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        cpu.as_secs_f64() / took.as_secs_f64()
    );
    n as f64 / took.as_secs_f64()
}

/// The floor of any durable ingestion through this broker: a subscriber
/// that only parses each event, appends its payload as it came and fsyncs
/// once per batch (as the observer batches), then counts. No validation of
/// order, no dedup, no world state, no ack: what is left between this and
/// the broker alone is the cost of storing at all.
async fn durable_floor(n: u64, anchor: f64) {
    use std::io::Write;
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let node = Name::parse("floor").unwrap();
    let payloads: Vec<String> = (1..=n).map(|seq| event(&node, seq).to_json()).collect();
    let topic = "homelab/events/floor";
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("events.jsonl")).unwrap();
    let stored = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new("bench-floor", "127.0.0.1", mqtt.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_clean_session(false);
    let (sub, mut sub_loop) = AsyncClient::new(options, 100);
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _sub = sub;
        while let Ok(event) = sub_loop.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(publish)) = event {
                let _ = tx.send(publish.payload);
            }
        }
    });
    let counter = stored.clone();
    tokio::spawn(async move {
        let mut buffer = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 1000 {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            buffer.clear();
            for payload in &batch {
                let event = Event::from_payload(payload).expect("valid event");
                std::hint::black_box(&event);
                buffer.extend_from_slice(payload);
                buffer.push(b'\n');
            }
            tokio::task::block_in_place(|| {
                file.write_all(&buffer).unwrap();
                file.sync_data().unwrap();
            });
            counter.fetch_add(batch.len() as u64, Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    const WINDOW: u64 = 5_000;
    let start = Instant::now();
    let cpu = cpu_time();
    publish_windowed(mqtt, topic, payloads, WINDOW, stored.clone()).await;
    all_received(&stored, n, start).await;
    let took = start.elapsed();
    let cpu = cpu_time() - cpu;
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "floor: parse + append + fsync per batch only: {:>9.0} events/s (ratio to the broker alone {:.2}; CPU {:.1} us/event, {:.2} cores)",
        rate,
        rate / anchor,
        cpu.as_secs_f64() * 1e6 / n as f64,
        cpu.as_secs_f64() / took.as_secs_f64()
    );
}

/// The enrolled node's signing key of the last fleet-mode plant.
static NODE_KEY: std::sync::Mutex<Option<homelab_core::identity::SecretKey>> =
    std::sync::Mutex::new(None);

async fn observer_ingestion(n: u64, signed: bool) -> f64 {
    let node = Name::parse("ingest").unwrap();
    let plant = plant_with(signed.then_some(&node)).await;
    let mut payloads: Vec<String> = (1..=n).map(|seq| event(&node, seq).to_json()).collect();
    if signed {
        // What each agent does as an event leaves (timed here, not part
        // of the rate below: the agents' CPU, not the observer's).
        let key = NODE_KEY.lock().unwrap().clone().unwrap();
        let start = Instant::now();
        payloads = payloads
            .into_iter()
            .map(|p| {
                String::from_utf8(homelab_core::identity::seal(
                    p.as_bytes(),
                    homelab_core::identity::Context::Event,
                    &key,
                ))
                .unwrap()
            })
            .collect();
        println!(
            "signing an event (Ed25519, the agent's side):        {:>9.1} us/event",
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
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
    let cpu = cpu_time();
    publish_windowed(plant.mqtt, "homelab/events/ingest", payloads, WINDOW, acked).await;
    let published = start.elapsed();
    waiter.await.unwrap();
    let total = start.elapsed();
    let cpu = cpu_time() - cpu;
    let rate = n as f64 / total.as_secs_f64();
    println!(
        "observer durable ingestion (embedded broker{}): {:>9.0} events/s ({n} events on disk in {:.2} s; publishing took {:.2} s; CPU {:.1} us/event, {:.2} cores)",
        if signed { ", every signature checked" } else { "" },
        rate,
        total.as_secs_f64(),
        published.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        cpu.as_secs_f64() / total.as_secs_f64()
    );
    plant.shutdown.cancel();
    drop(plant.root);
    rate
}

/// The observer's ingestion without signatures, then with every one
/// checked, and the ratio of the two (same run).
async fn observer_ingestion_signed_and_not(n: u64) {
    let plain = observer_ingestion(n, false).await;
    let signed = observer_ingestion(n, true).await;
    println!(
        "signatures checked vs not, same run:                {:>9.2} of the unsigned rate",
        signed / plain
    );
    signature_levers(plain);
}

/// What checking a signature costs per event, one at a time, in batches
/// (as the observer does), and if one signature covered a batch of 100
/// events (a lever not taken: it changes what `events/<node>` carries),
/// with the CPU per event the unsigned ingestion left, as a bound.
fn signature_levers(plain_rate: f64) {
    use homelab_core::identity::{self, Context};
    let key = homelab_core::identity::SecretKey::from_bytes(&[9u8; 32]);
    let public = key.verifying_key();
    let node = Name::parse("lever").unwrap();
    let sealed: Vec<Vec<u8>> = (0..2_000)
        .map(|seq| identity::seal(event(&node, seq).to_json().as_bytes(), Context::Event, &key))
        .collect();
    let per_event = |took: Duration| took.as_secs_f64() * 1e6 / sealed.len() as f64;
    let start = Instant::now();
    for s in &sealed {
        identity::open(s, Context::Event, &public).unwrap();
    }
    let one = per_event(start.elapsed());
    let items: Vec<(&[u8], &identity::PublicKey)> =
        sealed.iter().map(|s| (&s[..], &public)).collect();
    let start = Instant::now();
    for chunk in items.chunks(500) {
        assert!(identity::open_many(chunk, Context::Event)
            .iter()
            .all(|r| r.is_ok()));
    }
    let batched = per_event(start.elapsed());
    // One signature over 100 events: hash all, verify once.
    let blobs: Vec<Vec<u8>> = sealed
        .chunks(100)
        .map(|c| {
            identity::seal(
                format!("{{\"events\":{}}}", c.len()).as_bytes(),
                Context::Event,
                &key,
            )
        })
        .collect();
    let start = Instant::now();
    for (blob, chunk) in blobs.iter().zip(sealed.chunks(100)) {
        let mut hasher = sha2::Sha256::default();
        for s in chunk {
            sha2::Digest::update(&mut hasher, s);
        }
        std::hint::black_box(sha2::Digest::finalize(hasher));
        identity::open(blob, Context::Event, &public).unwrap();
    }
    let per_batch = per_event(start.elapsed());
    println!(
        "checking a signature, one core: {one:.1} us/event alone, {batched:.1} us/event in batches of 500, {per_batch:.2} us/event if one signature covered 100 events (unsigned ingestion: {:.1} us/event of wall time)",
        1e6 / plain_rate
    );
}

/// A child process killed when dropped (also when the bench panics).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `addr`.
async fn listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `payloads` (QoS 1) on `topic`, at most `window` ahead of
/// `progress` (an agent's window over the watermark, or what a counting
/// subscriber has received).
async fn publish_windowed(
    mqtt: std::net::SocketAddr,
    topic: &str,
    payloads: Vec<String>,
    window: u64,
    progress: Arc<AtomicU64>,
) {
    let mut options = MqttOptions::new(
        format!("bench-publisher-{}", homelab_core::event::new_id()),
        "127.0.0.1",
        mqtt.port(),
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for (i, payload) in payloads.into_iter().enumerate() {
        while i as u64 >= progress.load(Ordering::SeqCst) + window {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

/// A node that sends one event every `every` and resends what the
/// watermark has not covered after `resend` (as an agent's stall timer
/// does): each event's latency from its first publish until the
/// observer's watermark covers it (it is then fsynced in the log).
async fn quiet_node(
    mqtt: std::net::SocketAddr,
    n: u64,
    every: Duration,
    resend: Duration,
    login: Option<NodeLogin>,
) -> Vec<Duration> {
    let node = Name::parse("quiet").unwrap();
    let latest = Arc::new(AtomicU64::new(0));
    let acks = tokio::spawn(wait_ack_as(
        mqtt,
        "quiet",
        n,
        Duration::from_secs(600),
        latest.clone(),
        login.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let options = node_options(mqtt, "quiet", "events", login.as_ref());
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let payloads: Vec<String> = (1..=n)
        .map(|seq| payload_of(&event(&node, seq), login.as_ref()))
        .collect();
    let mut sent: Vec<Instant> = Vec::new();
    let mut latencies = vec![Duration::ZERO; n as usize];
    let mut covered = 0u64;
    let mut last_resend = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut next_send = Instant::now();
    while covered < n {
        tick.tick().await;
        let now = Instant::now();
        let mark = latest.load(Ordering::SeqCst).min(sent.len() as u64);
        while covered < mark {
            latencies[covered as usize] = now - sent[covered as usize];
            covered += 1;
        }
        if (sent.len() as u64) < n && now >= next_send {
            let seq = sent.len();
            sent.push(now);
            client
                .publish(
                    "homelab/events/quiet",
                    QoS::AtLeastOnce,
                    false,
                    payloads[seq].clone(),
                )
                .await
                .unwrap();
            next_send = now + every;
        }
        let stalled = covered < sent.len() as u64
            && now - sent[covered as usize] > resend
            && now - last_resend > resend;
        if stalled {
            for payload in &payloads[covered as usize..sent.len()] {
                client
                    .publish(
                        "homelab/events/quiet",
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await
                    .unwrap();
            }
            last_resend = now;
        }
    }
    acks.abort();
    latencies
}

/// A node that publishes its events as fast as it can until `stop`:
/// `window` beyond its watermark as an agent keeps it, or (`None`) as fast
/// as the broker acknowledges, as a node that ignores the protocol would.
/// Returns how many it sent.
async fn flooding_node(
    mqtt: std::net::SocketAddr,
    window: Option<u64>,
    stop: Arc<AtomicBool>,
    login: Option<NodeLogin>,
) -> u64 {
    let node = Name::parse("flood").unwrap();
    let latest = Arc::new(AtomicU64::new(0));
    let acks = tokio::spawn(wait_ack_as(
        mqtt,
        "flood",
        u64::MAX,
        Duration::from_secs(3600),
        latest.clone(),
        login.clone(),
    ));
    let mut options = node_options(mqtt, "flood", "events", login.as_ref());
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        if let Some(window) = window {
            if seq >= latest.load(Ordering::SeqCst) + window {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        seq += 1;
        let payload = payload_of(&event(&node, seq), login.as_ref());
        client
            .publish("homelab/events/flood", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    acks.abort();
    seq
}

/// Fair under a flood: a quiet node's latency (one event every 50 ms,
/// publish → in the observer's log), alone and while another node floods
/// the same observer, as an agent (its send window of
/// `window::SEND_WINDOW`) and ignoring the protocol (as fast as the broker
/// takes them). Each on a fresh broker and observer, in the same run.
async fn fairness_under_flood(n: u64) {
    use homelab_agent::window::{FIRST_STALL, SEND_WINDOW};
    // (what, fleet mode, the flood: none, or its window (None: none)).
    let cases: [(&str, bool, Option<Option<u64>>); 5] = [
        ("alone", false, None),
        ("flood as an agent", false, Some(Some(SEND_WINDOW))),
        (
            "flood ignoring acks, open mode (no pace)",
            false,
            Some(None),
        ),
        ("alone, fleet mode", true, None),
        (
            "flood ignoring acks, fleet mode (each node paced)",
            true,
            Some(None),
        ),
    ];
    for (what, fleet, flood) in cases {
        let (plant, logins) = match fleet {
            true => {
                let (plant, logins) = plant_fleet(&["quiet", "flood"]).await;
                (plant, logins.into_iter().map(Some).collect::<Vec<_>>())
            }
            false => (plant().await, vec![None, None]),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flooding = flood.map(|window| {
            tokio::spawn(flooding_node(
                plant.mqtt,
                window,
                stop.clone(),
                logins[1].clone(),
            ))
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        let mut latencies = quiet_node(
            plant.mqtt,
            n,
            Duration::from_millis(50),
            FIRST_STALL,
            logins[0].clone(),
        )
        .await;
        let took = start.elapsed();
        stop.store(true, Ordering::SeqCst);
        let flooded = match flooding {
            Some(handle) => handle.await.unwrap(),
            None => 0,
        };
        println!(
            "fairness, quiet node ({n} events, one per 50 ms), {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the flooding node sent {:.0} events/s",
            percentile(&mut latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&mut latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
            flooded as f64 / took.as_secs_f64(),
        );
        plant.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(plant.root);
    }
}

/// The embedded broker and the observer in fleet mode (every client logs
/// in; the front holds each node to its topics and its pace), with
/// `nodes` enrolled: their logins.
async fn plant_fleet(nodes: &[&str]) -> (Plant, Vec<NodeLogin>) {
    let mqtt = free_addr();
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    homelab::fleet_cli::tls_init(&layout, &["localhost".into()], 8883, false).unwrap();
    let logins: Vec<NodeLogin> = nodes
        .iter()
        .map(|node| {
            let secrets = homelab::fleet_cli::enroll(&layout, &Name::parse(node).unwrap()).unwrap();
            NodeLogin {
                password: secrets.password.clone(),
                key: secrets.signing_key().unwrap(),
            }
        })
        .collect();
    let fleet = homelab_core::fleet::Fleet::load(&layout).unwrap().unwrap();
    let mut broker = homelab_broker::Config::new(mqtt);
    broker.fleet = Some(fleet.clone());
    homelab_broker::start(&broker).unwrap();
    let endpoint = homelab::control_endpoint(&layout, Some(&fleet), &mqtt.to_string()).unwrap();
    (observe(mqtt, endpoint, root, Some(fleet)).await, logins)
}

/// Durable ingestion from outside, as a user runs it: `homelab up` (no
/// local agent) in its own process, fed by this process behaving like an
/// agent (at most 5,000 events beyond the watermark), next to `homelab
/// broker` in its own process passing the same payloads to a counting
/// subscriber.
/// Durable ingestion from outside: `homelab up` in its own process, fed by
/// a publisher that keeps an agent's window, next to `homelab broker` in
/// its own process passing the same payloads to a counting subscriber.
/// Both processes run throughout; rounds alternate between them (this
/// machine is noisy), and the medians and the median of each round's
/// ratio are printed.
async fn ingestion_from_outside(n: u64) {
    const WINDOW: u64 = 5_000;
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let bin = env!("CARGO_BIN_EXE_homelab");
    let quiet = |command: &mut std::process::Command| {
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    };
    // The anchor: the broker alone.
    let broker_mqtt = free_addr();
    let mut command = std::process::Command::new(bin);
    command.args(["broker", "--listen", &broker_mqtt.to_string()]);
    quiet(&mut command);
    let _broker = Child(command.spawn().unwrap());
    listening(broker_mqtt).await;
    // `homelab up`, durable.
    let mqtt = free_addr();
    let http = free_addr();
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repo");
    std::fs::create_dir_all(repo.join("inventory")).unwrap();
    let nodes: String = (0..rounds)
        .map(|r| format!("  outside{r}: {{}}\n"))
        .collect();
    std::fs::write(
        repo.join("inventory/topology.yaml"),
        format!("nodes:\n{nodes}"),
    )
    .unwrap();
    let mut command = std::process::Command::new(bin);
    command
        .args([
            "up",
            "--no-agent",
            "--mqtt",
            &mqtt.to_string(),
            "--http",
            &http.to_string(),
        ])
        .arg("--repo")
        .arg(&repo)
        .arg("--root")
        .arg(root.path().join("root"));
    quiet(&mut command);
    let _up = Child(command.spawn().unwrap());
    listening(mqtt).await;
    listening(http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut anchors, mut durables, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // A node of its own per round: each starts at seq 1.
        let node = Name::parse(&format!("outside{round}")).unwrap();
        let topic = format!("homelab/events/{node}");
        let payloads: Vec<String> = (1..=n).map(|seq| event(&node, seq).to_json()).collect();
        let received = count_received(broker_mqtt, &topic, true).await;
        let start = Instant::now();
        publish_windowed(
            broker_mqtt,
            &topic,
            payloads.clone(),
            WINDOW,
            received.clone(),
        )
        .await;
        all_received(&received, n, start).await;
        let anchor = n as f64 / start.elapsed().as_secs_f64();

        let acked = Arc::new(AtomicU64::new(0));
        let acked2 = acked.clone();
        let node_name = node.to_string();
        let waiter = tokio::spawn(async move {
            wait_ack(mqtt, &node_name, n, Duration::from_secs(300), acked.clone()).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        publish_windowed(mqtt, &topic, payloads, WINDOW, acked2).await;
        waiter.await.unwrap();
        let durable = n as f64 / start.elapsed().as_secs_f64();
        anchors.push(anchor);
        durables.push(durable);
        ratios.push(durable / anchor);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "from outside, {rounds} rounds of {n} events: `homelab up` durable {:>9.0} events/s   (anchor, `homelab broker` pass-through: {:>9.0} events/s; ratio {:.2}, rounds {lo:.2}..{hi:.2})",
        median(&mut durables),
        median(&mut anchors),
        median(&mut ratios),
    );
}

/// Whether the observer's log under `root` holds the event of `node` with
/// `data.i == i`.
fn logged_i(root: &std::path::Path, node: &str, i: u64) -> bool {
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let path = root
        .join("events")
        .join(day)
        .join(node)
        .join("events.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|e| e["data"]["i"] == i)
        })
}

/// Mosquitto killed and started again at once, `rounds` times, with
/// `homelab observer` and `homelab agent` as their own processes: time from
/// the restart until an event handed to the agent at that moment is in the
/// observer's log, next to the time until the restarted broker passes a
/// fresh client's message to itself (the anchor: the broker is back).
async fn broker_restart_recovery(rounds: u64) {
    if std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_err()
    {
        println!("broker restart recovery: skipped (mosquitto is not installed)");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_homelab");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("inventory")).unwrap();
    std::fs::write(repo.join("inventory/topology.yaml"), "nodes:\n  edge: {}\n").unwrap();
    let mqtt = free_addr();
    let broker_at = mqtt.to_string();
    let spawn = |args: &[&str]| {
        let mut command = std::process::Command::new(args[0]);
        command
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Child(command.spawn().unwrap())
    };
    let port = mqtt.port().to_string();
    let mut broker = spawn(&["mosquitto", "-p", &port]);
    listening(mqtt).await;
    let observer_root = dir.path().join("observer");
    let agent_root = dir.path().join("agent");
    let (observer_root_s, agent_root_s, repo_s) = (
        observer_root.display().to_string(),
        agent_root.display().to_string(),
        repo.display().to_string(),
    );
    let no_docker = format!("unix://{}/none.sock", dir.path().display());
    let _observer = spawn(&[
        bin,
        "observer",
        "--broker",
        &broker_at,
        "--root",
        &observer_root_s,
        "--repo",
        &repo_s,
    ]);
    let _agent = spawn(&[
        bin,
        "agent",
        "--broker",
        &broker_at,
        "--node",
        "edge",
        "--root",
        &agent_root_s,
        "--docker-host",
        &no_docker,
    ]);
    let emit = |i: u64| {
        let data = format!("{{\"i\":{i}}}");
        let out = std::process::Command::new(bin)
            .args([
                "emit",
                "--node",
                "edge",
                "--type",
                "bench",
                "--root",
                &agent_root_s,
                "--data",
                &data,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let wait_logged = |i: u64| {
        let observer_root = observer_root.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !logged_i(&observer_root, "edge", i) {
                assert!(Instant::now() < deadline, "event {i} never logged");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    emit(0);
    wait_logged(0).await;
    let mut recovered = Vec::new();
    let mut anchor = Vec::new();
    for i in 1..=rounds {
        drop(broker); // SIGKILL: sessions and queues are gone
        broker = spawn(&["mosquitto", "-p", &port]);
        let restarted = Instant::now();
        emit(i);
        // The anchor: a fresh client's message passes the broker again.
        loop {
            let mut options =
                MqttOptions::new(format!("bench-probe-{i}"), "127.0.0.1", mqtt.port());
            options.set_keep_alive(Duration::from_secs(5));
            let (client, mut eventloop) = AsyncClient::new(options, 10);
            client
                .subscribe("bench/probe", QoS::AtLeastOnce)
                .await
                .unwrap();
            client
                .publish("bench/probe", QoS::AtLeastOnce, false, "x")
                .await
                .unwrap();
            let passed = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match eventloop.poll().await {
                        Ok(MqttEvent::Incoming(Packet::Publish(_))) => return true,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await;
            if passed == Ok(true) {
                anchor.push(restarted.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wait_logged(i).await;
        recovered.push(restarted.elapsed());
    }
    let ms = |mut v: Vec<Duration>| {
        v.sort();
        (
            v[v.len() / 2].as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3,
        )
    };
    let (median, max) = ms(recovered);
    let (anchor_median, anchor_max) = ms(anchor);
    println!(
        "Mosquitto killed and restarted, {rounds} times: event handed over at the restart is in the log after median {median:.0} ms, max {max:.0} ms   (anchor, the broker passes a fresh client's message: median {anchor_median:.0} ms, max {anchor_max:.0} ms)"
    );
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

/// A slow link, emulated in user space (this kernel has no netem): each
/// direction serializes bytes at `rate` (bytes/s) through a queue of at
/// most `queue` bytes, then delays them by `delay` (propagation). A full
/// queue stops reading from the sender (its TCP buffers then fill and its
/// writes wait), as a router's would. Counts the bytes each way: MQTT's
/// bytes, without TCP/IP headers.
struct SlowLink {
    addr: std::net::SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl SlowLink {
    async fn start(
        target: std::net::SocketAddr,
        rate: f64,
        delay: Duration,
        queue: usize,
    ) -> SlowLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up2, down2) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(SlowLink::direction(cr, sw, rate, delay, queue, up2.clone()));
                tokio::spawn(SlowLink::direction(
                    sr,
                    cw,
                    rate,
                    delay,
                    queue,
                    down2.clone(),
                ));
            }
        });
        SlowLink { addr, up, down }
    }

    async fn direction(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        rate: f64,
        delay: Duration,
        queue: usize,
        count: Arc<AtomicU64>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((at, bytes)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let mut departs = tokio::time::Instant::now();
        let mut buf = vec![0u8; 1448];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            count.fetch_add(n as u64, Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            departs = departs.max(now) + Duration::from_secs_f64(n as f64 / rate);
            if tx.send((departs + delay, buf[..n].to_vec())).is_err() {
                break;
            }
            // The queue holds what waits to depart: past its size, stop
            // reading until it has drained to it.
            let backlog = Duration::from_secs_f64(queue as f64 / rate);
            if departs > now + backlog {
                tokio::time::sleep_until(departs - backlog).await;
            }
        }
        drop(tx);
        let _ = writer.await;
    }
}

/// Bytes a plain TCP stream carries through the same link: the link's
/// capacity as this emulation gives it, the anchor of the replay's figure.
async fn slow_link_capacity(rate: f64, delay: Duration, queue: usize, bytes: usize) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let received = tokio::spawn(async move {
        let (mut stream, _) = sink.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < bytes {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        Instant::now()
    });
    let link = SlowLink::start(sink_addr, rate, delay, queue).await;
    let mut stream = tokio::net::TcpStream::connect(link.addr).await.unwrap();
    let start = Instant::now();
    let chunk = vec![7u8; 16384];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        stream.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    let done = received.await.unwrap();
    bytes as f64 / (done - start).as_secs_f64()
}

/// Replay after an outage over an LTE-like link (1 Mbit/s each way, 300 ms
/// round trip, a 64 KiB queue): an agent starts with `n` events in its
/// outbox; events/s until the observer's watermark covers them, and the
/// bytes each way per event, next to what a plain TCP stream carries
/// through the same link in the same run.
async fn replay_over_a_slow_link(n: u64) {
    const RATE: f64 = 125_000.0; // 1 Mbit/s
    const DELAY: Duration = Duration::from_millis(150);
    const QUEUE: usize = 64 * 1024;
    let capacity = slow_link_capacity(RATE, DELAY, QUEUE, 1_000_000).await;
    let plant = plant().await;
    let link = SlowLink::start(plant.mqtt, RATE, DELAY, QUEUE).await;
    let node = Name::parse("lte").unwrap();
    let agent_root = tempfile::tempdir().unwrap();
    let layout = Layout::new(agent_root.path());
    let stored: u64 = {
        let outbox =
            homelab_agent::outbox::Outbox::open(&layout.agent_dir(&node), node.clone(), u64::MAX)
                .unwrap();
        let events: Vec<Event> = (0..n).map(|i| event(&node, i)).collect();
        let size = events.iter().map(|e| e.to_json().len() as u64).sum::<u64>() / n;
        outbox.push_batch(events).unwrap();
        size
    };
    let mut config = homelab_agent::Config::new(node.clone(), &link.addr.to_string(), layout);
    config.docker_host = Some(format!("unix://{}/none.sock", agent_root.path().display()));
    let shutdown = CancellationToken::new();
    let waiter = tokio::spawn(wait_ack(
        plant.mqtt,
        "lte",
        n,
        Duration::from_secs(900),
        Arc::default(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    tokio::spawn(homelab_agent::run(config, shutdown.clone()));
    waiter.await.unwrap();
    let took = start.elapsed().as_secs_f64();
    let (up, down) = (
        link.up.load(Ordering::Relaxed) as f64,
        link.down.load(Ordering::Relaxed) as f64,
    );
    let rate = n as f64 / took;
    let per_event = up / n as f64;
    println!(
        "replay over a 1 Mbit/s, 300 ms RTT link ({n} events of {stored} bytes): {rate:>6.0} events/s; {per_event:.0} bytes up and {:.0} down per event (MQTT, without TCP/IP); up {:.0} bytes/s",
        down / n as f64,
        up / took
    );
    println!(
        "  anchor, a plain TCP stream through the same link: {capacity:>6.0} bytes/s = {:.0} events/s at {per_event:.0} bytes each; ratio {:.2} (goal 0.8)",
        capacity / per_event,
        (up / took) / capacity
    );
    shutdown.cancel();
    plant.shutdown.cancel();
}

/// `agents` agents, each with `backlog` events in its outbox, reconnect
/// together (a site's uplink comes back); time until the observer's
/// watermark of every one covers its whole backlog.
async fn fleet_replay(agents: usize, backlog: u64) {
    let plant = plant().await;
    let dir = tempfile::tempdir().unwrap();
    let mut configs = Vec::new();
    for a in 0..agents {
        let node = Name::parse(&format!("edge-{a}")).unwrap();
        let layout = Layout::new(dir.path().join(node.as_str()));
        let outbox =
            homelab_agent::outbox::Outbox::open(&layout.agent_dir(&node), node.clone(), u64::MAX)
                .unwrap();
        outbox
            .push_batch((0..backlog).map(|i| event(&node, i)).collect())
            .unwrap();
        drop(outbox);
        let mut config = homelab_agent::Config::new(node, &plant.mqtt.to_string(), layout);
        config.docker_host = Some(format!("unix://{}/none.sock", dir.path().display()));
        configs.push(config);
    }
    // Every node's watermark, from one subscriber.
    let mut options = MqttOptions::new("bench-fleet-acks", "127.0.0.1", plant.mqtt.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("homelab/acks/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Ok(MqttEvent::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    for config in configs {
        tokio::spawn(homelab_agent::run(config, shutdown.clone()));
    }
    let mut done = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while done.len() < agents {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => {
                // `42`, or `42 <signature>` in fleet mode.
                let got: u64 = String::from_utf8_lossy(&p.payload)
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0);
                if got >= backlog {
                    done.insert(p.topic.clone());
                }
            }
            Ok(_) => {}
            Err(_) => panic!("{} of {agents} agents drained within 600 s", done.len()),
        }
    }
    let took = start.elapsed();
    let total = agents as u64 * backlog;
    println!(
        "{agents} agents x {backlog}-event backlogs reconnecting together: drained in {:.2} s ({:>7.0} events/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    shutdown.cancel();
    plant.shutdown.cancel();
}

async fn agent_idle_rss() {
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let docker = if std::path::Path::new("/var/run/docker.sock").exists() {
        "watching Docker"
    } else {
        "no Docker"
    };
    // Both at once, so both see the same machine.
    let programs = [
        ("homelab-agent", env!("CARGO_BIN_EXE_homelab-agent"), vec![]),
        (
            "homelab agent",
            env!("CARGO_BIN_EXE_homelab"),
            vec!["agent"],
        ),
    ];
    let roots: Vec<_> = programs
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut children: Vec<_> = programs
        .iter()
        .zip(&roots)
        .enumerate()
        .map(|(i, ((_, program, sub), root))| {
            std::process::Command::new(program)
                .args(sub)
                .args(["--node", &format!("idle{i}"), "--broker", &mqtt.to_string()])
                .arg("--root")
                .arg(root.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    for ((name, _, _), child) in programs.iter().zip(&children) {
        let field = |key: &str| proc_status(child.id(), key);
        println!(
            "agent idle RSS, {name:<14} ({docker}, after 8 s): {:>9}  (anonymous {}, file-backed {})",
            field("VmRSS:"),
            field("RssAnon:"),
            field("RssFile:")
        );
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Clock ticks of CPU a process has used: (its own, its waited-for
/// children's), from /proc/<pid>/stat.
fn proc_cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some((fields[0] + fields[1], fields[2] + fields[3]))
}

/// One field of /proc/<pid>/status (`key` with its colon), "?" if unread.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Removes the bench's containers, also when the bench panics.
struct Containers(&'static str);

impl Drop for Containers {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label={}", self.0)])
            .output();
        let ids = out
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

/// The agent idle on a node with 100 containers and 20 health checks
/// (default 30 s interval, `exit 0` scripts), connected to a broker and an
/// observer that acknowledges its events: CPU share over a window and RSS,
/// next to the same binary on the same Docker with no checks, and
/// dockerd's own CPU in the same window.
async fn agent_idle_cpu() {
    const LABEL: &str = "homelab.bench=idle";
    const CONTAINERS: usize = 100;
    const CHECKS: usize = 20;
    let window = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let image = "homelab-test/busybox:latest";
    let have_image = std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_image {
        println!("agent idle CPU: skipped (no Docker or no {image}; run .ci/test-image)");
        return;
    }
    let guard = Containers(LABEL);
    drop(Containers(LABEL)); // leftovers of an interrupted run
    let started = Instant::now();
    let handles: Vec<_> = (0..CONTAINERS)
        .collect::<Vec<_>>()
        .chunks(CONTAINERS / 4)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for i in chunk {
                    let ok = std::process::Command::new("docker")
                        .args(["run", "-d", "--label", LABEL, "--label"])
                        .arg(format!("com.docker.compose.service=svc{:02}", i % 50))
                        .args(["--name", &format!("homelab-bench-idle-{i}"), image])
                        .args(["sleep", "86400"])
                        .stdout(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    assert!(ok, "docker run failed");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    println!(
        "agent idle CPU: {CONTAINERS} containers started in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let plant = plant().await;
    let runs = tempfile::tempdir().unwrap();
    let script = format!(
        "echo x >> {}/runs-$HOMELAB_SERVICE\nexit 0\n",
        runs.path().display()
    );
    let checked = Name::parse("idle-checks").unwrap();
    let mut desired = homelab_core::desired::Desired::default();
    let mut scripts = std::collections::BTreeMap::new();
    let mut services = std::collections::BTreeMap::new();
    for i in 0..CHECKS {
        let service = Name::parse(&format!("svc{i:02}")).unwrap();
        services.insert(service.clone(), Default::default());
        desired.services.insert(
            service.clone(),
            homelab_core::desired::ServiceDef {
                healthcheck: Some(homelab_core::desired::Healthcheck {
                    script: "healthcheck.sh".into(),
                    interval: None,
                    timeout: None,
                    retries: None,
                }),
                ..Default::default()
            },
        );
        scripts.insert(service, script.clone());
    }
    desired.hosts.insert(checked.clone(), services);
    let config = homelab_core::nodeconfig::NodeConfig::build(&checked, &desired, &scripts);
    assert_eq!(config.healthchecks.len(), CHECKS);
    let interval = config.healthchecks[0].interval_secs;
    let (client, _) = probe_client(plant.mqtt, None).await;
    client
        .publish(
            homelab_core::Topics::default().node_config(&checked),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&config).unwrap(),
        )
        .await
        .unwrap();

    let bin = env!("CARGO_BIN_EXE_homelab-agent");
    let agents: Vec<(String, tempfile::TempDir)> = ["idle-checks", "idle-bare"]
        .iter()
        .map(|n| (n.to_string(), tempfile::tempdir().unwrap()))
        .collect();
    let children: Vec<Child> = agents
        .iter()
        .map(|(node, root)| {
            Child(
                std::process::Command::new(bin)
                    .args(["--node", node, "--broker", &plant.mqtt.to_string()])
                    .arg("--root")
                    .arg(root.path())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Past the first full sync (an inspect per container) and the first
    // round of checks.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let dockerd = std::process::Command::new("pidof")
        .arg("dockerd")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        });
    let count_runs = || -> usize {
        std::fs::read_dir(runs.path())
            .map(|d| {
                d.flatten()
                    .map(|f| {
                        std::fs::read_to_string(f.path())
                            .unwrap_or_default()
                            .lines()
                            .count()
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    let before: Vec<_> = pids.iter().map(|p| proc_cpu_ticks(*p).unwrap()).collect();
    let dockerd_before = dockerd.and_then(proc_cpu_ticks);
    let runs_before = count_runs();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let after: Vec<_> = pids.iter().map(|p| proc_cpu_ticks(*p).unwrap()).collect();
    let dockerd_after = dockerd.and_then(proc_cpu_ticks);
    let runs_in_window = count_runs() - runs_before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = |ticks: u64| 100.0 * ticks as f64 / hz / elapsed;
    for (i, (node, _)) in agents.iter().enumerate() {
        let own = after[i].0 - before[i].0;
        let scripts = after[i].1 - before[i].1;
        println!(
            "agent idle, {node:<12} ({CONTAINERS} containers{}): CPU {:.3}% of a core, with its scripts {:.3}%; RSS {}",
            if i == 0 { format!(", {CHECKS} checks every {interval} s") } else { String::new() },
            share(own),
            share(own + scripts),
            proc_status(pids[i], "VmRSS:"),
        );
    }
    println!(
        "  anchor, same {:.0} s window: dockerd CPU {}; health check runs {runs_in_window} (expected about {:.0})",
        elapsed,
        match (dockerd_before, dockerd_after) {
            (Some(b), Some(a)) => format!("{:.3}% of a core", share(a.0 - b.0)),
            _ => "not visible from here".to_string(),
        },
        CHECKS as f64 * elapsed / interval as f64,
    );
    drop(children);
    drop(guard);
    plant.shutdown.cancel();
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The observer's start on a log of `n` events (100 nodes, 10 days): the
/// first start replays it all (and writes the checkpoint), the next one
/// starts from the checkpoint.
fn observer_start(n: u64) {
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let nodes = 100u64;
    let days = 10u64;
    let per_file = n / nodes / days;
    let start = Instant::now();
    for d in 0..days {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap() + chrono::Days::new(d);
        for i in 0..nodes {
            let node = Name::parse(&format!("node-{i}")).unwrap();
            let path = layout.event_log(date, &node);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut text = String::with_capacity(per_file as usize * 320);
            for k in 0..per_file {
                let mut e = event(&node, d * per_file + k + 1);
                e.ts = date.and_hms_opt(12, 0, 0).unwrap().and_utc();
                text += &e.to_json();
                text.push('\n');
            }
            std::fs::write(path, text).unwrap();
        }
    }
    let written = start.elapsed();
    // Bytes per million events on disk, plain and as retention compresses
    // them (zstd level 3, one file per node and day).
    let (mut raw, mut packed) = (0u64, 0u64);
    for (path, len) in homelab_core::eventlog::files(&layout).unwrap() {
        raw += len;
        let text = std::fs::read(&path).unwrap();
        packed += zstd::encode_all(&text[..], 3).unwrap().len() as u64;
    }
    let total = per_file * nodes * days;
    println!(
        "event log on disk per million events: {:.0} MB plain, {:.1} MB compressed ({:.1}x)",
        raw as f64 * 1e6 / total as f64 / 1e6,
        packed as f64 * 1e6 / total as f64 / 1e6,
        raw as f64 / packed as f64
    );
    let config = homelab_observer::Config {
        broker: "127.0.0.1:1".into(),
        layout: layout.clone(),
        topics: homelab_core::Topics::default(),
        repo: None,
        retention: Default::default(),
        feed: None,
        fleet: None,
        home_assistant: None,
    };
    let rss0 = rss_kb();
    let start = Instant::now();
    let full = homelab_observer::recover(config.clone()).unwrap();
    let full_took = start.elapsed();
    let rss1 = rss_kb();
    let start = Instant::now();
    let again = homelab_observer::recover(config).unwrap();
    let again_took = start.elapsed();
    assert!(again.from_checkpoint && !full.from_checkpoint);
    println!(
        "observer start, {} events in the log ({:.1} s to write): from the checkpoint {:.3} s (read {} events)   (anchor, full replay: {:.2} s; ids kept {}, RSS grew {} MB)",
        per_file * nodes * days,
        written.as_secs_f64(),
        again_took.as_secs_f64(),
        again.events,
        full_took.as_secs_f64(),
        full.ids,
        rss1.saturating_sub(rss0) / 1024,
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

async fn probe_client(
    mqtt: std::net::SocketAddr,
    sub: Option<&str>,
) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let mut options = MqttOptions::new(
        format!("bench-{}", homelab_core::event::new_id()),
        "127.0.0.1",
        mqtt.port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    // As our agents connect (homelab-mqtt): no Nagle delay.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(_))) => {
                    let _ = tx.send(());
                }
                Ok(MqttEvent::Incoming(Packet::ConnAck(_) | Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    ready_rx.recv().await;
    if let Some(topic) = sub {
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        ready_rx.recv().await;
    }
    (client, rx)
}

/// Event published → pending action file, through the whole system.
async fn event_to_action(samples_n: usize) {
    let repo = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let services: Vec<String> = (0..samples_n).map(|i| format!("svc-{i}")).collect();
    let mut yaml = String::from("services:\n");
    for s in &services {
        yaml += &format!("  {s}: {{grace_period: 0s}}\n");
        let def = repo.path().join("services").join(s).join("service.yaml");
        std::fs::create_dir_all(def.parent().unwrap()).unwrap();
        std::fs::write(def, "").unwrap();
    }
    std::fs::create_dir_all(repo.path().join("inventory")).unwrap();
    std::fs::write(
        repo.path().join("inventory/topology.yaml"),
        "nodes:\n  n1: {}\n",
    )
    .unwrap();
    std::fs::create_dir_all(repo.path().join("hosts/n1")).unwrap();
    std::fs::write(repo.path().join("hosts/n1/services.yaml"), yaml).unwrap();
    let (mqtt, http) = (free_addr(), free_addr());
    let config = homelab::UpConfig {
        root: root.path().to_path_buf(),
        repo: repo.path().to_path_buf(),
        mqtt,
        mqtts: None,
        http,
        topics: homelab_core::Topics::default(),
        agent_node: None,
        ui_token: Some("bench".into()),
        command_timeout: std::time::Duration::from_secs(300),
        repo_sync: None,
        internal_mqtt: None,
        default_grace: Duration::ZERO,
        agent: Default::default(),
        retention: Default::default(),
        home_assistant: None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(homelab::up(config, shutdown.clone()));
    while std::net::TcpStream::connect(http).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (client, _) = probe_client(mqtt, None).await;

    // The anchor: the broker's own round trip, same client library.
    let (_sub, mut received) = probe_client(mqtt, Some("bench/echo")).await;
    let mut anchor = Vec::new();
    for _ in 0..samples_n {
        let start = Instant::now();
        client
            .publish("bench/echo", QoS::AtLeastOnce, false, vec![0u8; 600])
            .await
            .unwrap();
        received.recv().await.unwrap();
        anchor.push(start.elapsed());
    }

    let snapshot = |seq: u64, down: Option<&str>| {
        let containers: Vec<serde_json::Value> = services
            .iter()
            .map(|s| {
                let state = if Some(s.as_str()) == down { "exited" } else { "running" };
                json!({"id": s, "name": s, "service": s, "image": "i", "state": state, "status": state})
            })
            .collect();
        json!({"v": 1, "id": homelab_core::event::new_id(), "ts": homelab_core::time::format(&chrono::Utc::now()),
               "node": "n1", "seq": seq, "source": "node-agent", "type": "node_snapshot",
               "severity": "info", "message": "", "data": {"containers": containers}})
        .to_string()
    };
    client
        .publish("homelab/nodes/n1/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    let mut seq = 1;
    client
        .publish(
            "homelab/events/n1",
            QoS::AtLeastOnce,
            false,
            snapshot(seq, None),
        )
        .await
        .unwrap();
    let layout = Layout::new(root.path());
    while !layout.world_services().exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latency = Vec::new();
    let mut in_world = Vec::new();
    for service in &services {
        seq += 1;
        let id = Name::parse(&format!("container-restart-n1-{service}")).unwrap();
        let file = layout.action_file(homelab_core::ActionState::Pending, &id);
        let start = Instant::now();
        client
            .publish(
                "homelab/events/n1",
                QoS::AtLeastOnce,
                false,
                snapshot(seq, Some(service)),
            )
            .await
            .unwrap();
        let needle = format!("\"service\": \"{service}\",\n    \"status\": \"not_running\"");
        while !std::fs::read_to_string(layout.world_services())
            .unwrap_or_default()
            .contains(&needle)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "world never showed {service}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        in_world.push(start.elapsed());
        while !file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no action for {service}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        latency.push(start.elapsed());
        // Back up: the pending action is cancelled before the next one.
        seq += 1;
        client
            .publish(
                "homelab/events/n1",
                QoS::AtLeastOnce,
                false,
                snapshot(seq, None),
            )
            .await
            .unwrap();
        let cancelled = layout.action_file(homelab_core::ActionState::Cancelled, &id);
        while !cancelled.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{service} not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.supervisor_status()).unwrap_or_default())
            .unwrap_or_default();
    println!(
        "  (event -> world/services.json: p50 {:.1} ms, p99 {:.1} ms)",
        ms(percentile(&mut in_world, 0.5)),
        ms(percentile(&mut in_world, 0.99))
    );
    println!(
        "  (supervisor: {} passes, the last took {:.1} ms)",
        status["passes"],
        status["duration_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "event -> pending action file ({} services): p50 {:>6.1} ms, p99 {:>6.1} ms   (anchor, broker round trip: p50 {:.2} ms, p99 {:.2} ms)",
        samples_n,
        ms(percentile(&mut latency, 0.5)),
        ms(percentile(&mut latency, 0.99)),
        ms(percentile(&mut anchor, 0.5)),
        ms(percentile(&mut anchor, 0.99)),
    );
    shutdown.cancel();
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
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "start") {
        observer_start(
            std::env::var("BENCH_LOG_EVENTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2_000_000),
        );
        return;
    }
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "fleet") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(replay_after_outage(100_000));
        runtime.block_on(fleet_replay(100, 1_000));
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "ingest") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        if std::env::var("BENCH_NO_ANCHOR").is_err() {
            let anchor = runtime.block_on(broker_baseline(n));
            runtime.block_on(durable_floor(n, anchor));
        }
        runtime.block_on(observer_ingestion_signed_and_not(n));
        runtime.block_on(ingestion_from_outside(n));
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "fair") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(fairness_under_flood(200));
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "outside") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(ingestion_from_outside(n));
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "lte") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(replay_over_a_slow_link(2_000));
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "restart") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(broker_restart_recovery(10));
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "rss") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(agent_idle_rss());
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "idle") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(agent_idle_cpu());
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "latency") {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(event_to_action(100));
        return;
    }
    outbox_append();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let anchor = runtime.block_on(broker_baseline(n));
    runtime.block_on(durable_floor(n, anchor));
    runtime.block_on(observer_ingestion_signed_and_not(n));
    runtime.block_on(ingestion_from_outside(n));
    runtime.block_on(replay_after_outage(n));
    runtime.block_on(fairness_under_flood(200));
    runtime.block_on(replay_over_a_slow_link(2_000));
    runtime.block_on(fleet_replay(100, 1_000));
    runtime.block_on(agent_idle_rss());
    runtime.block_on(agent_idle_cpu());
    runtime.block_on(broker_restart_recovery(10));
    runtime.block_on(event_to_action(100));
    observer_start(
        std::env::var("BENCH_LOG_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000_000),
    );
}
