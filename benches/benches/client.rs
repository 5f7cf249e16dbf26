//! The client's per-message costs: AMQP 1.0 encoding and decoding of a 1 KiB message with
//! typical properties (decoding includes the nesting check), the nesting check alone, and SAS
//! token generation. And what a link costs to set up against the in-process emulator: a new
//! sender's first send (its own AMQP session, the attach, the send), and the AMQP session
//! alone (`begin` + `end`), which is what a session per link adds.

use amqp_servicebus::{Message, ReceivedMessage};
use criterion::{Criterion, criterion_group, criterion_main};

fn message() -> Message {
    let mut m = Message::new(vec![7u8; 1024]).with_property("order-id", "o-42").with_property("attempt", 1i64);
    m.message_id = Some("m-42".into());
    m.correlation_id = Some("c-42".into());
    m.content_type = Some("application/json".into());
    m.subject = Some("new-order".into());
    m
}

fn amqp(c: &mut Criterion) {
    let m = message();
    let encoded = m.encode();
    let mut group = c.benchmark_group("amqp_1KiB");
    group.bench_function("encode", |b| b.iter(|| m.encode()));
    group.bench_function("decode", |b| b.iter(|| ReceivedMessage::from_encoded(&encoded, "orders").unwrap()));
    group.bench_function("walk", |b| b.iter(|| amqp_wire::check_values(&encoded, amqp_wire::MAX_DEPTH).unwrap()));
    group.finish();
}

fn sas(c: &mut Criterion) {
    c.bench_function("sas_token", |b| {
        b.iter(|| {
            amqp_servicebus::sas::token(
                "sb://contoso.servicebus.windows.net/orders",
                "RootManageSharedAccessKey",
                "c2VjcmV0LWtleQ==",
                1_893_456_000,
            )
        })
    });
}

fn link_setup(c: &mut Criterion) {
    use servicebus_emulator::{Config, Emulator, QueueConfig, QueueProperties};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = runtime.block_on(async {
        let queues = vec![QueueConfig { name: "q".into(), properties: QueueProperties::default() }];
        let config = Config { queues, ..Config::default() };
        Emulator::builder().config(config).bind("127.0.0.1:0".parse().unwrap()).start().await.unwrap()
    });
    let client = amqp_servicebus::ServiceBusClient::new(
        &emulator.connection_string(),
        amqp_servicebus::ClientOptions::default(),
    )
    .unwrap();
    runtime.block_on(client.connect()).unwrap();
    let mut connection = runtime.block_on(async {
        let url = format!("amqp://RootManageSharedAccessKey:SAS_KEY_VALUE@{}", emulator.local_addr());
        fe2o3_amqp::Connection::open("bench-sessions", url.as_str()).await.unwrap()
    });
    let mut group = c.benchmark_group("link_setup");
    group.bench_function("new_sender_first_send", |b| {
        b.to_async(&runtime).iter(|| async {
            let sender = client.sender("q");
            sender.send(Message::new("x")).await.unwrap();
        })
    });
    group.bench_function("session_begin_end", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut session = fe2o3_amqp::Session::begin(&mut connection).await.unwrap();
                session.end().await.unwrap();
            })
        })
    });
    group.finish();
    drop(client);
    runtime.block_on(emulator.shutdown());
}

criterion_group!(benches, amqp, sas, link_setup);
criterion_main!(benches);
