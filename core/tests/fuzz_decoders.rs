//! Fuzzing, bounded for CI, of every decoder that takes input from outside:
//! event, command and node-config payloads, signed envelopes, enrollment
//! tokens, names and the desired-state loader. Arbitrary bytes and
//! mutations of valid inputs must give an answer (Ok or a clear error),
//! never a panic, and whatever is accepted must hold only valid names.
//! The loader must write nothing (checked: the repo's files before and
//! after).
//!
//! `PROPTEST_CASES=20000 cargo test -p homelab-core --test fuzz_decoders`
//! runs longer.

use std::collections::BTreeMap;
use std::path::Path;

use homelab_core::identity::{self, AgentSecrets, Context};
use homelab_core::nodeconfig::NodeConfig;
use homelab_core::{desired, Command, Event, Name};
use proptest::prelude::*;

const EVENT: &str = r#"{"v":1,"id":"01JD0000000000000000000000","ts":"2026-11-22T10:00:00.123Z","node":"piha","seq":42,"source":"node-agent","type":"containers_not_running","service":"mosquitto","severity":"warning","message":"exited (137)","data":{"containers":[{"name":"mosquitto","state":"exited"}]}}"#;
const COMMAND: &str = r#"{"v":1,"id":"01JD0000000000000000000001","action_id":"redeploy-piha-mosquitto","node":"piha","type":"redeploy","params":{"service":"mosquitto","compose":{"project":"mosquitto","files":[{"path":"services/mosquitto/docker-compose.yml","sha256":"00","content":"services: {}\n"}]}},"issued_at":"2026-11-22T10:00:00Z","deadline":"2026-11-22T10:05:00Z"}"#;
/// A valid node config (revision and script digest right) with a health
/// check, a broker and a disk policy.
fn config_seed() -> &'static str {
    static SEED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SEED.get_or_init(|| {
        let node = Name::parse("piha").unwrap();
        let mut config = NodeConfig::empty(&node);
        config
            .healthchecks
            .push(homelab_core::nodeconfig::HealthcheckSpec {
                service: Name::parse("mosquitto").unwrap(),
                script: "exit 0\n".into(),
                sha256: homelab_core::command::sha256_hex(b"exit 0\n"),
                interval_secs: 30,
                timeout_secs: 10,
                retries: 3,
            });
        config
            .mqtt_brokers
            .push(homelab_core::nodeconfig::BrokerSpec {
                service: Name::parse("mosquitto").unwrap(),
                address: "127.0.0.1:1883".into(),
            });
        config.disk.mounts.push("/srv".into());
        config.revision = config.digest();
        serde_json::to_string(&config).unwrap()
    })
}

/// A valid input with a few bytes changed, cut, or repeated.
fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((0..base.len(), any::<u8>()), 0..6),
        0..=base.len(),
        any::<bool>(),
    )
        .prop_map(move |(changes, cut, repeat)| {
            let mut bytes = base.as_bytes().to_vec();
            for (at, byte) in changes {
                bytes[at] = byte;
            }
            bytes.truncate(cut.max(1));
            if repeat {
                let copy = bytes.clone();
                bytes.extend_from_slice(&copy);
            }
            bytes
        })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2048)
}

fn check_event(payload: &[u8]) {
    if let Ok(event) = Event::from_payload(payload) {
        assert!(Name::parse(event.node.as_str()).is_ok());
        if let Some(service) = &event.service {
            assert!(Name::parse(service.as_str()).is_ok());
        }
        assert!(event.data.is_object());
    }
}

fn check_command(payload: &[u8]) {
    if let Ok(command) = Command::from_payload(payload) {
        assert!(Name::parse(command.node.as_str()).is_ok());
        assert!(Name::parse(command.action_id.as_str()).is_ok());
    }
}

fn check_signed(payload: &[u8]) {
    let key = identity::generate_key();
    // Nobody's signature opens with a fresh key.
    assert!(identity::open(payload, Context::Command, &key.verifying_key()).is_err());
    let _ = identity::split(payload);
    if let Ok(text) = std::str::from_utf8(payload) {
        assert!(identity::open_text(text, "piha", Context::Ack, &key.verifying_key()).is_err());
        let _ = AgentSecrets::from_token(text);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_break_a_decoder(payload in bytes()) {
        check_event(&payload);
        check_command(&payload);
        let _ = NodeConfig::from_payload(&payload, &Name::parse("piha").unwrap());
        check_signed(&payload);
    }

    #[test]
    fn mutated_events_are_accepted_only_when_valid(payload in mutated(EVENT)) {
        check_event(&payload);
        check_signed(&payload);
    }

    #[test]
    fn mutated_commands_are_accepted_only_when_valid(payload in mutated(COMMAND)) {
        check_command(&payload);
        check_signed(&payload);
    }

    #[test]
    fn mutated_node_configs_never_break_the_agent(payload in mutated(config_seed())) {
        let _ = NodeConfig::from_payload(&payload, &Name::parse("piha").unwrap());
    }

    /// A signed payload changed anywhere no longer opens.
    #[test]
    fn a_changed_signed_command_never_opens(at in 0usize..COMMAND.len() - 1 + identity::SIG_TAIL, byte in any::<u8>()) {
        let key = identity::generate_key();
        let mut sealed = identity::seal(COMMAND.as_bytes(), Context::Command, &key);
        prop_assume!(sealed[at] != byte);
        sealed[at] = byte;
        prop_assert!(identity::open(&sealed, Context::Command, &key.verifying_key()).is_err());
    }

    /// The loader answers any topology and services file with a desired
    /// state or problems, and writes nothing.
    #[test]
    fn the_loader_answers_any_repo_and_writes_nothing(
        topology in "\\PC{0,300}",
        services in "\\PC{0,300}",
        node in "[a-z./]{1,12}",
    ) {
        let repo = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = repo.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("inventory/topology.yaml", &topology);
        let host = format!("hosts/{}/services.yaml", node.replace('/', "_"));
        write(&host, &services);
        let before = listing(repo.path());
        let _ = desired::load(repo.path());
        prop_assert_eq!(before, listing(repo.path()));
    }
}

/// Every file under `dir` with its content.
fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    files
}

#[test]
fn the_seeds_are_valid() {
    assert!(Event::from_payload(EVENT.as_bytes()).is_ok());
    let command = Command::from_payload(COMMAND.as_bytes());
    assert!(command.is_ok(), "{command:?}");
    let config = NodeConfig::from_payload(config_seed().as_bytes(), &Name::parse("piha").unwrap());
    assert!(config.is_ok(), "{config:?}");
}
