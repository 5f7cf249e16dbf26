//! Workers: where a message enters the host.
//!
//! A worker per channel takes concurrency permits, *then* receives (so no message is locked
//! that cannot be handled now), and starts a handler call per batch, holding a permit
//! (`receive`). A call makes its messages deliveries ([`crate::delivery`]), instantiates the
//! guest afresh ([`crate::instance`]), keeps their locks while it runs, enforces its deadline,
//! and afterwards has what the guest left unsettled settled by the matrix of
//! `docs/semantics.md` (`call`). A session channel's worker accepts message sessions and
//! consumes each in order (`session`).

mod call;
mod receive;
mod session;

pub(crate) use call::call_span;

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ErrorKind as SbErrorKind, ReceiverOptions};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ChannelOptions;
use crate::instance::Instances;
use crate::links::DEFAULT_CONNECTION;

/// Runs one channel's worker until `stop` turns true, then waits for its calls: a session
/// channel's if the channel requires sessions.
pub(crate) async fn run_worker(
    rt: Arc<Instances>,
    channel: String,
    options: ChannelOptions,
    stop: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) {
    if options.requires_session {
        session::run(rt, channel, options, stop, hard_stop).await;
    } else {
        run_queue(rt, channel, options, stop, hard_stop).await;
    }
}

/// A worker that receives from the channel's one receiver.
async fn run_queue(
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
    let metrics = rt.ctx().metrics().clone();
    metrics.worker_started(&channel);
    let permits = Arc::new(Semaphore::new(options.max_concurrent_calls));
    let mut calls = JoinSet::new();
    let mut failures = 0u32;
    let linger = receive::linger(&options);
    loop {
        if *stop.borrow() {
            break;
        }
        let mut free = tokio::select! {
            p = receive::permits([&permits]) => p,
            _ = stop.changed() => break,
        };
        let received = tokio::select! {
            r = receiver.receive_batch(free.len() * options.max_batch_size, Duration::from_secs(1), linger) => r,
            _ = stop.changed() => break,
        };
        while calls.try_join_next().is_some() {}
        match received {
            Ok(messages) => {
                failures = 0;
                metrics.worker_ready(&channel, true);
                receive::start_calls(&rt, &channel, &receiver, messages, &options, &hard_stop, &mut free, &mut calls);
            }
            Err(e) => {
                failures += 1;
                metrics.worker_ready(&channel, false);
                let wait = receive::backoff(failures);
                if e.kind() == SbErrorKind::InvalidOperation {
                    // What Service Bus says to a plain receiver on an entity that requires sessions.
                    tracing::error!(
                        %channel,
                        "Service Bus refuses to receive from this channel ({e}); if its queue or subscription \
                         requires sessions, set requires-session = true for it; trying again in {wait:?}"
                    );
                } else {
                    tracing::warn!(%channel, "receiving failed ({e}); trying again in {wait:?}");
                }
                if receive::stopped_during(wait, &mut stop).await {
                    break;
                }
            }
        }
    }
    tracing::debug!(%channel, in_flight = calls.len(), "worker stopped receiving");
    while calls.join_next().await.is_some() {}
}
