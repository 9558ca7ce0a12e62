//! What the front reads of MQTT packets, with rumqttd's own codec (3.1.1
//! and 5): a frame's bounds, a CONNECT's protocol level, a PUBLISH's topic,
//! QoS and packet id, and the replies the front makes itself (CONNACK with a
//! reason, PUBACK, SUBACK). Pure.

use bytes::BytesMut;
use rumqttd::protocol::Protocol;
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Packet, PubAck, PubAckReason, SubAck, SubscribeReasonCode,
};

/// The protocol a client speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// MQTT 3.1.1 (and 3.1).
    V4,
    V5,
}

/// Largest packet the front reads (rumqttd's own limit is set alike).
pub const MAX_PACKET: usize = 2 << 20;

/// The length of the first whole frame in `bytes`, if there is one; an
/// error for a frame that can never be valid.
pub fn frame(bytes: &[u8]) -> Result<Option<usize>, String> {
    match protocol::v4::check(bytes.iter(), MAX_PACKET) {
        Ok(header) => Ok(Some(header.frame_length())),
        Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(error) => Err(format!("{error:?}")),
    }
}

/// The protocol level a CONNECT frame asks for.
pub fn level(connect: &[u8]) -> Option<Level> {
    if connect.first()? >> 4 != 1 {
        return None;
    }
    // Fixed header, then the protocol name (length-prefixed), then level.
    let mut at = 1;
    while connect.get(at)? & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let name_len = u16::from_be_bytes([*connect.get(at)?, *connect.get(at + 1)?]) as usize;
    match connect.get(at + 2 + name_len)? {
        3 | 4 => Some(Level::V4),
        5 => Some(Level::V5),
        _ => None,
    }
}

/// Whether a client may send a packet of this type (the first byte's high
/// nibble): not the ones only a server sends (CONNACK, SUBACK, UNSUBACK,
/// PINGRESP), nor reserved ones, nor MQTT 5's AUTH (not supported).
pub fn from_client(kind: u8) -> bool {
    matches!(kind, 1 | 3..=8 | 10 | 12 | 14)
}

/// Decodes one whole frame of the types the front reads (CONNECT,
/// PUBLISH, PUBACK, SUBSCRIBE, SUBACK). Others are refused unread:
/// rumqttd 0.20's MQTT 5 decoder reaches `unreachable!()` on a CONNACK or
/// UNSUBACK with a body (the property test below found it).
pub fn decode(level: Level, frame: &[u8]) -> Result<Packet, String> {
    if !matches!(frame.first().map(|b| b >> 4), Some(1 | 3 | 4 | 8 | 9)) {
        return Err("a packet type the front does not read".into());
    }
    let mut buf = BytesMut::from(frame);
    let read = match level {
        Level::V4 => protocol::v4::V4.read_mut(&mut buf, MAX_PACKET),
        Level::V5 => protocol::v5::V5.read_mut(&mut buf, MAX_PACKET),
    };
    read.map_err(|e| format!("{e:?}"))
}

pub fn encode(level: Level, packet: Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let written = match level {
        Level::V4 => protocol::v4::V4.write(packet, &mut buf),
        Level::V5 => protocol::v5::V5.write(packet, &mut buf),
    };
    match written {
        Ok(_) => buf.to_vec(),
        Err(_) => Vec::new(),
    }
}

/// A PUBLISH frame's QoS and packet id (0 for QoS 0), which rumqttd's
/// decoded packet keeps to itself: the QoS is in the first byte, the id
/// right after the topic.
pub fn publish_qos_pkid(frame: &[u8]) -> Option<(u8, u16)> {
    let qos = (frame.first()? >> 1) & 0b11;
    if qos == 0 {
        return Some((0, 0));
    }
    let mut at = 1;
    while frame.get(at)? & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let topic_len = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]) as usize;
    let id = at + 2 + topic_len;
    Some((
        qos,
        u16::from_be_bytes([*frame.get(id)?, *frame.get(id + 1)?]),
    ))
}

/// Why the front refuses a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No login, an unknown user, a wrong password.
    BadLogin,
    /// Logged in, but not allowed this (another node's client id, a Last
    /// Will on another's topic, a node removed).
    NotAuthorized,
}

/// The CONNACK that says why: 3.1.1 return codes 4 and 5, MQTT 5 reason
/// codes 0x86 and 0x87.
pub fn connack_refused(level: Level, refusal: Refusal) -> Vec<u8> {
    let code = match refusal {
        Refusal::BadLogin => ConnectReturnCode::BadUserNamePassword,
        Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
    };
    encode(
        level,
        Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        ),
    )
}

