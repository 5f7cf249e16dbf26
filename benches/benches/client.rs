//! The client's per-message costs: AMQP 1.0 encoding and decoding of a 1 KiB message with
//! typical properties (decoding includes the nesting check), the nesting check alone, and SAS
//! token generation.

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

criterion_group!(benches, amqp, sas);
criterion_main!(benches);
