//! Misbehaving guests (trap, endless loop, memory bomb, stack overflow) stop neither other
//! messages nor other channels; concurrency is bounded; locks are renewed; every call gets a
//! fresh instance.

use std::sync::atomic::Ordering;
use std::time::Duration;

use servicebus_emulator::QueueCounts;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_guests_do_not_stop_other_messages_or_channels() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with("bad", Duration::from_secs(30), 1), queue("good"), queue("reports")]).await;
    let host = test_host(&emu, "bad,good", "[defaults]\nhandler-timeout = \"2s\"\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    for (i, script) in ["trap", "loop", "alloc", "stack"].iter().enumerate() {
        send_script(&c, "bad", &format!("bad-{i}"), script).await;
        send_script(&c, "bad", &format!("bad-ok-{i}"), "complete").await;
        send_script(&c, "good", &format!("good-{i}"), "complete").await;
    }
    for i in 0..4 {
        assert_eq!(reports.get(&format!("good-{i}")).await, ["complete => ok"]);
        assert_eq!(reports.get(&format!("bad-ok-{i}")).await, ["complete => ok"]);
    }
    // Each bad message was abandoned once and, with MaxDeliveryCount 1, dead-lettered.
    eventually("the four bad messages dead-lettered", Duration::from_secs(20), || {
        emu.queue_counts("bad").unwrap() == QueueCounts { dead_lettered: 4, ..Default::default() }
    })
    .await;
    let m = host.metrics();
    let bad = m.channel("bad");
    assert_eq!(bad.handler_traps.load(Ordering::Relaxed), 3, "trap, memory bomb and stack overflow trap");
    assert_eq!(bad.handler_timeouts.load(Ordering::Relaxed), 1, "the endless loop hits the deadline");
    assert_eq!(m.channel("good").completed.load(Ordering::Relaxed), 4);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_bound_holds() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("slow"), queue("reports")]).await;
    let host = test_host(&emu, "slow", "[channels.slow]\nmax-concurrent-calls = 3\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    for i in 0..9 {
        send_script(&c, "slow", &format!("s{i}"), "sleep:400").await;
    }
    for i in 0..9 {
        reports.get(&format!("s{i}")).await;
    }
    let peak = host.metrics().channel("slow").in_flight_peak.load(Ordering::Relaxed);
    assert_eq!(peak, 3, "nine slow messages, three at a time");
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_renewal_keeps_a_long_handler_from_being_redelivered() -> anyhow::Result<()> {
    // The handler runs for three and a half lock durations.
    let emu = emulator(vec![queue_with("long", Duration::from_secs(1), 10), queue("reports")]).await;
    let host = test_host(&emu, "long", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "long", "long-1", "sleep:3500;complete").await;
    assert_eq!(reports.get("long-1").await, ["sleep:3500 => ok", "complete => ok"]);
    let counters = host.metrics().channel("long");
    assert_eq!(counters.received.load(Ordering::Relaxed), 1, "never redelivered");
    assert!(
        counters.lock_renewals.load(Ordering::Relaxed) >= 3,
        "renewed {}",
        counters.lock_renewals.load(Ordering::Relaxed)
    );
    assert_eq!(counters.locks_lost.load(Ordering::Relaxed), 0);
    eventually("completed", Duration::from_secs(5), || emu.queue_counts("long").unwrap() == QueueCounts::default())
        .await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_messages_goes_to_one_handler_call() -> anyhow::Result<()> {
    // MaxDeliveryCount 1: b2, abandoned once, is dead-lettered rather than redelivered (each
    // redelivery would be a call of its own).
    let emu = emulator(vec![queue_with("batched", Duration::from_secs(30), 1), queue("reports")]).await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    // Queue them before the host starts, so the first receive finds all four.
    for i in 0..4 {
        send_script(&c, "batched", &format!("b{i}"), if i == 2 { "err" } else { "complete" }).await;
    }
    let host = test_host(&emu, "batched", "[channels.batched]\nmax-batch-size = 4\nprefetch = 4\n").await;
    for i in [0, 1, 3] {
        assert_eq!(reports.get(&format!("b{i}")).await, ["complete => ok"]);
    }
    assert_eq!(reports.get("b2").await, ["err => returned error"]);
    let m = host.metrics().channel("batched");
    // The call returned an error (for b2): b2, which nobody settled, was abandoned; the rest had completed.
    eventually("b2 abandoned", Duration::from_secs(5), || m.abandoned.load(Ordering::Relaxed) >= 1).await;
    let calls = m.calls.load(Ordering::Relaxed);
    assert!(calls < 4, "four messages came in {calls} calls: at least one call got several");
    assert_eq!(m.completed.load(Ordering::Relaxed), 3);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

/// What a batch's call leaves unsettled is settled by the matrix, every message of it: all
/// completed when the call returns ok, all abandoned when it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_left_unsettled_is_settled_whole_by_the_matrix() -> anyhow::Result<()> {
    let emu = emulator(vec![
        queue_with("ok-batch", Duration::from_secs(30), 1),
        queue_with("bad-batch", Duration::from_secs(30), 1),
        queue("reports"),
    ])
    .await;
    let c = client(&emu);
    for i in 0..8 {
        send_script(&c, "ok-batch", &format!("o{i}"), "ok").await;
        send_script(&c, "bad-batch", &format!("e{i}"), "err").await;
    }
    let host = test_host(
        &emu,
        "ok-batch,bad-batch",
        "[defaults]\nmax-batch-size = 8\nprefetch = 8\nmax-concurrent-calls = 1\n",
    )
    .await;
    let m = host.metrics();
    eventually("both batches settled", Duration::from_secs(10), || {
        m.channel("ok-batch").completed.load(Ordering::Relaxed) == 8
            && m.channel("bad-batch").abandoned.load(Ordering::Relaxed) == 8
    })
    .await;
    assert!(m.channel("ok-batch").calls.load(Ordering::Relaxed) < 8, "the eight messages came in batches");
    // MaxDeliveryCount 1: the abandoned ones are dead-lettered; nothing stays locked or active.
    eventually("the queues settled", Duration::from_secs(5), || {
        emu.queue_counts("ok-batch").unwrap() == QueueCounts::default()
            && emu.queue_counts("bad-batch").unwrap() == QueueCounts { dead_lettered: 8, ..Default::default() }
    })
    .await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

/// Pooled slots are reset in place between instances (engine.rs): no instance may see the
/// globals or heap bytes of the one before it in the same slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gets_a_fresh_instance_with_clean_memory() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("fresh"), queue("reports")]).await;
    let host = test_host(&emu, "fresh", "[channels.fresh]\nmax-concurrent-calls = 4\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    for i in 0..40 {
        send_script(&c, "fresh", &format!("f{i}"), "fresh;complete").await;
    }
    for i in 0..40 {
        assert_eq!(reports.get(&format!("f{i}")).await, ["fresh => ok", "complete => ok"], "message f{i}");
    }
    assert_eq!(host.metrics().channel("fresh").calls.load(Ordering::Relaxed), 40);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}
