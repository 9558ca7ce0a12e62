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
//! Anonymous clients are accepted only on a loopback listener (as Mosquitto 2
//! does with no users configured); any other address is refused until
//! per-client credentials exist.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Largest publish accepted; a larger one disconnects its sender.
    pub max_payload_bytes: usize,
    pub max_connections: usize,
}

impl Config {
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            max_payload_bytes: 1024 * 1024,
            max_connections: 1024,
        }
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
        external_auth: None,
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
    if !config.listen.ip().is_loopback() {
        bail!(
            "refusing to serve anonymous MQTT on {}: the embedded broker accepts anonymous clients only on loopback; \
             listen on 127.0.0.1 or use an external broker with credentials",
            config.listen
        );
    }
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
    while let Err(error) = probe(config.listen) {
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
    info!(listen = %config.listen, "embedded mqtt broker listening");
    Ok(())
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
fn probe(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let client_id = b"homelab-probe";
    let mut connect = vec![
        0x10,
        (12 + client_id.len()) as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        10,
        0,
        client_id.len() as u8,
    ];
    connect.extend_from_slice(client_id);
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
    fn refuses_anonymous_off_loopback() {
        let err = start(&Config::new("0.0.0.0:0".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("only on loopback"), "{err}");
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
