//! The engine at frame level, over a raw TCP socket: pipelining, heartbeats,
//! refusals, and malformed input.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, BytesMut};
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, Source, Target};
use fe2o3_amqp::types::performatives::{Attach, Begin, Disposition, Flow, Open, Transfer};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::types::sasl::SaslInit;
use fe2o3_amqp::{Receiver, Sender, Session};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder as _;

use super::support::{queue, start};
use super::transactions::connect;

pub(crate) const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
pub(crate) const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

pub(crate) fn frame<T: Serialize>(out: &mut BytesMut, frame_type: u8, channel: u16, body: &T) {
    let encoded = serde_amqp::to_vec(body).unwrap();
    out.put_u32(8 + encoded.len() as u32);
    out.put_slice(&[2, frame_type]);
    out.put_u16(channel);
    out.put_slice(&encoded);
}

/// A raw client: writes bytes, reads headers and frames.
pub(crate) struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

#[derive(Debug)]
pub(crate) enum Got {
    Sasl(BytesMut),
    Amqp(Box<FrameBody>),
}

impl Raw {
    pub(crate) async fn connect(addr: std::net::SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf)).await;
            match read {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => {}
            }
        }
        true
    }

    pub(crate) async fn header(&mut self) -> [u8; 8] {
        assert!(self.fill(8).await, "no protocol header");
        let mut h = [0u8; 8];
        self.buf.copy_to_slice(&mut h);
        h
    }

    /// The next frame's bytes after its size, or `None` when the socket closes.
    async fn next_bytes(&mut self) -> Option<BytesMut> {
        if !self.fill(4).await {
            return None;
        }
        let size = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
        if !self.fill(size).await {
            return None;
        }
        self.buf.advance(4);
        Some(self.buf.split_to(size - 4))
    }

    /// The next frame, or `None` when the socket closes.
    pub(crate) async fn next(&mut self) -> Option<Got> {
        let mut body = self.next_bytes().await?;
        if body[1] == 1 {
            return Some(Got::Sasl(body));
        }
        let f = (FrameDecoder {}).decode(&mut body).unwrap().unwrap();
        Some(Got::Amqp(Box::new(f.body)))
    }

    /// The next AMQP frame with its channel, or `None` when the socket closes.
    pub(crate) async fn next_on_channel(&mut self) -> Option<(u16, FrameBody)> {
        let mut body = self.next_bytes().await?;
        let f = (FrameDecoder {}).decode(&mut body).unwrap().unwrap();
        Some((f.channel, f.body))
    }

    pub(crate) async fn next_amqp(&mut self) -> FrameBody {
        match self.next().await {
            Some(Got::Amqp(b)) => *b,
            other => panic!("expected an AMQP frame, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        assert!(self.try_send(bytes).await, "the peer is gone");
    }

    /// Writes `bytes`; false if the connection is gone.
    pub(crate) async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }
}

