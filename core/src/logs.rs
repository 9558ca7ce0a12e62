//! Container logs on demand (what Dozzle is for), fetched through the
//! node's agent only while an operator looks:
//!
//! - the UI publishes a [`Request`] on `<prefix>/logs/<node>/request`
//!   (not retained, QoS 1); in fleet mode signed by the control plane
//!   ([`crate::identity::Context::Logs`]) and sealed for the node, as
//!   commands are, and carrying `reply_key`, a key made for this request
//!   alone;
//! - the agent answers on `<prefix>/logs/<node>/reply` with [`Reply`]
//!   chunks in order, the last with `done`; in fleet mode each signed by
//!   the node and sealed to `reply_key`, so only the requester reads them;
//! - nothing is written to the event log or the outbox: logs are not
//!   events, and a request nobody answers simply times out.
//!
//! Bounded on the agent: at most [`MAX_LINES`] lines back, lines cut at
//! [`MAX_LINE_BYTES`], chunks of at most [`MAX_CHUNK_BYTES`], a follow of
//! at most [`MAX_FOLLOW_SECS`] at [`FOLLOW_LINES_PER_SEC`] (what goes past
//! the rate is counted in `dropped`, not sent), and
//! [`MAX_STREAMS`] requests at once. Pure: types, checks and the chunker.

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::time::{self, Timestamp};

pub const MAX_LINES: u32 = 1_000;
pub const MAX_LINE_BYTES: usize = 2_048;
pub const MAX_CHUNK_BYTES: usize = 32 * 1024;
pub const MAX_FOLLOW_SECS: u32 = 300;
pub const FOLLOW_LINES_PER_SEC: u32 = 50;
pub const MAX_STREAMS: usize = 4;
/// What the agent takes on the request topic.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    /// Unique per request: its replies carry it.
    pub id: String,
    pub node: Name,
    /// The container's name, as the node page lists it.
    pub container: String,
    /// How many of the last lines (0: none, only what follows).
    pub lines: u32,
    /// Keep sending new lines this long (0: no follow).
    #[serde(default)]
    pub follow_secs: u32,
    /// Only lines from this time on (seconds since the epoch), for a
    /// follow that picks up where the last left off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    #[serde(with = "time")]
    pub issued_at: Timestamp,
    /// Refused after this.
    #[serde(with = "time")]
    pub deadline: Timestamp,
    /// Fleet mode: the X25519 public key (base64) the replies are sealed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("version {0} (expected 1)")]
    Version(u32),
    #[error("for node {0}, not this one")]
    OtherNode(String),
    #[error("bad id")]
    Id,
    #[error("bad container name {0:?}")]
    Container(String),
    #[error("{0} lines asked, at most {MAX_LINES}")]
    Lines(u32),
    #[error("a follow of {0} s asked, at most {MAX_FOLLOW_SECS}")]
    Follow(u32),
    #[error("past its deadline")]
    Expired,
    #[error("no reply key: in fleet mode replies are sealed")]
    NoReplyKey,
}

