//! The queue's rules, without a connection.

use super::*;
use fe2o3_amqp_types::messaging::Message;
use fe2o3_amqp_types::messaging::message::__private::Serializable;
use serde_amqp::primitives::Binary;

fn msg(body: &str) -> StoredMessage {
    let bytes = Bytes::from(
        serde_amqp::to_vec(&Serializable(Message::builder().data(Binary::from(body.as_bytes().to_vec())).build()))
            .unwrap(),
    );
    StoredMessage::parse(&bytes).unwrap()
}

fn queue(max_delivery_count: u32) -> Arc<Queue> {
    Queue::new("q", QueueProperties { max_delivery_count, ..Default::default() })
}

#[tokio::test]
async fn sequence_numbers_rise_and_receive_is_fifo() {
    let q = queue(10);
    assert_eq!(q.enqueue(vec![msg("a"), msg("b")]).unwrap(), vec![1, 2]);
    let a = q.take(ReceiveMode::PeekLock).unwrap();
    let b = q.take(ReceiveMode::PeekLock).unwrap();
    assert_eq!((a.sequence_number, b.sequence_number), (1, 2));
    assert!(q.take(ReceiveMode::PeekLock).is_none());
    assert_eq!(q.counts().locked, 2);
}

#[tokio::test]
async fn settling_twice_is_lock_lost() {
    let q = queue(10);
    q.enqueue(vec![msg("a")]).unwrap();
    let d = q.take(ReceiveMode::PeekLock).unwrap();
    let token = d.lock_token.unwrap();
    q.settle(token, Settlement::Complete).unwrap();
    assert_eq!(q.settle(token, Settlement::Complete), Err(SettleError::LockLost));
    assert_eq!(q.counts(), QueueCounts::default());
}

/// Finding 9: a lock this long panicked after the message had left the available set.
#[tokio::test]
async fn durations_past_what_a_clock_holds_saturate_instead_of_panicking() {
    let q = Queue::new(
        "q",
        QueueProperties {
            lock_duration: Duration::MAX,
            default_message_ttl: Some(Duration::MAX),
            ..Default::default()
        },
    );
    q.enqueue(vec![msg("a")]).unwrap();
    let d = q.take(ReceiveMode::PeekLock).unwrap();
    let token = d.lock_token.unwrap();
    q.renew_lock(token).unwrap();
    q.settle(token, Settlement::Complete).unwrap();
    assert_eq!(q.counts(), QueueCounts::default());
}

#[tokio::test]
async fn the_quota_counts_what_is_held_and_frees_what_leaves() {
    let q = Queue::new("q", QueueProperties { max_size_megabytes: 1, ..Default::default() });
    let big = |n| {
        let mut m = msg("x");
        m.size = n;
        m
    };
    q.enqueue(vec![big(600 * 1024)]).unwrap();
    let full = q.enqueue(vec![big(300 * 1024), big(300 * 1024)]).unwrap_err();
    assert_eq!(full, QuotaExceeded::Entity { entity: "q".into(), size: 600 * 1024, max: 1024 * 1024 });
    assert_eq!(q.counts().active, 1, "all or none");
    let d = q.take(ReceiveMode::PeekLock).unwrap();
    assert!(q.check_room(500 * 1024).is_err(), "a locked message still counts");
    q.settle(d.lock_token.unwrap(), Settlement::DeadLetter { reason: None, description: None, properties: vec![] })
        .unwrap();
    q.enqueue(vec![big(1024 * 1024)]).unwrap();
}

#[tokio::test]
async fn abandon_counts_and_max_delivery_count_dead_letters() {
    let q = queue(2);
    q.enqueue(vec![msg("a")]).unwrap();
    for _ in 0..2 {
        let d = q.take(ReceiveMode::PeekLock).unwrap();
        q.settle(d.lock_token.unwrap(), Settlement::Abandon(Vec::new())).unwrap();
    }
    assert!(q.take(ReceiveMode::PeekLock).is_none());
    assert_eq!(q.counts().dead_lettered, 1);
    let dlq = q.dead_letter_queue().unwrap();
    let d = dlq.take(ReceiveMode::ReceiveAndDelete).unwrap();
    assert_eq!(d.sequence_number, 1);
}

