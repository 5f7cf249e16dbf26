//! Session channels: a queue that requires sessions is consumed a message session at a time,
//! each session's messages in order; the guest reads and writes the session's state; a
//! session is let go when idle, when its calls fail, and when the host stops.

use std::sync::atomic::Ordering;
use std::time::Duration;

use amqp_servicebus::{Message, ServiceBusClient, SessionReceiverOptions};
use servicebus_emulator::QueueCounts;

use super::support::*;

/// Sends a script in session `session` to `queue`, reporting to `reports` under `id`.
async fn send_in_session(c: &ServiceBusClient, queue: &str, session: &str, id: &str, script: &str) {
    let mut m = Message::new(script.to_string());
    m.message_id = Some(id.into());
    m.session_id = Some(session.into());
    m.reply_to = Some("reports".into());
    c.sender(queue).send(m).await.unwrap();
}

/// The first `n` reports, in the order the calls sent them: (correlation-id, lines).
async fn reports_in_order(c: &ServiceBusClient, n: usize) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let order = c.receive_and_delete_receiver("reports");
    let mut reports = Vec::new();
    while reports.len() < n {
        let got = order.receive(50, Duration::from_secs(10)).await?;
        anyhow::ensure!(!got.is_empty(), "{} of {n} reports came: {reports:?}", reports.len());
        for m in got {
            let lines = String::from_utf8(m.body.to_vec())?.lines().map(String::from).collect();
            reports.push((m.correlation_id.unwrap_or_default(), lines));
        }
    }
    Ok(reports)
}

