//! The MQTT connection every component uses, against the real broker: a
//! subscription is never lost, whatever else is queued.

use std::time::Duration;

use homelab_mqtt::Incoming;
use homelab_tests::*;

/// The client's request queue is full of publishes when the CONNACK
/// arrives (a component republishing hundreds of retained messages at
/// start). Its subscription must still be made and confirmed, and
/// `Connected` reported only then: a lost subscribe made the observer deaf
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_request_queue_never_loses_the_subscription() {
    init_logs();
    let addr = free_addr();
    let mut config = homelab_mqtt::Config::new(&addr.to_string(), "deaf-test");
    config.subscriptions = vec!["wanted/#".into()];
    let (mqtt, mut incoming) = homelab_mqtt::connect(config).unwrap();
    // No broker yet: these pile up in the request queue.
    let flood = {
        let mqtt = mqtt.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                mqtt.publish(&format!("retained/{i}"), vec![b'x'; 200], true)
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !flood.is_finished(),
        "the queue is full before the broker is up"
    );
    homelab_broker::start(&homelab_broker::Config::new(addr)).unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(Incoming::Connected { .. }) = incoming.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "never connected and subscribed");
    // Subscribed when it said so: a message published now arrives.
    let probe = Probe::connect(addr, &[]).await;
    probe.publish("wanted/1", "hello").await;
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match incoming.recv().await {
                Some(Incoming::Message(m)) if m.topic == "wanted/1" => return m.payload,
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    })
    .await
    .expect("the subscription was lost: nothing arrives");
    assert_eq!(&got[..], b"hello");
    flood.await.unwrap();
    mqtt.close().await;
}
