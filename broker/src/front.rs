//! The front every client of the embedded broker goes through, on the
//! plain loopback listener and the TLS one alike; rumqttd itself listens
//! only on internal loopback ports, one for MQTT 3.1.1 and one for MQTT 5.
//!
//! Per connection: the CONNECT is read (within 10 s) and says the protocol
//! (level 4 or 5: the connection is handed to rumqttd's v4 or v5
//! listener, so one port serves both, as Home Assistant's setup form
//! expects); in fleet mode the login is checked here ([`admit`]) and a
//! refusal is answered with a CONNACK that says why (bad user name or
//! password, not authorized) before the connection closes. Then:
//! - the control plane's own login (and anyone in open mode, which serves
//!   loopback only): bytes are piped as they are;
//! - a node or Home Assistant: every PUBLISH and SUBSCRIBE is checked
//!   against `core::acl` (the rules the generated Mosquitto ACL has). A
//!   refused PUBLISH is dropped and acknowledged (MQTT 5: "not
//!   authorized"); a refused subscription filter is not passed on, and the
//!   SUBACK says it failed (0x80; MQTT 5 0x87); a Last Will on a topic the
//!   login may not write refuses the CONNECT. A node's connection is closed
//!   within a second of its record changing (`homelab node remove` or
//!   `rotate`).
//!
//! [`admit`] is pure; the relay is the thin shell.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homelab_core::acl::{self, Who};
use homelab_core::fleet::Fleet;
use homelab_core::Topics;
use rumqttd::protocol::{Filter, Packet, SubAck, Subscribe};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::packet::{self, Level, Refusal};

/// How long a client has to send its CONNECT (and, with TLS, to finish
/// the handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a CONNECT says that the front decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub will_topic: Option<String>,
}

/// Who is let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Open mode: anyone on loopback, no rules (as Mosquitto with no users).
    Anyone,
    As(Who),
}

/// The verdict on a CONNECT. `fleet`: logins are required; `check` says
/// whether a user's password (and client id) is good, `Err(reason)` if not.
pub fn admit(
    fleet: bool,
    topics: &Topics,
    hello: &Hello,
    check: impl FnOnce(&str, &str, &str) -> Result<(), &'static str>,
) -> Result<Admitted, (Refusal, &'static str)> {
    if !fleet {
        return Ok(Admitted::Anyone);
    }
    let Some((user, password)) = &hello.login else {
        return Err((Refusal::BadLogin, "no_login"));
    };
    let Some(who) = Who::of(user) else {
        return Err((Refusal::BadLogin, "unknown_user"));
    };
    check(&hello.client_id, user, password).map_err(|reason| match reason {
        "client_id" => (Refusal::NotAuthorized, reason),
        _ => (Refusal::BadLogin, reason),
    })?;
    if let Some(will) = &hello.will_topic {
        if !acl::may_publish(&acl::rules(topics, &who), will) {
            return Err((Refusal::NotAuthorized, "will_topic"));
        }
    }
    Ok(Admitted::As(who))
}

/// Checks a login (`fleet`, client id, user, password): `Err(reason)` when
/// refused.
pub type Login = Box<dyn Fn(&Fleet, &str, &str, &str) -> Result<(), &'static str> + Send + Sync>;

/// Where the front hands connections.
pub struct Front {
    pub fleet: Option<Fleet>,
    pub topics: Topics,
    /// rumqttd's internal listeners.
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    /// Checks a login (argon2, cached): `Err(reason)` when refused.
    pub login: Login,
    /// Each node login's publishes, paced ([`Pace`]), across its
    /// connections.
    pub paces: Mutex<HashMap<homelab_core::Name, Arc<Mutex<Pace>>>>,
}

/// How fast one node login may publish, sustained: a node flooding the
/// broker (as fast as it can, ignoring the observer's acks) would fill
/// the observer's queue and hold up every other node's events. An agent
/// keeps within its send window and replays a backlog at about this rate
/// on this machine's observer; a link to an edge site is far slower.
pub const NODE_PUBLISHES_PER_SEC: f64 = 10_000.0;

/// How many publishes a node may send at once above the pace: ten send
/// windows of an agent.
pub const NODE_PUBLISH_BURST: f64 = 2_500.0;

