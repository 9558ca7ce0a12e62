//! The MQTT connection every component uses; the only module that touches
//! rumqttc.
//!
//! rumqttc's event loop must be polled all the time (it also drives
//! keep-alive and the request queue), and it neither backs off nor
//! remembers subscriptions across a session loss. [`connect`] spawns one
//! task that polls it for the life of the connection and:
//! - after an error waits with exponential backoff and jitter (backon)
//!   before polling again, resetting the backoff once a CONNACK arrives;
//! - after every CONNACK (re)subscribes to the configured filters at QoS 1,
//!   waits for the broker's SUBACK, and only then reports
//!   [`Incoming::Connected`], so a caller can resend what the broker may
//!   have lost (rumqttc drops unacknowledged QoS 1 publishes when it
//!   reconnects without a session; durability is the caller's) knowing its
//!   subscriptions hold. The SUBSCRIBE waits for room in rumqttc's request
//!   queue like any publish (it is never dropped because the queue is full),
//!   and it is sent again until a SUBACK grants every filter: a component
//!   whose subscription was lost would be deaf for good;
//! - hands every publish to the caller, in order, on a bounded channel.
//!
//! All publishes are QoS 1. Stopping is explicit: [`Mqtt::close`] sends a
//! DISCONNECT (so the Last Will is not fired) and ends the task.

pub mod link;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Largest packet we send or accept. Components bound what they parse
/// themselves (events to 64 KiB); this only keeps one oversize message from
/// breaking the connection, which with a persistent session would otherwise
/// be redelivered, and break it again, forever.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Where a broker is and how to log in: `host:port` or `mqtt://host:port`
/// (plain TCP), `mqtts://host:port` (TLS, the server's certificate checked
/// against `ca_pem`; the URL's host is the name checked).
#[derive(Clone, Default)]
pub struct Endpoint {
    pub url: String,
    /// The CA that signed the broker's certificate (PEM); needed for
    /// `mqtts://`.
    pub ca_pem: Option<String>,
    pub credentials: Option<(String, String)>,
}

impl Endpoint {
    pub fn new(url: impl Into<String>) -> Endpoint {
        Endpoint {
            url: url.into(),
            ..Default::default()
        }
    }

    pub fn with_tls(mut self, ca_pem: impl Into<String>) -> Endpoint {
        self.ca_pem = Some(ca_pem.into());
        self
    }

    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Endpoint {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Whether the URL asks for TLS (`mqtts://`).
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("mqtts://")
    }

    /// `host:port` without the scheme.
    pub fn addr(&self) -> &str {
        self.url
            .strip_prefix("mqtts://")
            .or_else(|| self.url.strip_prefix("mqtt://"))
            .unwrap_or(&self.url)
            .trim_end_matches('/')
    }

