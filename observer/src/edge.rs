//! The edge: events from the bus checked before anything else sees them
//! (their signatures in fleet mode, their fields, their topic's node).

use std::collections::BTreeMap;

use homelab_core::{identity, Event, EventError, Name};
use homelab_mqtt::Message;
use tracing::warn;

pub(crate) fn reject(topic: &str, reason: &'static str, error: &dyn std::fmt::Display) {
    warn!(topic, reason, %error, "event rejected");
    metrics::counter!("homelab_events_rejected_total", "reason" => reason).increment(1);
}

/// Below this many signed events a batch is checked on one core.
const PARALLEL_FROM: usize = 64;

/// The payloads of a batch's event messages as they are to be read: in
/// open mode as they came; in fleet mode without their signatures, once
/// those of the topic's node are checked (the bus does not say who
/// published), all of a batch at once ([`identity::open_many`]) and split
/// over the cores. `None` for one that is refused (counted).
pub(crate) fn open_events<'a>(
    arrived: &'a [(Result<Name, homelab_core::NameError>, Message)],
    enrolled: Option<&BTreeMap<Name, homelab_core::fleet::Enrolled>>,
) -> Vec<Option<std::borrow::Cow<'a, [u8]>>> {
    use std::borrow::Cow;
    let Some(enrolled) = enrolled else {
        return arrived
            .iter()
            .map(|(_, m)| Some(Cow::Borrowed(&m.payload[..])))
            .collect();
    };
    // The key of each one's topic node; unknown nodes are refused here.
    let keyed: Vec<Option<(&[u8], &identity::PublicKey)>> = arrived
        .iter()
        .map(|(node, message)| {
            let node = match node {
                Ok(node) => node,
                Err(error) => {
                    reject(&message.topic, "bad_name", error);
                    return None;
                }
            };
            match enrolled.get(node) {
                Some(enrolled) => Some((&message.payload[..], &enrolled.public_key)),
                None => {
                    reject(
                        &message.topic,
                        "unknown_node",
                        &"no enrolled node of that name",
                    );
                    None
                }
            }
        })
        .collect();
    let items: Vec<(&[u8], &identity::PublicKey)> = keyed.iter().flatten().copied().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let checked: Vec<Result<Vec<u8>, identity::SigError>> =
        if items.len() >= PARALLEL_FROM && cores > 1 {
            let chunk = items.len().div_ceil(cores);
            std::thread::scope(|scope| {
                let parts: Vec<_> = items
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || identity::open_many(part, identity::Context::Event))
                    })
                    .collect();
                parts
                    .into_iter()
                    .flat_map(|p| p.join().expect("signature check"))
                    .collect()
            })
        } else {
            identity::open_many(&items, identity::Context::Event)
        };
    let mut checked = checked.into_iter();
    arrived
        .iter()
        .zip(keyed)
        .map(|((_, message), keyed)| {
            keyed?;
            match checked.next().expect("one answer per keyed payload") {
                Ok(unsigned) => Some(Cow::Owned(unsigned)),
                Err(error) => {
                    reject(&message.topic, error.reason(), &error);
                    None
                }
            }
        })
        .collect()
}

/// An event from the bus, checked: its topic's node, its fields (`payload`,
/// the message as [`open_events`] gave it), and that it names the topic's
/// node.
pub(crate) fn validate(
    node: &Result<Name, homelab_core::NameError>,
    message: &Message,
    payload: std::borrow::Cow<'_, [u8]>,
) -> Option<Event> {
    let topic_node = match node {
        Ok(node) => node.clone(),
        Err(error) => {
            reject(&message.topic, "bad_name", &error);
            return None;
        }
    };
    let event = match Event::from_payload(&payload) {
        Ok(event) => event,
        Err(error) => {
            reject(&message.topic, error.reason(), &error);
            return None;
        }
    };
    if event.node != topic_node {
        let error = EventError::NodeMismatch {
            event: event.node.to_string(),
            topic: topic_node.to_string(),
        };
        reject(&message.topic, error.reason(), &error);
        return None;
    }
    Some(event)
}
