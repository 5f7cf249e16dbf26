//! What an operator sees: a handler call's span continues its message's trace and the
//! guest's messages continue the call's; `/healthz` and `/readyz`; JSON logs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp_servicebus::{Message, SimpleValue};
use servicebus_emulator::{QueueConfig, QueueProperties};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

use super::support::*;

/// A span's fields, by name, as text.
type SpanFields = BTreeMap<String, String>;

/// Records every span's name and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, SpanFields)>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> tracing_subscriber::Layer<S>
    for Spans
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(spans.len() - 1);
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(at) = ctx.span(id).and_then(|s| s.extensions().get::<usize>().copied()) else { return };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[at].1));
    }
}

impl Spans {
    /// The `process` spans whose trace is `trace_id`.
    fn calls_in(&self, trace_id: &str) -> Vec<SpanFields> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(name, f)| name == "process" && f.get("trace_id").map(String::as_str) == Some(trace_id))
            .map(|(_, f)| f.clone())
            .collect()
    }
}

fn property<'m>(m: &'m amqp_servicebus::ReceivedMessage, key: &str) -> Option<&'m str> {
    match m.application_properties.get(key) {
        Some(SimpleValue::String(s)) => Some(s),
        _ => None,
    }
}

// One thread: the spans of the host's tasks reach the subscriber this test sets for it.
#[tokio::test(flavor = "current_thread")]
async fn a_calls_span_continues_its_messages_trace_and_the_guests_messages_continue_the_call() -> anyhow::Result<()> {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let emu = emulator(vec![queue("in"), queue("reports")]).await;
    let host = test_host(&emu, "in", "").await;
    let c = client(&emu);
    let out = c.receiver("reports");

    // As the W3C recommendation, and as the Azure SDKs set it (Diagnostic-Id).
    for (key, trace, parent) in [
        ("traceparent", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ("Diagnostic-Id", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
    ] {
        let mut m = Message::new("send:reports;complete");
        m.message_id = Some(format!("traced-{key}"));
        m.application_properties.insert(key.into(), SimpleValue::String(format!("00-{trace}-{parent}-01")));
        c.sender("in").send(m).await?;
        let sent = out.receive(1, Duration::from_secs(20)).await?;
        assert_eq!(sent.len(), 1, "the guest's message arrived");
        out.complete(&sent[0]).await?;

        let calls = spans.calls_in(trace);
        assert_eq!(calls.len(), 1, "one call span in the message's trace: {calls:?}");
        let call = &calls[0];
        assert_eq!(call["parent_span_id"], parent, "{call:?}");
        assert_eq!(call["messaging.system"], "servicebus");
        assert_eq!(call["messaging.destination.name"], "in");
        assert_eq!(call["messaging.operation.type"], "process");
        assert_eq!(call["messaging.message.id"], format!("traced-{key}"));
        assert_eq!(call["otel.kind"], "consumer");
        let call_span = &call["span_id"];
        assert_ne!(call_span, parent);
        // The guest's message is the call's child: same trace, the call's span as its parent.
        let expected = format!("00-{trace}-{call_span}-01");
        assert_eq!(property(&sent[0], "traceparent"), Some(expected.as_str()));
        assert_eq!(property(&sent[0], "Diagnostic-Id"), Some(expected.as_str()));
        eventually("the call's outcome is recorded", Duration::from_secs(10), || {
            spans.calls_in(trace)[0].get("messaging.servicebus.outcome").map(String::as_str) == Some("completed")
        })
        .await;
        assert_eq!(spans.calls_in(trace)[0]["messaging.servicebus.handler"], "ok");
    }
    // A message without a context starts a trace of its own, which the guest's message continues.
    send_script(&c, "in", "untraced", "send:reports;complete").await;
    let sent = out.receive(1, Duration::from_secs(20)).await?;
    let context = property(&sent[0], "traceparent").expect("the guest's message carries a context");
    let trace = context.split('-').nth(1).unwrap().to_string();
    let call = &spans.calls_in(&trace)[0];
    assert!(!call.contains_key("parent_span_id"), "a root span: {call:?}");
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// `/readyz`'s answer once `done` holds for it, or after 5 s.
async fn readyz_until(addr: std::net::SocketAddr, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(addr, "/readyz").await?;
        if done(&answer) || tokio::time::Instant::now() > deadline {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_which_workers_cannot_receive_and_healthz_that_the_process_lives() -> anyhow::Result<()> {
    // "locked" requires sessions but is not configured so: Service Bus refuses its worker.
    let locked = QueueConfig {
        name: "locked".into(),
        properties: QueueProperties { requires_session: true, ..QueueProperties::default() },
    };
    let emu = emulator(vec![queue("in"), locked, queue("reports")]).await;
    let host = test_host(&emu, "in,locked", "").await;
    let (addr, server) = host_runtime::metrics::start("127.0.0.1:0".parse()?, host.metrics()).await?;
    assert!(get(addr, "/healthz").await?.starts_with("HTTP/1.1 200 OK"));
    let answer = readyz_until(addr, |a| a.contains("not ready: these channels cannot receive: locked\n")).await?;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.ends_with("not ready: these channels cannot receive: locked\n"), "{answer}");
    let metrics = get(addr, "/metrics").await?;
    assert!(metrics.contains("messaging_worker_ready{channel=\"in\"} 1"), "{metrics}");
    assert!(metrics.contains("messaging_worker_ready{channel=\"locked\"} 0"), "{metrics}");
    server.abort();
    host.shutdown(Duration::from_secs(5)).await;

    let host = test_host(&emu, "in,locked", "[channels.locked]\nrequires-session = true\n").await;
    let (addr, server) = host_runtime::metrics::start("127.0.0.1:0".parse()?, host.metrics()).await?;
    let answer = readyz_until(addr, |a| a.starts_with("HTTP/1.1 200")).await?;
    assert!(answer.ends_with("\r\n\r\nready\n"), "{answer}");
    let metrics = host.metrics();
    host.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.ready().unwrap_err().to_string(), "shutting down");
    assert!(get(addr, "/readyz").await?.ends_with("not ready: shutting down\n"));
    assert!(get(addr, "/nothing").await?.starts_with("HTTP/1.1 404"));
    server.abort();
    emu.shutdown().await;
    Ok(())
}
