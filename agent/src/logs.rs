//! A container's logs sent on request, bounded in lines, bytes and time.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use homelab_mqtt::Mqtt;
use tracing::{debug, info, warn};

use crate::Agent;
use homelab_core::identity;

/// Answers a container logs request ([`homelab_core::logs`]): checked as
/// a command is (sealed for this node and signed by the control plane in
/// fleet mode), then the container's lines as replies, sealed to the
/// request's own key. Nothing of it is stored.
pub(crate) async fn serve_logs(agent: Arc<Agent>, mqtt: Mqtt, payload: Vec<u8>) {
    use homelab_core::logs::{self, Reply};
    if payload.len() > logs::MAX_REQUEST_BYTES {
        warn!(bytes = payload.len(), "logs request refused: too large");
        return;
    }
    let Some(plain) = agent.sealed_by_control(&payload, identity::Context::Logs, "logs") else {
        return;
    };
    let request: logs::Request = match serde_json::from_slice(&plain) {
        Ok(request) => request,
        Err(error) => {
            warn!(%error, "logs request refused: not a logs request");
            return;
        }
    };
    let node = agent.config.node.clone();
    if let Err(error) = request.check(&node, Utc::now(), agent.keys.is_some()) {
        warn!(id = %request.id, %error, "logs request refused");
        metrics::counter!("homelab_agent_refused_total", "what" => "logs", "reason" => "bad_request")
            .increment(1);
        return;
    }
    let reply_key = match (&agent.keys, &request.reply_key) {
        (Some(_), Some(key)) => match homelab_core::sealbox::decode_public(key) {
            Ok(key) => Some(key),
            Err(error) => {
                warn!(id = %request.id, %error, "logs request refused: bad reply key");
                return;
            }
        },
        _ => None,
    };
    let topic = agent.config.topics.logs_reply(&node);
    let mut seq = 0u64;
    let send =
        |lines: Vec<logs::Line>, dropped: u64, done: bool, error: Option<String>, seq: u64| {
            let reply = Reply {
                v: 1,
                id: request.id.clone(),
                node: node.clone(),
                seq,
                lines,
                dropped,
                done,
                error,
            };
            let mut payload = serde_json::to_vec(&reply).expect("a reply serializes");
            if let Some(keys) = &agent.keys {
                payload = identity::seal(&payload, identity::Context::Logs, &keys.node);
            }
            if let Some(key) = &reply_key {
                payload = homelab_core::sealbox::seal(&payload, &node, key);
            }
            let (mqtt, topic) = (mqtt.clone(), topic.clone());
            async move {
                if let Err(error) = mqtt.publish(&topic, payload, false).await {
                    debug!(%error, "logs reply not sent");
                }
            }
        };
    // At most a few at once; the counter goes down however this ends.
    struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let busy = agent.log_streams.fetch_add(1, Ordering::SeqCst);
    let _slot = Slot(&agent.log_streams);
    if busy >= logs::MAX_STREAMS {
        let error = format!("busy: {busy} log streams are being sent; try again shortly");
        send(Vec::new(), 0, true, Some(error), 0).await;
        return;
    }
    let Some(runtime) = agent.runtime() else {
        send(
            Vec::new(),
            0,
            true,
            Some("Docker is not connected".into()),
            0,
        )
        .await;
        return;
    };
    // Only a container this agent reports: not one labelled for another
    // node, not any name at all.
    let id = match runtime.list().await {
        Ok(list) => list
            .into_iter()
            .find(|c| c.name == request.container)
            .map(|c| c.id),
        Err(error) => {
            send(Vec::new(), 0, true, Some(format!("{error:#}")), 0).await;
            return;
        }
    };
    let Some(id) = id else {
        let error = format!("no container {} on {node}", request.container);
        send(Vec::new(), 0, true, Some(error), 0).await;
        return;
    };
    info!(id = %request.id, container = %request.container, lines = request.lines, follow_secs = request.follow_secs, "sending container logs");
    let follow = request.follow_secs > 0;
    let mut stream = runtime.logs(&id, request.lines, follow, request.since);
    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(request.follow_secs as u64);
    let mut chunker = logs::Chunker::default();
    let mut rate = logs::Rate::default();
    let (mut taken, mut dropped) = (0u64, 0u64);
    let mut error = None;
    // While following, what is gathered goes out twice a second; without,
    // Docker is given 10 s between lines.
    let tick = match follow {
        true => Duration::from_millis(500),
        false => Duration::from_secs(10),
    };
    let mut wake = tokio::time::Instant::now() + tick;
    loop {
        let wait = tokio::time::sleep_until(match follow {
            true => wake.min(until),
            false => wake,
        });
        let next = tokio::select! {
            next = stream.next() => next,
            _ = wait => {
                if follow && tokio::time::Instant::now() >= until {
                    break;
                }
                if !follow {
                    error = Some("Docker sent nothing for 10 s".to_string());
                    break;
                }
                if !chunker.is_empty() {
                    send(chunker.take(), dropped, false, None, seq).await;
                    seq += 1;
                }
                wake = tokio::time::Instant::now() + tick;
                continue;
            }
        };
        if !follow {
            wake = tokio::time::Instant::now() + tick;
        }
        match next {
            None => break,
            Some(Err(e)) => {
                error = Some(format!("{e:#}"));
                break;
            }
            Some(Ok(line)) => {
                taken += 1;
                // The asked-for tail goes out whole; what follows, at the rate.
                let over_tail = taken > request.lines as u64;
                if over_tail && !rate.allow(started.elapsed().as_millis() as u64) {
                    dropped += 1;
                    continue;
                }
                if let Some(full) = chunker.push(line) {
                    send(full, dropped, false, None, seq).await;
                    seq += 1;
                }
            }
        }
    }
    send(chunker.take(), dropped, true, error, seq).await;
}
