//! The durable emulator (`--data-dir`): what it acknowledged survives a restart, and a SIGKILL.
//!
//! The kill test drives the `servicebus-emulator` binary with a raw AMQP client, which sees
//! exactly what the broker acknowledged: a send's disposition, and the settled echo of a
//! completion. Each round starts the emulator on the same directory, checks what it took
//! back against what was acknowledged, completes all of it, runs sends and completions (with
//! some messages left locked) for a random while, and kills the process.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::FrameBody;
use fe2o3_amqp::types::definitions::{Handle, Role};
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{DeliveryState, Message, Properties};
use fe2o3_amqp::types::performatives::{Attach, Begin, Flow};
use fe2o3_amqp::types::primitives::Value;
use rand::Rng as _;
use servicebus_emulator::auth::{DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, sas_token};

use super::frames::{
    Raw, accept, begin, flow, frame, plain_preamble, read_handshake, receiver_attach, sender_attach, transfer,
};

const BIN: &str = env!("CARGO_BIN_EXE_servicebus-emulator");
const QUEUE: &str = "orders";
const SENDER: u32 = 0;
const RECEIVER: u32 = 1;

/// The emulator binary on `dir`: its AMQP and management addresses.
struct Process {
    child: Child,
    amqp: std::net::SocketAddr,
    management: std::net::SocketAddr,
}

