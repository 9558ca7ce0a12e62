//! The embedded MQTT 3.1.1 broker: rumqttd with a configuration that is safe
//! for a small machine.
//!
//! Four rumqttd facts shape this module:
//! - it has no stop API: it runs on its own named threads until the process
//!   ends, so "stopping the broker" means ending the process. [`run`] returns
//!   on shutdown, but the listener lives on until exit;
//! - it only logs a failure to bind, so [`start`] checks the address itself
//!   and then waits until the listener accepts connections;
//! - `RouterConfig::default()` has zero-sized segments and panics on first
//!   use; its example config uses 100 MiB segments (memory measured at
//!   1.4 GB). We use 16 segments of 1 MiB per subscription filter: a
//!   subscriber that falls more than 16 MiB behind loses what it has not
//!   read ("jumping to head"), and every agent's events share the
//!   observer's one filter. The agents' send window is sized to that: 100
//!   agents replaying at once fit. The memory is taken only as traffic
//!   fills it (about 25 MB idle, the last 16 MiB kept after a burst);
//! - it sets no `TCP_NODELAY` on the connections it accepts, which cost
//!   40 ms (a delayed ACK) on most messages; [`start`] sets it on the
//!   listening socket, which accepted sockets inherit (Linux).
//!
//! It keeps nothing on disk: retained messages and sessions are gone after a
//! restart, which is why the observer republishes its retained state and the
//! agents keep their own outbox.
//!
//! Clients: in open mode (no fleet identities under `config/`) anonymous
//! clients are accepted, on a loopback listener only (as Mosquitto 2 does
//! with no users configured). In fleet mode every client logs in: the
//! control plane's user or an enrolled node, its password checked against
//! an argon2 hash (constant time), failures counted
//! (`homelab_broker_auth_failures_total{reason}`) and logged with the user
//! name, never the password. A node's user may only take its own client id
//! (`homelab-agent-<node>`, or `<node>:…`): taking another's would steal
//! that node's persistent session and its queued commands.
//!
//! TLS is terminated in front of rumqttd, not by it: rumqttd 0.20 does the
//! TLS handshake inside its accept loop, so one client that opens a
//! connection and says nothing stalls every other connect. [`start`] runs
//! the TLS listener itself (a task per connection, 10 s to finish the
//! handshake) and hands each decrypted stream to rumqttd's loopback
//! listener, where the login is checked like any other. Only loopback and
//! TLS listeners exist: plain MQTT never leaves the host.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homelab_core::fleet::Fleet;
use homelab_core::identity;