pub(crate) fn open(idle_ms: Option<u32>) -> Open {
    Open {
        container_id: "raw".into(),
        hostname: None,
        max_frame_size: 65536u32.into(),
        channel_max: 10u16.into(),
        idle_time_out: idle_ms,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

pub(crate) fn begin() -> Begin {
    Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: Handle(10),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

pub(crate) fn receiver_attach(address: &str) -> Attach {
    Attach {
        name: "raw-receiver".into(),
        handle: Handle(0),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::Second,
        source: Some(Box::new(Source::builder().address(address).build())),
        target: Some(Box::new(Target::builder().address("raw-target").build().into())),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

/// A client sender's attach to `address` (handle 0), unsettled, with an initial delivery count.
pub(crate) fn sender_attach(address: &str) -> Attach {
    Attach {
        name: "raw-sender".into(),
        role: Role::Sender,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source::builder().address("raw-source").build())),
        target: Some(Box::new(Target::builder().address(address).build().into())),
        initial_delivery_count: Some(0),
        ..receiver_attach(address)
    }
}

/// A receiver link's flow on `handle` granting `credit`, with session windows of 10,000.
pub(crate) fn flow(handle: u32, credit: u32) -> Flow {
    Flow {
        next_incoming_id: Some(0),
        incoming_window: 10_000,
        next_outgoing_id: 0,
        outgoing_window: 10_000,
        handle: Some(Handle(handle)),
        delivery_count: Some(0),
        link_credit: Some(credit),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    }
}

/// A receiver's unsettled `accepted` for `delivery_id` (a completion the broker echoes).
pub(crate) fn accept(delivery_id: u32) -> Disposition {
    Disposition {
        role: Role::Receiver,
        first: delivery_id,
        last: None,
        settled: false,
        state: Some(DeliveryState::Accepted(Accepted {})),
        batchable: false,
    }
}

/// SASL ANONYMOUS, AMQP header, open, begin and attach, all written before reading anything.
pub(crate) fn pipelined(attach: &Attach, idle_ms: Option<u32>) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(&SASL_HEADER);
    let init = SaslInit { mechanism: "ANONYMOUS".into(), initial_response: Some(Binary::from(vec![])), hostname: None };
    frame(&mut out, 1, 0, &init);
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(idle_ms));
    frame(&mut out, 0, 0, &begin());
    frame(&mut out, 0, 0, attach);
    out
}

/// SASL PLAIN with the default key, the AMQP header and `open`, ready to write.
pub(crate) fn plain_preamble() -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(&SASL_HEADER);
    let credentials = b"\0RootManageSharedAccessKey\0SAS_KEY_VALUE".to_vec();
    let init =
        SaslInit { mechanism: "PLAIN".into(), initial_response: Some(Binary::from(credentials)), hostname: None };
    frame(&mut out, 1, 0, &init);
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(None));
    out
}

