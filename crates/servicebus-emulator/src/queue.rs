//! A queue (or subscription): its messages, their locks, and its dead-letter queue.
//!
//! All state sits behind one `std::sync::Mutex`, held only for short, non-async
//! sections. Time-driven changes (lock expiry, scheduled messages appearing, TTL
//! expiry) run in one timer task per queue, started by the namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp_types::primitives::SimpleValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::{DEAD_LETTER_DESCRIPTION, DEAD_LETTER_REASON, MessageState, Stamp, StoredMessage, now_ms};

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
}

impl Default for QueueProperties {
    fn default() -> Self {
        Self {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            default_message_ttl: None,
            dead_lettering_on_message_expiration: false,
            max_size_megabytes: DEFAULT_MAX_SIZE_MEGABYTES,
        }
    }
}

/// `MaxSizeInMegabytes` of an entity that sets none: the service's default, 1 GB.
pub const DEFAULT_MAX_SIZE_MEGABYTES: u64 = 1024;

/// Why a send was refused: the entity is full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The maximum entity size has been reached or exceeded for '{entity}'. Size of entity in bytes: {size}, \
     max entity size in bytes: {max}. Receive or purge messages, or raise MaxSizeInMegabytes."
)]
pub(crate) struct QuotaExceeded {
    pub(crate) entity: String,
    pub(crate) size: u64,
    pub(crate) max: u64,
}

impl QuotaExceeded {
    /// The AMQP condition the service uses.
    pub(crate) const CONDITION: &'static str = "amqp:resource-limit-exceeded";
}

/// `now + d`, or the far future when that is past what an `Instant` holds.
fn instant_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// `d` in milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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

/// Why a settlement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SettleError {
    #[error("the lock supplied is invalid: it expired, was already settled, or was never given out")]
    LockLost,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Available,
    Locked { token: uuid::Uuid, until: Instant, until_ms: i64, deferred: bool },
    Deferred,
    Scheduled,
}

#[derive(Debug)]
struct Entry {
    msg: StoredMessage,
    state: EntryState,
    /// Deliveries that ended without settlement (abandon, lock expiry).
    delivery_count: u32,
    expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DeadlineKind {
    LockExpiry,
    Scheduled,
    Ttl,
}

type Wake = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    next_sequence: i64,
    entries: BTreeMap<i64, Entry>,
    available: BTreeSet<i64>,
    locks: HashMap<uuid::Uuid, i64>,
    deadlines: BTreeSet<(Instant, i64, DeadlineKind)>,
    waiters: Vec<Wake>,
    /// The sizes of the messages in `entries`, for `MaxSizeInMegabytes`.
    bytes: u64,
}

impl State {
    fn insert_entry(&mut self, seq: i64, entry: Entry) {
        self.bytes += entry.msg.size as u64;
        self.entries.insert(seq, entry);
    }

    fn remove_entry(&mut self, seq: &i64) -> Option<Entry> {
        let entry = self.entries.remove(seq)?;
        self.bytes = self.bytes.saturating_sub(entry.msg.size as u64);
        Some(entry)
    }
}

/// A queue, subscription, or dead-letter queue.
pub(crate) struct Queue {
    name: String,
    properties: QueueProperties,
    dead_letter: Option<Arc<Queue>>,
    state: Mutex<State>,
    timer: Notify,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue with its dead-letter queue.
    pub(crate) fn new(name: &str, properties: QueueProperties) -> Arc<Self> {
        // A dead-lettered message is never refused: the dead-letter queue has no quota.
        let dlq_props = QueueProperties {
            max_delivery_count: u32::MAX,
            default_message_ttl: None,
            dead_lettering_on_message_expiration: false,
            max_size_megabytes: u64::MAX,
            ..properties.clone()
        };
        let dead_letter = Arc::new(Self::bare(&format!("{name}/$DeadLetterQueue"), dlq_props, None));
        Arc::new(Self::bare(name, properties, Some(dead_letter)))
    }

