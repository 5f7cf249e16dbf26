//! Sending and receiving: properties, batches, scheduling, modes, prefetch, streams.

use std::time::{Duration, SystemTime};

use amqp_servicebus::{Message, ReceiveMode, ReceiverOptions, SimpleValue};
use futures_util::StreamExt as _;

use super::support::{WAIT, client, emulator, queue};

#[tokio::test]
async fn every_property_survives_the_round_trip() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let mut m = Message::new("payload").with_property("order", 42i64).with_property("vip", true);
    m.message_id = Some("m-1".into());
    m.correlation_id = Some("c-1".into());
    m.content_type = Some("application/json".into());
    m.subject = Some("new-order".into());
    m.to = Some("shipping".into());
    m.reply_to = Some("replies".into());
    m.session_id = Some("s-1".into());
    m.time_to_live = Some(Duration::from_secs(300));
    let before = SystemTime::now();
    c.sender("q").send(m).await?;
    let r = c.receiver("q");
    let got = r.receive(10, WAIT).await?;
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(&g.body[..], b"payload");
    assert_eq!(g.message_id.as_deref(), Some("m-1"));
    assert_eq!(g.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(g.content_type.as_deref(), Some("application/json"));
    assert_eq!(g.subject.as_deref(), Some("new-order"));
    assert_eq!(g.to.as_deref(), Some("shipping"));
    assert_eq!(g.reply_to.as_deref(), Some("replies"));
    assert_eq!(g.session_id.as_deref(), Some("s-1"));
    assert_eq!(g.time_to_live, Some(Duration::from_secs(300)));
    assert_eq!(g.application_properties.get("order"), Some(&SimpleValue::Long(42)));
    assert_eq!(g.application_properties.get("vip"), Some(&SimpleValue::Bool(true)));
    assert_eq!(g.sequence_number, 1);
    assert_eq!(g.delivery_count, 0);
    assert!(g.lock_token.is_some());
    let enqueued = g.enqueued_time.unwrap();
    assert!(enqueued >= before - Duration::from_secs(1) && enqueued <= SystemTime::now() + Duration::from_secs(1));
    let locked = g.locked_until.unwrap();
    assert!(locked > SystemTime::now() + Duration::from_secs(50), "the default lock is 60 s");
    r.complete(g).await?;
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_batch_is_split_to_fit_the_size_limit_and_keeps_its_order() -> anyhow::Result<()> {
    let emu = servicebus_emulator::Emulator::builder()
        .config(servicebus_emulator::Config { queues: vec![queue("q")], ..Default::default() })
        .bind("127.0.0.1:0".parse()?)
        .max_message_size(32 * 1024)
        .start()
        .await?;
    let c = client(&emu);
    let sender = c.sender("q");
    assert_eq!(sender.max_message_size().await?, 32 * 1024);
    let messages: Vec<Message> = (0..40).map(|i| Message::new(vec![i as u8; 5000])).collect();
    sender.send_batch(messages).await?;
    assert_eq!(emu.queue_counts("q").unwrap().active, 40);
    let r = c.receive_and_delete_receiver("q");
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let got = r.receive(40, WAIT).await?;
        assert!(!got.is_empty(), "only {} of 40 arrived", seen.len());
        seen.extend(got.into_iter().map(|m| m.body[0]));
    }
    assert_eq!(seen, (0..40).map(|i| i as u8).collect::<Vec<_>>());
    // One message bigger than the limit fails before anything is sent.
    let err = sender.send_batch(vec![Message::new("small"), Message::new(vec![0u8; 40_000])]).await.unwrap_err();
    assert!(err.kind() == amqp_servicebus::ErrorKind::MessageTooLarge, "{err}");
    assert_eq!(emu.queue_counts("q").unwrap().active, 0);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn scheduled_messages_appear_at_their_time_and_can_be_cancelled() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let sender = c.sender("q");
    let at = SystemTime::now() + Duration::from_millis(1500);
    let kept = sender.schedule(Message::new("kept"), at).await?;
    let dropped = sender.schedule(Message::new("dropped"), at).await?;
    assert!(dropped > kept);
    sender.cancel_scheduled(dropped).await?;
    assert_eq!(emu.queue_counts("q").unwrap().scheduled, 1);
    let r = c.receiver("q");
    let got = r.receive(5, Duration::from_secs(5)).await?;
    let arrived = SystemTime::now();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"kept");
    assert!(arrived + Duration::from_millis(100) >= at, "delivered before its time");
    assert!(got[0].scheduled_enqueue_time.is_some());
    r.complete(&got[0]).await?;
    // Cancelling what is no longer scheduled names the problem.
    let err = sender.cancel_scheduled(kept).await.unwrap_err();
    assert!(err.kind() == amqp_servicebus::ErrorKind::NotFound, "{err}");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn receive_and_delete_takes_messages_away() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    c.sender("q").send(Message::new("gone")).await?;
    let r = c.receive_and_delete_receiver("q");
    let got = r.receive(1, WAIT).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lock_token, None, "receive-and-delete messages have no lock");
    assert_eq!(got[0].locked_until, None);
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default());
    assert!(r.complete(&got[0]).await.is_err(), "nothing to settle");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn prefetch_keeps_messages_requested_ahead() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let sender = c.sender("q");
    for i in 0..10 {
        sender.send(Message::new(format!("m{i}"))).await?;
    }
    let r = c.receiver_with("q", ReceiverOptions { mode: ReceiveMode::PeekLock, prefetch: 5 });
    let first = r.receive(1, WAIT).await?;
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The link asked for more than one: several are locked although one was received.
    assert!(emu.queue_counts("q").unwrap().locked > 1, "{:?}", emu.queue_counts("q"));
    r.complete(&first[0]).await?;
    let mut total = 1;
    while total < 10 {
        let got = r.receive(10, WAIT).await?;
        assert!(!got.is_empty());
        for m in &got {
            r.complete(m).await?;
        }
        total += got.len();
    }
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_stream_yields_messages_as_they_come() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let r = c.receiver("q");
    let sender = c.sender("q");
    let feeder = tokio::spawn(async move {
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(Message::new(format!("s{i}"))).await.unwrap();
        }
    });
    let stream = r.stream();
    tokio::pin!(stream);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(WAIT, stream.next()).await?.unwrap()?;
        bodies.push(String::from_utf8(m.body.to_vec())?);
        r.complete(&m).await?;
    }
    feeder.await?;
    assert_eq!(bodies, ["s0", "s1", "s2"]);
    emu.shutdown().await;
    Ok(())
}
