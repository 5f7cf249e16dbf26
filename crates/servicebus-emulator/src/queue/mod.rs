//! A queue (or subscription): its messages, their locks, and its dead-letter queue.
//!
//! All state sits behind one `std::sync::Mutex`, held only for short, non-async
//! sections. Time-driven changes (lock expiry, scheduled messages appearing, TTL
//! expiry, session locks lapsing) run in one timer task per queue, started by the namespace.
//!
//! Work that follows a change but needs no lock of this queue (waking receivers, moving
//! messages to another entity) is queued in the state and done as the lock is released
//! ([`Locked`]), so no queue ever takes another's lock while holding its own, except its
//! dead-letter queue's, which takes none.
//!
//! With `--data-dir`, every change is also recorded for the store while the lock is held,
//! and handed to it as the lock is released ([`durable`]).
//!
//! Layout: this file holds messages and their locks; [`sessions`] the message sessions of
//! an entity that requires them (their locks and state); [`duplicates`] duplicate detection;
//! [`forward`] auto-forwarding; [`durable`] what an entity writes to the store and reads back;
//! [`types`] the words of the API (properties, settlements, errors); `tests.rs` the rules.
//!
//! Size: about 990 lines. It is one lifecycle (enqueue, take, lock, settle, expire) over
//! one `State` under one lock; splitting it would spread that lock's invariants over files.

mod duplicates;
mod durable;
mod forward;
mod memory;
mod sessions;
mod types;

pub(crate) use duplicates::Duplicates;
pub(crate) use durable::{Journal, by_entity};
use forward::Transfer;
pub(crate) use forward::{Inbox, Refused, Routes, Target};
pub(crate) use memory::Memory;

use sessions::MessageSession;
pub(crate) use sessions::{SessionClaim, SessionError};
pub use types::{DEFAULT_DUPLICATE_DETECTION_WINDOW, DEFAULT_MAX_SIZE_MEGABYTES, QueueCounts, QueueProperties};
pub(crate) use types::{
    DeferredError, Delivery, QuotaExceeded, ReceiveMode, SessionIdMissing, SettleError, Settlement,
};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp_types::primitives::SimpleValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::{DEAD_LETTER_DESCRIPTION, DEAD_LETTER_REASON, MessageState, Stamp, StoredMessage, now_ms};
use crate::rules::RuleSet;
use crate::storage::{Change, Group};

/// `now + d`, or the far future when that is past what an `Instant` holds.
fn instant_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// `d` in milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
    /// Its message session, in an entity that requires sessions.
    session: Option<String>,
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

/// `now + 100 years`: the lock of a message in a session, which its session's lock bounds.
fn far_future(now: Instant) -> Instant {
    instant_after(now, Duration::from_secs(100 * 365 * 86_400))
}

type Wake = Box<dyn FnOnce() + Send>;

struct State {
    next_sequence: i64,
    entries: BTreeMap<i64, Entry>,
    /// Messages ready for a receiver, in an entity without sessions (sessions keep their own).
    available: BTreeSet<i64>,
    /// The message sessions of an entity that requires them, by session id.
    sessions: BTreeMap<String, MessageSession>,
    locks: HashMap<uuid::Uuid, i64>,
    deadlines: BTreeSet<(Instant, i64, DeadlineKind)>,
    /// When session locks lapse, by session id.
    session_deadlines: BTreeSet<(Instant, String)>,
    waiters: Vec<Wake>,
    /// A message became ready, or a session came free, since the waiters were last woken.
    woken: bool,
    /// The sizes of the messages in `entries`, for `MaxSizeInMegabytes`.
    bytes: u64,
    /// The message-ids taken inside the window, when the entity detects duplicates.
    duplicates: Option<Duplicates>,
    /// Messages to move to another entity once the lock is released.
    outbox: Vec<Transfer>,
    /// The emulator's memory budget, which every entry is charged to ([`Self::remove_entry`]
    /// gives its share back; whoever inserts one charges it).
    memory: Arc<Memory>,
    /// Where changes are recorded, with `--data-dir`.
    journal: Option<Journal>,
    /// Changes recorded since the lock was taken, submitted as it is released.
    changes: Vec<Change>,
}

