//! The host's per-message costs: a handler call on a fresh instance (`InstancePre` +
//! pooling: instantiate, call `handler` with one 1 KiB message, drop) versus a call on a
//! reused instance; the same handler of the December 2024 revision in Rust, Python and
//! JavaScript on a fresh instance each; and converting a message to and from the WIT record.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use host_runtime::bench::Bench;
use wit_interface::{FormatSpec, Message, MessageState};

/// One 1 KiB message for the scripted test guest: `ok` returns at once; the rest is padding.
fn message() -> Message {
    let mut data = b"ok;note:".to_vec();
    data.resize(1024, b'x');
    let metadata = [
        ("delivery-id", "d1-0123456789abcdef"),
        ("lock-token", "5a3c2f0e-1111-2222-3333-444455556666"),
        ("channel", "orders"),
        ("delivery-count", "1"),
        ("enqueued-time", "2026-11-21T17:30:05.123Z"),
        ("sequence-number", "42"),
        ("locked-until", "2026-11-21T17:31:05.123Z"),
        ("message-id", "m-42"),
        ("content-type", "application/json"),
        ("order-id", "o-42"),
    ];
    Message {
        data,
        format: FormatSpec::Raw,
        metadata: Some(metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
    }
}

fn dispatch(c: &mut Criterion) {
    let component = xtask::guests::ensure_built().unwrap().path("test-guest").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bench = runtime.block_on(async { Bench::new(&component) }).unwrap();
    let messages = vec![message()];
    let mut group = c.benchmark_group("dispatch_1KiB");
    group.bench_function(BenchmarkId::new("instance", "fresh"), |b| {
        b.iter(|| runtime.block_on(bench.fresh_call(&messages)).unwrap())
    });
    let mut reused = runtime.block_on(bench.reused()).unwrap();
    group.bench_function(BenchmarkId::new("instance", "reused"), |b| {
        b.iter(|| runtime.block_on(reused.call(&messages)).unwrap())
    });
    group.finish();
}

/// The sample handler of the December 2024 revision, per language, on a fresh instance a call:
/// `handle` with a payment request (parsed and checked as JSON; nothing sent, so no broker).
fn handlers(c: &mut Criterion) {
    let components = xtask::guests::ensure_built().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let payment = MessageState {
        data: br#"{"order_id":"o-42","customer":"ada","amount_cents":1200}"#.to_vec(),
        content_type: Some("application/json".into()),
        metadata: Some(vec![("delivery-id".into(), "d1".into()), ("order-id".into(), "o-42".into())]),
        topic: Some("payments".into()),
        delivery: None,
    };
    let mut group = c.benchmark_group("handle_payment_fresh");
    for (language, guest) in
        [("rust", "sample-handler"), ("python", "sample-handler-py"), ("javascript", "sample-handler-js")]
    {
        let bench = Bench::new(&components.path(guest).unwrap()).unwrap();
        // It must succeed: a handler that fails fast would measure nothing.
        runtime.block_on(bench.fresh_handle(payment.clone())).unwrap().expect("the payment is valid");
        group.bench_function(BenchmarkId::new("language", language), |b| {
            b.iter(|| runtime.block_on(bench.fresh_handle(payment.clone())).unwrap())
        });
        group.bench_function(BenchmarkId::new("instantiate_only", language), |b| {
            b.iter(|| runtime.block_on(bench.fresh_instance()).unwrap())
        });
    }
    group.finish();
}

fn conversion(c: &mut Criterion) {
    let guest_message = message();
    let sb = host_runtime::convert::from_guest(&guest_message).unwrap();
    let encoded = sb.encode();
    let received = amqp_servicebus::ReceivedMessage::from_encoded(&encoded, "orders").unwrap();
    let mut group = c.benchmark_group("convert_1KiB");
    group.bench_function("received_to_wit", |b| b.iter(|| host_runtime::convert::to_guest(&received, "orders", "d1")));
    group.bench_function("wit_to_message", |b| b.iter(|| host_runtime::convert::from_guest(&guest_message).unwrap()));
    group.finish();
}

/// A call's span: made, entered and left as often as a call's future is polled (about six
/// times), its outcome recorded, dropped; under a logging subscriber (writing nowhere) that
/// leaves it disabled (the default, INFO) and one that enables it (DEBUG).
fn span(c: &mut Criterion) {
    let mut m = amqp_servicebus::Message::new(vec![b'x'; 1024]);
    m.message_id = Some("m-42".into());
    m.application_properties.insert(
        "traceparent".into(),
        amqp_servicebus::SimpleValue::String("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    let received = amqp_servicebus::ReceivedMessage::from_encoded(&m.encode(), "orders").unwrap();
    let messages = vec![received];
    let mut group = c.benchmark_group("call_span");
    for level in ["info", "debug"] {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            group.bench_function(BenchmarkId::new("level", level), |b| {
                b.iter(|| {
                    let span = host_runtime::bench::call_span("orders", &messages);
                    for _ in 0..6 {
                        let _entered = span.enter();
                    }
                    span.record("messaging.servicebus.handler", "ok");
                    span.record("messaging.servicebus.outcome", "completed");
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch, handlers, conversion, span);
criterion_main!(benches);