/// A token bucket over a node's publishes. Pure: the caller gives the
/// time and waits as told. A publish over the pace is not dropped: the
/// connection is read no further until its turn (TCP pushes back on the
/// sender), so a node that floods slows only itself.
#[derive(Debug, Clone)]
pub struct Pace {
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    pub fn new(now: std::time::Instant) -> Pace {
        Pace {
            tokens: NODE_PUBLISH_BURST,
            at: now,
        }
    }

    /// Takes one publish at `now`: how long to wait before passing it on
    /// (zero while within the burst).
    pub fn take(&mut self, now: std::time::Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * NODE_PUBLISHES_PER_SEC).min(NODE_PUBLISH_BURST);
        self.tokens -= 1.0;
        match self.tokens >= 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-self.tokens / NODE_PUBLISHES_PER_SEC),
        }
    }
}

/// Serves `listener`, each connection on a task of its own (`tls`: after a
/// TLS handshake).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    front: Arc<Front>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "mqtt accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (tls, front) = (tls.clone(), front.clone());
        tokio::spawn(async move {
            let ended = match tls {
                None => connection(stream, peer, &front).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(tls, peer, &front).await,
                        Ok(Err(error)) => {
                            metrics::counter!("homelab_broker_tls_failures_total").increment(1);
                            info!(%peer, %error, "mqtts handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("homelab_broker_tls_failures_total").increment(1);
                            info!(%peer, "mqtts handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = ended {
                debug!(%peer, %error, "mqtt connection ended");
            }
        });
    }
}

fn io(what: impl Into<String>) -> std::io::Error {
    std::io::Error::other(what.into())
}

async fn connection<S>(mut client: S, peer: SocketAddr, front: &Front) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The CONNECT, whole, within its time.
    let mut buf = Vec::with_capacity(512);
    let len = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            if let Some(len) = packet::frame(&buf).map_err(io)? {
                return Ok::<usize, std::io::Error>(len);
            }
            let mut chunk = [0u8; 2048];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Err(io("closed before CONNECT"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| io("no CONNECT in time"))??;
    let level = packet::level(&buf[..len])
        .ok_or_else(|| io("first packet is no CONNECT of MQTT 3.1.1 or 5"))?;
    let hello = match packet::decode(level, &buf[..len]).map_err(io)? {
        Packet::Connect(connect, _, will, _, login) => Hello {
            client_id: connect.client_id,
            login: login.map(|l| (l.username, l.password)),
            will_topic: will.map(|w| String::from_utf8_lossy(&w.topic).into_owned()),
        },
        _ => return Err(io("first packet is no CONNECT")),
    };
    let verdict = match &front.fleet {
        None => admit(false, &front.topics, &hello, |_, _, _| Ok(())),
        Some(fleet) => {
            let (fleet, hello2, topics) = (fleet.clone(), hello.clone(), front.topics.clone());
            let login = &front.login;
            // argon2 is slow on purpose: off the runtime's workers.
            tokio::task::block_in_place(|| {
                admit(true, &topics, &hello2, |client_id, user, password| {
                    login(&fleet, client_id, user, password)
                })
            })
        }
    };
    let admitted = match verdict {
        Ok(admitted) => admitted,
        Err((refusal, reason)) => {
            metrics::counter!("homelab_broker_auth_failures_total", "reason" => reason)
                .increment(1);
            warn!(%peer, user = hello.login.as_ref().map_or("", |l| l.0.as_str()), client_id = %hello.client_id, reason, "mqtt login refused");
            client
                .write_all(&packet::connack_refused(level, refusal))
                .await?;
            client.flush().await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
    };
    let inner = match level {
        Level::V4 => front.v4,
        Level::V5 => front.v5,
    };
    let mut broker = tokio::net::TcpStream::connect(inner).await?;
    broker.set_nodelay(true)?;
    broker.write_all(&buf).await?;
    match admitted {
        Admitted::Anyone | Admitted::As(Who::Control) => {
            tokio::io::copy_bidirectional(&mut client, &mut broker).await?;
            Ok(())
        }
        Admitted::As(who) => {
            let rules = acl::rules(&front.topics, &who);
            let revoked = revoked(front.fleet.clone(), &who);
            let pace = match &who {
                Who::Node(node) => Some(
                    front
                        .paces
                        .lock()
                        .expect("paces lock")
                        .entry(node.clone())
                        .or_insert_with(|| {
                            Arc::new(Mutex::new(Pace::new(std::time::Instant::now())))
                        })
                        .clone(),
                ),
                _ => None,
            };
            tokio::select! {
                result = relay(client, broker, level, rules, pace) => result,
                who = revoked => {
                    info!(?who, "node revoked or rotated: its connection is closed");
                    metrics::counter!("homelab_broker_revoked_disconnects_total").increment(1);
                    Ok(())
                }
            }
        }
    }
}

/// Ends when `who`'s record changes (removed or rotated): only a node's.
async fn revoked(fleet: Option<Fleet>, who: &Who) -> Who {
    let (Some(fleet), Who::Node(node)) = (fleet, who) else {
        return std::future::pending().await;
    };
    let at_connect = fleet.node(node).map(|e| e.password_hash);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if fleet.node(node).map(|e| e.password_hash) != at_connect {
            return who.clone();
        }
    }
}

/// Subscriptions passed on without some filters: packet id → (filters
/// asked, the positions refused).
type Held = Arc<Mutex<HashMap<u16, (usize, Vec<usize>)>>>;

/// Pipes a connection whose packets are checked against `rules`.
async fn relay<S>(
    client: S,
    broker: tokio::net::TcpStream,
    level: Level,
    rules: Vec<acl::Rule>,
    pace: Option<Arc<Mutex<Pace>>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut broker_read, mut broker_write) = broker.into_split();
    let (to_client, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    let held: Held = Arc::default();
    let writer = async {
        while let Some(bytes) = outgoing.recv().await {
            client_write.write_all(&bytes).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let up = {
        let (to_client, held) = (to_client.clone(), held.clone());
        async move {
            let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = client_read.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut out = Vec::with_capacity(buf.len());
                let mut at = 0;
                while let Some(len) = packet::frame(&buf[at..]).map_err(io)? {
                    let frame = &buf[at..at + len];
                    let verdict = upstream(level, &rules, frame, &held).map_err(io)?;
                    if let (Some(pace), Up::Pass, 3) = (&pace, &verdict, frame[0] >> 4) {
                        let wait = pace
                            .lock()
                            .expect("pace lock")
                            .take(std::time::Instant::now());
                        if !wait.is_zero() {
                            // What passed before goes now; this one waits
                            // its turn, and nothing more is read meanwhile.
                            broker_write.write_all(&out).await?;
                            out.clear();
                            metrics::counter!("homelab_broker_paced_publishes_total").increment(1);
                            tokio::time::sleep(wait).await;
                        }
                    }
                    match verdict {
                        Up::Pass => out.extend_from_slice(frame),
                        Up::Instead(bytes) => out.extend_from_slice(&bytes),
                        Up::Answer(bytes) => {
                            let _ = to_client.send(bytes).await;
                        }
                        Up::Drop => {}
                    }
                    at += len;
                }
                buf.drain(..at);
                broker_write.write_all(&out).await?;
            }
        }
    };
    let down = async move {
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = broker_read.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::with_capacity(buf.len());
            let mut at = 0;
            while let Some(len) = packet::frame(&buf[at..]).map_err(io)? {
                let frame = &buf[at..at + len];
                match downstream(level, frame, &held) {
                    Some(bytes) => out.extend_from_slice(&bytes),
                    None => out.extend_from_slice(frame),
                }
                at += len;
            }
            buf.drain(..at);
            if !out.is_empty() && to_client.send(out).await.is_err() {
                return Ok(());
            }
        }
    };
    tokio::select! {
        result = up => result,
        result = down => result,
        result = writer => result,
    }
}

/// What becomes of a packet from the client.
#[derive(Debug, PartialEq, Eq)]
enum Up {
    Pass,
    /// Passed on rewritten (a SUBSCRIBE without its refused filters).
    Instead(Vec<u8>),
    /// Not passed on; the client is answered (a PUBACK, a SUBACK).
    Answer(Vec<u8>),
    Drop,
}

/// The rules on one packet from the client.
fn upstream(level: Level, rules: &[acl::Rule], frame: &[u8], held: &Held) -> Result<Up, String> {
    let kind = frame[0] >> 4;
    if !packet::from_client(kind) || kind == 1 {
        return Err(format!("a packet of type {kind} from a client"));
    }
    match kind {
        3 => {
            let Packet::Publish(publish, _) = packet::decode(level, frame)? else {
                return Err("a PUBLISH that does not read".into());
            };
            let topic = String::from_utf8_lossy(&publish.topic);
            // An empty topic is MQTT 5's topic alias: not taken here.
            if !topic.is_empty() && acl::may_publish(rules, &topic) {
                return Ok(Up::Pass);
            }
            metrics::counter!("homelab_broker_acl_refused_total", "what" => "publish").increment(1);
            warn!(%topic, "publish refused: this login may not write there");
            match packet::publish_qos_pkid(frame) {
                Some((0, _)) => Ok(Up::Drop),
                Some((1, pkid)) => Ok(Up::Answer(packet::puback_refused(level, pkid))),
                _ => Err("a refused QoS 2 publish".into()),
            }
        }
        8 => {
            let Packet::Subscribe(subscribe, properties) = packet::decode(level, frame)? else {
                return Err("a SUBSCRIBE that does not read".into());
            };
            let refused: Vec<usize> = subscribe
                .filters
                .iter()
                .enumerate()
                .filter(|(_, f)| !acl::may_subscribe(rules, &f.path))
                .map(|(i, _)| i)
                .collect();
            if refused.is_empty() {
                return Ok(Up::Pass);
            }
            for i in &refused {
                metrics::counter!("homelab_broker_acl_refused_total", "what" => "subscribe")
                    .increment(1);
                warn!(filter = %subscribe.filters[*i].path, "subscription refused: this login may not read there");
            }
            let asked = subscribe.filters.len();
            if refused.len() == asked {
                return Ok(Up::Answer(packet::suback_refused(
                    level,
                    subscribe.pkid,
                    asked,
                )));
            }
            let kept: Vec<Filter> = subscribe
                .filters
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !refused.contains(i))
                .map(|(_, f)| f)
                .collect();
            held.lock()
                .expect("held lock")
                .insert(subscribe.pkid, (asked, refused));
            Ok(Up::Instead(packet::encode(
                level,
                Packet::Subscribe(
                    Subscribe {
                        pkid: subscribe.pkid,
                        filters: kept,
                    },
                    properties,
                ),
            )))
        }
        _ => Ok(Up::Pass),
    }
}

