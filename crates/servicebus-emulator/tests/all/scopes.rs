//! Bad input ends the smallest scope it breaks. One connection keeps a good sender and a
//! good receiver busy on session 0 while, between their exchanges, a victim link on the same
//! session (and a second session) gets malformed attaches, transfers, dispositions and flows,
//! chosen by a seeded generator. The good links must never notice: every exchange completes,
//! and no frame ever names them, their session, or the connection in an error.

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::FrameBody;
use fe2o3_amqp::types::definitions::{Handle, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, FilterSet, Message, Modified, Rejected, Source};
use fe2o3_amqp::types::performatives::{Attach, Detach, Disposition, End, Transfer};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};

use super::frames::{
    Raw, begin, flow, frame, plain_preamble, receiver_attach, sender_attach, transfer, transfer_frame,
};
use super::support::{queue, start};

const GOOD_SENDER: u32 = 0;
const GOOD_RECEIVER: u32 = 1;
const VICTIM: u32 = 5;

/// xorshift64: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Client {
    raw: Raw,
    /// The client's next delivery-id on session 0.
    next_delivery: u32,
}

impl Client {
    async fn send_frame<T: serde::Serialize>(&mut self, channel: u16, body: &T) {
        let mut out = BytesMut::new();
        frame(&mut out, 0, channel, body);
        self.raw.send(&out).await;
    }

    async fn send_transfer(&mut self, channel: u16, transfer: &Transfer, payload: &[u8]) {
        let mut out = BytesMut::new();
        transfer_frame(&mut out, channel, transfer, payload);
        self.raw.send(&out).await;
    }

    /// Reads frames until `wanted` matches one; flows are skipped. Any frame that ends the
    /// connection, session 0, or a good link fails the test.
    async fn expect(&mut self, what: &str, wanted: impl Fn(u16, &FrameBody) -> bool) -> FrameBody {
        loop {
            let (channel, body) = self.raw.next_on_channel().await.unwrap_or_else(|| panic!("socket closed; {what}"));
            match &body {
                FrameBody::Close(c) => panic!("the connection closed while waiting for {what}: {c:?}"),
                FrameBody::End(e) if channel == 0 => panic!("session 0 ended while waiting for {what}: {e:?}"),
                FrameBody::Detach(d) if channel == 0 && d.handle.0 != VICTIM => {
                    panic!("a good link was detached while waiting for {what}: {d:?}")
                }
                _ => {}
            }
            if wanted(channel, &body) {
                return body;
            }
            assert!(matches!(body, FrameBody::Flow(_)), "unexpected while waiting for {what}: {channel} {body:?}");
        }
    }

    fn take_delivery_id(&mut self) -> u32 {
        let id = self.next_delivery;
        self.next_delivery += 1;
        id
    }

    /// One message through the good sender, to the good receiver, completed.
    async fn good_exchange(&mut self, round: usize) {
        let id = self.take_delivery_id();
        let body = format!("round {round}");
        self.send_transfer(0, &transfer(GOOD_SENDER, Some(id), false), &message(body.as_bytes())).await;
        let sent = self
            .expect("the send's outcome", |c, b| matches!(b, FrameBody::Disposition(d) if c == 0 && d.first == id))
            .await;
        assert!(matches!(sent, FrameBody::Disposition(d) if matches!(d.state, Some(DeliveryState::Accepted(_)))));
        let delivered = self
            .expect("the delivery", |c, b| matches!(b, FrameBody::Transfer { performative, .. } if c == 0 && performative.handle.0 == GOOD_RECEIVER))
            .await;
        let FrameBody::Transfer { performative, payload } = delivered else { unreachable!() };
        assert!(payload.windows(body.len()).any(|w| w == body.as_bytes()), "round {round}: a different message");
        let delivery_id = performative.delivery_id.unwrap();
        self.send_frame(0, &super::frames::accept(delivery_id)).await;
        let echo = self
            .expect("the completion's echo", |c, b| {
                matches!(b, FrameBody::Disposition(d) if c == 0 && d.role == Role::Sender && d.first == delivery_id)
            })
            .await;
        assert!(matches!(echo, FrameBody::Disposition(d) if matches!(d.state, Some(DeliveryState::Accepted(_)))));
    }

    /// Expects the broker to detach the victim with `condition`, and answers.
    async fn victim_detached(&mut self, condition: &str) {
        let detach = self
            .expect("the victim's detach", |c, b| matches!(b, FrameBody::Detach(d) if c == 0 && d.handle.0 == VICTIM))
            .await;
        let FrameBody::Detach(d) = detach else { unreachable!() };
        let error = format!("{:?}", d.error);
        assert!(error.contains(condition), "expected {condition}, got {error}");
        self.send_frame(0, &Detach { handle: Handle(VICTIM), closed: true, error: None }).await;
    }

