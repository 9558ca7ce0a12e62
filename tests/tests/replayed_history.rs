//! An edge node's backlog replayed after an outage: its events carry their
//! own times, hours old, and arrive within a second. A service that went
//! down and came back while the node was away is in the incident history
//! with the events' times, not the replay's; one that is still down is
//! open since its event's time.

use std::time::Duration;

use homelab_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_backlog_keeps_its_incidents_and_their_times() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  edge1: {role: edge-lte}\n",
        ),
        (
            "hosts/edge1/services.yaml",
            "services:\n  app: {}\n  db: {}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    let now = chrono::Utc::now();
    let at =
        |minutes: i64| homelab_core::time::format(&(now - chrono::TimeDelta::minutes(minutes)));
    let backlog = [
        (180, snapshot(&[("app", "running"), ("db", "running")])),
        (120, snapshot(&[("app", "exited"), ("db", "running")])),
        (60, snapshot(&[("app", "running"), ("db", "exited")])),
    ];
    for (seq, (minutes, data)) in backlog.into_iter().enumerate() {
        let mut e = event("edge1", seq as u64 + 1, "node_snapshot", None, data);
        e["ts"] = at(minutes).into();
        probe.publish("homelab/events/edge1", e.to_string()).await;
    }
    wait_for("app's outage in the incident history", T, || async {
        read_json(&system.root().join("world/incident_history.json")).is_ok_and(|h| {
            h.as_array().into_iter().flatten().any(|i: &Value| {
                i["id"] == "service_not_running:edge1:app"
                    && i["opened_at"] == at(120).as_str()
                    && i["resolved_at"] == at(60).as_str()
            })
        })
    })
    .await;
    let open = read_json(&system.root().join("world/incidents.json")).unwrap();
    let db = open
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "service_not_running:edge1:db")
        .unwrap_or_else(|| panic!("db is down: {open}"));
    assert_eq!(db["opened_at"], at(60).as_str());
    // The page says so too: the resolved incident with its times.
    let (_, page) = system.get("/incidents").await;
    let row = page
        .split("<tr ")
        .find(|r| r.contains(r#"data-incident="service_not_running:edge1:app""#))
        .unwrap_or_else(|| panic!("app's incident on the page: {page}"));
    assert!(row.contains(&format!(r#"datetime="{}""#, at(120))), "{row}");
    // It reached the observer two hours after it began, and says so.
    assert!(
        row.contains("reported 2 h after it began: it came in a backlog"),
        "{row}"
    );
    system.stop().await.unwrap();
}

/// The rect of `row`'s bar (the first or second of the row: the day's or
/// the month's) whose class is `class`, as (its title).
fn bar_titles(page: &str, label: &str, class: &str, which: usize) -> Vec<String> {
    let table = page
        .split(r#"<table id="status""#)
        .nth(1)
        .unwrap_or_else(|| panic!("a status table: {page}"));
    let table = table.split("</table>").next().unwrap();
    let row = table
        .split("<tr")
        .find(|r| r.contains(&format!(r#"<td data-label="what">{label}</td>"#)))
        .unwrap_or_else(|| panic!("a status row for {label}: {table}"));
    let bar = row.split("<svg").nth(which + 1).expect("two bars");
    bar.split("<rect")
        .filter(|r| r.contains(&format!(r#"class="{class}""#)))
        .map(|r| {
            r.split("<title>")
                .nth(1)
                .unwrap()
                .split("</title>")
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A day of an edge node's events, replayed at once with their own times:
/// the node page's status bars show each outage where it happened, with
/// its length, and the day's uptime; a restart of the whole system counts
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_history_in_the_status_bars() {
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  edge1: {role: edge-lte}\n",
        ),
        (
            "hosts/edge1/services.yaml",
            "services:\n  app: {}\n  db: {}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    let now = chrono::Utc::now();
    // A snapshot every quarter of an hour for a day: app stopped from 20 h
    // to 18 h ago, db from 3 h to 2 h ago.
    let ago = |minutes: i64| now - chrono::TimeDelta::minutes(minutes);
    for (seq, minutes) in (0..96).rev().map(|q| q * 15 + 15).enumerate() {
        let app = if (18 * 60 + 1..=20 * 60).contains(&minutes) {
            "exited"
        } else {
            "running"
        };
        let db = if (2 * 60 + 1..=3 * 60).contains(&minutes) {
            "exited"
        } else {
            "running"
        };
        let mut e = event(
            "edge1",
            seq as u64 + 1,
            "node_snapshot",
            None,
            snapshot(&[("app", app), ("db", db)]),
        );
        e["ts"] = homelab_core::time::format(&ago(minutes)).into();
        probe.publish("homelab/events/edge1", e.to_string()).await;
    }
    let quarter = |t: chrono::DateTime<chrono::Utc>| {
        let secs = t.timestamp().div_euclid(900) * 900;
        chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .format("%H:%M")
            .to_string()
    };
    let app_down = format!("{}–", quarter(ago(20 * 60)));
    let db_down = format!("{}–", quarter(ago(3 * 60)));
    wait_for("both outages in the status bars", T, || async {
        let (_, page) = system.get("/nodes/edge1").await;
        page.contains(r#"<table id="status""#)
            && bar_titles(&page, "app", "down", 0).len() == 1
            && bar_titles(&page, "db", "down", 0).len() == 1
    })
    .await;
    let check = |page: &str| {
        let app = bar_titles(page, "app", "down", 0);
        assert!(
            app[0].starts_with(&app_down) && app[0].ends_with(": down 2 h"),
            "{app:?}"
        );
        let db = bar_titles(page, "db", "down", 0);
        assert!(
            db[0].starts_with(&db_down) && db[0].ends_with(": down 1 h"),
            "{db:?}"
        );
        // The node was degraded while they were down, and never down.
        assert_eq!(bar_titles(page, "edge1", "degraded", 0).len(), 2, "{page}");
        assert!(bar_titles(page, "edge1", "down", 0).is_empty());
        // The month: today and yesterday hold the outages; before the
        // node's first event, unknown.
        let month: Vec<String> = ["down", "up", "unknown"]
            .iter()
            .flat_map(|c| bar_titles(page, "app", c, 1))
            .collect();
        assert!(month.iter().any(|t| t.contains("down 2 h")), "{month:?}");
        assert!(
            !bar_titles(page, "app", "unknown", 1).is_empty(),
            "{month:?}"
        );
        // Uptime of the day: 2 h down of about 24.
        let row = page
            .split(r#"<td data-label="what">app</td>"#)
            .nth(1)
            .unwrap();
        let uptime = row
            .split(r#"<td data-label="uptime 24 h" class="nowrap">"#)
            .nth(1)
            .unwrap();
        assert!(uptime.starts_with("91."), "{}", &uptime[..20]);
    };
    let (_, page) = system.get("/nodes/edge1").await;
    check(&page);
    // The overview's card has the node's day.
    let (_, overview) = system.get("/").await;
    assert!(
        overview.contains(r#"aria-label="edge1, last 24 hours: 100 % up, worst degraded""#),
        "{overview}"
    );
    let system = system.restart().await;
    wait_for("the page after a restart", T, || async {
        system
            .get("/nodes/edge1")
            .await
            .1
            .contains(r#"<table id="status""#)
    })
    .await;
    let (_, page) = system.get("/nodes/edge1").await;
    check(&page);
    system.stop().await.unwrap();
}
