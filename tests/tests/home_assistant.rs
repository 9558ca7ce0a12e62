//! Against a real Home Assistant, the current release (2026.11.0 on
//! Python 3.14, `HOMELAB_HASS`) and the oldest supported one (2024.3.3,
//! `HOMELAB_HASS_OLDEST`), each in a venv `.ci/run` makes: its MQTT
//! integration, set up with its form's defaults (MQTT 5 on the current
//! one), on our broker shows a device per node and an entity per monitored
//! service with the documented entity ids and the right states, they go
//! unavailable when the node goes offline, and an entity removed from the
//! repo disappears; no repair issue and no warning about homelab in its
//! log. On the current one, an upgrade from the per-component discovery
//! form keeps every entity (same ids, no ghost). The agent's watcher,
//! pointed at the same Home Assistant, says when its websocket dies and
//! comes back and when an integration fails to set up, and a restart of
//! Home Assistant does not make it say the same again.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use homelab_tests::*;
use serde_json::{json, Value};

/// Home Assistant's first start installs what its core integrations need.
const START: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(60);

struct Hass {
    child: Option<Child>,
    hass: String,
    /// Its version, `(year, month)`.
    version: (u32, u32),
    config: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Hass {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A custom integration whose entries never set up: what a broken
/// integration looks like to Home Assistant (`setup_retry`).
const BROKEN_MANIFEST: &str = r#"{"domain": "homelab_broken", "name": "Broken on purpose", "version": "1.0.0", "config_flow": true, "documentation": "https://example.invalid", "codeowners": [], "iot_class": "local_polling", "requirements": []}"#;
const BROKEN_INIT: &str = r#"from homeassistant.exceptions import ConfigEntryNotReady

async def async_setup_entry(hass, entry):
    raise ConfigEntryNotReady("the device does not answer")
"#;
const BROKEN_FLOW: &str = r#"from homeassistant import config_entries

class Flow(config_entries.ConfigFlow, domain="homelab_broken"):
    VERSION = 1

    async def async_step_user(self, user_input=None):
        return self.async_create_entry(title="Broken on purpose", data={})
"#;

impl Hass {
    /// A configuration and a user (`tester`) for the `hass` that `var`
    /// names, or `None` when it is not set (skipped loudly; CI installs
    /// both and must run this).
    fn prepare(var: &str) -> Option<Hass> {
        let Ok(hass) = std::env::var(var) else {
            assert!(
                std::env::var("CI").is_err(),
                "{var} is not set: .ci/run installs Home Assistant"
            );
            eprintln!("\n*** SKIPPED: {var} (a Home Assistant venv's hass) is not set ***\n");
            return None;
        };
        let out = Command::new(&hass)
            .arg("--version")
            .output()
            .expect("hass --version");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        eprintln!("Home Assistant {text} ({var})");
        let config = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let write = |path: &str, text: &str| {
            let path = config.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "configuration.yaml",
            &format!(
                "homeassistant:\n  name: homelab-test\n  latitude: 0\n  longitude: 0\n  elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  country: DE\nhttp:\n  server_host: 127.0.0.1\n  server_port: {}\napi:\nconfig:\n",
                addr.port()
            ),
        );
        write(
            "custom_components/homelab_broken/manifest.json",
            BROKEN_MANIFEST,
        );
        write("custom_components/homelab_broken/__init__.py", BROKEN_INIT);
        write(
            "custom_components/homelab_broken/config_flow.py",
            BROKEN_FLOW,
        );
        let out = Command::new(&hass)
            .args(["--script", "auth", "-c"])
            .arg(config.path())
            .args(["add", "tester", "tester-password"])
            .output()
            .expect("hass --script auth");
        assert!(out.status.success(), "{out:?}");
        Some(Hass {
            child: None,
            hass,
            version,
            config,
            addr,
        })
    }

    async fn start(&mut self) {
        let log = std::fs::File::create(self.config.path().join("hass.log")).unwrap();
        self.child = Some(
            Command::new(&self.hass)
                .arg("-c")
                .arg(self.config.path())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("hass starts"),
        );
        let addr = self.addr;
        let log = self.config.path().join("hass.log");
        wait_for_or_log("Home Assistant answers", START, &log, || async move {
            matches!(
                http_request(addr, "GET", "/api/", None, None).await,
                Ok((401, _))
            )
        })
        .await;
    }

    /// A websocket command as the frontend sends it; its `result`.
    async fn ws(&self, token: &str, command: Value) -> anyhow::Result<Value> {
        let config = homelab_agent::hawatch::HaConfig {
            url: format!("http://{}", self.addr),
            token: token.to_string(),
            interval: Duration::from_secs(1),
            settings: Default::default(),
        };
        let mut connection = homelab_agent::hawatch::Connection::open(&config).await?;
        connection.call(command).await
    }

    /// Home Assistant 2026 takes an `http:` section from YAML only once it
    /// is confirmed (else it goes back to its own after 5 minutes).
    async fn keep_http_config(&self, token: &str) {
        if self.version >= (2026, 1) {
            if let Err(error) = self.ws(token, json!({"type": "http/config/promote"})).await {
                eprintln!("http/config/promote: {error:#}");
            }
        }
    }

    /// The repair issues Home Assistant raises.
    async fn issues(&self, token: &str) -> Vec<Value> {
        let answer = self
            .ws(token, json!({"type": "repairs/list_issues"}))
            .await
            .expect("repairs/list_issues");
        answer["issues"].as_array().cloned().unwrap_or_default()
    }

    /// Warnings and errors in its log that are about homelab (but not the
    /// integration broken on purpose).
    fn warnings_about_homelab(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.config.path().join("hass.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("WARNING") || l.contains("ERROR"))
            .filter(|l| l.to_lowercase().contains("homelab") && !l.contains("homelab_broken"))
            .map(str::to_string)
            .collect()
    }

    /// The MQTT integration on `port`, set up as a user who accepts the
    /// form's defaults does (the current form: MQTT 5).
    async fn add_mqtt(&self, token: &str, port: u16) -> Value {
        let flow = self.add_integration(token, "mqtt", None).await;
        let fields: Vec<&str> = flow["data_schema"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str())
            .collect();
        let mut input = json!({"broker": "127.0.0.1", "port": port});
        if fields.contains(&"other_settings") {
            // The collapsed section as the form sends it untouched.
            input["other_settings"] =
                json!({"set_client_cert": false, "set_ca_cert": "off", "transport": "tcp"});
        }
        self.flow_step(token, &flow, input).await
    }

    /// Points its MQTT entry at another port while it is stopped (the
    /// broker of a restarted homelab listens elsewhere in this test).
    fn move_mqtt(&self, port: u16) {
        let path = self.config.path().join(".storage/core.config_entries");
        let mut entries: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for entry in entries["data"]["entries"].as_array_mut().unwrap() {
            if entry["domain"] == "mqtt" {
                entry["data"]["port"] = json!(port);
            }
        }
        std::fs::write(&path, entries.to_string()).unwrap();
    }

    /// Stops it as systemd would (SIGTERM: it saves its storage, the
    /// login's refresh token among it), killing it after 60 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn json(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, _, text) = http_exchange(self.addr, method, path, &headers, &body).await;
        assert!(status < 300, "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"))
    }

    /// Logs in as `tester` the way the frontend does; an access token.
    async fn login(&self) -> String {
        let client = format!("http://{}/", self.addr);
        let flow = self
            .json(
                "POST",
                "/auth/login_flow",
                None,
                json!({"client_id": client, "handler": ["homeassistant", null], "redirect_uri": client}),
            )
            .await;
        let done = self
            .json(
                "POST",
                &format!("/auth/login_flow/{}", flow["flow_id"].as_str().unwrap()),
                None,
                json!({"username": "tester", "password": "tester-password", "client_id": client}),
            )
            .await;
        let code = done["result"].as_str().expect("an authorization code");
        let form = format!("grant_type=authorization_code&code={code}&client_id={client}");
        let (status, _, text) = http_exchange(
            self.addr,
            "POST",
            "/auth/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &form,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let token: Value = serde_json::from_str(&text).unwrap();
        token["access_token"].as_str().unwrap().to_string()
    }

    /// Runs a config flow that takes `input` at its first step.
    async fn add_integration(&self, token: &str, domain: &str, input: Option<Value>) -> Value {
        let flow = self
            .json(
                "POST",
                "/api/config/config_entries/flow",
                Some(token),
                json!({"handler": domain, "show_advanced_options": false}),
            )
            .await;
        match input {
            Some(input) => self.flow_step(token, &flow, input).await,
            None => flow,
        }
    }

    /// A config flow's next step, with `input`.
    async fn flow_step(&self, token: &str, flow: &Value, input: Value) -> Value {
        self.json(
            "POST",
            &format!(
                "/api/config/config_entries/flow/{}",
                flow["flow_id"].as_str().unwrap()
            ),
            Some(token),
            input,
        )
        .await
    }

    async fn states(&self, token: &str) -> Vec<Value> {
        let states = self
            .json("GET", "/api/states", Some(token), Value::Null)
            .await;
        states.as_array().cloned().unwrap_or_default()
    }
}

/// [`wait_for`], printing Home Assistant's log when it times out.
async fn wait_for_or_log<F, Fut>(what: &str, timeout: Duration, log: &std::path::Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            panic!("timed out after {timeout:?} waiting for: {what}\nHome Assistant's log, last lines:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The next thing the watcher says of `kind` (what it says before is
/// listed if it never does).
async fn next(
    said: &mut tokio::sync::mpsc::UnboundedReceiver<homelab_agent::hawatch::rules::Said>,
    kind: &'static str,
) -> homelab_agent::hawatch::rules::Said {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, said.recv()).await {
            Ok(Some(s)) if s.kind == kind => return s,
            Ok(Some(s)) => seen.push(s.kind),
            _ => panic!("no {kind}; said instead: {seen:?}"),
        }
    }
}

fn state_of<'a>(states: &'a [Value], entity: &str) -> Option<&'a str> {
    states
        .iter()
        .find(|s| s["entity_id"] == entity)
        .and_then(|s| s["state"].as_str())
}

