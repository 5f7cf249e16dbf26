//! Transports: TLS with an extra CA (as on Azure's 5671), AMQP over WebSockets (plain, TLS, through
//! an HTTP proxy), and generic AMQP 1.0 mode.

use std::time::Duration;

use amqp_servicebus::{
    ClientOptions, Dialect, ErrorKind, HttpProxy, Message, RetryPolicy, ServiceBusClient, TransportType,
};
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
    let err = r.complete(&m).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockLost, "settled twice: {err}");
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

/// A self-signed certificate for `localhost`, written where the emulator can read it.
fn certificate() -> anyhow::Result<(rcgen::CertifiedKey<rcgen::KeyPair>, tempfile::TempDir)> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem())?;
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem())?;
    Ok((certified, dir))
}

/// Sends, receives and settles one message, and peeks through `$management`: every kind of
/// link, over whatever transport the client has.
async fn round_trip(c: &ServiceBusClient, body: &str) -> anyhow::Result<()> {
    c.sender("q").send(Message::new(body.to_string())).await?;
    let r = c.receiver("q");
    let m = r.receive(1, WAIT).await?.remove(0);
    assert_eq!(&m.body[..], body.as_bytes());
    assert_eq!(r.peek(m.sequence_number, 1).await?.len(), 1);
    r.complete(&m).await?;
    Ok(())
}

#[tokio::test]
async fn amqp_over_websockets_reaches_the_emulators_ws_and_wss_listeners() -> anyhow::Result<()> {
    let (certified, dir) = certificate()?;
    let any = "127.0.0.1:0".parse()?;
    let emu = Emulator::builder()
        .config(Config { queues: vec![queue("q")], ..Config::default() })
        .bind(any)
        .tls(dir.path().join("cert.pem"), dir.path().join("key.pem"), any)
        .websocket(any)
        .websocket_tls(any)
        .start()
        .await?;
    let websockets = ClientOptions { transport: TransportType::AmqpWebSockets, ..options() };

    // Plain, for the development emulator.
    let ws_port = emu.ws_addr().unwrap().port();
    let cs = emu.connection_string().replace(&emu.local_addr().port().to_string(), &ws_port.to_string());
    round_trip(&ServiceBusClient::new(&cs, websockets.clone())?, "over ws").await?;

    // With TLS, as on Azure's 443.
    let wss_port = emu.wss_addr().unwrap().port();
    let cs = format!(
        "Endpoint=sb://localhost:{wss_port}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE"
    );
    let with_ca = ClientOptions { extra_ca_pem: Some(certified.cert.pem().into_bytes()), ..websockets.clone() };
    round_trip(&ServiceBusClient::new(&cs, with_ca)?, "over wss").await?;

    // The WebSocket listener speaks only WebSockets: plain AMQP there fails the upgrade.
    let plain = ClientOptions { retry: RetryPolicy::none(), ..options() };
    let cs = emu.connection_string().replace(&emu.local_addr().port().to_string(), &ws_port.to_string());
    let err = ServiceBusClient::new(&cs, plain)?.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    emu.shutdown().await;
    Ok(())
}

/// An HTTP proxy that opens `CONNECT` tunnels for one user; counts the tunnels it opened.
async fn proxy(
    user: &'static str,
    password: &'static str,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use base64::Engine as _;
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let counter = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (expected, counter) = (expected.clone(), counter.clone());
            tokio::spawn(async move {
                let mut client = tokio::io::BufReader::new(client);
                let (mut target, mut authorized) = (String::new(), false);
                let mut line = String::new();
                while client.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some(t) = line.strip_prefix("CONNECT ") {
                        target = t.split_whitespace().next().unwrap_or_default().to_string();
                    }
                    if let Some(v) = line.strip_prefix("Proxy-Authorization: ") {
                        authorized = v.trim() == expected;
                    }
                    line.clear();
                }
                let mut client = client.into_inner();
                if !authorized {
                    let _ = client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, tunnels)
}

#[tokio::test]
async fn websockets_go_through_an_http_proxy_with_its_credentials() -> anyhow::Result<()> {
    let emu = Emulator::builder()
        .config(Config { queues: vec![queue("q")], ..Config::default() })
        .bind("127.0.0.1:0".parse()?)
        .websocket("127.0.0.1:0".parse()?)
        .start()
        .await?;
    let (proxy_addr, tunnels) = proxy("alice", "s3cret").await;
    let ws_port = emu.ws_addr().unwrap().port();
    let cs = emu.connection_string().replace(&emu.local_addr().port().to_string(), &ws_port.to_string());
    let through = |credentials: Option<(&str, &str)>| ClientOptions {
        transport: TransportType::AmqpWebSockets,
        http_proxy: Some(HttpProxy {
            host: proxy_addr.ip().to_string(),
            port: proxy_addr.port(),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
        }),
        retry: RetryPolicy::none(),
        ..options()
    };
    round_trip(&ServiceBusClient::new(&cs, through(Some(("alice", "s3cret"))))?, "through a proxy").await?;
    assert_eq!(tunnels.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection, one tunnel");

    let err = ServiceBusClient::new(&cs, through(None))?.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(
        !format!("{:?}", through(Some(("alice", "s3cret"))).http_proxy).contains("s3cret"),
        "the password is never printed"
    );

    // A proxy carries WebSockets only.
    let amqp = ClientOptions { transport: TransportType::Amqp, ..through(Some(("alice", "s3cret"))) };
    let err = ServiceBusClient::new(&cs, amqp)?.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConnectionString, "{err}");
    emu.shutdown().await;
    Ok(())
}
