//! The operator's pages over real files (world state, actions, the event
//! log, a desired-state repo), called with `oneshot`: what each page tells
//! the operator, and that a guarded action is approved only with "I
//! understand" ticked.

use axum::http::{Method, StatusCode};
use axum::Router;
use chrono::{Duration, Utc};
use homelab_core::agentstatus::{DiskUse, Vitals};
use homelab_core::store::Move;
use homelab_core::{Action, ActionKind, ActionState, ActionStore, Layout, Name, Risk};
use homelab_ui::{app, history, AgentReport, AppState};

mod common;

const TOKEN: &str = "pages-test-token";
const CSRF: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

struct Site {
    _root: tempfile::TempDir,
    _repo: tempfile::TempDir,
    layout: Layout,
    state: AppState,
    app: Router,
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn ts(t: chrono::DateTime<Utc>) -> String {
    homelab_core::time::format(&t)
}

/// piha (online, vitals, one service down), chelsty (edge, offline, with
/// an outbox backlog), saturn (in the inventory, never reported).
fn site() -> Site {
    let root = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let write = |base: &std::path::Path, path: &str, text: &str| {
        let path = base.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        repo.path(),
        "inventory/topology.yaml",
        "nodes:\n  piha: {role: home-automation}\n  chelsty: {role: edge-lte, offline_first: true}\n  saturn: {role: server, description: Bulk storage}\n",
    );
    write(
        repo.path(),
        "hosts/piha/services.yaml",
        "services:\n  mosquitto: {}\n  zigbee: {}\n  grafana: {}\n",
    );
    write(
        repo.path(),
        "hosts/piha/capabilities.yaml",
        "disk: {high: 85, low: 75}\n",
    );
    write(
        repo.path(),
        "services/mosquitto/service.yaml",
        "description: a service\n",
    );
    write(
        repo.path(),
        "services/zigbee/service.yaml",
        "description: a service\n",
    );
    write(
        repo.path(),
        "services/grafana/service.yaml",
        "description: a service\n",
    );
    let layout = Layout::new(root.path());
    let now = Utc::now();
    let hour_ago = ts(now - Duration::hours(1));
    let day_ago = ts(now - Duration::days(1));
    let nodes = format!(
        r#"[{{"node":"piha","status":"online","since":"{day_ago}","first_seen":"{day_ago}","last_seen":"{hour_ago}","last_seq":9,"docker":"ok","containers":2}},
            {{"node":"chelsty","status":"offline","since":"{hour_ago}","first_seen":"{day_ago}","last_seen":"{hour_ago}","last_seq":4,"docker":"ok","containers":1}}]"#
    );
    let container = |name: &str, service: &str, state: &str, restarts: u64| {
        format!(
            r#"{{"id":"{name}","name":"{name}","service":"{service}","image":"registry.example/{service}:1","state":"{state}","status":"{state} for a while","restart_count":{restarts}}}"#
        )
    };
    let services = format!(
        r#"[{{"node":"piha","service":"mosquitto","status":"running","since":"{day_ago}","message":"mosquitto-1: running","containers":[{}]}},
            {{"node":"piha","service":"zigbee","status":"not_running","since":"{hour_ago}","message":"zigbee-1: exited (1)","containers":[{}]}},
            {{"node":"chelsty","service":"router","status":"running","since":"{day_ago}","message":"","containers":[{}]}}]"#,
        container("mosquitto-1", "mosquitto", "running", 0),
        container("zigbee-1", "zigbee", "exited", 7),
        container("router-1", "router", "running", 0),
    );
    let incidents = format!(
        r#"[{{"id":"service_not_running:piha:zigbee","kind":"service_not_running","node":"piha","service":"zigbee","severity":"warning","message":"zigbee-1: exited (1)","opened_at":"{hour_ago}"}},
            {{"id":"node_never_reported:saturn","kind":"node_never_reported","node":"saturn","severity":"warning","message":"saturn has never reported","opened_at":"{day_ago}"}}]"#
    );
    let resolved_open = ts(now - Duration::hours(5));
    let resolved_at = ts(now - Duration::hours(4));
    let history = format!(
        r#"[{{"id":"service_unhealthy:piha:mosquitto","kind":"service_unhealthy","node":"piha","service":"mosquitto","severity":"warning","message":"health check failed","opened_at":"{resolved_open}","resolved_at":"{resolved_at}"}}]"#
    );
    std::fs::create_dir_all(layout.world_dir()).unwrap();
    std::fs::write(layout.world_nodes(), nodes).unwrap();
    std::fs::write(layout.world_services(), services).unwrap();
    std::fs::write(layout.world_incidents(), incidents).unwrap();
    std::fs::write(layout.world_incident_history(), history).unwrap();

    // The event log: piha's events of today, one inside the resolved
    // incident's window.
    let mut log = String::new();
    let mut add =
        |at: chrono::DateTime<Utc>, id: &str, service: &str, kind: &str, sev: &str, msg: &str| {
            let day = at.date_naive();
            let path = layout.event_log(day, &name("piha"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let line = serde_json::json!({
                "v": 1, "id": id, "ts": ts(at), "node": "piha", "source": "node-agent",
                "type": kind, "service": service, "severity": sev, "message": msg,
            })
            .to_string();
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "{line}").unwrap();
            log += &line;
        };
    add(
        now - Duration::minutes(290),
        "ev-unhealthy",
        "mosquitto",
        "service_unhealthy",
        "warning",
        "health check failed",
    );
    add(
        now - Duration::minutes(245),
        "ev-recovered",
        "mosquitto",
        "service_recovered",
        "info",
        "health check passes",
    );
    add(
        now - Duration::minutes(60),
        "ev-zigbee",
        "zigbee",
        "containers_not_running",
        "warning",
        "zigbee-1 exited (1)",
    );

    // Actions: a guarded redeploy pending, a restart completed.
    let store = ActionStore::new(layout.clone());
    let redeploy = Action::new(
        ActionKind::Redeploy,
        name("piha"),
        Some(name("zigbee")),
        Risk::Guarded,
        "service_missing",
        "zigbee is not running",
        now - Duration::minutes(50),
    );
    store.create(&redeploy).unwrap();
    let restart = Action::new(
        ActionKind::ContainerRestart,
        name("piha"),
        Some(name("mosquitto")),
        Risk::Low,
        "containers_not_running",
        "exited (137)",
        now - Duration::hours(3),
    );
    store.create(&restart).unwrap();
    for (from, to, by) in [
        (ActionState::Pending, ActionState::Approved, "ui"),
        (ActionState::Approved, ActionState::Running, "executor"),
    ] {
        store
            .transition(
                &restart.id,
                Move {
                    from,
                    to,
                    by,
                    why: "step",
                    at: now - Duration::hours(3),
                    result: None,
                },
            )
            .unwrap();
    }
    store
        .transition(
            &restart.id,
            Move {
                from: ActionState::Running,
                to: ActionState::Completed,
                by: "executor",
                why: "agent answered",
                at: now - Duration::hours(3),
                result: Some(homelab_core::action::ActionResult {
                    ok: true,
                    message: "restarted mosquitto-1".into(),
                    at: now - Duration::hours(3),
                    data: serde_json::json!({"containers": ["mosquitto-1"]}),
                }),
            },
        )
        .unwrap();

    let mut state = AppState::new(layout.clone(), TOKEN.into());
    state.repo = Some(repo.path().to_path_buf());
    let vitals = Vitals {
        load: [0.42, 0.3, 0.2],
        memory_total_bytes: 4_000_000_000,
        memory_available_bytes: 1_000_000_000,
        uptime_secs: 1000,
        containers: vec![homelab_core::agentstatus::ContainerStats {
            name: "mosquitto-1".into(),
            cpu_pct: Some(12.5),
            memory_bytes: 150_000_000,
            memory_limit_bytes: Some(4_000_000_000),
        }],
        disks: vec![DiskUse {
            mount: "/".into(),
            used_pct: 93.0,
            free_bytes: 2_000_000_000,
        }],
    };
    state.agents.lock().unwrap().insert(
        name("piha"),
        AgentReport {
            vitals: Some(vitals.clone()),
            updated: Some(now),
            ..Default::default()
        },
    );
    state.agents.lock().unwrap().insert(
        name("chelsty"),
        AgentReport {
            outbox_events: 412,
            oldest_unacked: Some(now - Duration::hours(1)),
            updated: Some(now - Duration::hours(1)),
            ..Default::default()
        },
    );
    {
        let mut all = state.vitals.lock().unwrap();
        let day = all.entry(name("piha")).or_default();
        for minutes in (0..=120).rev().step_by(5) {
            let mut v = vitals.clone();
            v.load[0] = minutes as f64 / 60.0;
            history::record(
                day,
                history::Sample::of(&v, now - Duration::minutes(minutes)),
            );
        }
    }
    Site {
        _root: root,
        _repo: repo,
        layout,
        app: app(state.clone()),
        state,
    }
}

