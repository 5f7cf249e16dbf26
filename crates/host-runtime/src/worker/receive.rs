//! What both kinds of worker do: take concurrency permits before receiving, and start a call
//! per batch of what was received, each holding a permit until it ends.

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ReceivedMessage, Receiver};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::call::dispatch;
use crate::config::ChannelOptions;
use crate::instance::Instances;

/// How long a receive for a channel with `max-batch-size` > 1 waits, once it has a message,
/// for more to fill the batch.
const BATCH_LINGER: Duration = Duration::from_millis(1);

/// How long a receive waits, once it has a message, for more to fill a batch.
pub(super) fn linger(options: &ChannelOptions) -> Duration {
    if options.max_batch_size > 1 { BATCH_LINGER } else { Duration::ZERO }
}

/// The wait before trying again after `failures` failed receives in a row (the client already
/// retried transient failures).
pub(super) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(6)))
}

/// Waits `wait`, unless `stop` changes first; returns whether it did.
pub(super) async fn stopped_during(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.changed() => true,
    }
}

/// Takes a permit of each of `semaphores` (waiting, in order), then as many more of each as
/// are free at once: one receive then asks for as many batches as there are calls that may
/// start now.
pub(super) async fn permits<const N: usize>(semaphores: [&Arc<Semaphore>; N]) -> Vec<Vec<OwnedSemaphorePermit>> {
    let mut first = Vec::with_capacity(N);
    for s in semaphores {
        first.push(Arc::clone(s).acquire_owned().await.expect("the semaphore is never closed"));
    }
    let mut batches = vec![first];
    'more: loop {
        let mut next = Vec::with_capacity(N);
        for s in semaphores {
            match Arc::clone(s).try_acquire_owned() {
                Ok(p) => next.push(p),
                Err(_) => break 'more,
            }
        }
        batches.push(next);
    }
    batches
}

/// Starts a call per `max-batch-size` of `messages`, each holding one of `free`'s permits.
#[allow(clippy::too_many_arguments)] // The call's inputs, each passed on as it is.
pub(super) fn start_calls(
    rt: &Arc<Instances>,
    channel: &str,
    receiver: &Arc<Receiver>,
    mut messages: Vec<ReceivedMessage>,
    options: &ChannelOptions,
    hard_stop: &watch::Receiver<bool>,
    free: &mut Vec<Vec<OwnedSemaphorePermit>>,
    calls: &mut JoinSet<()>,
) {
    while !messages.is_empty() {
        let rest = messages.split_off(messages.len().min(options.max_batch_size));
        let batch = std::mem::replace(&mut messages, rest);
        let permit = free.pop().expect("one permit per batch: the receive asked for no more");
        // Boxed: the call's future is kilobytes (Wasmtime's instantiate and call futures live
        // in it), and spawning would otherwise copy it around.
        let call = Box::pin(dispatch(
            rt.clone(),
            channel.to_string(),
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
