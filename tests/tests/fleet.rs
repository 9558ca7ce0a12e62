//! Fleet mode: `homelab tls init`, `homelab node add|remove`, and the
//! embedded broker's TLS listener and logins, tried with independent MQTT
//! clients as an attacker would, and with a real agent on the other side.

use std::net::SocketAddr;
use std::time::Duration;

use homelab::fleet_cli;
use homelab_core::{Layout, Name};
use homelab_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Transport};

/// A connected client kept open: `closed` ends when the broker drops it.
async fn stay_connected(
    port: u16,
    ca: Option<&str>,
    user: &str,
    password: &str,
) -> tokio::sync::oneshot::Receiver<()> {
    let host = if ca.is_some() {
        "localhost"
    } else {
        "127.0.0.1"
    };
    let id = if ca.is_some() { "tls" } else { "plain" };
    let mut options = MqttOptions::new(format!("{user}:watch-{id}"), host, port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_credentials(user, password);
    if let Some(ca) = ca {
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(homelab_mqtt::tls_client(ca).unwrap()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut connected = Some(connected_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = closed_tx.send(());
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(15), connected_rx)
        .await
        .expect("connected in time")
        .expect("connected");
    closed_rx
}

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `homelab up` in fleet mode (after `homelab tls init --name localhost`),
/// with its own agent as `local` when asked.
async fn fleet_system(repo: tempfile::TempDir, local: Option<&'static str>) -> System {
    System::start(
        repo,
        Options {
            fleet: true,
            agent_node: local,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_enrolled_nodes_get_on_the_bus_over_tls_and_a_removed_node_is_cut_off() {
    let Some(_docker) = docker().await else {
        return;
    };
    let repo = write_repo(&[(
        "inventory/topology.yaml",
        "nodes:\n  ctl: {role: edge}\n  piha: {role: edge}\n  pihb: {role: edge}\n",
    )]);
    let system = fleet_system(repo, Some("ctl")).await;
    let port = system.mqtts.expect("fleet mode listens with TLS").port();
    // `up`'s own agent is enrolled like any node, and its signed events
    // are stored.
    let ctl = Name::parse("ctl").unwrap();
    let layout = Layout::new(system.root());
    assert!(layout.node_record(&ctl).exists());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout.agent_secrets(&ctl))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    wait_for(
        "the local agent's events stored",
        Duration::from_secs(30),
        || async {
            system
                .logged("ctl")
                .iter()
                .any(|e| e["type"] == "node_snapshot")
        },
    )
    .await;
    let piha = Name::parse("piha").unwrap();
    let out = fleet_cli::node_add(&layout, &piha, None).unwrap();
    assert!(
        out.contains(&format!(
            "homelab agent --node piha --broker mqtts://localhost:{port}"
        )),
        "{out}"
    );
    let token = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
        .expect("the printed command carries the token");
    let secrets = homelab_core::identity::AgentSecrets::from_token(token).unwrap();
    let record = std::fs::read_to_string(layout.node_record(&piha)).unwrap();
    assert!(!record.contains(&secrets.password), "only the hash is kept");
    assert!(record.contains("$argon2id$"));
    let ca = secrets.ca_pem.as_str();

    // Anonymous clients: not on the loopback listener, not over TLS.
    let plain: SocketAddr = system.mqtt;
    let anonymous = |tls_ca| Login {
        tls_ca,
        credentials: None,
        client_id: "intruder",
    };
    assert_ne!(
        try_connect("127.0.0.1", plain.port(), anonymous(None)).await,
        Outcome::Accepted,
        "anonymous on loopback in fleet mode"
    );
    assert_ne!(
        try_connect("localhost", port, anonymous(Some(ca))).await,
        Outcome::Accepted,
        "anonymous over TLS"
    );
    // Plain MQTT to the TLS port, even with the right password.
    let right = |tls_ca, client_id| Login {
        tls_ca,
        credentials: Some(("piha", secrets.password.as_str())),
        client_id,
    };
    assert_ne!(
        try_connect("localhost", port, right(None, "homelab-agent-piha")).await,
        Outcome::Accepted,
        "a client without TLS"
    );
    // A broker certificate from another CA is not trusted.
    let other = tempfile::tempdir().unwrap();
    fleet_cli::tls_init(
        &Layout::new(other.path()),
        &["localhost".into()],
        port,
        false,
    )
    .unwrap();
    let other_ca = std::fs::read_to_string(Layout::new(other.path()).tls_ca_cert()).unwrap();
    assert_ne!(
        try_connect(
            "localhost",
            port,
            right(Some(&other_ca), "homelab-agent-piha")
        )
        .await,
        Outcome::Accepted,
        "a CA that did not sign the broker's certificate"
    );
    // Wrong password; right password with another node's client id.
    let before = system.get("/metrics").await.1;
    assert_ne!(
        try_connect(
            "localhost",
            port,
            Login {
                tls_ca: Some(ca),
                credentials: Some(("piha", "guessed")),
                client_id: "homelab-agent-piha",
            }
        )
        .await,
        Outcome::Accepted,
        "a wrong password"
    );
    assert_ne!(
        try_connect("localhost", port, right(Some(ca), "homelab-agent-pihb")).await,
        Outcome::Accepted,
        "piha taking pihb's session"
    );
    assert_eq!(
        try_connect("localhost", port, right(Some(ca), "homelab-agent-piha")).await,
        Outcome::Accepted,
        "piha, over TLS, with its password"
    );
    let after = system.get("/metrics").await.1;
    for reason in ["bad_password", "client_id"] {
        let line = format!("homelab_broker_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(
            metric(&after, &line) > metric(&before, &line),
            "{reason} counted:\n{after}"
        );
    }
    assert!(!after.contains(&secrets.password) && !after.contains("guessed"));

    // The agent, enrolled from the token, connects over TLS and its events
    // are stored.
    let agent_root = tempfile::tempdir().unwrap();
    let agent_layout = Layout::new(agent_root.path());
    let identity = homelab_agent::secrets::load(&agent_layout, &piha, Some(token))
        .unwrap()
        .expect("enrolled");
    let file = agent_layout.agent_secrets(&piha);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut config = homelab_agent::Config::new(
        piha.clone(),
        &format!("mqtts://localhost:{port}"),
        agent_layout.clone(),
    );
    config.identity = Some(identity);
    let stop = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(homelab_agent::run(config, stop.clone()));
    wait_for("piha's events stored", Duration::from_secs(30), || async {
        system
            .logged("piha")
            .iter()
            .any(|e| e["type"] == "node_snapshot")
    })
    .await;

    // Removed: piha's connections are cut off at once, over TLS and on the
    // plain loopback listener alike, and piha cannot log in again on
    // either.
    let over_tls = stay_connected(port, Some(ca), "piha", &secrets.password).await;
    let on_loopback = stay_connected(plain.port(), None, "piha", &secrets.password).await;
    let removed = std::time::Instant::now();
    let out = fleet_cli::node_remove(&layout, &piha).unwrap();
    assert!(out.contains("removed piha"), "{out}");
    for (listener, closed) in [("TLS", over_tls), ("loopback", on_loopback)] {
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .unwrap_or_else(|_| panic!("a removed node's {listener} connection stays open"))
            .ok();
        eprintln!(
            "{listener} connection closed {:?} after the removal",
            removed.elapsed()
        );
    }
    assert_ne!(
        try_connect("localhost", port, right(Some(ca), "homelab-agent-piha")).await,
        Outcome::Accepted,
        "a removed node"
    );
    assert_ne!(
        try_connect("127.0.0.1", plain.port(), right(None, "homelab-agent-piha")).await,
        Outcome::Accepted,
        "a removed node on loopback"
    );
    let (_, metrics) = system.get("/metrics").await;
    assert!(
        metric(&metrics, "homelab_broker_revoked_disconnects_total") >= 1.0,
        "{metrics}"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    system.stop().await.unwrap();
}

#[tokio::test]
async fn up_off_loopback_without_tls_refuses_and_says_how_to_set_it_up() {
    let root = tempfile::tempdir().unwrap();
    let repo = write_repo(&[("inventory/topology.yaml", "nodes: {}\n")]);
    let mut config = homelab::UpConfig {
        root: root.path().to_path_buf(),
        repo: repo.path().to_path_buf(),
        mqtt: "0.0.0.0:0".parse().unwrap(),
        mqtts: None,
        http: free_addr(),
        topics: Default::default(),
        agent_node: None,
        ui_token: None,
        command_timeout: std::time::Duration::from_secs(300),
        repo_sync: None,
        internal_mqtt: None,
        default_grace: Duration::ZERO,
        agent: Default::default(),
        retention: Default::default(),
        home_assistant: None,
    };
    let token = tokio_util::sync::CancellationToken::new();
    let error = format!(
        "{:#}",
        homelab::up(config.clone(), token.clone())
            .await
            .unwrap_err()
    );
    assert!(
        error.contains("plain MQTT is served on loopback only"),
        "{error}"
    );
    assert!(error.contains("homelab tls init"), "{error}");
    // TLS asked for, but no identities made yet.
    config.mqtt = free_addr();
    config.mqtts = Some("0.0.0.0:0".parse().unwrap());
    let error = format!("{:#}", homelab::up(config, token).await.unwrap_err());
    assert!(error.contains("without credentials"), "{error}");
    assert!(error.contains("homelab node add"), "{error}");
}

#[test]
fn node_commands_refuse_what_makes_no_sense() {
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let piha = Name::parse("piha").unwrap();
    let error = fleet_cli::node_add(&layout, &piha, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("homelab tls init"), "{error}");
    fleet_cli::tls_init(
        &layout,
        &["ctl.example.net".into(), "10.0.0.5".into()],
        8883,
        false,
    )
    .unwrap();
    let error = fleet_cli::tls_init(&layout, &["ctl.example.net".into()], 8883, false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("--force"), "{error}");
    assert!(fleet_cli::tls_init(&layout, &["bad name!".into()], 8883, true).is_err());
    let out = fleet_cli::node_add(&layout, &piha, None).unwrap();
    assert!(
        out.contains("--broker mqtts://ctl.example.net:8883"),
        "{out}"
    );
    assert!(fleet_cli::node_add(&layout, &piha, None)
        .unwrap_err()
        .to_string()
        .contains("node rotate"));
    let before = std::fs::read_to_string(layout.node_record(&piha)).unwrap();
    let rotated = fleet_cli::node_rotate(&layout, &piha, None).unwrap();
    let after = std::fs::read_to_string(layout.node_record(&piha)).unwrap();
    assert_ne!(before, after);
    assert!(after.contains("\"rotated\""));
    assert_ne!(out, rotated);
    assert_eq!(fleet_cli::node_list(&layout).unwrap(), "piha\n");
    fleet_cli::node_remove(&layout, &piha).unwrap();
    assert!(fleet_cli::node_remove(&layout, &piha).is_err());
    assert!(fleet_cli::node_rotate(&layout, &piha, None).is_err());
    for secret in [
        layout.tls_ca_key(),
        layout.tls_server_key(),
        layout.control_secrets(),
    ] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            secret.display()
        );
    }
}

/// An enrolled node's login, over TLS, used the way an attacker on that
/// node would: publishing and reading whatever the broker lets it.
/// A client with `user`'s login on rumqttd's internal port: past the
/// embedded broker's front, as on a broker with no per-topic rules, so
/// the signatures and seals are what stop it.
async fn attacker(system: &System, user: &str, password: &str) -> Probe {
    let inner = system.internal_mqtt().await;
    Probe::connect_with(
        "127.0.0.1",
        inner.port(),
        &format!("{user}:attacker"),
        Some((user, password)),
        None,
        &["homelab/commands/#"],
    )
    .await
}

/// Through the front (the TLS listener), `piha`'s login may write only
/// its own topics and read only its own: each refusal is counted, and the
/// same thing on its own topic (the positive control) passes.
async fn the_front_holds_a_node_to_its_topics(
    system: &System,
    port: u16,
    ca: &str,
    password: &str,
) {
    let refused = r#"homelab_broker_acl_refused_total{what="publish"}"#;
    let front = Probe::connect_with(
        "localhost",
        port,
        "piha:front",
        Some(("piha", password)),
        Some(ca),
        &[],
    )
    .await;
    for topic in [
        "homelab/events/pihb",
        "homelab/nodes/pihb/agent",
        "homelab/nodes/pihb/status",
        "homelab/commands/pihb",
        "homelab/acks/pihb",
        "homelab/config/pihb",
        "homelab/state/services/pihb/ghost",
        "homelab/actions/redeploy-pihb-ghost/approve",
    ] {
        let before = metric(&system.get("/metrics").await.1, refused);
        front.publish(topic, "{}").await;
        counted(system, refused, before).await;
    }
    // The positive control: its own agent state passes the front and is
    // what the page shows for piha.
    front
        .publish_retained(
            "homelab/nodes/piha/agent",
            r#"{"node":"piha","outbox_events":4711}"#,
        )
        .await;
    wait_for(
        "piha's own agent state taken",
        Duration::from_secs(20),
        || async {
            system
                .get("/metrics")
                .await
                .1
                .contains(r#"homelab_node_outbox_events{node="piha"} 4711"#)
        },
    )
    .await;
    // Reading another node's commands is refused; its own is granted.
    let (client, mut eventloop) = {
        let mut options = rumqttc::MqttOptions::new("piha:reader", "localhost", port);
        options.set_credentials("piha", password);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(homelab_mqtt::tls_client(ca).unwrap()),
        ));
        rumqttc::AsyncClient::new(options, 10)
    };
    client
        .subscribe_many([
            rumqttc::SubscribeFilter::new(
                "homelab/commands/pihb".into(),
                rumqttc::QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new("homelab/config/pihb".into(), rumqttc::QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(
                "homelab/commands/piha".into(),
                rumqttc::QoS::AtLeastOnce,
            ),
        ])
        .await
        .unwrap();
    let codes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) =
                eventloop.poll().await
            {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("a suback");
    assert_eq!(
        codes,
        vec![
            rumqttc::SubscribeReasonCode::Failure,
            rumqttc::SubscribeReasonCode::Failure,
            rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
        ]
    );
}

/// Through the front, Home Assistant's login reads the homelab's state and
/// the nodes' status and agent state, and writes only under its discovery
/// prefix: an event or a command from it is refused, and so is reading
/// commands.
async fn the_front_holds_home_assistant_to_its_topics(system: &System, port: u16, ca: &str) {
    let password =
        std::fs::read_to_string(fleet_cli::ha_password_file(&Layout::new(system.root())))
            .expect("fleet mode made Home Assistant's password");
    let refused = r#"homelab_broker_acl_refused_total{what="publish"}"#;
    let mut ha = Probe::connect_with(
        "localhost",
        port,
        "3Jt1cGk4vKf0Yw8sXqR2aB",
        Some((fleet_cli::HA_USER, password.trim())),
        Some(ca),
        &["homelab/state/#", "homelab/nodes/+/status"],
    )
    .await;
    ha.latest_until(Duration::from_secs(30), |m| {
        m.contains_key("homelab/state/summary") && m.contains_key("homelab/nodes/piha/status")
    })
    .await;
    for topic in [
        "homelab/events/piha",
        "homelab/commands/piha",
        "homelab/nodes/piha/agent",
    ] {
        let before = metric(&system.get("/metrics").await.1, refused);
        ha.publish(topic, "{}").await;
        counted(system, refused, before).await;
    }
    // Its own prefix passes (the positive control): the birth message the
    // observer listens for, seen behind the front.
    let (user, password_control) = homelab_core::fleet::Fleet::load(&Layout::new(system.root()))
        .unwrap()
        .expect("fleet mode")
        .control_credentials();
    let inner = system.internal_mqtt().await;
    let mut behind = Probe::connect_with(
        "127.0.0.1",
        inner.port(),
        "homelab-test-behind",
        Some((&user, &password_control)),
        None,
        &["homeassistant/status"],
    )
    .await;
    ha.publish("homeassistant/status", "online").await;
    behind
        .expect("homeassistant/status", Duration::from_secs(20), |p| {
            p == b"online"
        })
        .await;
    // Nor may it take a node's session.
    assert_ne!(
        try_connect(
            "localhost",
            port,
            Login {
                tls_ca: Some(ca),
                credentials: Some((fleet_cli::HA_USER, password.trim())),
                client_id: "homelab-agent-piha",
            }
        )
        .await,
        Outcome::Accepted,
        "Home Assistant as piha's client id"
    );
}

/// Waits until the counter `line` (a full metric name with labels) has
/// grown past `from`: the positive sign that a message was judged.
async fn counted(system: &System, line: &str, from: f64) {
    wait_for(line, Duration::from_secs(20), || async {
        metric(&system.get("/metrics").await.1, line) > from
    })
    .await;
}

async fn start_agent(
    system: &System,
    port: u16,
    token: &str,
    node: &str,
) -> (tempfile::TempDir, tokio_util::sync::CancellationToken) {
    let name = Name::parse(node).unwrap();
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let identity = homelab_agent::secrets::load(&layout, &name, Some(token))
        .unwrap()
        .unwrap();
    let mut config = homelab_agent::Config::new(name, &format!("mqtts://localhost:{port}"), layout);
    config.identity = Some(identity);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(homelab_agent::run(config, stop.clone()));
    wait_for(
        &format!("{node}'s events stored"),
        Duration::from_secs(30),
        || async {
            system
                .logged(node)
                .iter()
                .any(|e| e["type"] == "node_snapshot")
        },
    )
    .await;
    (root, stop)
}

fn token_of(out: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
        .expect("the printed command carries the token")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_pose_as_another_command_an_agent_or_approve() {
    let Some(_docker) = docker().await else {
        return;
    };
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  piha: {role: edge}\n  pihb: {role: edge}\n",
        ),
        // A service that never runs: the supervisor proposes its redeploy.
        (
            "hosts/pihb/services.yaml",
            "services:\n  ghost: {grace_period: 0s}\n",
        ),
        // Compose that starts nothing: the redeploy's command goes out and
        // comes back with an outcome, and no container is left behind.
        (
            "services/ghost/docker-compose.yml",
            "version: \"2\"\nservices: {}\n",
        ),
    ]);
    let system = fleet_system(repo, None).await;
    let port = system.mqtts.unwrap().port();
    let layout = Layout::new(system.root());
    let piha_token =
        token_of(&fleet_cli::node_add(&layout, &Name::parse("piha").unwrap(), None).unwrap());
    let pihb_token =
        token_of(&fleet_cli::node_add(&layout, &Name::parse("pihb").unwrap(), None).unwrap());
    let piha = homelab_core::identity::AgentSecrets::from_token(&piha_token).unwrap();
    let (_a_root, a_stop) = start_agent(&system, port, &piha_token, "piha").await;
    let (b_root, b_stop) = start_agent(&system, port, &pihb_token, "pihb").await;
    the_front_holds_a_node_to_its_topics(&system, port, &piha.ca_pem, &piha.password).await;
    the_front_holds_home_assistant_to_its_topics(&system, port, &piha.ca_pem).await;
    let mut evil = attacker(&system, "piha", &piha.password).await;
    let piha_key = piha.signing_key().unwrap();

    // 1. Events as pihb: unsigned, and signed with piha's own key.
    let metrics = system.get("/metrics").await.1;
    let unsigned = r#"homelab_events_rejected_total{reason="unsigned"}"#;
    let forged = r#"homelab_events_rejected_total{reason="bad_signature"}"#;
    let (before_unsigned, before_forged) = (metric(&metrics, unsigned), metric(&metrics, forged));
    let fake = event(
        "pihb",
        0,
        "containers_not_running",
        Some("ghost"),
        serde_json::json!({}),
    );
    let mut fake_unsigned = fake.clone();
    fake_unsigned["id"] = "forged-unsigned".into();
    evil.publish("homelab/events/pihb", fake_unsigned.to_string())
        .await;
    counted(&system, unsigned, before_unsigned).await;
    let mut fake_signed = fake.clone();
    fake_signed["id"] = "forged-signed".into();
    let sealed = homelab_core::identity::seal(
        fake_signed.to_string().as_bytes(),
        homelab_core::identity::Context::Event,
        &piha_key,
    );
    evil.publish("homelab/events/pihb", sealed).await;
    counted(&system, forged, before_forged).await;
    assert!(
        !system
            .logged("pihb")
            .iter()
            .any(|e| e["id"].as_str().is_some_and(|id| id.starts_with("forged"))),
        "no forged event is stored as pihb's"
    );

    // 2. The supervisor proposed the redeploy; piha cannot approve it over
    // MQTT (fleet mode takes decisions over HTTP only).
    let pending = system.action_file("pending", "redeploy-pihb-ghost");
    wait_for("redeploy proposed", Duration::from_secs(30), || async {
        pending.exists()
    })
    .await;
    let line = r#"homelab_decisions_rejected_total{reason="mqtt_approvals_off"}"#;
    let before = metric(&system.get("/metrics").await.1, line);
    evil.publish(
        "homelab/actions/redeploy-pihb-ghost/approve",
        r#"{"by":"piha"}"#,
    )
    .await;
    counted(&system, line, before).await;
    assert!(pending.exists(), "still pending");
    assert!(!system
        .action_file("approved", "redeploy-pihb-ghost")
        .exists());

    // piha claims, in the observer's retained state, that ghost runs on
    // pihb: believed, it would cancel the pending redeploy. Unsigned and
    // signed with piha's own key, both are refused.
    let fake = serde_json::json!({
        "node": "pihb", "service": "ghost", "status": "running",
        "since": homelab_core::time::format(&chrono::Utc::now()),
        "message": "", "containers": [],
    })
    .to_string();
    for (payload, reason) in [
        (fake.clone().into_bytes(), "unsigned"),
        (
            homelab_core::identity::seal(
                fake.as_bytes(),
                homelab_core::identity::Context::State,
                &piha_key,
            ),
            "bad_signature",
        ),
    ] {
        let line = format!(r#"homelab_supervisor_state_refused_total{{reason="{reason}"}}"#);
        let before = metric(&system.get("/metrics").await.1, &line);
        let passes = system.passes();
        evil.publish_retained("homelab/state/services/pihb/ghost", payload)
            .await;
        counted(&system, &line, before).await;
        wait_for(
            "a supervisor pass after it",
            Duration::from_secs(20),
            || async { system.passes() > passes + 1 },
        )
        .await;
        assert!(pending.exists(), "the redeploy is still pending");
    }

    // 3. Commands to pihb: not sealed for it, sealed but unsigned, sealed
    // and signed by piha (an attacker may know pihb's public box key), and
    // a real one replayed.
    let command = serde_json::json!({
        "v": 1, "id": "forged-command", "action_id": "redeploy-pihb-ghost", "node": "pihb",
        "type": "container_restart", "params": {"service": "ghost"},
        "issued_at": homelab_core::time::format(&chrono::Utc::now()),
        "deadline": homelab_core::time::format(&(chrono::Utc::now() + chrono::Duration::minutes(5))),
    });
    assert!(
        homelab_core::Command::from_payload(command.to_string().as_bytes()).is_ok(),
        "the forged command is well-formed: only its seal and signature are wrong"
    );
    let pihb = Name::parse("pihb").unwrap();
    let record: homelab_core::identity::NodeRecord =
        serde_json::from_slice(&std::fs::read(layout.node_record(&pihb)).unwrap()).unwrap();
    let pihb_box = homelab_core::sealbox::decode_public(&record.box_key).unwrap();
    let for_pihb = |plain: &[u8]| homelab_core::sealbox::seal(plain, &pihb, &pihb_box);
    let refused = |reason: &str| {
        format!(r#"homelab_agent_refused_total{{what="command",reason="{reason}"}}"#)
    };
    let signed_by_piha = homelab_core::identity::seal(
        command.to_string().as_bytes(),
        homelab_core::identity::Context::Command,
        &piha_key,
    );
    let mut forged: Vec<Vec<u8>> = Vec::new();
    for (payload, reason) in [
        (command.to_string().into_bytes(), "not_sealed"),
        (signed_by_piha.clone(), "not_sealed"),
        (for_pihb(command.to_string().as_bytes()), "unsigned"),
        (for_pihb(&signed_by_piha), "bad_signature"),
    ] {
        let before = metric(&system.get("/metrics").await.1, &refused(reason));
        evil.publish("homelab/commands/pihb", payload.clone()).await;
        counted(&system, &refused(reason), before).await;
        forged.push(payload);
    }

    // Approved over HTTP: the signed command runs on pihb.
    let done = approve(&system, "redeploy-pihb-ghost").await;
    assert_eq!(done["state"], "completed", "{done}");
    // What piha could read of pihb's real command: a sealed box.
    let real = evil
        .expect("homelab/commands/pihb", Duration::from_secs(30), |p| {
            !forged.iter().any(|f| f == p)
        })
        .await;
    let real_json: serde_json::Value = serde_json::from_slice(&real).unwrap();
    assert_eq!(real_json["to"], "pihb", "{real_json}");
    assert!(real_json["box"].is_string(), "{real_json}");
    let text = String::from_utf8_lossy(&real);
    assert!(
        !text.contains("redeploy") && !text.contains("ghost") && !text.contains("action_id"),
        "another node reads nothing of the command: {text}"
    );
    let duplicate = r#"homelab_agent_commands_rejected_total{reason="duplicate"}"#;
    let before = metric(&system.get("/metrics").await.1, duplicate);
    evil.publish("homelab/commands/pihb", real.clone()).await;
    counted(&system, duplicate, before).await;
    // The same sealed command on piha's topic: not for piha.
    let other = refused("other_node");
    let before = metric(&system.get("/metrics").await.1, &other);
    evil.publish("homelab/commands/piha", real).await;
    counted(&system, &other, before).await;

    // 4. Acks and node config for pihb, retained, as piha (who reads
    // pihb's config first, to replay it later). What it reads is a box
    // sealed for pihb: nothing of pihb's health checks or brokers.
    let inner = system.internal_mqtt().await;
    let mut configs = Probe::connect_with(
        "127.0.0.1",
        inner.port(),
        "piha:configs",
        Some(("piha", &piha.password)),
        None,
        &["homelab/config/pihb"],
    )
    .await;
    let sealed_for_pihb = |p: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(p)
            .is_ok_and(|v| v["to"] == "pihb" && v["box"].is_string() && v.get("revision").is_none())
    };
    let old = configs
        .expect(
            "homelab/config/pihb",
            Duration::from_secs(30),
            sealed_for_pihb,
        )
        .await;
    let line = r#"homelab_agent_refused_total{what="ack",reason="unsigned"}"#;
    let before = metric(&system.get("/metrics").await.1, line);
    evil.publish_retained("homelab/acks/pihb", "999999").await;
    counted(&system, line, before).await;
    let forged_config = r#"{"v":1,"node":"pihb","revision":"evil","healthchecks":[]}"#;
    for (payload, reason) in [
        (forged_config.as_bytes().to_vec(), "not_sealed"),
        (for_pihb(forged_config.as_bytes()), "unsigned"),
        (
            for_pihb(&homelab_core::identity::seal(
                forged_config.as_bytes(),
                homelab_core::identity::Context::NodeConfig,
                &piha_key,
            )),
            "bad_signature",
        ),
    ] {
        let line = format!(r#"homelab_agent_refused_total{{what="config",reason="{reason}"}}"#);
        let before = metric(&system.get("/metrics").await.1, &line);
        evil.publish_retained("homelab/config/pihb", payload).await;
        counted(&system, &line, before).await;
    }

    // A newer config for pihb (a broker to probe), applied; then the old
    // sealed one replayed: refused as stale, the newer one stays.
    let stored = Layout::new(b_root.path()).agent_config(&Name::parse("pihb").unwrap());
    let stored_revision =
        || read_json(&stored).map(|c| c["revision"].as_str().unwrap_or("").to_string());
    // (None yet when pihb's first config said nothing new: no file.)
    let first = stored_revision().ok();
    std::fs::write(
        system.repo.path().join("hosts/pihb/services.yaml"),
        "services:\n  ghost: {grace_period: 0s, mqtt_broker: \"127.0.0.1:9\"}\n",
    )
    .unwrap();
    configs
        .expect("homelab/config/pihb", Duration::from_secs(30), |p| {
            sealed_for_pihb(p) && p != old.as_slice()
        })
        .await;
    wait_for(
        "pihb applied the newer config",
        Duration::from_secs(30),
        || async { stored_revision().is_ok_and(|r| Some(&r) != first.as_ref()) },
    )
    .await;
    let newer = stored_revision().unwrap();
    assert!(
        read_json(&stored).unwrap()["mqtt_brokers"]
            .to_string()
            .contains("127.0.0.1:9"),
        "the config pihb opened is the one the repo says"
    );
    let line = r#"homelab_agent_refused_total{what="config",reason="stale"}"#;
    let before = metric(&system.get("/metrics").await.1, line);
    evil.publish_retained("homelab/config/pihb", old).await;
    counted(&system, line, before).await;
    assert_eq!(stored_revision().unwrap(), newer, "the newer config stays");

    a_stop.cancel();
    b_stop.cancel();
    system.stop().await.unwrap();
}
