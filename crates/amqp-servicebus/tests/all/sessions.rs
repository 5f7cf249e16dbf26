//! Session receivers: by id or the next available, the session lock (renewed by hand or
//! automatically, lapsing, released on close), session state, deferral within a session.

use std::time::{Duration, SystemTime};

use amqp_servicebus::{ErrorKind, Message, OrderedMap, ServiceBusClient, SessionReceiverOptions};

use super::support::{WAIT, client, emulator, session_queue};

async fn send(c: &ServiceBusClient, session: &str, bodies: &[&str]) -> anyhow::Result<()> {
    let sender = c.sender("q");
    for body in bodies {
        let mut m = Message::new(body.to_string());
        m.session_id = Some(session.to_string());
        sender.send(m).await?;
    }
    Ok(())
}

fn bodies(messages: &[amqp_servicebus::ReceivedMessage]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect()
}

fn short_wait() -> SessionReceiverOptions {
    SessionReceiverOptions { wait: Duration::from_millis(300), ..SessionReceiverOptions::default() }
}

#[tokio::test]
async fn a_named_session_gets_its_own_messages_in_order() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    send(&c, "a", &["a1", "a2"]).await?;
    send(&c, "b", &["b1"]).await?;
    send(&c, "a", &["a3"]).await?;
    let r = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let session = r.session().expect("a session receiver has a session");
    assert_eq!(session.id(), "a");
    assert!(session.locked_until() > SystemTime::now() + Duration::from_secs(20), "{:?}", session.locked_until());
    let got = r.receive(10, WAIT).await?;
    assert_eq!(bodies(&got), ["a1", "a2", "a3"]);
    assert!(got.iter().all(|m| m.session_id.as_deref() == Some("a")));
    for m in &got {
        r.complete(m).await?;
    }
    assert!(r.receive(10, Duration::from_millis(200)).await?.is_empty(), "b's message is not a's");
    assert_eq!(emu.queue_counts("q").unwrap().active, 1);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_next_available_session_is_the_oldest_free_one_and_waiting_times_out() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    send(&c, "first", &["1"]).await?;
    send(&c, "second", &["2"]).await?;
    let one = c.accept_next_session("q", short_wait()).await?;
    assert_eq!(one.session().unwrap().id(), "first");
    let two = c.accept_next_session("q", short_wait()).await?;
    assert_eq!(two.session().unwrap().id(), "second");
    let err = c.accept_next_session("q", short_wait()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // A session that gets a message while a receiver waits is granted to it.
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.accept_next_session("q", SessionReceiverOptions::default()).await })
    };
    send(&c, "third", &["3"]).await?;
    let three = waiting.await??;
    assert_eq!(three.session().unwrap().id(), "third");
    assert_eq!(bodies(&three.receive(1, WAIT).await?), ["3"]);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_held_session_cannot_be_accepted_again_until_it_is_closed() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    send(&c, "a", &["a1"]).await?;
    let r = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let m = r.receive(1, WAIT).await?.remove(0);
    let err = c.accept_session("q", "a", SessionReceiverOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionCannotBeLocked, "{err}");
    // Closing releases the session; its unsettled message comes again, counted.
    r.close().await;
    let err = r.complete(&m).await.unwrap_err();
    assert!(err.is_lock_lost(), "{err}");
    let again = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let m = again.receive(1, WAIT).await?.remove(0);
    assert_eq!(m.delivery_count, 1);
    again.complete(&m).await?;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn session_state_is_kept_until_cleared() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    send(&c, "a", &["a1"]).await?;
    let r = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let session = r.session().unwrap();
    assert_eq!(session.state().await?, None);
    session.set_state(Some(b"step 2")).await?;
    assert_eq!(session.state().await?.as_deref(), Some(&b"step 2"[..]));
    // Another receiver of the same session, later, sees it.
    r.close().await;
    let r = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let session = r.session().unwrap();
    assert_eq!(session.state().await?.as_deref(), Some(&b"step 2"[..]));
    session.set_state(None).await?;
    assert_eq!(session.state().await?, None);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_lapsed_session_lock_fails_receives_and_settlements() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_millis(600))]).await;
    let c = client(&emu);
    send(&c, "a", &["a1"]).await?;
    let r = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let m = r.receive(1, WAIT).await?.remove(0);
    let err = r.renew_lock(&m).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidOperation, "a session's messages renew with the session: {err}");
    // Nobody renews: the broker detaches the link with session-lock-lost.
    let err = r.receive(1, Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionLockLost, "{err}");
    let err = r.complete(&m).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionLockLost, "{err}");
    let err = r.session().unwrap().renew_lock().await.unwrap_err();
    assert!(err.is_lock_lost(), "{err}");
    // The message is back in its session.
    let again = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    assert_eq!(again.receive(1, WAIT).await?[0].delivery_count, 1);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_session_lock_is_renewed_by_hand_or_automatically() -> anyhow::Result<()> {
    // Renewal comes at half the lock's life: half a second of slack on a busy machine.
    let lock = Duration::from_millis(1200);
    let emu = emulator(vec![session_queue("q", lock)]).await;
    let c = client(&emu);
    send(&c, "a", &["a1"]).await?;
    send(&c, "b", &["b1"]).await?;
    let by_hand = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let session = by_hand.session().unwrap();
    let first = session.locked_until();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let renewed = session.renew_lock().await?;
    assert!(renewed > first, "{renewed:?} after {first:?}");
    assert_eq!(session.locked_until(), renewed);

    let options =
        SessionReceiverOptions { max_lock_renewal: Duration::from_secs(30), ..SessionReceiverOptions::default() };
    let auto = c.accept_session("q", "b", options).await?;
    let m = auto.receive(1, WAIT).await?.remove(0);
    // Two and a half lock durations later the session is still held, and its message still locked.
    tokio::time::sleep(lock * 5 / 2).await;
    assert!(auto.session().unwrap().locked_until() > SystemTime::now());
    auto.complete(&m).await?;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deferral_peek_and_abandon_stay_within_the_session() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    send(&c, "a", &["a1", "a2"]).await?;
    send(&c, "b", &["b1"]).await?;
    let r = c.accept_session("q", "a", SessionReceiverOptions::default()).await?;
    let got = r.receive(2, WAIT).await?;
    assert_eq!(bodies(&got), ["a1", "a2"]);
    r.defer(&got[0]).await?;
    r.abandon(&got[1], OrderedMap::new()).await?;
    let peeked = r.peek(1, 10).await?;
    assert!(peeked.iter().all(|m| m.session_id.as_deref() == Some("a")), "{peeked:?}");
    assert_eq!(peeked.len(), 2);
    let deferred = r.receive_deferred(&[got[0].sequence_number]).await?;
    assert_eq!(bodies(&deferred), ["a1"]);
    r.complete(&deferred[0]).await?;
    let again = r.receive(1, WAIT).await?;
    assert_eq!(bodies(&again), ["a2"]);
    r.complete(&again[0]).await?;
    assert_eq!(emu.queue_counts("q").unwrap().active, 1, "b1 is left");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_plain_receiver_on_a_session_queue_is_refused_with_the_reason() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    let err = c.receiver("q").receive(1, WAIT).await.unwrap_err();
    assert!(err.to_string().contains("requires sessions"), "{err}");
    let mut m = Message::new("no session");
    m.session_id = None;
    let err = c.sender("q").send(m).await.unwrap_err();
    assert!(err.to_string().contains("session"), "{err}");
    emu.shutdown().await;
    Ok(())
}
