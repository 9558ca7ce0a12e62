//! The page in a real browser: Debian's chromium, headless, driven by
//! chromedriver over WebDriver (fantoccini), in a phone's window (390 ×
//! 844). The operator logs in, a pending action appears without a reload,
//! is approved with its button, and is seen to complete; nothing runs off
//! the right edge. Screenshots go to `target/browser-artifacts/`.

use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use homelab_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, or `None` (skipped loudly; CI
/// installs it and must run this).
async fn driver() -> Option<(KillOnDrop, u16)> {
    let port = free_addr().port();
    let child = match Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "chromedriver is not installed (apt-get install chromium chromium-driver)"
            );
            eprintln!("\n*** SKIPPED: chromedriver is not installed ***\n");
            return None;
        }
    };
    let driver = KillOnDrop(child);
    wait_for("chromedriver listens", T, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Some((driver, port))
}

async fn browser(port: u16, width: u32, height: u32) -> Client {
    browser_with(port, width, height, &[]).await
}

/// A browser whose system is set to dark (Blink's preferred colour
/// scheme: 0 is dark).
async fn dark_browser(port: u16, width: u32, height: u32) -> Client {
    browser_with(
        port,
        width,
        height,
        &["--blink-settings=preferredColorScheme=0"],
    )
    .await
}

async fn browser_with(port: u16, width: u32, height: u32, extra: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ];
    args.extend_from_slice(extra);
    // The viewport by emulation: a desktop window cannot be made narrower
    // than about 500 px.
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": args,
            "mobileEmulation": {
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}
            },
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session")
}

/// The page's width against the window's: nothing may run off the edge.
async fn overflow(client: &Client) -> (u64, u64) {
    let sizes = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    (sizes[0].as_u64().unwrap(), sizes[1].as_u64().unwrap())
}

async fn screenshot(client: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(name), png).unwrap();
}