use anyhow::{bail, Context, Result};
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct Config {
    /// rumqttd's own listener: plain MQTT, loopback only.
    pub listen: SocketAddr,
    /// Largest publish accepted; a larger one disconnects its sender.
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    /// Fleet mode: every client logs in as the control plane or an
    /// enrolled node. `None`: open mode, anonymous on loopback.
    pub fleet: Option<Fleet>,
    /// A TLS listener in front (fleet mode only).
    pub tls: Option<TlsListener>,
}

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            max_payload_bytes: 1024 * 1024,
            max_connections: 1024,
            fleet: None,
            tls: None,
        }
    }

    /// What is wrong with this setup, said so an operator knows what to
    /// do: plain MQTT off loopback, TLS without identities.
    pub fn check(&self) -> Result<()> {
        if !self.listen.ip().is_loopback() {
            bail!(
                "refusing to serve plain MQTT on {}: plain MQTT is served on loopback only. \
                 To let agents on other hosts in: `homelab tls init --name <this host's name or address>`, \
                 then listen with TLS (`homelab up --mqtts 0.0.0.0:8883`), and give each node its identity \
                 with `homelab node add <node>`",
                self.listen
            );
        }
        if let Some(tls) = &self.tls {
            if self.fleet.is_none() {
                bail!(
                    "refusing to serve MQTT on {} without credentials: this root has no fleet identity \
                     (config/control.json). Run `homelab tls init --name <this host's name or address>` \
                     and `homelab node add <node>` for each node",
                    tls.listen
                );
            }
            for path in [&tls.cert, &tls.key] {
                if !path.exists() {
                    bail!(
                        "TLS needs {}: run `homelab tls init --name <this host's name or address>`",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }
}

fn rumqttd_config(config: &Config) -> rumqttd::Config {
    let router = RouterConfig {
        max_connections: config.max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024 * 1024,
        max_segment_count: 16,
        ..Default::default()
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: config.fleet.clone().map(auth_handler),
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-homelab".into(),
        listen: config.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// Starts rumqttd on its own thread and returns once it accepts
/// connections. It runs until the process exits.
pub fn start(config: &Config) -> Result<()> {
    config.check()?;
    let front = match &config.tls {
        Some(tls) => Some(tls_front(tls)?),
        None => None,
    };
    TcpListener::bind(config.listen)
        .with_context(|| format!("mqtt listen address {} is not free", config.listen))?;
    let mut broker = Broker::new(rumqttd_config(config));
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded broker stopped");
            }
        })
        .context("spawn broker thread")?;
    let started = Instant::now();
    let login = config.fleet.as_ref().map(|f| f.control_credentials());
    while let Err(error) = probe(config.listen, login.as_ref()) {
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "embedded broker does not answer on {}: {error}",
                config.listen
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match nodelay_on_listener(config.listen) {
        Ok(true) => {}
        Ok(false) => {
            warn!(listen = %config.listen, "broker's listening socket not found; TCP_NODELAY not set")
        }
        Err(error) => warn!(%error, "TCP_NODELAY not set on the broker's listening socket"),
    }
    info!(listen = %config.listen, fleet = config.fleet.is_some(), "embedded mqtt broker listening");
    if let (Some((listener, acceptor)), Some(fleet)) = (front, config.fleet.clone()) {
        let inner = config.listen;
        let handle = tokio::runtime::Handle::try_current()
            .context("the TLS listener needs a tokio runtime")?;
        let addr = listener.local_addr()?;
        handle.spawn(serve_tls(listener, acceptor, inner, fleet));
        info!(listen = %addr, "mqtt over TLS listening");
    }
    Ok(())
}

type Front = (tokio::net::TcpListener, tokio_rustls::TlsAcceptor);

/// Binds the TLS listener (so a taken port fails the start) and loads the
/// certificate and key.
fn tls_front(tls: &TlsListener) -> Result<Front> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("read {}", path.display()));
    let certs = rustls_pemfile::certs(&mut &read(&tls.cert)?[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", tls.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        tls.cert.display()
    );
    let key = rustls_pemfile::private_key(&mut &read(&tls.key)?[..])
        .with_context(|| format!("{} is not a PEM key", tls.key.display()))?
        .with_context(|| format!("no private key in {}", tls.key.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the server certificate and key do not match")?;
    let std_listener = TcpListener::bind(tls.listen)
        .with_context(|| format!("mqtts listen address {} is not free", tls.listen))?;
    std_listener.set_nonblocking(true)?;
    let _guard = tokio::runtime::Handle::try_current()
        .context("the TLS listener needs a tokio runtime")?
        .enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    Ok((listener, tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS clients, each on a task of its own, and pipes each
/// decrypted stream to rumqttd's loopback listener. The first packet (the
/// CONNECT) is read here to learn the user: a node's connection is closed
/// as soon as its record is removed or rotated (checked every second), so
/// `homelab node remove` cuts a connected node off at once.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: SocketAddr,
    fleet: Fleet,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "mqtts accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
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
            };
            if let Err(error) = pipe(tls, inner, &fleet).await {
                debug!(%peer, %error, "mqtts connection ended");
            }
        });
    }
}

async fn pipe(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    inner: SocketAddr,
    fleet: &Fleet,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The CONNECT, whole, within the handshake's time.
    let mut first = Vec::with_capacity(256);
    let user = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            match connect_user(&first) {
                Connect::Incomplete => {}
                Connect::User(user) => return Ok(user),
                Connect::Invalid => {
                    return Err(std::io::Error::other("first packet is no CONNECT"))
                }
            }
            let mut chunk = [0u8; 1024];
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before CONNECT"));
            }
            first.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::other("no CONNECT in time"))??;
    let mut plain = tokio::net::TcpStream::connect(inner).await?;
    plain.set_nodelay(true)?;
    plain.write_all(&first).await?;
    let node = user
        .as_deref()
        .and_then(|u| homelab_core::Name::parse(u).ok());
    let Some(node) = node else {
        // The control plane or no user at all (rumqttd refuses the latter).
        tokio::io::copy_bidirectional(&mut tls, &mut plain).await?;
        return Ok(());
    };
    let hash_at_connect = fleet.node(&node).map(|e| e.password_hash);
    let revoked = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if fleet.node(&node).map(|e| e.password_hash) != hash_at_connect {
                return;
            }
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut tls, &mut plain) => { result?; }
        _ = revoked => {
            info!(%node, "node revoked or rotated: its connection is closed");
            metrics::counter!("homelab_broker_revoked_disconnects_total").increment(1);
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Connect {
    /// More bytes are needed.
    Incomplete,
    /// A CONNECT, and the user name it carries (if any).
    User(Option<String>),
    Invalid,
}

/// Largest CONNECT read in front of the broker.
const MAX_CONNECT_BYTES: usize = 64 * 1024;

/// Reads the user name of an MQTT 3.1.1 CONNECT at the start of `bytes`.
pub fn connect_user(bytes: &[u8]) -> Connect {
    if bytes.is_empty() {
        return Connect::Incomplete;
    }
    if bytes[0] != 0x10 {
        return Connect::Invalid;
    }
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&byte) = bytes.get(at) else {
            return Connect::Incomplete;
        };
        len |= ((byte & 0x7f) as usize) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Connect::Invalid;
        }
    }
    if len > MAX_CONNECT_BYTES {
        return Connect::Invalid;
    }
    if bytes.len() < at + len {
        return Connect::Incomplete;
    }
    let body = &bytes[at..at + len];
    let field = |at: &mut usize| -> Option<&[u8]> {
        let n = u16::from_be_bytes([*body.get(*at)?, *body.get(*at + 1)?]) as usize;
        let value = body.get(*at + 2..*at + 2 + n)?;
        *at += 2 + n;
        Some(value)
    };
    let mut pos = 0;
    let parsed = (|| {
        let protocol = field(&mut pos)?;
        if protocol != b"MQTT" && protocol != b"MQIsdp" {
            return None;
        }
        let flags = *body.get(pos + 1)?;
        pos += 4; // level, flags, keep-alive
        field(&mut pos)?; // client id
        if flags & 0x04 != 0 {
            field(&mut pos)?; // will topic
            field(&mut pos)?; // will message
        }
        if flags & 0x80 == 0 {
            return Some(None);
        }
        let user = field(&mut pos)?;
        Some(Some(String::from_utf8(user.to_vec()).ok()?))
    })();
    match parsed {
        Some(user) => Connect::User(user),
        None => Connect::Invalid,
    }
}

