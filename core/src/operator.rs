//! Named operators: who may decide, and how a request proves it is one.
//!
//! Each operator is a file `config/operators/<name>.json` (mode 0600):
//! an argon2id hash of the password (the page's login) and the SHA-256 of
//! an API token (`Authorization: Bearer hlo.<name>.<secret>`). Neither the
//! password nor the token is kept; `homelab operator add` prints them once.
//!
//! The operator token of earlier releases (`config/ui/token`) stays valid
//! as the operator [`ADMIN`]: its bearer and its session are what they
//! were, and the login form takes `admin` with the token as the password.
//!
//! A session cookie names its operator and carries a digest of the
//! operator's name and password hash under the server's secret (the admin
//! token), so it is checked against the operator's file on every request:
//! removing the operator, or a new password, ends its sessions at once and
//! nothing else has to be remembered.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::name::Name;
use crate::time::Timestamp;

/// The operator the single token of earlier releases stands for.
pub const ADMIN: &str = "admin";

/// An operator's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub v: u32,
    pub name: Name,
    /// argon2id PHC string.
    pub password: String,
    /// Hex SHA-256 of the API token's secret part.
    pub token_sha256: String,
    pub created: Timestamp,
}

/// What a new operator or a new password prints once.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub password: String,
    pub token: String,
}

/// Why an operator name is refused by `homelab operator add`.
pub fn check_new_name(raw: &str) -> Result<Name> {
    let name = Name::parse(raw).map_err(|e| anyhow::anyhow!("operator name {raw:?}: {e}"))?;
    if name.as_str() == ADMIN {
        anyhow::bail!(
            "\"admin\" is the operator token's name (config/ui/token); choose another name"
        );
    }
    Ok(name)
}

fn dir(layout: &Layout) -> PathBuf {
    layout.operators_dir()
}

fn file(layout: &Layout, name: &Name) -> PathBuf {
    layout.operator_file(name)
}

/// Random secret: 24 bytes, hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

/// The API token of `name` for `secret`.
pub fn token_for(name: &Name, secret: &str) -> String {
    format!("hlo.{name}.{secret}")
}

/// The operator a bearer token names and its secret part, if it has the
/// form `hlo.<name>.<secret>`.
pub fn parse_token(token: &str) -> Option<(Name, &str)> {
    let rest = token.strip_prefix("hlo.")?;
    let (name, secret) = rest.rsplit_once('.')?;
    let parsed = Name::parse(name).ok().filter(|n| n.as_str() == name)?;
    (!secret.is_empty() && secret.len() <= 128).then_some((parsed, secret))
}

/// The stored digest of a token's secret part.
pub fn token_digest(secret: &str) -> String {
    digest(&[b"homelab/v1/operator-token", secret.as_bytes()])
}

/// The session cookie's value for `operator`, under the server's `key`.
pub fn session_for(operator: &Operator, key: &str) -> String {
    let mac = digest(&[
        b"homelab/v1/operator-session",
        key.as_bytes(),
        operator.name.as_str().as_bytes(),
        operator.password.as_bytes(),
    ]);
    format!("o1.{}.{mac}", operator.name)
}

/// The operator a session cookie names, if it has the form of one.
pub fn session_name(cookie: &str) -> Option<Name> {
    let rest = cookie.strip_prefix("o1.")?;
    let (name, _) = rest.rsplit_once('.')?;
    Name::parse(name).ok().filter(|n| n.as_str() == name)
}

impl Operator {
    /// A new operator with fresh secrets (argon2: slow on purpose).
    pub fn new(name: Name, now: Timestamp) -> (Operator, Secrets) {
        let password = new_secret()[..20].to_string();
        let secret = new_secret();
        let operator = Operator {
            v: 1,
            password: crate::identity::hash_password(&password),
            token_sha256: token_digest(&secret),
            name: name.clone(),
            created: now,
        };
        let token = token_for(&name, &secret);
        (operator, Secrets { password, token })
    }

    /// Whether `password` is this operator's (argon2: slow on purpose).
    pub fn password_ok(&self, password: &str) -> bool {
        crate::identity::verify_password(password, &self.password)
    }

    /// Whether `secret` is this operator's token's (constant time).
    pub fn token_ok(&self, secret: &str) -> bool {
        same(&self.token_sha256, &token_digest(secret))
    }

    /// Whether `cookie` is a live session of this operator under `key`.
    pub fn session_ok(&self, cookie: &str, key: &str) -> bool {
        same(&session_for(self, key), cookie)
    }
}

