//! The words of the queue's API: an entity's properties, what a receiver asks of it
//! (receive mode, settlement), and what it answers (deliveries, counts, errors).

use bytes::Bytes;
use fe2o3_amqp_types::primitives::SimpleValue;
use std::time::Duration;

use super::SessionError;

/// Per-entity settings (from `Config.json` `Properties`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueProperties {
    /// How long a peek-lock lasts.
    pub lock_duration: Duration,
    /// Deliveries before a message is dead-lettered with `MaxDeliveryCountExceeded`.
    pub max_delivery_count: u32,
    /// TTL of messages that set none; `None` = never expire.
    pub default_message_ttl: Option<Duration>,
    /// Expired messages go to the dead-letter queue instead of being dropped.
    pub dead_lettering_on_message_expiration: bool,
    /// `MaxSizeInMegabytes`: the most the entity holds (messages as sent, every state but
    /// dead-lettered); a send that would pass it is refused with `amqp:resource-limit-exceeded`.
    pub max_size_megabytes: u64,
    /// `RequiresSession`: messages need a session id, and receivers lock a session.
    pub requires_session: bool,
    /// `RequiresDuplicateDetection` with its `DuplicateDetectionHistoryTimeWindow`: a message
    /// whose message-id was sent inside the window is accepted and dropped. `None`: off.
    /// (A subscription has none of its own: its topic detects duplicates.)
    pub duplicate_detection_window: Option<Duration>,
    /// `MaxMessageSizeInKilobytes` (in bytes): the largest message a sender may send here;
    /// `None` is the emulator's (`--max-message-size`). Not for subscriptions: their topic's applies.
    pub max_message_size: Option<usize>,
    /// `ForwardTo`: the queue or topic every message moves to as it arrives (scheduled
    /// messages when they are due); no receiver may attach here.
    pub forward_to: Option<String>,
    /// `ForwardDeadLetteredMessagesTo`: the queue or topic dead-lettered messages move to,
    /// instead of this entity's dead-letter queue.
    pub forward_dead_lettered_messages_to: Option<String>,
}

impl Default for QueueProperties {
    fn default() -> Self {
        Self {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            default_message_ttl: None,
            dead_lettering_on_message_expiration: false,
            max_size_megabytes: DEFAULT_MAX_SIZE_MEGABYTES,
            requires_session: false,
            duplicate_detection_window: None,
            max_message_size: None,
            forward_to: None,
            forward_dead_lettered_messages_to: None,
        }
    }
}

/// `DuplicateDetectionHistoryTimeWindow` when `RequiresDuplicateDetection` sets none: the
/// service's default, 10 minutes.
pub const DEFAULT_DUPLICATE_DETECTION_WINDOW: Duration = Duration::from_secs(600);

/// `MaxSizeInMegabytes` of an entity that sets none: the service's default, 1 GB.
pub const DEFAULT_MAX_SIZE_MEGABYTES: u64 = 1024;

/// Why a send was refused: the entity is full, or the emulator's memory budget is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaExceeded {
    #[error(
        "The maximum entity size has been reached or exceeded for '{entity}'. Size of entity in bytes: {size}, \
         max entity size in bytes: {max}. Receive or purge messages, or raise MaxSizeInMegabytes."
    )]
    Entity { entity: String, size: u64, max: u64 },
    #[error(
        "The emulator holds {used} bytes of messages; {wanted} more would pass its limit of {limit} bytes \
         (--max-memory). Receive or purge messages, or raise --max-memory."
    )]
    Memory { used: u64, limit: u64, wanted: u64 },
}

impl QuotaExceeded {
    /// The AMQP condition the service uses.
    pub(crate) const CONDITION: &'static str = "amqp:resource-limit-exceeded";
}

/// A message without a session id, sent to an entity that requires sessions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The SessionId was not set on a message, and it cannot be sent to the entity '{entity}'. Entities that have \
     session support enabled can only receive messages that have the SessionId set to a valid value."
)]
pub(crate) struct SessionIdMissing {
    pub(crate) entity: String,
}

impl SessionIdMissing {
    /// The AMQP condition the service uses.
    pub(crate) fn condition(&self) -> &'static str {
        "amqp:not-allowed"
    }
}

/// How a receiver takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiveMode {
    PeekLock,
    ReceiveAndDelete,
}

/// What a receiver asked the broker to do with a locked message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settlement {
    Complete,
    /// Unlock; the delivery count rises.
    Abandon(Vec<(String, SimpleValue)>),
    DeadLetter {
        reason: Option<String>,
        description: Option<String>,
        properties: Vec<(String, SimpleValue)>,
    },
    Defer(Vec<(String, SimpleValue)>),
    /// Unlock without counting a delivery.
    Release,
}

/// Why deferred messages could not be received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeferredError {
    #[error("no deferred message has sequence number {0}")]
    NotDeferred(i64),
    #[error("this entity requires sessions: receive its deferred messages with a session receiver")]
    SessionRequired,
    #[error(transparent)]
    Session(SessionError),
}

/// Why a settlement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SettleError {
    #[error("the lock supplied is invalid: it expired, was already settled, or was never given out")]
    LockLost,
    /// The message's session lock lapsed or was released.
    #[error("the session lock was lost: it expired, or the session receiver closed")]
    SessionLockLost,
    /// A message lock renewal, for a message that its session's lock holds.
    #[error("a message in a session is locked by its session: renew the session lock instead")]
    SessionMessage,
}

impl SettleError {
    /// The AMQP condition the service answers with.
    pub(crate) fn condition(&self) -> &'static str {
        match self {
            Self::LockLost => "com.microsoft:message-lock-lost",
            Self::SessionLockLost => "com.microsoft:session-lock-lost",
            Self::SessionMessage => "amqp:not-allowed",
        }
    }

    /// The service's description.
    pub(crate) fn description(&self) -> &'static str {
        match self {
            Self::LockLost => {
                "The lock supplied is invalid. Either the lock expired, or the message has already been removed \
                 from the queue."
            }
            Self::SessionLockLost => {
                "The session lock has expired on the MessageSession. Accept a new MessageSession to receive its \
                 messages again."
            }
            Self::SessionMessage => {
                "A message received from a session is locked by the session: renew the session lock \
                 (com.microsoft:renew-session-lock) instead of the message lock."
            }
        }
    }
}

/// A message handed to a receiver.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) sequence_number: i64,
    pub(crate) lock_token: Option<uuid::Uuid>,
    pub(crate) payload: Bytes,
}

/// Counts of a queue's messages, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Available to receive.
    pub active: usize,
    /// Locked by a receiver.
    pub locked: usize,
    /// Deferred (locked or not).
    pub deferred: usize,
    /// Scheduled for later.
    pub scheduled: usize,
    /// In the dead-letter queue.
    pub dead_lettered: usize,
}