/// An unsettled transfer on `handle`; `delivery_id` (and a tag) for a delivery's first frame.
pub(crate) fn transfer(handle: u32, delivery_id: Option<u32>, more: bool) -> Transfer {
    Transfer {
        handle: Handle(handle),
        delivery_id,
        delivery_tag: delivery_id.map(|id| id.to_be_bytes().to_vec().into()),
        message_format: Some(0),
        settled: Some(false),
        more,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

/// Appends a transfer frame carrying `payload`.
pub(crate) fn transfer_frame(out: &mut BytesMut, channel: u16, transfer: &Transfer, payload: &[u8]) {
    let encoded = serde_amqp::to_vec(transfer).unwrap();
    out.put_u32((8 + encoded.len() + payload.len()) as u32);
    out.put_slice(&[2, 0]);
    out.put_u16(channel);
    out.put_slice(&encoded);
    out.put_slice(payload);
}

/// Reads the handshake replies: SASL header, mechanisms, outcome, AMQP header, open, begin.
pub(crate) async fn read_handshake(raw: &mut Raw) {
    read_handshake_without_begin(raw).await;
    assert!(matches!(raw.next_amqp().await, FrameBody::Begin(b) if b.remote_channel == Some(0)));
}

/// Reads the handshake replies up to the broker's open.
pub(crate) async fn read_handshake_without_begin(raw: &mut Raw) {
    assert_eq!(raw.header().await, SASL_HEADER);
    assert!(matches!(raw.next().await, Some(Got::Sasl(_))), "sasl-mechanisms");
    match raw.next().await {
        Some(Got::Sasl(b)) => assert_eq!(&b[4..7], &[0x00, 0x53, 0x44], "sasl-outcome"),
        other => panic!("expected sasl-outcome, got {other:?}"),
    }
    assert_eq!(raw.header().await, AMQP_HEADER);
    assert!(matches!(raw.next_amqp().await, FrameBody::Open(_)));
}

#[tokio::test]
async fn a_pipelined_handshake_is_answered_in_order_and_an_unauthorized_attach_refused() {
    let emulator = start(vec![queue("q")]).await;
    let mut raw = Raw::connect(emulator.local_addr()).await;
    raw.send(&pipelined(&receiver_attach("q"), None)).await;
    read_handshake(&mut raw).await;
    // No token was put on $cbs: attach with a null source, then detach with unauthorized-access.
    match raw.next_amqp().await {
        FrameBody::Attach(a) => assert!(a.source.is_none(), "{a:?}"),
        other => panic!("{other:?}"),
    }
    match raw.next_amqp().await {
        FrameBody::Detach(d) => {
            assert!(d.closed);
            assert_eq!(format!("{:?}", d.error.unwrap().condition), "AmqpError(UnauthorizedAccess)");
        }
        other => panic!("{other:?}"),
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_unknown_entity_is_not_found() {
    let emulator = start(vec![queue("q")]).await;
    let mut raw = Raw::connect(emulator.local_addr()).await;
    raw.send(&pipelined(&receiver_attach("amqps://127.0.0.1/nope"), None)).await;
    read_handshake(&mut raw).await;
    assert!(matches!(raw.next_amqp().await, FrameBody::Attach(_)));
    match raw.next_amqp().await {
        FrameBody::Detach(d) => {
            let e = d.error.unwrap();
            assert_eq!(format!("{:?}", e.condition), "AmqpError(NotFound)");
            assert!(e.description.unwrap().contains("'nope'"));
        }
        other => panic!("{other:?}"),
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn heartbeats_honour_the_peers_idle_timeout() {
    let emulator = start(vec![queue("q")]).await;
    let mut raw = Raw::connect(emulator.local_addr()).await;
    // The handshake, then an attach that is refused: the connection stays open and idle.
    raw.send(&pipelined(&receiver_attach("q"), Some(1000))).await;
    read_handshake(&mut raw).await;
    let _attach = raw.next_amqp().await;
    let _detach = raw.next_amqp().await;
    // With a 1 s idle timeout the broker must send something at least every ~0.5-1 s.
    let start = tokio::time::Instant::now();
    assert!(matches!(raw.next_amqp().await, FrameBody::Empty), "an empty frame keeps the connection alive");
    assert!(start.elapsed() < Duration::from_millis(1100), "{:?}", start.elapsed());
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_connection_with_decode_error() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    // A healthy client, before and after.
    let mut good = connect(&emulator, "good").await?;
    let mut session = Session::begin(&mut good).await?;
    let mut sender = Sender::attach(&mut session, "s", "q").await?;
    sender.send("before").await?;

    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(None));
    // A frame whose body is a described type with a descriptor no performative has.
    out.put_u32(8 + 4);
    out.put_slice(&[2, 0, 0, 0, 0x00, 0x53, 0x7f, 0x45]);
    raw.send(&out).await;
    assert_eq!(raw.header().await, AMQP_HEADER);
    assert!(matches!(raw.next_amqp().await, FrameBody::Open(_)));
    match raw.next_amqp().await {
        FrameBody::Close(c) => assert_eq!(format!("{:?}", c.error.unwrap().condition), "AmqpError(DecodeError)"),
        other => panic!("expected close, got {other:?}"),
    }
    assert!(raw.next().await.is_none(), "the broker closes the socket after close");

    sender.send("after").await?;
    let mut receiver = Receiver::attach(&mut session, "r", "q").await?;
    for expected in ["before", "after"] {
        let d = receiver.recv::<String>().await?;
        assert_eq!(d.body(), expected);
        receiver.accept(&d).await?;
    }
    receiver.close().await?;
    sender.close().await?;
    session.end().await?;
    good.close().await?;
    emulator.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn garbage_instead_of_a_protocol_header_is_answered_and_closed() {
    let emulator = start(vec![queue("q")]).await;
    let mut raw = Raw::connect(emulator.local_addr()).await;
    raw.send(b"GET / HTTP/1.1\r\n\r\n").await;
    // The broker answers with the header it speaks, then closes.
    assert_eq!(raw.header().await, SASL_HEADER);
    assert!(raw.next().await.is_none());
    emulator.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_close_to_open_connections() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(None));
    raw.send(&out).await;
    assert_eq!(raw.header().await, AMQP_HEADER);
    assert!(matches!(raw.next_amqp().await, FrameBody::Open(_)));
    let stopping = tokio::spawn(emulator.shutdown());
    match raw.next_amqp().await {
        FrameBody::Close(c) => {
            assert_eq!(format!("{:?}", c.error.unwrap().condition), "ConnectionError(ConnectionForced)")
        }
        other => panic!("expected close, got {other:?}"),
    }
    stopping.await?;
    Ok(())
}

#[tokio::test]
async fn the_drop_hook_cuts_connections_without_close_and_counts_stay_readable() -> anyhow::Result<()> {
    let emulator = start(vec![queue("q")]).await;
    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_slice(&AMQP_HEADER);
    frame(&mut out, 0, 0, &open(None));
    raw.send(&out).await;
    assert_eq!(raw.header().await, AMQP_HEADER);
    assert!(matches!(raw.next_amqp().await, FrameBody::Open(_)));
    assert_eq!(emulator.connection_count(), 1);
    assert_eq!(emulator.drop_connections(), 1);
    // No close frame: the socket just ends.
    assert!(raw.next().await.is_none());
    for _ in 0..100 {
        if emulator.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(emulator.connection_count(), 0);
    assert_eq!(emulator.queue_counts("q"), Some(servicebus_emulator::QueueCounts::default()));
    assert_eq!(emulator.queue_counts("nope"), None);
    emulator.shutdown().await;
    Ok(())
}

/// Sends one message of `size` bytes to `queue` on a raw SASL PLAIN connection and checks
/// that the broker itself rejects it with `amqp:link:message-size-exceeded`.
pub(crate) async fn send_raw_oversized(emulator: &servicebus_emulator::Emulator, queue: &str, size: usize) {
    use fe2o3_amqp::types::messaging::{DeliveryState, Message};
    let message = Message::builder().data(Binary::from(vec![1u8; size])).build();
    let payload = serde_amqp::to_vec(&fe2o3_amqp::types::messaging::message::__private::Serializable(message)).unwrap();
    match send_raw(emulator, queue, &payload).await {
        Some(DeliveryState::Rejected(r)) => {
            let e = r.error.unwrap();
            assert_eq!(format!("{:?}", e.condition), "LinkError(MessageSizeExceeded)");
            assert!(e.description.unwrap().contains("exceeds the limit"));
        }
        other => panic!("expected rejected, got {other:?}"),
    }
}

/// Sends `payload` (an encoded message, sent as it is) to `queue` on a raw SASL PLAIN
/// connection; returns the broker's outcome.
pub(crate) async fn send_raw(
    emulator: &servicebus_emulator::Emulator,
    queue: &str,
    payload: &[u8],
) -> Option<fe2o3_amqp::types::messaging::DeliveryState> {
    let mut raw = Raw::connect(emulator.local_addr()).await;
    let mut out = plain_preamble();
    frame(&mut out, 0, 0, &begin());
    frame(&mut out, 0, 0, &sender_attach(queue));
    raw.send(&out).await;
    read_handshake(&mut raw).await;
    assert!(matches!(raw.next_amqp().await, FrameBody::Attach(a) if a.target.is_some()));
    assert!(matches!(raw.next_amqp().await, FrameBody::Flow(f) if f.link_credit > Some(0)));

    let mut out = BytesMut::new();
    transfer_frame(&mut out, 0, &transfer(0, Some(0), false), payload);
    raw.send(&out).await;
    match raw.next_amqp().await {
        FrameBody::Disposition(d) => {
            assert!(d.settled);
            d.state
        }
        other => panic!("expected a disposition, got {other:?}"),
    }
}