impl Process {
    fn start(dir: &std::path::Path, fsync: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(["--port", "0", "--management-port", "0", "--log-level", "warn", "--fsync", fsync, "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut line = || lines.next().expect("the emulator prints where it listens").unwrap();
        let amqp = line().rsplit("amqp://").next().unwrap().parse().unwrap();
        let management = line();
        let management = management.rsplit("http://").next().unwrap().trim_end_matches("/health").parse().unwrap();
        // Keep reading: a closed pipe would fail the emulator's next print.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, amqp, management }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Messages in the queue, in any state, from the administration API.
    async fn message_count(&self) -> usize {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.management;
        let token = sas_token(&format!("http://{addr}/"), DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, u64::MAX / 2);
        let request = format!(
            "GET /{QUEUE}?api-version=2021-05 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let count = answer.split("<MessageCount>").nth(1).and_then(|s| s.split('<').next());
        count.and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no MessageCount in {answer}"))
    }
}

/// A delivery the client holds: its message id and the header's delivery count.
#[derive(Debug, Clone)]
struct Delivered {
    id: String,
    delivery_count: u32,
}

/// One connection with a sender and a peek-lock receiver on the queue.
struct Client {
    raw: Raw,
    next_send: u32,
    /// Our transfers: delivery id → message id, until acknowledged.
    sent: HashMap<u32, String>,
    /// Deliveries we asked to complete: delivery id → message id, until the echo.
    completing: HashMap<u32, String>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let mut raw = Raw::connect(addr).await;
        let mut out = plain_preamble();
        frame(&mut out, 0, 0, &Begin { incoming_window: u32::MAX / 2, ..begin() });
        frame(&mut out, 0, 0, &Attach { name: "kill-sender".into(), handle: Handle(SENDER), ..sender_attach(QUEUE) });
        frame(
            &mut out,
            0,
            0,
            &Attach { name: "kill-receiver".into(), handle: Handle(RECEIVER), ..receiver_attach(QUEUE) },
        );
        let window = u32::MAX / 2;
        let flow = Flow { incoming_window: window, outgoing_window: window, ..flow(RECEIVER, 100_000) };
        frame(&mut out, 0, 0, &flow);
        raw.send(&out).await;
        read_handshake(&mut raw).await;
        Self { raw, next_send: 0, sent: HashMap::new(), completing: HashMap::new() }
    }

    /// Sends a message; false if the connection is gone.
    async fn send(&mut self, id: String) -> bool {
        let message = Message::builder()
            .properties(Properties::builder().message_id(id.clone()).build())
            .value(Value::String(format!("payload of {id}")))
            .build();
        let payload = serde_amqp::to_vec(&Serializable(message)).unwrap();
        let mut out = BytesMut::new();
        super::frames::transfer_frame(&mut out, 0, &transfer(SENDER, Some(self.next_send), false), &payload);
        self.sent.insert(self.next_send, id);
        self.next_send += 1;
        self.raw.try_send(&out).await
    }

    /// Asks to complete a delivery; false if the connection is gone.
    async fn complete(&mut self, delivery_id: u32, id: String) -> bool {
        let mut out = BytesMut::new();
        frame(&mut out, 0, 0, &accept(delivery_id));
        self.completing.insert(delivery_id, id);
        self.raw.try_send(&out).await
    }

    /// The next thing the broker says, or `None` when the connection is gone.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let (_, body) = self.raw.next_on_channel().await?;
            match body {
                FrameBody::Disposition(d) if d.role == Role::Receiver => {
                    let accepted = matches!(d.state, Some(DeliveryState::Accepted(_)));
                    let ids: Vec<String> =
                        (d.first..=d.last.unwrap_or(d.first)).filter_map(|n| self.sent.remove(&n)).collect();
                    assert!(accepted, "a send was refused: {d:?}");
                    return Some(Event::SendsAcked(ids));
                }
                FrameBody::Disposition(d) => {
                    assert!(d.settled && matches!(d.state, Some(DeliveryState::Accepted(_))), "{d:?}");
                    let ids: Vec<String> =
                        (d.first..=d.last.unwrap_or(d.first)).filter_map(|n| self.completing.remove(&n)).collect();
                    return Some(Event::Completed(ids));
                }
                FrameBody::Transfer { performative, payload } => {
                    let message: Deserializable<Message<Value>> = serde_amqp::from_slice(&payload).unwrap();
                    let message = message.0;
                    let id = match message.properties.and_then(|p| p.message_id) {
                        Some(fe2o3_amqp::types::messaging::MessageId::String(s)) => s,
                        other => panic!("a message without our id: {other:?}"),
                    };
                    let delivery_count = message.header.map(|h| h.delivery_count).unwrap_or(0);
                    let delivery_id = performative.delivery_id.expect("single-frame deliveries");
                    return Some(Event::Delivered(delivery_id, Delivered { id, delivery_count }));
                }
                FrameBody::Flow(_) | FrameBody::Attach(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[derive(Debug)]
enum Event {
    SendsAcked(Vec<String>),
    Completed(Vec<String>),
    Delivered(u32, Delivered),
}

/// What the broker acknowledged, over every round.
#[derive(Debug, Default)]
struct Ledger {
    /// Sends acknowledged and completions not yet acknowledged: must be there after a restart.
    owed: HashSet<String>,
    /// Completions acknowledged: must never come back.
    completed: HashSet<String>,
    /// Messages left locked whose lock a later acknowledgement proves was written: they come
    /// back with one delivery counted.
    locked: HashSet<String>,
}

/// Checks what the emulator took back, then completes all of it. Returns how many messages it
/// took back, and how many of them were locked at the kill.
async fn check_and_drain(p: &Process, ledger: &mut Ledger, round: usize) -> (usize, usize) {
    let count = p.message_count().await;
    let mut c = Client::connect(p.amqp).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut left = count;
    let mut were_locked = 0;
    while left > 0 || !c.completing.is_empty() {
        match c.next().await.expect("the emulator stays up") {
            Event::Delivered(delivery_id, d) => {
                left -= 1;
                assert!(!ledger.completed.contains(&d.id), "round {round}: {} was completed, and came back", d.id);
                assert!(seen.insert(d.id.clone(), d.delivery_count).is_none(), "round {round}: {} twice", d.id);
                if ledger.locked.contains(&d.id) {
                    were_locked += 1;
                    assert_eq!(d.delivery_count, 1, "round {round}: {} was locked at the kill", d.id);
                }
                assert!(c.complete(delivery_id, d.id).await, "the emulator stays up");
            }
            Event::Completed(ids) => {
                for id in ids {
                    ledger.owed.remove(&id);
                    ledger.completed.insert(id);
                }
            }
            Event::SendsAcked(_) => unreachable!("this client sends nothing"),
        }
    }
    for id in &ledger.owed {
        assert!(seen.contains_key(id), "round {round}: {id} was acknowledged and is gone");
    }
    assert!(ledger.owed.is_empty(), "all completed");
    ledger.locked.clear();
    (count, were_locked)
}

/// Sends and completes (leaving one in four locked) until the connection drops.
async fn work(addr: std::net::SocketAddr, round: usize) -> (Ledger, usize) {
    let mut c = Client::connect(addr).await;
    let mut ledger = Ledger::default();
    let mut n = 0;
    // Held locks, with the send number after which an acknowledged send proves them written.
    let mut held: Vec<(String, u32)> = Vec::new();
    let mut acked_sends = 0;
    let mut max_acked_send = None;
    loop {
        while c.sent.len() < 16 {
            if !c.send(format!("r{round}-m{n}")).await {
                break;
            }
            n += 1;
        }
        let Some(event) = c.next().await else { break };
        match event {
            Event::SendsAcked(ids) => {
                acked_sends += ids.len();
                max_acked_send = Some(c.next_send - c.sent.len() as u32);
                ledger.owed.extend(ids);
            }
            Event::Delivered(delivery_id, d) => {
                if delivery_id % 4 == 3 {
                    held.push((d.id, c.next_send));
                } else {
                    c.complete(delivery_id, d.id).await;
                }
            }
            Event::Completed(ids) => {
                for id in ids {
                    ledger.owed.remove(&id);
                    ledger.completed.insert(id);
                }
            }
        }
        // Sends are acknowledged in order here, so every send before the oldest pending one is.
        let acked_upto = c.sent.keys().min().copied().unwrap_or(c.next_send);
        for (id, after) in &held {
            if *after < acked_upto && max_acked_send.is_some() {
                ledger.locked.insert(id.clone());
            }
        }
    }
    // A completion asked for but not acknowledged may have been done or not: either is right.
    for id in c.completing.values() {
        ledger.owed.remove(id);
    }
    (ledger, acked_sends)
}

/// Writes a torn record after the last one in the newest journal: random bytes where the next
/// record would have gone, as a write cut short by the kill leaves them (the journal is
/// preallocated, so what follows the last record is zeros).
fn tear_journal(dir: &std::path::Path, rng: &mut impl rand::Rng) {
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| p.file_stem().and_then(|s| s.to_str()?.parse::<u64>().ok()))
        .expect("a journal");
    let mut bytes = std::fs::read(&newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let torn = (end..(end + 41).min(bytes.len())).collect::<Vec<_>>();
    for i in torn {
        bytes[i] = rng.random_range(1..=255);
    }
    std::fs::write(&newest, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)] // What each round did, in the test's output.
async fn acknowledged_sends_and_completions_survive_twenty_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::default();
    let mut rng = rand::rng();
    let (mut acked, mut taken_back, mut were_locked) = (0, 0, 0);
    for round in 0..20 {
        let fsync = ["batch", "always", "never"][round % 3];
        let p = Process::start(dir.path(), fsync);
        let (back, locked) = check_and_drain(&p, &mut ledger, round).await;
        (taken_back, were_locked) = (taken_back + back, were_locked + locked);
        let worker = tokio::spawn(work(p.amqp, round));
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..300))).await;
        p.kill();
        if round % 2 == 1 {
            tear_journal(dir.path(), &mut rng);
        }
        let (round_ledger, sends) = worker.await.unwrap();
        eprintln!("round {round} ({fsync}): {sends} sends acknowledged, {} owed", round_ledger.owed.len());
        acked += sends;
        ledger.owed.extend(round_ledger.owed);
        ledger.completed.extend(round_ledger.completed);
        ledger.locked = round_ledger.locked;
    }
    let p = Process::start(dir.path(), "batch");
    let (back, locked) = check_and_drain(&p, &mut ledger, 20).await;
    (taken_back, were_locked) = (taken_back + back, were_locked + locked);
    p.kill();
    eprintln!("{acked} sends acknowledged; {taken_back} messages taken back, {were_locked} of them locked at a kill");
    assert!(acked > 200, "the rounds did work: {acked} sends acknowledged");
    assert!(taken_back > 20, "kills left messages to take back: {taken_back}");
    assert!(were_locked > 0, "kills left locked messages to count: {were_locked}");
}

/// Polls until `check` holds of the queue's counts (settlements are applied as they arrive).
async fn counts_become(
    emulator: &servicebus_emulator::Emulator,
    queue: &str,
    check: impl Fn(&servicebus_emulator::QueueCounts) -> bool,
) {
    for _ in 0..500 {
        if emulator.queue_counts(queue).is_some_and(|c| check(&c)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{queue}: {:?}", emulator.queue_counts(queue));
}

#[tokio::test]
async fn messages_in_every_state_and_their_counts_survive_a_restart() -> anyhow::Result<()> {
    use fe2o3_amqp::types::definitions::ReceiverSettleMode;
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;
    use fe2o3_amqp::types::messaging::{MessageAnnotations, Modified};
    use fe2o3_amqp::types::primitives::{Symbol, Timestamp};
    use fe2o3_amqp::{Receiver, Sender, Session};
    use servicebus_emulator::{Config, Emulator, QueueCounts};

    let dir = tempfile::tempdir()?;
    let start = || async {
        let config = Config { queues: vec![super::support::queue("states")], ..Config::default() };
        Emulator::builder().config(config).bind("127.0.0.1:0".parse().unwrap()).data_dir(dir.path()).start().await
    };
    let emulator = start().await?;
    let mut connection = super::transactions::connect(&emulator, "states").await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "s", "states").await?;
    for body in ["abandoned", "deferred", "dead-lettered", "released"] {
        sender
            .send(Message::from(body))
            .await?
            .is_accepted()
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("refused"))?;
    }
    let later = Timestamp::from_milliseconds(servicebus_now_ms() + 3_600_000);
    let annotations = MessageAnnotations::builder()
        .insert(Symbol::from("x-opt-scheduled-enqueue-time"), Value::Timestamp(later))
        .build();
    sender
        .send(Message::builder().message_annotations(annotations).value("scheduled").build())
        .await?
        .is_accepted()
        .then_some(())
        .ok_or_else(|| anyhow::anyhow!("refused"))?;
    let mut receiver = Receiver::builder()
        .name("r")
        .source("states")
        .receiver_settle_mode(ReceiverSettleMode::Second)
        .attach(&mut session)
        .await?;
    let abandoned = receiver.recv::<Value>().await?;
    receiver
        .modify(
            &abandoned,
            Modified { delivery_failed: Some(true), undeliverable_here: None, message_annotations: None },
        )
        .await?;
    // The abandoned one comes straight back; take the next ones past it.
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(receiver.recv::<Value>().await?);
    }
    let body = |d: &fe2o3_amqp::link::delivery::Delivery<Value>| format!("{:?}", d.body());
    for d in &got {
        match body(d).as_str() {
            s if s.contains("\"deferred\"") => {
                let defer =
                    Modified { delivery_failed: None, undeliverable_here: Some(true), message_annotations: None };
                receiver.modify(d, defer).await?;
            }
            s if s.contains("\"dead-lettered\"") => receiver.reject(d, None).await?,
            _ => receiver.release(d).await?,
        }
    }
    // The released and abandoned ones return to the receiver's credit, locked again or not.
    let want = QueueCounts { active: 2, deferred: 1, scheduled: 1, dead_lettered: 1, locked: 0 };
    counts_become(&emulator, "states", |c| QueueCounts { active: c.active + c.locked, locked: 0, ..*c } == want).await;
    receiver.close().await?;
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    emulator.shutdown().await;

    let emulator = start().await?;
    assert_eq!(emulator.queue_counts("states"), Some(want), "every state, as it was");
    let mut connection = super::transactions::connect(&emulator, "states-again").await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut receiver = Receiver::builder()
        .name("r2")
        .source("states")
        .receiver_settle_mode(ReceiverSettleMode::Second)
        .attach(&mut session)
        .await?;
    let mut counts = Vec::new();
    for _ in 0..2 {
        let d = receiver.recv::<Value>().await?;
        let delivery_count = d.message().header.as_ref().map(|h| h.delivery_count).unwrap_or(0);
        let seq = d
            .message()
            .message_annotations
            .as_ref()
            .and_then(|a| a.get(&OwnedKey::Symbol(Symbol::from("x-opt-sequence-number"))).cloned());
        counts.push((body(&d), delivery_count, seq));
        receiver.accept(&d).await?;
    }
    counts.sort();
    assert!(counts[0].0.contains("abandoned") && counts[0].1 >= 1, "the abandon counted: {counts:?}");
    assert!(counts[1].0.contains("released"), "{counts:?}");
    let mut sender = Sender::attach(&mut session, "s2", "states").await?;
    sender.send(Message::from("after")).await?.is_accepted().then_some(()).ok_or_else(|| anyhow::anyhow!("refused"))?;
    let d = receiver.recv::<Value>().await?;
    let seq = d
        .message()
        .message_annotations
        .as_ref()
        .and_then(|a| a.get(&OwnedKey::Symbol(Symbol::from("x-opt-sequence-number"))).cloned());
    assert_eq!(seq, Some(Value::Long(6)), "sequence numbers go on from where they were");
    receiver.accept(&d).await?;
    receiver.close().await?;
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    emulator.shutdown().await;
    Ok(())
}

fn servicebus_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
