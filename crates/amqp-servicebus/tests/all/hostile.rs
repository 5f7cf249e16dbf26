//! What a broker sends cannot crash the client: nesting that would overflow a recursive
//! decoder costs one message (dead-lettered) or one connection (a broken broker), never
//! the process.

use std::time::Duration;

use amqp_servicebus::Message;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::support::{WAIT, client, emulator, queue};

/// An `amqp-value` body section holding `depth` list32s, each the only element of the one before.
fn nested_value_body(depth: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(3 + depth * 9 + 1);
    bytes.extend_from_slice(&[0x00, 0x53, 0x77]);
    for level in 0..depth {
        let size = 4 + 9 * (depth - 1 - level) + 1;
        bytes.push(0xd0);
        bytes.extend_from_slice(&(size as u32).to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
    }
    bytes.push(0x40);
    bytes
}

#[tokio::test]
async fn a_message_nested_too_deeply_is_dead_lettered_alone_and_the_link_goes_on() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    c.sender("q").send(Message::new("before")).await?;
    // 45 KB in one frame; 2.3 MB over three frames of the client's 1 MiB.
    assert!(emu.enqueue_unchecked("q", &nested_value_body(5_000)));
    assert!(emu.enqueue_unchecked("q", &nested_value_body(250_000)));
    c.sender("q").send(Message::new("after")).await?;

    let r = c.receiver("q");
    let mut bodies = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while bodies.len() < 2 && tokio::time::Instant::now() < deadline {
        for m in r.receive(10, Duration::from_millis(500)).await? {
            bodies.push(String::from_utf8(m.body.to_vec())?);
            r.complete(&m).await?;
        }
    }
    assert_eq!(bodies, ["before", "after"]);

    // Both went to the dead-letter queue, each on its own; nothing else did.
    let dead = emu.queue_counts("q/$DeadLetterQueue").unwrap();
    assert_eq!(dead.active, 2, "{dead:?}");
    let counts = emu.queue_counts("q").unwrap();
    assert_eq!((counts.active, counts.locked, counts.dead_lettered), (0, 0, 2), "{counts:?}");
    c.close().await;
    emu.shutdown().await;
    Ok(())
}

fn frame(out: &mut Vec<u8>, frame_type: u8, body: &[u8]) {
    out.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
    out.extend_from_slice(&[2, frame_type, 0, 0]);
    out.extend_from_slice(body);
}

/// A broker that answers SASL, then sends an `open` with 100,000 nested described values
/// in its properties.
async fn hostile_broker() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8];
                socket.read_exact(&mut buf).await?;
                let mut out = b"AMQP\x03\x01\x00\x00".to_vec();
                let mechanisms = SaslMechanisms { sasl_server_mechanisms: Array(vec![Symbol::from("ANONYMOUS")]) };
                frame(&mut out, 1, &serde_amqp::to_vec(&mechanisms).unwrap());
                socket.write_all(&out).await?;
                let mut size = [0u8; 4];
                socket.read_exact(&mut size).await?;
                let mut init = vec![0u8; u32::from_be_bytes(size) as usize - 4];
                socket.read_exact(&mut init).await?;
                let mut out = Vec::new();
                let outcome = SaslOutcome { code: SaslCode::Ok, additional_data: None };
                frame(&mut out, 1, &serde_amqp::to_vec(&outcome).unwrap());
                socket.write_all(&out).await?;
                socket.read_exact(&mut buf).await?;
                // open: container-id "x", then properties (field 9) = { k: <nested> }.
                let mut nested = [0x00, 0x53, 0x01].repeat(100_000);
                nested.push(0x40);
                let mut map = vec![0xd1];
                map.extend_from_slice(&((nested.len() + 7) as u32).to_be_bytes());
                map.extend_from_slice(&2u32.to_be_bytes());
                map.extend_from_slice(&[0xa3, 0x01, b'k']);
                map.extend_from_slice(&nested);
                let mut fields = vec![0xa1, 0x01, b'x'];
                fields.extend(std::iter::repeat_n(0x40, 8));
                fields.extend_from_slice(&map);
                let mut open = vec![0x00, 0x53, 0x10, 0xd0];
                open.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
                open.extend_from_slice(&10u32.to_be_bytes());
                open.extend_from_slice(&fields);
                let mut out = b"AMQP\x00\x01\x00\x00".to_vec();
                frame(&mut out, 0, &open);
                socket.write_all(&out).await?;
                let mut rest = Vec::new();
                let _ = socket.read_to_end(&mut rest).await;
                std::io::Result::Ok(())
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_broker_sending_a_deeply_nested_frame_fails_the_connection_not_the_process() -> anyhow::Result<()> {
    let addr = hostile_broker().await;
    let cs = format!("Endpoint=sb://{addr};SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true");
    let c = amqp_servicebus::ServiceBusClient::new(&cs, super::support::options())?;
    let sent = tokio::time::timeout(Duration::from_secs(30), c.sender("q").send(Message::new("x"))).await?;
    // fe2o3 reports the refusal as the transport ending; the guard logs what it refused.
    let error = sent.expect_err("the connection cannot open");
    assert!(error.to_string().contains("opening the AMQP connection"), "{error}");
    Ok(())
}

/// Finding 9: a connection string's token with `se=18446744073709551614` made the client
/// overflow when it turned the expiry into a timestamp (a panic in debug builds).
#[tokio::test]
async fn a_token_that_expires_past_any_timestamp_is_used_as_never_expiring() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let addr = emu.local_addr();
    let token = amqp_servicebus::sas::token(
        &format!("sb://{addr}/"),
        servicebus_emulator::auth::DEFAULT_KEY_NAME,
        servicebus_emulator::auth::DEFAULT_KEY_VALUE,
        18_446_744_073_709_551_614,
    );
    let cs = format!("Endpoint=sb://{addr};SharedAccessSignature={token};UseDevelopmentEmulator=true");
    let c = amqp_servicebus::ServiceBusClient::new(&cs, super::support::options())?;
    c.sender("q").send(Message::new("x")).await?;
    assert_eq!(emu.queue_counts("q").unwrap().active, 1);
    c.close().await;
    emu.shutdown().await;
    Ok(())
}