/// The current release, then the oldest supported one (one at a time:
/// each is a heavy process on two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_shows_the_homelab_and_the_watcher_reports_its_health() {
    for var in ["HOMELAB_HASS", "HOMELAB_HASS_OLDEST"] {
        if let Some(hass) = Hass::prepare(var) {
            shows_the_homelab(hass).await;
        }
    }
}

/// The homelab's entities in Home Assistant: (entity id, state) of those
/// whose id starts with `homelab`, and whether any is a ghost (restored
/// from the registry, provided by no config).
fn homelab_entities(states: &[Value]) -> (Vec<(String, String)>, Vec<String>) {
    let ours: Vec<&Value> = states
        .iter()
        .filter(|s| {
            s["entity_id"].as_str().is_some_and(|id| {
                id.split('.')
                    .nth(1)
                    .is_some_and(|o| o.starts_with("homelab"))
            })
        })
        .collect();
    let ghosts = ours
        .iter()
        .filter(|s| s["attributes"]["restored"] == true)
        .map(|s| s["entity_id"].as_str().unwrap().to_string())
        .collect();
    let mut all: Vec<(String, String)> = ours
        .iter()
        .map(|s| {
            (
                s["entity_id"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    all.sort();
    (all, ghosts)
}

/// Waits until Home Assistant shows the node's device and its services'
/// entities, with their states and the documented entity ids; then all of
/// the homelab's entities (and ghosts).
async fn shown(hass: &Hass, token: &str) -> (Vec<(String, String)>, Vec<String>) {
    let log = hass.config.path().join("hass.log");
    wait_for_or_log(
        "the homelab's entities in Home Assistant",
        T,
        &log,
        || async {
            let s = hass.states(token).await;
            state_of(&s, "binary_sensor.homelab_n1_connectivity") == Some("on")
                && state_of(&s, "binary_sensor.homelab_n1_db_problem") == Some("on")
                && state_of(&s, "binary_sensor.homelab_n1_app_problem") == Some("off")
                && state_of(&s, "sensor.homelab_active_incidents").is_some_and(|v| v != "unknown")
        },
    )
    .await;
    homelab_entities(&hass.states(token).await)
}

async fn shows_the_homelab(mut hass: Hass) {
    use homelab_observer::discovery::Form;
    // Device configs from 2024.11 on; before, one config per entity.
    let form = match hass.version >= (2024, 11) {
        true => Form::Device,
        false => Form::PerComponent,
    };
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        ("hosts/n1/services.yaml", "services:\n  app: {}\n  db: {}\n"),
    ]);
    // On the current release the homelab starts as an older one did, with
    // per-component configs, and is upgraded below.
    let options = Options {
        ha_form: Form::PerComponent,
        ..Options::default()
    };
    let mut system = System::start(repo, options.clone()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe
        .report("n1", "online", &[("app", "running"), ("db", "exited")])
        .await;
    hass.start().await;
    let token = hass.login().await;
    hass.keep_http_config(&token).await;
    let mqtt = hass.add_mqtt(&token, system.mqtt.port()).await;
    assert_eq!(mqtt["result"]["state"], "loaded", "{mqtt}");

    let log = hass.config.path().join("hass.log");
    let (before, ghosts) = shown(&hass, &token).await;
    assert!(ghosts.is_empty(), "{ghosts:?}");

    let probe = if form == Form::Device {
        // The upgrade: the homelab restarts with device configs (the
        // embedded broker starts empty, as it does), Home Assistant with
        // it. Every entity is still there, with the same id and no ghost
        // beside it.
        hass.stop();
        system = system
            .restart_with(Options {
                ha_form: Form::Device,
                ..options
            })
            .await;
        hass.move_mqtt(system.mqtt.port());
        let probe = Probe::connect(system.mqtt, &[]).await;
        probe
            .report("n1", "online", &[("app", "running"), ("db", "exited")])
            .await;
        hass.start().await;
        hass.keep_http_config(&token).await;
        let (after, ghosts) = shown(&hass, &token).await;
        let ids =
            |all: &[(String, String)]| all.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&after), ids(&before), "the same entities, the same ids");
        assert!(ghosts.is_empty(), "no ghost: {ghosts:?}");
        probe
    } else {
        probe
    };
    let s = hass.states(&token).await;
    let db = s
        .iter()
        .find(|e| e["entity_id"] == "binary_sensor.homelab_n1_db_problem")
        .unwrap();
    assert_eq!(db["attributes"]["device_class"], "problem");
    assert_eq!(db["attributes"]["status"], "not_running", "{db}");
    // Neither the broker's protocol nor anything else of ours is a repair.
    let issues = hass.issues(&token).await;
    assert!(
        !issues
            .iter()
            .any(|i| i["domain"] == "mqtt" || i.to_string().to_lowercase().contains("homelab")),
        "{issues:#?}"
    );

    // The node goes offline (its agent's Last Will): its entities are
    // unavailable, not stale; connectivity says off.
    let states = || {
        let hass = &hass;
        let token = token.clone();
        async move { hass.states(&token).await }
    };
    probe
        .publish_retained("homelab/nodes/n1/status", "offline")
        .await;
    wait_for_or_log("n1's entities unavailable", T, &log, || async {
        let s = states().await;
        state_of(&s, "binary_sensor.homelab_n1_app_problem") == Some("unavailable")
            && state_of(&s, "binary_sensor.homelab_n1_connectivity") == Some("off")
    })
    .await;
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;

    // db leaves the repo: its entity leaves Home Assistant.
    std::fs::write(
        system.repo.path().join("hosts/n1/services.yaml"),
        "services:\n  app: {}\n",
    )
    .unwrap();
    wait_for_or_log("db's entity removed", T, &log, || async {
        let s = states().await;
        state_of(&s, "binary_sensor.homelab_n1_db_problem").is_none()
            && state_of(&s, "binary_sensor.homelab_n1_app_problem").is_some()
    })
    .await;

    // The watcher, as the agent on Home Assistant's node runs it.
    let (tx, mut said) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(homelab_agent::hawatch::watch(
        homelab_agent::hawatch::HaConfig {
            url: format!("http://{}", hass.addr),
            token: token.clone(),
            interval: Duration::from_millis(500),
            settings: Default::default(),
        },
        move |s| {
            let _ = tx.send(s);
        },
        stop.clone(),
    ));
    // A broken integration.
    hass.add_integration(&token, "homelab_broken", None).await;
    let failed = next(&mut said, "ha_integration_failed").await;
    assert_eq!(failed.data["domain"], "homelab_broken", "{failed:?}");
    assert!(failed.message.contains("setup_retry"), "{}", failed.message);
    let first_entry = failed.data["entry_id"].clone();
    // Home Assistant stops, then starts again.
    hass.stop();
    let dead = next(&mut said, "ha_websocket_dead").await;
    assert_eq!(dead.severity, homelab_core::Severity::Error);
    hass.start().await;
    hass.keep_http_config(&token).await;
    next(&mut said, "ha_websocket_recovered").await;
    // Once it runs with the broken entry failing again, a second broken
    // entry is the marker: up to it, the first is not told again.
    wait_for_or_log("the broken entry fails again", START, &log, || async {
        hass.ws(&token, json!({"type": "config_entries/get"}))
            .await
            .is_ok_and(|entries| {
                entries
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["entry_id"] == first_entry && e["state"] == "setup_retry")
            })
    })
    .await;
    hass.add_integration(&token, "homelab_broken", None).await;
    let second = next(&mut said, "ha_integration_failed").await;
    assert_ne!(
        second.data["entry_id"], first_entry,
        "told again after the restart: {second:?}"
    );
    stop.cancel();
    watcher.await.unwrap();
    let warnings = hass.warnings_about_homelab();
    assert!(warnings.is_empty(), "{warnings:#?}");
    system.stop().await.unwrap();
}