/// Logins already checked: user → (SHA-256 of the password, the hash it
/// matched). argon2 is slow on purpose; a fleet reconnecting after a
/// broker restart would otherwise spend seconds of CPU. An entry holds only
/// while the user's stored hash is the same (rotation, removal).
type Checked = Arc<Mutex<HashMap<String, ([u8; 32], String)>>>;

fn auth_handler(fleet: Fleet) -> rumqttd::AuthHandler {
    let checked: Checked = Arc::default();
    Arc::new(move |client_id: String, user: String, password: String| {
        let fleet = fleet.clone();
        let checked = checked.clone();
        Box::pin(async move {
            let verdict = tokio::task::spawn_blocking(move || {
                login(&fleet, &checked, &client_id, &user, &password)
                    .map_err(|reason| (reason, user, client_id))
            })
            .await;
            match verdict {
                Ok(Ok(())) => true,
                Ok(Err((reason, user, client_id))) => {
                    metrics::counter!("homelab_broker_auth_failures_total", "reason" => reason)
                        .increment(1);
                    warn!(user = %user, client_id = %client_id, reason, "mqtt login refused");
                    false
                }
                Err(_) => false,
            }
        })
    })
}

/// The verdict on one login; `Err(reason)` when refused.
fn login(
    fleet: &Fleet,
    checked: &Checked,
    client_id: &str,
    user: &str,
    password: &str,
) -> std::result::Result<(), &'static str> {
    use sha2::Digest;
    if !client_id_allowed(user, client_id) {
        return Err("client_id");
    }
    let stored = if user == identity::CONTROL_USER {
        None
    } else {
        let node = homelab_core::Name::parse(user).map_err(|_| "unknown_user")?;
        Some(fleet.node(&node).ok_or("unknown_user")?.password_hash)
    };
    let digest: [u8; 32] = sha2::Sha256::digest(password.as_bytes()).into();
    if let Some(stored) = &stored {
        let cache = checked.lock().expect("login cache");
        if let Some((seen, hash)) = cache.get(user) {
            if hash == stored && constant_time_eq(seen, &digest) {
                return Ok(());
            }
        }
    }
    if !fleet.check_password(user, password) {
        return Err("bad_password");
    }
    if let Some(stored) = stored {
        checked
            .lock()
            .expect("login cache")
            .insert(user.to_string(), (digest, stored));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `user` may use `client_id`: the control plane any; a node only
/// `homelab-agent-<node>` or `<node>:…` (`:` is in no name, so no node's
/// ids are a prefix of another's).
pub fn client_id_allowed(user: &str, client_id: &str) -> bool {
    if user == identity::CONTROL_USER {
        return true;
    }
    client_id.strip_prefix("homelab-agent-") == Some(user)
        || client_id
            .strip_prefix(user)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// rumqttd sets no `TCP_NODELAY` on the connections it accepts, and has no
/// option for it: its small writes (an ack, an event) then wait for the
/// peer's delayed ACK, 40 ms at a time. Accepted sockets inherit the option
/// from their listening socket (Linux), and the broker runs in this
/// process, so it is set there: the listening socket is found among this
/// process's descriptors by its address. Measured: event to pending action
/// p50 48 ms before, 8 ms after. True if the socket was found.
#[cfg(target_os = "linux")]
fn nodelay_on_listener(addr: SocketAddr) -> std::io::Result<bool> {
    let Some(fd) = find_listener(addr)? else {
        return Ok(false);
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor of this process with a pointer to
    // a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(true)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The descriptor of this process's TCP socket listening on `addr`.
#[cfg(target_os = "linux")]
fn find_listener(addr: SocketAddr) -> std::io::Result<Option<std::os::fd::RawFd>> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse() else {
            continue;
        };
        if socket_addr(fd) == Some(addr)
            && int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

#[cfg(not(target_os = "linux"))]
fn nodelay_on_listener(_addr: SocketAddr) -> std::io::Result<bool> {
    Ok(false)
}

/// The local address of socket `fd`, if it is an IPv4 or IPv6 socket.
#[cfg(target_os = "linux")]
fn socket_addr(fd: std::os::fd::RawFd) -> Option<SocketAddr> {
    // SAFETY: getsockname writes at most `len` bytes into a zeroed
    // sockaddr_storage that lives through the call.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc =
        unsafe { libc::getsockname(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return None;
    }
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

/// An integer socket option of `fd`.
#[cfg(target_os = "linux")]
fn int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Connects with a minimal MQTT 3.1.1 CONNECT, expects a CONNACK that
/// accepts it, and disconnects: the broker is up and speaks MQTT.
fn probe(addr: SocketAddr, login: Option<&(String, String)>) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let connect = connect_packet(b"homelab-probe", None, login);
    stream.write_all(&connect)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "unexpected CONNACK {connack:?}"
        )));
    }
    stream.write_all(&[0xE0, 0])
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 10 s) with an
/// optional will (topic, message) and login.
fn connect_packet(
    client_id: &[u8],
    will: Option<(&[u8], &[u8])>,
    login: Option<&(String, String)>,
) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10];
    let field = |body: &mut Vec<u8>, bytes: &[u8]| {
        body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        body.extend_from_slice(bytes);
    };
    field(&mut body, client_id);
    if let Some((topic, message)) = will {
        body[7] |= 0x04;
        field(&mut body, topic);
        field(&mut body, message);
    }
    if let Some((user, password)) = login {
        body[7] |= 0xC0;
        field(&mut body, user.as_bytes());
        field(&mut body, password.as_bytes());
    }
    let mut connect = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        connect.push(byte);
        if len == 0 {
            break;
        }
    }
    connect.extend_from_slice(&body);
    connect
}