/// Compares in time independent of where the first difference is.
pub fn same(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The operator `name`, if there is one. A file that does not parse is an
/// error (said, not taken as "no operator").
pub fn read(layout: &Layout, name: &Name) -> Result<Option<Operator>> {
    let path = file(layout, name);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let operator: Operator = serde_json::from_slice(&bytes)
                .with_context(|| format!("parse {}", path.display()))?;
            anyhow::ensure!(
                &operator.name == name,
                "{} names {}, not {name}",
                path.display(),
                operator.name
            );
            Ok(Some(operator))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Every operator, by name (the admin token is not among them).
pub fn list(layout: &Layout) -> Result<Vec<Operator>> {
    let dir = dir(layout);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut operators = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let Ok(name) = Name::parse(stem) else {
            continue;
        };
        if let Some(operator) = read(layout, &name)? {
            operators.push(operator);
        }
    }
    operators.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(operators)
}

/// Writes (creates or replaces) an operator's file, mode 0600.
pub fn write(layout: &Layout, operator: &Operator) -> Result<()> {
    let bytes = crate::fsutil::json_bytes(operator)?;
    crate::fsutil::write_secret(&file(layout, &operator.name), &bytes)
}

/// Removes an operator; whether there was one.
pub fn remove(layout: &Layout, name: &Name) -> Result<bool> {
    let path = file(layout, name);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            crate::fsutil::sync_dir(&dir(layout))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-07T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn tokens_name_their_operator() {
        let ann = Name::parse("ann").unwrap();
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("hlo.ann.abc123", Some(("ann", "abc123"))),
            ("hlo.ann.b.abc", Some(("ann.b", "abc"))),
            ("hlo.ann.", None),
            ("hlo..abc", None),
            ("hlo.Ann.abc", None),
            ("hlo.../x.abc", None),
            ("ann.abc", None),
            ("", None),
        ];
        for (token, want) in cases {
            let got = parse_token(token);
            let got = got.as_ref().map(|(n, s)| (n.as_str(), *s));
            assert_eq!(got, *want, "{token:?}");
        }
        assert_eq!(
            parse_token(&token_for(&ann, "s3")).map(|(n, _)| n),
            Some(ann)
        );
    }

    #[test]
    fn sessions_end_with_a_new_password_or_key() {
        let (ann, _) = Operator::new(Name::parse("ann").unwrap(), now());
        let cookie = session_for(&ann, "key");
        assert!(ann.session_ok(&cookie, "key"));
        assert_eq!(session_name(&cookie).unwrap().as_str(), "ann");
        assert!(!ann.session_ok(&cookie, "other key"));
        let (renewed, _) = Operator::new(ann.name.clone(), now());
        assert!(!renewed.session_ok(&cookie, "key"), "new password");
        let (bob, _) = Operator::new(Name::parse("bob").unwrap(), now());
        let forged = cookie.replace("o1.ann.", "o1.bob.");
        assert!(!bob.session_ok(&forged, "key"), "another's digest");
        for bad in ["", "o1.", "o1.ann", "o1.../x.ff", "o1.ANN.ff"] {
            assert_eq!(session_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn secrets_check_and_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(list(&layout).unwrap(), vec![]);
        let (ann, secrets) = Operator::new(check_new_name("Ann").unwrap(), now());
        assert!(ann.password_ok(&secrets.password));
        assert!(!ann.password_ok("wrong"));
        let (name, secret) = parse_token(&secrets.token).unwrap();
        assert_eq!(name, ann.name);
        assert!(ann.token_ok(secret));
        assert!(!ann.token_ok("wrong"));
        write(&layout, &ann).unwrap();
        let path = dir.path().join("config/operators/ann.json");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secrets.password) && !text.contains(secret));
        assert_eq!(list(&layout).unwrap(), vec![ann.clone()]);
        assert!(remove(&layout, &ann.name).unwrap());
        assert!(!remove(&layout, &ann.name).unwrap());
        assert_eq!(read(&layout, &ann.name).unwrap(), None);
    }

    proptest::proptest! {
        /// Tokens and cookies come from outside: any text is answered, and
        /// a name taken from one is a valid name, as written.
        #[test]
        fn any_token_or_cookie_is_answered_safely(raw in "\\PC{0,200}") {
            for name in [parse_token(&raw).map(|(n, _)| n), session_name(&raw)].into_iter().flatten() {
                proptest::prop_assert!(raw.contains(name.as_str()));
                proptest::prop_assert!(!name.as_str().contains('/'));
            }
        }
    }

    #[test]
    fn new_names_are_checked() {
        for (raw, ok) in [
            ("ann", true),
            ("admin", false),
            ("../x", false),
            ("", false),
        ] {
            assert_eq!(check_new_name(raw).is_ok(), ok, "{raw:?}");
        }
    }
}
