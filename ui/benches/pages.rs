//! The overview page (goal: p99 < 50 ms) and `/summary` (goal: p99 <
//! 20 ms), and the services matrix, a node page (status bars, vitals,
//! incidents, events), the actions and incidents pages, with 100 nodes x
//! 50 services and 30 days of history (a status history with outages
//! across the month, the incident history full, a month of event log
//! files, a week of vitals), under 20
//! concurrent clients over real HTTP on loopback: requests/s and latency
//! percentiles, next to `/healthz` measured the same way in the same run
//! (the anchor: what the server and the clients cost with no work).
//! Prints, does not assert: `cargo bench -p homelab-ui --bench pages`
//! (`BENCH_SECS`, default 5, per endpoint; `BENCH_ONLY=/services` for one
//! page).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homelab_core::world::{
    Container, DockerStatus, Incident, NodeState, NodeStatus, ServiceState, ServiceStatus,
};
use homelab_core::{Action, ActionKind, ActionStore, Layout, Name, Risk, Severity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 20;

fn write_world(layout: &Layout) {
    let now = chrono::Utc::now();
    let name = |s: String| Name::parse(&s).unwrap();
    let mut nodes = Vec::new();
    let mut services = Vec::new();
    let mut incidents = Vec::new();
    for n in 0..100 {
        let node = name(format!("node-{n}"));
        nodes.push(NodeState {
            node: node.clone(),
            status: if n % 17 == 0 {
                NodeStatus::Offline
            } else {
                NodeStatus::Online
            },
            since: now,
            first_seen: now,
            last_seen: now,
            last_seq: 1_000,
            docker: DockerStatus::Ok,
            containers: 50,
            uplink: Default::default(),
        });
        for s in 0..50 {
            let service = name(format!("svc-{s}"));
            let down = (n * 50 + s) % 97 == 0;
            services.push(ServiceState {
                node: node.clone(),
                service: service.clone(),
                status: if down {
                    ServiceStatus::NotRunning
                } else {
                    ServiceStatus::Running
                },
                since: now,
                message: format!("{service}-1: running"),
                containers: vec![Container {
                    id: format!("{n}-{s}"),
                    name: format!("{service}-1"),
                    service: service.clone(),
                    image: "registry.example/app:1.2.3".into(),
                    state: "running".into(),
                    status: "Up 3 hours".into(),
                    health: None,
                    restart_count: Some(0),
                    exit_code: None,
                }],
            });
            if down {
                incidents.push(Incident {
                    id: format!("service_not_running:{node}:{service}"),
                    kind: "service_not_running".into(),
                    node: node.clone(),
                    service: Some(service.clone()),
                    severity: Severity::Warning,
                    message: format!("{service}-1: exited (1)"),
                    opened_at: now,
                    count: None,
                    last_seen: None,
                    maintenance: None,
                    noticed_at: None,
                });
                let action = Action::new(
                    ActionKind::ContainerRestart,
                    node.clone(),
                    Some(service.clone()),
                    Risk::Low,
                    "containers_not_running",
                    "exited (1)",
                    now,
                );
                ActionStore::new(layout.clone()).create(&action).unwrap();
            }
        }
    }
    // 30 days of history: every node and a tenth of the services with an
    // outage a day, the incident history full, and a month of events.
    let month_ago = now - chrono::Duration::days(30);
    let mut tracks = Vec::new();
    let mut history = Vec::new();
    for n in 0..100 {
        let node = name(format!("node-{n}"));
        for day in 0..30 {
            let from = month_ago + chrono::Duration::days(day) + chrono::Duration::minutes(n);
            for s in (0..50).filter(|s| (s + day) % 10 == 0) {
                let service = name(format!("svc-{s}"));
                let incident = Incident {
                    id: format!("service_not_running:{node}:{service}"),
                    kind: "service_not_running".into(),
                    node: node.clone(),
                    service: Some(service.clone()),
                    severity: Severity::Warning,
                    message: format!("{service}-1: exited (1)"),
                    opened_at: from,
                    count: None,
                    last_seen: None,
                    maintenance: None,
                    noticed_at: Some(from),
                };
                history.push(homelab_core::world::ResolvedIncident {
                    incident,
                    resolved_at: from + chrono::Duration::minutes(7),
                });
            }
        }
    }
    history.sort_by_key(|r| r.resolved_at);
    homelab_core::uptime::record(&mut tracks, &history, now);
    let kept = history
        .len()
        .saturating_sub(homelab_core::world::HISTORY_KEPT);
    let history = history.split_off(kept);
    std::fs::create_dir_all(layout.world_dir()).unwrap();
    std::fs::write(
        layout.world_status_history(),
        serde_json::to_vec(&tracks).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.world_incident_history(),
        serde_json::to_vec(&history).unwrap(),
    )
    .unwrap();
    // A month of event log files: a snapshot an hour per node, and a few
    // service events.
    for day in 0..30 {
        let date = (month_ago + chrono::Duration::days(day)).date_naive();
        for n in 0..100 {
            let node = name(format!("node-{n}"));
            let path = layout.event_log(date, &node);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut lines = String::new();
            for hour in 0..24 {
                let ts = date.and_hms_opt(hour, 0, 0).unwrap().and_utc();
                let event = serde_json::json!({
                    "v": 1, "id": homelab_core::event::new_id(),
                    "ts": homelab_core::time::format(&ts), "node": node.as_str(),
                    "seq": day * 100 + hour as i64 + 1, "source": "agent",
                    "type": if hour % 6 == 0 { "service_recovered" } else { "node_snapshot" },
                    "service": if hour % 6 == 0 { Some("svc-1") } else { None },
                    "severity": "info", "message": "as usual", "data": {},
                });
                lines.push_str(&event.to_string());
                lines.push('\n');
            }
            std::fs::write(path, lines).unwrap();
        }
    }
    std::fs::write(layout.world_nodes(), serde_json::to_vec(&nodes).unwrap()).unwrap();
    std::fs::write(
        layout.world_services(),
        serde_json::to_vec(&services).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.world_incidents(),
        serde_json::to_vec(&incidents).unwrap(),
    )
    .unwrap();
}

/// One GET on a new connection; the time to the last byte.
async fn get(addr: std::net::SocketAddr, path: &str) -> Duration {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.unwrap();
    assert!(
        body.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    started.elapsed()
}

#[derive(Clone, Copy)]
struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(addr: std::net::SocketAddr, path: &'static str, secs: u64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..CLIENTS {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                times.push(get(addr, path).await);
            }
            times
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Figures {
        per_sec: times.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    write_world(&layout);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = homelab_ui::AppState::new(layout.clone(), "bench".into());
        // A week of node-1's vitals, a sample every 30 s.
        {
            let mut all = state.vitals.lock().unwrap();
            let history = all.entry(Name::parse("node-1").unwrap()).or_default();
            let start = chrono::Utc::now() - chrono::Duration::days(7);
            for i in 0..(7 * 2880) {
                let v = homelab_core::agentstatus::Vitals {
                    load: [(i % 100) as f64 / 50.0, 0.4, 0.3],
                    memory_total_bytes: 8_000_000_000,
                    memory_available_bytes: 3_000_000_000 + (i % 1000) * 1_000_000,
                    uptime_secs: 100_000,
                    containers: Vec::new(),
                    disks: vec![homelab_core::agentstatus::DiskUse {
                        mount: "/".into(),
                        used_pct: 55.0 + (i % 300) as f64 / 100.0,
                        free_bytes: 100_000_000_000,
                    }],
                };
                homelab_ui::history::record(
                    history,
                    homelab_ui::history::Sample::of(&v, start + chrono::Duration::seconds(30 * i as i64)),
                );
            }
        }
        // Every node's agent has reported its vitals.
        for n in 0..100 {
            let vitals = homelab_core::agentstatus::Vitals {
                load: [0.5, 0.4, 0.3],
                memory_total_bytes: 8_000_000_000,
                memory_available_bytes: 3_000_000_000,
                uptime_secs: 100_000,
                containers: Vec::new(),
                disks: vec![homelab_core::agentstatus::DiskUse {
                    mount: "/".into(),
                    used_pct: 55.0,
                    free_bytes: 100_000_000_000,
                }],
            };
            state.agents.lock().unwrap().insert(
                Name::parse(&format!("node-{n}")).unwrap(),
                homelab_ui::AgentReport {
                    vitals: Some(vitals),
                    updated: Some(chrono::Utc::now()),
                    ..Default::default()
                },
            );
        }
        let app = homelab_ui::app(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        // Warm up.
        for path in ["/", "/summary", "/healthz", "/services", "/nodes/node-1", "/nodes/node-1?range=7d", "/actions", "/incidents"] {
            get(addr, path).await;
        }
        println!("pages: 100 nodes x 50 services, 30 days of history, {CLIENTS} concurrent clients, {secs} s each, a new connection per request");
        // BENCH_ONLY=/services measures the anchor and that page alone.
        let only = std::env::var("BENCH_ONLY").ok();
        let anchor = load(addr, "/healthz", secs).await;
        for path in [
            "/healthz",
            "/summary",
            "/",
            "/services",
            "/nodes/node-1",
            "/nodes/node-1?range=7d",
            "/actions",
            "/incidents",
        ] {
            if only.as_deref().is_some_and(|o| o != path && path != "/healthz") {
                continue;
            }
            let f = if path == "/healthz" {
                anchor
            } else {
                load(addr, path, secs).await
            };
            let goal = match path {
                "/" => "; goal p99 < 50 ms",
                "/summary" => "; goal p99 < 20 ms",
                _ => "",
            };
            println!(
                "{path:<22} {:>8.0} requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({:.2} of /healthz's rate{goal})",
                f.per_sec,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                f.per_sec / anchor.per_sec,
            );
        }
    });
}
