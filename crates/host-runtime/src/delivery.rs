//! A message given to a handler call, where it stands, and how it is settled.
//!
//! Every settlement goes through [`settle`]: the guest's imports (`complete-message`,
//! `redirect`, ...), and the host's matrix for what a call left unsettled
//! ([`settle_leftovers`]). Lock renewal is here too, for the guest's `renew-lock` and for the
//! host's renewal beside a running call ([`keep_locked`]). So a message moves one way: a worker
//! receives it, makes it a [`Delivery`], a call runs, and this module settles it.
//!
//! A delivery moves `Unsettled` → `Settling` → `Settled(outcome)`; a failed settlement goes
//! back to `Unsettled`, or to `LockLost` when the broker says the lock is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use amqp_servicebus::{
    Error as SbError, ErrorKind as SbErrorKind, MessageSession, OrderedMap, ReceivedMessage, Receiver, Sender,
    SimpleValue,
};

use crate::convert;
use crate::links::Links;
use crate::metrics::{ChannelCounters, Metrics};

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Completed: removed from the entity.
    Completed,
    /// Abandoned: delivered again.
    Abandoned,
    /// Moved to the dead-letter sub-queue.
    DeadLettered,
    /// Deferred: received again only by sequence number.
    Deferred,
    /// Sent to another channel and completed.
    Redirected,
    /// Sent again to its channel, scheduled after a delay, and completed.
    DelayedRetry,
}

impl Outcome {
    /// Its counter among a channel's.
    fn counter(self, c: &ChannelCounters) -> &AtomicU64 {
        match self {
            Self::Completed => &c.completed,
            Self::Abandoned => &c.abandoned,
            Self::DeadLettered => &c.dead_lettered,
            Self::Deferred => &c.deferred,
            Self::Redirected => &c.redirected,
            Self::DelayedRetry => &c.delayed,
        }
    }

    /// Its name in logs and traces: `completed`, `dead-lettered`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Abandoned => "abandoned",
            Self::DeadLettered => "dead-lettered",
            Self::Deferred => "deferred",
            Self::Redirected => "redirected",
            Self::DelayedRetry => "delayed-retry",
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Nobody has settled it.
    Unsettled,
    /// A settlement is on its way to the broker.
    Settling,
    /// Settled.
    Settled(Outcome),
    /// Its lock was lost: the broker delivers it again.
    LockLost,
}

impl DeliveryState {
    /// Its name in logs and traces: the outcome's once settled, else `unsettled`, `settling`,
    /// `lock-lost` (a delivery in receive-and-delete mode stays `unsettled`: the broker
    /// removed it when it was delivered).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unsettled => "unsettled",
            Self::Settling => "settling",
            Self::Settled(o) => o.name(),
            Self::LockLost => "lock-lost",
        }
    }
}

/// A settlement requested by the guest, or by the host's matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Remove the message.
    Complete,
    /// Release the lock: the message is delivered again.
    Abandon,
    /// Move the message to the dead-letter sub-queue.
    DeadLetter {
        /// `DeadLetterReason`.
        reason: String,
        /// `DeadLetterErrorDescription`.
        description: String,
    },
    /// Defer the message.
    Defer,
    /// Send a copy to another channel (through the default connection) and complete this one.
    Redirect(String),
    /// Send a copy to the same channel, scheduled after the delay, and complete this one.
    AbandonWithDelay(Duration),
}

/// One message given to a handler call.
pub struct Delivery {
    id: String,
    channel: String,
    message: ReceivedMessage,
    receiver: Arc<Receiver>,
    received_at: tokio::time::Instant,
    /// The state, and the lock's expiry once a renewal moved it.
    state: Mutex<(DeliveryState, Option<SystemTime>)>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("sequence_number", &self.message.sequence_number)
            .field("state", &self.state())
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(id: String, channel: &str, message: ReceivedMessage, receiver: Arc<Receiver>) -> Self {
        Self {
            id,
            channel: channel.to_string(),
            message,
            receiver,
            received_at: tokio::time::Instant::now(),
            state: Mutex::new((DeliveryState::Unsettled, None)),
        }
    }

    /// Its `delivery-id`, which the guest's settlement calls name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The channel it was received from.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The message as received.
    pub fn message(&self) -> &ReceivedMessage {
        &self.message
    }

    /// The message as the guest sees it (`docs/semantics.md`, "Metadata").
    pub fn guest_message(&self) -> wit_interface::Message {
        convert::to_guest(&self.message, &self.channel, &self.id)
    }

    /// The message as a guest of the December 2024 revision sees it: the same data and
    /// metadata in a message handle's state, which names this delivery.
    pub fn message_state(&self) -> wit_interface::MessageState {
        convert::to_message_state(&self.message, &self.channel, Some(&self.id))
    }

    /// Where it stands.
    pub fn state(&self) -> DeliveryState {
        self.lock().0
    }

