//! One handler call: its messages become deliveries, a fresh instance runs `handler` on them
//! under a deadline while their locks are kept, and the matrix settles what it left.

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ReceiveMode, ReceivedMessage, Receiver};
use tokio::sync::watch;

use crate::config::ChannelOptions;
use crate::delivery::{self, Delivery};
use crate::instance::Instances;
use crate::messaging::CallCtx;

/// How a handler call ended.
#[derive(Debug)]
enum CallEnd {
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
