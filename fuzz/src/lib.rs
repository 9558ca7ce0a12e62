//! What each fuzz target does with its input, as plain functions: the
//! targets in `fuzz_targets/` call them under libFuzzer (`cargo +nightly
//! fuzz run <target>`), and the test below replays the committed corpus
//! through them on stable, so a crash the fuzzer once found stays fixed.
//!
//! Every decoder here takes input from outside: a node's events, the
//! control plane's commands and node configs as an agent opens them, the
//! signed and sealed envelopes around them, an enrolment token, the
//! desired-state repo, and what a client sends the broker's front. A
//! target fails only by panicking: a decoder must refuse bad input with an
//! error, and what it accepts must survive the way the system stores it.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use homelab_core::identity::{self, AgentSecrets, Context};
use homelab_core::nodeconfig::NodeConfig;
use homelab_core::{sealbox, Command, Event, Name};

fn piha() -> &'static Name {
    static NAME: OnceLock<Name> = OnceLock::new();
    NAME.get_or_init(|| Name::parse("piha").expect("a good name"))
}

/// An event from a node (`homelab/events/<node>`, or a line of the log).
/// One the observer accepts is written to the log as JSON and read back
/// at every start: it must read back, and as an event that validates.
pub fn event(data: &[u8]) {
    let _ = Event::peek_kind(data);
    if let Ok(event) = Event::from_payload(data) {
        let line = serde_json::to_vec(&event).expect("an accepted event serializes");
        let again = Event::from_payload(&line).expect("an accepted event reads back");
        assert_eq!(again.id, event.id);
        assert_eq!(again.seq, event.seq);
    }
}

/// A command as an agent reads it once its envelope is opened.
pub fn command(data: &[u8]) {
    if let Ok(command) = Command::from_payload(data) {
        let again = serde_json::to_vec(&command).expect("an accepted command serializes");
        assert_eq!(
            Command::from_payload(&again).expect("an accepted command reads back"),
            command
        );
    }
}

/// A container logs request as an agent reads it once its envelope is
/// opened, and a reply as the UI reads it: what is accepted survives a
/// round trip, a request is checked without a panic, and any text is cut
/// to its bound on a character.
pub fn logs(data: &[u8]) {
    use homelab_core::logs;
    if let Ok(request) = serde_json::from_slice::<logs::Request>(data) {
        let now = "2026-12-07T10:00:00Z".parse().expect("a time");
        let _ = request.check(piha(), now, true);
        let _ = request.check(piha(), now, false);
        let again = serde_json::to_vec(&request).expect("a request serializes");
        assert_eq!(
            serde_json::from_slice::<logs::Request>(&again).expect("a request reads back"),
            request
        );
    }
    if let Ok(reply) = serde_json::from_slice::<logs::Reply>(data) {
        let again = serde_json::to_vec(&reply).expect("a reply serializes");
        assert_eq!(
            serde_json::from_slice::<logs::Reply>(&again).expect("a reply reads back"),
            reply
        );
    }
    let text = String::from_utf8_lossy(data);
    let cut = logs::bound_line(&text);
    assert!(cut.len() <= logs::MAX_LINE_BYTES);
    let _ = logs::container_name_ok(&text);
}

/// A node config as an agent reads it once its envelope is opened: for
/// this node and for another.
pub fn node_config(data: &[u8]) {
    if let Ok(config) = NodeConfig::from_payload(data, piha()) {
        assert_eq!(&config.node, piha());
    }
    let _ = NodeConfig::from_payload(data, &Name::parse("vps").expect("a good name"));
}

struct Keys {
    signing: identity::SecretKey,
    verifying: identity::PublicKey,
    boxed: sealbox::BoxSecret,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = identity::SecretKey::from_bytes(&[7u8; 32]);
        Keys {
            verifying: signing.verifying_key(),
            signing,
            boxed: sealbox::BoxSecret::from([9u8; 32]),
        }
    })
}