    /// Expects delivery `id` of the victim refused with `condition`, then detaches the victim
    /// (it lived on) and expects the answer.
    async fn victim_delivery_refused(&mut self, id: u32, condition: &str) {
        let outcome = self
            .expect("the victim's outcome", |c, b| matches!(b, FrameBody::Disposition(d) if c == 0 && d.first == id))
            .await;
        assert!(format!("{outcome:?}").contains(condition), "expected {condition}: {outcome:?}");
        self.send_frame(0, &Detach { handle: Handle(VICTIM), closed: true, error: None }).await;
        self.expect("the detach's answer", |c, b| matches!(b, FrameBody::Detach(d) if c == 0 && d.handle.0 == VICTIM))
            .await;
    }

    /// Attaches the victim; `sender` is the client's role.
    async fn attach_victim(&mut self, sender: bool, address: &str, filter: Option<FilterSet>) {
        let attach = if sender {
            Attach { name: "victim".into(), handle: Handle(VICTIM), ..sender_attach(address) }
        } else {
            let mut source = Source::builder().address(address).build();
            source.filter = filter;
            Attach {
                name: "victim".into(),
                handle: Handle(VICTIM),
                source: Some(Box::new(source)),
                ..receiver_attach(address)
            }
        };
        self.send_frame(0, &attach).await;
        self.expect("the victim's attach", |c, b| matches!(b, FrameBody::Attach(a) if c == 0 && a.handle.0 == VICTIM))
            .await;
    }

    /// Expects session 1 to end with `condition`, answers, and begins it again.
    async fn session_one_ended(&mut self, condition: &str) {
        let end = self.expect("session 1's end", |c, b| c == 1 && matches!(b, FrameBody::End(_))).await;
        let error = format!("{end:?}");
        assert!(error.contains(condition), "expected {condition}, got {error}");
        self.send_frame(1, &End { error: None }).await;
        self.send_frame(1, &begin()).await;
        self.expect("session 1 again", |c, b| c == 1 && matches!(b, FrameBody::Begin(_))).await;
    }
}

fn message(body: &[u8]) -> Vec<u8> {
    let message = Message::builder().data(Binary::from(body.to_vec())).build();
    serde_amqp::to_vec(&fe2o3_amqp::types::messaging::message::__private::Serializable(message)).unwrap()
}

async fn connected(addr: std::net::SocketAddr) -> Client {
    let mut raw = Raw::connect(addr).await;
    raw.send(&plain_preamble()).await;
    super::frames::read_handshake_without_begin(&mut raw).await;
    let mut client = Client { raw, next_delivery: 0 };
    for channel in [0, 1] {
        client.send_frame(channel, &begin()).await;
        client.expect("begin", move |c, b| c == channel && matches!(b, FrameBody::Begin(_))).await;
    }
    client.attach_good_links().await;
    client
}

impl Client {
    async fn attach_good_links(&mut self) {
        let sender = Attach { name: "good-sender".into(), handle: Handle(GOOD_SENDER), ..sender_attach("q") };
        self.send_frame(0, &sender).await;
        let receiver = Attach {
            name: "good-receiver".into(),
            handle: Handle(GOOD_RECEIVER),
            snd_settle_mode: SenderSettleMode::Unsettled,
            ..receiver_attach("q")
        };
        self.send_frame(0, &receiver).await;
        for handle in [GOOD_SENDER, GOOD_RECEIVER] {
            self.expect(
                "a good attach",
                move |c, b| matches!(b, FrameBody::Attach(a) if c == 0 && a.handle.0 == handle),
            )
            .await;
        }
        self.send_frame(0, &flow(GOOD_RECEIVER, 10_000)).await;
    }