    /// Whether it can be settled at all: false in receive-and-delete mode, where the broker
    /// removed it when it was delivered.
    pub fn is_locked(&self) -> bool {
        self.message.lock_token.is_some()
    }

    /// When its lock expires, as last reported by the broker. A message of a session is
    /// locked by its session's lock.
    pub fn locked_until(&self) -> Option<SystemTime> {
        if let Some(session) = self.session() {
            return Some(session.locked_until());
        }
        self.lock().1.or(self.message.locked_until)
    }

    /// The message session it was received in, on a session channel.
    pub fn session(&self) -> Option<MessageSession<'_>> {
        self.receiver.session()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (DeliveryState, Option<SystemTime>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, s: DeliveryState) {
        self.lock().0 = s;
    }

    /// Records a lost lock, unless the delivery was settled meanwhile (a renewal racing a
    /// completion sees the lock gone because the message is); returns whether it was recorded.
    fn mark_lock_lost(&self) -> bool {
        let mut state = self.lock();
        if state.0 == DeliveryState::Unsettled {
            state.0 = DeliveryState::LockLost;
            true
        } else {
            false
        }
    }

    /// Why it cannot be settled now, if it cannot.
    pub fn check_settleable(&self) -> Result<(), NotSettleable> {
        if !self.is_locked() {
            return Err(NotSettleable::ReceiveAndDelete { channel: self.channel.clone() });
        }
        let seq = self.message.sequence_number;
        match self.state() {
            DeliveryState::Unsettled => Ok(()),
            DeliveryState::Settled(outcome) => Err(NotSettleable::Settled { seq, outcome }),
            DeliveryState::Settling => Err(NotSettleable::Settling { seq }),
            DeliveryState::LockLost => Err(NotSettleable::LockLost { seq }),
        }
    }

    /// Renews its lock (for a message of a session, the session's lock); returns the new
    /// expiry. A lost lock is recorded (and counted).
    pub async fn renew_lock(&self, metrics: &Metrics) -> Result<SystemTime, SbError> {
        let renewed = match self.session() {
            Some(session) => session.renew_lock().await,
            None => self.receiver.renew_lock(&self.message).await,
        };
        match renewed {
            Ok(until) => {
                self.lock().1 = Some(until);
                metrics.renewed(&self.channel);
                Ok(until)
            }
            Err(e) => {
                if e.is_lock_lost() && self.mark_lock_lost() {
                    metrics.lock_lost(&self.channel);
                    tracing::warn!(channel = %self.channel, seq = self.message.sequence_number, "lock lost: {e}");
                }
                Err(e)
            }
        }
    }
}

/// Why a delivery cannot be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotSettleable {
    /// Its channel is in receive-and-delete mode.
    #[error("channel {channel:?} is in receive-and-delete mode: its messages are settled when received")]
    ReceiveAndDelete {
        /// The channel.
        channel: String,
    },
    /// It was settled already.
    #[error("message {seq} was already settled ({outcome:?})")]
    Settled {
        /// Its sequence number.
        seq: i64,
        /// How.
        outcome: Outcome,
    },
    /// A settlement of it is under way.
    #[error("message {seq} is being settled")]
    Settling {
        /// Its sequence number.
        seq: i64,
    },
    /// Its lock was lost.
    #[error("the lock on message {seq} was lost")]
    LockLost {
        /// Its sequence number.
        seq: i64,
    },
}

/// Delivery ids: a counter plus a random tag drawn once per process, so ids differ between host
/// processes without a random draw (a syscall) per message.
pub(crate) struct DeliveryIds {
    next: AtomicU64,
    process_tag: String,
}

impl DeliveryIds {
    pub(crate) fn new() -> Self {
        Self { next: AtomicU64::new(0), process_tag: uuid::Uuid::new_v4().simple().to_string() }
    }

    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        format!("d{n}-{}", self.process_tag)
    }
}

