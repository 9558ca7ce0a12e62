//! The MQTT connection every component uses, against the real broker: a
//! subscription is never lost, whatever else is queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    let mut config = homelab_mqtt::Config::new(addr.to_string(), "deaf-test");
    config.subscriptions = vec!["wanted/#".into()];
    let (mqtt, mut incoming) = homelab_mqtt::connect(config).unwrap();
    // No broker yet: these pile up in the request queue (64 requests: the
    // 65th publish waits), which nothing drains until a connection is up.
    let queued = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (mqtt, queued) = (mqtt.clone(), queued.clone());
        tokio::spawn(async move {
            for i in 0..500 {
                mqtt.publish(&format!("retained/{i}"), vec![b'x'; 200], true)
                    .await
                    .unwrap();
                queued.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while queued.load(Ordering::SeqCst) < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never filled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

/// The caller stops reading what it receives while it publishes (the
/// observer publishing watermarks while 100 agents replay at once). Its
/// publishes must still go out, and nothing it receives may be lost: a
/// connection task that waited for the caller to read stopped sending, the
/// caller waited for room to publish, and both stood still until the
/// broker dropped the connection for a missed keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_publishes_instead_of_reading_never_deadlocks() {
    init_logs();
    let addr = free_addr();
    homelab_broker::start(&homelab_broker::Config::new(addr)).unwrap();
    let mut config = homelab_mqtt::Config::new(addr.to_string(), "busy-test");
    config.subscriptions = vec!["flood/#".into()];
    config.incoming_capacity = 16;
    let (mqtt, mut incoming) = homelab_mqtt::connect(config).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !matches!(incoming.recv().await, Some(Incoming::Connected { .. })) {}
    })
    .await
    .expect("connected and subscribed");
    let flood = Probe::connect(addr, &[]).await;
    let n = 2000;
    for i in 0..n {
        flood.publish("flood/x", i.to_string()).await;
    }
    // Not reading `incoming`: publish far more than the request queue holds.
    tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0..1000 {
            mqtt.publish(&format!("out/{i}"), vec![b'x'; 100], false)
                .await
                .unwrap();
        }
    })
    .await
    .expect("publishing stood still while the caller was not reading");
    // Everything received while the caller was busy is there, in order.
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        let mut got = Vec::new();
        while got.len() < n {
            match incoming.recv().await {
                Some(Incoming::Message(m)) if m.topic == "flood/x" => got.push(
                    String::from_utf8_lossy(&m.payload)
                        .parse::<usize>()
                        .unwrap(),
                ),
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
        got
    })
    .await
    .expect("every message received while busy arrives");
    assert_eq!(received, (0..n).collect::<Vec<_>>());
    mqtt.close().await;
}