    /// One malformed thing, and the answer that ends only its scope.
    async fn misbehave(&mut self, rng: &mut Rng) {
        match rng.below(10) {
            0 => {
                // An attach to an entity that does not exist: refused, link only.
                let name = format!("nope-{}", rng.below(1000));
                self.attach_victim(true, &name, None).await;
                self.victim_detached("NotFound").await;
            }
            1 => {
                // A transfer without a delivery-id.
                self.attach_victim(true, "q", None).await;
                self.send_transfer(0, &transfer(VICTIM, None, false), &rng.bytes(20)).await;
                self.victim_detached("InvalidField").await;
            }
            2 => {
                // A transfer on a link where the broker sends.
                self.attach_victim(false, "q", None).await;
                let id = self.take_delivery_id();
                self.send_transfer(0, &transfer(VICTIM, Some(id), false), &message(b"wrong way")).await;
                self.victim_detached("NotAllowed").await;
            }
            3 => {
                // A message that is not AMQP: rejected, and the victim link goes on.
                self.attach_victim(true, "q", None).await;
                let id = self.take_delivery_id();
                let len = 1 + rng.below(300) as usize;
                let garbage = rng.bytes(len);
                self.send_transfer(0, &transfer(VICTIM, Some(id), false), &garbage).await;
                self.victim_delivery_refused(id, "DecodeError").await;
            }
            4 => {
                // A delivery far past the size limit, in pieces: refused, nothing buffered.
                self.attach_victim(true, "q", None).await;
                let id = self.take_delivery_id();
                let chunk = vec![0u8; 60_000];
                for i in 0..6 {
                    let t = if i == 0 { transfer(VICTIM, Some(id), true) } else { transfer(VICTIM, None, i < 5) };
                    self.send_transfer(0, &t, &chunk).await;
                }
                self.victim_delivery_refused(id, "MessageSizeExceeded").await;
            }
            5 => {
                // Dispositions for deliveries that do not exist, with any outcome: ignored.
                let first = 1_000_000 + rng.below(1_000_000) as u32;
                let state = match rng.below(3) {
                    0 => DeliveryState::Accepted(Accepted {}),
                    1 => DeliveryState::Rejected(Rejected { error: None }),
                    _ => DeliveryState::Modified(Modified {
                        delivery_failed: Some(true),
                        undeliverable_here: Some(rng.below(2) == 0),
                        message_annotations: None,
                    }),
                };
                let role = if rng.below(2) == 0 { Role::Receiver } else { Role::Sender };
                let d = Disposition {
                    role,
                    first,
                    last: Some(first + rng.below(100) as u32),
                    settled: rng.below(2) == 0,
                    state: Some(state),
                    batchable: false,
                };
                self.send_frame(0, &d).await;
            }
            6 => {
                // A session receiver on an entity without sessions.
                let mut filter = FilterSet::default();
                filter.insert(Symbol::from("com.microsoft:session-filter"), Value::String("s".into()));
                self.attach_victim(false, "q", Some(filter)).await;
                self.victim_detached("NotAllowed").await;
            }
            7 => {
                // A flow for a handle nobody attached, on session 1: that session ends.
                self.send_frame(1, &flow(100 + rng.below(100) as u32, 10)).await;
                self.session_one_ended("UnattachedHandle").await;
            }
            8 => {
                // A transfer for a handle nobody attached, on session 1.
                self.send_transfer(1, &transfer(200 + rng.below(100) as u32, Some(0), false), &rng.bytes(10)).await;
                self.session_one_ended("UnattachedHandle").await;
            }
            _ => {
                // An attach beyond handle-max, on session 1.
                let attach = Attach { handle: Handle(5000 + rng.below(1000) as u32), ..receiver_attach("q") };
                self.send_frame(1, &attach).await;
                self.session_one_ended("handle-max-exceeded").await;
            }
        }
    }
}

#[tokio::test]
async fn bad_input_on_one_link_never_reaches_another_link_of_the_same_connection() {
    let emulator = start(vec![queue("q")]).await;
    let mut client = connected(emulator.local_addr()).await;
    let mut rng = Rng(0x05ee_d0f5_c0e5);
    for round in 0..60 {
        client.good_exchange(round).await;
        client.misbehave(&mut rng).await;
    }
    client.good_exchange(60).await;
    let counts = emulator.queue_counts("q").unwrap();
    assert_eq!(counts.active + counts.locked, 0, "every good message was completed, no bad one stored: {counts:?}");
    emulator.shutdown().await;
}

/// Python's SDK ends its session, then detaches its `$management` links on it (after a failed
/// request). The service lets those frames pass; so does the emulator.
#[tokio::test]
async fn frames_after_the_peers_end_are_dropped_and_the_connection_lives_on() {
    let emulator = start(vec![queue("q")]).await;
    let mut client = connected(emulator.local_addr()).await;
    client.send_frame(1, &receiver_attach("q/$management")).await;
    client.expect("the attach", |c, b| c == 1 && matches!(b, FrameBody::Attach(_))).await;
    client.send_frame(1, &End { error: None }).await;
    client.expect("the end's answer", |c, b| c == 1 && matches!(b, FrameBody::End(_))).await;
    client.send_frame(1, &Detach { handle: Handle(0), closed: false, error: None }).await;
    client.send_frame(1, &flow(0, 5)).await;
    client.good_exchange(0).await;
    emulator.shutdown().await;
}

/// fe2o3 answers a refused attach with two detaches, the first echoing the broker's error.
/// The second names a free handle; it must cost nothing (it ended the session once).
#[tokio::test]
async fn a_second_detach_of_a_refused_link_is_let_pass() {
    let emulator = start(vec![queue("q")]).await;
    let mut client = connected(emulator.local_addr()).await;
    client.attach_victim(true, "nope", None).await;
    let detach =
        client.expect("the refusal", |c, b| matches!(b, FrameBody::Detach(d) if c == 0 && d.handle.0 == VICTIM)).await;
    let FrameBody::Detach(refusal) = detach else { unreachable!() };
    client.send_frame(0, &Detach { handle: Handle(VICTIM), closed: true, error: refusal.error }).await;
    client.send_frame(0, &Detach { handle: Handle(VICTIM), closed: true, error: None }).await;
    client.good_exchange(0).await;
    // The handle is free again.
    client.attach_victim(true, "q", None).await;
    client.good_exchange(1).await;
    emulator.shutdown().await;
}