/// Polls the page until `check` holds for its source.
async fn page_shows(client: &Client, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let source = client.source().await.unwrap();
        if check(&source) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {what}:\n{source}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets a mark on the page's window: it survives live updates, and a
/// reload clears it.
async fn mark(client: &Client) {
    client
        .execute("window.__homelab_mark = 1; return true;", vec![])
        .await
        .unwrap();
}

async fn still_marked(client: &Client) -> bool {
    client
        .execute("return window.__homelab_mark === 1;", vec![])
        .await
        .unwrap()
        == Value::Bool(true)
}

/// Nothing runs off the right edge of a phone's window.
async fn fits(client: &Client, what: &str) {
    let (width, window) = overflow(client).await;
    assert_eq!(window, 390, "a phone's viewport");
    assert!(
        width <= window,
        "{what}: the page is {width} px wide in a {window} px window"
    );
}

/// Clicks what `css` finds. The page swaps its content in place on live
/// updates: an element found just before a swap is stale by the click, so
/// it is found again.
async fn click(client: &Client, css: &str) {
    for _ in 0..20 {
        let found = client.find(Locator::Css(css)).await;
        match found {
            Ok(element) => match element.click().await {
                Ok(_) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("click {css}: {e}"),
            },
            Err(e) => panic!("find {css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} went stale twenty times");
}

/// Logs in with the page's form as admin, with the operator token.
async fn log_in(client: &Client) {
    log_in_as(client, "admin", TOKEN).await;
}

/// Logs in with the page's form as `name`.
async fn log_in_as(client: &Client, name: &str, password: &str) {
    let field = |css: &'static str| client.find(Locator::Css(css));
    field("#login input[name=name]")
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    field("#login input[name=password]")
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(client, "#login button[type=submit]").await;
    page_shows(client, "the page logged in", |s| {
        s.contains(&format!(r#"<b id="operator">{name}</b>"#))
    })
    .await;
}

/// The highest `tick N` in the page's log.
async fn last_tick(client: &Client) -> u64 {
    let text = client
        .execute("return document.getElementById('log').textContent;", vec![])
        .await
        .unwrap();
    text.as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit("tick ").next()?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// A real container's logs through a real agent, in the browser: refused
/// before the operator logs in, the last lines after, then followed live
/// without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_and_follows_a_containers_logs() {
    let Some(docker) = docker().await else { return };
    let Some((_driver, port)) = driver().await else {
        return;
    };
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let service = format!("chat-{}", &tag[tag.len() - 8..]);
    let container = format!("homelab-test-{service}");
    let _removal = start_script_container(&docker, &container, &service, CHATTY).await;
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
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let client = browser(port, 1280, 900).await;
    let url = format!("http://{}", system.http);
    // The node page links the container's logs.
    client.goto(&format!("{url}/nodes/dockhost")).await.unwrap();
    page_shows(&client, "the container and its logs link", |s| {
        s.contains(&format!(r#"href="/nodes/dockhost/logs/{container}""#))
    })
    .await;
    click(
        &client,
        &format!("a[href='/nodes/dockhost/logs/{container}']"),
    )
    .await;
    page_shows(&client, "the refusal while logged out", |s| {
        s.contains("Log in to read container logs")
    })
    .await;
    assert!(!client
        .source()
        .await
        .unwrap()
        .contains("hello from the container"));
    log_in(&client).await;
    client
        .goto(&format!("{url}/nodes/dockhost/logs/{container}"))
        .await
        .unwrap();
    page_shows(&client, "the container's last lines", |s| {
        s.contains("hello from the container") && s.contains(r#"class="line stderr""#)
    })
    .await;
    screenshot(&client, "logs-1280.png").await;
    mark(&client).await;
    let before = last_tick(&client).await;
    click(&client, "#log-follow").await;
    let deadline = tokio::time::Instant::now() + T;
    while last_tick(&client).await < before + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new lines followed after tick {before}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(still_marked(&client).await, "followed without a reload");
    let state = client
        .execute(
            "return document.getElementById('log-state').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(state, "following…");
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_the_operator_logs_in_sees_an_action_arrive_and_approves_it() {
    let Some((_driver, port)) = driver().await else {
        return;
    };
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  n1: {role: server}\n  saturn: {role: edge}\n",
        ),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n  db: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let mut probe = Probe::connect(system.mqtt, &["homelab/commands/n1"]).await;
    probe
        .report("n1", "online", &[("app", "running"), ("db", "running")])
        .await;
    // n1's agent says how the node is: its vitals feed the card and the
    // node page's chart.
    probe
        .publish_retained("homelab/nodes/n1/agent", agent_status("n1", 0.61))
        .await;
    let client = browser(port, 390, 844).await;
    let url = format!("http://{}", system.http);
    client.goto(&format!("{url}/")).await.unwrap();
    page_shows(
        &client,
        "n1's card with its vitals and the node that never reported",
        |s| {
            s.contains(r#"id="node-n1""#)
                && s.contains("<dd>0.61</dd>")
                && s.contains(r#"id="node-saturn""#)
        },
    )
    .await;

    log_in(&client).await;

    // app goes down: the action appears on the open page, without a
    // reload (the mark set before survives).
    mark(&client).await;
    let id = "container-restart-n1-app";
    let down = event(
        "n1",
        2,
        "node_snapshot",
        None,
        snapshot(&[("app", "exited"), ("db", "running")]),
    );
    probe.publish("homelab/events/n1", down.to_string()).await;
    page_shows(&client, "the pending action", |s| {
        s.contains(&format!(r#"id="action-{id}""#)) && s.contains("What will happen:")
    })
    .await;
    assert!(
        still_marked(&client).await,
        "the action arrived without a reload"
    );
    fits(&client, "the overview").await;
    screenshot(&client, "overview-390.png").await;

    // Approve with its button; the command goes out; the agent's outcome
    // completes it, and the actions page shows that, live too.
    click(
        &client,
        &format!("#action-{id} form[action$='/approve'] button.approve"),
    )
    .await;
    let command = probe.expect("homelab/commands/n1", T, |_| true).await;
    let command: Value = serde_json::from_slice(&command).unwrap();
    assert_eq!(command["action_id"], id);
    client.goto(&format!("{url}/actions")).await.unwrap();
    page_shows(&client, "the action running", |s| {
        s.split(r#"id="running""#).nth(1).is_some_and(|table| {
            table
                .split("</table>")
                .next()
                .unwrap()
                .contains(&format!(r#"id="action-{id}""#))
                && table.contains(r#"class="running nowrap""#)
        })
    })
    .await;
    mark(&client).await;
    let done = outcome("n1", 3, "app", &command);
    probe.publish("homelab/events/n1", done.to_string()).await;
    page_shows(&client, "the action completed", |s| {
        s.split(&format!(r#"id="action-{id}""#))
            .nth(1)
            .is_some_and(|row| {
                row.split("</tr>")
                    .next()
                    .unwrap()
                    .contains(r#"class="completed nowrap""#)
            })
    })
    .await;
    assert!(still_marked(&client).await, "completed without a reload");
    let completed = read_json(&system.action_file("completed", id)).unwrap();
    assert!(
        completed["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "approved" && t["by"] == "admin"),
        "{completed}"
    );
    fits(&client, "the actions page").await;
    screenshot(&client, "actions-390.png").await;

    // n1's page: its containers and the day's vitals as a chart.
    client.goto(&format!("{url}/nodes/n1")).await.unwrap();
    page_shows(&client, "n1's containers and vitals chart", |s| {
        s.contains(r#"<td data-label="container">app-1</td>"#) && s.contains("<polyline points=")
    })
    .await;
    fits(&client, "the node page").await;
    screenshot(&client, "node-390.png").await;
    // A tap on a chart shows the figure there in its caption; the status
    // bars are drawn.
    let zone = client
        .find(Locator::Css("#vitals .chart .zone"))
        .await
        .expect("a chart's strip");
    zone.click().await.expect("tap the chart");
    let readout: Value = client
        .execute(
            "return document.querySelector('#vitals .chart .readout').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        readout.as_str().is_some_and(|r| r.contains(" UTC: ")),
        "the tapped figure: {readout}"
    );
    let bars: Value = client
        .execute(
            "return [...document.querySelectorAll('#status svg.bar')].map(b => b.getBoundingClientRect().width);",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        bars.as_array()
            .is_some_and(|b| !b.is_empty() && b.iter().all(|w| w.as_f64().unwrap_or(0.0) > 40.0)),
        "status bars drawn wide enough to read: {bars}"
    );

    // The events page follows the log: a script's event appears live.
    client.goto(&format!("{url}/events")).await.unwrap();
    page_shows(&client, "the events page", |s| s.contains(r#"id="tail""#)).await;
    mark(&client).await;
    let note = json!({"v": 1, "id": ulid::Ulid::generate().to_string(),
        "ts": homelab_core::time::format(&chrono::Utc::now()), "node": "n1",
        "source": "script", "type": "backup_completed", "message": "nightly backup done"});
    probe.publish("homelab/events/n1", note.to_string()).await;
    page_shows(&client, "the script's event", |s| {
        s.contains("nightly backup done")
    })
    .await;
    assert!(
        still_marked(&client).await,
        "the event arrived without a reload"
    );
    fits(&client, "the events page").await;
    // On the phone the events are stacked rows, each cell labelled, and
    // words break only where they must.
    let stacked = client
        .execute(
            "const t = document.querySelector('#events'); const td = t.querySelector('tbody td'); return [getComputedStyle(t.querySelector('thead')).display, getComputedStyle(td).display, getComputedStyle(td).overflowWrap, td.dataset.label];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stacked, json!(["none", "block", "break-word", "when"]));

    client.close().await.unwrap();
    // The same pages on a laptop.
    let laptop = browser(port, 1280, 900).await;
    laptop.goto(&format!("{url}/")).await.unwrap();
    page_shows(&laptop, "n1's card", |s| s.contains(r#"id="node-n1""#)).await;
    screenshot(&laptop, "overview-1280.png").await;

    // Cheap to keep open: n1's agent reports every few seconds with
    // nothing new to show (its heartbeat); the page fetches nothing for
    // those, and a new figure is written into its card in place, without
    // a fetch either. What it costs is counted from the browser's own
    // entries (the page's fetches) and from the stream as a second client
    // gets it.
    let fetches = || async {
        laptop
            .execute(
                "return performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch' && e.name === location.href).map(e => e.transferSize);",
                vec![],
            )
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    // A change first, seen on the page: what the page loaded with is
    // behind it, and the count starts from a page that is up to date.
    probe
        .publish_retained("homelab/nodes/n1/agent", agent_status("n1", 0.75))
        .await;
    page_shows(&laptop, "load 0.75 on n1's card", |s| {
        s.contains("<dd>0.75</dd>")
    })
    .await;
    let before = fetches().await;
    let mut stream = sse_connect(system.http, "/api/stream", None).await;
    let mut head = [0u8; 1024];
    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut head)
        .await
        .unwrap();
    mark(&laptop).await;
    for _ in 0..8 {
        probe
            .publish_retained("homelab/nodes/n1/agent", agent_status("n1", 0.75))
            .await;
        // Paced beyond the page's 300 ms coalescing, as heartbeats are.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    probe
        .publish_retained("homelab/nodes/n1/agent", agent_status("n1", 0.99))
        .await;
    page_shows(&laptop, "the new load on n1's card", |s| {
        s.contains("<dd>0.99</dd>")
    })
    .await;
    let after = fetches().await;
    assert_eq!(
        after.len() - before.len(),
        0,
        "no fetch for 8 heartbeats and a new load: {after:?}"
    );
    assert!(still_marked(&laptop).await, "the card changed in place");
    // The stream's bytes for those nine reports: one message.
    let mut streamed = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
    )
    .await
    {
        if n == 0 {
            break;
        }
        streamed.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&streamed);
    assert_eq!(text.matches("data:").count(), 1, "{text}");
    // An idle homelab's agents report every 30 s: two reports a minute a
    // node, each with a new load at worst. For this page's two nodes:
    let per_minute = 2 * 2 * streamed.len();
    println!("idle overview: {} B per report on the stream, no fetch; {per_minute} B a minute for 2 nodes", streamed.len());
    assert!(per_minute < 20 * 1024, "{per_minute} B a minute");
    laptop.goto(&format!("{url}/nodes/n1")).await.unwrap();
    page_shows(&laptop, "n1's page", |s| s.contains("<polyline points=")).await;
    screenshot(&laptop, "node-1280.png").await;
    laptop.close().await.unwrap();

    // Dark, as the system says, at both widths.
    for (width, height) in [(1280, 900), (390, 844)] {
        let dark = dark_browser(port, width, height).await;
        dark.goto(&format!("{url}/")).await.unwrap();
        page_shows(&dark, "n1's card", |s| s.contains(r#"id="node-n1""#)).await;
        let colours = dark
            .execute(
                "const b = getComputedStyle(document.body); return [b.backgroundColor, b.color, matchMedia('(prefers-color-scheme: dark)').matches];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            colours,
            json!(["rgb(18, 18, 20)", "rgb(232, 232, 234)", true]),
            "the page follows the system's dark setting"
        );
        screenshot(&dark, &format!("overview-{width}-dark.png")).await;
        dark.close().await.unwrap();
    }
    system.stop().await.unwrap();
}

/// Two operators in two browsers: ann approves, the action's history and
/// the audit page say it was ann; bob is removed while his page is open,
/// and its Approve button no longer decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_decide_and_the_history_says_who() {
    use homelab::operator_cli::{run as operator, OperatorCommand};
    let Some((_driver, port)) = driver().await else {
        return;
    };
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n  db: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let layout = homelab_core::Layout::new(system.root.path());
    // The operators, as `homelab operator add` makes them; the password
    // is the word after "password:".
    let add = |name: &str| {
        let text = operator(
            &layout,
            OperatorCommand::Add { name: name.into() },
            chrono::Utc::now(),
        )
        .unwrap();
        text.split("password:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    let (ann_password, bob_password) = (add("ann"), add("bob"));
    let probe = Probe::connect(system.mqtt, &["homelab/commands/n1"]).await;
    probe
        .report("n1", "online", &[("app", "exited"), ("db", "exited")])
        .await;
    let (app, db) = ("container-restart-n1-app", "container-restart-n1-db");
    wait_for("both actions pending", T, || async {
        system.action_file("pending", app).exists() && system.action_file("pending", db).exists()
    })
    .await;

    let url = format!("http://{}", system.http);
    let ann = browser(port, 1280, 900).await;
    let bob = browser(port, 1280, 900).await;
    for (client, name, password) in [(&ann, "ann", &ann_password), (&bob, "bob", &bob_password)] {
        client.goto(&format!("{url}/actions")).await.unwrap();
        log_in_as(client, name, password).await;
        client.goto(&format!("{url}/actions")).await.unwrap();
        page_shows(client, "both pending actions with buttons", |s| {
            [app, db].iter().all(|id| {
                s.contains(&format!(r#"id="action-{id}""#))
                    && s.contains(&format!(r#"action="/actions/{id}/approve""#))
            })
        })
        .await;
    }

    // Ann approves app; the history says ann, on bob's screen too.
    click(
        &ann,
        &format!("#action-{app} form[action$='/approve'] button.approve"),
    )
    .await;
    wait_for("app approved", T, || async {
        !system.action_file("pending", app).exists()
    })
    .await;
    bob.goto(&format!("{url}/actions/{app}")).await.unwrap();
    page_shows(&bob, "the history naming ann", |s| {
        s.contains("<b>approved</b>") && s.contains(" by ann: approved by operator")
    })
    .await;

    // Bob is removed while his actions page is open: its button is
    // refused, db stays pending, and the page asks him to log in.
    bob.goto(&format!("{url}/actions")).await.unwrap();
    page_shows(&bob, "db's approve button", |s| {
        s.contains(&format!(r#"action="/actions/{db}/approve""#))
    })
    .await;
    operator(
        &layout,
        OperatorCommand::Remove { name: "bob".into() },
        chrono::Utc::now(),
    )
    .unwrap();
    click(
        &bob,
        &format!("#action-{db} form[action$='/approve'] button.approve"),
    )
    .await;
    page_shows(&bob, "the refusal", |s| {
        s.contains("log in as an operator first")
    })
    .await;
    assert!(
        system.action_file("pending", db).exists(),
        "bob's press decided nothing"
    );
    bob.goto(&format!("{url}/actions")).await.unwrap();
    page_shows(&bob, "the login form again", |s| {
        s.contains(r#"id="login""#) && !s.contains(r#"id="operator""#)
    })
    .await;

    // The audit page, as ann sees it: her approval once, bob's refusal.
    ann.goto(&format!("{url}/audit")).await.unwrap();
    page_shows(&ann, "the audit trail", |s| s.contains(r#"id="audit""#)).await;
    let rows: Vec<String> = ann
        .execute(
            "return [...document.querySelectorAll('#audit tbody tr')].map(r => [...r.cells].map(c => c.textContent.trim()).slice(1, 5).join(' '));",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let approvals: Vec<&String> = rows.iter().filter(|r| r.contains(" approve ")).collect();
    assert_eq!(approvals, [&format!("ann approve {app} page")], "{rows:#?}");
    assert!(
        rows.iter().any(|r| r == "bob ✗ refused login  session"),
        "bob's press after his removal: {rows:#?}"
    );
    screenshot(&ann, "audit-1280.png").await;
    ann.close().await.unwrap();
    bob.close().await.unwrap();
    system.stop().await.unwrap();
}
