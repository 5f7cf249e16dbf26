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

/// Found by the fuzzer: a frame whose data offset was 0 overflowed in the frame check.
#[tokio::test]
async fn a_frame_with_a_data_offset_outside_it_is_a_decode_error() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    for doff in [0u8, 1, 200] {
        let mut raw = Raw::connect(emulator.local_addr()).await;
        let mut out = BytesMut::new();
        out.put_slice(&AMQP_HEADER);
        frame(&mut out, 0, 0, &open(None));
        out.put_slice(&[0, 0, 0, 12, doff, 0, 0, 0, 0x00, 0x53, 0x11, 0x45]);
        raw.send(&out).await;
        assert_eq!(raw.header().await, AMQP_HEADER);
        assert!(matches!(raw.next_amqp().await, FrameBody::Open(_)));
        let answer = raw.next_amqp().await;
        assert!(decode_error(&answer), "doff {doff}: {answer:?}");
    }
    still_serves(&emulator).await?;
    emulator.shutdown().await;
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

async fn start_with(limits: servicebus_emulator::Limits) -> servicebus_emulator::Emulator {
    let config = servicebus_emulator::Config { queues: vec![queue("q")], ..Default::default() };
    servicebus_emulator::Emulator::builder()
        .config(config)
        .limits(limits)
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

fn close_condition(frame: &FrameBody) -> String {
    match frame {
        FrameBody::Close(c) => format!("{:?}", c.error.as_ref().map(|e| (&e.condition, &e.description))),
        other => panic!("expected close, got {other:?}"),
    }
}

fn end_condition(frame: &FrameBody) -> String {
    match frame {
        FrameBody::End(e) => format!("{:?}", e.error.as_ref().map(|e| (&e.condition, &e.description))),
        other => panic!("expected end, got {other:?}"),
    }
}

/// Begins a session on `channel` and checks the broker answers: the connection lives on.
async fn begins_again(raw: &mut Raw, channel: u16) {
    let mut out = BytesMut::new();
    frame(&mut out, 0, channel, &super::frames::begin());
    raw.send(&out).await;
    match raw.next_amqp().await {
        FrameBody::Begin(b) => assert_eq!(b.remote_channel, Some(channel)),
        other => panic!("expected begin, got {other:?}"),
    }
}

/// Writes `AMQP 0 1 0 0` and an `open` with this max-frame-size; reads the broker's header and open.
async fn opened(
    emulator: &servicebus_emulator::Emulator,
    max_frame: u32,
) -> (Raw, fe2o3_amqp::types::performatives::Open) {
    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &fe2o3_amqp::types::performatives::Open { max_frame_size: max_frame.into(), ..open(None) });
    raw.send(&out).await;
    assert_eq!(raw.header().await, AMQP_HEADER);
    match raw.next_amqp().await {
        FrameBody::Open(o) => (raw, o),
        other => panic!("{other:?}"),
    }
}

/// Finding 4: sockets that send nothing, or only a header, were kept forever.
#[tokio::test]
async fn a_peer_that_never_finishes_its_handshake_is_disconnected() {
    let limits =
        servicebus_emulator::Limits { handshake_timeout: std::time::Duration::from_millis(300), ..Default::default() };
    let emulator = start_with(limits).await;
    for sent in [&b""[..], &AMQP_HEADER[..]] {
        let mut raw = Raw::connect(emulator.local_addr()).await;
        raw.send(sent).await;
        if !sent.is_empty() {
            assert_eq!(raw.header().await, AMQP_HEADER);
        }
        let waited = std::time::Instant::now();
        assert!(raw.next().await.is_none(), "the broker ends the socket");
        // (`next` gives up after 5 s of silence too: the broker must have ended it well before.)
        assert!(waited.elapsed() < std::time::Duration::from_secs(3), "{:?}", waited.elapsed());
    }
    emulator.shutdown().await;
}

