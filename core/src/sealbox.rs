//! Commands for their node's eyes only.
//!
//! A node's login lets it subscribe to any topic on a broker without
//! per-topic ACLs (rumqttd 0.20), so in fleet mode the executor seals each
//! command for the one node it is for: an ephemeral X25519 key agreed with
//! the node's box key (made by `homelab node add`), HKDF-SHA256 to a
//! ChaCha20-Poly1305 key and nonce, the node's name as associated data. The
//! node opens it with its secret box key, then checks the control plane's
//! signature inside as before. Another node, or anyone on the bus, sees
//! only `{"v":1,"to":"<node>","box":"<base64url>"}`.
//!
//! The ephemeral key is new for every message, so the derived key and
//! nonce never repeat.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use crate::name::Name;

pub use x25519_dalek::{PublicKey as BoxPublic, StaticSecret as BoxSecret};

const INFO: &[u8] = b"homelab/v1/box\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    #[error("not sealed for this node")]
    NotSealed,
    #[error("sealed for {0}, not for this node")]
    OtherNode(String),
    #[error("does not open with this node's key")]
    Broken,
}

impl BoxError {
    /// The reason counted in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            BoxError::NotSealed => "not_sealed",
            BoxError::OtherNode(_) => "other_node",
            BoxError::Broken => "bad_box",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    v: u32,
    to: Name,
    #[serde(rename = "box")]
    sealed: String,
}

/// A new random box key.
pub fn generate() -> BoxSecret {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    BoxSecret::from(bytes)
}

pub fn encode_secret(key: &BoxSecret) -> String {
    STANDARD.encode(key.to_bytes())
}

pub fn encode_public(key: &BoxPublic) -> String {
    STANDARD.encode(key.as_bytes())
}

fn key_bytes(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "an X25519 key is 32 bytes".to_string())
}

pub fn decode_secret(text: &str) -> Result<BoxSecret, String> {
    key_bytes(text).map(BoxSecret::from)
}

pub fn decode_public(text: &str) -> Result<BoxPublic, String> {
    key_bytes(text).map(BoxPublic::from)
}

/// The cipher and nonce for one message, from the agreed secret and both
/// public keys.
fn cipher(
    shared: &[u8; 32],
    ephemeral: &BoxPublic,
    recipient: &BoxPublic,
) -> (ChaCha20Poly1305, Nonce) {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared);
    let mut okm = [0u8; 44];
    hkdf.expand(INFO, &mut okm)
        .expect("44 bytes is a valid HKDF-SHA256 length");
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&okm[..32]));
    (cipher, *Nonce::from_slice(&okm[32..]))
}

fn aad(to: &Name) -> Vec<u8> {
    [INFO, to.as_str().as_bytes()].concat()
}

/// Seals `plain` for node `to`, whose box key is `recipient`.
pub fn seal(plain: &[u8], to: &Name, recipient: &BoxPublic) -> Vec<u8> {
    let ephemeral = generate();
    let ephemeral_public = BoxPublic::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(recipient);
    let (cipher, nonce) = cipher(shared.as_bytes(), &ephemeral_public, recipient);
    let aad = aad(to);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .expect("ChaCha20-Poly1305 seals any length that fits in memory");
    let mut bytes = Vec::with_capacity(32 + sealed.len());
    bytes.extend_from_slice(ephemeral_public.as_bytes());
    bytes.extend_from_slice(&sealed);
    serde_json::to_vec(&Sealed {
        v: 1,
        to: to.clone(),
        sealed: URL_SAFE_NO_PAD.encode(bytes),
    })
    .expect("a sealed box serializes")
}

/// Opens a box sealed for node `me` with its secret key.
pub fn open(payload: &[u8], me: &Name, secret: &BoxSecret) -> Result<Vec<u8>, BoxError> {
    let sealed: Sealed = serde_json::from_slice(payload).map_err(|_| BoxError::NotSealed)?;
    if sealed.v != 1 {
        return Err(BoxError::NotSealed);
    }
    if &sealed.to != me {
        return Err(BoxError::OtherNode(sealed.to.to_string()));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(sealed.sealed.as_bytes())
        .map_err(|_| BoxError::Broken)?;
    if bytes.len() < 32 + 16 {
        return Err(BoxError::Broken);
    }
    let ephemeral: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let ephemeral = BoxPublic::from(ephemeral);
    let shared = secret.diffie_hellman(&ephemeral);
    // A low-order point agrees on a key anyone knows.
    if !shared.was_contributory() {
        return Err(BoxError::Broken);
    }
    let (cipher, nonce) = cipher(shared.as_bytes(), &ephemeral, &BoxPublic::from(secret));
    let aad = aad(me);
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &bytes[32..],
                aad: &aad,
            },
        )
        .map_err(|_| BoxError::Broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn a_box_opens_for_its_node_only() {
        let piha = generate();
        let edge = generate();
        let plain = br#"{"v":1,"id":"c1","node":"piha","sig":"x"}"#;
        let sealed = seal(plain, &n("piha"), &BoxPublic::from(&piha));
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(!text.contains("c1"), "the command is not readable: {text}");
        assert!(text.starts_with(r#"{"v":1,"to":"piha","box":""#), "{text}");
        assert_eq!(open(&sealed, &n("piha"), &piha).unwrap(), plain);
        // (payload, opener, key, expected)
        let relabelled = text
            .replace(r#""to":"piha""#, r#""to":"edge""#)
            .into_bytes();
        let mut flipped: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        let mut raw = URL_SAFE_NO_PAD
            .decode(flipped["box"].as_str().unwrap())
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        flipped["box"] = URL_SAFE_NO_PAD.encode(&raw).into();
        let flipped = serde_json::to_vec(&flipped).unwrap();
        let low_order = serde_json::to_vec(&serde_json::json!({
            "v": 1, "to": "piha", "box": URL_SAFE_NO_PAD.encode([0u8; 64]),
        }))
        .unwrap();
        let cases: Vec<(Vec<u8>, &str, &BoxSecret, BoxError)> = vec![
            (
                sealed.clone(),
                "edge",
                &edge,
                BoxError::OtherNode("piha".into()),
            ),
            // Relabelled for edge: edge's key does not open it.
            (relabelled, "edge", &edge, BoxError::Broken),
            (flipped, "piha", &piha, BoxError::Broken),
            (low_order, "piha", &piha, BoxError::Broken),
            (plain.to_vec(), "piha", &piha, BoxError::NotSealed),
            (b"not json".to_vec(), "piha", &piha, BoxError::NotSealed),
        ];
        for (payload, me, key, expected) in cases {
            assert_eq!(
                open(&payload, &n(me), key),
                Err(expected.clone()),
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let key = generate();
        let public = BoxPublic::from(&key);
        let back = decode_secret(&encode_secret(&key)).unwrap();
        assert_eq!(BoxPublic::from(&back), public);
        assert_eq!(decode_public(&encode_public(&public)).unwrap(), public);
        assert!(decode_public("AAAA").is_err());
        assert!(decode_secret("not base64!").is_err());
    }

    proptest::proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let key = generate();
            let _ = open(&bytes, &n("piha"), &key);
        }
    }
}
