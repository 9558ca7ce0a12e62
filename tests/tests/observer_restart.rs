//! The observer restarted from its checkpoint: the same world, the same
//! watermark, and an event it stored before is still stored only once.

use std::time::Duration;

use homelab_core::{Layout, Topics};
use homelab_tests::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn start(
    mqtt: std::net::SocketAddr,
    root: &std::path::Path,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = homelab_observer::Config {
        broker: mqtt.to_string().into(),
        layout: Layout::new(root),
        topics: Topics::default(),
        repo: None,
        retention: Default::default(),
        feed: None,
        fleet: None,
        home_assistant: None,
    };
    let shutdown = CancellationToken::new();
    (
        shutdown.clone(),
        tokio::spawn(homelab_observer::run(config, shutdown)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_checkpoint_knows_what_it_knew() {
    init_logs();
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let (stop, task) = start(mqtt, root.path());
    let probe = Probe::connect(mqtt, &[]).await;
    let mut script = event("n1", 0, "backup_failed", None, json!({}));
    script["source"] = json!("backup");
    let log = |root: &std::path::Path| -> Vec<serde_json::Value> {
        let day = chrono::Utc::now().date_naive();
        let path = Layout::new(root).event_log(day, &homelab_core::Name::parse("n1").unwrap());
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // Published until stored: the observer may not be subscribed yet.
    wait_for("the script's event stored", T, || async {
        probe.publish("homelab/events/n1", script.to_string()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        log(root.path()).iter().any(|e| e["id"] == script["id"])
    })
    .await;
    for seq in 1..=30 {
        let e = event(
            "n1",
            seq,
            "node_snapshot",
            None,
            snapshot(&[("app", "running")]),
        );
        probe.publish("homelab/events/n1", e.to_string()).await;
    }
    let down = event("n1", 31, "containers_not_running", Some("app"), json!({}));
    probe.publish("homelab/events/n1", down.to_string()).await;
    let world_file = root.path().join("world/services.json");
    wait_for("31 events applied", T, || async {
        read_json(&root.path().join("world/nodes.json")).is_ok_and(|v| v[0]["last_seq"] == 31)
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let checkpoint = root.path().join("state/observer/checkpoint.json");
    assert!(checkpoint.exists(), "written on the way out");
    let before = read_json(&world_file).unwrap();

    let (stop, task) = start(mqtt, root.path());
    // The script's event again, and the node's next one.
    probe.publish("homelab/events/n1", script.to_string()).await;
    let next = event("n1", 32, "test_event", None, json!({}));
    probe.publish("homelab/events/n1", next.to_string()).await;
    wait_for("the next event logged", T, || async {
        log(root.path()).iter().any(|e| e["seq"] == 32)
    })
    .await;
    let logged = log(root.path());
    let copies = logged.iter().filter(|e| e["id"] == script["id"]).count();
    assert_eq!(copies, 1, "stored once across the restart");
    assert_eq!(read_json(&world_file).unwrap(), before, "the same services");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Old days of the log are compressed, older ones removed; what is
/// compressed still reads the same, and a restart does not replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_days_are_compressed_then_removed() {
    init_logs();
    let mqtt = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(mqtt)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let node = homelab_core::Name::parse("n1").unwrap();
    let today = chrono::Utc::now().date_naive();
    let write_day = |age: u64, events: u64| -> String {
        let day = today - chrono::Days::new(age);
        let path = layout.event_log(day, &node);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = String::new();
        for i in 0..events {
            let mut e = event(
                "n1",
                age * 1000 + i + 1,
                "test_event",
                None,
                json!({"i": i}),
            );
            e["seq"] = json!(0);
            e["ts"] = json!(format!("{day}T12:00:00.000Z"));
            text += &format!("{e}\n");
        }
        std::fs::write(&path, &text).unwrap();
        text
    };
    write_day(100, 5);
    let old = write_day(10, 200);
    write_day(0, 3);
    let (stop, task) = start(mqtt, root.path());
    let ten = today - chrono::Days::new(10);
    wait_for("the 10-day-old day compressed", T, || async {
        layout.event_log_compressed(ten, &node).exists() && !layout.event_log(ten, &node).exists()
    })
    .await;
    assert!(
        !layout
            .events_dir()
            .join((today - chrono::Days::new(100)).to_string())
            .exists(),
        "older than the retention: removed"
    );
    assert!(
        layout.event_log(today, &node).exists(),
        "today is left alone"
    );
    let compressed = std::fs::metadata(layout.event_log_compressed(ten, &node))
        .unwrap()
        .len();
    assert!(
        (compressed as usize) < old.len() / 3,
        "{compressed} bytes for {}",
        old.len()
    );
    // The same events read back, through the one reader everything uses.
    let mut read = Vec::new();
    let mut bad = Vec::new();
    homelab_core::eventlog::read_file(
        &layout.event_log_compressed(ten, &node),
        |e| read.push(e.data["i"].as_u64().unwrap()),
        &mut bad,
    )
    .unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(read, (0..200).collect::<Vec<_>>());
    stop.cancel();
    task.await.unwrap().unwrap();
    // A restart starts from the checkpoint, which knows the compressed day.
    let recovery = homelab_observer::recover(homelab_observer::Config {
        broker: mqtt.to_string().into(),
        layout: layout.clone(),
        topics: Topics::default(),
        repo: None,
        retention: Default::default(),
        feed: None,
        fleet: None,
        home_assistant: None,
    })
    .unwrap();
    assert!(recovery.from_checkpoint);
    assert_eq!(recovery.events, 0, "nothing replayed");
}
