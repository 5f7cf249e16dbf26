//! Settlement: complete, abandon with properties, dead-letter, defer, renew, peek, lock loss.

use std::time::{Duration, SystemTime};

use amqp_servicebus::{ErrorKind, Message, OrderedMap, SimpleValue};

use super::support::{WAIT, client, emulator, queue, queue_with_lock};

#[tokio::test]
async fn abandon_redelivers_with_a_higher_count_and_modified_properties() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    c.sender("q").send(Message::new("again").with_property("attempt", "first")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    let mut props = OrderedMap::new();
    props.insert("attempt".to_string(), SimpleValue::String("second".into()));
    props.insert("reason".to_string(), SimpleValue::String("timeout".into()));
    r.abandon(&m, props).await?;
    let again = r.receive(1, WAIT).await?.remove(0);
    assert_eq!(again.sequence_number, m.sequence_number);
    assert_eq!(again.delivery_count, 1);
    assert_eq!(again.application_properties.get("attempt"), Some(&SimpleValue::String("second".into())));
    assert_eq!(again.application_properties.get("reason"), Some(&SimpleValue::String("timeout".into())));
    r.complete(&again).await?;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dead_lettered_messages_carry_their_reason_to_the_dead_letter_queue() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    c.sender("q").send(Message::new("poison")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    r.dead_letter(&m, "InvalidOrder", "amount is negative").await?;
    let dlq = c.receiver("q/$DeadLetterQueue");
    let d = dlq.receive(1, WAIT).await?.remove(0);
    assert_eq!(&d.body[..], b"poison");
    assert_eq!(d.dead_letter_reason(), Some("InvalidOrder"));
    assert_eq!(d.dead_letter_description(), Some("amount is negative"));
    assert_eq!(d.sequence_number, m.sequence_number);
    dlq.complete(&d).await?;
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deferred_messages_are_received_by_sequence_number() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    c.sender("q").send(Message::new("later")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    r.defer(&m).await?;
    assert!(r.receive(1, Duration::from_millis(300)).await?.is_empty());
    let d = r.receive_deferred(&[m.sequence_number]).await?;
    assert_eq!(d.len(), 1);
    assert_eq!(&d[0].body[..], b"later");
    assert!(d[0].lock_token.is_some());
    r.complete(&d[0]).await?;
    let err = r.receive_deferred(&[m.sequence_number]).await.unwrap_err();
    assert!(err.kind() == ErrorKind::NotFound, "{err}");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn renew_lock_extends_it_past_the_original_expiry() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with_lock("q", Duration::from_secs(2))]).await;
    let c = client(&emu);
    c.sender("q").send(Message::new("slow")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    let first = m.locked_until.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let renewed = r.renew_lock(&m).await?;
    assert!(renewed > first, "{renewed:?} should be after {first:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the first expiry
    r.complete(&m).await?;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn peek_looks_without_locking() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let sender = c.sender("q");
    for b in ["a", "b", "c"] {
        sender.send(Message::new(b)).await?;
    }
    let r = c.receiver("q");
    let peeked = r.peek(1, 10).await?;
    assert_eq!(peeked.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(r.peek(3, 10).await?.len(), 1);
    assert!(r.peek(4, 10).await?.is_empty());
    assert_eq!(emu.queue_counts("q").unwrap().active, 3, "peek locks nothing");
    assert!(r.complete(&peeked[0]).await.is_err(), "a peeked message cannot be settled");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn settling_twice_or_after_expiry_is_lock_lost() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with_lock("q", Duration::from_secs(1))]).await;
    let c = client(&emu);
    let sender = c.sender("q");
    sender.send(Message::new("one")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    r.complete(&m).await?;
    let err = r.complete(&m).await.unwrap_err();
    assert!(err.kind() == ErrorKind::LockLost && err.entity() == Some("q"), "{err}");

    sender.send(Message::new("two")).await?;
    let m = r.receive(1, WAIT).await?.remove(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = r.abandon(&m, OrderedMap::new()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::LockLost, "{err}");
    // The broker redelivers it.
    let again = r.receive(1, WAIT).await?.remove(0);
    assert_eq!(again.sequence_number, m.sequence_number);
    assert_eq!(again.delivery_count, 1);
    r.complete(&again).await?;
    assert!(SystemTime::now() > m.locked_until.unwrap());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn complete_and_send_moves_a_message_atomically() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("out")]).await;
    let c = client(&emu);
    c.sender("in").send(Message::new("order")).await?;
    let r = c.receiver("in");
    let out = c.sender("out");
    let m = r.receive(1, WAIT).await?.remove(0);
    r.complete_and_send(&m, &out, Message::new("forwarded")).await?;
    assert_eq!(emu.queue_counts("in").unwrap(), Default::default());
    assert_eq!(emu.queue_counts("out").unwrap().active, 1);
    let got = c.receiver("out").receive(1, WAIT).await?;
    assert_eq!(&got[0].body[..], b"forwarded");
    // Settled: a second attempt is refused and sends nothing.
    let err = r.complete_and_send(&m, &out, Message::new("again")).await.unwrap_err();
    assert!(err.kind() == ErrorKind::LockLost, "{err}");
    assert_eq!(emu.queue_counts("out").unwrap().locked, 1, "only the first copy exists");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn complete_and_send_with_a_lost_lock_sends_nothing() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with_lock("in", Duration::from_secs(1)), queue("out")]).await;
    let c = client(&emu);
    c.sender("in").send(Message::new("slow")).await?;
    let r = c.receiver("in");
    let m = r.receive(1, WAIT).await?.remove(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = r.complete_and_send(&m, &c.sender("out"), Message::new("copy")).await.unwrap_err();
    assert!(err.kind() == ErrorKind::LockLost, "{err}");
    assert_eq!(emu.queue_counts("out").unwrap(), Default::default(), "the transaction sent nothing");
    // The original is still there, for redelivery.
    assert_eq!(r.receive(1, WAIT).await?.len(), 1);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn settlements_and_transactions_do_not_wait_for_a_pending_receive() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("out")]).await;
    let c = client(&emu);
    for body in ["one", "two"] {
        c.sender("in").send(Message::new(body)).await?;
    }
    let r = std::sync::Arc::new(c.receiver("in"));
    let got = r.receive(2, WAIT).await?;
    assert_eq!(got.len(), 2);
    // Two receives wait on the same link, far longer than the test runs.
    let long = Duration::from_secs(300);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.receive(1, long).await })
        })
        .collect();
    r.complete(&got[0]).await?;
    r.complete_and_send(&got[1], &c.sender("out"), Message::new("forwarded")).await?;
    assert!(waiting.iter().all(|w| !w.is_finished()), "the receives still wait");
    assert_eq!(emu.queue_counts("in").unwrap(), Default::default());
    assert_eq!(emu.queue_counts("out").unwrap().active, 1);
    // Each waiting receive gets one of the next messages, in the order they asked.
    for body in ["three", "four"] {
        c.sender("in").send(Message::new(body)).await?;
    }
    let mut bodies = Vec::new();
    for w in waiting {
        let m = w.await??.remove(0);
        r.complete(&m).await?;
        bodies.push(String::from_utf8_lossy(&m.body).into_owned());
    }
    assert_eq!(bodies, ["three", "four"]);
    assert_eq!(r.links_attached(), 1, "all of it on one link");
    emu.shutdown().await;
    Ok(())
}
