//! Transports: TLS with an extra CA (as on Azure's 5671), and generic AMQP 1.0 mode.

use std::time::Duration;

use amqp_servicebus::{ClientOptions, Dialect, ErrorKind, Message, RetryPolicy, ServiceBusClient};
use servicebus_emulator::{Config, Emulator, QueueCounts};

use super::support::{WAIT, options, queue};

#[tokio::test]
async fn tls_with_an_extra_ca_reaches_the_emulators_tls_listener() -> anyhow::Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem())?;
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem())?;
    let emu = Emulator::builder()
        .config(Config { queues: vec![queue("q")], ..Config::default() })
        .bind("127.0.0.1:0".parse()?)
        .tls(dir.path().join("cert.pem"), dir.path().join("key.pem"), "127.0.0.1:0".parse()?)
        .start()
        .await?;
    let port = emu.tls_addr().unwrap().port();
    // No UseDevelopmentEmulator: TLS, as for Azure.
    let cs = format!(
        "Endpoint=sb://localhost:{port}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE"
    );
    let c = ServiceBusClient::new(
        &cs,
        ClientOptions { extra_ca_pem: Some(certified.cert.pem().into_bytes()), ..options() },
    )?;
    assert!(c.settings().uses_tls());
    c.sender("q").send(Message::new("over tls")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    assert_eq!(&m.body[..], b"over tls");
    r.complete(&m).await?;

    // Without the CA the certificate is not trusted.
    let untrusted =
        ServiceBusClient::new(&cs, ClientOptions { retry: RetryPolicy::none(), ..ClientOptions::default() })?;
    let err = untrusted.sender("q").send(Message::new("x")).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Connection && err.to_string().contains("TLS"), "{err}");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn generic_amqp_mode_uses_sasl_plain_and_link_settlement() -> anyhow::Result<()> {
    let emu = super::support::emulator(vec![queue("q")]).await;
    let c =
        ServiceBusClient::new(&emu.connection_string(), ClientOptions { dialect: Dialect::GenericAmqp, ..options() })?;
    c.sender("q").send(Message::new("plain")).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    assert_eq!(&m.body[..], b"plain");
    r.complete(&m).await?;
    // The link settlement is not confirmed; give it a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default());
    // The other outcomes go on the link too: abandon (modified, delivery failed), dead-letter (rejected).
    c.sender("q").send(Message::new("twice")).await?;
    let m = r.receive(1, WAIT).await?.remove(0);
    r.abandon(&m, Default::default()).await?;
    let m = r.receive(1, WAIT).await?.remove(0);
    assert_eq!((&m.body[..], m.delivery_count), (&b"twice"[..], 1), "redelivered after one failed delivery");
    r.dead_letter(&m, "", "").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(emu.queue_counts("q").unwrap(), QueueCounts { dead_lettered: 1, ..Default::default() });
    // A message of a link that was taken out of use can no longer be settled.
    c.sender("q").send(Message::new("orphan")).await?;
    let m = r.receive(1, WAIT).await?.remove(0);
    r.close().await;
    let err = r.complete(&m).await.unwrap_err();
    assert!(err.kind() == ErrorKind::LockLost, "{err}");
    // No $management in this mode.
    let err = r.peek(1, 1).await.unwrap_err();
    assert!(err.kind() == ErrorKind::NotSupported, "{err}");
    emu.shutdown().await;
    Ok(())
}