#[tokio::test]
async fn release_does_not_count_a_delivery() {
    let q = queue(1);
    q.enqueue(vec![msg("a")]).unwrap();
    for _ in 0..3 {
        let d = q.take(ReceiveMode::PeekLock).unwrap();
        q.settle(d.lock_token.unwrap(), Settlement::Release).unwrap();
    }
    assert_eq!(q.counts().active, 1);
}

#[tokio::test]
async fn deferred_messages_come_back_only_by_sequence_number() {
    let q = queue(10);
    q.enqueue(vec![msg("a")]).unwrap();
    let d = q.take(ReceiveMode::PeekLock).unwrap();
    q.settle(d.lock_token.unwrap(), Settlement::Defer(Vec::new())).unwrap();
    assert!(q.take(ReceiveMode::PeekLock).is_none());
    assert_eq!(q.receive_deferred(&[2], ReceiveMode::PeekLock, None).unwrap_err(), DeferredError::NotDeferred(2));
    let got = q.receive_deferred(&[1], ReceiveMode::PeekLock, None).unwrap();
    q.settle(got[0].lock_token.unwrap(), Settlement::Complete).unwrap();
    assert_eq!(q.counts(), QueueCounts::default());
}

#[tokio::test(start_paused = true)]
async fn lock_expiry_redelivers_with_a_higher_count() {
    let q = Queue::new("q", QueueProperties { lock_duration: Duration::from_secs(5), ..Default::default() });
    tokio::spawn(q.clone().run_timer());
    q.enqueue(vec![msg("a")]).unwrap();
    let first = q.take(ReceiveMode::PeekLock).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    tokio::task::yield_now().await;
    let second = q.take(ReceiveMode::PeekLock).expect("redelivered after the lock expired");
    assert_eq!(second.sequence_number, first.sequence_number);
    assert_eq!(q.settle(first.lock_token.unwrap(), Settlement::Complete), Err(SettleError::LockLost));
    let header =
        crate::codec::HeaderFields::decode(&crate::codec::split_sections(&second.payload).unwrap().header.unwrap())
            .unwrap();
    assert_eq!(header.delivery_count, 1);
}

#[tokio::test]
async fn waiters_are_woken_by_an_enqueue() {
    let q = queue(10);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(q.take_or_wait(ReceiveMode::PeekLock, None, move || tx.send(()).unwrap()).unwrap().is_none());
    q.enqueue(vec![msg("a")]).unwrap();
    rx.recv().await.unwrap();
}

fn in_session(body: &str, session: &str) -> StoredMessage {
    let mut m = msg(body);
    m.session_id = Some(session.into());
    m
}

fn session_queue(lock: Duration, max_delivery_count: u32) -> Arc<Queue> {
    Queue::new(
        "sq",
        QueueProperties { requires_session: true, lock_duration: lock, max_delivery_count, ..Default::default() },
    )
}

fn take_in(q: &Queue, claim: &SessionClaim) -> Option<Delivery> {
    q.take_or_wait(ReceiveMode::PeekLock, Some(claim), || {}).unwrap()
}

#[tokio::test]
async fn a_session_is_received_in_order_by_the_one_receiver_that_holds_it() {
    let q = session_queue(Duration::from_secs(60), 10);
    q.enqueue(vec![in_session("a1", "a"), in_session("b1", "b"), in_session("a2", "a")]).unwrap();
    assert!(q.take(ReceiveMode::PeekLock).is_none(), "only session receivers take from a session entity");
    let a = q.lock_session("a").unwrap();
    assert_eq!(q.lock_session("a").unwrap_err(), SessionError::CannotBeLocked("a".into()));
    assert_eq!(take_in(&q, &a).unwrap().sequence_number, 1);
    assert_eq!(take_in(&q, &a).unwrap().sequence_number, 3);
    assert!(take_in(&q, &a).is_none(), "b's message is not a's");
    // The next free session with messages is b: a is held.
    let b = q.lock_next_session(|| {}).unwrap();
    assert_eq!(b.id, "b");
    assert!(q.lock_next_session(|| {}).is_none());
}

#[tokio::test]
async fn next_available_waits_for_a_session_to_come_free() {
    let q = session_queue(Duration::from_secs(60), 10);
    q.enqueue(vec![in_session("a1", "a")]).unwrap();
    let a = q.lock_session("a").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(q.lock_next_session(move || tx.send(()).unwrap()).is_none());
    q.release_session(&a);
    rx.recv().await.expect("woken when a comes free");
    assert_eq!(q.lock_next_session(|| {}).unwrap().id, "a");
}

