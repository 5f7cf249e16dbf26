//! Every row of the settlement matrix (`docs/semantics.md`), with the scripted test guest.

use std::time::Duration;

use servicebus_emulator::QueueCounts;

use super::support::*;

/// (queue, script): each case on its own queue.
const CASES: [(&str, &str); 16] = [
    ("complete-ok", "complete"),
    ("complete-err", "complete;err"),
    ("complete-trap", "complete;trap"),
    ("complete-timeout", "complete;loop"),
    ("abandon-ok", "abandon"),
    ("deadletter-trap", "dead-letter:Bad;trap"),
    ("defer-ok", "defer"),
    ("redirect-err", "redirect:elsewhere;err"),
    ("delay-ok", "abandon-delay:600000"),
    ("nothing-ok", ""),
    ("nothing-err", "err"),
    ("nothing-trap", "trap"),
    ("nothing-timeout", "loop"),
    ("twice", "complete;complete"),
    ("forged", "complete-forged"),
    ("renew", "renew;ok"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_settlement_matrix() -> anyhow::Result<()> {
    let mut queues: Vec<_> = CASES.iter().map(|(q, _)| queue_with(q, Duration::from_secs(30), 2)).collect();
    queues.push(queue("reports"));
    queues.push(queue("elsewhere"));
    let emu = emulator(queues).await;
    let channels = CASES.iter().map(|(q, _)| *q).collect::<Vec<_>>().join(",");
    // Only the timeout rows get a short deadline.
    let timeouts = "[channels.\"complete-timeout\"]\nhandler-timeout = \"1s\"\n[channels.\"nothing-timeout\"]\nhandler-timeout = \"1s\"\n";
    let host = test_host(&emu, &channels, timeouts).await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    for (q, script) in CASES {
        send_script(&c, q, q, script).await;
    }
    let counts = |q: &str| emu.queue_counts(q).unwrap();
    let empty = QueueCounts::default();
    let dead = QueueCounts { dead_lettered: 1, ..Default::default() };

    // Settled by the guest: nothing more happens, whatever the handler did afterwards.
    for q in ["complete-ok", "complete-err", "complete-trap", "complete-timeout"] {
        eventually(&format!("{q} completed"), Duration::from_secs(15), || counts(q) == empty).await;
    }
    assert_eq!(reports.get("complete-ok").await, ["complete => ok"]);
    // Abandon by the guest: redelivered (and abandoned again) until MaxDeliveryCount (2) dead-letters it.
    eventually("abandon-ok dead-lettered", Duration::from_secs(15), || counts("abandon-ok") == dead).await;
    eventually("deadletter-trap dead-lettered", Duration::from_secs(15), || counts("deadletter-trap") == dead).await;
    let dlq = c.receiver("deadletter-trap/$DeadLetterQueue").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(dlq[0].dead_letter_reason(), Some("Bad"));
    eventually("defer-ok deferred", Duration::from_secs(15), || {
        counts("defer-ok") == QueueCounts { deferred: 1, ..Default::default() }
    })
    .await;
    eventually("redirect-err redirected", Duration::from_secs(15), || counts("redirect-err") == empty).await;
    eventually("the redirected copy arrived", Duration::from_secs(15), || counts("elsewhere").active == 1).await;
    eventually("delay-ok scheduled", Duration::from_secs(15), || {
        counts("delay-ok") == QueueCounts { scheduled: 1, ..Default::default() }
    })
    .await;

    // Left unsettled: ok → complete; error, trap, timeout → abandon (then MaxDeliveryCount).
    eventually("nothing-ok completed", Duration::from_secs(15), || counts("nothing-ok") == empty).await;
    for q in ["nothing-err", "nothing-trap", "nothing-timeout"] {
        eventually(&format!("{q} abandoned until dead-lettered"), Duration::from_secs(20), || counts(q) == dead).await;
    }
    let m = host.metrics();
    assert_eq!(m.channel("nothing-err").abandoned.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(m.channel("nothing-trap").handler_traps.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(m.channel("nothing-timeout").handler_timeouts.load(std::sync::atomic::Ordering::Relaxed), 2);
    let reason = c.receiver("nothing-err/$DeadLetterQueue").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(reason[0].dead_letter_reason(), Some("MaxDeliveryCountExceeded"));

    // Settling twice: the second call fails and the first stands.
    let twice = reports.get("twice").await;
    assert_eq!(twice[0], "complete => ok");
    assert!(twice[1].starts_with("complete => err ErrorKind::AlreadySettled"), "{twice:?}");
    eventually("twice completed", Duration::from_secs(5), || counts("twice") == empty).await;
    // A forged delivery-id settles nothing; the host then completes the real one (handler ok).
    let forged = reports.get("forged").await;
    assert!(forged[0].starts_with("complete-forged => err ErrorKind::UnknownDelivery"), "{forged:?}");
    eventually("forged completed by the host", Duration::from_secs(5), || counts("forged") == empty).await;
    assert_eq!(reports.get("renew").await, ["renew => ok"]);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_after_the_lock_was_lost_is_lock_lost() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with("slow", Duration::from_secs(1), 5), queue("reports")]).await;
    // No renewal: the lock lapses while the handler sleeps.
    let host = test_host(&emu, "slow", "[defaults]\nmax-auto-lock-renewal = \"0s\"\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "slow", "slow-1", "sleep:2500;complete;ok").await;
    let lines = reports.get("slow-1").await;
    assert!(lines[1].starts_with("complete => err ErrorKind::LockLost"), "{lines:?}");
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_after_the_lock_was_lost_sends_nothing() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with("slow", Duration::from_secs(1), 5), queue("reports"), queue("elsewhere")]).await;
    let host = test_host(&emu, "slow", "[defaults]\nmax-auto-lock-renewal = \"0s\"\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "slow", "r-1", "sleep:2500;redirect:elsewhere;ok").await;
    let lines = reports.get("r-1").await;
    assert!(lines[1].starts_with("redirect:elsewhere => err ErrorKind::LockLost"), "{lines:?}");
    // The redirect was one transaction: the failed completion took the send with it.
    assert_eq!(emu.queue_counts("elsewhere").unwrap(), QueueCounts::default());
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_with_delay_schedules_a_copy_and_completes_the_original() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("later"), queue("reports")]).await;
    let host = test_host(&emu, "later", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "later", "d-1", "abandon-delay:600000").await;
    assert_eq!(reports.get("d-1").await, ["abandon-delay:600000 => ok"]);
    assert_eq!(emu.queue_counts("later").unwrap(), QueueCounts { scheduled: 1, ..Default::default() });
    let copy = c.receiver("later").peek(1, 10).await?;
    assert_eq!(copy.len(), 1);
    assert_eq!(copy[0].application_properties.get("delayed-retry-count"), Some(&amqp_servicebus::SimpleValue::Long(1)));
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

/// A settlement under way when the call's deadline strikes is carried through: here a redirect
/// whose caller stops waiting at its first pause still moves the message, at once, instead of
/// leaving it locked until its lock expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_cut_off_by_the_deadline_is_carried_through() -> anyhow::Result<()> {
    use host_runtime::MessagingCtx;
    use host_runtime::delivery::Settlement;
    let emu = emulator(vec![queue_with("in", Duration::from_secs(60), 10), queue("out")]).await;
    // One connection for the receiver and the redirect's send: a transaction is the connection's.
    let c = client(&emu);
    let ctx = MessagingCtx::builder().connection("default", c.clone()).allow("out").build()?;
    c.sender("in").send(amqp_servicebus::Message::new("move me")).await?;
    let receiver = std::sync::Arc::new(c.receiver("in"));
    let message = receiver.receive(1, Duration::from_secs(5)).await?.remove(0);
    let delivery = ctx.delivery("in", message, receiver);
    // Polled once, then dropped: as a deadline drops a guest's call in the middle of a host call.
    let cut = tokio::time::timeout(Duration::ZERO, ctx.settle(&delivery, Settlement::Redirect("out".into()))).await;
    assert!(cut.is_err(), "the redirect was cut off before it could finish");
    eventually("the message moved to out, well before its 60 s lock expires", Duration::from_secs(10), || {
        emu.queue_counts("in") == Some(QueueCounts::default()) && emu.queue_counts("out").is_some_and(|q| q.active == 1)
    })
    .await;
    emu.shutdown().await;
    Ok(())
}
