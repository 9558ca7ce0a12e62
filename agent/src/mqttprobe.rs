//! Whether an MQTT broker answers: a TCP connect, an MQTT 3.1.1 CONNECT and
//! its CONNACK, then DISCONNECT. A broker that refuses the probe's
//! (missing) credentials still answers; one that says it is unavailable,
//! does not answer in time, or is not there, does not.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An MQTT 3.1.1 CONNECT with a clean session, no credentials and
/// `keep_alive` seconds.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = Vec::with_capacity(12 + id.len());
    body.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    // Remaining length, variable-length encoded.
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// What a CONNACK says about the broker: `Ok` when it answers (accepted,
/// or refused for the probe's identity), `Err` with why not.
pub fn judge_connack(bytes: &[u8]) -> Result<&'static str, String> {
    match bytes {
        [0x20, 0x02, _, code] => match code {
            0 => Ok("accepted"),
            1 => Ok("answers (refused protocol 3.1.1)"),
            2 => Ok("answers (refused the client id)"),
            4 | 5 => Ok("answers (refused the probe's credentials)"),
            3 => Err("broker says it is unavailable (CONNACK 3)".into()),
            other => Err(format!("unknown CONNACK return code {other}")),
        },
        other => Err(format!("not an MQTT CONNACK: {other:02x?}")),
    }
}

/// Probes the broker at `address` (`host:port`) within `timeout`.
pub async fn probe(
    address: &str,
    client_id: &str,
    timeout: Duration,
) -> Result<&'static str, String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect to {address}: {e}"))?;
        stream
            .write_all(&connect_packet(client_id, 10))
            .await
            .map_err(|e| format!("send CONNECT to {address}: {e}"))?;
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .await
            .map_err(|e| format!("no CONNACK from {address}: {e}"))?;
        let verdict = judge_connack(&connack);
        let _ = stream.write_all(&[0xe0, 0x00]).await;
        verdict
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{address} did not answer within {} s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_bytes() {
        assert_eq!(
            connect_packet("p", 10),
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 1, b'p']
        );
        // A remaining length past 127 takes two bytes.
        let long = connect_packet(&"x".repeat(200), 10);
        assert_eq!(&long[..3], &[0x10, 0xd4, 0x01]);
        assert_eq!(long.len(), 3 + 212);
    }

    #[test]
    fn connack_verdicts() {
        let cases: &[(&[u8], Result<&str, &str>)] = &[
            (&[0x20, 2, 0, 0], Ok("accepted")),
            (
                &[0x20, 2, 0, 5],
                Ok("answers (refused the probe's credentials)"),
            ),
            (
                &[0x20, 2, 0, 4],
                Ok("answers (refused the probe's credentials)"),
            ),
            (
                &[0x20, 2, 0, 3],
                Err("broker says it is unavailable (CONNACK 3)"),
            ),
            (&[0x20, 2, 0, 9], Err("unknown CONNACK return code 9")),
            (b"HTTP", Err("not an MQTT CONNACK: [48, 54, 54, 50]")),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                judge_connack(bytes),
                want.map_err(String::from),
                "{bytes:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_real_broker_answers_and_a_closed_port_does_not() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        homelab_broker::start(&homelab_broker::Config::new(addr)).unwrap();
        let mut answered = Err(String::new());
        for _ in 0..50 {
            answered = probe(&addr.to_string(), "probe-test", Duration::from_secs(2)).await;
            if answered.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answered, Ok("accepted"));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let got = probe(&closed.to_string(), "probe-test", Duration::from_secs(2)).await;
        assert!(got.unwrap_err().contains("connect to"));
    }
}
