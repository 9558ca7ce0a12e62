//! Events: what agents (and `homelab emit`) report, one JSON object a message
//! on `<prefix>/events/<node>`, one line in the observer's event log.
//!
//! [`Event::from_payload`] is the one door for events from outside: it bounds
//! the size, rejects unknown fields and bad names, and folds names to lower
//! case. Unknown `type`s are accepted (stored and shown, not dropped) as long as
//! they look like a type.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::name::{Name, NameError};
use crate::time::{self, Timestamp};

/// Largest event payload accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
const MAX_MESSAGE_CHARS: usize = 4096;
const MAX_ID_CHARS: usize = 64;

pub const SOURCE_AGENT: &str = "node-agent";

/// Event types this project emits or routes on. Others are valid too.
pub mod kinds {
    pub const NODE_SNAPSHOT: &str = "node_snapshot";
    pub const SERVICE_HEALTHY: &str = "service_healthy";
    pub const SERVICE_UNHEALTHY: &str = "service_unhealthy";
    pub const SERVICE_RECOVERED: &str = "service_recovered";
    pub const CONTAINERS_NOT_RUNNING: &str = "containers_not_running";
    pub const HEALTHCHECK_FAILED: &str = "healthcheck_failed";
    /// Project-defined: a service's health check left the node's config;
    /// its verdict no longer holds.
    pub const HEALTHCHECK_REMOVED: &str = "healthcheck_removed";
    pub const MQTT_UNREACHABLE: &str = "mqtt_unreachable";
    pub const DISK_PRESSURE: &str = "disk_pressure";
    pub const NODE_ONLINE: &str = "node_online";
    pub const NODE_OFFLINE: &str = "node_offline";
    pub const REMEDIATION_STARTED: &str = "remediation_started";
    pub const REMEDIATION_COMPLETED: &str = "remediation_completed";
    pub const REMEDIATION_FAILED: &str = "remediation_failed";
    /// Project-defined: the agent cannot reach the Docker engine.
    pub const DOCKER_UNREACHABLE: &str = "docker_unreachable";
    /// Project-defined: the agent reaches the Docker engine again.
    pub const DOCKER_RECOVERED: &str = "docker_recovered";
    pub const EVENTS_DROPPED: &str = "events_dropped";
    /// The node's Tailscale is not running, or the node is offline in its
    /// tailnet; `tailscale_recovered` when it is back.
    pub const TAILSCALE_DOWN: &str = "tailscale_down";
    pub const TAILSCALE_RECOVERED: &str = "tailscale_recovered";
    /// A tailnet peer the node needs (`data.peer`) is offline or missing;
    /// `peer_recovered` when it is reachable again.
    pub const PEER_UNREACHABLE: &str = "peer_unreachable";
    pub const PEER_RECOVERED: &str = "peer_recovered";
    /// Project-defined: an alert-only outcome the supervisor raised
    /// (unsequenced, `seq` 0).
    pub const ALERT: &str = "alert";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub v: u32,
    pub id: String,
    #[serde(with = "time")]
    pub ts: Timestamp,
    pub node: Name,
    /// Per node and increasing, set by the agent's outbox. Publishers that
    /// are not agents leave it out (0): the event is unsequenced, stored
    /// once by id outside the node's order.
    #[serde(default)]
    pub seq: u64,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    #[serde(default = "info")]
    pub severity: Severity,
    #[serde(default)]
    pub message: String,
    #[serde(default = "empty_object")]
    pub data: Value,
}

fn info() -> Severity {
    Severity::Info
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("payload is {0} bytes, at most {MAX_EVENT_BYTES} allowed")]
    TooLarge(usize),
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("bad name in event: {0}")]
    BadName(#[from] NameError),
    #[error("unsupported event version {0}, expected 1")]
    Version(u32),
    #[error("bad event id {0:?}: 1 to 64 characters of a-z, A-Z, 0-9, '-', '_'")]
    BadId(String),
    #[error("bad event type {0:?}: 1 to 64 characters of a-z, 0-9, '_'")]
    BadType(String),
    #[error("bad source {0:?}")]
    BadSource(String),
    #[error("message is longer than {MAX_MESSAGE_CHARS} characters")]
    MessageTooLong,
    #[error("data must be a JSON object")]
    DataNotObject,
    #[error("event node {event:?} differs from the topic's node {topic:?}")]
    NodeMismatch { event: String, topic: String },
}

impl EventError {
    /// A short label for the `reason` of a metrics counter.
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::TooLarge(_) => "oversize",
            EventError::Malformed(_) => "malformed",
            EventError::BadName(_) => "bad_name",
            EventError::Version(_) => "version",
            EventError::BadId(_) => "bad_id",
            EventError::BadType(_) => "bad_type",
            EventError::BadSource(_) => "bad_source",
            EventError::MessageTooLong => "message_too_long",
            EventError::DataNotObject => "data_not_object",
            EventError::NodeMismatch { .. } => "node_mismatch",
        }
    }
}

fn is_token(s: &str, max: usize, extra: impl Fn(char) -> bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra(c))
}