/// The envelopes: a signed payload (events, commands, configs, approvals),
/// a batch of them, a signed ack text, a box sealed for a node. Bad input
/// is refused without a panic; what is signed here opens again, and only
/// in the context it was signed for.
pub fn envelope(data: &[u8]) {
    let keys = keys();
    let _ = identity::split(data);
    for context in [Context::Event, Context::Command, Context::Ack] {
        let _ = identity::open(data, context, &keys.verifying);
    }
    let parts: Vec<(&[u8], &identity::PublicKey)> = data
        .split(|b| *b == b'\n')
        .map(|part| (part, &keys.verifying))
        .collect();
    let opened = identity::open_many(&parts, Context::Event);
    assert_eq!(opened.len(), parts.len());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = identity::open_text(text, "piha", Context::Ack, &keys.verifying);
    }
    let _ = sealbox::open(data, piha(), &keys.boxed);

    // A payload this side signs opens, alone and in a batch.
    let json = data.trim_ascii_end();
    if identity::sealable(json) {
        let sealed = identity::seal(json, Context::Command, &keys.signing);
        let opened = identity::open(&sealed, Context::Command, &keys.verifying)
            .expect("a sealed payload opens");
        assert_eq!(opened, json);
        assert!(identity::open(&sealed, Context::Event, &keys.verifying).is_err());
        let batch = identity::open_many(
            &[(&sealed, &keys.verifying), (&sealed, &keys.verifying)],
            Context::Command,
        );
        assert!(batch.iter().all(|b| b.as_deref() == Ok(json)));
    }
}