/// Finding 4: `open` advertised no idle-time-out, and silent peers were kept forever.
#[tokio::test]
async fn open_advertises_an_idle_timeout_and_a_silent_peer_is_closed() {
    let limits =
        servicebus_emulator::Limits { idle_timeout: std::time::Duration::from_millis(600), ..Default::default() };
    let emulator = start_with(limits).await;
    let (mut raw, open) = opened(&emulator, 65536).await;
    assert_eq!(open.idle_time_out, Some(600));
    assert_eq!(open.channel_max.0, 1023);
    let condition = close_condition(&raw.next_amqp().await);
    assert!(
        condition.contains("ConnectionForced") && condition.contains("inactive for more than the allowed 600"),
        "{condition}"
    );
    emulator.shutdown().await;
}

/// As the service does: a connection that puts no valid token within the timeout is closed.
#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed() {
    let limits = servicebus_emulator::Limits {
        authentication_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let emulator = start_with(limits).await;
    let (mut raw, _) = opened(&emulator, 65536).await;
    let condition = close_condition(&raw.next_amqp().await);
    assert!(condition.contains("UnauthorizedAccess") && condition.contains("within 0 s"), "{condition}");
    emulator.shutdown().await;
}

/// Finding 5: channel-max and handle-max were advertised and not enforced.
#[tokio::test]
async fn sessions_beyond_channel_max_close_the_connection_and_handles_beyond_handle_max_end_the_session() {
    let emulator = start(vec![queue("q")]).await;
    let (mut raw, _) = opened(&emulator, 65536).await;
    let mut out = BytesMut::new();
    frame(&mut out, 0, 2000, &super::frames::begin());
    raw.send(&out).await;
    let condition = close_condition(&raw.next_amqp().await);
    assert!(condition.contains("FramingError") && condition.contains("channel-max"), "{condition}");

    let (mut raw, _) = opened(&emulator, 65536).await;
    let mut out = BytesMut::new();
    frame(&mut out, 0, 0, &super::frames::begin());
    let attach = fe2o3_amqp::types::performatives::Attach {
        handle: fe2o3_amqp::types::definitions::Handle(5000),
        ..super::frames::receiver_attach("$cbs")
    };
    frame(&mut out, 0, 0, &attach);
    raw.send(&out).await;
    match raw.next_amqp().await {
        FrameBody::Begin(b) => assert_eq!(b.handle_max.0, 1023),
        other => panic!("{other:?}"),
    }
    let condition = end_condition(&raw.next_amqp().await);
    assert!(condition.contains("handle-max"), "{condition}");
    begins_again(&mut raw, 1).await;
    emulator.shutdown().await;
}

/// Finding 5: link names were stored and echoed at any size, and echoes ignored the peer's
/// max-frame-size.
#[tokio::test]
async fn long_names_are_refused_and_no_frame_exceeds_the_peers_max_frame_size() {
    let emulator = start(vec![queue("q")]).await;
    for (max_frame, name_len, expected, session_only) in
        [(65536, 1024 * 1024 - 512, "longer than the 1024 bytes", true), (512, 900, "max-frame-size of 512", false)]
    {
        let (mut raw, _) = opened(&emulator, max_frame).await;
        let mut out = BytesMut::new();
        frame(&mut out, 0, 0, &super::frames::begin());
        let attach = fe2o3_amqp::types::performatives::Attach {
            name: "n".repeat(name_len),
            ..super::frames::receiver_attach("$cbs")
        };
        frame(&mut out, 0, 0, &attach);
        raw.send(&out).await;
        assert!(matches!(raw.next_amqp().await, FrameBody::Begin(_)));
        if session_only {
            // The name is refused before anything echoes it: only its session ends.
            let condition = end_condition(&raw.next_amqp().await);
            assert!(condition.contains(expected), "{condition}");
            begins_again(&mut raw, 1).await;
        } else {
            // The broker's own echo cannot be sent: that is the connection's fault.
            let condition = close_condition(&raw.next_amqp().await);
            assert!(condition.contains(expected), "{condition}");
            assert!(raw.next().await.is_none());
        }
    }
    emulator.shutdown().await;
}

