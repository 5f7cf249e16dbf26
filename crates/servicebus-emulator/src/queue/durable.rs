//! What an entity writes to [`Storage`] (with `--data-dir`), and how it reads it back.
//!
//! Every change to an entity's messages is recorded while the entity's lock is held
//! ([`Journal`]) and submitted as the lock is released ([`super::Locked`]):
//! - a message stored, or changed (delivery count, state, properties): its whole record;
//! - a message gone (completed, received and deleted, dead-lettered, expired): removed;
//! - a message locked: a marker, so that recovery counts the delivery the crash ended
//!   (as a lock expiry would), never waited for;
//! - a session's state, and the entity's next sequence number.
//!
//! A message becoming due (scheduled) or a lock being renewed writes nothing: recovery
//! works those out from the record and the clock.

use std::sync::Arc;

use bytes::Bytes;

use super::{Entry, EntryState};
use crate::message::{StoredMessage, annotation, key};
use crate::storage::{Change, Space, Storage, StorageError};

const RECORD_VERSION: u8 = 1;
const HEADER_LEN: usize = 35;
const NONE_MS: i64 = i64::MIN;

/// Where an entity's changes go: the store, and the entity's name in its keys.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    pub(super) storage: Arc<Storage>,
    /// The entity's path as addresses resolve it (lowercase).
    entity: Arc<[u8]>,
}

impl Journal {
    pub(crate) fn new(storage: Arc<Storage>, entity_path: &str) -> Self {
        Self { storage, entity: entity_path.as_bytes().into() }
    }

    fn key(&self, seq: i64) -> Vec<u8> {
        message_key(&self.entity, seq)
    }

    /// A message's record, as it rests (a locked message rests in the state it returns to).
    pub(super) fn put(&self, seq: i64, entry: &Entry, fresh: bool) -> Change {
        Change::set(Space::Messages, self.key(seq), encode(entry), fresh)
    }

    /// A message changed while it may have been locked: its record, and no lock marker.
    pub(super) fn rewrite(&self, seq: i64, entry: &Entry) -> [Change; 2] {
        [self.put(seq, entry, false), self.unlocked(seq)]
    }

    pub(super) fn removed(&self, seq: i64) -> [Change; 2] {
        [Change::remove(Space::Messages, self.key(seq)), self.unlocked(seq)]
    }

    pub(super) fn locked(&self, seq: i64) -> Change {
        Change::set(Space::Locks, self.key(seq), Vec::new(), true)
    }

    pub(super) fn unlocked(&self, seq: i64) -> Change {
        Change::remove(Space::Locks, self.key(seq))
    }

    pub(super) fn next_sequence(&self, next: i64) -> Change {
        Change::set(Space::Sequences, self.entity.to_vec(), next.to_be_bytes().to_vec(), false)
    }

    pub(super) fn session_state(&self, session: &str, state: Option<&Bytes>) -> Change {
        let mut key = self.entity.to_vec();
        key.push(0);
        key.extend_from_slice(session.as_bytes());
        match state {
            Some(s) => Change::set(Space::Sessions, key, s.to_vec(), false),
            None => Change::remove(Space::Sessions, key),
        }
    }

    /// Removes whatever the store holds under `entity_path` and its dead-letter queue's: what
    /// an earlier entity of that name left (one taken out of `Config.json`), before a new
    /// entity of the name starts empty.
    pub(crate) fn clear(storage: &Arc<Storage>, entity_path: &str) {
        let dead_letter = format!("{entity_path}/$DeadLetterQueue");
        let changes = [entity_path, &dead_letter]
            .into_iter()
            .flat_map(|path| Journal::new(storage.clone(), &crate::auth::normalize(path)).purge())
            .collect();
        storage.submit(changes);
    }

    /// Everything of the entity, for its deletion.
    pub(super) fn purge(&self) -> Vec<Change> {
        let mut prefix = self.entity.to_vec();
        prefix.push(0);
        vec![
            Change::remove_prefix(Space::Messages, prefix.clone()),
            Change::remove_prefix(Space::Locks, prefix.clone()),
            Change::remove_prefix(Space::Sessions, prefix),
            Change::remove(Space::Sequences, self.entity.to_vec()),
        ]
    }
}

