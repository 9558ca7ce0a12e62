//! `homelab tls init` and `homelab node add|remove|rotate|list`: the
//! fleet's identities on the control host, as files under `config/`.
//!
//! - `tls init` makes the CA, the broker's certificate (names and addresses
//!   the agents dial, plus `localhost` and `127.0.0.1` for the control
//!   plane's own clients) and the control plane's identity (its Ed25519
//!   signing key and broker password).
//! - `node add` makes a node's identity: a random broker password (only its
//!   argon2 hash is kept) and an Ed25519 key pair (only the public half is
//!   kept). The secrets leave the control host once, as the enrollment
//!   token in the command it prints.
//! - `node remove` deletes the node's record: the broker refuses its next
//!   connect and the observer its next event (a running control plane
//!   reads the folder again within a second).
//! - `node rotate` replaces the node's password and key.
//! - `mosquitto-config` writes the same logins, and per-node ACLs, for
//!   Mosquitto: a second layer under the signatures and sealed commands.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use homelab_core::fsutil;
use homelab_core::identity::{self, AgentSecrets, ControlSecrets, NodeRecord};
use homelab_core::{Layout, Name, Topics};

/// Port of the TLS listener agents dial (MQTT over TLS, IANA 8883).
pub const MQTTS_PORT: u16 = 8883;

fn broker_url_file(layout: &Layout) -> std::path::PathBuf {
    layout.tls_dir().join("broker-url")
}

/// `homelab tls init`: the CA, the server certificate for `names`, and the
/// control plane's identity. Refuses to replace an existing CA unless
/// `force` (every node would have to be enrolled again).
pub fn tls_init(layout: &Layout, names: &[String], port: u16, force: bool) -> Result<String> {
    if layout.tls_ca_cert().exists() && !force {
        bail!(
            "{} exists: the fleet's CA is already made. `homelab tls init --force` replaces it, \
             and then every node must be enrolled again (`homelab node rotate <node>`)",
            layout.tls_ca_cert().display()
        );
    }
    if names.is_empty() {
        bail!("name at least one host name or address the agents dial: --name ctl.example.net (or --name 10.0.0.5)");
    }
    let mut sans: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim().to_ascii_lowercase();
        let valid = name.parse::<IpAddr>().is_ok()
            || (!name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !valid {
            bail!("{name:?} is neither a host name nor an IP address");
        }
        if !sans.contains(&name) {
            sans.push(name);
        }
    }
    let first = sans[0].clone();
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !sans.iter().any(|s| s == local) {
            sans.push(local.to_string());
        }
    }
    let (ca_pem, ca_key_pem, server_pem, server_key_pem) = make_certificates(&sans)?;
    fsutil::write_atomic(&layout.tls_ca_cert(), ca_pem.as_bytes())?;
    fsutil::write_secret(&layout.tls_ca_key(), ca_key_pem.as_bytes())?;
    fsutil::write_atomic(&layout.tls_server_cert(), server_pem.as_bytes())?;
    fsutil::write_secret(&layout.tls_server_key(), server_key_pem.as_bytes())?;
    let host = if first.contains(':') {
        format!("[{first}]")
    } else {
        first
    };
    let url = format!("mqtts://{host}:{port}");
    fsutil::write_atomic(&broker_url_file(layout), format!("{url}\n").as_bytes())?;
    let control_made = if layout.control_secrets().exists() && !force {
        false
    } else {
        let password = identity::random_secret();
        let secrets = ControlSecrets {
            signing_key: identity::encode_secret_key(&identity::generate_key()),
            password_hash: identity::hash_password(&password),
            password,
        };
        fsutil::write_secret(&layout.control_secrets(), &fsutil::json_bytes(&secrets)?)?;
        true
    };
    let mut out = format!(
        "made the fleet's CA and the broker's certificate for {} in {}\n",
        sans.join(", "),
        layout.tls_dir().display()
    );
    if control_made {
        out.push_str(&format!(
            "made the control plane's identity in {}\n",
            layout.control_secrets().display()
        ));
    }
    out.push_str(&format!(
        "agents will dial {url}; start the control plane with `homelab up --mqtts 0.0.0.0:{port}`, \
         then enroll each node with `homelab node add <node>`\n"
    ));
    Ok(out)
}

/// PEMs of a new CA and of a server certificate it signed for `sans`.
fn make_certificates(sans: &[String]) -> Result<(String, String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "homelab fleet CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("CA key")?;
    let ca_cert = ca.self_signed(&ca_key).context("sign the CA")?;
    let mut server = CertificateParams::new(sans.to_vec()).context("server certificate names")?;
    server
        .distinguished_name
        .push(DnType::CommonName, "homelab broker");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_key = KeyPair::generate().context("server key")?;
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .context("sign the server certificate")?;
    Ok((
        ca_cert.pem(),
        ca_key.serialize_pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
    ))
}

