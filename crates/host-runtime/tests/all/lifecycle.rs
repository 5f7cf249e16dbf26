//! Shutdown, runtime configuration updates, the allow-list and named connections.

use std::sync::atomic::Ordering;
use std::time::Duration;

use servicebus_emulator::QueueCounts;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_period_abandons_in_flight_messages_and_loses_nothing() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("work"), queue("reports")]).await;
    let host = test_host(&emu, "work", "[channels.work]\nmax-concurrent-calls = 4\n").await;
    let c = client(&emu);
    for i in 0..6 {
        send_script(&c, "work", &format!("w{i}"), "sleep:5000;complete").await;
    }
    let m = host.metrics();
    eventually("four calls in flight", Duration::from_secs(10), || {
        m.channel("work").in_flight.load(Ordering::Relaxed) == 4
    })
    .await;
    let report = host.shutdown(Duration::from_millis(300)).await;
    assert!(!report.drained);
    // Four were abandoned by the host, two never left the queue: all six are available again.
    assert_eq!(emu.queue_counts("work").unwrap(), QueueCounts { active: 6, ..Default::default() });
    assert_eq!(m.channel("work").abandoned.load(Ordering::Relaxed), 4);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_within_the_grace_period_lets_handlers_finish() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("work"), queue("reports")]).await;
    let host = test_host(&emu, "work", "").await;
    let c = client(&emu);
    for i in 0..3 {
        send_script(&c, "work", &format!("w{i}"), "sleep:500").await;
    }
    let m = host.metrics();
    eventually("three calls in flight", Duration::from_secs(10), || {
        m.channel("work").in_flight.load(Ordering::Relaxed) == 3
    })
    .await;
    assert!(host.shutdown(Duration::from_secs(10)).await.drained);
    assert_eq!(emu.queue_counts("work").unwrap(), QueueCounts::default(), "all three completed");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_guest_configuration_adds_and_removes_channels() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("first"), queue("second"), queue("reports")]).await;
    let host = test_host(&emu, "first", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "first", "u1", "update:second").await;
    assert_eq!(reports.get("u1").await, ["update:second => ok"]);
    eventually("second is consumed and first is not", Duration::from_secs(10), || {
        host.channels().iter().map(|(ch, _)| ch.as_str()).collect::<Vec<_>>() == ["second"]
    })
    .await;
    send_script(&c, "second", "u2", "complete").await;
    assert_eq!(reports.get("u2").await, ["complete => ok"]);
    // A channel that does not exist is refused, and nothing changes.
    send_script(&c, "second", "u3", "update:nope").await;
    let lines = reports.get("u3").await;
    assert!(lines[0].starts_with("update:nope => err ErrorKind::NotFound"), "{lines:?}");
    assert_eq!(host.channels().len(), 1);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_and_named_connections_are_enforced() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("reports"), queue("elsewhere"), queue("forbidden")]).await;
    let host = test_host(&emu, "in", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "in", "a1", "send:forbidden;send:elsewhere;redirect:forbidden;connect:nope;connect:default").await;
    let lines = reports.get("a1").await;
    assert!(lines[0].starts_with("send:forbidden => err ErrorKind::NotAllowed"), "{lines:?}");
    assert_eq!(lines[1], "send:elsewhere => ok");
    assert!(lines[2].starts_with("redirect:forbidden => err ErrorKind::NotAllowed"), "{lines:?}");
    assert!(lines[3].starts_with("connect:nope => err ErrorKind::NotFound"), "{lines:?}");
    assert_eq!(lines[4], "connect:default => ok");
    assert_eq!(emu.queue_counts("forbidden").unwrap().active, 0, "nothing reached a channel outside the allow-list");
    assert_eq!(emu.queue_counts("elsewhere").unwrap().active, 1);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_resume_after_the_connection_drops_and_nothing_is_lost() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with("work", Duration::from_secs(2), 10), queue("reports")]).await;
    let host = test_host(&emu, "work", "").await;
    let c = client(&emu);
    for i in 0..10 {
        send_script(&c, "work", &format!("r{i}"), "sleep:100").await;
        if i == 4 {
            assert!(emu.drop_connections() >= 1, "the host's connection was dropped");
        }
    }
    eventually("all ten completed", Duration::from_secs(30), || {
        emu.queue_counts("work").unwrap() == QueueCounts::default()
    })
    .await;
    assert!(host.metrics().channel("work").completed.load(Ordering::Relaxed) >= 10);
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_can_pull_more_messages_and_they_follow_the_matrix() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("side"), queue("reports")]).await;
    let host = test_host(&emu, "in", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    c.sender("side").send(amqp_servicebus::Message::new("pulled")).await?;
    send_script(&c, "in", "p1", "pull:side").await;
    assert_eq!(reports.get("p1").await, ["pull:side => ok"]);
    eventually("the pulled message was completed", Duration::from_secs(5), || {
        emu.queue_counts("side").unwrap() == QueueCounts::default()
    })
    .await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_http() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let emu = emulator(vec![queue("in"), queue("reports")]).await;
    let host = test_host(&emu, "in", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "in", "m1", "complete").await;
    reports.get("m1").await;
    // The guest reports before its call ends; the call's latency is counted as it ends.
    let metrics = host.metrics();
    eventually("the call ended", Duration::from_secs(5), || {
        metrics.channel("in").in_flight.load(Ordering::Relaxed) == 0
    })
    .await;
    let (addr, server) = host_runtime::metrics::start("127.0.0.1:0".parse()?, host.metrics()).await?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("messaging_completed_total{channel=\"in\"} 1"), "{body}");
    assert!(body.contains("messaging_handler_seconds_count{channel=\"in\"} 1"), "{body}");
    server.abort();
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_host_takes_nothing_until_it_serves() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("work"), queue("reports")]).await;
    let c = client(&emu);
    send_script(&c, "work", "early", "complete").await;
    let config = host_runtime::config::HostConfig::parse(
        "[guest]\nallowed-targets = [\"reports\"]\nenv = { TEST_GUEST_CHANNELS = \"work\" }\n",
        "host.toml",
    )?;
    let prepared = host_runtime::Host::prepare(options(&emu, guest("test-guest"), config)).await?;
    // Loaded, configured, its channel checked, and no worker: a started host takes a waiting
    // message within milliseconds; this one leaves it where it is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(emu.queue_counts("work").unwrap(), QueueCounts { active: 1, ..Default::default() });
    let host = prepared.serve();
    eventually("the message is handled once the host serves", Duration::from_secs(10), || {
        emu.queue_counts("work").unwrap() == QueueCounts::default()
    })
    .await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_through_a_named_connection_reads_that_connection() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("reports")]).await;
    let audit = emulator(vec![queue("in")]).await;
    // A worker consumes "in" on the default connection; the guest pulls "in" through "audit".
    let extra = format!("[connections.audit]\nconnection-string = \"{}\"\n", audit.connection_string());
    let host = test_host(&emu, "in", &extra).await;
    client(&audit).sender("in").send(amqp_servicebus::Message::new("audit's")).await?;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "in", "p1", "pull:in@audit").await;
    let lines = reports.get("p1").await;
    assert_eq!(lines[0], "pull:in@audit => ok", "{lines:?}");
    assert_eq!(
        audit.queue_counts("in").unwrap(),
        QueueCounts::default(),
        "the pull took and completed audit's message, not one of the worker's"
    );
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    audit.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_calls_of_a_channel_an_update_removed() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("first"), queue("second"), queue("reports")]).await;
    let host = test_host(&emu, "first", "").await;
    let c = client(&emu);
    // The call that removes its own channel is still running when the host shuts down.
    send_script(&c, "first", "r1", "update:second;sleep:1500").await;
    eventually("the update removed first", Duration::from_secs(10), || {
        host.channels().iter().map(|(ch, _)| ch.as_str()).collect::<Vec<_>>() == ["second"]
    })
    .await;
    let report = host.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    // The call ended, and the host completed its message before closing the connection.
    assert_eq!(emu.queue_counts("first").unwrap(), QueueCounts::default());
    emu.shutdown().await;
    Ok(())
}