    /// Checks the URL (scheme, host, port) and that TLS has its CA.
    pub fn check(&self) -> Result<()> {
        if self.url.contains("://") && !self.url.starts_with("mqtt://") && !self.is_tls() {
            anyhow::bail!(
                "broker {:?}: the scheme must be mqtt:// or mqtts://",
                self.url
            );
        }
        parse_addr(self.addr())?;
        if self.is_tls() && self.ca_pem.is_none() {
            anyhow::bail!(
                "broker {:?} is TLS, but no CA is known to check its certificate: enroll this node (HOMELAB_ENROLL from `homelab node add`)",
                self.url
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("tls", &self.ca_pem.is_some())
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Endpoint {
        Endpoint::new(url)
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Endpoint {
        Endpoint::new(url)
    }
}

impl From<&String> for Endpoint {
    fn from(url: &String) -> Endpoint {
        Endpoint::new(url.clone())
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(endpoint: &Endpoint) -> Endpoint {
        endpoint.clone()
    }
}

#[derive(Clone)]
pub struct Config {
    /// The broker's URL (as given: logs and metrics show it).
    pub broker: String,
    /// `mqtts://`: the CA that signed the broker's certificate.
    pub tls_ca: Option<String>,
    pub client_id: String,
    pub clean_session: bool,
    pub credentials: Option<(String, String)>,
    pub last_will: Option<Will>,
    /// Filters subscribed at QoS 1 after every CONNACK.
    pub subscriptions: Vec<String>,
    pub keep_alive: Duration,
    /// Capacity of the incoming channel; when the caller falls behind, the
    /// event loop waits, and the broker holds the rest.
    pub incoming_capacity: usize,
    /// Topics whose QoS 1 messages the caller acknowledges itself
    /// ([`Mqtt::ack`]), once it has kept them: until then the broker holds
    /// them for the session and sends them again after a reconnect. Every
    /// other message is acknowledged as it arrives.
    pub acked_by_caller: Vec<String>,
    /// Time requests and outages on this connection ([`Mqtt::link`]).
    pub track_link: bool,
    /// Logged when the broker refuses the login: what the operator can do
    /// about it (an agent's says how to enrol again).
    pub refused_hint: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<redacted>")),
            )
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

impl Config {
    pub fn new(broker: impl Into<Endpoint>, client_id: &str) -> Config {
        let endpoint = broker.into();
        Config {
            broker: endpoint.url,
            tls_ca: endpoint.ca_pem,
            client_id: client_id.to_string(),
            clean_session: true,
            credentials: endpoint.credentials,
            last_will: None,
            subscriptions: Vec::new(),
            keep_alive: Duration::from_secs(15),
            incoming_capacity: 4096,
            acked_by_caller: Vec::new(),
            track_link: false,
            refused_hint: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    /// On a topic of [`Config::acked_by_caller`]: hand it to [`Mqtt::ack`]
    /// once the message is kept.
    pub ack: Option<AckToken>,
}

/// What [`Mqtt::ack`] needs to acknowledge one message.
#[derive(Debug, Clone)]
pub struct AckToken(rumqttc::Publish);

#[derive(Debug, Clone)]
pub enum Incoming {
    /// Connected, and every configured subscription is confirmed by the
    /// broker's SUBACK on this connection.
    Connected {
        session_present: bool,
    },
    Message(Message),
    /// The connection failed; the task is waiting to reconnect.
    Disconnected,
}

/// A handle for publishing; cheap to clone.
#[derive(Clone)]
pub struct Mqtt {
    client: AsyncClient,
    /// With [`Config::track_link`]: the link's figures.
    link: Option<Arc<Mutex<link::LinkStats>>>,
    stop: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Splits `host:port`.
pub fn parse_addr(addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("broker address {addr:?} must be HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("bad port in broker address {addr:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty(), "broker address {addr:?} has no host");
    Ok((host.to_string(), port))
}

/// Starts the connection task. It connects in the background; the first
/// [`Incoming::Connected`] says when it is up.
pub fn connect(config: Config) -> Result<(Mqtt, mpsc::Receiver<Incoming>)> {
    let endpoint = Endpoint {
        url: config.broker.clone(),
        ca_pem: config.tls_ca.clone(),
        credentials: None,
    };
    endpoint.check()?;
    let (host, port) = parse_addr(endpoint.addr())?;
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    if endpoint.is_tls() {
        let ca = config.tls_ca.as_deref().unwrap_or_default();
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls_client(ca)?),
        ));
    }
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(config.clean_session)
        // rumqttc numbers QoS 1 packets 1..=inflight and stalls all further
        // requests when a number comes round while still unacknowledged (a
        // SUBSCRIBE takes a number without counting as in flight, so a
        // burst of publishes can catch up with its own tail). A longer
        // cycle makes that rare; 1,000 costs about 100 kB.
        .set_inflight(INFLIGHT)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_manual_acks(!config.acked_by_caller.is_empty());
    if let Some((user, pass)) = &config.credentials {
        options.set_credentials(user.clone(), pass.clone());
    }
    if let Some(will) = &config.last_will {
        options.set_last_will(LastWill::new(
            will.topic.clone(),
            will.payload.clone(),
            QoS::AtLeastOnce,
            will.retain,
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Acks and events are small and latency matters: no Nagle delay (with
    // the peer's delayed ACK it cost tens of milliseconds a round trip,
    // which bounded replay to one send window per ~65 ms).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (tx, rx) = mpsc::channel(config.incoming_capacity.max(1));
    let stop = CancellationToken::new();
    let link = config.track_link.then(Arc::default);
    let task = tokio::spawn(drive(
        eventloop,
        client.clone(),
        config,
        tx,
        link.clone(),
        stop.clone(),
    ));
    Ok((
        Mqtt {
            client,
            link,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
        },
        rx,
    ))
}

impl Mqtt {
    /// Queues a QoS 1 publish. Returns once rumqttc has taken it; delivery
    /// to the broker follows when connected.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .with_context(|| format!("publish to {topic}"))
    }

    /// How the link to the broker fares (with [`Config::track_link`]).
    pub fn link(&self) -> Option<link::Link> {
        let stats = self.link.as_ref()?;
        Some(
            stats
                .lock()
                .expect("link lock")
                .link(std::time::Instant::now()),
        )
    }

    /// Acknowledges a message of [`Config::acked_by_caller`] (its PUBACK
    /// is queued; it goes out when connected).
    pub async fn ack(&self, token: AckToken) -> Result<()> {
        self.client.ack(&token.0).await.context("queue puback")
    }

    /// Sends DISCONNECT and waits (briefly) for the task to end.
    pub async fn close(&self) {
        let _ = self.client.try_disconnect();
        let task = self.task.lock().expect("mqtt task lock").take();
        if let Some(mut task) = task {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                self.stop.cancel();
                let _ = task.await;
            }
        }
    }
}

/// A TLS client that trusts only the certificates `ca_pem` holds (not the
/// system's roots): the fleet's own CA.
pub fn tls_client(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the CA is not PEM")?)
            .context("the CA is not a certificate")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no certificate in the CA PEM");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// QoS 1 messages in flight per connection (and rumqttc's packet id cycle).
const INFLIGHT: u16 = 1000;

/// How long to wait for a SUBACK before subscribing again.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before subscribing again after a broker refused a
/// filter (an ACL, say): it is logged each time, and retried.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

/// Whether a SUBACK grants every filter asked for.
fn granted(codes: &[rumqttc::SubscribeReasonCode], asked: usize) -> bool {
    codes.len() == asked
        && codes
            .iter()
            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
}

/// Queues a SUBSCRIBE for every configured filter. It waits for room in
/// rumqttc's request queue on a task of its own, since the queue only
/// drains while the event loop is polled by the caller.
fn request_subscribe(client: &AsyncClient, config: &Config) -> JoinHandle<()> {
    let client = client.clone();
    let filters: Vec<_> = config
        .subscriptions
        .iter()
        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
        .collect();
    tokio::spawn(async move {
        if let Err(error) = client.subscribe_many(filters).await {
            debug!(%error, "mqtt subscribe not queued");
        }
    })
}

/// Why a connection attempt failed, as far as what to do next goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The network, TLS or the broker going away: try again soon.
    Transient,
    /// The broker answered and refused this login: it will refuse the next
    /// attempt too until an operator acts, so say so once and ask rarely.
    Refused,
}

fn failure(error: &rumqttc::ConnectionError) -> Failure {
    use rumqttc::ConnectReturnCode::{BadUserNamePassword, NotAuthorized};
    match error {
        rumqttc::ConnectionError::ConnectionRefused(BadUserNamePassword | NotAuthorized) => {
            Failure::Refused
        }
        _ => Failure::Transient,
    }
}

/// What a user should do when the broker cannot be reached, from the
/// error's text: a certificate problem says which, the rest says where to
/// look. Pure.
pub fn unreachable_advice(broker: &str, error: &str) -> String {
    let e = error.to_ascii_lowercase();
    let doctor = format!("`homelab doctor --broker {broker}` checks it");
    if e.contains("expired") {
        "the broker's TLS certificate has expired: on the control host `homelab doctor` says when, and `homelab tls init --force --name HOST` makes new ones (then enrol the nodes again)".to_string()
    } else if e.contains("notvalidforname") || e.contains("not valid for name") {
        format!("the broker's certificate does not name {broker}: dial a name given to `homelab tls init --name`, or make one that names it")
    } else if e.contains("unknownissuer")
        || e.contains("unknown issuer")
        || e.contains("badsignature")
    {
        "the broker's certificate is not signed by the fleet's CA this host holds: enrol this node again with the token `homelab node rotate NODE` prints".to_string()
    } else if e.contains("refused") {
        format!("nothing listens at {broker}: is the broker (`homelab up`, or Mosquitto) running there, on that port? {doctor}")
    } else if e.contains("lookup") || e.contains("resolve") || e.contains("name or service") {
        format!("the name in {broker} does not resolve from here: check it, and this host's DNS; {doctor}")
    } else {
        format!("is the broker running and reachable from here (a firewall, a down link)? {doctor}")
    }
}

/// Whether the `n`th failed connect in a row is said at WARN: the first,
/// then every 30th (about every 15 min at the 30 s backoff ceiling).
fn say_unreachable(n: u32) -> bool {
    n == 1 || n.is_multiple_of(30)
}

/// The wait after a refused login: between this and 5 min, doubling.
const REFUSED_MIN: Duration = Duration::from_secs(15);
const REFUSED_MAX: Duration = Duration::from_secs(300);

/// The next wait after `refusals` refused logins in a row (the first is 1).
fn refused_delay(refusals: u32) -> Duration {
    REFUSED_MIN
        .saturating_mul(1 << refusals.saturating_sub(1).min(8))
        .min(REFUSED_MAX)
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Hands received messages to the caller from a task of its own, so the
/// event loop never waits for a slow caller: blocking the loop on a full
/// channel while the caller waits for room in rumqttc's request queue (to
/// publish an ack, say) would stop both for good. Seen with 100 agents
/// replaying at once: the observer went deaf, and its keepalive ran out.
/// (Racing the event loop's `poll` against the channel instead would cancel
/// `poll` mid-write, which can lose a request.)
struct Forward {
    tx: mpsc::UnboundedSender<Incoming>,
    backlog: Arc<AtomicUsize>,
}

/// Messages the caller has not taken yet, beyond the channel's capacity,
/// past which the event loop waits for the caller. Agents keep at most 250
/// events each in flight, so this holds a fleet of hundreds replaying at
/// once.
const MAX_BACKLOG: usize = 100_000;

impl Forward {
    fn start(out: mpsc::Sender<Incoming>) -> Forward {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let count = backlog.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let sent = out.send(message).await;
                count.fetch_sub(1, Ordering::Relaxed);
                if sent.is_err() {
                    debug!("mqtt receiver dropped");
                    break;
                }
            }
        });
        Forward { tx, backlog }
    }

    fn deliver(&self, message: Incoming) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(message).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits while the caller is [`MAX_BACKLOG`] messages behind.
    async fn room(&self) {
        let mut warned = false;
        while self.backlog.load(Ordering::Relaxed) >= MAX_BACKLOG && !self.tx.is_closed() {
            if !warned {
                warn!(
                    backlog = MAX_BACKLOG,
                    "mqtt receiver far behind; reading from the broker waits"
                );
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Who acknowledges an incoming PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckBy {
    /// rumqttc, as it reads it (manual acks off).
    Rumqttc,
    /// The caller, through [`Mqtt::ack`], once it has kept it.
    Caller,
    /// This loop, at once (manual acks on, another topic; or QoS 0, which
    /// has nothing to acknowledge).
    Us,
}

fn ack_by(config: &Config, publish: &rumqttc::Publish) -> AckBy {
    if config.acked_by_caller.is_empty() {
        AckBy::Rumqttc
    } else if publish.qos != QoS::AtMostOnce && config.acked_by_caller.contains(&publish.topic) {
        AckBy::Caller
    } else {
        AckBy::Us
    }
}

/// `homelab_mqtt_subscribed{client, broker}`: 1 while the client is
/// connected with every subscription confirmed (for operators, and for
/// tests that must not publish before a component listens).
fn subscribed(config: &Config, yes: bool) {
    metrics::gauge!(
        "homelab_mqtt_subscribed",
        "client" => config.client_id.clone(),
        "broker" => config.broker.clone()
    )
    .set(if yes { 1.0 } else { 0.0 });
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    config: Config,
    tx: mpsc::Sender<Incoming>,
    link: Option<Arc<Mutex<link::LinkStats>>>,
    stop: CancellationToken,
) {
    let record = |f: &dyn Fn(&mut link::LinkStats, std::time::Instant)| {
        if let Some(link) = &link {
            f(
                &mut link.lock().expect("link lock"),
                std::time::Instant::now(),
            );
        }
    };
    let mut delays = backoff();
    let mut refusals = 0u32;
    let mut unreachable = 0u32;
    let mut connected = false;
    // While subscriptions are unconfirmed on this connection: when to ask
    // again, and the request still waiting for room in the queue.
    let mut resubscribe_at: Option<tokio::time::Instant> = None;
    let mut queued: Option<JoinHandle<()>> = None;
    let mut session_present = false;
    let incoming = Forward::start(tx);
    loop {
        incoming.room().await;
        let resubscribe = async {
            match resubscribe_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            _ = resubscribe => {
                warn!(client = %config.client_id, "mqtt subscription not confirmed; subscribing again");
                if queued.as_ref().is_none_or(|q| q.is_finished()) {
                    queued = Some(request_subscribe(&client, &config));
                }
                resubscribe_at = Some(tokio::time::Instant::now() + SUBACK_TIMEOUT);
                continue;
            }
            event = eventloop.poll() => event,
        };
        match &event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if *pkid != 0 => {
                record(&|l, now| l.sent(*pkid, now))
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => record(&|l, now| l.answered(ack.pkid, now)),
            Ok(Event::Outgoing(Outgoing::PingReq)) => record(&|l, now| l.ping_sent(now)),
            Ok(Event::Incoming(Packet::PingResp)) => record(&|l, now| l.ping_answered(now)),
            Ok(Event::Incoming(Packet::ConnAck(_))) => record(&|l, now| l.connected(now)),
            Err(_) => record(&|l, now| l.disconnected(now)),
            _ => {}
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                delays = backoff();
                if refusals > 0 {
                    info!(client = %config.client_id, broker = %config.broker, "mqtt login accepted again");
                }
                refusals = 0;
                unreachable = 0;
                connected = true;
                info!(client = %config.client_id, broker = %config.broker, session_present = ack.session_present, "mqtt connected");
                if config.subscriptions.is_empty() {
                    subscribed(&config, true);
                    let connected = Incoming::Connected {
                        session_present: ack.session_present,
                    };
                    incoming.deliver(connected);
                } else {
                    if queued.as_ref().is_none_or(|q| q.is_finished()) {
                        queued = Some(request_subscribe(&client, &config));
                    }
                    resubscribe_at = Some(tokio::time::Instant::now() + SUBACK_TIMEOUT);
                    session_present = ack.session_present;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) if resubscribe_at.is_some() => {
                if granted(&suback.return_codes, config.subscriptions.len()) {
                    resubscribe_at = None;
                    debug!(client = %config.client_id, "mqtt subscriptions confirmed");
                    subscribed(&config, true);
                    incoming.deliver(Incoming::Connected { session_present });
                } else {
                    warn!(client = %config.client_id, codes = ?suback.return_codes, filters = ?config.subscriptions, "broker refused a subscription; asking again");
                    metrics::counter!("homelab_mqtt_subscribe_refused_total").increment(1);
                    resubscribe_at = Some(tokio::time::Instant::now() + REFUSED_RETRY);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let ack = match ack_by(&config, &publish) {
                    AckBy::Rumqttc => None,
                    AckBy::Caller => Some(AckToken(publish.clone())),
                    AckBy::Us => {
                        // Manual acks are on for this connection: the rest
                        // are acknowledged here, without waiting on the
                        // event loop when rumqttc's request queue is full
                        // (it drains only while this loop polls).
                        if client.try_ack(&publish).is_err() {
                            let (client, publish) = (client.clone(), publish.clone());
                            tokio::spawn(async move { client.ack(&publish).await });
                        }
                        None
                    }
                };
                let message = Message {
                    topic: publish.topic,
                    payload: publish.payload,
                    retain: publish.retain,
                    ack,
                };
                incoming.deliver(Incoming::Message(message));
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                warn!(client = %config.client_id, pkid, "mqtt packet id collision: requests wait for its ack");
                metrics::counter!("homelab_mqtt_collisions_total").increment(1);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                debug!(client = %config.client_id, "mqtt disconnect sent");
                break;
            }
            Ok(_) => {}
            Err(error) => {
                resubscribe_at = None;
                let was_connected = connected;
                if connected {
                    warn!(client = %config.client_id, %error, "mqtt connection lost");
                    connected = false;
                    subscribed(&config, false);
                    incoming.deliver(Incoming::Disconnected);
                }
                let delay = match failure(&error) {
                    Failure::Refused => {
                        refusals += 1;
                        metrics::counter!("homelab_mqtt_login_refused_total").increment(1);
                        let delay = refused_delay(refusals);
                        if refusals == 1 {
                            let hint = config.refused_hint.as_deref().unwrap_or("check its login");
                            error!(client = %config.client_id, broker = %config.broker, %error,
                                "the broker refused this client's login: {hint}; asking again, at most every 5 min");
                        } else {
                            debug!(client = %config.client_id, %error, refusals, "mqtt login refused again");
                        }
                        delay
                    }
                    Failure::Transient => {
                        if !was_connected {
                            unreachable += 1;
                            if say_unreachable(unreachable) {
                                let advice = unreachable_advice(&config.broker, &error.to_string());
                                warn!(client = %config.client_id, broker = %config.broker, %error, attempts = unreachable,
                                    "cannot reach the broker: {advice}; trying again with a backoff");
                            } else {
                                debug!(client = %config.client_id, %error, "mqtt connect failed");
                            }
                        }
                        delays.next().unwrap_or(Duration::from_secs(30))
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if let Some(queued) = queued {
        queued.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_broker_is_said_with_what_to_do() {
        let b = "mqtts://vps:8883";
        for (error, says) in [
            (
                "TLS: invalid peer certificate: Expired",
                "certificate has expired",
            ),
            (
                "TLS: invalid peer certificate: NotValidForName",
                "does not name mqtts://vps:8883",
            ),
            (
                "TLS: invalid peer certificate: UnknownIssuer",
                "not signed by the fleet's CA",
            ),
            (
                "I/O: Connection refused (os error 111)",
                "nothing listens at mqtts://vps:8883",
            ),
            (
                "I/O: failed to lookup address information: Name or service not known",
                "does not resolve",
            ),
            ("Timeout", "reachable from here"),
        ] {
            let advice = unreachable_advice(b, error);
            assert!(advice.contains(says), "{error}: {advice}");
        }
        let said: Vec<u32> = (1..=61).filter(|n| say_unreachable(*n)).collect();
        assert_eq!(said, [1, 30, 60]);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".to_string(), 1883)
        );
        assert_eq!(parse_addr("[::1]:1883").unwrap(), ("::1".to_string(), 1883));
        assert!(parse_addr("localhost").is_err());
        assert!(parse_addr(":1883").is_err());
        assert!(parse_addr("h:99999").is_err());
    }

    #[test]
    fn suback_grants() {
        use rumqttc::SubscribeReasonCode::{Failure, Success};
        let check = |codes: &[rumqttc::SubscribeReasonCode], asked, expected| {
            assert_eq!(granted(codes, asked), expected, "{codes:?} for {asked}");
        };
        check(&[Success(QoS::AtLeastOnce)], 1, true);
        check(
            &[Success(QoS::AtMostOnce), Success(QoS::AtLeastOnce)],
            2,
            true,
        );
        check(&[Success(QoS::AtLeastOnce), Failure], 2, false);
        check(&[Success(QoS::AtLeastOnce)], 2, false);
        check(&[], 1, false);
    }

    #[test]
    fn who_acknowledges() {
        let publish = |topic: &str, qos| rumqttc::Publish::new(topic, qos, "x");
        let mut config = Config::new("127.0.0.1:1883", "c");
        let check = |config: &Config, topic, qos, expected| {
            assert_eq!(
                ack_by(config, &publish(topic, qos)),
                expected,
                "{topic} {qos:?}"
            );
        };
        check(&config, "commands/n", QoS::AtLeastOnce, AckBy::Rumqttc);
        config.acked_by_caller = vec!["commands/n".into()];
        check(&config, "commands/n", QoS::AtLeastOnce, AckBy::Caller);
        check(&config, "commands/n", QoS::AtMostOnce, AckBy::Us);
        check(&config, "acks/n", QoS::AtLeastOnce, AckBy::Us);
        check(&config, "commands/n2", QoS::AtLeastOnce, AckBy::Us);
    }

    #[test]
    fn a_refused_login_is_asked_again_rarely() {
        use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
        let cases = [
            (E::ConnectionRefused(Code::NotAuthorized), Failure::Refused),
            (
                E::ConnectionRefused(Code::BadUserNamePassword),
                Failure::Refused,
            ),
            (
                E::ConnectionRefused(Code::ServiceUnavailable),
                Failure::Transient,
            ),
            (E::NetworkTimeout, Failure::Transient),
            (
                E::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
                Failure::Transient,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(failure(&error), want, "{error}");
        }
        let delays: Vec<u64> = (1..=8).map(|n| refused_delay(n).as_secs()).collect();
        assert_eq!(delays, [15, 30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(refused_delay(u32::MAX), REFUSED_MAX);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let delays: Vec<_> = backoff().take(20).collect();
        assert!(delays[0] >= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays[10] > delays[0]);
    }
}
