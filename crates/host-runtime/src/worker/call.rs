//! One handler call: its messages become deliveries, a fresh instance runs `handler` on them
//! under a deadline while their locks are kept, and the matrix settles what it left.

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ReceiveMode, ReceivedMessage, Receiver};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::config::ChannelOptions;
use crate::delivery::{self, Delivery};
use crate::instance::{Failure, Instances};
use crate::messaging::CallCtx;
use crate::trace::{SpanId, TraceContext, TraceId};

/// How a handler call ended.
#[derive(Debug)]
enum CallEnd {
    Ok,
    Error(Failure),
    Trap(String),
    Timeout(Duration),
    Cancelled,
}

impl CallEnd {
    fn succeeded(&self) -> bool {
        matches!(self, Self::Ok)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error(_) => "error",
            Self::Trap(_) => "trap",
            Self::Timeout(_) => "timeout",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One handler call for `messages`, then the settlement matrix, in a span of its own
/// ([`call_span`]).
pub(crate) async fn dispatch(
    rt: Arc<Instances>,
    channel: String,
    receiver: Arc<Receiver>,
    messages: Vec<ReceivedMessage>,
    options: ChannelOptions,
    hard_stop: watch::Receiver<bool>,
) {
    let (span, trace) = call_span(&channel, &messages);
    let call = run_call(rt, &channel, receiver, messages, &options, hard_stop, trace);
    let (end, settled) = call.instrument(span.clone()).await;
    span.record("messaging.servicebus.handler", end.name());
    span.record("messaging.servicebus.outcome", tracing::field::display(settled));
}

/// The span of a call on `messages` from `channel`, with the OpenTelemetry messaging
/// attributes, and its trace context. It is at DEBUG level: enabled, a logging subscriber
/// formats its fields for every call (about 3 µs, BENCHMARKS.md), so it costs nothing unless
/// asked for; the call's log lines carry `trace_id` and `span_id` themselves. (Its OpenTelemetry
/// name, `process <channel>`, is left to an exporter: formatting it per call cost as much as the
/// other fields together.) The context is a child of the message's own context (`traceparent`
/// or `Diagnostic-Id`) for a call on one message; for a batch, a new trace that names the
/// messages' contexts in `messaging.links` (as OpenTelemetry links a batch's span to them).
pub(crate) fn call_span(channel: &str, messages: &[ReceivedMessage]) -> (tracing::Span, TraceContext) {
    let incoming: Vec<TraceContext> =
        messages.iter().filter_map(|m| TraceContext::of(&m.application_properties)).collect();
    let (trace, parent) = match (messages.len(), incoming.first()) {
        (1, Some(parent)) => (parent.child(), Some(*parent)),
        _ => (TraceContext::root(), None),
    };
    let one = (messages.len() == 1).then(|| &messages[0]);
    let span = tracing::debug_span!(
        "process",
        "otel.kind" = "consumer",
        "messaging.system" = "servicebus",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = %channel,
        "messaging.message.id" = one.and_then(|m| m.message_id.as_deref()),
        "messaging.message.conversation_id" = one.and_then(|m| m.correlation_id.as_deref()),
        "messaging.batch.message_count" = (messages.len() > 1).then_some(messages.len()),
        "messaging.servicebus.message.delivery_count" = one.map(|m| u64::from(m.delivery_count) + 1),
        "messaging.links" = (messages.len() > 1 && !incoming.is_empty())
            .then(|| tracing::field::display(Links(&incoming))),
        trace_id = %TraceId(trace.trace_id),
        span_id = %SpanId(trace.span_id),
        parent_span_id = parent.map(|p| tracing::field::display(SpanId(p.span_id))),
        "messaging.servicebus.handler" = tracing::field::Empty,
        "messaging.servicebus.outcome" = tracing::field::Empty,
    );
    (span, trace)
}

/// Trace contexts, comma-separated.
struct Links<'a>(&'a [TraceContext]);

impl std::fmt::Display for Links<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

/// How a call's deliveries ended: `completed` for one, `completed=3 abandoned=1` for several.
struct Settled(Vec<(&'static str, usize)>);

impl std::fmt::Display for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [(state, 1)] => f.write_str(state),
            all => {
                for (i, (state, n)) in all.iter().enumerate() {
                    write!(f, "{}{state}={n}", if i > 0 { " " } else { "" })?;
                }
                Ok(())
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // The call's inputs, each used once.
async fn run_call(
    rt: Arc<Instances>,
    channel: &str,
    receiver: Arc<Receiver>,
    messages: Vec<ReceivedMessage>,
    options: &ChannelOptions,
    mut hard_stop: watch::Receiver<bool>,
    trace: TraceContext,
) -> (CallEnd, Settled) {
    let ctx = rt.ctx().clone();
    let metrics = ctx.metrics();
    metrics.received(channel, messages.len() as u64);
    let deliveries: Vec<Arc<Delivery>> =
        messages.into_iter().map(|m| ctx.delivery(channel, m, receiver.clone())).collect();
    let mut store = rt.store(CallCtx::new(channel, &deliveries).with_trace(trace));

    metrics.call_started(channel);
    let started = tokio::time::Instant::now();
    let call = rt.handle(&mut store, &deliveries);
    // Lock renewal runs beside the call, in this task (a task of its own per call cost a spawn
    // and an abort per message); running wasm yields every epoch tick, so it is never starved.
    let renewal = async {
        if options.receive_mode == ReceiveMode::PeekLock {
            delivery::keep_locked(&deliveries, options.max_auto_lock_renewal, metrics).await;
        }
        std::future::pending::<()>().await
    };
    let end = tokio::select! {
        r = tokio::time::timeout(options.handler_timeout, call) => match r {
            Err(_) => CallEnd::Timeout(options.handler_timeout),
            Ok(Ok(Ok(()))) => CallEnd::Ok,
            Ok(Ok(Err(failure))) => CallEnd::Error(failure),
            Ok(Err(trap)) => CallEnd::Trap(format!("{trap:#}")),
        },
        _ = hard_stop.wait_for(|stop| *stop) => CallEnd::Cancelled,
        () = renewal => unreachable!("renewal never ends before the call"),
    };
    metrics.call_ended(channel, started.elapsed());
    // Pulled messages belong to the call too.
    let all = store.data().call.deliveries();
    drop(store);
    let counters = metrics.channel(channel);
    let (trace_id, span_id) = (TraceId(trace.trace_id), SpanId(trace.span_id));
    match &end {
        CallEnd::Ok => {}
        CallEnd::Error(Failure { level, text }) => {
            counters.handler_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match *level {
                tracing::Level::ERROR => {
                    tracing::error!(%channel, %trace_id, %span_id, "handler returned an error: {text}")
                }
                tracing::Level::WARN => {
                    tracing::warn!(%channel, %trace_id, %span_id, "handler returned an error: {text}")
                }
                _ => tracing::info!(%channel, %trace_id, %span_id, "handler returned an error: {text}"),
            }
        }
        CallEnd::Trap(t) => {
            counters.handler_traps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%channel, %trace_id, %span_id, "handler trapped: {t}");
        }
        CallEnd::Timeout(d) => {
            counters.handler_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%channel, %trace_id, %span_id, "handler ran past its {d:?} deadline and was stopped");
        }
        CallEnd::Cancelled => tracing::info!(%channel, %trace_id, %span_id, "handler stopped by shutdown"),
    }
    ctx.settle_leftovers(&all, end.succeeded()).await;
    let mut settled: Vec<(&'static str, usize)> = Vec::new();
    for d in &all {
        let state = d.state().name();
        match settled.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => settled.push((state, 1)),
        }
    }
    (end, Settled(settled))
}
