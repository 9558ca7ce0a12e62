//! MQTT 5 clients (what Home Assistant's setup form picks by default) on
//! the embedded broker, on both listeners: the contract of
//! docs/protocol.md holds for them as for 3.1.1 clients (retained state,
//! the Last Will, QoS 1), and in fleet mode the logins and per-topic
//! permissions answer them with MQTT 5 reason codes.

use std::time::Duration;

use homelab::fleet_cli;
use homelab_core::{Layout, Name};
use homelab_tests::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, LastWill, Packet, PubAckReason, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(30);

/// An MQTT 5 client whose packets from the broker (and its connection
/// error, if any) come out of `rx`; dropping `task` cuts the TCP
/// connection without a DISCONNECT.
struct V5 {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Packet, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl V5 {
    fn start(options: MqttOptions) -> V5 {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let refused = match &error {
                            ConnectionError::ConnectionRefused(code) => format!("refused {code:?}"),
                            other => other.to_string(),
                        };
                        let _ = tx.send(Err(refused));
                        return;
                    }
                }
            }
        });
        V5 { client, rx, task }
    }

    fn options(
        id: &str,
        port: u16,
        tls_ca: Option<&str>,
        login: Option<(&str, &str)>,
    ) -> MqttOptions {
        let host = if tls_ca.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        if let Some(ca) = tls_ca {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(homelab_mqtt::tls_client(ca).unwrap()),
            ));
        }
        options
    }

    /// The next packet `pick` takes; fails the test after `T`.
    async fn next<R>(&mut self, what: &str, mut pick: impl FnMut(&Packet) -> Option<R>) -> R {
        tokio::time::timeout(T, async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(packet)) => {
                        if let Some(found) = pick(&packet) {
                            return found;
                        }
                    }
                    Some(Err(error)) => panic!("{what}: the connection ended: {error}"),
                    None => panic!("{what}: the client stopped"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {T:?}"))
    }

    async fn connected(&mut self) {
        self.next("CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await
    }

    /// How the broker answered the connect: `Ok` or the refusal.
    async fn connect_outcome(&mut self) -> Result<(), String> {
        tokio::time::timeout(T, async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(Packet::ConnAck(_))) => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error),
                    None => return Err("stopped".into()),
                }
            }
        })
        .await
        .expect("an answer to the connect")
    }

    async fn puback(&mut self) -> PubAckReason {
        self.next("PUBACK", |p| match p {
            Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await
    }

    async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
        self.next("SUBACK", |p| match p {
            Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// The next message on `topic` that `want` takes: (payload, retained, QoS).
    async fn message(&mut self, topic: &str, want: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool, QoS) {
        self.next(topic, |p| match p {
            Packet::Publish(publish)
                if publish.topic == topic.as_bytes() && want(&publish.payload) =>
            {
                Some((publish.payload.to_vec(), publish.retain, publish.qos))
            }
            _ => None,
        })
        .await
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_client_gets_retained_state_its_last_will_and_qos_1() {
    init_logs();
    let repo = write_repo(&[("inventory/topology.yaml", "nodes:\n  v5n: {role: home}\n")]);
    let system = System::start(repo, Options::default()).await;
    let port = system.mqtt.port();

    // A node speaking MQTT 5: its Last Will marks it offline; it says it is
    // online and sends an event, both at QoS 1, each acknowledged.
    let mut options = V5::options("v5n:node", port, None, None);
    options.set_last_will(LastWill::new(
        "homelab/nodes/v5n/status",
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let mut node = V5::start(options);
    node.connected().await;
    node.client
        .publish("homelab/nodes/v5n/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    assert_eq!(node.puback().await, PubAckReason::Success);
    let event = event(
        "v5n",
        1,
        "node_snapshot",
        None,
        serde_json::json!({"containers": []}),
    );
    let id = event["id"].as_str().unwrap().to_string();
    node.client
        .publish(
            "homelab/events/v5n",
            QoS::AtLeastOnce,
            false,
            event.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(node.puback().await, PubAckReason::Success);
    wait_for("the v5 event stored", T, || async {
        system.logged("v5n").iter().any(|e| e["id"] == id.as_str())
    })
    .await;

    // A subscriber speaking MQTT 5 that comes later gets the retained
    // world state and the node's status, at QoS 1.
    let mut watcher = V5::start(V5::options("v5-watcher", port, None, None));
    watcher.connected().await;
    watcher
        .client
        .subscribe_many([
            Filter::new("homelab/state/#", QoS::AtLeastOnce),
            Filter::new("homelab/nodes/+/status", QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        watcher.suback().await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 2]
    );
    let (summary, retained, qos) = watcher.message("homelab/state/summary", |_| true).await;
    assert!(retained, "the summary is retained");
    assert_eq!(qos, QoS::AtLeastOnce);
    let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert!(summary.is_object(), "{summary}");
    let (_, retained, _) = watcher
        .message("homelab/nodes/v5n/status", |p| p == b"online")
        .await;
    assert!(retained, "the node's status is retained");

    // The node's connection drops without a DISCONNECT: its Last Will is
    // delivered, and the page says it is offline.
    drop(node);
    watcher
        .message("homelab/nodes/v5n/status", |p| p == b"offline")
        .await;
    wait_for("the page shows v5n offline", T, || async {
        let (_, nodes) = system.get("/api/nodes").await;
        serde_json::from_str::<serde_json::Value>(&nodes).is_ok_and(|nodes| {
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["node"] == "v5n" && n["status"] == "offline")
        })
    })
    .await;
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fleet_mode_v5_clients_get_reason_codes_for_what_is_refused() {
    init_logs();
    let repo = write_repo(&[(
        "inventory/topology.yaml",
        "nodes:\n  piha: {role: home}\n  pihb: {role: home}\n",
    )]);
    let system = System::start(
        repo,
        Options {
            fleet: true,
            ..Default::default()
        },
    )
    .await;
    let port = system.mqtts.expect("fleet mode listens with TLS").port();
    let layout = Layout::new(system.root());
    let out = fleet_cli::node_add(&layout, &Name::parse("piha").unwrap(), None).unwrap();
    let token = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
        .unwrap();
    let piha = homelab_core::identity::AgentSecrets::from_token(token).unwrap();
    let ca = piha.ca_pem.as_str();

    // Logins: a wrong password and another node's client id, each with
    // its MQTT 5 reason code, over TLS and on the loopback listener.
    for (tls, port) in [(Some(ca), port), (None, system.mqtt.port())] {
        let mut wrong = V5::start(V5::options("piha:v5", port, tls, Some(("piha", "guessed"))));
        assert_eq!(
            wrong.connect_outcome().await,
            Err(format!(
                "refused {:?}",
                ConnectReturnCode::BadUserNamePassword
            )),
            "a wrong password (tls: {})",
            tls.is_some()
        );
        let mut other = V5::start(V5::options(
            "homelab-agent-pihb",
            port,
            tls,
            Some(("piha", &piha.password)),
        ));
        assert_eq!(
            other.connect_outcome().await,
            Err(format!("refused {:?}", ConnectReturnCode::NotAuthorized)),
            "piha as pihb's client id"
        );
    }

    // piha's own login over TLS: another node's topic gets "not
    // authorized", its own passes and is what /metrics shows.
    let mut own = V5::start(V5::options(
        "piha:v5",
        port,
        Some(ca),
        Some(("piha", &piha.password)),
    ));
    own.connected().await;
    own.client
        .publish(
            "homelab/nodes/pihb/agent",
            QoS::AtLeastOnce,
            true,
            r#"{"node":"pihb","outbox_events":424242}"#,
        )
        .await
        .unwrap();
    assert_eq!(own.puback().await, PubAckReason::NotAuthorized);
    own.client
        .publish(
            "homelab/nodes/piha/agent",
            QoS::AtLeastOnce,
            true,
            r#"{"node":"piha","outbox_events":4711}"#,
        )
        .await
        .unwrap();
    assert_eq!(own.puback().await, PubAckReason::Success);
    wait_for("piha's own agent state taken", T, || async {
        system
            .get("/metrics")
            .await
            .1
            .contains(r#"homelab_node_outbox_events{node="piha"} 4711"#)
    })
    .await;
    assert!(!system.get("/metrics").await.1.contains("424242"));
    own.client
        .subscribe_many([
            Filter::new("homelab/commands/pihb", QoS::AtLeastOnce),
            Filter::new("homelab/#", QoS::AtLeastOnce),
            Filter::new("homelab/commands/piha", QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        own.suback().await,
        vec![
            SubscribeReasonCode::NotAuthorized,
            SubscribeReasonCode::NotAuthorized,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
        ]
    );
    // The connection is still good after the refusals.
    own.client
        .publish(
            "homelab/nodes/piha/status",
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
    assert_eq!(own.puback().await, PubAckReason::Success);
    system.stop().await.unwrap();
}

/// The same with Mosquitto and what `homelab mosquitto-config` writes: a
/// v5 client gets its reason codes there too (Mosquitto's own), and a
/// node's own topics pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_the_generated_config_answers_v5_clients() {
    init_logs();
    if std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_err()
    {
        assert!(std::env::var("CI").is_err(), "mosquitto is not installed");
        eprintln!("\n*** SKIPPED: mosquitto is not installed ***\n");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let port = free_addr().port();
    fleet_cli::tls_init(&layout, &["localhost".to_string()], port, false).unwrap();
    let out = fleet_cli::node_add(&layout, &Name::parse("piha").unwrap(), None).unwrap();
    fleet_cli::node_add(&layout, &Name::parse("pihb").unwrap(), None).unwrap();
    let token = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("HOMELAB_ENROLL="))
        .unwrap();
    let piha = homelab_core::identity::AgentSecrets::from_token(token).unwrap();
    let conf = tempfile::tempdir().unwrap();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    fleet_cli::mosquitto_config(
        &layout,
        conf.path(),
        &homelab_core::Topics::default(),
        listen,
        None,
    )
    .unwrap();
    let _mosquitto =
        configured_mosquitto(conf.path(), listen, &root.path().join("mosquitto.log")).await;
    let ca = piha.ca_pem.as_str();

    // Mosquitto 2 answers a wrong password with "not authorized".
    let mut wrong = V5::start(V5::options(
        "piha:v5",
        port,
        Some(ca),
        Some(("piha", "guessed")),
    ));
    let outcome = wrong.connect_outcome().await;
    assert!(
        [
            ConnectReturnCode::BadUserNamePassword,
            ConnectReturnCode::NotAuthorized
        ]
        .iter()
        .any(|code| outcome == Err(format!("refused {code:?}"))),
        "{outcome:?}"
    );
    let mut own = V5::start(V5::options(
        "piha:v5",
        port,
        Some(ca),
        Some(("piha", &piha.password)),
    ));
    own.connected().await;
    own.client
        .subscribe_many([
            Filter::new("homelab/commands/pihb", QoS::AtLeastOnce),
            Filter::new("homelab/commands/piha", QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let codes = own.suback().await;
    assert_eq!(
        codes[1],
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "{codes:?}"
    );
    own.client
        .publish(
            "homelab/nodes/pihb/agent",
            QoS::AtLeastOnce,
            true,
            r#"{"node":"pihb","outbox_events":424242}"#,
        )
        .await
        .unwrap();
    let refused = own.puback().await;
    own.client
        .publish(
            "homelab/nodes/piha/status",
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
    // Accepted (Mosquitto says no one reads it yet: still a success).
    let accepted = own.puback().await;
    assert!(
        matches!(
            accepted,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "{accepted:?}"
    );
    // What Mosquitto says of the refused publish, and that it was not
    // passed on: a reader of pihb's agent state (the control plane's
    // login) gets nothing retained from piha.
    let control: homelab_core::identity::ControlSecrets =
        serde_json::from_slice(&std::fs::read(layout.control_secrets()).unwrap()).unwrap();
    let mut reader = V5::start(V5::options(
        "homelab-v5-reader",
        port,
        Some(ca),
        Some((homelab_core::identity::CONTROL_USER, &control.password)),
    ));
    reader.connected().await;
    reader
        .client
        .subscribe_many([
            Filter::new("homelab/nodes/+/agent", QoS::AtLeastOnce),
            Filter::new("homelab/nodes/piha/status", QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let mut before = Vec::new();
    reader
        .next("piha's retained status", |p| match p {
            Packet::Publish(p) if p.topic == "homelab/nodes/piha/status".as_bytes() => Some(()),
            Packet::Publish(p) => {
                before.push(String::from_utf8_lossy(&p.topic).into_owned());
                None
            }
            _ => None,
        })
        .await;
    assert!(
        before.is_empty(),
        "Mosquitto passed on {before:?} (PUBACK {refused:?})"
    );
    eprintln!("Mosquitto's answers to piha: SUBACK {codes:?}, PUBACK of pihb's topic {refused:?}");
}