impl Site {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        cookie: bool,
        body: &str,
    ) -> (StatusCode, String, String) {
        let session = format!(
            "homelab_session={}; homelab_csrf={CSRF}",
            homelab_ui::websec::session_value(TOKEN)
        );
        let headers: &[(&str, &str)] = if cookie {
            &[
                ("cookie", &session),
                ("content-type", "application/x-www-form-urlencoded"),
                ("sec-fetch-site", "same-origin"),
            ]
        } else {
            &[]
        };
        let (status, headers, body) = common::call(&self.app, method, uri, headers, body).await;
        let location = headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, body, location)
    }

    async fn page(&self, uri: &str) -> String {
        let (status, body, _) = self.call(Method::GET, uri, true, "").await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        body
    }
}

/// The HTML of the element that opens with `id="<id>"`, up to `end`.
fn element<'a>(page: &'a str, id: &str, end: &str) -> &'a str {
    let start = page
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no {id}: {page}"));
    let stop = page[start..].find(end).map_or(page.len(), |e| start + e);
    &page[start..stop]
}

#[tokio::test]
async fn the_overview_answers_is_everything_fine_and_what_to_do() {
    let site = site();
    let page = site.page("/").await;
    assert!(
        page.contains("1 action waits for you, 2 nodes are not online, 2 services are not healthy, 2 incidents are open."),
        "the verdict: {page}"
    );
    // Worst first: chelsty offline, saturn never reported, piha online
    // with problems.
    let at = |id: &str| page.find(&format!("id=\"{id}\"")).unwrap();
    assert!(
        at("node-chelsty") < at("node-saturn") && at("node-saturn") < at("node-piha"),
        "the cards' order"
    );
    let piha = element(&page, "node-piha", "</article>");
    for part in [
        "✓</span> online",
        "home-automation",
        "✓</span> 1 healthy",
        // zigbee exited: stopped, not "unhealthy".
        r#"<span class="muted"><span aria-hidden="true">▲</span> 0 unhealthy</span>"#,
        r#"<span class="stopped"><span aria-hidden="true">■</span> 1 stopped</span>"#,
        // grafana is wanted on piha and never seen.
        "✗</span> 1 missing",
        "<dd>0.42</dd>",
        "75 % of 4.0 GB",
        r#"<dd class="warning">93 % (/, 2.0 GB free)</dd>"#,
    ] {
        assert!(piha.contains(part), "piha's card lacks {part}: {piha}");
    }
    assert!(!piha.contains("outbox"), "not an edge node: {piha}");
    let chelsty = element(&page, "node-chelsty", "</article>");
    for part in [
        "✗</span> offline",
        "stale: the last known state",
        "<b>412</b> events waiting",
        "oldest <time",
        "last delivery <time",
        "1 h ago",
    ] {
        assert!(
            chelsty.contains(part),
            "chelsty's card lacks {part}: {chelsty}"
        );
    }
    let saturn = element(&page, "node-saturn", "</article>");
    assert!(
        saturn.contains("never reported") && saturn.contains("1 d ago"),
        "{saturn}"
    );
    // The pending guarded redeploy, with what it will do and a confirm.
    let card = element(&page, "action-redeploy-piha-zigbee", "</article>");
    for part in [
        "guarded risk",
        "service_missing: zigbee is not running",
        "What will happen:</b> piha&#39;s agent redeploys zigbee",
        r#"name="confirm" value="yes" required"#,
        r#"formaction="/actions/redeploy-piha-zigbee/reject" formnovalidate"#,
        r#"name="back" value="/""#,
    ] {
        assert!(card.contains(part), "the action card lacks {part}: {card}");
    }
    let incidents = element(&page, "incidents", "</table>");
    assert!(
        incidents.contains("service_not_running:piha:zigbee")
            && incidents.contains("/incidents/service_not_running%3Apiha%3Azigbee"),
        "{incidents}"
    );
    // Without the session: the same page, no decision forms.
    let (_, anonymous, _) = site.call(Method::GET, "/", false, "").await;
    assert!(anonymous.contains(r#"id="login""#) && !anonymous.contains("class=\"decide\""));
}

#[tokio::test]
async fn the_services_matrix_filters() {
    let site = site();
    let page = site.page("/services").await;
    let matrix = element(&page, "matrix", "</table>");
    assert!(matrix.contains(r#"<th><a href="/nodes/chelsty">chelsty</a></th><th><a href="/nodes/piha">piha</a></th>"#), "{matrix}");
    // Worst first: zigbee (down on piha) above mosquitto and router.
    let row = |service: &str| matrix.find(&format!("<th>{service}</th>")).unwrap();
    assert!(row("zigbee") < row("mosquitto") && row("zigbee") < row("router"));
    let zigbee = matrix
        .lines()
        .find(|l| l.contains("<th>zigbee</th>"))
        .unwrap();
    assert!(
        zigbee.contains(r#"aria-label="not on this node""#)
            && zigbee.contains(r#"<td class="not_running" title="zigbee-1: exited (1)">"#),
        "zigbee is absent on chelsty and down on piha: {zigbee}"
    );
    // chelsty is offline: its router is last known running, as of when
    // chelsty was last seen, not "✓ running".
    let router = matrix
        .lines()
        .find(|l| l.contains("<th>router</th>"))
        .unwrap();
    assert!(
        router.contains(r#"<td class="last-known" title="last known: running; ">"#)
            && router.contains("<span class=\"muted\">last known</span><br>running 1 h ago")
            && !router.contains("✓"),
        "{router}"
    );
    let mosquitto = matrix
        .lines()
        .find(|l| l.contains("<th>mosquitto</th>"))
        .unwrap();
    assert!(
        mosquitto.contains(r#"<td class="running""#) && !mosquitto.contains("last known"),
        "piha is online: {mosquitto}"
    );
    let problems = site.page("/services?show=problems").await;
    let matrix = element(&problems, "matrix", "</table>");
    assert!(
        matrix.contains("<th>zigbee</th>")
            && !matrix.contains("<th>mosquitto</th>")
            && !matrix.contains("chelsty"),
        "{matrix}"
    );
    let found = site.page("/services?q=rout").await;
    let matrix = element(&found, "matrix", "</table>");
    assert!(
        matrix.contains("<th>router</th>") && !matrix.contains("<th>zigbee</th>"),
        "{matrix}"
    );
    let none = site.page("/services?q=nothing").await;
    assert!(none.contains("No service matches."));
    // The offline node's page says its containers are last known.
    let chelsty = site.page("/nodes/chelsty").await;
    assert!(
        chelsty.contains(r#"<p class="muted" id="last-known">Last known, as the node said 1 h ago: it is not online now.</p>"#)
            && chelsty.contains(r#"<table id="containers" class="stack last-known">"#),
        "{chelsty}"
    );
    let piha = site.page("/nodes/piha").await;
    assert!(!piha.contains("last-known"), "piha is online");
}

#[tokio::test]
async fn vitals_over_an_hour_a_day_or_a_week_with_values_on_hover() {
    let site = site();
    // piha's load fell from 2.0 two hours ago to 0.0 now, a sample per five
    // minutes; the disk is at 93 %.
    let hour = site.page("/nodes/piha?range=1h").await;
    assert!(hour.contains("<h2>Vitals, last hour</h2>"), "{hour}");
    assert!(hour.contains(r#"<a href="?range=1h#vitals" aria-current="page">last hour</a>"#));
    let vitals = element(&hour, "vitals", "<h2>Containers");
    // Load's scale fits the hour's highest (1.0 an hour ago).
    assert!(
        vitals.contains("load (1 min): <b>0.00</b> <span class=\"muted\">(scale 0.00–1.00)</span>"),
        "{vitals}"
    );
    // The disk's scale fits the figure and the thresholds, not 0–100.
    assert!(vitals.contains("(scale 70 %–100 %)"), "{vitals}");
    // Each strip says its time and figure for a hover or a tap.
    let zones = vitals.matches(r#"<rect class="zone""#).count();
    assert!(
        (30..=39).contains(&zones),
        "one per sample in the hour, in each of three charts: {zones}"
    );
    assert!(
        vitals.contains(r#"data-v=""#) && vitals.contains(" UTC: 93 %\""),
        "{vitals}"
    );
    let week = site.page("/nodes/piha?range=7d").await;
    assert!(week.contains("<h2>Vitals, last 7 days</h2>"), "{week}");
    // The week keeps each hour's highest: three hours of samples.
    let vitals = element(&week, "vitals", "<h2>Containers");
    assert!(vitals.contains("(scale 0.00–2.00)"), "{vitals}");
    let (status, body, _) = site
        .call(Method::GET, "/nodes/piha?range=2d", true, "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("1h, 24h, 7d"), "{body}");
}

#[tokio::test]
async fn a_node_page_has_its_containers_vitals_incidents_actions_and_events() {
    let site = site();
    let page = site.page("/nodes/piha").await;
    let containers = element(&page, "containers", "</table>");
    assert!(
        containers.contains("<td data-label=\"container\">zigbee-1</td><td data-label=\"service\">zigbee</td><td data-label=\"image\" class=\"image\">registry.example/zigbee:1</td><td data-label=\"state\" class=\"exited\">")
            && containers.contains(r#"<td data-label="restarts">7</td>"#),
        "{containers}"
    );
    // What the agent read of the running container; none of the stopped.
    assert!(
        containers.contains(r#"<td data-label="container">mosquitto-1</td>"#)
            && containers.contains(r#"<td data-label="CPU" class="nowrap">12.5 %</td><td data-label="memory" class="nowrap">150.0 MB of 4.0 GB</td>"#),
        "{containers}"
    );
    let vitals = element(&page, "vitals", "<h2>Containers");
    assert_eq!(
        vitals.matches("<svg").count(),
        3,
        "load, memory, disk: {vitals}"
    );
    assert!(
        vitals.contains("load (1 min): <b>0.00</b>") && vitals.contains("<polyline points=\""),
        "{vitals}"
    );
    assert!(
        page.contains("service_not_running:piha:zigbee")
            && page.contains("service_unhealthy:piha:mosquitto"),
        "open and resolved incidents"
    );
    assert!(
        page.contains("after 1 h"),
        "the resolved one lasted an hour: {page}"
    );
    assert!(
        page.contains(r#"href="/actions/container-restart-piha-mosquitto""#)
            && page.contains("restarted mosquitto-1")
    );
    let events = element(&page, "events", "</table>");
    assert!(
        events.contains("containers_not_running") && events.contains("service_recovered"),
        "{events}"
    );
    // The disk's thresholds drawn across its chart, from the node's
    // capabilities.
    assert!(
        vitals.contains(r#"class="mark"><title>cleanup at 85 %</title>"#)
            && vitals.contains(r#"class="mark"><title>clear at 75 %</title>"#),
        "{vitals}"
    );
    // chelsty has no vitals yet: said so.
    let chelsty = site.page("/nodes/chelsty").await;
    assert!(chelsty.contains("No vitals recorded yet"));
    let saturn = site.page("/nodes/saturn").await;
    assert!(saturn.contains("never reported") && saturn.contains("Bulk storage"));
}

#[tokio::test]
async fn the_actions_pages_show_the_queue_results_and_timelines() {
    let site = site();
    let page = site.page("/actions").await;
    assert!(element(&page, "pending", "</section>").contains("action-redeploy-piha-zigbee"));
    let finished = element(&page, "finished", "</table>");
    assert!(
        finished.contains(
            r#"<td data-label="state" class="completed nowrap"><span aria-hidden="true">✓</span> completed</td>"#
        ) && finished.contains("restarted mosquitto-1"),
        "{finished}"
    );
    let one = site.page("/actions/container-restart-piha-mosquitto").await;
    let timeline = element(&one, "timeline", "</ol>");
    let steps: Vec<&str> = ["pending", "approved</b>", "running</b>", "completed</b>"]
        .into_iter()
        .filter(|s| timeline.contains(s))
        .collect();
    assert_eq!(steps.len(), 4, "{timeline}");
    assert!(timeline.contains("by executor: agent answered"));
    assert!(
        one.contains("restarted mosquitto-1") && one.contains("&#34;mosquitto-1&#34;"),
        "the result and its data: {one}"
    );
}

#[tokio::test]
async fn a_guarded_action_is_approved_from_the_page_only_when_confirmed() {
    let site = site();
    let approve = "/actions/redeploy-piha-zigbee/approve";
    let (status, body, _) = site
        .call(
            Method::POST,
            approve,
            true,
            &format!("csrf={CSRF}&note=&back=/actions"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("is guarded"), "{body}");
    let id = name("redeploy-piha-zigbee");
    assert!(site.state.store.find(&id).unwrap().unwrap().state == ActionState::Pending);
    // Ticked: approved, with the note, back to the page it came from.
    let (status, body, location) = site
        .call(
            Method::POST,
            approve,
            true,
            &format!("csrf={CSRF}&note=after+the+backup&confirm=yes&back=/actions"),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location, "/actions");
    assert!(site.layout.action_file(ActionState::Approved, &id).exists());
    let approved = site.state.store.find(&id).unwrap().unwrap();
    assert_eq!(approved.history.last().unwrap().why, "after the backup");
    // Somewhere else to go back to is not taken.
    for back in ["https://evil.example/", "//evil.example/x", "/\\evil"] {
        assert_eq!(homelab_ui::back_to(back), "/", "{back}");
    }
    assert_eq!(
        homelab_ui::back_to("/events?node=piha"),
        "/events?node=piha"
    );
}

#[tokio::test]
async fn incidents_active_and_resolved_with_their_timeline() {
    let site = site();
    let page = site.page("/incidents").await;
    assert!(element(&page, "active", "</table>").contains("service_not_running:piha:zigbee"));
    let resolved = element(&page, "resolved", "</table>");
    assert!(
        resolved.contains("service_unhealthy:piha:mosquitto") && resolved.contains("after 1 h"),
        "{resolved}"
    );
    let one = site
        .page("/incidents/service_unhealthy%3Apiha%3Amosquitto")
        .await;
    assert!(one.contains("resolved") && one.contains("health check failed"));
    // Its timeline: mosquitto's events between opening and resolution,
    // not zigbee's.
    let timeline = element(&one, "timeline-1", "</ol>");
    let unhealthy = timeline
        .find("service_unhealthy")
        .expect("the opening event");
    let recovered = timeline.find("service_recovered").expect("the recovery");
    assert!(unhealthy < recovered, "oldest first: {timeline}");
    assert!(!timeline.contains("zigbee"), "{timeline}");
}

#[tokio::test]
async fn the_events_page_filters_and_pages_back() {
    let site = site();
    let page = site.page("/events").await;
    let events = element(&page, "events", "</table>");
    assert_eq!(events.matches("<tr><td").count(), 3, "{events}");
    assert!(page.contains(r#"id="tail""#), "the newest page is live");
    let warnings = site.page("/events?severity=warning&node=piha").await;
    let events = element(&warnings, "events", "</table>");
    assert_eq!(events.matches("<tr><td").count(), 2, "{events}");
    assert!(!events.contains("service_recovered"));
    let one = site.page("/events?limit=1").await;
    let older = one
        .lines()
        .find(|l| l.contains(r#"id="older""#))
        .expect("a link to older events");
    assert!(
        older.contains("before=") && older.contains("before_id=ev-zigbee"),
        "{older}"
    );
    let href = older
        .split("href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let next = site.page(&format!("{href}&limit=1")).await;
    assert!(
        next.contains("service_recovered")
            && !next.contains("ev-zigbee")
            && !next.contains(r#"id="tail""#),
        "{next}"
    );
    // The API takes the same filter.
    let (status, body, _) = site
        .call(
            Method::GET,
            "/api/events?service=mosquitto&severity=warning",
            false,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], "ev-unhealthy");
}

/// A world file that stops parsing leaves its last good state on the
/// pages, and a banner names the file and the line; so does an unreadable
/// line of the event log.
#[tokio::test]
async fn problems_of_the_system_show_as_a_banner_with_file_and_line() {
    let site = site();
    let page = site.page("/").await;
    assert!(!page.contains(r#"id="system-problems""#), "{page}");
    std::fs::write(site.layout.world_services(), "[{\"node\": oops}]").unwrap();
    let day = Utc::now().date_naive();
    let log = site.layout.event_log(day, &name("piha"));
    // Today's log (just after midnight the fixture's events are all in
    // yesterday's, and today's is new).
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{torn\n").unwrap();
    site.state.tail.lock().unwrap().poll(&site.layout).unwrap();
    let page = site.page("/").await;
    let banner = element(&page, "system-problems", "</div>");
    assert!(
        banner.contains("services.json")
            && banner.contains("line 1 column 11")
            && banner.contains("last good state"),
        "{banner}"
    );
    assert!(
        banner.contains(&format!(
            "events/{}/piha/events.jsonl:",
            day.format("%Y-%m-%d")
        )),
        "{banner}"
    );
    // The last good services are still shown.
    assert!(element(&page, "node-piha", "</article>").contains("1 healthy"));
    let (status, _, _) = site.call(Method::GET, "/api/services", false, "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the API serves the last good state too"
    );
}

/// What "Copy for AI" copies: what is down and since when, the open
/// incidents, the pending action with what approving it does, and the
/// recent events that matter.
#[tokio::test]
async fn the_ai_context_says_what_is_down_what_waits_and_what_happened() {
    let site = site();
    let (status, text, _) = site.call(Method::GET, "/api/ai-context", false, "").await;
    assert_eq!(status, StatusCode::OK);
    for part in [
        "- piha/zigbee: not_running since ",
        "(zigbee-1: exited (1))",
        "- service_not_running:piha:zigbee [warning]",
        "- redeploy-piha-zigbee (pending): service_missing: zigbee is not running; approving it: piha's agent redeploys zigbee",
        "## Recent events (warning or worse, last 24 h, newest first)",
        "piha/zigbee containers_not_running [warning]: zigbee-1 exited (1)",
    ] {
        assert!(text.contains(part), "lacks {part:?}:\n{text}");
    }
    assert!(
        !text.contains("service_recovered"),
        "info events are left out:\n{text}"
    );
}

/// A node that reports but is not in the inventory (a local agent under
/// the machine's hostname) says so on its card, with the fix.
#[tokio::test]
async fn a_node_outside_the_inventory_says_how_to_fix_it() {
    let site = site();
    let nodes = std::fs::read_to_string(site.layout.world_nodes()).unwrap();
    let mut nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let mut laptop = nodes[0].clone();
    laptop["node"] = "laptop".into();
    nodes.as_array_mut().unwrap().push(laptop);
    std::fs::write(site.layout.world_nodes(), nodes.to_string()).unwrap();
    let page = site.page("/").await;
    let laptop = element(&page, "node-laptop", "</article>");
    assert!(
        laptop.contains(
            "Not in the inventory: add <code>laptop</code> to <code>inventory/topology.yaml</code>"
        ) && laptop.contains("<code>--node NAME</code>"),
        "{laptop}"
    );
    let piha = element(&page, "node-piha", "</article>");
    assert!(!piha.contains("Not in the inventory"), "{piha}");
}

/// Node snapshots (about half of a real log) are left out of the events
/// page unless asked for; any type can be left out.
#[tokio::test]
async fn the_events_page_leaves_out_snapshots_unless_asked() {
    let site = site();
    let now = Utc::now();
    let path = site.layout.event_log(now.date_naive(), &name("piha"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let line = serde_json::json!({
        "v": 1, "id": "ev-snapshot", "ts": ts(now - Duration::minutes(1)), "node": "piha",
        "seq": 99, "source": "node-agent", "type": "node_snapshot", "data": {"containers": []},
    });
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(file, "{line}").unwrap();
    let rows = |page: &str| {
        element(page, "events", "</table>")
            .matches("<tr><td")
            .count()
    };
    let page = site.page("/events").await;
    assert_eq!(rows(&page), 3, "the snapshot is left out");
    assert!(!page.contains("node_snapshot</td>"));
    let all = site.page("/events?snapshots=on").await;
    assert_eq!(rows(&all), 4);
    assert!(all.contains("node_snapshot</td>"));
    let by_type = site.page("/events?type=node_snapshot").await;
    assert_eq!(rows(&by_type), 1, "searched for by type");
    let fewer = site
        .page("/events?snapshots=on&exclude=node_snapshot,service_recovered")
        .await;
    assert_eq!(rows(&fewer), 2);
    let (status, body, _) = site
        .call(Method::GET, "/api/events?exclude=bad-type", false, "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The API leaves nothing out unless asked.
    let (_, body, _) = site.call(Method::GET, "/api/events", false, "").await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
}

/// The heading levels of a page, in order.
fn headings(page: &str) -> Vec<u8> {
    page.match_indices("<h")
        .filter_map(|(at, _)| {
            let level = page.as_bytes().get(at + 2)?;
            (b'1'..=b'6').contains(level).then(|| level - b'0')
        })
        .collect()
}

/// Every page's headings go h1 → h2 → h3, none skipped (one h1 first).
#[tokio::test]
async fn every_page_has_its_headings_in_order() {
    let site = site();
    for path in [
        "/",
        "/services",
        "/nodes/piha",
        "/nodes/chelsty",
        "/actions",
        "/actions/redeploy-piha-zigbee",
        "/actions/container-restart-piha-mosquitto",
        "/incidents",
        "/incidents/service_not_running:piha:zigbee",
        "/events",
        "/search?q=zigbee",
    ] {
        let page = site.page(path).await;
        let levels = headings(&page);
        assert_eq!(levels.first(), Some(&1), "{path}: {levels:?}");
        assert_eq!(
            levels.iter().filter(|l| **l == 1).count(),
            1,
            "{path}: {levels:?}"
        );
        for pair in levels.windows(2) {
            assert!(
                pair[1] <= pair[0] + 1,
                "{path}: a level skipped in {levels:?}"
            );
        }
    }
}

/// Search from every page: nodes, services, incidents and actions.
#[tokio::test]
async fn search_finds_nodes_services_incidents_and_actions() {
    let site = site();
    let overview = site.page("/").await;
    assert!(overview.contains(r#"<form method="get" action="/search" role="search""#));
    let page = site.page("/search?q=zigbee").await;
    let list = |id: &str| element(&page, id, "</ul>").to_string();
    assert!(
        list("hits-services").contains(r#"<a href="/nodes/piha">zigbee on piha</a>"#),
        "{page}"
    );
    assert!(
        list("hits-incidents").contains("zigbee on piha is not running"),
        "{page}"
    );
    assert!(
        list("hits-actions")
            .contains(r#"<a href="/actions/redeploy-piha-zigbee">Redeploy zigbee on piha</a>"#),
        "{page}"
    );
    assert!(
        !page.contains(r#"id="hits-nodes""#),
        "no node is called zigbee"
    );
    let chelsty = site.page("/search?q=CHELSTY+router").await;
    assert!(chelsty.contains("router on chelsty") && !chelsty.contains("zigbee on piha"));
    let storage = site.page("/search?q=bulk").await;
    assert!(
        element(&storage, "hits-nodes", "</ul>").contains(r#"<a href="/nodes/saturn">saturn</a>"#),
        "by its description: {storage}"
    );
    let none = site.page("/search?q=nothing-here").await;
    assert!(none.contains(r#"id="no-hits""#));
    let (status, _, _) = site
        .call(
            Method::GET,
            &format!("/search?q={}", "x".repeat(101)),
            false,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