fn message_key(entity: &[u8], seq: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(entity.len() + 9);
    k.extend_from_slice(entity);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a key of [`Space::Messages`] or [`Space::Locks`] into entity and sequence number.
pub(crate) fn split_message_key(key: &[u8]) -> Option<(&str, i64)> {
    let (entity, rest) = key.split_at_checked(key.len().checked_sub(9)?)?;
    let (&0, seq) = rest.split_first()? else { return None };
    let seq = i64::from_be_bytes(seq.try_into().ok()?);
    Some((std::str::from_utf8(entity).ok()?, seq))
}

/// Splits a key of [`Space::Sessions`] into entity and session id.
pub(crate) fn split_session_key(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|&b| b == 0)?;
    Some((std::str::from_utf8(&key[..at]).ok()?, std::str::from_utf8(&key[at + 1..]).ok()?))
}

/// The state a message's record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resting {
    Available = 0,
    Deferred = 1,
    Scheduled = 2,
}

fn resting(state: EntryState) -> Resting {
    match state {
        EntryState::Available | EntryState::Locked { deferred: false, .. } => Resting::Available,
        EntryState::Deferred | EntryState::Locked { deferred: true, .. } => Resting::Deferred,
        EntryState::Scheduled => Resting::Scheduled,
    }
}

fn encode(entry: &Entry) -> Vec<u8> {
    let m = &entry.msg;
    let body = m.encode(crate::message::Stamp::default());
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(RECORD_VERSION);
    out.push(resting(entry.state) as u8);
    out.extend_from_slice(&entry.delivery_count.to_be_bytes());
    out.extend_from_slice(&entry.expires_at_ms.unwrap_or(NONE_MS).to_be_bytes());
    out.extend_from_slice(&m.enqueued_ms.to_be_bytes());
    out.extend_from_slice(&m.scheduled_enqueue_ms.unwrap_or(NONE_MS).to_be_bytes());
    out.extend_from_slice(&u32::try_from(m.size).unwrap_or(u32::MAX).to_be_bytes());
    out.push(m.hops);
    out.extend_from_slice(&body);
    out
}

/// A message read back from its record.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) msg: StoredMessage,
    pub(crate) state: Resting,
    pub(crate) delivery_count: u32,
    pub(crate) expires_at_ms: Option<i64>,
}

/// Reads a record written by [`Journal::put`]; `seq` is from its key.
pub(crate) fn decode(seq: i64, record: &[u8]) -> Result<Recovered, String> {
    if record.len() < HEADER_LEN {
        return Err(format!("{} bytes is shorter than a record's header", record.len()));
    }
    if record[0] != RECORD_VERSION {
        return Err(format!("record version {} (this emulator writes {RECORD_VERSION})", record[0]));
    }
    let i64_at = |at: usize| i64::from_be_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    let opt = |v: i64| (v != NONE_MS).then_some(v);
    let state = match record[1] {
        0 => Resting::Available,
        1 => Resting::Deferred,
        2 => Resting::Scheduled,
        s => return Err(format!("unknown message state {s}")),
    };
    let delivery_count = u32::from_be_bytes(record[2..6].try_into().expect("4 bytes"));
    let payload = Bytes::copy_from_slice(&record[HEADER_LEN..]);
    let mut msg = StoredMessage::parse(&payload).map_err(|e| format!("its message: {e}"))?;
    // The broker's annotations were written for the record; the message keeps its own.
    msg.annotations.swap_remove(&key(annotation::SEQUENCE_NUMBER));
    msg.annotations.swap_remove(&key(annotation::ENQUEUED_TIME));
    msg.sequence_number = seq;
    msg.enqueued_ms = i64_at(14);
    msg.scheduled_enqueue_ms = opt(i64_at(22));
    msg.size = u32::from_be_bytes(record[30..34].try_into().expect("4 bytes")) as usize;
    msg.hops = record[34];
    Ok(Recovered { msg, state, delivery_count, expires_at_ms: opt(i64_at(6)) })
}

/// What the store held of one entity.
#[derive(Debug, Default)]
pub(crate) struct EntityRecords {
    /// Messages by sequence number: their record, and whether they were locked.
    pub(crate) messages: Vec<(i64, Vec<u8>, bool)>,
    pub(crate) sessions: Vec<(String, Bytes)>,
    pub(crate) next_sequence: Option<i64>,
}