impl Event {
    /// Parses and validates an event from the wire.
    pub fn from_payload(payload: &[u8]) -> Result<Event, EventError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge(payload.len()));
        }
        let event: Event = serde_json::from_slice(payload).map_err(|e| {
            // A bad name surfaces as a serde error; keep its words.
            EventError::Malformed(e.to_string())
        })?;
        event.validate()?;
        Ok(event)
    }

    /// The `type` of an event payload, read without building the event:
    /// for subscribers that act on a few types only and would otherwise
    /// parse every event in full. `None` when it is not a JSON object with
    /// a string `type` (the full parse then says what is wrong).
    pub fn peek_kind(payload: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        if payload.len() > MAX_EVENT_BYTES {
            return None;
        }
        serde_json::from_slice::<Kind>(payload)
            .ok()
            .map(|k| k.kind.into_owned())
    }

    pub fn validate(&self) -> Result<(), EventError> {
        if self.v != 1 {
            return Err(EventError::Version(self.v));
        }
        if !is_token(&self.id, MAX_ID_CHARS, |c| {
            c.is_ascii_uppercase() || c == '-' || c == '_'
        }) {
            return Err(EventError::BadId(self.id.clone()));
        }
        if !is_token(&self.kind, 64, |c| c == '_') {
            return Err(EventError::BadType(self.kind.clone()));
        }
        if !is_token(&self.source, 64, |c| c == '-' || c == '_') {
            return Err(EventError::BadSource(self.source.clone()));
        }
        if self.message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(EventError::MessageTooLong);
        }
        if !self.data.is_object() {
            return Err(EventError::DataNotObject);
        }
        Ok(())
    }

    /// The canonical JSON line for the event log and the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }

    /// `data.action_id`, for remediation events.
    pub fn action_id(&self) -> Option<&str> {
        self.data.get("action_id").and_then(Value::as_str)
    }
}

/// A fresh, unique, time-ordered event id (a ULID). Ids made by one process
/// strictly increase, also within one millisecond: the agent's spool hands
/// events over in id order, so that is the order they were made in.
pub fn new_id() -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    match generator.generate() {
        Ok(id) => id.to_string(),
        // 2^80 ids in one millisecond: start afresh from a random one.
        Err(_) => ulid::Ulid::generate().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"v":1,"id":"01JD0000000000000000000000","ts":"2026-11-22T10:00:00.123Z","node":"Piha","seq":42,"source":"node-agent","type":"containers_not_running","service":"mosquitto","severity":"warning","message":"exited (137)","data":{}}"#;

    fn check(payload: &str, expected: Result<(), &str>) {
        let got = Event::from_payload(payload.as_bytes())
            .map(|_| ())
            .map_err(|e| e.reason());
        assert_eq!(got, expected, "payload {payload}");
    }

    #[test]
    fn peek_kind_reads_the_type_only() {
        let big = format!(
            r#"{{"type":"x","message":"{}"}}"#,
            "a".repeat(MAX_EVENT_BYTES)
        );
        let cases: &[(&str, Option<&str>)] = &[
            (GOOD, Some("containers_not_running")),
            // Whatever else is in it: the full parse judges that.
            (
                r#"{"type":"backup_failed","extra":[1,{"a":null}]}"#,
                Some("backup_failed"),
            ),
            (
                r#"{"type":"remediation\u005ffailed"}"#,
                Some("remediation_failed"),
            ),
            (r#"{"id":"x"}"#, None),
            (r#"{"type":7}"#, None),
            // serde takes a struct from an array too; the full parse
            // refuses it.
            (r#"["type"]"#, Some("type")),
            ("not json", None),
            (&big, None),
        ];
        for (payload, want) in cases {
            assert_eq!(
                Event::peek_kind(payload.as_bytes()).as_deref(),
                *want,
                "{}",
                &payload[..payload.len().min(80)]
            );
        }
    }

    #[test]
    fn ids_made_in_one_process_increase() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn contract_example_parses_and_folds_case() {
        let event = Event::from_payload(GOOD.as_bytes()).unwrap();
        assert_eq!(event.node.as_str(), "piha");
        assert_eq!(event.seq, 42);
        assert!(event
            .to_json()
            .contains(r#""ts":"2026-11-22T10:00:00.123Z""#));
        assert!(event
            .to_json()
            .contains(r#""type":"containers_not_running""#));
    }

    #[test]
    fn third_party_events_need_no_seq_or_severity() {
        let event = Event::from_payload(
            br#"{"v":1,"id":"x1","ts":"2026-11-22T10:00:00Z","node":"piha","source":"backup","type":"backup_failed","message":"disk full"}"#,
        )
        .unwrap();
        assert_eq!((event.seq, event.severity), (0, Severity::Info));
        // What is required, and why: v (the format), id (idempotent
        // delivery), ts (the log's day), node (checked against the topic),
        // source (who says so), type (what happened).
        for field in ["v", "id", "ts", "node", "source", "type"] {
            let mut value: Value = serde_json::from_str(GOOD).unwrap();
            value.as_object_mut().unwrap().remove(field);
            check(&value.to_string(), Err("malformed"));
        }
    }

    #[test]
    fn bad_events() {
        check(GOOD, Ok(()));
        check("not json", Err("malformed"));
        check(&GOOD.replace("\"Piha\"", "\"../etc\""), Err("malformed"));
        check(&GOOD.replace("\"mosquitto\"", "\"a/b\""), Err("malformed"));
        check(&GOOD.replace("\"v\":1", "\"v\":2"), Err("version"));
        check(
            &GOOD.replace("\"data\":{}", "\"data\":{},\"extra\":1"),
            Err("malformed"),
        );
        check(
            &GOOD.replace("\"data\":{}", "\"data\":[]"),
            Err("data_not_object"),
        );
        check(
            &GOOD.replace("containers_not_running", "Bad Type"),
            Err("bad_type"),
        );
        check(
            &GOOD.replace("01JD0000000000000000000000", "../x"),
            Err("bad_id"),
        );
        check(&GOOD.replace("\"warning\"", "\"loud\""), Err("malformed"));
        let big = GOOD.replace("exited (137)", &"x".repeat(MAX_EVENT_BYTES));
        check(&big, Err("oversize"));
        check(
            &GOOD.replace("exited (137)", &"x".repeat(5000)),
            Err("message_too_long"),
        );
        check(
            &GOOD.replace("containers_not_running", "ha_some_new_thing"),
            Ok(()),
        );
    }
}