/// An enrolment token (`HOMELAB_ENROLL=`), as given, and as the base64 of
/// the fuzzer's bytes so the JSON inside is explored too.
pub fn enrol_token(data: &[u8]) {
    let token = match data.split_first() {
        Some((first, rest)) if first & 1 == 1 => URL_SAFE_NO_PAD.encode(rest),
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    if let Ok(secrets) = AgentSecrets::from_token(&token) {
        secrets.check().expect("an accepted token's secrets check");
        let again = AgentSecrets::from_token(&secrets.to_token()).expect("a token reads back");
        assert_eq!(again.node, secrets.node);
    }
}

/// Where the desired-state input's sections go: `=== <digit>` starts
/// a section for the file of that slot.
pub const DESIRED_FILES: [&str; 10] = [
    "inventory/topology.yaml",
    "inventory/maintenance.yaml",
    "hosts/piha/services.yaml",
    "hosts/piha/capabilities.yaml",
    "hosts/vps/services.yaml",
    "services/mosquitto/service.yaml",
    "services/mosquitto/healthcheck.sh",
    "services/mosquitto/docker-compose.yml",
    "services/outline/service.yaml",
    "hosts/piha/runtime/mosquitto/docker-compose.override.yml",
];

/// The files one desired-state input stands for.
pub fn desired_sections(data: &[u8]) -> Vec<(&'static str, &[u8])> {
    let mut out: Vec<(&'static str, &[u8])> = Vec::new();
    let mut rest = data;
    while let Some(at) = find(rest, b"=== ") {
        rest = &rest[at + 4..];
        let Some((&slot, body)) = rest.split_first() else {
            break;
        };
        let body = body.strip_prefix(b"\n").unwrap_or(body);
        let end = find(body, b"\n=== ").map_or(body.len(), |e| e + 1);
        if let Some(path) = slot
            .checked_sub(b'0')
            .and_then(|i| DESIRED_FILES.get(i as usize))
        {
            out.retain(|(p, _)| p != path);
            out.push((path, &body[..end]));
        }
        rest = &body[end..];
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A desired-state repo written from the input's sections and loaded, as
/// the supervisor loads the user's repo. Files are real (in a directory
/// made once per process and emptied between inputs).
pub fn desired(data: &[u8]) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = std::path::Path::new("/dev/shm");
        match base.is_dir() {
            true => tempfile::tempdir_in(base),
            false => tempfile::tempdir(),
        }
        .expect("a temporary directory")
    });
    let repo = dir.path().join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    for (path, body) in desired_sections(data) {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
        std::fs::write(&path, body).expect("a file");
    }
    let loaded = homelab_core::desired::load_partial(&repo);
    match homelab_core::desired::load(&repo) {
        Ok(_) => assert!(loaded.problems.is_empty()),
        Err(problems) => {
            assert!(!problems.is_empty());
            assert_eq!(problems.len(), loaded.problems.len());
        }
    }
}

/// What a client sends the broker's front on one connection.
pub fn front(data: &[u8]) {
    homelab_broker::front::fuzz_connection(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input of the committed corpus (and every crash once found,
    /// under `regressions/`) goes through its target again.
    #[test]
    fn the_corpus_replays_without_a_panic() {
        let targets: [(&str, fn(&[u8])); 8] = [
            ("event", event),
            ("command", command),
            ("node_config", node_config),
            ("envelope", envelope),
            ("enrol_token", enrol_token),
            ("desired", desired),
            ("front", front),
            ("logs", logs),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, target) in targets {
            let mut count = 0;
            for dir in [root.join("corpus").join(name), root.join("regressions").join(name)] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    target(&std::fs::read(&path).unwrap());
                    count += 1;
                }
            }
            assert!(count > 0, "the corpus of {name} is empty");
        }
    }

    #[test]
    fn desired_input_splits_into_files() {
        let input = b"=== 0\nnodes:\n  piha: {role: home}\n=== 2\nservices: []\n=== x\nignored\n";
        assert_eq!(
            desired_sections(input),
            vec![
                ("inventory/topology.yaml", &b"nodes:\n  piha: {role: home}\n"[..]),
                ("hosts/piha/services.yaml", &b"services: []\n"[..]),
            ]
        );
    }

    /// Writes the seed corpus from the project's own types, the example
    /// repo and its wire formats: `cargo test --manifest-path
    /// fuzz/Cargo.toml -- --ignored write_seeds`. The fuzzer grows it.
    #[test]
    #[ignore]
    fn write_seeds() {
        use homelab_broker::packet::{encode, Level};
        use rumqttd::protocol::{
            Connect, Filter, LastWill, Login, Packet, PubAck, PubAckReason, QoS, RetainForwardRule,
            SubAck, Subscribe, SubscribeReasonCode,
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();

        // Events, as agents send them.
        let events = [
            r#"{"v":1,"id":"01JD0000000000000000000001","ts":"2026-11-22T10:00:00Z","node":"piha","seq":1,"source":"docker","type":"node_snapshot","data":{"containers":[{"name":"mosquitto","service":"mosquitto","state":"running","health":"healthy","image":"eclipse-mosquitto:2"}]}}"#,
            r#"{"v":1,"id":"01JD0000000000000000000002","ts":"2026-11-22T10:00:01.5+01:00","node":"piha","seq":2,"source":"docker","type":"container_died","service":"mosquitto","severity":"warning","message":"exit 137","data":{"exit_code":137}}"#,
            r#"{"v":1,"id":"01JD0000000000000000000003","ts":"2026-11-22T10:00:02Z","node":"vps","source":"disk","type":"disk_high","severity":"critical","data":{"mount":"/","used_pct":97.5}}"#,
            r#"{"v":1,"id":"ev-3","ts":"2026-11-22T10:00:03Z","node":"edge1","seq":400,"source":"outbox","type":"events_dropped","data":{"first":2,"through":341,"count":340}}"#,
        ];
        for (i, e) in events.iter().enumerate() {
            Event::from_payload(e.as_bytes()).expect("a good event seed");
            write("event", &format!("seed-{i}"), e.as_bytes());
        }

        // Commands, each kind.
        let commands: [&str; 3] = [
            r#"{"v":1,"id":"01JD","action_id":"container-restart-piha-mosquitto","node":"piha","type":"container_restart","params":{"service":"mosquitto"},"issued_at":"2026-11-22T10:00:00Z","deadline":"2026-11-22T10:05:00Z"}"#,
            &format!(
                r#"{{"v":1,"id":"01JE","action_id":"redeploy-vps-outline","node":"vps","type":"redeploy","params":{{"service":"outline","compose":{{"project":"outline","compose_version":"v1","files":[{{"path":"docker-compose.yml","sha256":"{}","content":"services:\n  outline:\n    image: outline:1\n"}}]}}}},"issued_at":"2026-11-22T10:00:00Z","deadline":"2026-11-22T10:05:00Z"}}"#,
                homelab_core::command::sha256_hex(b"services:\n  outline:\n    image: outline:1\n")
            ),
            r#"{"v":1,"id":"01JF","action_id":"disk-cleanup-vps","node":"vps","type":"disk_cleanup","params":{"keep_services":["outline"],"older_than_secs":86400},"issued_at":"2026-11-22T10:00:00Z","deadline":"2026-11-22T10:05:00Z"}"#,
        ];
        for (i, c) in commands.iter().enumerate() {
            Command::from_payload(c.as_bytes()).expect("a good command seed");
            write("command", &format!("seed-{i}"), c.as_bytes());
        }

        // Logs requests and replies.
        let logs = [
            r#"{"v":1,"id":"01JF","node":"piha","container":"zigbee2mqtt-1","lines":200,"follow_secs":0,"issued_at":"2026-12-07T10:00:00Z","deadline":"2026-12-07T10:00:10Z","reply_key":"AAAA"}"#,
            r#"{"v":1,"id":"01JG","node":"piha","container":"web-1","lines":0,"follow_secs":120,"since":1765100000,"issued_at":"2026-12-07T10:00:00Z","deadline":"2026-12-07T10:00:10Z"}"#,
            r#"{"v":1,"id":"01JF","node":"piha","seq":0,"lines":[{"ts":"2026-12-07T10:00:00.123456789Z","stream":"stderr","text":"oops"}],"dropped":3,"done":true,"error":"no container x on piha"}"#,
        ];
        for (i, l) in logs.iter().enumerate() {
            write("logs", &format!("seed-{i}"), l.as_bytes());
        }

        // Node configs built from the example repo, as the supervisor does.
        let desired = homelab_core::desired::load(repo).expect("the example repo loads");
        let mut scripts = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(repo.join("services")).unwrap() {
            let dir = entry.unwrap().path();
            if let Ok(script) = std::fs::read_to_string(dir.join("healthcheck.sh")) {
                let name = dir.file_name().unwrap().to_str().unwrap();
                scripts.insert(Name::parse(name).unwrap(), script);
            }
        }
        for node in ["piha", "vps"] {
            let config = NodeConfig::build(&Name::parse(node).unwrap(), &desired, &scripts);
            write("node_config", node, &serde_json::to_vec(&config).unwrap());
        }

        // Envelopes: signed payloads, a batch, an ack, a sealed box.
        let keys = keys();
        let signed = identity::seal(commands[0].as_bytes(), Context::Command, &keys.signing);
        write("envelope", "signed-command", &signed);
        let event = identity::seal(events[1].as_bytes(), Context::Event, &keys.signing);
        write("envelope", "batch", &[event.clone(), b"\n".to_vec(), event].concat());
        let ack = identity::seal_text("41", "piha", Context::Ack, &keys.signing);
        write("envelope", "ack", ack.as_bytes());
        let public = sealbox::BoxPublic::from(&keys.boxed);
        write("envelope", "sealed", &sealbox::seal(&signed, piha(), &public));
        write("envelope", "unsigned", commands[2].as_bytes());

        // Enrolment tokens: a good one, and its JSON (the odd first byte
        // says "encode me").
        let secrets = AgentSecrets {
            v: 1,
            node: piha().clone(),
            username: "piha".into(),
            password: "correct horse battery staple".into(),
            node_key: identity::encode_secret_key(&keys.signing),
            box_key: sealbox::encode_secret(&keys.boxed),
            control_key: identity::encode_public_key(&keys.verifying),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        };
        AgentSecrets::from_token(&secrets.to_token()).expect("a good token seed");
        write("enrol_token", "token", secrets.to_token().as_bytes());
        let json = [b"\x01".as_slice(), &serde_json::to_vec(&secrets).unwrap()].concat();
        write("enrol_token", "json", &json);

        // The example repo, in the desired target's sections.
        let mut sections = Vec::new();
        for (slot, path) in DESIRED_FILES.iter().enumerate() {
            if let Ok(text) = std::fs::read(repo.join(path)) {
                sections.extend_from_slice(format!("=== {slot}\n").as_bytes());
                sections.extend_from_slice(&text);
            }
        }
        write("desired", "example", &sections);
        write(
            "desired",
            "small",
            b"=== 0\nnodes:\n  piha: {role: home}\n=== 2\nservices:\n  - name: mosquitto\n=== 5\nname: mosquitto\n",
        );

        // What clients send the front: a node's session, Home Assistant's,
        // in MQTT 3.1.1 and 5, with a SUBACK from the broker among them.
        for (level, name) in [(Level::V4, "v4"), (Level::V5, "v5")] {
            for user in ["piha", "@home-assistant"] {
                let mut connect = Connect {
                    keep_alive: 30,
                    client_id: format!("{user}:agent"),
                    clean_session: false,
                };
                if user != "piha" {
                    connect.client_id = "home-assistant".into();
                }
                let will = LastWill {
                    topic: format!("homelab/nodes/{user}/status").into(),
                    message: "offline".into(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                };
                let login = Login {
                    username: user.into(),
                    password: "pw".into(),
                };
                let mut bytes = encode(
                    level,
                    Packet::Connect(connect, None, Some(will), None, Some(login)),
                );
                // rumqttd's Publish keeps its QoS private: framed by hand.
                let publish = |topic: &str, qos: u8, pkid: u16| {
                    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
                    body.extend_from_slice(topic.as_bytes());
                    if qos > 0 {
                        body.extend_from_slice(&pkid.to_be_bytes());
                    }
                    if level == Level::V5 {
                        body.push(0);
                    }
                    body.extend_from_slice(b"{\"v\":1}");
                    let mut frame = vec![0x30 | (qos << 1), body.len() as u8];
                    frame.extend(body);
                    frame
                };
                bytes.extend(publish("homelab/events/piha", 1, 1));
                bytes.extend(publish("homelab/nodes/pihb/agent", 1, 2));
                bytes.extend(publish("homelab/nodes/piha/vitals", 0, 0));
                let filter = |path: &str| Filter {
                    path: path.into(),
                    qos: QoS::AtLeastOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                };
                bytes.extend(encode(
                    level,
                    Packet::Subscribe(
                        Subscribe {
                            pkid: 3,
                            filters: vec![
                                filter("homelab/commands/piha"),
                                filter("homelab/#"),
                                filter("homeassistant/status"),
                            ],
                        },
                        None,
                    ),
                ));
                bytes.extend(encode(
                    level,
                    Packet::SubAck(
                        SubAck {
                            pkid: 3,
                            return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 2],
                        },
                        None,
                    ),
                ));
                bytes.extend(encode(level, Packet::PubAck(
                        PubAck {
                            pkid: 7,
                            reason: PubAckReason::Success,
                        },
                        None,
                    )));
                bytes.extend([0xc0, 0x00, 0xe0, 0x00]);
                write("front", &format!("{name}-{}", user.trim_start_matches('@')), &bytes);
            }
        }
    }
}