impl State {
    /// Records changes for the store, if there is one.
    fn record<C: IntoIterator<Item = Change>>(&mut self, changes: impl FnOnce(&Journal) -> C) {
        if let Some(j) = &self.journal {
            self.changes.extend(changes(j));
        }
    }

    /// Records entry `seq` as it is now (after a change to its count, state or properties),
    /// no longer locked.
    fn record_entry(&mut self, seq: i64) {
        if let (Some(j), Some(entry)) = (&self.journal, self.entries.get(&seq)) {
            self.changes.extend(j.rewrite(seq, entry));
        }
    }

    fn insert_entry(&mut self, seq: i64, entry: Entry) {
        if let Some(j) = &self.journal {
            self.changes.push(j.put(seq, &entry, true));
        }
        self.bytes += entry.msg.size as u64;
        if let Some(id) = &entry.session {
            self.sessions.entry(id.clone()).or_default().entries += 1;
        }
        self.entries.insert(seq, entry);
    }

    fn remove_entry(&mut self, seq: &i64) -> Option<Entry> {
        let entry = self.entries.remove(seq)?;
        self.record(|j| j.removed(*seq));
        self.bytes = self.bytes.saturating_sub(entry.msg.size as u64);
        self.memory.release(Memory::cost(1, entry.msg.size as u64));
        self.available.remove(seq);
        if let Some(id) = &entry.session {
            if let Some(s) = self.sessions.get_mut(id) {
                s.entries = s.entries.saturating_sub(1);
                s.available.remove(seq);
                if let Some(lock) = &mut s.lock {
                    lock.locked.remove(seq);
                }
            }
            self.prune_session(id);
        }
        Some(entry)
    }

    /// Makes entry `seq` ready for a receiver (of its session, if it has one).
    fn ready(&mut self, seq: i64) {
        let Some(entry) = self.entries.get_mut(&seq) else { return };
        entry.state = EntryState::Available;
        match &entry.session {
            Some(id) => {
                self.sessions.entry(id.clone()).or_default().available.insert(seq);
            }
            None => {
                self.available.insert(seq);
            }
        }
        self.woken = true;
    }

    /// The waiters to wake, if anything became ready since they registered.
    fn waiters_to_wake(&mut self) -> Vec<Wake> {
        if std::mem::take(&mut self.woken) { std::mem::take(&mut self.waiters) } else { Vec::new() }
    }
}

/// A queue, subscription, or dead-letter queue.
pub(crate) struct Queue {
    name: String,
    /// Its settings; an update replaces them (`RequiresSession` never changes).
    properties: RwLock<QueueProperties>,
    dead_letter: Option<Arc<Queue>>,
    /// A subscription's rules (none for queues and dead-letter queues).
    rules: Option<RuleSet>,
    /// Where its messages are forwarded; set by the namespace once every entity exists.
    routes: RwLock<Routes>,
    state: Mutex<State>,
    timer: Notify,
    /// Deleted from its namespace: its links are detached, forwarding to it is refused, and
    /// its timer stops.
    deleted: std::sync::atomic::AtomicBool,
    /// When it was made, and last changed (ms since the epoch).
    created_ms: i64,
    updated_ms: std::sync::atomic::AtomicI64,
    /// Its changes are recorded in a store (`--data-dir`).
    durable: bool,
}

