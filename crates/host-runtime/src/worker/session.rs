//! A session channel's worker: it accepts message sessions, up to `max-concurrent-sessions`
//! at once, and consumes each in order.
//!
//! A held session is received from only when one of its `max-concurrent-calls-per-session`
//! permits (and one of the channel's `max-concurrent-calls`) is free: with one per session,
//! its next message is received after the call on the previous one ended and its settlement
//! was sent, so a session's messages reach the guest strictly in order. The session's lock
//! (which locks its messages) is renewed while it is held, up to `max-auto-lock-renewal` after
//! its latest message arrived. The session is released (its link closed, for another
//! receiver to accept) when it has had no message for `session-idle-timeout`, when its lock
//! is lost, or when the host stops; calls in flight end first.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use amqp_servicebus::{ErrorKind as SbErrorKind, Receiver, ReceiverOptions, SessionReceiverOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::receive;
use crate::config::ChannelOptions;
use crate::instance::Instances;
use crate::metrics::ChannelCounters;

/// How long one accept waits for a session to come free before asking again.
const ACCEPT_WAIT: Duration = Duration::from_secs(30);
/// How often a held session checks whether its lock is due for renewal.
const RENEWAL_CHECK: Duration = Duration::from_millis(100);
/// Receives that fail in a row (after the client's own retries) before a session is let go.
const MAX_RECEIVE_FAILURES: u32 = 3;

/// Accepts sessions of `channel` until `stop` turns true, then waits for the held ones to end.
pub(super) async fn run(
    rt: Arc<Instances>,
    channel: String,
    options: ChannelOptions,
    mut stop: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) {
    let client = rt.ctx().links().default_client().clone();
    let counters = rt.ctx().metrics().channel(&channel);
    let sessions = Arc::new(Semaphore::new(options.max_concurrent_sessions));
    // The channel's calls, across its sessions.
    let calls = Arc::new(Semaphore::new(options.max_concurrent_calls));
    let accept_options = SessionReceiverOptions {
        receiver: ReceiverOptions { mode: options.receive_mode, prefetch: options.prefetch },
        wait: ACCEPT_WAIT,
        max_lock_renewal: Duration::ZERO, // Renewed here, by the rule above.
    };
    let metrics = rt.ctx().metrics().clone();
    // Ready once the entity answers; then by how accepting sessions goes.
    metrics.worker_started(&channel);
    let mut held = JoinSet::new();
    let mut failures = 0u32;
    tokio::select! {
        checked = client.check_entity(&channel) => metrics.worker_ready(&channel, checked.is_ok()),
        _ = stop.changed() => {}
    }
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = sessions.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        while held.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = client.accept_next_session(&channel, accept_options.clone()) => r,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok(receiver) => {
                failures = 0;
                metrics.worker_ready(&channel, true);
                counters.sessions_accepted.fetch_add(1, Ordering::Relaxed);
                let session = Held {
                    rt: rt.clone(),
                    channel: channel.clone(),
                    receiver: Arc::new(receiver),
                    options: options.clone(),
                    calls: calls.clone(),
                    counters: counters.clone(),
                };
                held.spawn(session.run(stop.clone(), hard_stop.clone(), permit));
            }
            // No session came free in time: ask again.
            Err(e) if e.kind() == SbErrorKind::Timeout => {
                failures = 0;
                metrics.worker_ready(&channel, true);
            }
            Err(e) => {
                failures += 1;
                metrics.worker_ready(&channel, false);
                let wait = receive::backoff(failures);
                tracing::warn!(%channel, "accepting a session failed ({e}); trying again in {wait:?}");
                if receive::stopped_during(wait, &mut stop).await {
                    break;
                }
            }
        }
    }
    tracing::debug!(%channel, sessions = held.len(), "session worker stopped accepting");
    while held.join_next().await.is_some() {}
}

/// One held message session.
struct Held {
    rt: Arc<Instances>,
    channel: String,
    receiver: Arc<Receiver>,
    options: ChannelOptions,
    /// The channel's call permits.
    calls: Arc<Semaphore>,
    counters: Arc<ChannelCounters>,
}

/// Why a held session was let go.
#[derive(Debug)]
enum Release {
    Idle,
    Stopping,
    LockLost(String),
    Failing(String),
}

impl Held {
    fn id(&self) -> &str {
        self.receiver.session().map_or("", |s| s.id())
    }