/// `homelab broker`: starts the broker and waits for shutdown. The broker
/// itself ends with the process (see the module docs).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let cfg = config.clone();
    tokio::task::spawn_blocking(move || start(&cfg))
        .await
        .context("broker start task")??;
    shutdown.cancelled().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_plain_mqtt_off_loopback_and_says_what_to_do() {
        let err = start(&Config::new("0.0.0.0:0".parse().unwrap())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("loopback only"), "{text}");
        assert!(text.contains("homelab tls init"), "{text}");
        assert!(text.contains("homelab node add"), "{text}");
    }

    #[test]
    fn refuses_tls_without_identities() {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.tls = Some(TlsListener {
            listen: "0.0.0.0:0".parse().unwrap(),
            cert: "/nonexistent/server.pem".into(),
            key: "/nonexistent/server.key".into(),
        });
        let text = config.check().unwrap_err().to_string();
        assert!(text.contains("without credentials"), "{text}");
        assert!(text.contains("homelab tls init"), "{text}");
    }

    fn connect_packet(client_id: &str, will: bool, login: Option<(&str, &str)>) -> Vec<u8> {
        let login = login.map(|(u, p)| (u.to_string(), p.to_string()));
        let will = will.then_some((&b"homelab/nodes/piha/status"[..], &b"offline"[..]));
        super::connect_packet(client_id.as_bytes(), will, login.as_ref())
    }

    #[test]
    fn the_user_of_a_connect_is_read_in_front_of_the_broker() {
        let with_will = connect_packet("homelab-agent-piha", true, Some(("piha", "secret")));
        assert_eq!(connect_user(&with_will), Connect::User(Some("piha".into())));
        let long_id = "x".repeat(300);
        let long = connect_packet(&long_id, false, Some(("piha", "secret")));
        assert_eq!(
            connect_user(&long),
            Connect::User(Some("piha".into())),
            "two-byte length"
        );
        assert_eq!(
            connect_user(&connect_packet("anon", false, None)),
            Connect::User(None)
        );
        for cut in 0..with_will.len() {
            assert_eq!(
                connect_user(&with_will[..cut]),
                Connect::Incomplete,
                "cut at {cut}"
            );
        }
        // More bytes after the CONNECT (a SUBSCRIBE sent at once) are fine.
        let mut more = with_will.clone();
        more.extend_from_slice(&[0x82, 0x05, 0, 1, 0, 0, 1]);
        assert_eq!(connect_user(&more), Connect::User(Some("piha".into())));
        assert_eq!(
            connect_user(&[0x30, 0x02, 0, 0]),
            Connect::Invalid,
            "a PUBLISH first"
        );
        assert_eq!(
            connect_user(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Connect::Invalid
        );
        let mut bad_protocol = connect_packet("x", false, None);
        bad_protocol[4] = b'X';
        assert_eq!(connect_user(&bad_protocol), Connect::Invalid);
        // The user name's length runs past the packet.
        let mut short_field = connect_packet("x", false, Some(("piha", "")));
        let n = short_field.len();
        short_field[1] -= 3;
        short_field.truncate(n - 3);
        assert_eq!(connect_user(&short_field), Connect::Invalid);
    }

    proptest::proptest! {
        /// Whatever a client sends first, reading it never panics, and a
        /// user is found only in a complete CONNECT.
        #[test]
        fn any_first_bytes_are_read_safely(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Connect::User(_) = connect_user(&bytes) {
                proptest::prop_assert_eq!(bytes[0], 0x10);
            }
        }
    }

    #[test]
    fn a_node_takes_only_its_own_client_ids() {
        for (user, client_id, allowed) in [
            ("piha", "homelab-agent-piha", true),
            ("piha", "piha:probe", true),
            ("piha", "homelab-agent-pihb", false),
            ("piha", "homelab-agent-piha2", false),
            ("pi", "homelab-agent-piha", false),
            ("pi", "piha:x", false),
            ("homelab", "homelab-agent-piha", false),
            ("piha", "homelab-observer", false),
            ("piha", "", false),
            (identity::CONTROL_USER, "homelab-observer", true),
        ] {
            assert_eq!(
                client_id_allowed(user, client_id),
                allowed,
                "{user} as {client_id}"
            );
        }
    }

    /// Connections rumqttd accepts inherit it from the listening socket.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_listening_socket_has_tcp_nodelay() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        start(&Config::new(addr)).unwrap();
        let fd = find_listener(addr)
            .unwrap()
            .expect("the broker's listening socket");
        assert_eq!(
            int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY),
            Some(1)
        );
    }

    #[test]
    fn reports_a_taken_port() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = start(&Config::new(taken.local_addr().unwrap())).unwrap_err();
        assert!(format!("{err:#}").contains("is not free"), "{err:#}");
    }
}
