//! The embedded MQTT broker (3.1.1 and 5 on the same port): rumqttd with a
//! configuration that is safe for a small machine, behind a front of ours
//! ([`front`]) on every listener.
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
//! rumqttd listens only on two internal loopback ports (MQTT 3.1.1 and 5);
//! every client comes through [`front`], on the plain loopback listener and
//! the TLS one: it reads the CONNECT (a task per connection, 10 s for the
//! TLS handshake and the CONNECT: rumqttd 0.20 does the TLS handshake
//! inside its accept loop, where one silent client stalls every other
//! connect), hands the connection to rumqttd's v4 or v5 listener, answers
//! a refused login with a CONNACK that says why, holds nodes and Home
//! Assistant to `core::acl` (the generated Mosquitto ACL's rules) and
//! closes a removed node's connection. rumqttd checks the login again
//! (a second layer). Only loopback and TLS listeners exist: plain MQTT
//! never leaves the host. `homelab up` gives its own components rumqttd's
//! internal address ([`Started::internal`]): they pay for no front.

pub mod front;
pub mod packet;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homelab_core::fleet::Fleet;
use homelab_core::identity;

use anyhow::{bail, Context, Result};
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};
use rustls_pki_types::{pem, pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// The topics the access rules name (`core::acl`).
    pub topics: homelab_core::Topics,
    /// rumqttd's internal MQTT 3.1.1 listener (loopback); `None`: a free
    /// port. A test that must reach it names it.
    pub internal: Option<SocketAddr>,
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
            topics: homelab_core::Topics::default(),
            internal: None,
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

fn rumqttd_config(config: &Config, v4: SocketAddr, v5: SocketAddr) -> rumqttd::Config {
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
    let server = |name: &str, listen| ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_string(), server("v4-homelab", v4))])),
        v5: Some(HashMap::from([("1".to_string(), server("v5-homelab", v5))])),
        ..Default::default()
    }
}

/// What [`start`] started.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// rumqttd's own MQTT 3.1.1 listener (loopback): for the control
    /// plane's components in the same process, past the front.
    pub internal: SocketAddr,
}

/// A free loopback port for one of rumqttd's internal listeners.
fn internal_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("no free loopback port for the broker")?
        .local_addr()?)
}

/// Starts rumqttd on its own thread and the front on `config.listen` (and
/// TLS), and returns once they accept connections. rumqttd runs until the
/// process exits; the front runs on the current tokio runtime.
pub fn start(config: &Config) -> Result<Started> {
    config.check()?;
    let tls = match &config.tls {
        Some(tls) => Some(tls_front(tls)?),
        None => None,
    };
    let plain = TcpListener::bind(config.listen)
        .with_context(|| format!("mqtt listen address {} is not free", config.listen))?;
    plain.set_nonblocking(true)?;
    let v4 = match config.internal {
        Some(addr) => addr,
        None => internal_addr()?,
    };
    let v5 = internal_addr()?;
    let mut broker = Broker::new(rumqttd_config(config, v4, v5));
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded broker stopped");
            }
        })
        .context("spawn broker thread")?;
    let started = Instant::now();
    let control = config.fleet.as_ref().map(|f| f.control_credentials());
    while let Err(error) = probe(v4, control.as_ref()) {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("embedded broker does not answer on {v4}: {error}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for addr in [v4, v5] {
        match nodelay_on_listener(addr) {
            Ok(true) => {}
            Ok(false) => {
                warn!(listen = %addr, "broker's listening socket not found; TCP_NODELAY not set")
            }
            Err(error) => warn!(%error, "TCP_NODELAY not set on the broker's listening socket"),
        }
    }
    let handle = tokio::runtime::Handle::try_current()
        .context("the broker's front needs a tokio runtime")?;
    let checked: Checked = Arc::default();
    let front = Arc::new(front::Front {
        fleet: config.fleet.clone(),
        topics: config.topics.clone(),
        v4,
        v5,
        login: Box::new(move |fleet, client_id, user, password| {
            login(fleet, &checked, client_id, user, password)
        }),
        paces: Default::default(),
    });
    {
        let _guard = handle.enter();
        let plain = tokio::net::TcpListener::from_std(plain)?;
        handle.spawn(front::serve(plain, None, front.clone()));
    }
    info!(listen = %config.listen, fleet = config.fleet.is_some(), "embedded mqtt broker listening (MQTT 3.1.1 and 5)");
    if let Some((listener, acceptor)) = tls {
        let addr = listener.local_addr()?;
        handle.spawn(front::serve(listener, Some(acceptor), front));
        info!(listen = %addr, "mqtt over TLS listening (MQTT 3.1.1 and 5)");
    }
    Ok(Started { internal: v4 })
}

type Front = (tokio::net::TcpListener, tokio_rustls::TlsAcceptor);

/// Binds the TLS listener (so a taken port fails the start) and loads the
/// certificate and key.
fn tls_front(tls: &TlsListener) -> Result<Front> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("read {}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", tls.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        tls.cert.display()
    );
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow::anyhow!("no private key in {}", tls.key.display()),
        e => anyhow::anyhow!("{} is not a PEM key: {e}", tls.key.display()),
    })?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
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
    let stored = if user == identity::CONTROL_USER || user == homelab_core::acl::HA_USER {
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
/// ids are a prefix of another's); Home Assistant, which makes up a random
/// one, any that is not of the homelab's (so it can take over no session).
pub fn client_id_allowed(user: &str, client_id: &str) -> bool {
    if user == identity::CONTROL_USER {
        return true;
    }
    if user == homelab_core::acl::HA_USER {
        return !client_id.is_empty()
            && !client_id.starts_with("homelab-")
            && !client_id.contains(':');
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

    proptest::proptest! {
        /// Whatever a client sends first, the front reads it without
        /// panicking: a frame, a protocol level, a packet, or a refusal.
        #[test]
        fn any_first_bytes_are_read_safely(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(Some(len)) = packet::frame(&bytes) {
                let frame = &bytes[..len];
                if let Some(level) = packet::level(frame) {
                    let _ = packet::decode(level, frame);
                }
                let _ = packet::decode(packet::Level::V5, frame);
                let _ = packet::publish_qos_pkid(frame);
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
            (homelab_core::acl::HA_USER, "3Jt1cGk4vKf0Yw8sXqR2aB", true),
            (homelab_core::acl::HA_USER, "homelab-agent-piha", false),
            (homelab_core::acl::HA_USER, "homelab-observer", false),
            (homelab_core::acl::HA_USER, "piha:x", false),
            (homelab_core::acl::HA_USER, "", false),
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
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listening_socket_has_tcp_nodelay() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let started = start(&Config::new(addr)).unwrap();
        // rumqttd's own listener (the front sets it on what it accepts).
        let fd = find_listener(started.internal)
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
