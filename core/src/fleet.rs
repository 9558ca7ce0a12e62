//! The fleet's identities as the control host keeps them under `config/`:
//! its own secrets (`control.json`) and one record per enrolled node
//! (`nodes/<node>.json`). With no `control.json` the root is in open mode:
//! one machine, anonymous clients on loopback, nothing signed.
//!
//! Node records are read again when the `nodes/` folder changes (checked at
//! most once a second), so `homelab node remove` takes effect at once in a
//! running control plane: the next connect is refused and the node's next
//! event is not stored.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fsutil::FileId;
use crate::identity::{self, ControlSecrets, NodeRecord, PublicKey, SecretKey};
use crate::layout::Layout;
use crate::name::Name;

/// The control plane's identity and the enrolled nodes.
#[derive(Clone)]
pub struct Fleet {
    control: Arc<Control>,
    nodes: Arc<Mutex<Nodes>>,
}

struct Control {
    signing_key: SecretKey,
    password: String,
    password_hash: String,
}

#[derive(Clone)]
pub struct Enrolled {
    pub password_hash: String,
    pub public_key: PublicKey,
    /// Commands for the node are sealed to this key.
    pub box_key: crate::sealbox::BoxPublic,
}

struct Nodes {
    layout: Layout,
    seen: Option<FileId>,
    checked: Option<Instant>,
    records: Arc<BTreeMap<Name, Enrolled>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

const RECHECK: Duration = Duration::from_millis(250);

impl Fleet {
    /// The fleet of `layout`'s root; `None` in open mode (no
    /// `config/control.json`).
    pub fn load(layout: &Layout) -> Result<Option<Fleet>> {
        let path = layout.control_secrets();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let secrets: ControlSecrets = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not the control plane's secrets", path.display()))?;
        let signing_key = identity::decode_secret_key(&secrets.signing_key)
            .map_err(|e| anyhow::anyhow!("{}: signing_key: {e}", path.display()))?;
        let fleet = Fleet {
            control: Arc::new(Control {
                signing_key,
                password: secrets.password,
                password_hash: secrets.password_hash,
            }),
            nodes: Arc::new(Mutex::new(Nodes {
                layout: layout.clone(),
                seen: None,
                checked: None,
                records: Arc::new(BTreeMap::new()),
            })),
        };
        fleet.nodes.lock().expect("fleet lock").reload(true)?;
        Ok(Some(fleet))
    }

    pub fn signing_key(&self) -> &SecretKey {
        &self.control.signing_key
    }

    pub fn public_key(&self) -> PublicKey {
        self.control.signing_key.verifying_key()
    }

    /// The broker user and password of the control plane's own clients.
    pub fn control_credentials(&self) -> (String, String) {
        (
            identity::CONTROL_USER.to_string(),
            self.control.password.clone(),
        )
    }

    /// The enrolled nodes as of now (the folder is read again when it
    /// changed, at most once a second).
    pub fn nodes(&self) -> Arc<BTreeMap<Name, Enrolled>> {
        let mut nodes = self.nodes.lock().expect("fleet lock");
        if let Err(error) = nodes.reload(false) {
            tracing::warn!(
                error = format!("{error:#}"),
                "node records not read again; keeping the last ones"
            );
        }
        nodes.records.clone()
    }

    /// A node's record; a node not known yet makes the folder be looked
    /// at again at once (a stat), so a node just added can log in.
    pub fn node(&self, node: &Name) -> Option<Enrolled> {
        if let Some(enrolled) = self.nodes().get(node) {
            return Some(enrolled.clone());
        }
        let mut nodes = self.nodes.lock().expect("fleet lock");
        nodes.checked = None;
        if let Err(error) = nodes.reload(false) {
            tracing::warn!(
                error = format!("{error:#}"),
                "node records not read again; keeping the last ones"
            );
        }
        nodes.records.get(node).cloned()
    }

    /// An event payload from the bus for `node`'s topic, checked against
    /// that node's key; returns the unsigned JSON, or the reason it is
    /// refused (`unknown_node`, `unsigned`, `bad_signature`).
    pub fn open_event(&self, node: &Name, payload: &[u8]) -> Result<Vec<u8>, &'static str> {
        let enrolled = self.node(node).ok_or("unknown_node")?;
        identity::open(payload, identity::Context::Event, &enrolled.public_key)
            .map_err(|e| e.reason())
    }

    /// Whether `user` with `password` may connect: the control plane's
    /// user or an enrolled node. Slow on purpose (argon2): call it off the
    /// async workers.
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        if user == identity::CONTROL_USER {
            return identity::verify_password(password, &self.control.password_hash);
        }
        if user == crate::acl::HA_USER {
            // Home Assistant's password, kept in the clear for its setup
            // form (`homelab mosquitto-config` and `up` make it once).
            let path = self
                .nodes
                .lock()
                .expect("fleet lock")
                .layout
                .ha_mqtt_password();
            return std::fs::read_to_string(path).is_ok_and(|stored| {
                let (a, b) = (stored.trim().as_bytes(), password.as_bytes());
                a.len() == b.len()
                    && !a.is_empty()
                    && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            });
        }
        let Ok(node) = Name::parse(user) else {
            return false;
        };
        match self.node(&node) {
            Some(enrolled) => identity::verify_password(password, &enrolled.password_hash),
            None => false,
        }
    }
}

impl Nodes {
    fn reload(&mut self, force: bool) -> Result<()> {
        let now = Instant::now();
        if !force
            && self
                .checked
                .is_some_and(|at| now.duration_since(at) < RECHECK)
        {
            return Ok(());
        }
        self.checked = Some(now);
        let dir = self.layout.nodes_dir();
        let id = match std::fs::metadata(&dir) {
            Ok(meta) => Some(FileId::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("stat {}", dir.display())),
        };
        if !force && id == self.seen {
            return Ok(());
        }
        self.records = Arc::new(read_records(&dir)?);
        self.seen = id;
        Ok(())
    }
}

/// Every `<node>.json` in `dir`; a file that does not parse is an error
/// (never read as "no such node").
pub fn read_records(dir: &Path) -> Result<BTreeMap<Name, Enrolled>> {
    let mut records = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        let record: NodeRecord = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        )
        .with_context(|| format!("{} is not a node record", path.display()))?;
        anyhow::ensure!(
            record.node.as_str() == stem,
            "{} holds the record of {}",
            path.display(),
            record.node
        );
        let public_key = identity::decode_public_key(&record.public_key)
            .map_err(|e| anyhow::anyhow!("{}: public_key: {e}", path.display()))?;
        let box_key = crate::sealbox::decode_public(&record.box_key)
            .map_err(|e| anyhow::anyhow!("{}: box_key: {e}", path.display()))?;
        records.insert(
            record.node,
            Enrolled {
                password_hash: record.password_hash,
                public_key,
                box_key,
            },
        );
    }
    Ok(records)
}