    /// Consumes the session until it is released; `_permit` is its place among the channel's
    /// sessions.
    async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        hard_stop: watch::Receiver<bool>,
        _permit: OwnedSemaphorePermit,
    ) {
        self.counters.sessions_held.fetch_add(1, Ordering::Relaxed);
        let (channel, session) = (self.channel.clone(), self.id().to_string());
        tracing::debug!(%channel, %session, "session accepted");
        let per_session = Arc::new(Semaphore::new(self.options.max_concurrent_calls_per_session));
        let lock_length = self.lock_left();
        let linger = receive::linger(&self.options);
        let mut calls = JoinSet::new();
        let mut last_message = Instant::now();
        let mut failures = 0u32;
        let release = loop {
            if *stop.borrow() {
                break Release::Stopping;
            }
            if let Err(lost) = self.renew_if_due(lock_length, last_message).await {
                break lost;
            }
            let mut free = tokio::select! {
                p = receive::permits([&per_session, &self.calls]) => p,
                _ = stop.changed() => break Release::Stopping,
                _ = tokio::time::sleep(RENEWAL_CHECK) => continue,
            };
            while calls.try_join_next().is_some() {}
            let idle = last_message.elapsed();
            if calls.is_empty() && idle >= self.options.session_idle_timeout {
                break Release::Idle;
            }
            // Short receives (a quarter of the lock at most), so the lock is looked after while
            // the session is quiet.
            let ceiling = (lock_length / 4).clamp(RENEWAL_CHECK, Duration::from_secs(1));
            let wait = self.options.session_idle_timeout.saturating_sub(idle).clamp(RENEWAL_CHECK, ceiling);
            let max = free.len() * self.options.max_batch_size;
            let received = tokio::select! {
                r = self.receiver.receive_batch(max, wait, linger) => r,
                _ = stop.changed() => break Release::Stopping,
            };
            match received {
                Ok(messages) => {
                    failures = 0;
                    if !messages.is_empty() {
                        last_message = Instant::now();
                    }
                    receive::start_calls(
                        &self.rt,
                        &self.channel,
                        &self.receiver,
                        messages,
                        &self.options,
                        &hard_stop,
                        &mut free,
                        &mut calls,
                    );
                }
                Err(e) if e.is_lock_lost() => break Release::LockLost(e.to_string()),
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_RECEIVE_FAILURES {
                        break Release::Failing(e.to_string());
                    }
                    if receive::stopped_during(receive::backoff(failures), &mut stop).await {
                        break Release::Stopping;
                    }
                }
            }
        };
        // The calls in flight hold the session's messages: keep its lock until they end.
        let mut lost = matches!(release, Release::LockLost(_));
        loop {
            tokio::select! {
                r = calls.join_next() => if r.is_none() { break },
                _ = tokio::time::sleep(RENEWAL_CHECK), if !lost => {
                    lost = self.renew_if_due(lock_length, last_message).await.is_err();
                }
            }
        }
        match &release {
            Release::LockLost(why) => {
                self.counters.session_locks_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%channel, %session, "session lock lost; its messages go to whoever accepts it next: {why}");
            }
            Release::Failing(why) => {
                tracing::warn!(%channel, %session, "receiving kept failing; session released: {why}")
            }
            Release::Idle | Release::Stopping => tracing::debug!(%channel, %session, ?release, "session released"),
        }
        self.receiver.close().await;
        self.counters.sessions_held.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long the session's lock has left.
    fn lock_left(&self) -> Duration {
        self.receiver
            .session()
            .and_then(|s| s.locked_until().duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
    }

    /// Renews the session's lock once half of it is gone, up to `max-auto-lock-renewal` after
    /// the latest message arrived. A lost lock ends the session.
    async fn renew_if_due(&self, lock_length: Duration, last_message: Instant) -> Result<(), Release> {
        let Some(session) = self.receiver.session() else { return Ok(()) };
        if last_message.elapsed() > self.options.max_auto_lock_renewal || self.lock_left() > lock_length / 2 {
            return Ok(());
        }
        match session.renew_lock().await {
            Ok(_) => Ok(()),
            Err(e) if e.is_lock_lost() => Err(Release::LockLost(e.to_string())),
            Err(e) => {
                tracing::warn!(channel = %self.channel, session = %session.id(), "renewing the session lock failed: {e}");
                Ok(())
            }
        }
    }
}