fn require_fleet(layout: &Layout) -> Result<()> {
    if !layout.control_secrets().exists() || !layout.tls_ca_cert().exists() {
        bail!(
            "this root has no fleet identity yet ({} or {} is missing): run `homelab tls init --name <host agents dial>` first",
            layout.control_secrets().display(),
            layout.tls_ca_cert().display()
        );
    }
    Ok(())
}

/// A new identity for `node`: its record is written, its secrets returned.
pub fn enroll(layout: &Layout, node: &Name) -> Result<AgentSecrets> {
    require_fleet(layout)?;
    let fleet = homelab_core::fleet::Fleet::load(layout)?.context("control.json vanished")?;
    let ca_pem = std::fs::read_to_string(layout.tls_ca_cert())
        .with_context(|| format!("read {}", layout.tls_ca_cert().display()))?;
    let password = identity::random_secret();
    let key = identity::generate_key();
    let box_key = homelab_core::sealbox::generate();
    let now = homelab_core::time::format(&chrono::Utc::now());
    let previous: Option<NodeRecord> = std::fs::read(layout.node_record(node))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let record = NodeRecord {
        node: node.clone(),
        password_hash: identity::hash_password(&password),
        mosquitto_hash: identity::mosquitto_hash(&password),
        public_key: identity::encode_public_key(&key.verifying_key()),
        box_key: homelab_core::sealbox::encode_public(&homelab_core::sealbox::BoxPublic::from(
            &box_key,
        )),
        created: previous.as_ref().map_or(now.clone(), |p| p.created.clone()),
        rotated: previous.map(|_| now),
    };
    fsutil::write_secret(&layout.node_record(node), &fsutil::json_bytes(&record)?)?;
    Ok(AgentSecrets {
        v: 1,
        node: node.clone(),
        username: node.to_string(),
        password,
        node_key: identity::encode_secret_key(&key),
        box_key: homelab_core::sealbox::encode_secret(&box_key),
        control_key: identity::encode_public_key(&fleet.public_key()),
        ca_pem,
    })
}

/// The command that starts the agent on `node` with these secrets.
pub fn join_command(
    layout: &Layout,
    secrets: &AgentSecrets,
    broker: Option<&str>,
) -> Result<String> {
    let url = match broker {
        Some(url) => url.to_string(),
        None => std::fs::read_to_string(broker_url_file(layout))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| format!("mqtts://<control host>:{MQTTS_PORT}")),
    };
    Ok(format!(
        "HOMELAB_ENROLL={} homelab agent --node {} --broker {url}",
        secrets.to_token(),
        secrets.node
    ))
}

pub fn node_add(layout: &Layout, node: &Name, broker: Option<&str>) -> Result<String> {
    if layout.node_record(node).exists() {
        bail!("{node} is already enrolled: `homelab node rotate {node}` gives it new secrets");
    }
    let secrets = enroll(layout, node)?;
    Ok(format!(
        "enrolled {node}. On {node}, run (once; the agent keeps its secrets in <root>/config/agent/{node}.json, mode 0600):\n\n  {}\n",
        join_command(layout, &secrets, broker)?
    ))
}

pub fn node_rotate(layout: &Layout, node: &Name, broker: Option<&str>) -> Result<String> {
    if !layout.node_record(node).exists() {
        bail!("{node} is not enrolled: `homelab node add {node}`");
    }
    let secrets = enroll(layout, node)?;
    Ok(format!(
        "{node} has new secrets; its old password and key no longer work. On {node}, run:\n\n  {}\n",
        join_command(layout, &secrets, broker)?
    ))
}

pub fn node_remove(layout: &Layout, node: &Name) -> Result<String> {
    let path = layout.node_record(node);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{node} is not enrolled")
        }
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    fsutil::sync_dir(&layout.nodes_dir())?;
    Ok(format!(
        "removed {node}: the broker refuses its next connect and the observer its events\n"
    ))
}

pub fn node_list(layout: &Layout) -> Result<String> {
    let records = homelab_core::fleet::read_records(&layout.nodes_dir())?;
    if records.is_empty() {
        return Ok("no node is enrolled\n".into());
    }
    let mut out = String::new();
    for node in records.keys() {
        out.push_str(&format!("{node}\n"));
    }
    Ok(out)
}

/// Every enrolled node's record, by name.
fn node_records(layout: &Layout) -> Result<Vec<NodeRecord>> {
    let names = homelab_core::fleet::read_records(&layout.nodes_dir())?;
    names
        .keys()
        .map(|node| {
            let path = layout.node_record(node);
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a node record", path.display()))
        })
        .collect()
}

/// Home Assistant's login to Mosquitto in fleet mode: it may read the
/// homelab's state and the nodes' status and agent state, and use its own
/// discovery prefix; nothing else. `@` keeps it apart from node names.
pub use homelab_core::acl::HA_USER;

/// Where Home Assistant's Mosquitto password is kept (made on first use).
pub fn ha_password_file(layout: &Layout) -> std::path::PathBuf {
    layout.ha_mqtt_password()
}

