//! A guest of the December 2024 revision (`incoming-handler.handle`, the scripted
//! `test-handler`): the settlement matrix, the message handle as the Service Bus message, what it
//! sends, and its session state.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use amqp_servicebus::SimpleValue;
use servicebus_emulator::QueueCounts;

use super::support::*;

/// (queue, script): each case on its own queue.
const CASES: [(&str, &str); 17] = [
    ("complete-ok", "complete"),
    ("complete-err", "complete;err"),
    ("abandon-ok", "abandon"),
    ("deadletter-trap", "dead-letter:Bad;trap"),
    ("defer-ok", "defer"),
    ("redirect-err", "redirect:elsewhere;err"),
    ("delay-ok", "abandon-delay:600000"),
    ("nothing-ok", ""),
    ("err-other", "err"),
    ("err-timeout", "err:timeout"),
    ("err-connection", "err:connection"),
    ("err-permission", "err:permission-denied"),
    ("nothing-trap", "trap"),
    ("nothing-timeout", "loop"),
    ("twice", "complete;complete"),
    ("made", "complete-made"),
    ("renew", "renew;ok"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_settlement_matrix() -> anyhow::Result<()> {
    let mut queues: Vec<_> = CASES.iter().map(|(q, _)| queue_with(q, Duration::from_secs(30), 2)).collect();
    queues.push(queue("reports"));
    queues.push(queue("elsewhere"));
    let emu = emulator(queues).await;
    let channels: Vec<&str> = CASES.iter().map(|(q, _)| *q).collect();
    let timeout = "[channels.\"nothing-timeout\"]\nhandler-timeout = \"1s\"\n";
    let host = handler_host(&emu, &channels, timeout).await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    for (q, script) in CASES {
        send_handler_script(&c, q, q, script).await;
    }
    let counts = |q: &str| emu.queue_counts(q).unwrap();
    let empty = QueueCounts::default();
    let dead = QueueCounts { dead_lettered: 1, ..Default::default() };

    // Settled by the guest: nothing more happens, whatever `handle` did afterwards.
    for q in ["complete-ok", "complete-err"] {
        eventually(&format!("{q} completed"), Duration::from_secs(15), || counts(q) == empty).await;
    }
    assert_eq!(reports.get("complete-ok").await, ["complete => ok"]);
    eventually("abandon-ok dead-lettered", Duration::from_secs(15), || counts("abandon-ok") == dead).await;
    eventually("deadletter-trap dead-lettered", Duration::from_secs(15), || counts("deadletter-trap") == dead).await;
    let dlq = c.receiver("deadletter-trap/$DeadLetterQueue").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(dlq[0].dead_letter_reason(), Some("Bad"));
    let deferred = QueueCounts { deferred: 1, ..Default::default() };
    eventually("defer-ok deferred", Duration::from_secs(15), || counts("defer-ok") == deferred).await;
    eventually("redirect-err redirected", Duration::from_secs(15), || counts("redirect-err") == empty).await;
    eventually("the redirected copy arrived", Duration::from_secs(15), || counts("elsewhere").active == 1).await;
    let scheduled = QueueCounts { scheduled: 1, ..Default::default() };
    eventually("delay-ok scheduled", Duration::from_secs(15), || counts("delay-ok") == scheduled).await;

    // Left unsettled: ok → complete; every case of `error`, a trap, a timeout → abandon.
    eventually("nothing-ok completed", Duration::from_secs(15), || counts("nothing-ok") == empty).await;
    for q in ["err-other", "err-timeout", "err-connection", "err-permission", "nothing-trap", "nothing-timeout"] {
        eventually(&format!("{q} abandoned until dead-lettered"), Duration::from_secs(20), || counts(q) == dead).await;
    }
    let m = host.metrics();
    for q in ["err-other", "err-timeout", "err-connection", "err-permission"] {
        assert_eq!(m.channel(q).handler_errors.load(Relaxed), 2, "{q}");
        assert_eq!(m.channel(q).abandoned.load(Relaxed), 2, "{q}");
    }
    assert_eq!(m.channel("nothing-trap").handler_traps.load(Relaxed), 2);
    assert_eq!(m.channel("nothing-timeout").handler_timeouts.load(Relaxed), 2);

    let twice = reports.get("twice").await;
    assert_eq!(twice[0], "complete => ok");
    assert!(twice[1].starts_with("complete => err already-settled: "), "{twice:?}");
    // A message the guest made names no delivery; the host then completes the real one.
    let made = reports.get("made").await;
    assert!(made[0].starts_with("complete-made => err unknown-delivery: "), "{made:?}");
    eventually("made completed by the host", Duration::from_secs(5), || counts("made") == empty).await;
    assert_eq!(reports.get("renew").await, ["renew => ok"]);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_is_the_service_bus_message_and_a_send_keeps_content_type_and_metadata() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("orders"), queue("reports"), queue("elsewhere")]).await;
    let host = handler_host(&emu, &["orders"], "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    let script = "topic;content-type;echo:order-id;echo:correlation-id;echo:message-id;echo:delivery-count;\
                  echo:delivery-id;send:elsewhere";
    let mut m = handler_script("o-1", script);
    m.content_type = Some("application/json".into());
    m.correlation_id = Some("c-1".into());
    m.application_properties.insert("order-id".into(), SimpleValue::String("o-1".into()));
    c.sender("orders").send(m).await?;
    let lines = reports.get("o-1").await;
    assert_eq!(
        lines[..6],
        [
            "topic => ok orders",
            "content-type => ok application/json",
            "echo:order-id => ok o-1",
            "echo:correlation-id => ok c-1",
            "echo:message-id => ok o-1",
            "echo:delivery-count => ok 1",
        ]
    );
    assert!(lines[6].starts_with("echo:delivery-id => ok "), "{lines:?}");
    assert_eq!(lines[7], "send:elsewhere => ok");
    // What it sent: its data, content type and metadata; the host-assigned keys are not sent.
    let sent = c.receiver("elsewhere").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(sent[0].body.as_ref(), script.as_bytes());
    assert_eq!(sent[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(sent[0].correlation_id.as_deref(), Some("c-1"));
    assert_eq!(sent[0].application_properties.get("order-id"), Some(&SimpleValue::String("o-1".into())));
    assert_eq!(sent[0].application_properties.get("delivery-id"), None);
    assert_eq!(sent[0].application_properties.get("channel"), None);
    // A metadata value Service Bus cannot take is refused, naming the key, and sends nothing.
    send_handler_script(&c, "orders", "o-2", "send-ttl:elsewhere:soon").await;
    let refused = reports.get("o-2").await;
    assert_eq!(
        refused,
        ["send-ttl:elsewhere:soon => err other: invalid-argument: metadata key 'time-to-live': \"soon\" is not a \
          number of milliseconds"]
    );
    assert_eq!(emu.queue_counts("elsewhere").unwrap().active, 0);
    // Settled by the matrix: `handle` returned ok.
    eventually("the order completed", Duration::from_secs(5), || emu.queue_counts("orders").unwrap().active == 0).await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_channels_state_is_read_and_written_through_the_handle() -> anyhow::Result<()> {
    let emu = emulator(vec![session_queue("sq", 5), queue("plain"), queue("reports")]).await;
    let host = handler_host(&emu, &["sq", "plain"], "[channels.sq]\nrequires-session = true\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    for (id, script) in [("s-1", "state-get;state-set:one"), ("s-2", "state-get;state-clear;state-get")] {
        let mut m = handler_script(id, script);
        m.session_id = Some("session-a".into());
        c.sender("sq").send(m).await?;
        // In order: the second reads what the first wrote.
        reports.get(id).await;
    }
    send_handler_script(&c, "plain", "p-1", "state-get").await;
    let plain = reports.get("p-1").await;
    assert!(plain[0].starts_with("state-get => err not-allowed: "), "{plain:?}");
    host.shutdown(Duration::from_secs(5)).await;

    // The state the calls left: cleared by the second.
    let session = c.accept_session("sq", "session-a", Default::default()).await?;
    assert_eq!(session.session().unwrap().state().await?, None);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_size_above_one_is_refused_for_a_dec2024_guest() {
    let emu = emulator(vec![queue("orders")]).await;
    let config = host_runtime::config::HostConfig::parse(
        "[guest]\nchannels = [\"orders\"]\n[defaults]\nmax-batch-size = 4\n",
        "host.toml",
    )
    .unwrap();
    let e = host_runtime::Host::start(options(&emu, guest("test-handler"), config)).await.expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("max-batch-size") && text.contains("one message a call"), "{text}");
    emu.shutdown().await;
}