/// Finding 5: 200,000 links on one connection were accepted.
#[tokio::test]
async fn links_beyond_the_connections_limit_are_refused_one_by_one() {
    let limits = servicebus_emulator::Limits { max_links_per_connection: 3, ..Default::default() };
    let emulator = start_with(limits).await;
    let (mut raw, _) = opened(&emulator, 65536).await;
    let mut out = BytesMut::new();
    frame(&mut out, 0, 0, &super::frames::begin());
    for h in 0..4u32 {
        let attach = fe2o3_amqp::types::performatives::Attach {
            name: format!("cbs-{h}"),
            handle: fe2o3_amqp::types::definitions::Handle(h),
            ..super::frames::receiver_attach("$cbs")
        };
        frame(&mut out, 0, 0, &attach);
    }
    raw.send(&out).await;
    assert!(matches!(raw.next_amqp().await, FrameBody::Begin(_)));
    for _ in 0..3 {
        assert!(matches!(raw.next_amqp().await, FrameBody::Attach(a) if a.source.is_some()));
    }
    assert!(matches!(raw.next_amqp().await, FrameBody::Attach(a) if a.source.is_none()));
    match raw.next_amqp().await {
        FrameBody::Detach(d) => {
            let e = d.error.unwrap();
            assert_eq!(format!("{:?}", e.condition), "AmqpError(ResourceLimitExceeded)");
        }
        other => panic!("{other:?}"),
    }
    emulator.shutdown().await;
}

/// Finding 5: a peer that grants credit and never reads made the emulator buffer everything.
/// Past half the backlog limit, messages wait in their queue; they flow again once it reads.
#[tokio::test]
async fn messages_wait_in_the_queue_while_the_peer_does_not_read() {
    use fe2o3_amqp::types::performatives::{Begin, Flow};
    let limits = servicebus_emulator::Limits { max_write_backlog: 256 * 1024, ..Default::default() };
    let emulator = start_with(limits).await;
    let body = [0x00, 0x53, 0x75, 0xb0, 0x00, 0x00, 0x80, 0x00]
        .iter()
        .copied()
        .chain(std::iter::repeat_n(7u8, 32 * 1024))
        .collect::<Vec<_>>();
    const COUNT: usize = 1000; // 32 MB: far more than the kernel's socket buffers hold.
    for _ in 0..COUNT {
        assert!(emulator.enqueue_unchecked("q", &body));
    }
    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_slice(&super::frames::SASL_HEADER);
    let credentials = b"\0RootManageSharedAccessKey\0SAS_KEY_VALUE".to_vec();
    let init = fe2o3_amqp::types::sasl::SaslInit {
        mechanism: "PLAIN".into(),
        initial_response: Some(credentials.into()),
        hostname: None,
    };
    frame(&mut out, 1, 0, &init);
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(None));
    frame(&mut out, 0, 0, &Begin { incoming_window: u32::MAX, ..super::frames::begin() });
    frame(&mut out, 0, 0, &super::frames::receiver_attach("q"));
    let flow = Flow { incoming_window: u32::MAX, outgoing_window: u32::MAX, ..super::frames::flow(0, u32::MAX / 2) };
    frame(&mut out, 0, 0, &flow);
    raw.send(&out).await;
    // Not reading: the broker stops taking messages once its backlog is high.
    let mut last = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let locked = emulator.queue_counts("q").unwrap().locked;
        if locked == last {
            break;
        }
        last = locked;
    }
    let counts = emulator.queue_counts("q").unwrap();
    assert!(counts.active > COUNT / 2, "messages stay queued while the peer does not read: {counts:?}");
    // Reading: every message arrives.
    super::frames::read_handshake(&mut raw).await;
    let mut transfers = 0;
    while transfers < COUNT {
        match raw.next().await {
            Some(super::frames::Got::Amqp(f)) if matches!(*f, FrameBody::Transfer { .. }) => transfers += 1,
            Some(_) => {}
            None => panic!("the connection ended after {transfers} transfers"),
        }
    }
    assert_eq!(emulator.queue_counts("q").unwrap().locked, COUNT);
    emulator.shutdown().await;
}