/// Home Assistant's Mosquitto password, made (random) the first time.
pub fn ha_password(layout: &Layout) -> Result<String> {
    let path = ha_password_file(layout);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => bail!(
            "{} is empty: remove it, and a new password is made",
            path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let password = identity::random_secret();
            fsutil::write_secret(&path, password.as_bytes())?;
            Ok(password)
        }
        Err(error) => Err(error).with_context(|| format!("read {}", path.display())),
    }
}

/// Mosquitto's `acl_file` for the control plane and `nodes`: `@control`
/// may do anything under the prefix and Home Assistant's discovery prefix
/// (`homeassistant/`, where the observer publishes its configs and hears
/// Home Assistant's status); a node may publish only its own
/// events, status and agent state, and read only its own commands, acks and
/// node config.
pub fn mosquitto_acl(topics: &Topics, nodes: &[Name]) -> String {
    homelab_core::acl::mosquitto_acl(topics, nodes)
}

/// Mosquitto's configuration for the fleet: no anonymous client, the
/// password and ACL files, TLS on `tls_listen` with the fleet's
/// certificate, plain MQTT on `plain_listen` (loopback, for the control
/// plane's own components).
pub fn mosquitto_conf(
    dir: &std::path::Path,
    tls_listen: std::net::SocketAddr,
    plain_listen: Option<std::net::SocketAddr>,
) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut out = format!(
        "# Written by `homelab mosquitto-config`: include it from mosquitto.conf\n\
         # (include_dir, or mosquitto -c). Run it again after `homelab node\n\
         # add|rotate|remove`, then reload Mosquitto (SIGHUP).\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         password_file {}\n\
         acl_file {}\n\n\
         listener {} {}\n\
         certfile {}\n\
         keyfile {}\n",
        path("passwords"),
        path("acl"),
        tls_listen.port(),
        tls_listen.ip(),
        path("server.pem"),
        path("server.key"),
    );
    if let Some(plain) = plain_listen {
        out += &format!("\nlistener {} {}\n", plain.port(), plain.ip());
    }
    out
}

/// `homelab mosquitto-config`: writes `homelab.conf`, `passwords`, `acl`
/// and the broker's certificate and key into `dir` (secrets mode 0600).
pub fn mosquitto_config(
    layout: &Layout,
    dir: &std::path::Path,
    topics: &Topics,
    tls_listen: std::net::SocketAddr,
    plain_listen: Option<std::net::SocketAddr>,
) -> Result<String> {
    require_fleet(layout)?;
    if let Some(plain) = plain_listen {
        if !plain.ip().is_loopback() {
            bail!(
                "plain MQTT ({plain}) would carry passwords in the clear: only a loopback address"
            );
        }
    }
    let control: ControlSecrets = serde_json::from_slice(
        &std::fs::read(layout.control_secrets())
            .with_context(|| format!("read {}", layout.control_secrets().display()))?,
    )
    .with_context(|| format!("parse {}", layout.control_secrets().display()))?;
    let records = node_records(layout)?;
    let mut passwords = format!(
        "{}:{}\n",
        identity::CONTROL_USER,
        identity::mosquitto_hash(&control.password)
    );
    for record in &records {
        passwords += &format!("{}:{}\n", record.node, record.mosquitto_hash);
    }
    passwords += &format!(
        "{HA_USER}:{}\n",
        identity::mosquitto_hash(&ha_password(layout)?)
    );
    let nodes: Vec<Name> = records.iter().map(|r| r.node.clone()).collect();
    let cert = std::fs::read(layout.tls_server_cert())
        .with_context(|| format!("read {}", layout.tls_server_cert().display()))?;
    let key = std::fs::read(layout.tls_server_key())
        .with_context(|| format!("read {}", layout.tls_server_key().display()))?;
    fsutil::write_secret(&dir.join("passwords"), passwords.as_bytes())?;
    fsutil::write_secret(&dir.join("server.key"), &key)?;
    fsutil::write_atomic_all(
        dir,
        &[
            (&dir.join("acl"), mosquitto_acl(topics, &nodes).as_bytes()),
            (&dir.join("server.pem"), &cert),
            (
                &dir.join("homelab.conf"),
                mosquitto_conf(dir, tls_listen, plain_listen).as_bytes(),
            ),
        ],
    )?;
    Ok(format!(
        "wrote {dir}/homelab.conf, passwords, acl, server.pem and server.key for @control and {} node(s).\n\
         Mosquitto reads them as its own user: `chown -R mosquitto {dir}`.\n\
         Start it with `mosquitto -c {dir}/homelab.conf` (or include that file), and point the\n\
         control plane at it: `homelab observer|supervisor|executor|ui --broker mqtts://<host>:{}`.\n\
         Home Assistant's MQTT integration logs in as {HA_USER} with the password in {}\n\
         (it may read the homelab's state and use homeassistant/#).\n",
        nodes.len(),
        tls_listen.port(),
        ha_password_file(layout).display(),
        dir = dir.display(),
    ))
}
