//! Events as the observer stored them, handed to the components that run
//! in the same process (`homelab up`): the supervisor and the executor
//! learn of an event once it is durably in the log, without two more
//! copies of it through the broker and without racing the append. A
//! receiver that falls more than [`CAPACITY`] events behind is told how
//! many it missed and goes to the log instead, as it does at start.

use std::sync::Arc;

use homelab_core::Event;

/// The sending side; components call `subscribe()` on it before they look
/// at the log, so nothing falls between the two.
pub type Feed = tokio::sync::broadcast::Sender<Arc<Event>>;

pub const CAPACITY: usize = 16 * 1024;

pub fn channel() -> Feed {
    tokio::sync::broadcast::channel(CAPACITY).0
}

pub type Receiver = tokio::sync::broadcast::Receiver<Arc<Event>>;

/// Some stored events went by unseen: read the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed;

/// The next stored event, or [`Missed`] when the receiver fell behind.
/// Never resolves without a feed (or once every sender is gone).
pub async fn next(feed: &mut Option<Receiver>) -> Result<Arc<Event>, Missed> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(receiver) = feed else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(event) => Ok(event),
        Err(RecvError::Lagged(_)) => Err(Missed),
        Err(RecvError::Closed) => {
            *feed = None;
            std::future::pending().await
        }
    }
}

/// The next stored event if one is waiting (None: none is).
pub fn try_next(feed: &mut Option<Receiver>) -> Option<Result<Arc<Event>, Missed>> {
    use tokio::sync::broadcast::error::TryRecvError;
    match feed.as_mut()?.try_recv() {
        Ok(event) => Some(Ok(event)),
        Err(TryRecvError::Lagged(_)) => Some(Err(Missed)),
        Err(TryRecvError::Empty | TryRecvError::Closed) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event::from_payload(
            format!(r#"{{"v":1,"id":"e{seq}","ts":"2026-11-23T10:00:00Z","node":"n1","seq":{seq},"source":"t","type":"x","severity":"info"}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_receiver_gets_each_stored_event_and_is_told_when_it_missed_some() {
        let feed = channel();
        let mut none: Option<Receiver> = None;
        assert!(try_next(&mut none).is_none());
        let mut rx = Some(feed.subscribe());
        assert!(try_next(&mut rx).is_none());
        feed.send(Arc::new(event(1))).unwrap();
        assert_eq!(next(&mut rx).await.unwrap().seq, 1);
        for seq in 0..=CAPACITY as u64 {
            feed.send(Arc::new(event(seq + 2))).unwrap();
        }
        assert_eq!(try_next(&mut rx).unwrap().unwrap_err(), Missed);
        // After the gap, the oldest still held.
        assert_eq!(next(&mut rx).await.unwrap().seq, 3);
    }
}