/// A queue's state, locked. Releasing it wakes the receivers a change made ready and moves
/// the messages the change sent elsewhere.
struct Locked<'a> {
    queue: &'a Queue,
    guard: Option<MutexGuard<'a, State>>,
    /// With a store: what this change does to other entities (a dead-letter queue, a
    /// forwarding target) is committed with it. Dropped last, after the transfers.
    _group: Option<Group>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("present until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.guard.take() else { return };
        if !st.changes.is_empty()
            && let Some(j) = &st.journal
        {
            // Under the lock: one key's changes reach the store in the order they were made.
            let storage = j.storage.clone();
            storage.submit(std::mem::take(&mut st.changes));
        }
        let wake = st.waiters_to_wake();
        let outbox = std::mem::take(&mut st.outbox);
        drop(st);
        wake.into_iter().for_each(|w| w());
        if !outbox.is_empty() {
            self.queue.transfer(outbox);
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue with its dead-letter queue, outside any memory budget.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn new(name: &str, properties: QueueProperties) -> Arc<Self> {
        Self::build(name, properties, None, Arc::new(Memory::unlimited()), None)
    }

    /// A queue, or a topic's subscription with its `rules`, with its dead-letter queue; both
    /// charge what they hold to `memory`, and record their changes in `storage` if given.
    pub(crate) fn build(
        name: &str,
        properties: QueueProperties,
        rules: Option<RuleSet>,
        memory: Arc<Memory>,
        storage: Option<&Arc<crate::storage::Storage>>,
    ) -> Arc<Self> {
        // A dead-lettered message is never refused: the dead-letter queue has no quota.
        let dlq_props = QueueProperties {
            max_delivery_count: u32::MAX,
            default_message_ttl: None,
            dead_lettering_on_message_expiration: false,
            max_size_megabytes: u64::MAX,
            // A session entity's dead-letter queue is read without sessions.
            requires_session: false,
            // It takes what its entity dead-letters, and forwards nothing.
            duplicate_detection_window: None,
            max_message_size: None,
            forward_to: None,
            forward_dead_lettered_messages_to: None,
            ..properties.clone()
        };
        let dlq_name = format!("{name}/$DeadLetterQueue");
        let journal = |name: &str| storage.map(|s| Journal::new(s.clone(), &crate::auth::normalize(name)));
        let dead_letter = Arc::new(Self::bare(&dlq_name, dlq_props, None, memory.clone(), journal(&dlq_name)));
        let mut queue = Self::bare(name, properties, Some(dead_letter), memory, journal(name));
        queue.rules = rules;
        Arc::new(queue)
    }

    fn bare(
        name: &str,
        properties: QueueProperties,
        dead_letter: Option<Arc<Queue>>,
        memory: Arc<Memory>,
        journal: Option<Journal>,
    ) -> Self {
        let duplicates = properties.duplicate_detection_window.map(Duplicates::new);
        Self {
            durable: journal.is_some(),
            name: name.to_string(),
            properties: RwLock::new(properties),
            dead_letter,
            rules: None,
            routes: RwLock::new(Routes::default()),
            state: Mutex::new(State {
                next_sequence: 1,
                entries: BTreeMap::new(),
                available: BTreeSet::new(),
                sessions: BTreeMap::new(),
                locks: HashMap::new(),
                deadlines: BTreeSet::new(),
                session_deadlines: BTreeSet::new(),
                waiters: Vec::new(),
                woken: false,
                bytes: 0,
                duplicates,
                outbox: Vec::new(),
                memory,
                journal,
                changes: Vec::new(),
            }),
            timer: Notify::new(),
            deleted: std::sync::atomic::AtomicBool::new(false),
            created_ms: now_ms(),
            updated_ms: std::sync::atomic::AtomicI64::new(now_ms()),
        }
    }

    /// Takes it out of service: it is no longer in its namespace, and its messages (and its
    /// dead-letter queue's) are gone.
    pub(crate) fn delete(&self) {
        for q in std::iter::once(self).chain(self.dead_letter.as_deref()) {
            q.deleted.store(true, std::sync::atomic::Ordering::Release);
            q.timer.notify_one();
            let waiters = {
                let mut st = q.lock();
                // One removal of everything it stored, not one per message.
                let journal = st.journal.take();
                let all: Vec<i64> = st.entries.keys().copied().collect();
                for seq in all {
                    st.remove_entry(&seq);
                }
                st.journal = journal;
                st.record(Journal::purge);
                st.locks.clear();
                st.outbox.clear();
                std::mem::take(&mut st.waiters)
            };
            // Receivers waiting for a message look again, and find it gone.
            waiters.into_iter().for_each(|w| w());
        }
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// When it was made and last changed (ms since the epoch).
    pub(crate) fn times_ms(&self) -> (i64, i64) {
        (self.created_ms, self.updated_ms.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Replaces its settings. `RequiresSession` and duplicate detection being on or off are
    /// fixed when it is made (as on the service); the caller checked that they do not change.
    pub(crate) fn update(&self, properties: QueueProperties) {
        let window = properties.duplicate_detection_window;
        *self.properties.write().unwrap_or_else(|p| p.into_inner()) = properties;
        if let (Some(window), Some(d)) = (window, self.lock().duplicates.as_mut()) {
            d.set_window(window);
        }
        self.updated_ms.store(now_ms(), std::sync::atomic::Ordering::Release);
        self.timer.notify_one();
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its settings now.
    pub(crate) fn props(&self) -> std::sync::RwLockReadGuard<'_, QueueProperties> {
        self.properties.read().unwrap_or_else(|p| p.into_inner())
    }

    /// When a lock (of a message, or of a session) taken at `now` lapses: as an instant, and in
    /// ms since the epoch.
    fn lock_until(&self, now: Instant) -> (Instant, i64) {
        let lock_duration = self.props().lock_duration;
        (instant_after(now, lock_duration), now_ms().saturating_add(millis(lock_duration)))
    }

    /// The largest message a sender may send here, if the entity sets one.
    pub(crate) fn max_message_size(&self) -> Option<usize> {
        self.props().max_message_size
    }

    pub(crate) fn requires_session(&self) -> bool {
        self.props().requires_session
    }

    /// A subscription's rules; `None` for a queue.
    pub(crate) fn rules(&self) -> Option<&RuleSet> {
        self.rules.as_ref()
    }

    pub(crate) fn dead_letter_queue(&self) -> Option<&Arc<Queue>> {
        self.dead_letter.as_ref()
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock would be a bug in this module; the state
        // is still consistent enough to serve, so recover rather than cascade.
        let group = self.durable.then(Group::open);
        Locked { queue: self, guard: Some(self.state.lock().unwrap_or_else(|p| p.into_inner())), _group: group }
    }

    /// Links this queue to its targets (`ForwardTo`, `ForwardDeadLetteredMessagesTo`).
    pub(crate) fn set_routes(&self, routes: Routes) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    fn routes(&self) -> Routes {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether its messages move on as they arrive (`ForwardTo`): no receiver may attach.
    pub(crate) fn forwards(&self) -> bool {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).forward_to.is_some()
    }

    /// The most this entity holds, in bytes.
    fn max_bytes(&self) -> u64 {
        self.props().max_size_megabytes.saturating_mul(1024 * 1024)
    }

    /// Refuses `bytes` more if they would pass `MaxSizeInMegabytes`.
    pub(crate) fn check_room(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        let size = self.lock().bytes;
        self.room_for(size, bytes)
    }

    fn room_for(&self, size: u64, bytes: u64) -> Result<(), QuotaExceeded> {
        let max = self.max_bytes();
        if size.saturating_add(bytes) > max {
            return Err(QuotaExceeded::Entity { entity: self.name.clone(), size, max });
        }
        Ok(())
    }

    /// Enqueues messages atomically, all or none; returns their sequence numbers.
    pub(crate) fn enqueue(&self, messages: Vec<StoredMessage>) -> Result<Vec<i64>, QuotaExceeded> {
        self.store(messages).map_err(|(e, _)| e)
    }

    /// Enqueues messages atomically, all or none, and returns their sequence numbers; refused,
    /// they are handed back. Duplicates (with duplicate detection) are accepted and dropped;
    /// with `ForwardTo`, the messages due now move on as the lock is released.
    fn store(&self, messages: Vec<StoredMessage>) -> Result<Vec<i64>, (QuotaExceeded, Vec<StoredMessage>)> {
        if self.is_deleted() {
            // A send that raced the entity's deletion: it is gone with the entity's messages
            // (its link is detached at the connection's next tick).
            tracing::debug!(queue = %self.name, count = messages.len(), "messages for a deleted entity dropped");
            return Ok(Vec::new());
        }
        let now = now_ms();
        let instant_now = Instant::now();
        let forwards = self.forwards();
        let mut sequence_numbers = Vec::with_capacity(messages.len());
        let mut earliest = None;
        {
            let mut st = self.lock();
            let messages = match &mut st.duplicates {
                Some(d) => d.unseen(messages, instant_now),
                None => messages,
            };
            let due = |m: &StoredMessage| m.scheduled_enqueue_ms.is_none_or(|at| at <= now);
            // What stays here counts against the quota; what moves on counts at its target.
            let (kept_count, kept) = messages
                .iter()
                .filter(|m| !(forwards && due(m)))
                .fold((0, 0u64), |(n, bytes), m| (n + 1, bytes + m.size as u64));
            if let Err(e) = self.room_for(st.bytes, kept) {
                return Err((e, messages));
            }
            if let Err(e) = st.memory.try_charge(Memory::cost(kept_count, kept)) {
                return Err((e, messages));
            }
            if let Some(d) = &mut st.duplicates {
                d.record(&messages, instant_now);
            }
            for mut msg in messages {
                let seq = st.next_sequence;
                st.next_sequence += 1;
                msg.sequence_number = seq;
                msg.enqueued_ms = now;
                if forwards && due(&msg) {
                    st.outbox.push(Transfer::Forward(msg));
                    sequence_numbers.push(seq);
                    continue;
                }
                let ttl_ms = self.ttl_ms(&msg);
                let expires_at_ms = ttl_ms.map(|t| now.saturating_add(t));
                let scheduled = match msg.scheduled_enqueue_ms {
                    Some(at) if at > now => {
                        let when = instant_after(instant_now, Duration::from_millis((at - now) as u64));
                        st.deadlines.insert((when, seq, DeadlineKind::Scheduled));
                        earliest = earliest.min(Some(when)).or(Some(when));
                        true
                    }
                    _ => false,
                };
                if let Some(exp) = expires_at_ms {
                    let when = instant_after(instant_now, Duration::from_millis((exp - now).max(0) as u64));
                    st.deadlines.insert((when, seq, DeadlineKind::Ttl));
                    earliest = earliest.min(Some(when)).or(Some(when));
                }
                let session = self.session_of(&msg);
                st.insert_entry(
                    seq,
                    Entry { msg, session, state: EntryState::Scheduled, delivery_count: 0, expires_at_ms },
                );
                if !scheduled {
                    st.ready(seq);
                }
                sequence_numbers.push(seq);
            }
            let next = st.next_sequence;
            st.record(|j| [j.next_sequence(next)]);
        }
        if earliest.is_some() {
            self.timer.notify_one();
        }
        Ok(sequence_numbers)
    }

    /// A message's time to live here, in ms: its own, but no longer than the entity's default
    /// (the service shortens a longer one silently); `None` is forever.
    fn ttl_ms(&self, msg: &StoredMessage) -> Option<i64> {
        let default = self.props().default_message_ttl.map(millis);
        match (msg.header.ttl.map(i64::from), default) {
            (Some(own), Some(default)) => Some(own.min(default)),
            (own, default) => own.or(default),
        }
    }

    /// The message session a message belongs to here: its session id, in an entity that
    /// requires sessions (one sent without, through a test hook, is in session "").
    fn session_of(&self, msg: &StoredMessage) -> Option<String> {
        self.props().requires_session.then(|| msg.session_id.clone().unwrap_or_default())
    }

    /// Takes the next available message (of `session`, for a session receiver), or registers
    /// `wake` to be called when one may be. A session receiver whose lock is gone gets an error.
    pub(crate) fn take_or_wait(
        &self,
        mode: ReceiveMode,
        session: Option<&SessionClaim>,
        wake: impl FnOnce() + Send + 'static,
    ) -> Result<Option<Delivery>, SessionError> {
        let mut st = self.lock();
        match self.take_locked(&mut st, mode, session)? {
            Some(d) => Ok(Some(d)),
            None => {
                st.waiters.push(Box::new(wake));
                Ok(None)
            }
        }
    }

    /// Takes the next available message, if any.
    #[cfg(test)]
    pub(crate) fn take(&self, mode: ReceiveMode) -> Option<Delivery> {
        let mut st = self.lock();
        self.take_locked(&mut st, mode, None).expect("no session")
    }

    fn take_locked(
        &self,
        st: &mut State,
        mode: ReceiveMode,
        session: Option<&SessionClaim>,
    ) -> Result<Option<Delivery>, SessionError> {
        let now = now_ms();
        if let Some(claim) = session {
            Self::check_claim(st, claim)?;
        } else if self.props().requires_session {
            return Ok(None); // Only session receivers take from an entity that requires sessions.
        }
        loop {
            let next = match session {
                Some(claim) => st.sessions.get_mut(&claim.id).and_then(|s| s.available.pop_first()),
                None => st.available.pop_first(),
            };
            let Some(seq) = next else { return Ok(None) };
            let Some(entry) = st.entries.get(&seq) else { continue };
            if entry.expires_at_ms.is_some_and(|e| e <= now) {
                self.expire_message(st, seq);
                continue;
            }
            return Ok(Some(match mode {
                ReceiveMode::ReceiveAndDelete => {
                    let entry = st.remove_entry(&seq).expect("looked up above");
                    let mut msg = entry.msg;
                    msg.header.delivery_count = entry.delivery_count;
                    Delivery { sequence_number: seq, lock_token: None, payload: msg.encode(Stamp::default()) }
                }
                ReceiveMode::PeekLock => self.lock_entry(st, seq, false),
            }));
        }
    }

    /// Locks entry `seq` and encodes it for delivery.
    /// A message in a session is locked by its session's lock (the caller checked that it is
    /// held): it has no deadline of its own, and shows the session's locked-until.
    fn lock_entry(&self, st: &mut State, seq: i64, deferred: bool) -> Delivery {
        let token = uuid::Uuid::new_v4();
        let now = Instant::now();
        let session_lock = st.entries.get(&seq).and_then(|e| e.session.clone()).and_then(|id| {
            let lock = st.sessions.get_mut(&id)?.lock.as_mut()?;
            lock.locked.insert(seq);
            Some(lock.until_ms)
        });
        let (until, until_ms) = match session_lock {
            Some(until_ms) => (far_future(now), until_ms),
            None => self.lock_until(now),
        };
        let entry = st.entries.get_mut(&seq).expect("callers pass a present entry");
        entry.state = EntryState::Locked { token, until, until_ms, deferred };
        entry.msg.header.delivery_count = entry.delivery_count;
        let payload = entry
            .msg
            .encode(Stamp { locked_until_ms: Some(until_ms), state: deferred.then_some(MessageState::Deferred) });
        st.locks.insert(token, seq);
        st.record(|j| [j.locked(seq)]);
        if session_lock.is_none() {
            st.deadlines.insert((until, seq, DeadlineKind::LockExpiry));
            self.timer.notify_one();
        }
        Delivery { sequence_number: seq, lock_token: Some(token), payload }
    }

    /// Settles the message locked under `token`.
    pub(crate) fn settle(&self, token: uuid::Uuid, settlement: Settlement) -> Result<(), SettleError> {
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
            if let Some(id) = entry.session.clone() {
                // Its session's lock holds it; lapsed but not yet swept: the sweep releases it.
                Self::check_session_lock(&st, &id)?;
                st.leave_session_lock(&id, seq);
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
                    st.record_entry(seq);
                }
                Settlement::DeadLetter { reason, description, properties } => {
                    let entry = st.remove_entry(&seq).expect("present: checked above");
                    self.dead_letter(&mut st, entry, reason, description, properties);
                }
            }
        }
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
            Self::record_unlock(st, seq, counted);
            return;
        }
        let max_delivery_count = self.props().max_delivery_count;
        if entry.delivery_count >= max_delivery_count {
            let entry = st.remove_entry(&seq).expect("present: matched above");
            self.dead_letter(
                st,
                entry,
                Some("MaxDeliveryCountExceeded".into()),
                Some(format!("Message could not be consumed after {max_delivery_count} delivery attempts.")),
                Vec::new(),
            );
            return;
        }
        st.ready(seq);
        Self::record_unlock(st, seq, counted);
    }

    /// Records a message's return from a lock: its new count, or just the lock's end.
    fn record_unlock(st: &mut State, seq: i64, counted: bool) {
        match counted {
            true => st.record_entry(seq),
            false => st.record(|j| [j.unlocked(seq)]),
        }
    }

    /// Dead-letters a message: into the dead-letter queue, or on to
    /// `ForwardDeadLetteredMessagesTo` once the lock is released.
    fn dead_letter(
        &self,
        st: &mut State,
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
        if self.routes.read().unwrap_or_else(|p| p.into_inner()).dead_lettered_to.is_some() {
            st.outbox.push(Transfer::DeadLettered(msg));
        } else {
            dlq.enqueue_dead_lettered(msg, entry.delivery_count);
        }
    }

    /// Adds a dead-lettered message, keeping its sequence number, enqueued time and delivery count.
    fn enqueue_dead_lettered(&self, msg: StoredMessage, delivery_count: u32) {
        let mut st = self.lock();
        let seq = msg.sequence_number;
        st.next_sequence = st.next_sequence.max(seq + 1);
        // A dead-letter queue has no sessions: its messages are read by any receiver.
        // Never refused: a dead-lettered message must stay somewhere.
        st.memory.charge(Memory::cost(1, msg.size as u64));
        let entry = Entry { msg, session: None, state: EntryState::Scheduled, delivery_count, expires_at_ms: None };
        st.insert_entry(seq, entry);
        st.ready(seq);
    }

    /// Whether `token` holds an unexpired lock.
    pub(crate) fn check_lock(&self, token: uuid::Uuid) -> Result<(), SettleError> {
        let st = self.lock();
        let seq = *st.locks.get(&token).ok_or(SettleError::LockLost)?;
        let entry = st.entries.get(&seq).ok_or(SettleError::LockLost)?;
        match entry.state {
            EntryState::Locked { token: t, until, .. } if t == token && until > Instant::now() => {}
            _ => return Err(SettleError::LockLost),
        }
        match entry.session.clone() {
            Some(id) => Self::check_session_lock(&st, &id),
            None => Ok(()),
        }
    }

    /// Extends the lock under `token`; returns the new expiry (ms since the epoch).
    pub(crate) fn renew_lock(&self, token: uuid::Uuid) -> Result<i64, SettleError> {
        let mut st = self.lock();
        let seq = *st.locks.get(&token).ok_or(SettleError::LockLost)?;
        let now = Instant::now();
        let (until, until_ms) = self.lock_until(now);
        let entry = st.entries.get_mut(&seq).ok_or(SettleError::LockLost)?;
        if entry.session.is_some() {
            return Err(SettleError::SessionMessage);
        }
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

    /// Messages from `from_sequence` on (of one session, if given), without locking them (peek).
    pub(crate) fn peek(&self, from_sequence: i64, count: usize, session: Option<&str>) -> Vec<Bytes> {
        let st = self.lock();
        st.entries
            .range(from_sequence..)
            .filter(|(_, e)| session.is_none_or(|id| e.session.as_deref() == Some(id)))
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

    /// Receives deferred messages by sequence number. Every number must name a deferred message
    /// (of the session `session` holds, in an entity that requires sessions).
    pub(crate) fn receive_deferred(
        &self,
        sequence_numbers: &[i64],
        mode: ReceiveMode,
        session: Option<&SessionClaim>,
    ) -> Result<Vec<Delivery>, DeferredError> {
        let mut st = self.lock();
        if self.props().requires_session {
            let claim = session.ok_or(DeferredError::SessionRequired)?;
            Self::check_claim(&st, claim).map_err(DeferredError::Session)?;
        }
        for seq in sequence_numbers {
            let entry = st.entries.get(seq);
            let in_session = entry.is_some_and(|e| e.session.as_deref() == session.map(|c| c.id.as_str()));
            let deferred = matches!(entry.map(|e| e.state), Some(EntryState::Deferred));
            if !deferred || (self.props().requires_session && !in_session) {
                return Err(DeferredError::NotDeferred(*seq));
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

    /// The bytes its messages take, as sent (what counts against `MaxSizeInMegabytes`).
    pub(crate) fn size_bytes(&self) -> u64 {
        self.lock().bytes
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
        let forwards = self.forwards();
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
                (DeadlineKind::Scheduled, EntryState::Scheduled) if forwards => {
                    let entry = st.remove_entry(&seq).expect("present: matched above");
                    st.outbox.push(Transfer::Forward(entry.msg));
                }
                (DeadlineKind::Scheduled, EntryState::Scheduled) => st.ready(seq),
                (DeadlineKind::Ttl, EntryState::Available | EntryState::Deferred | EntryState::Scheduled) => {
                    self.expire_message(&mut st, seq);
                }
                _ => {}
            }
        }
        self.expire_session_locks(&mut st, now);
        let next_message = st.deadlines.first().map(|d| d.0);
        let next_session = st.session_deadlines.first().map(|d| d.0);
        next_message.into_iter().chain(next_session).min()
    }

    /// Removes an expired message: to the dead-letter queue, or dropped.
    fn expire_message(&self, st: &mut State, seq: i64) {
        let Some(entry) = st.remove_entry(&seq) else { return };
        if self.props().dead_lettering_on_message_expiration {
            self.dead_letter(
                st,
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
        while !self.is_deleted() {
            let next = self.run_deadlines();
            // What the timer changed acknowledges nothing to anyone.
            crate::storage::take_barrier();
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
mod tests;