/// A SUBACK for a subscription passed on without some filters gets their
/// failures back in place; anything else goes as it is (`None`).
fn downstream(level: Level, frame: &[u8], held: &Held) -> Option<Vec<u8>> {
    if frame[0] >> 4 != 9 {
        return None;
    }
    let Ok(Packet::SubAck(suback, properties)) = packet::decode(level, frame) else {
        return None;
    };
    let (asked, refused) = held.lock().expect("held lock").remove(&suback.pkid)?;
    let mut granted = suback.return_codes.into_iter();
    let codes = (0..asked)
        .map(|i| match refused.contains(&i) {
            true => packet::refused_code(level),
            false => granted.next().unwrap_or(packet::refused_code(level)),
        })
        .collect();
    Some(packet::encode(
        level,
        Packet::SubAck(
            SubAck {
                pkid: suback.pkid,
                return_codes: codes,
            },
            properties,
        ),
    ))
}

/// The front's handling of one connection's bytes, without sockets: for
/// the fuzzer (`fuzz/`), which feeds it whatever a client could send. The
/// first frame is read as the CONNECT and judged in fleet mode (any
/// password passes, so what follows is read); every later frame goes
/// through the rules as from the client, except a SUBACK, which goes the
/// way a broker's reply does. An error ends it, as it ends a connection.
#[doc(hidden)]
pub fn fuzz_connection(bytes: &[u8]) {
    let topics = Topics::default();
    let Ok(Some(len)) = packet::frame(bytes) else {
        return;
    };
    let Some(level) = packet::level(&bytes[..len]) else {
        return;
    };
    let hello = match packet::decode(level, &bytes[..len]) {
        Ok(Packet::Connect(connect, _, will, _, login)) => Hello {
            client_id: connect.client_id,
            login: login.map(|l| (l.username, l.password)),
            will_topic: will.map(|w| String::from_utf8_lossy(&w.topic).into_owned()),
        },
        _ => return,
    };
    let who = match admit(true, &topics, &hello, |_, _, _| Ok(())) {
        Ok(Admitted::As(who)) => who,
        _ => return,
    };
    let rules = acl::rules(&topics, &who);
    let held: Held = Arc::default();
    let mut at = len;
    while let Ok(Some(len)) = packet::frame(&bytes[at..]) {
        let frame = &bytes[at..at + len];
        if frame[0] >> 4 == 9 {
            let _ = downstream(level, frame, &held);
        } else if upstream(level, &rules, frame, &held).is_err() {
            return;
        }
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::Name;
    use rumqttd::protocol::{QoS, RetainForwardRule, SubscribeReasonCode};

    fn hello(login: Option<(&str, &str)>, client_id: &str, will: Option<&str>) -> Hello {
        Hello {
            client_id: client_id.into(),
            login: login.map(|(u, p)| (u.into(), p.into())),
            will_topic: will.map(str::to_string),
        }
    }

    #[test]
    fn a_node_publishes_at_its_pace() {
        let t0 = std::time::Instant::now();
        let mut pace = Pace::new(t0);
        // The burst passes at once; the next waits one interval, the one
        // after two.
        for _ in 0..NODE_PUBLISH_BURST as usize {
            assert_eq!(pace.take(t0), Duration::ZERO);
        }
        let interval = Duration::from_secs_f64(1.0 / NODE_PUBLISHES_PER_SEC);
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(2);
        assert!(close(pace.take(t0), interval));
        assert!(close(pace.take(t0), interval * 2));
        // A tenth of a second later it has refilled by a tenth of the
        // pace (less what it owed); much later, by the burst, no more.
        let later = t0 + Duration::from_millis(100);
        let mut passed = 0;
        while pace.take(later).is_zero() {
            passed += 1;
        }
        assert_eq!(passed, NODE_PUBLISHES_PER_SEC as usize / 10 - 2);
        let much_later = later + Duration::from_secs(3600);
        let mut passed = 0;
        while pace.take(much_later).is_zero() {
            passed += 1;
        }
        assert_eq!(passed, NODE_PUBLISH_BURST as usize);
        // Time that goes backwards (another connection's clock read) takes
        // nothing back.
        assert!(!pace.take(t0).is_zero());
    }

    #[test]
    fn who_is_let_in() {
        let topics = Topics::default();
        let good = |_: &str, _: &str, password: &str| {
            if password == "pw" {
                Ok(())
            } else {
                Err("bad_password")
            }
        };
        let piha = || Admitted::As(Who::Node(Name::parse("piha").unwrap()));
        for (fleet, h, want) in [
            (
                false,
                hello(None, "x", Some("anything")),
                Ok(Admitted::Anyone),
            ),
            (
                true,
                hello(None, "x", None),
                Err((Refusal::BadLogin, "no_login")),
            ),
            (
                true,
                hello(Some(("Pi Ha", "pw")), "x", None),
                Err((Refusal::BadLogin, "unknown_user")),
            ),
            (
                true,
                hello(Some(("piha", "no")), "homelab-agent-piha", None),
                Err((Refusal::BadLogin, "bad_password")),
            ),
            (
                true,
                hello(
                    Some(("piha", "pw")),
                    "homelab-agent-piha",
                    Some("homelab/nodes/piha/status"),
                ),
                Ok(piha()),
            ),
            // A Last Will on another node's status: it would say pihb left.
            (
                true,
                hello(
                    Some(("piha", "pw")),
                    "homelab-agent-piha",
                    Some("homelab/nodes/pihb/status"),
                ),
                Err((Refusal::NotAuthorized, "will_topic")),
            ),
            (
                true,
                hello(Some(("@control", "pw")), "homelab-observer", None),
                Ok(Admitted::As(Who::Control)),
            ),
        ] {
            assert_eq!(admit(fleet, &topics, &h, good), want, "{h:?}");
        }
        let wrong_id = |_: &str, _: &str, _: &str| Err("client_id");
        assert_eq!(
            admit(
                true,
                &topics,
                &hello(Some(("piha", "pw")), "homelab-agent-pihb", None),
                wrong_id
            ),
            Err((Refusal::NotAuthorized, "client_id"))
        );
    }

    fn publish(topic: &str, qos: u8, pkid: u16) -> Vec<u8> {
        let mut out: Vec<u8> = vec![0x30 | (qos << 1), 0];
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            out.extend_from_slice(&pkid.to_be_bytes());
        }
        out.extend_from_slice(b"{}");
        out[1] = (out.len() - 2) as u8;
        out
    }

    fn subscribe(level: Level, pkid: u16, filters: &[&str]) -> Vec<u8> {
        packet::encode(
            level,
            Packet::Subscribe(
                Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|f| Filter {
                            path: f.to_string(),
                            qos: QoS::AtLeastOnce,
                            nolocal: false,
                            preserve_retain: false,
                            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                        })
                        .collect(),
                },
                None,
            ),
        )
    }

    #[test]
    fn a_nodes_packets_are_held_to_its_rules() {
        let topics = Topics::default();
        let rules = acl::rules(&topics, &Who::Node(Name::parse("piha").unwrap()));
        let held = Held::default();
        let v4 = Level::V4;
        assert_eq!(
            upstream(v4, &rules, &publish("homelab/events/piha", 1, 7), &held),
            Ok(Up::Pass)
        );
        // Another node's agent state: dropped, acknowledged all the same.
        assert_eq!(
            upstream(
                v4,
                &rules,
                &publish("homelab/nodes/pihb/agent", 1, 8),
                &held
            ),
            Ok(Up::Answer(packet::puback_refused(v4, 8)))
        );
        assert_eq!(
            upstream(
                v4,
                &rules,
                &publish("homelab/nodes/pihb/status", 0, 0),
                &held
            ),
            Ok(Up::Drop)
        );
        assert!(upstream(v4, &rules, &publish("homelab/commands/pihb", 2, 9), &held).is_err());
        // Packets only a server sends, a second CONNECT: the connection ends.
        for bytes in [
            vec![0x20, 2, 0, 0],
            vec![0xb0, 2, 0, 1],
            vec![0x10, 0],
            vec![0xf0, 0],
        ] {
            assert!(upstream(v4, &rules, &bytes, &held).is_err(), "{bytes:?}");
        }
        // Subscriptions: its own pass; another's fails; a mix is split and
        // the SUBACK put back together in order.
        assert_eq!(
            upstream(
                v4,
                &rules,
                &subscribe(v4, 1, &["homelab/commands/piha"]),
                &held
            ),
            Ok(Up::Pass)
        );
        assert_eq!(
            upstream(v4, &rules, &subscribe(v4, 2, &["homelab/#"]), &held),
            Ok(Up::Answer(packet::suback_refused(v4, 2, 1)))
        );
        let mixed = upstream(
            v4,
            &rules,
            &subscribe(v4, 3, &["homelab/commands/pihb", "homelab/acks/piha"]),
            &held,
        )
        .unwrap();
        let Up::Instead(passed) = mixed else {
            panic!("{mixed:?}")
        };
        match packet::decode(v4, &passed).unwrap() {
            Packet::Subscribe(s, _) => assert_eq!(
                s.filters
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>(),
                vec!["homelab/acks/piha"]
            ),
            other => panic!("{other:?}"),
        }
        let from_broker = packet::encode(
            v4,
            Packet::SubAck(
                SubAck {
                    pkid: 3,
                    return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
                },
                None,
            ),
        );
        let back = downstream(v4, &from_broker, &held).unwrap();
        assert_eq!(back, vec![0x90, 4, 0, 3, 0x80, 0x01]);
        assert_eq!(downstream(v4, &from_broker, &held), None, "only once");
        // MQTT 5 says why.
        let v5 = Level::V5;
        assert_eq!(
            upstream(v5, &rules, &subscribe(v5, 4, &["homelab/events/#"]), &held),
            Ok(Up::Answer(packet::suback_refused(v5, 4, 1)))
        );
    }
}