#[tokio::test]
async fn letting_a_session_go_returns_its_messages_with_a_delivery_counted() {
    let q = session_queue(Duration::from_secs(60), 2);
    q.enqueue(vec![in_session("a1", "a")]).unwrap();
    for round in 1..=2 {
        let a = q.lock_session("a").unwrap();
        let d = take_in(&q, &a).expect("returned to the session");
        q.release_session(&a);
        assert_eq!(q.settle(d.lock_token.unwrap(), Settlement::Complete), Err(SettleError::LockLost), "{round}");
    }
    // MaxDeliveryCount 2: the second release dead-letters it, into a queue without sessions.
    assert_eq!(q.counts().dead_lettered, 1);
    let dlq = q.dead_letter_queue().unwrap();
    assert_eq!(dlq.take(ReceiveMode::ReceiveAndDelete).unwrap().sequence_number, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_session_lock_releases_the_session_and_its_messages() {
    let q = session_queue(Duration::from_secs(5), 10);
    tokio::spawn(q.clone().run_timer());
    q.enqueue(vec![in_session("a1", "a")]).unwrap();
    let a = q.lock_session("a").unwrap();
    let d = take_in(&q, &a).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    q.renew_session_lock(&a).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::yield_now().await;
    assert!(q.holds(&a), "renewed at 3 s: held until 8 s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::yield_now().await;
    assert!(!q.holds(&a));
    let lost = q.take_or_wait(ReceiveMode::PeekLock, Some(&a), || {}).unwrap_err();
    assert_eq!(lost, SessionError::LockLost("a".into()));
    assert_eq!(q.settle(d.lock_token.unwrap(), Settlement::Complete), Err(SettleError::LockLost));
    let again = q.lock_next_session(|| {}).expect("free again, with its message");
    assert_eq!(take_in(&q, &again).unwrap().sequence_number, 1);
}

#[tokio::test]
async fn session_state_is_kept_until_cleared_and_lists_the_session() {
    let q = session_queue(Duration::from_secs(60), 10);
    let a = q.lock_session("a").unwrap();
    assert_eq!(q.session_state(&a).unwrap(), None);
    q.set_session_state(&a, Some(Bytes::from_static(b"step 2"))).unwrap();
    q.release_session(&a);
    let a = q.lock_session("a").unwrap();
    assert_eq!(q.session_state(&a).unwrap(), Some(Bytes::from_static(b"step 2")), "state outlives the lock");
    assert_eq!(q.session_ids(Some(0), 0, 10), vec!["a".to_string()]);
    assert!(q.session_ids(None, 0, 10).is_empty(), "no messages");
    q.set_session_state(&a, None).unwrap();
    assert!(q.session_ids(Some(0), 0, 10).is_empty());
    q.enqueue(vec![in_session("b1", "b"), in_session("c1", "c")]).unwrap();
    assert_eq!(q.session_ids(None, 1, 10), vec!["c".to_string()], "skip pages");
}

#[tokio::test]
async fn deferred_messages_of_a_session_need_its_lock() {
    let q = session_queue(Duration::from_secs(60), 10);
    q.enqueue(vec![in_session("a1", "a"), in_session("b1", "b")]).unwrap();
    let a = q.lock_session("a").unwrap();
    let d = take_in(&q, &a).unwrap();
    q.settle(d.lock_token.unwrap(), Settlement::Defer(Vec::new())).unwrap();
    assert_eq!(q.receive_deferred(&[1], ReceiveMode::PeekLock, None).unwrap_err(), DeferredError::SessionRequired);
    let b = q.lock_session("b").unwrap();
    assert_eq!(q.receive_deferred(&[1], ReceiveMode::PeekLock, Some(&b)).unwrap_err(), DeferredError::NotDeferred(1));
    let got = q.receive_deferred(&[1], ReceiveMode::PeekLock, Some(&a)).unwrap();
    assert_eq!(q.renew_lock(got[0].lock_token.unwrap()), Err(SettleError::SessionMessage));
    q.settle(got[0].lock_token.unwrap(), Settlement::Complete).unwrap();
    assert_eq!(q.peek(1, 10, Some("b")).len(), 1);
    assert_eq!(q.peek(1, 10, Some("a")).len(), 0);
}