/// Applies a settlement to a delivery and records its outcome. Copies (a redirect, a delayed
/// retry) are sent through the `default` connection of `links`.
pub async fn settle(links: &Links, metrics: &Metrics, d: &Delivery, settlement: Settlement) -> Result<(), SbError> {
    // From here on a racing lock renewal leaves the delivery alone.
    d.set(DeliveryState::Settling);
    let r = &d.receiver;
    let m = &d.message;
    let outcome = match settlement {
        Settlement::Complete => r.complete(m).await.map(|_| Outcome::Completed),
        Settlement::Abandon => r.abandon(m, OrderedMap::new()).await.map(|_| Outcome::Abandoned),
        Settlement::DeadLetter { reason, description } => {
            r.dead_letter(m, &reason, &description).await.map(|_| Outcome::DeadLettered)
        }
        Settlement::Defer => r.defer(m).await.map(|_| Outcome::Deferred),
        Settlement::Redirect(to) => {
            let sender = links.default_sender(&to);
            forward(r, m, &sender, copy_of(m)).await.map(|_| Outcome::Redirected)
        }
        Settlement::AbandonWithDelay(delay) => {
            let sender = links.default_sender(&d.channel);
            let mut copy = copy_of(m);
            let retries = match m.application_properties.get("delayed-retry-count") {
                Some(SimpleValue::Long(n)) => *n + 1,
                Some(SimpleValue::Int(n)) => i64::from(*n) + 1,
                Some(SimpleValue::String(s)) => s.parse::<i64>().unwrap_or(0) + 1,
                _ => 1,
            };
            copy.application_properties.insert("delayed-retry-count".into(), SimpleValue::Long(retries));
            copy.scheduled_enqueue_time = Some(SystemTime::now() + delay);
            forward(r, m, &sender, copy).await.map(|_| Outcome::DelayedRetry)
        }
    };
    match outcome {
        Ok(o) => {
            d.set(DeliveryState::Settled(o));
            o.counter(&metrics.channel(&d.channel)).fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            if e.is_lock_lost() {
                d.set(DeliveryState::LockLost);
                metrics.lock_lost(&d.channel);
            } else {
                d.set(DeliveryState::Unsettled);
            }
            Err(e)
        }
    }
}

/// The matrix's last row (`docs/semantics.md`): what a call left unsettled is completed if the
/// call `succeeded`, else abandoned. Settled concurrently: one round trip for a batch, not one
/// each. Failures are logged: the broker delivers such a message again when its lock expires.
pub async fn settle_leftovers(links: &Links, metrics: &Metrics, deliveries: &[Arc<Delivery>], succeeded: bool) {
    let what = if succeeded { "complete" } else { "abandon" };
    let leftovers = deliveries.iter().filter(|d| d.state() == DeliveryState::Unsettled && d.is_locked()).map(|d| {
        let settlement = if succeeded { Settlement::Complete } else { Settlement::Abandon };
        async move {
            if let Err(e) = settle(links, metrics, d, settlement).await {
                tracing::warn!(channel = %d.channel, seq = d.message.sequence_number, "could not {what} after the handler: {e}");
            }
        }
    });
    futures_util::future::join_all(leftovers).await;
}

/// Renews the locks of unsettled deliveries at half their remaining time, until `max_renewal`
/// after each was received. Never returns: it runs beside a call and is dropped with it.
/// Messages of a session are left to whoever holds the session: its lock is theirs.
pub async fn keep_locked(deliveries: &[Arc<Delivery>], max_renewal: Duration, metrics: &Metrics) {
    let lock_length: Vec<Duration> = deliveries
        .iter()
        .map(|d| {
            d.locked_until().and_then(|u| u.duration_since(SystemTime::now()).ok()).unwrap_or(Duration::from_secs(30))
        })
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (d, length) in deliveries.iter().zip(&lock_length) {
            if d.state() != DeliveryState::Unsettled
                || !d.is_locked()
                || d.session().is_some()
                || d.received_at.elapsed() > max_renewal
            {
                continue;
            }
            let Some(until) = d.locked_until() else { continue };
            let remaining = until.duration_since(SystemTime::now()).unwrap_or_default();
            if remaining > *length / 2 {
                continue;
            }
            if let Err(e) = d.renew_lock(metrics).await
                && !e.is_lock_lost()
                && d.state() == DeliveryState::Unsettled
            {
                tracing::warn!(channel = %d.channel, seq = d.message.sequence_number, "renewing the lock failed: {e}");
            }
        }
    }
}

/// Sends `copy` and completes `m` in one broker transaction. Where there are no transactions
/// (a generic AMQP broker, or a message received by sequence number), sends and then completes:
/// a failed completion leaves the original to be redelivered, so at most one extra copy per failed
/// completion, and nothing is lost.
async fn forward(
    r: &Receiver,
    m: &ReceivedMessage,
    sender: &Sender,
    copy: amqp_servicebus::Message,
) -> Result<(), SbError> {
    match r.complete_and_send(m, sender, copy.clone()).await {
        Err(e) if e.kind() == SbErrorKind::NotSupported => {
            sender.send(copy).await?;
            r.complete(m).await
        }
        other => other,
    }
}

/// A received message as a new message with the same body and properties.
fn copy_of(m: &ReceivedMessage) -> amqp_servicebus::Message {
    let mut c = amqp_servicebus::Message::new(m.body.clone());
    c.message_id = m.message_id.clone();
    c.correlation_id = m.correlation_id.clone();
    c.content_type = m.content_type.clone();
    c.subject = m.subject.clone();
    c.to = m.to.clone();
    c.reply_to = m.reply_to.clone();
    c.session_id = m.session_id.clone();
    c.reply_to_session_id = m.reply_to_session_id.clone();
    c.partition_key = m.partition_key.clone();
    c.application_properties = m.application_properties.clone();
    c
}