/// The value a report line read (`<step> => ok <value>`).
fn value(lines: &[String], step: &str) -> String {
    let prefix = format!("{step} => ok ");
    let line = lines.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {step:?} in {lines:?}"));
    line[prefix.len()..].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sessions_messages_are_handled_in_order_and_idle_sessions_are_let_go() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("sq", 10), queue("reports")]).await;
    // Two sessions at a time, for three sessions: the third is taken once one goes idle.
    let host = test_host(
        &emu,
        "sq",
        "[channels.sq]\nrequires-session = true\nmax-concurrent-sessions = 2\nsession-idle-timeout = \"300ms\"\n",
    )
    .await;
    let c = client(&emu);
    let (sessions, per_session) = (3, 10);
    for i in 0..per_session {
        for s in 0..sessions {
            send_in_session(&c, "sq", &format!("s{s}"), &format!("s{s}-{i}"), "echo:session-id;sleep:5").await;
        }
    }
    let mut handled: Vec<Vec<usize>> = vec![Vec::new(); sessions];
    for (id, lines) in reports_in_order(&c, sessions * per_session).await? {
        let (s, i) = id[1..].split_once('-').unwrap();
        assert_eq!(value(&lines, "echo:session-id"), format!("s{s}"), "the guest sees its session-id");
        handled[s.parse::<usize>()?].push(i.parse()?);
    }
    for (s, got) in handled.iter().enumerate() {
        assert_eq!(*got, (0..per_session).collect::<Vec<_>>(), "session s{s} was handled in order");
    }
    let m = host.metrics().channel("sq");
    eventually("the sessions let go once idle", Duration::from_secs(10), || {
        m.sessions_held.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(m.sessions_accepted.load(Ordering::Relaxed) >= 3, "every session was accepted");
    assert!(m.in_flight_peak.load(Ordering::Relaxed) <= 2, "two sessions at a time, one call each");
    assert_eq!(emu.queue_counts("sq").unwrap(), QueueCounts::default());
    // An idle session is free for anyone at once, though the host is still running.
    let r = c.accept_session("sq", "s0", SessionReceiverOptions::default()).await?;
    r.close().await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_reads_and_writes_the_session_state_and_only_in_a_session() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("sq", 10), queue("plain"), queue("reports")]).await;
    let host = test_host(&emu, "sq,plain", "[channels.sq]\nrequires-session = true\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_in_session(&c, "sq", "a", "first", "state-get;state-set:seen 1;state-get").await;
    let first = reports.get("first").await;
    assert_eq!(first, ["state-get => ok (none)", "state-set:seen 1 => ok", "state-get => ok seen 1"]);
    send_in_session(&c, "sq", "a", "second", "state-get;state-clear;state-get").await;
    assert_eq!(reports.get("second").await, ["state-get => ok seen 1", "state-clear => ok", "state-get => ok (none)"]);
    send_in_session(&c, "sq", "b", "other", "state-get").await;
    assert_eq!(reports.get("other").await, ["state-get => ok (none)"], "each session has its own state");
    send_script(&c, "plain", "plain", "state-get").await;
    let refused = reports.get("plain").await;
    assert!(refused[0].starts_with("state-get => err ErrorKind::NotAllowed: not-allowed: message"), "{refused:?}");
    assert!(refused[0].contains("requires-session = true"), "{refused:?}");
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_holds_its_session_back_until_it_is_dead_lettered() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("sq", 2), queue("reports")]).await;
    let host = test_host(&emu, "sq", "[channels.sq]\nrequires-session = true\n").await;
    let c = client(&emu);
    send_in_session(&c, "sq", "a", "a-0", "echo:delivery-count;err").await;
    send_in_session(&c, "sq", "a", "a-1", "echo:delivery-count").await;
    send_in_session(&c, "sq", "a", "a-2", "echo:delivery-count").await;
    let seen: Vec<String> = reports_in_order(&c, 4)
        .await?
        .into_iter()
        .map(|(id, lines)| format!("{id} #{}", value(&lines, "echo:delivery-count")))
        .collect();
    // Abandoned after each error, a-0 comes again before the rest of its session, until
    // MaxDeliveryCount (2) dead-letters it; then the session goes on, in order.
    assert_eq!(seen, ["a-0 #1", "a-0 #2", "a-1 #1", "a-2 #1"]);
    eventually("a-0 dead-lettered", Duration::from_secs(10), || {
        emu.queue_counts("sq").unwrap() == QueueCounts { dead_lettered: 1, ..Default::default() }
    })
    .await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_host_lets_its_sessions_go_and_their_calls_finish() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("sq", 10), queue("reports")]).await;
    let host = test_host(&emu, "sq", "[channels.sq]\nrequires-session = true\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_in_session(&c, "sq", "a", "slow", "sleep:500;echo:session-id").await;
    let m = host.metrics().channel("sq");
    eventually("the call started", Duration::from_secs(10), || m.in_flight.load(Ordering::Relaxed) == 1).await;
    let report = host.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "the call in flight finished");
    assert_eq!(value(&reports.get("slow").await, "echo:session-id"), "a");
    assert_eq!(emu.queue_counts("sq").unwrap(), QueueCounts::default(), "the message was completed");
    // The session was released on the way out (its idle timeout is 60 s, its lock 5 s).
    let r = c.accept_session("sq", "a", SessionReceiverOptions::default()).await?;
    r.close().await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_session_lock_keeps_it() -> anyhow::Result<()> {
    let mut short = session_queue("sq", 10);
    short.properties.lock_duration = Duration::from_secs(2);
    let emu = emulator(vec![short, queue("reports")]).await;
    let host = test_host(&emu, "sq", "[channels.sq]\nrequires-session = true\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_in_session(&c, "sq", "a", "long", "sleep:5000;complete;echo:delivery-count").await;
    let lines = reports.get("long").await;
    assert_eq!(lines[1], "complete => ok", "the session's lock outlived its 2 s: {lines:?}");
    assert_eq!(value(&lines, "echo:delivery-count"), "1");
    let m = host.metrics().channel("sq");
    assert_eq!(m.session_locks_lost.load(Ordering::Relaxed), 0);
    assert_eq!(emu.queue_counts("sq").unwrap(), QueueCounts::default());
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}