/// The PUBACK for a refused publish: 3.1.1 has no reason (the client goes
/// on, as with Mosquitto); MQTT 5 says "not authorized".
pub fn puback_refused(level: Level, pkid: u16) -> Vec<u8> {
    let reason = match level {
        Level::V4 => PubAckReason::Success,
        Level::V5 => PubAckReason::NotAuthorized,
    };
    encode(level, Packet::PubAck(PubAck { pkid, reason }, None))
}

/// A SUBACK the front answers itself: every filter refused.
pub fn suback_refused(level: Level, pkid: u16, filters: usize) -> Vec<u8> {
    encode(
        level,
        Packet::SubAck(
            SubAck {
                pkid,
                return_codes: vec![refused_code(level); filters],
            },
            None,
        ),
    )
}

pub fn refused_code(level: Level) -> SubscribeReasonCode {
    match level {
        Level::V4 => SubscribeReasonCode::Failure,
        Level::V5 => SubscribeReasonCode::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Connect, Filter, Login, Publish, QoS, RetainForwardRule, Subscribe};

    fn connect(level: Level) -> Vec<u8> {
        encode(
            level,
            Packet::Connect(
                Connect {
                    keep_alive: 15,
                    client_id: "homelab-agent-piha".into(),
                    clean_session: false,
                },
                None,
                None,
                None,
                Some(Login {
                    username: "piha".into(),
                    password: "pw".into(),
                }),
            ),
        )
    }

    #[test]
    fn frames_levels_and_logins() {
        for level in [Level::V4, Level::V5] {
            let bytes = connect(level);
            assert_eq!(frame(&bytes), Ok(Some(bytes.len())));
            assert_eq!(frame(&bytes[..3]), Ok(None));
            assert_eq!(self::level(&bytes), Some(level));
            match decode(level, &bytes).unwrap() {
                Packet::Connect(c, _, _, _, Some(login)) => {
                    assert_eq!(
                        (c.client_id.as_str(), login.username.as_str()),
                        ("homelab-agent-piha", "piha")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(level(&[0x30, 0]), None, "not a CONNECT");
        assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_publish_says_its_qos_and_id() {
        let publish = |qos: u8| {
            // The codec's own publish is QoS 0 only: build the frame.
            let topic = b"homelab/events/piha";
            let mut out: Vec<u8> = vec![0x30u8 | (qos << 1), 0];
            out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            out.extend_from_slice(topic);
            if qos > 0 {
                out.extend_from_slice(&4242u16.to_be_bytes());
            }
            out.extend_from_slice(b"{}");
            out[1] = (out.len() - 2) as u8;
            out
        };
        assert_eq!(publish_qos_pkid(&publish(1)), Some((1, 4242)));
        assert_eq!(publish_qos_pkid(&publish(0)), Some((0, 0)));
        match decode(Level::V4, &publish(1)).unwrap() {
            Packet::Publish(p, _) => assert_eq!(&p.topic[..], b"homelab/events/piha"),
            other => panic!("{other:?}"),
        }
        let _ = Publish::new("t", "p", false);
    }

    #[test]
    fn refusals_say_why() {
        // 3.1.1: 0x20 0x02, session present 0, return code 4 or 5.
        assert_eq!(
            connack_refused(Level::V4, Refusal::BadLogin),
            vec![0x20, 2, 0, 4]
        );
        assert_eq!(
            connack_refused(Level::V4, Refusal::NotAuthorized),
            vec![0x20, 2, 0, 5]
        );
        let v5 = connack_refused(Level::V5, Refusal::NotAuthorized);
        assert_eq!((v5[0], v5[3]), (0x20, 0x87));
        assert_eq!(connack_refused(Level::V5, Refusal::BadLogin)[3], 0x86);
        let suback = suback_refused(Level::V4, 7, 2);
        assert_eq!(suback, vec![0x90, 4, 0, 7, 0x80, 0x80]);
        let sub = encode(
            Level::V4,
            Packet::Subscribe(
                Subscribe {
                    pkid: 9,
                    filters: vec![Filter {
                        path: "homelab/#".into(),
                        qos: QoS::AtLeastOnce,
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                    }],
                },
                None,
            ),
        );
        match decode(Level::V4, &sub).unwrap() {
            Packet::Subscribe(s, _) => {
                assert_eq!((s.pkid, s.filters[0].path.as_str()), (9, "homelab/#"))
            }
            other => panic!("{other:?}"),
        }
    }
}
