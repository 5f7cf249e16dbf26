//! Workers and handler calls: where a message enters the host.
//!
//! A worker per channel takes a concurrency permit, *then* receives (so no message
//! is locked that cannot be handled now), and spawns a handler call holding the
//! permit. A call makes its messages deliveries ([`crate::delivery`]), instantiates
//! the guest afresh ([`crate::instance`]), keeps their locks while it runs, enforces
//! its deadline, and afterwards has what the guest left unsettled settled by the
//! matrix of `docs/semantics.md`.

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ReceiveMode, ReceivedMessage, Receiver, ReceiverOptions};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ChannelOptions;
use crate::delivery::{self, Delivery};
use crate::instance::Instances;
use crate::links::DEFAULT_CONNECTION;
use crate::messaging::CallCtx;

/// How long a receive for a channel with `max-batch-size` > 1 waits, once it has a message,
/// for more to fill the batch.
const BATCH_LINGER: Duration = Duration::from_millis(1);

/// How a handler call ended.
#[derive(Debug)]
pub(crate) enum CallEnd {
    Ok,
    Error(String),
    Trap(String),
    Timeout(Duration),
    Cancelled,
}

impl CallEnd {
    fn succeeded(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// Runs one channel's worker until `stop` turns true, then waits for its calls.
///
/// A worker takes concurrency permits *before* it receives, so it never holds a locked
/// message it cannot start a call for.
pub(crate) async fn run_worker(
    rt: Arc<Instances>,
    channel: String,
    options: ChannelOptions,
    mut stop: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) {
    let receiver_options = ReceiverOptions { mode: options.receive_mode, prefetch: options.prefetch };
    let receiver = rt
        .ctx()
        .links()
        .receiver(DEFAULT_CONNECTION, &channel, receiver_options)
        .expect("the default connection exists");
    let permits = Arc::new(Semaphore::new(options.max_concurrent_calls));
    let mut calls = JoinSet::new();
    let mut failures = 0u32;
    // Batches form from what has arrived, plus a short wait when calls take several messages.
    let linger = if options.max_batch_size > 1 { BATCH_LINGER } else { Duration::ZERO };
    loop {
        if *stop.borrow() {
            break;
        }
        // Take a permit (waiting), then every other free one: one receive asks for as many
        // messages as there are calls that may start now, and each call keeps its permit.
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        let mut free = vec![first];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            free.push(p);
        }
        let received = tokio::select! {
            r = receiver.receive_batch(free.len() * options.max_batch_size, Duration::from_secs(1), linger) => r,
            _ = stop.changed() => break,
        };
        while calls.try_join_next().is_some() {}
        match received {
            Ok(messages) if messages.is_empty() => failures = 0,
            Ok(mut messages) => {
                failures = 0;
                while !messages.is_empty() {
                    let rest = messages.split_off(messages.len().min(options.max_batch_size));
                    let batch = std::mem::replace(&mut messages, rest);
                    let permit = free.pop().expect("one permit per batch: the receive asked for no more");
                    // Boxed: the call's future is kilobytes (Wasmtime's instantiate and call
                    // futures live in it), and spawning would otherwise copy it around.
                    let call = Box::pin(dispatch(
                        rt.clone(),
                        channel.clone(),
                        receiver.clone(),
                        batch,
                        options.clone(),
                        hard_stop.clone(),
                    ));
                    calls.spawn(async move {
                        call.await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                // The client already retried transient failures; back off before trying again.
                failures += 1;
                let wait = Duration::from_millis(200u64.saturating_mul(1 << failures.min(6)));
                tracing::warn!(%channel, "receiving failed ({e}); trying again in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    tracing::debug!(%channel, in_flight = calls.len(), "worker stopped receiving");
    while calls.join_next().await.is_some() {}
}

/// One handler call for `messages`, then the settlement matrix.
pub(crate) async fn dispatch(
    rt: Arc<Instances>,
    channel: String,
    receiver: Arc<Receiver>,
    messages: Vec<ReceivedMessage>,
    options: ChannelOptions,
    mut hard_stop: watch::Receiver<bool>,
) {
    let ctx = rt.ctx().clone();
    let metrics = ctx.metrics();
    metrics.received(&channel, messages.len() as u64);
    let deliveries: Vec<Arc<Delivery>> =
        messages.into_iter().map(|m| ctx.delivery(&channel, m, receiver.clone())).collect();
    let guest_messages: Vec<_> = deliveries.iter().map(|d| d.guest_message()).collect();
    let mut store = rt.store(CallCtx::new(&channel, &deliveries));

    metrics.call_started(&channel);
    let started = tokio::time::Instant::now();
    let call = async {
        let instance = rt.instantiate(&mut store).await?;
        instance.wasi_messaging_messaging_guest().call_handler(&mut store, &guest_messages).await
    };
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
            Ok(Ok(Err(e))) => CallEnd::Error(Instances::take_error(&mut store, e).to_string()),
            Ok(Err(trap)) => CallEnd::Trap(format!("{trap:#}")),
        },
        _ = hard_stop.wait_for(|stop| *stop) => CallEnd::Cancelled,
        () = renewal => unreachable!("renewal never ends before the call"),
    };
    metrics.call_ended(&channel, started.elapsed());
    // Pulled messages belong to the call too.
    let all = store.data().call.deliveries();
    drop(store);
    let counters = metrics.channel(&channel);
    match &end {
        CallEnd::Ok => {}
        CallEnd::Error(e) => {
            counters.handler_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%channel, "handler returned an error: {e}");
        }
        CallEnd::Trap(t) => {
            counters.handler_traps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%channel, "handler trapped: {t}");
        }
        CallEnd::Timeout(d) => {
            counters.handler_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%channel, "handler ran past its {d:?} deadline and was stopped");
        }
        CallEnd::Cancelled => tracing::info!(%channel, "handler stopped by shutdown"),
    }
    ctx.settle_leftovers(&all, end.succeeded()).await;
}