    fn bare(name: &str, properties: QueueProperties, dead_letter: Option<Arc<Queue>>) -> Self {
        Self {
            name: name.to_string(),
            properties,
            dead_letter,
            state: Mutex::new(State { next_sequence: 1, ..State::default() }),
            timer: Notify::new(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn dead_letter_queue(&self) -> Option<&Arc<Queue>> {
        self.dead_letter.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; the state
        // is still consistent enough to serve, so recover rather than cascade.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most this entity holds, in bytes.
    fn max_bytes(&self) -> u64 {
        self.properties.max_size_megabytes.saturating_mul(1024 * 1024)
    }

    /// Refuses `bytes` more if they would pass `MaxSizeInMegabytes`.
    pub(crate) fn check_room(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        let size = self.lock().bytes;
        self.room_for(size, bytes)
    }

    fn room_for(&self, size: u64, bytes: u64) -> Result<(), QuotaExceeded> {
        let max = self.max_bytes();
        if size.saturating_add(bytes) > max {
            return Err(QuotaExceeded { entity: self.name.clone(), size, max });
        }
        Ok(())
    }

    /// Enqueues messages atomically, all or none; returns their sequence numbers.
    pub(crate) fn enqueue(&self, messages: Vec<StoredMessage>) -> Result<Vec<i64>, QuotaExceeded> {
        let now = now_ms();
        let instant_now = Instant::now();
        let mut wake = Vec::new();
        let mut sequence_numbers = Vec::with_capacity(messages.len());
        let mut earliest = None;
        {
            let mut st = self.lock();
            self.room_for(st.bytes, StoredMessage::total_size(&messages))?;
            for mut msg in messages {
                let seq = st.next_sequence;
                st.next_sequence += 1;
                msg.sequence_number = seq;
                msg.enqueued_ms = now;
                let ttl_ms = msg.header.ttl.map(i64::from).or(self.properties.default_message_ttl.map(millis));
                let expires_at_ms = ttl_ms.map(|t| now.saturating_add(t));
                let state = match msg.scheduled_enqueue_ms {
                    Some(at) if at > now => {
                        let when = instant_after(instant_now, Duration::from_millis((at - now) as u64));
                        st.deadlines.insert((when, seq, DeadlineKind::Scheduled));
                        earliest = earliest.min(Some(when)).or(Some(when));
                        EntryState::Scheduled
                    }
                    _ => {
                        st.available.insert(seq);
                        EntryState::Available
                    }
                };
                if let Some(exp) = expires_at_ms {
                    let when = instant_after(instant_now, Duration::from_millis((exp - now).max(0) as u64));
                    st.deadlines.insert((when, seq, DeadlineKind::Ttl));
                    earliest = earliest.min(Some(when)).or(Some(when));
                }
                st.insert_entry(seq, Entry { msg, state, delivery_count: 0, expires_at_ms });
                sequence_numbers.push(seq);
            }
            if !st.available.is_empty() {
                wake = std::mem::take(&mut st.waiters);
            }
        }
        if earliest.is_some() {
            self.timer.notify_one();
        }
        wake.into_iter().for_each(|w| w());
        Ok(sequence_numbers)
    }

    /// Takes the next available message, or registers `wake` to be called when one may be.
    pub(crate) fn take_or_wait(&self, mode: ReceiveMode, wake: impl FnOnce() + Send + 'static) -> Option<Delivery> {
        let mut st = self.lock();
        match self.take_locked(&mut st, mode) {
            Some(d) => Some(d),
            None => {
                st.waiters.push(Box::new(wake));
                None
            }
        }
    }

    /// Takes the next available message, if any.
    #[cfg(test)]
    pub(crate) fn take(&self, mode: ReceiveMode) -> Option<Delivery> {
        let mut st = self.lock();
        self.take_locked(&mut st, mode)
    }

    fn take_locked(&self, st: &mut State, mode: ReceiveMode) -> Option<Delivery> {
        let now = now_ms();
        loop {
            let seq = st.available.pop_first()?;
            let Some(entry) = st.entries.get(&seq) else { continue };
            if entry.expires_at_ms.is_some_and(|e| e <= now) {
                self.expire_message(st, seq);
                continue;
            }
            return Some(match mode {
                ReceiveMode::ReceiveAndDelete => {
                    let entry = st.remove_entry(&seq).expect("looked up above");
                    let mut msg = entry.msg;
                    msg.header.delivery_count = entry.delivery_count;
                    Delivery { sequence_number: seq, lock_token: None, payload: msg.encode(Stamp::default()) }
                }
                ReceiveMode::PeekLock => self.lock_entry(st, seq, false),
            });
        }
    }

    /// Locks entry `seq` and encodes it for delivery.
    fn lock_entry(&self, st: &mut State, seq: i64, deferred: bool) -> Delivery {
        let token = uuid::Uuid::new_v4();
        let until = instant_after(Instant::now(), self.properties.lock_duration);
        let until_ms = now_ms().saturating_add(millis(self.properties.lock_duration));
        let entry = st.entries.get_mut(&seq).expect("callers pass a present entry");
        entry.state = EntryState::Locked { token, until, until_ms, deferred };
        entry.msg.header.delivery_count = entry.delivery_count;
        let payload = entry
            .msg
            .encode(Stamp { locked_until_ms: Some(until_ms), state: deferred.then_some(MessageState::Deferred) });
        st.locks.insert(token, seq);
        st.deadlines.insert((until, seq, DeadlineKind::LockExpiry));
        self.timer.notify_one();
        Delivery { sequence_number: seq, lock_token: Some(token), payload }
    }

    /// Settles the message locked under `token`.
    pub(crate) fn settle(&self, token: uuid::Uuid, settlement: Settlement) -> Result<(), SettleError> {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            let seq = *st.locks.get(&token).ok_or(SettleError::LockLost)?;
            let Some(entry) = st.entries.get(&seq) else {
                st.locks.remove(&token);
                return Err(SettleError::LockLost);
            };
            let EntryState::Locked { until, deferred, .. } = entry.state else {
                st.locks.remove(&token);
                return Err(SettleError::LockLost);
            };
            if until <= Instant::now() {
                // Expired but not yet swept: the sweep will redeliver it.
                return Err(SettleError::LockLost);
            }
            st.locks.remove(&token);
            match settlement {
                Settlement::Complete => {
                    st.remove_entry(&seq);
                }
                Settlement::Release => {
                    self.unlock(&mut st, seq, deferred, false);
                }
                Settlement::Abandon(props) => {
                    if let Some(e) = st.entries.get_mut(&seq) {
                        e.msg.merge_application_properties(props);
                    }
                    self.unlock(&mut st, seq, deferred, true);
                }
                Settlement::Defer(props) => {
                    if let Some(e) = st.entries.get_mut(&seq) {
                        e.msg.merge_application_properties(props);
                        e.state = EntryState::Deferred;
                    }
                }
                Settlement::DeadLetter { reason, description, properties } => {
                    let entry = st.remove_entry(&seq).expect("present: checked above");
                    self.dead_letter(entry, reason, description, properties);
                }
            }
            if !st.available.is_empty() {
                wake = std::mem::take(&mut st.waiters);
            }
        }
        wake.into_iter().for_each(|w| w());
        Ok(())
    }

    /// Returns a locked message to its queue (or to deferral); counts a delivery if `counted`.
    fn unlock(&self, st: &mut State, seq: i64, deferred: bool, counted: bool) {
        let Some(entry) = st.entries.get_mut(&seq) else { return };
        if counted {
            entry.delivery_count += 1;
        }
        if deferred {
            entry.state = EntryState::Deferred;
            return;
        }
        if entry.delivery_count >= self.properties.max_delivery_count {
            let entry = st.remove_entry(&seq).expect("present: matched above");
            self.dead_letter(
                entry,
                Some("MaxDeliveryCountExceeded".into()),
                Some(format!(
                    "Message could not be consumed after {} delivery attempts.",
                    self.properties.max_delivery_count
                )),
                Vec::new(),
            );
            return;
        }
        entry.state = EntryState::Available;
        st.available.insert(seq);
    }

    fn dead_letter(
        &self,
        entry: Entry,
        reason: Option<String>,
        description: Option<String>,
        properties: Vec<(String, SimpleValue)>,
    ) {
        let Some(dlq) = &self.dead_letter else {
            // Already in a dead-letter queue: Service Bus drops nothing here either; keep it.
            tracing::warn!(queue = %self.name, "dead-lettering from a dead-letter queue is not possible; message kept");
            return;
        };
        let mut msg = entry.msg;
        let mut props: Vec<(String, SimpleValue)> = properties;
        if let Some(r) = reason {
            props.push((DEAD_LETTER_REASON.into(), SimpleValue::String(r)));
        }
        if let Some(d) = description {
            props.push((DEAD_LETTER_DESCRIPTION.into(), SimpleValue::String(d)));
        }
        msg.merge_application_properties(props);
        msg.header.delivery_count = entry.delivery_count;
        msg.scheduled_enqueue_ms = None;
        dlq.enqueue_dead_lettered(msg, entry.delivery_count);
    }

    /// Adds a dead-lettered message, keeping its sequence number, enqueued time and delivery count.
    fn enqueue_dead_lettered(&self, msg: StoredMessage, delivery_count: u32) {
        let wake;
        {
            let mut st = self.lock();
            let seq = msg.sequence_number;
            st.next_sequence = st.next_sequence.max(seq + 1);
            st.available.insert(seq);
            st.insert_entry(seq, Entry { msg, state: EntryState::Available, delivery_count, expires_at_ms: None });
            wake = std::mem::take(&mut st.waiters);
        }
        wake.into_iter().for_each(|w| w());
    }

    /// Whether `token` holds an unexpired lock.
    pub(crate) fn check_lock(&self, token: uuid::Uuid) -> Result<(), SettleError> {
        let st = self.lock();
        let seq = st.locks.get(&token).ok_or(SettleError::LockLost)?;
        match st.entries.get(seq).map(|e| e.state) {
            Some(EntryState::Locked { token: t, until, .. }) if t == token && until > Instant::now() => Ok(()),
            _ => Err(SettleError::LockLost),
        }
    }

    /// Extends the lock under `token`; returns the new expiry (ms since the epoch).
    pub(crate) fn renew_lock(&self, token: uuid::Uuid) -> Result<i64, SettleError> {
        let mut st = self.lock();
        let seq = *st.locks.get(&token).ok_or(SettleError::LockLost)?;
        let now = Instant::now();
        let until = instant_after(now, self.properties.lock_duration);
        let until_ms = now_ms().saturating_add(millis(self.properties.lock_duration));
        let entry = st.entries.get_mut(&seq).ok_or(SettleError::LockLost)?;
        match &mut entry.state {
            EntryState::Locked { until: u, until_ms: um, token: t, .. } if *t == token && *u > now => {
                *u = until;
                *um = until_ms;
            }
            _ => return Err(SettleError::LockLost),
        }
        st.deadlines.insert((until, seq, DeadlineKind::LockExpiry));
        Ok(until_ms)
    }

    /// Messages from `from_sequence` on, without locking them (peek).
    pub(crate) fn peek(&self, from_sequence: i64, count: usize) -> Vec<Bytes> {
        let st = self.lock();
        st.entries
            .range(from_sequence..)
            .take(count)
            .map(|(_, e)| {
                let state = match e.state {
                    EntryState::Deferred | EntryState::Locked { deferred: true, .. } => MessageState::Deferred,
                    EntryState::Scheduled => MessageState::Scheduled,
                    _ => MessageState::Active,
                };
                let mut msg = e.msg.clone();
                msg.header.delivery_count = e.delivery_count;
                msg.encode(Stamp { locked_until_ms: None, state: Some(state) })
            })
            .collect()
    }

    /// Receives deferred messages by sequence number. Every number must name a deferred message.
    pub(crate) fn receive_deferred(&self, sequence_numbers: &[i64], mode: ReceiveMode) -> Result<Vec<Delivery>, i64> {
        let mut st = self.lock();
        for seq in sequence_numbers {
            if !matches!(st.entries.get(seq).map(|e| e.state), Some(EntryState::Deferred)) {
                return Err(*seq);
            }
        }
        Ok(sequence_numbers
            .iter()
            .map(|&seq| match mode {
                ReceiveMode::PeekLock => self.lock_entry(&mut st, seq, true),
                ReceiveMode::ReceiveAndDelete => {
                    let e = st.remove_entry(&seq).expect("checked deferred above");
                    let mut msg = e.msg;
                    msg.header.delivery_count = e.delivery_count;
                    Delivery {
                        sequence_number: seq,
                        lock_token: None,
                        payload: msg.encode(Stamp { locked_until_ms: None, state: Some(MessageState::Deferred) }),
                    }
                }
            })
            .collect())
    }

    /// Cancels scheduled messages. Every number must name a message still scheduled.
    pub(crate) fn cancel_scheduled(&self, sequence_numbers: &[i64]) -> Result<(), i64> {
        let mut st = self.lock();
        for seq in sequence_numbers {
            if !matches!(st.entries.get(seq).map(|e| e.state), Some(EntryState::Scheduled)) {
                return Err(*seq);
            }
        }
        for seq in sequence_numbers {
            st.remove_entry(seq);
        }
        Ok(())
    }

    /// Counts of messages by state.
    pub(crate) fn counts(&self) -> QueueCounts {
        let st = self.lock();
        let mut c = QueueCounts::default();
        for e in st.entries.values() {
            match e.state {
                EntryState::Available => c.active += 1,
                EntryState::Locked { deferred: false, .. } => c.locked += 1,
                EntryState::Locked { deferred: true, .. } | EntryState::Deferred => c.deferred += 1,
                EntryState::Scheduled => c.scheduled += 1,
            }
        }
        drop(st);
        c.dead_lettered = self.dead_letter.as_ref().map(|d| d.lock().entries.len()).unwrap_or(0);
        c
    }

    /// Applies every deadline that has passed; returns the next one.
    fn run_deadlines(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut wake = Vec::new();
        let next = {
            let mut st = self.lock();
            while let Some(&(when, seq, kind)) = st.deadlines.first() {
                if when > now {
                    break;
                }
                st.deadlines.pop_first();
                let Some(entry) = st.entries.get(&seq) else { continue };
                match (kind, entry.state) {
                    (DeadlineKind::LockExpiry, EntryState::Locked { token, until, deferred, .. }) if until <= now => {
                        st.locks.remove(&token);
                        tracing::debug!(queue = %self.name, seq, "lock expired; message returns to the queue");
                        self.unlock(&mut st, seq, deferred, true);
                    }
                    (DeadlineKind::Scheduled, EntryState::Scheduled) => {
                        if let Some(e) = st.entries.get_mut(&seq) {
                            e.state = EntryState::Available;
                        }
                        st.available.insert(seq);
                    }
                    (DeadlineKind::Ttl, EntryState::Available | EntryState::Deferred | EntryState::Scheduled) => {
                        st.available.remove(&seq);
                        self.expire_message(&mut st, seq);
                    }
                    _ => {}
                }
            }
            if !st.available.is_empty() {
                wake = std::mem::take(&mut st.waiters);
            }
            st.deadlines.first().map(|d| d.0)
        };
        wake.into_iter().for_each(|w| w());
        next
    }

    /// Removes an expired message: to the dead-letter queue, or dropped.
    fn expire_message(&self, st: &mut State, seq: i64) {
        let Some(entry) = st.remove_entry(&seq) else { return };
        if self.properties.dead_lettering_on_message_expiration {
            self.dead_letter(
                entry,
                Some("TTLExpiredException".into()),
                Some("The message expired and was dead lettered.".into()),
                Vec::new(),
            );
        } else {
            tracing::debug!(queue = %self.name, seq, "message expired and was dropped");
        }
    }

    /// Runs time-driven changes forever; the namespace aborts the task when it shuts down.
    pub(crate) async fn run_timer(self: Arc<Self>) {
        loop {
            let next = self.run_deadlines();
            let notified = self.timer.notified();
            match next {
                Some(when) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(when) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::Message;
    use fe2o3_amqp_types::messaging::message::__private::Serializable;
    use serde_amqp::primitives::Binary;

    fn msg(body: &str) -> StoredMessage {
        let bytes = Bytes::from(
            serde_amqp::to_vec(&Serializable(Message::builder().data(Binary::from(body.as_bytes().to_vec())).build()))
                .unwrap(),
        );
        StoredMessage::parse(&bytes).unwrap()
    }

    fn queue(max_delivery_count: u32) -> Arc<Queue> {
        Queue::new("q", QueueProperties { max_delivery_count, ..Default::default() })
    }

    #[tokio::test]
    async fn sequence_numbers_rise_and_receive_is_fifo() {
        let q = queue(10);
        assert_eq!(q.enqueue(vec![msg("a"), msg("b")]).unwrap(), vec![1, 2]);
        let a = q.take(ReceiveMode::PeekLock).unwrap();
        let b = q.take(ReceiveMode::PeekLock).unwrap();
        assert_eq!((a.sequence_number, b.sequence_number), (1, 2));
        assert!(q.take(ReceiveMode::PeekLock).is_none());
        assert_eq!(q.counts().locked, 2);
    }

    #[tokio::test]
    async fn settling_twice_is_lock_lost() {
        let q = queue(10);
        q.enqueue(vec![msg("a")]).unwrap();
        let d = q.take(ReceiveMode::PeekLock).unwrap();
        let token = d.lock_token.unwrap();
        q.settle(token, Settlement::Complete).unwrap();
        assert_eq!(q.settle(token, Settlement::Complete), Err(SettleError::LockLost));
        assert_eq!(q.counts(), QueueCounts::default());
    }

    /// Finding 9: a lock this long panicked after the message had left the available set.
    #[tokio::test]
    async fn durations_past_what_a_clock_holds_saturate_instead_of_panicking() {
        let q = Queue::new(
            "q",
            QueueProperties {
                lock_duration: Duration::MAX,
                default_message_ttl: Some(Duration::MAX),
                ..Default::default()
            },
        );
        q.enqueue(vec![msg("a")]).unwrap();
        let d = q.take(ReceiveMode::PeekLock).unwrap();
        let token = d.lock_token.unwrap();
        q.renew_lock(token).unwrap();
        q.settle(token, Settlement::Complete).unwrap();
        assert_eq!(q.counts(), QueueCounts::default());
    }

    #[tokio::test]
    async fn the_quota_counts_what_is_held_and_frees_what_leaves() {
        let q = Queue::new("q", QueueProperties { max_size_megabytes: 1, ..Default::default() });
        let big = |n| {
            let mut m = msg("x");
            m.size = n;
            m
        };
        q.enqueue(vec![big(600 * 1024)]).unwrap();
        let full = q.enqueue(vec![big(300 * 1024), big(300 * 1024)]).unwrap_err();
        assert_eq!((full.size, full.max), (600 * 1024, 1024 * 1024));
        assert_eq!(q.counts().active, 1, "all or none");
        let d = q.take(ReceiveMode::PeekLock).unwrap();
        assert!(q.check_room(500 * 1024).is_err(), "a locked message still counts");
        q.settle(d.lock_token.unwrap(), Settlement::DeadLetter { reason: None, description: None, properties: vec![] })
            .unwrap();
        q.enqueue(vec![big(1024 * 1024)]).unwrap();
    }

    #[tokio::test]
    async fn abandon_counts_and_max_delivery_count_dead_letters() {
        let q = queue(2);
        q.enqueue(vec![msg("a")]).unwrap();
        for _ in 0..2 {
            let d = q.take(ReceiveMode::PeekLock).unwrap();
            q.settle(d.lock_token.unwrap(), Settlement::Abandon(Vec::new())).unwrap();
        }
        assert!(q.take(ReceiveMode::PeekLock).is_none());
        assert_eq!(q.counts().dead_lettered, 1);
        let dlq = q.dead_letter_queue().unwrap();
        let d = dlq.take(ReceiveMode::ReceiveAndDelete).unwrap();
        assert_eq!(d.sequence_number, 1);
    }

    #[tokio::test]
    async fn release_does_not_count_a_delivery() {
        let q = queue(1);
        q.enqueue(vec![msg("a")]).unwrap();
        for _ in 0..3 {
            let d = q.take(ReceiveMode::PeekLock).unwrap();
            q.settle(d.lock_token.unwrap(), Settlement::Release).unwrap();
        }
        assert_eq!(q.counts().active, 1);
    }

    #[tokio::test]
    async fn deferred_messages_come_back_only_by_sequence_number() {
        let q = queue(10);
        q.enqueue(vec![msg("a")]).unwrap();
        let d = q.take(ReceiveMode::PeekLock).unwrap();
        q.settle(d.lock_token.unwrap(), Settlement::Defer(Vec::new())).unwrap();
        assert!(q.take(ReceiveMode::PeekLock).is_none());
        assert_eq!(q.receive_deferred(&[2], ReceiveMode::PeekLock).unwrap_err(), 2);
        let got = q.receive_deferred(&[1], ReceiveMode::PeekLock).unwrap();
        q.settle(got[0].lock_token.unwrap(), Settlement::Complete).unwrap();
        assert_eq!(q.counts(), QueueCounts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn lock_expiry_redelivers_with_a_higher_count() {
        let q = Queue::new("q", QueueProperties { lock_duration: Duration::from_secs(5), ..Default::default() });
        tokio::spawn(q.clone().run_timer());
        q.enqueue(vec![msg("a")]).unwrap();
        let first = q.take(ReceiveMode::PeekLock).unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        let second = q.take(ReceiveMode::PeekLock).expect("redelivered after the lock expired");
        assert_eq!(second.sequence_number, first.sequence_number);
        assert_eq!(q.settle(first.lock_token.unwrap(), Settlement::Complete), Err(SettleError::LockLost));
        let header =
            crate::codec::HeaderFields::decode(&crate::codec::split_sections(&second.payload).unwrap().header.unwrap())
                .unwrap();
        assert_eq!(header.delivery_count, 1);
    }

    #[tokio::test]
    async fn waiters_are_woken_by_an_enqueue() {
        let q = queue(10);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(q.take_or_wait(ReceiveMode::PeekLock, move || tx.send(()).unwrap()).is_none());
        q.enqueue(vec![msg("a")]).unwrap();
        rx.recv().await.unwrap();
    }
}
