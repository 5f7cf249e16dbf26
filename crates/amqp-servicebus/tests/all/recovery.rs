//! Recovery: connection loss, and token refresh on long-lived links.

use std::time::Duration;

use amqp_servicebus::{ClientOptions, ErrorKind, Message, ServiceBusClient};

use super::support::{WAIT, client, emulator, options, queue_with_lock};

#[tokio::test]
async fn after_a_dropped_connection_links_come_back_and_held_locks_are_lost() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with_lock("q", Duration::from_secs(1))]).await;
    let c = client(&emu);
    let sender = c.sender("q");
    let receiver = c.receiver("q");
    sender.send(Message::new("before")).await?;
    let held = receiver.receive(1, WAIT).await?.remove(0);

    assert_eq!(emu.drop_connections(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The lock died with the link: reported, not dropped.
    let err = receiver.complete(&held).await.unwrap_err();
    assert!(err.kind() == ErrorKind::LockLost, "{err}");
    // Senders and receivers carry on without being rebuilt.
    sender.send(Message::new("after")).await?;
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let got = receiver.receive(2, WAIT).await?;
        assert!(!got.is_empty(), "got only {bodies:?}");
        for m in got {
            if &m.body[..] == b"before" {
                assert_eq!(m.delivery_count, 1, "redelivered once its lock expired");
            }
            receiver.complete(&m).await?;
            bodies.push(String::from_utf8(m.body.to_vec())?);
        }
    }
    bodies.sort();
    assert_eq!(bodies, ["after", "before"]);
    assert_eq!(sender.links_attached(), 2);
    assert_eq!(receiver.links_attached(), 2);
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sends_retry_through_repeated_drops() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with_lock("q", Duration::from_secs(30))]).await;
    let c = client(&emu);
    let sender = c.sender("q");
    for i in 0..20 {
        if i % 5 == 4 {
            emu.drop_connections();
        }
        sender.send(Message::new(format!("{i}"))).await?;
    }
    assert_eq!(emu.queue_counts("q").unwrap().active, 20, "every send landed exactly once");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_long_lived_link_keeps_working_across_token_refreshes() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with_lock("q", Duration::from_secs(60))]).await;
    keeps_working_across_token_refreshes(&emu.connection_string(), options()).await?;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn tokens_are_refreshed_over_tls_websockets_too() -> anyhow::Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem())?;
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem())?;
    let any = "127.0.0.1:0".parse()?;
    let emu = servicebus_emulator::Emulator::builder()
        .config(servicebus_emulator::Config {
            queues: vec![queue_with_lock("q", Duration::from_secs(60))],
            ..Default::default()
        })
        .bind(any)
        .tls(dir.path().join("cert.pem"), dir.path().join("key.pem"), any)
        .websocket_tls(any)
        .start()
        .await?;
    let port = emu.wss_addr().unwrap().port();
    let cs = format!(
        "Endpoint=sb://localhost:{port}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE"
    );
    let options = ClientOptions {
        transport: amqp_servicebus::TransportType::AmqpWebSockets,
        extra_ca_pem: Some(certified.cert.pem().into_bytes()),
        ..options()
    };
    keeps_working_across_token_refreshes(&cs, options).await?;
    emu.shutdown().await;
    Ok(())
}

/// Tokens live 3 s, and the emulator detaches links whose token lapsed: links that keep
/// working for 8 s, without being attached again, had their tokens renewed.
async fn keeps_working_across_token_refreshes(cs: &str, options: ClientOptions) -> anyhow::Result<()> {
    let c = ServiceBusClient::new(cs, ClientOptions { token_lifetime: Duration::from_secs(3), ..options })?;
    let sender = c.sender("q");
    let receiver = c.receiver("q");
    sender.send(Message::new("held")).await?;
    let held = receiver.receive(1, WAIT).await?.remove(0);
    for i in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sender.send(Message::new(format!("{i}"))).await?;
        let m = receiver.receive(1, WAIT).await?.remove(0);
        receiver.complete(&m).await?;
    }
    // Still the same links: no token lapsed, so nothing was detached and re-attached.
    receiver.complete(&held).await?;
    assert_eq!(receiver.links_attached(), 1);
    assert_eq!(sender.links_attached(), 1);
    Ok(())
}

/// A caller may drop any operation at any await (a handler's deadline does): a link attach or a
/// session accept cut short must not take the connection, and the locks on it, down with it.
#[tokio::test]
async fn operations_dropped_midway_leave_the_connection_and_its_locks_alone() -> anyhow::Result<()> {
    let emu = emulator(vec![
        queue_with_lock("held", Duration::from_secs(60)),
        queue_with_lock("other", Duration::from_secs(60)),
        super::support::session_queue("sessions", Duration::from_secs(60)),
    ])
    .await;
    let c = client(&emu);
    c.sender("held").send(Message::new("keep my lock")).await?;
    let holder = c.receiver("held");
    let held = holder.receive(1, WAIT).await?.remove(0);
    for i in 0..60u64 {
        let cut = Duration::from_micros(100 * (i % 20));
        let sender = c.sender("other");
        let _ = tokio::time::timeout(cut, sender.send(Message::new("maybe"))).await;
        let receiver = c.receiver("other");
        let _ = tokio::time::timeout(cut, receiver.receive(1, Duration::from_millis(50))).await;
        let accept = c.accept_next_session("sessions", Default::default());
        let _ = tokio::time::timeout(cut, accept).await;
        // A `$management` pair attached for a fresh receiver.
        let _ = tokio::time::timeout(cut, c.receiver("other").peek(1, 1)).await;
    }
    holder.complete(&held).await?;
    assert_eq!(emu.queue_counts("held").unwrap(), Default::default());
    emu.shutdown().await;
    Ok(())
}

/// A connection lost in the middle of `complete_and_send` ends that transaction at once (fe2o3's
/// controller never answers a declare or discharge whose connection died), and the receiver's
/// next transaction goes through.
#[tokio::test]
async fn a_transaction_cut_by_a_lost_connection_ends_and_the_next_one_goes_through() -> anyhow::Result<()> {
    let emu =
        emulator(vec![queue_with_lock("q", Duration::from_secs(1)), queue_with_lock("out", Duration::from_secs(60))])
            .await;
    let c = client(&emu);
    let (sender, out, receiver) = (c.sender("q"), c.sender("out"), c.receiver("q"));
    for i in 0..6u64 {
        sender.send(Message::new(format!("m{i}"))).await?;
        let m = receiver.receive(1, WAIT).await?.remove(0);
        let cut = async {
            tokio::time::sleep(Duration::from_micros(500 * i)).await;
            emu.drop_connections();
        };
        // Bounded well below the operation timeout: a cut transaction must not wait for it.
        let settled = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(receiver.complete_and_send(&m, &out, Message::new(format!("copy {i}"))), cut).0
        })
        .await;
        assert!(settled.is_ok(), "round {i}: the transaction hung after the connection was lost");
    }
    // Whatever was cut comes back once its lock expires; every message ends up moved, once or more.
    let m = loop {
        let got = receiver.receive(1, WAIT).await?;
        if let Some(m) = got.into_iter().next() {
            break m;
        }
    };
    receiver.complete_and_send(&m, &out, Message::new("after")).await?;
    emu.shutdown().await;
    Ok(())
}
