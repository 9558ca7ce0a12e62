//! The outbox sent to the broker: what the send window allows, resent after every CONNACK and when the observer asks.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use homelab_mqtt::Mqtt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Agent;
use homelab_core::identity;

/// Sends outbox events in `seq` order while connected.
pub(crate) async fn publish_loop(
    agent: Arc<Agent>,
    mqtt: Mqtt,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let topic = agent.config.topics.events(&agent.config.node);
    loop {
        // Events go out as stored, a batch per read of the outbox, without
        // parsing them again.
        'send: while connected.load(Ordering::SeqCst) {
            let (epoch, batch) = match agent.outbox.next_batch(256) {
                Ok((_, batch)) if batch.is_empty() => break,
                Ok(found) => found,
                Err(error) => {
                    warn!(error = format!("{error:#}"), "outbox unreadable");
                    break;
                }
            };
            for (seq, payload) in batch {
                // Fleet mode: signed by this node's key as it leaves.
                let payload = match &agent.keys {
                    Some(keys) => identity::seal(&payload, identity::Context::Event, &keys.node),
                    None => payload,
                };
                if let Err(error) = mqtt.publish(&topic, payload, false).await {
                    warn!(%error, "publish failed");
                    break 'send;
                }
                agent.outbox.mark_sent_in(epoch, seq);
            }
        }
        // The resend deadline is an absolute instant kept by the window:
        // waking up to send new events never postpones it.
        let resend_after = agent.config.resend_after;
        let deadline = agent.outbox.deadline(resend_after);
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = agent.outbox.wait() => {}
            _ = timer => {
                if agent.outbox.on_timer(resend_after) {
                    info!(acked = agent.outbox.acked(), "sending again what the observer has not acknowledged (acks stalled, or a repeated watermark was owed an answer)");
                }
            }
        }
    }
}