/// Sorts what the store held by entity.
pub(crate) fn by_entity(
    contents: &crate::storage::Contents,
    dir: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, EntityRecords>, StorageError> {
    let corrupt = |what: &str, key: &[u8]| StorageError::Corrupt {
        dir: dir.to_path_buf(),
        what: format!("{what} {}", String::from_utf8_lossy(key)),
        detail: "its key is malformed".into(),
    };
    let mut out: std::collections::BTreeMap<String, EntityRecords> = Default::default();
    let locks: std::collections::HashSet<&[u8]> =
        contents.space(Space::Locks).iter().map(|(k, _)| k.as_slice()).collect();
    for (k, v) in contents.space(Space::Messages) {
        let (entity, seq) = split_message_key(k).ok_or_else(|| corrupt("message", k))?;
        out.entry(entity.to_string()).or_default().messages.push((seq, v.clone(), locks.contains(k.as_slice())));
    }
    for (k, v) in contents.space(Space::Sessions) {
        let (entity, id) = split_session_key(k).ok_or_else(|| corrupt("session", k))?;
        out.entry(entity.to_string()).or_default().sessions.push((id.to_string(), Bytes::copy_from_slice(v)));
    }
    for (k, v) in contents.space(Space::Sequences) {
        let entity = std::str::from_utf8(k).map_err(|_| corrupt("sequence", k))?;
        let next = <[u8; 8]>::try_from(v.as_slice()).map_err(|_| corrupt("sequence", k))?;
        out.entry(entity.to_string()).or_default().next_sequence = Some(i64::from_be_bytes(next));
    }
    Ok(out)
}

impl super::Queue {
    /// Takes back what the store kept of this entity, as the emulator starts; returns how many
    /// messages. A message that was locked when the emulator stopped returns to the queue with
    /// one more delivery counted (as after a lock expiry), or is dead-lettered past
    /// `MaxDeliveryCount`; a scheduled one is due at its time; an expired one goes as TTL says.
    pub(crate) fn restore(&self, records: EntityRecords, dir: &std::path::Path) -> Result<usize, StorageError> {
        use super::{DeadlineKind, Memory, instant_after};
        use std::time::Duration;
        use tokio::time::Instant;

        let now = crate::message::now_ms();
        let instant_now = Instant::now();
        let at = |ms: i64| instant_after(instant_now, Duration::from_millis(ms.saturating_sub(now).max(0) as u64));
        let count = records.messages.len();
        let mut st = self.lock();
        // What is already stored is not written again.
        let journal = st.journal.take();
        let mut was_locked = Vec::new();
        let mut max_seq = 0;
        for (seq, record, locked) in records.messages {
            let r = decode(seq, &record).map_err(|detail| StorageError::Corrupt {
                dir: dir.to_path_buf(),
                what: format!("message {seq} of {}", self.name()),
                detail,
            })?;
            max_seq = max_seq.max(seq);
            st.memory.charge(Memory::cost(1, r.msg.size as u64));
            let session = self.session_of(&r.msg);
            let scheduled_at = r.msg.scheduled_enqueue_ms;
            let entry = Entry {
                msg: r.msg,
                session,
                state: EntryState::Scheduled,
                delivery_count: r.delivery_count,
                expires_at_ms: r.expires_at_ms,
            };
            st.insert_entry(seq, entry);
            if let Some(exp) = r.expires_at_ms {
                st.deadlines.insert((at(exp), seq, DeadlineKind::Ttl));
            }
            match r.state {
                Resting::Deferred => {
                    if let Some(e) = st.entries.get_mut(&seq) {
                        e.state = EntryState::Deferred;
                    }
                }
                // Due now or later: the timer makes it available (or forwards it) then.
                Resting::Scheduled => {
                    st.deadlines.insert((at(scheduled_at.unwrap_or(now)), seq, DeadlineKind::Scheduled));
                }
                Resting::Available if locked => {}
                Resting::Available => st.ready(seq),
            }
            if locked {
                was_locked.push((seq, r.state == Resting::Deferred));
            }
        }
        for (id, state) in records.sessions {
            st.restore_session_state(&id, state);
        }
        st.next_sequence = records.next_sequence.unwrap_or(1).max(max_seq + 1).max(st.next_sequence);
        st.journal = journal;
        // The deliveries the stop ended count, as a lock expiry's would (and are written).
        for (seq, deferred) in was_locked {
            self.unlock(&mut st, seq, deferred, true);
        }
        drop(st);
        self.timer.notify_one();
        Ok(count)
    }
}
