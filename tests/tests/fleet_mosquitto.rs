//! Fleet mode on Mosquitto, set up with `homelab mosquitto-config`: its
//! password file and per-node ACL are a second layer under the signatures
//! and sealed commands. The whole loop runs through it (a real agent, the
//! control plane's components logged in as `@control`, a container
//! restarted by policy), and what a node's login may not do is stopped by
//! Mosquitto itself, seen with independent MQTT clients.

use std::process::{Command, Stdio};
use std::time::Duration;

use homelab::fleet_cli;
use homelab_core::fleet::Fleet;
use homelab_core::{ActionState, Layout, Name, Topics};
use homelab_tests::*;

const T: Duration = Duration::from_secs(60);

/// A container removed when the test ends, also when it fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn token_of(out: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
        .expect("the printed command carries the token")
        .to_string()
}

/// A login over TLS, checked against the fleet's CA.
fn tls<'a>(ca: &'a str, credentials: Option<(&'a str, &'a str)>) -> Login<'a> {
    Login {
        tls_ca: Some(ca),
        credentials,
        client_id: "attempt",
    }
}

fn node_login(layout: &Layout, token: &str) -> homelab_core::identity::AgentSecrets {
    let secrets = homelab_core::identity::AgentSecrets::from_token(token).unwrap();
    assert!(layout.node_record(&secrets.node).exists());
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_the_generated_config_carries_the_fleet_and_stops_what_a_node_may_not_do() {
    init_logs();
    let Some(_docker) = docker().await else {
        return;
    };
    if Command::new("mosquitto").arg("-h").output().is_err() {
        assert!(std::env::var("CI").is_err(), "mosquitto is not installed");
        eprintln!("\n*** SKIPPED: mosquitto is not installed ***\n");
        return;
    }
    let tag = format!("fm{}", std::process::id());
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let port = free_addr().port();
    fleet_cli::tls_init(&layout, &["localhost".to_string()], port, false).unwrap();
    let piha_token =
        token_of(&fleet_cli::node_add(&layout, &Name::parse("piha").unwrap(), None).unwrap());
    let pihb_token =
        token_of(&fleet_cli::node_add(&layout, &Name::parse("pihb").unwrap(), None).unwrap());
    let piha = node_login(&layout, &piha_token);
    let pihb = node_login(&layout, &pihb_token);
    let ca = piha.ca_pem.clone();

    // Mosquitto with what `homelab mosquitto-config` wrote.
    let conf = tempfile::tempdir().unwrap();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let topics = Topics::default();
    let printed = fleet_cli::mosquitto_config(&layout, conf.path(), &topics, listen, None).unwrap();
    assert!(printed.contains("2 node(s)"), "{printed}");
    let acl = std::fs::read_to_string(conf.path().join("acl")).unwrap();
    assert!(
        acl.contains("user piha\ntopic write homelab/events/piha\n"),
        "{acl}"
    );
    let mosquitto =
        configured_mosquitto(conf.path(), listen, &root.path().join("mosquitto.log")).await;

    // Logins: none without TLS, a password, or the right password.
    for (what, login) in [
        ("anonymous over TLS", tls(&ca, None)),
        ("a wrong password", tls(&ca, Some(("piha", "guess")))),
        (
            "plain MQTT to the TLS port",
            Login {
                tls_ca: None,
                credentials: Some(("piha", &piha.password)),
                client_id: "attempt",
            },
        ),
    ] {
        let outcome = try_connect("localhost", port, login).await;
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "{what}: {outcome:?}"
        );
    }

    // The control plane's components, logged in as @control over TLS.
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  piha: {role: home}\n  pihb: {role: home}\n",
        ),
        (
            "hosts/piha/services.yaml",
            "services:\n  app: {grace_period: 0s, remediation: auto}\n",
        ),
    ]);
    let fleet = Fleet::load(&layout).unwrap().expect("fleet mode");
    let url = format!("mqtts://localhost:{port}");
    let broker = homelab::control_endpoint(&layout, Some(&fleet), &url).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    tokio::spawn(homelab_observer::run(
        homelab_observer::Config {
            broker: broker.clone(),
            layout: layout.clone(),
            topics: topics.clone(),
            repo: Some(repo.path().to_path_buf()),
            retention: Default::default(),
            feed: None,
            fleet: Some(fleet.clone()),
            // Discovery on: the generated ACL lets the observer publish
            // its configs and hear Home Assistant's status.
            home_assistant: Some(Default::default()),
        },
        stop.clone(),
    ));
    tokio::spawn(homelab_supervisor::run(
        homelab_supervisor::Config {
            broker: broker.clone(),
            layout: layout.clone(),
            topics: topics.clone(),
            repo: repo.path().to_path_buf(),
            default_grace: Duration::ZERO,
            interval: Duration::from_secs(1),
            auto_limit: 3,
            feed: None,
            fleet: Some(fleet.clone()),
        },
        stop.clone(),
    ));
    tokio::spawn(homelab_executor::run(
        homelab_executor::Config {
            broker: broker.clone(),
            layout: layout.clone(),
            topics: topics.clone(),
            command_timeout: Duration::from_secs(60),
            interval: Duration::from_secs(1),
            feed: None,
            fleet: Some(fleet.clone()),
        },
        stop.clone(),
    ));

    // piha's service, labelled for this test: its agent sees only it.
    let app = Container(format!("homelab-{tag}-app"));
    docker_cli(&[
        "run",
        "-d",
        "--name",
        &app.0,
        "--label",
        "com.docker.compose.service=app",
        "--label",
        &format!("homelab.test={tag}"),
        IMAGE,
        "sleep",
        "3600",
    ]);
    let mut agent_roots = Vec::new();
    for (secrets, label) in [
        (&piha, format!("homelab.test={tag}")),
        (&pihb, format!("homelab.test={tag}-none")),
    ] {
        let agent_root = tempfile::tempdir().unwrap();
        let agent_layout = Layout::new(agent_root.path());
        let identity =
            homelab_agent::secrets::load(&agent_layout, &secrets.node, Some(&secrets.to_token()))
                .unwrap();
        let mut config = homelab_agent::Config::new(secrets.node.clone(), &url, agent_layout);
        config.identity = identity;
        config.docker_label = Some(label);
        tokio::spawn(homelab_agent::run(config, stop.clone()));
        agent_roots.push(agent_root);
    }
    // Their events are stored: today's log (or, across midnight,
    // yesterday's) of each node exists.
    let stored = |node: &str| {
        let node = Name::parse(node).unwrap();
        let today = chrono::Utc::now().date_naive();
        [today, today.pred_opt().unwrap()]
            .iter()
            .any(|day| layout.event_log(*day, &node).exists())
    };
    wait_for("both agents' events stored", T, || async {
        stored("piha") && stored("pihb")
    })
    .await;

    // An independent subscriber with the control plane's login sees
    // everything that gets through; the attacker has pihb's login.
    let (control_user, control_password) = fleet.control_credentials();
    let mut watch = Probe::connect_with(
        "localhost",
        port,
        "control-watch",
        Some((&control_user, &control_password)),
        Some(&ca),
        &["homelab/#"],
    )
    .await;
    let mut evil = Probe::connect_with(
        "localhost",
        port,
        "pihb:attacker",
        Some(("pihb", &pihb.password)),
        Some(&ca),
        &["homelab/#"],
    )
    .await;

    // What pihb may not publish: piha's events, a decision, piha's acks
    // and config, a command, the observer's state. Mosquitto drops each;
    // pihb's own event after them is the sign they were judged.
    let forged = format!("forged-{tag}");
    let forbidden = [
        ("homelab/events/piha", false),
        ("homelab/actions/container-restart-piha-app/approve", false),
        ("homelab/acks/piha", true),
        ("homelab/config/piha", true),
        ("homelab/commands/piha", false),
        ("homelab/state/nodes/piha", true),
        ("homelab/nodes/piha/agent", true),
        ("homelab/nodes/piha/status", true),
    ];
    for (topic, retained) in forbidden {
        let payload = format!(r#"{{"v":1,"id":"{forged}","by":"pihb"}}"#);
        if retained {
            evil.publish_retained(topic, payload).await;
        } else {
            evil.publish(topic, payload).await;
        }
    }
    let marker = format!("marker-{tag}");
    evil.publish("homelab/events/pihb", marker.clone()).await;
    let seen = watch
        .until("homelab/events/pihb", T, |p| p == marker.as_bytes())
        .await;
    let through: Vec<&String> = seen
        .iter()
        .filter(|(_, p)| String::from_utf8_lossy(p).contains(&forged))
        .map(|(t, _)| t)
        .collect();
    assert!(
        through.is_empty(),
        "Mosquitto let pihb publish on {through:?}"
    );

    // The loop through Mosquitto: app stops, its restart is approved by
    // policy, the sealed command reaches piha, the action completes.
    docker_cli(&["stop", "-t", "0", &app.0]);
    let id = "container-restart-piha-app";
    wait_for("the restart completed", T, || async {
        layout
            .action_file(ActionState::Completed, &Name::parse(id).unwrap())
            .exists()
    })
    .await;
    assert_eq!(
        docker_cli(&["inspect", "-f", "{{.State.Running}}", &app.0]),
        "true"
    );

    // pihb subscribed to everything, but Mosquitto gave it none of piha's
    // commands, acks or config: the control plane's message on pihb's own
    // command topic is the sign that what came before was delivered.
    let marker = format!("command-marker-{tag}");
    watch.publish("homelab/commands/pihb", marker.clone()).await;
    let seen = evil
        .until("homelab/commands/pihb", T, |p| p == marker.as_bytes())
        .await;
    let read: Vec<&String> = seen
        .iter()
        .map(|(t, _)| t)
        .filter(|t| t.contains("/piha") || t.contains("/state/") || t.contains("/events/"))
        .collect();
    assert!(read.is_empty(), "pihb read {read:?}");

    // Home Assistant's login: it reads the state, the nodes' status and
    // the discovery configs, and nothing else; it may not publish events.
    let ha_password = std::fs::read_to_string(fleet_cli::ha_password_file(&layout)).unwrap();
    let mut ha = Probe::connect_with(
        "localhost",
        port,
        "home-assistant",
        Some((fleet_cli::HA_USER, ha_password.trim())),
        Some(&ca),
        &["homelab/#", "homeassistant/#"],
    )
    .await;
    ha.latest_until(T, |m| {
        m.contains_key("homelab/state/summary")
            && m.contains_key("homelab/nodes/piha/status")
            && m.contains_key("homeassistant/device/homelab/homelab_node_piha/config")
    })
    .await;
    let mut watch_ha = Probe::connect_with(
        "localhost",
        port,
        "control-watch-ha",
        Some((&control_user, &control_password)),
        Some(&ca),
        &["homelab/events/#", "homeassistant/status"],
    )
    .await;
    let forged_by_ha = format!("forged-by-ha-{tag}");
    ha.publish("homelab/events/piha", forged_by_ha.clone())
        .await;
    ha.publish("homeassistant/status", "online").await;
    let seen = watch_ha
        .until("homeassistant/status", T, |p| p == b"online")
        .await;
    assert!(
        !seen.iter().any(|(_, p)| p == forged_by_ha.as_bytes()),
        "Mosquitto let Home Assistant publish an event"
    );
    // A command for piha, then state: Home Assistant gets the state only.
    let secret = format!("secret-{tag}");
    watch.publish("homelab/commands/piha", secret.clone()).await;
    let marker = format!("ha-marker-{tag}");
    watch.publish("homelab/state/marker", marker.clone()).await;
    let seen = ha
        .until("homelab/state/marker", T, |p| p == marker.as_bytes())
        .await;
    assert!(
        !seen
            .iter()
            .any(|(t, _)| t.starts_with("homelab/commands/") || t.starts_with("homelab/events/")),
        "Home Assistant read {:?}",
        seen.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );

    // Revoked: pihb's record removed, the files written again, Mosquitto
    // reloaded (SIGHUP): pihb no longer logs in; piha still does.
    fleet_cli::node_remove(&layout, &Name::parse("pihb").unwrap()).unwrap();
    fleet_cli::mosquitto_config(&layout, conf.path(), &topics, listen, None).unwrap();
    hand_to_mosquitto(conf.path());
    unsafe { libc::kill(mosquitto.0.id() as i32, libc::SIGHUP) };
    wait_for("pihb refused after the reload", T, || async {
        matches!(
            try_connect("localhost", port, tls(&ca, Some(("pihb", &pihb.password)))).await,
            Outcome::Refused(_)
        )
    })
    .await;
    assert_eq!(
        try_connect("localhost", port, tls(&ca, Some(("piha", &piha.password)))).await,
        Outcome::Accepted
    );
    stop.cancel();
}
