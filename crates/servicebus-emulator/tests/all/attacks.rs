//! Hostile input: each test is one finding of the security review, and fails without its fix.

use bytes::{BufMut as _, BytesMut};
use fe2o3_amqp::frames::amqp::FrameBody;
use fe2o3_amqp::types::messaging::DeliveryState;
use fe2o3_amqp::{Sender, Session};

use super::frames::{AMQP_HEADER, Raw, frame, open, send_raw};
use super::support::{queue, start};
use super::transactions::connect;

/// `count` described values, each the value of the one before (`00 53 01` …), ending in null.
pub(crate) fn nested_described(count: usize) -> Vec<u8> {
    let mut bytes = [0x00, 0x53, 0x01].repeat(count);
    bytes.push(0x40);
    bytes
}

/// `count` list32s, each the only element of the one before.
pub(crate) fn nested_lists(count: usize) -> Vec<u8> {
    let mut bytes = vec![0x40];
    for _ in 0..count {
        let mut outer = vec![0xd0];
        outer.extend_from_slice(&((bytes.len() + 4) as u32).to_be_bytes());
        outer.extend_from_slice(&1u32.to_be_bytes());
        outer.extend_from_slice(&bytes);
        bytes = outer;
    }
    bytes
}

/// A map32 of one symbol key `k` to `value` (raw bytes).
pub(crate) fn map_of(value: &[u8]) -> Vec<u8> {
    let mut map = vec![0xd1];
    map.extend_from_slice(&((value.len() + 4 + 3) as u32).to_be_bytes());
    map.extend_from_slice(&2u32.to_be_bytes());
    map.extend_from_slice(&[0xa3, 0x01, b'k']);
    map.extend_from_slice(value);
    map
}

/// A `begin` whose `properties` field is `properties` (raw bytes).
fn begin_with_properties(properties: &[u8]) -> Vec<u8> {
    // remote-channel null, next-outgoing-id 0, windows 100, handle-max null, capabilities null.
    let mut fields = vec![0x40, 0x43, 0x52, 100, 0x52, 100, 0x40, 0x40, 0x40];
    fields.extend_from_slice(properties);
    let mut body = vec![0x00, 0x53, 0x11, 0xd0];
    body.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    body.extend_from_slice(&8u32.to_be_bytes());
    body.extend_from_slice(&fields);
    body
}

/// Sends the header, an `open`, then a raw frame body on channel 0; returns what the broker answers.
async fn send_after_open(emulator: &servicebus_emulator::Emulator, body: &[u8]) -> FrameBody {
    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(None));
    out.put_u32(8 + body.len() as u32);
    out.put_slice(&[2, 0, 0, 0]);
    out.put_slice(body);
    raw.send(&out).await;
    assert_eq!(raw.header().await, AMQP_HEADER);
    assert!(matches!(raw.next_amqp().await, FrameBody::Open(_)));
    let answer = raw.next_amqp().await;
    assert!(raw.next().await.is_none(), "the broker closes the socket after close");
    answer
}

async fn still_serves(emulator: &servicebus_emulator::Emulator) -> anyhow::Result<()> {
    let mut connection = connect(emulator, "after").await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "s", "q").await?;
    assert!(sender.send("still alive").await?.is_accepted());
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    Ok(())
}

fn decode_error(answer: &FrameBody) -> bool {
    matches!(answer, FrameBody::Close(c) if format!("{:?}", c.error.as_ref().map(|e| &e.condition)).contains("DecodeError"))
}

/// Finding 1: one unauthenticated `begin` with nesting in its properties aborted the process.
#[tokio::test]
async fn a_deeply_nested_begin_closes_its_connection_and_nothing_else() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    for properties in [map_of(&nested_described(400)), map_of(&nested_lists(300)), map_of(&nested_described(100_000))] {
        let answer = send_after_open(&emulator, &begin_with_properties(&properties)).await;
        assert!(decode_error(&answer), "{answer:?}");
    }
    still_serves(&emulator).await?;
    emulator.shutdown().await;
    Ok(())
}

/// Finding 9: `c1 00 00` (a map too small for its own count) overflowed inside serde_amqp.
#[tokio::test]
async fn a_map_too_small_for_its_count_is_a_decode_error() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    let answer = send_after_open(&emulator, &begin_with_properties(&[0xc1, 0x00, 0x00])).await;
    assert!(decode_error(&answer), "{answer:?}");
    still_serves(&emulator).await?;
    // The dead connection is gone from the registry (shutdown does not wait for it).
    let started = std::time::Instant::now();
    emulator.shutdown().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    Ok(())
}

/// Findings 2 and 3: messages nested too deeply are refused when sent, so no receiver ever decodes one.
#[tokio::test]
async fn a_message_nested_too_deeply_is_rejected_and_not_stored() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    let mut value_body = vec![0x00, 0x53, 0x77];
    value_body.extend_from_slice(&nested_lists(5000));
    let mut descriptors = vec![0x00, 0x53, 0x75];
    descriptors.extend(std::iter::repeat_n(0x00, 5000));
    let mut annotations = vec![0x00, 0x53, 0x72];
    annotations.extend_from_slice(&map_of(&nested_described(1000)));
    for payload in [value_body, descriptors, annotations] {
        match send_raw(&emulator, "q", &payload).await {
            Some(DeliveryState::Rejected(r)) => {
                let e = r.error.unwrap();
                assert_eq!(format!("{:?}", e.condition), "AmqpError(DecodeError)");
            }
            other => panic!("expected rejected, got {other:?}"),
        }
    }
    assert_eq!(emulator.queue_counts("q").unwrap().active, 0);
    still_serves(&emulator).await?;
    emulator.shutdown().await;
    Ok(())
}
