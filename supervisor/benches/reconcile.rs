//! One reconcile pass (`plan`) over 1,000 nodes x 50 services. Prints, does
//! not assert: `cargo bench -p homelab-supervisor --bench reconcile`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use homelab_core::desired::{Desired, NodeSpec, ServiceSpec, Topology};
use homelab_core::world::{DockerStatus, NodeState, NodeStatus, ServiceState, ServiceStatus};
use homelab_core::{Action, ActionKind, Event, Name, Risk, Severity};
use homelab_supervisor::plan::{plan, plan_for, Inputs, Scope, Settings};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (nodes_n, services_n) = (1_000, 50);
    let now = chrono::Utc::now();
    let long_ago = now - chrono::TimeDelta::hours(1);
    let name = |s: String| Name::parse(&s).unwrap();
    let mut desired = Desired {
        topology: Topology::default(),
        ..Default::default()
    };
    let mut nodes = Vec::new();
    let mut services = Vec::new();
    for n in 0..nodes_n {
        let node = name(format!("node-{n}"));
        desired
            .topology
            .nodes
            .insert(node.clone(), NodeSpec::default());
        let mut wanted = BTreeMap::new();
        for s in 0..services_n {
            let service = name(format!("svc-{s}"));
            wanted.insert(
                service.clone(),
                ServiceSpec {
                    monitor: s % 10 != 0,
                    ..Default::default()
                },
            );
            // Most run; some are down, unhealthy or missing.
            let status = match (n + s) % 20 {
                0 => None,
                1 => Some(ServiceStatus::NotRunning),
                2 => Some(ServiceStatus::Unhealthy),
                _ => Some(ServiceStatus::Running),
            };
            if let Some(status) = status {
                services.push(ServiceState {
                    node: node.clone(),
                    service,
                    status,
                    since: long_ago,
                    message: String::new(),
                    containers: vec![],
                });
            }
        }
        desired.hosts.insert(node.clone(), wanted);
        let status = if n % 50 == 0 {
            NodeStatus::Offline
        } else {
            NodeStatus::Online
        };
        nodes.push(NodeState {
            node,
            status,
            since: long_ago,
            first_seen: long_ago,
            last_seen: now,
            last_seq: 1,
            docker: DockerStatus::Ok,
            containers: services_n,
            uplink: Default::default(),
        });
    }
    // A realistic number of open actions.
    let open: Vec<Action> = (0..500)
        .map(|i| {
            Action::new(
                ActionKind::ContainerRestart,
                name(format!("node-{i}")),
                Some(name("svc-1".into())),
                Risk::Low,
                "r",
                "m",
                long_ago,
            )
        })
        .collect();
    // A day of the events the rules read: 20 per node.
    let kinds = [
        "containers_not_running",
        "service_recovered",
        "mqtt_unreachable",
        "disk_pressure",
        "ha_recorder_lag",
    ];
    let events: Vec<Event> = (0..nodes_n * 20)
        .map(|i| Event {
            v: 1,
            id: format!("e{i}"),
            ts: now - chrono::TimeDelta::seconds((i % 86_000) as i64),
            node: name(format!("node-{}", i % nodes_n)),
            seq: i as u64 + 1,
            source: "bench".into(),
            kind: kinds[i % kinds.len()].into(),
            service: Some(name(format!("svc-{}", i % services_n))),
            severity: Severity::Warning,
            message: String::new(),
            data: serde_json::json!({"level": if i % 7 == 0 { "high" } else { "low" }}),
        })
        .collect();
    let settings = Settings {
        default_grace: Duration::from_secs(30),
        ..Default::default()
    };
    let no_changes = std::collections::BTreeMap::new();
    let inputs = Inputs {
        desired: &desired,
        nodes: &nodes,
        services: &services,
        open: &open,
        finished: &[],
        events: &events,
        changes: &no_changes,
    };
    let mut times = Vec::new();
    let mut created = 0;
    for _ in 0..20 {
        let start = Instant::now();
        let p = plan(inputs, &settings, now);
        times.push(start.elapsed());
        created = p.create.len() + p.cancel.len() + p.approve.len() + p.alerts.len();
    }
    times.sort();
    println!(
        "full reconcile pass, {nodes_n} nodes x {services_n} services ({} service states, {} open actions, {} recent events, {created} changes): median {:.1} ms, max {:.1} ms",
        services.len(),
        open.len(),
        events.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
    // The pass one event triggers: only its node is judged.
    let mut scoped = Vec::new();
    for i in 0..200 {
        let scope = Scope::Nodes([name(format!("node-{}", i * 7 % nodes_n))].into());
        let start = Instant::now();
        let p = plan_for(inputs, &settings, now, &scope);
        scoped.push(start.elapsed());
        std::hint::black_box(p);
    }
    scoped.sort();
    println!(
        "one-node pass (what one event triggers), same inputs: median {:.2} ms, p99 {:.2} ms (full pass {:.1} ms)",
        scoped[scoped.len() / 2].as_secs_f64() * 1e3,
        scoped[scoped.len() * 99 / 100].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
    );
    // What the shell adds when the event changed a service: world/services.json
    // parsed again (it is cached while it does not change).
    let json = serde_json::to_vec(&services).unwrap();
    let start = Instant::now();
    for _ in 0..5 {
        std::hint::black_box(serde_json::from_slice::<Vec<ServiceState>>(&json).unwrap());
    }
    println!(
        "parse of world/services.json ({} KiB) when it changed: {:.1} ms",
        json.len() / 1024,
        start.elapsed().as_secs_f64() * 1e3 / 5.0
    );
}