/// Docker's container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here at most
/// 128 long.
pub fn container_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Request {
    /// Whether the agent of `me` takes it at `now`; `sealed`: fleet mode,
    /// where the reply must be sealed.
    pub fn check(&self, me: &Name, now: Timestamp, sealed: bool) -> Result<(), RequestError> {
        if self.v != 1 {
            return Err(RequestError::Version(self.v));
        }
        if &self.node != me {
            return Err(RequestError::OtherNode(self.node.to_string()));
        }
        if self.id.is_empty()
            || self.id.len() > 64
            || !self.id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(RequestError::Id);
        }
        if !container_name_ok(&self.container) {
            return Err(RequestError::Container(self.container.clone()));
        }
        if self.lines > MAX_LINES {
            return Err(RequestError::Lines(self.lines));
        }
        if self.follow_secs > MAX_FOLLOW_SECS {
            return Err(RequestError::Follow(self.follow_secs));
        }
        if now > self.deadline {
            return Err(RequestError::Expired);
        }
        if sealed && self.reply_key.is_none() {
            return Err(RequestError::NoReplyKey);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Docker's timestamp of the line (RFC 3339, nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub v: u32,
    pub id: String,
    pub node: Name,
    /// 0, 1, 2, … in the order sent.
    pub seq: u64,
    pub lines: Vec<Line>,
    /// Lines not sent because a follow went past the rate, so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
    /// The last reply of the request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
    /// Why it ended early (no such container, Docker unreachable, busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One line as sent: its text cut at [`MAX_LINE_BYTES`] (on a character
/// boundary, marked with `…`), trailing newline and carriage return gone.
pub fn bound_line(text: &str) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    if text.len() <= MAX_LINE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_LINE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Gathers lines into chunks of at most [`MAX_CHUNK_BYTES`] of text.
#[derive(Debug, Default)]
pub struct Chunker {
    lines: Vec<Line>,
    bytes: usize,
}

impl Chunker {
    /// Adds `line`; returns the chunk it completes, if any (the lines
    /// before it, when it would not fit).
    pub fn push(&mut self, line: Line) -> Option<Vec<Line>> {
        let size = line.text.len() + line.ts.as_ref().map_or(0, String::len) + 32;
        let full =
            (!self.lines.is_empty() && self.bytes + size > MAX_CHUNK_BYTES).then(|| self.take());
        self.bytes += size;
        self.lines.push(line);
        full
    }

    /// The lines gathered so far.
    pub fn take(&mut self) -> Vec<Line> {
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A follow's rate: at most [`FOLLOW_LINES_PER_SEC`] lines in each whole
/// second since it began; `at_ms` is the time since then.
#[derive(Debug, Default)]
pub struct Rate {
    second: u64,
    sent: u32,
}

impl Rate {
    /// Whether a line at `at_ms` may go.
    pub fn allow(&mut self, at_ms: u64) -> bool {
        let second = at_ms / 1000;
        if second != self.second {
            self.second = second;
            self.sent = 0;
        }
        self.sent += 1;
        self.sent <= FOLLOW_LINES_PER_SEC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            v: 1,
            id: "01JABC".into(),
            node: Name::parse("piha").unwrap(),
            container: "zigbee2mqtt-1".into(),
            lines: 200,
            follow_secs: 0,
            since: None,
            issued_at: "2026-12-07T10:00:00Z".parse().unwrap(),
            deadline: "2026-12-07T10:00:10Z".parse().unwrap(),
            reply_key: None,
        }
    }

    #[test]
    fn requests_are_checked_at_the_edge() {
        let me = Name::parse("piha").unwrap();
        let now: Timestamp = "2026-12-07T10:00:01Z".parse().unwrap();
        type Case = (fn(&mut Request), bool, Option<RequestError>);
        let cases: Vec<Case> = vec![
            (|_| {}, false, None),
            (|r| r.v = 2, false, Some(RequestError::Version(2))),
            (
                |r| r.node = Name::parse("vps").unwrap(),
                false,
                Some(RequestError::OtherNode("vps".into())),
            ),
            (|r| r.id = "../x".into(), false, Some(RequestError::Id)),
            (|r| r.id = String::new(), false, Some(RequestError::Id)),
            (
                |r| r.container = "../../etc".into(),
                false,
                Some(RequestError::Container("../../etc".into())),
            ),
            (
                |r| r.container = "-rm".into(),
                false,
                Some(RequestError::Container("-rm".into())),
            ),
            (|r| r.lines = 1_001, false, Some(RequestError::Lines(1_001))),
            (
                |r| r.follow_secs = 301,
                false,
                Some(RequestError::Follow(301)),
            ),
            (
                |r| r.deadline = "2026-12-07T10:00:00Z".parse().unwrap(),
                false,
                Some(RequestError::Expired),
            ),
            (|_| {}, true, Some(RequestError::NoReplyKey)),
            (|r| r.reply_key = Some("k".into()), true, None),
        ];
        for (change, sealed, expected) in cases {
            let mut r = request();
            change(&mut r);
            assert_eq!(r.check(&me, now, sealed).err(), expected, "{r:?}");
        }
        // The wire form is strict.
        let mut json = serde_json::to_value(request()).unwrap();
        json["extra"] = 1.into();
        assert!(serde_json::from_value::<Request>(json).is_err());
    }

    #[test]
    fn long_lines_are_cut_on_a_character() {
        assert_eq!(bound_line("hello\r\n"), "hello");
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = bound_line(&long);
        assert!(
            cut.len() <= MAX_LINE_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert_eq!(
            bound_line(&"a".repeat(MAX_LINE_BYTES)).len(),
            MAX_LINE_BYTES
        );
    }

    #[test]
    fn chunks_stay_under_their_bound() {
        let line = |n: usize| Line {
            ts: None,
            stream: "stdout".into(),
            text: "x".repeat(n),
        };
        let mut chunker = Chunker::default();
        let mut chunks = Vec::new();
        for _ in 0..40 {
            chunks.extend(chunker.push(line(2_000)));
        }
        chunks.push(chunker.take());
        assert_eq!(
            chunks.iter().map(Vec::len).sum::<usize>(),
            40,
            "nothing lost"
        );
        for chunk in &chunks {
            let bytes: usize = chunk.iter().map(|l| l.text.len() + 32).sum();
            assert!(bytes <= MAX_CHUNK_BYTES, "{bytes}");
        }
        assert_eq!(chunks.len(), 3);
        assert!(chunker.is_empty());
    }

    #[test]
    fn a_follow_is_held_to_its_rate() {
        let mut rate = Rate::default();
        let sent = (0..120).filter(|i| rate.allow(*i)).count();
        assert_eq!(
            sent, FOLLOW_LINES_PER_SEC as usize,
            "120 lines in the first 120 ms"
        );
        assert!(rate.allow(1_000), "a new second");
    }
}
