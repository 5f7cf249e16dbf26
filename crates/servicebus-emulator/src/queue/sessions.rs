//! Message sessions: in an entity that requires sessions, messages with one session id are
//! received in order by one receiver at a time, the holder of the session's lock.
//!
//! A receiver locks a session by id, or the next free one that has messages
//! ([`Queue::lock_session`], [`Queue::lock_next_session`]) and gets a [`SessionClaim`]. The
//! lock lasts `LockDuration` and is renewed as a whole; the messages it hands out carry no
//! lock of their own. When it lapses, or its receiver lets go ([`Queue::release_session`]),
//! the messages it holds return to the session and count a delivery, as an abandon does.
//! A session also keeps a state (bytes) for its receivers, until they clear it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Queue, SettleError, State};
use crate::message::now_ms;

/// One message session of an entity.
#[derive(Debug, Default)]
pub(super) struct MessageSession {
    /// Its messages ready for its receiver, in sequence order.
    pub(super) available: BTreeSet<i64>,
    /// Its messages in the entity, in any state.
    pub(super) entries: usize,
    pub(super) lock: Option<SessionLock>,
    /// The state its receivers set (`set-session-state`), and when (ms since the epoch).
    state: Option<Bytes>,
    state_updated_ms: i64,
}

/// Who holds a session, and until when.
#[derive(Debug)]
pub(super) struct SessionLock {
    owner: u64,
    until: Instant,
    pub(super) until_ms: i64,
    /// The messages it holds locked.
    pub(super) locked: BTreeSet<i64>,
}

/// A receiver's hold on a session, given when it locked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionClaim {
    pub(crate) id: String,
    owner: u64,
    /// When the lock lapses unless renewed (ms since the epoch), as of locking.
    pub(crate) locked_until_ms: i64,
}

/// Why a session operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(
        "The requested session '{0}' cannot be accepted. It may be locked by another receiver. Wait for it to be \
         released, or accept another session."
    )]
    CannotBeLocked(String),
    #[error(
        "The session lock has expired on the MessageSession '{0}', or its receiver closed. Accept the session \
         again to go on."
    )]
    LockLost(String),
}

impl SessionError {
    /// The AMQP condition the service answers with.
    pub(crate) fn condition(&self) -> &'static str {
        match self {
            Self::CannotBeLocked(_) => "com.microsoft:session-cannot-be-locked",
            Self::LockLost(_) => "com.microsoft:session-lock-lost",
        }
    }
}

/// Owners of session locks, unique in the process: a claim of one receiver never matches
/// a lock another took later.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

impl State {
    /// Gives session `id` the state the store kept for it.
    pub(super) fn restore_session_state(&mut self, id: &str, state: Bytes) {
        let s = self.sessions.entry(id.to_string()).or_default();
        s.state = Some(state);
        s.state_updated_ms = now_ms();
    }

    /// Drops a session that has nothing left: no messages, no lock, no state.
    pub(super) fn prune_session(&mut self, id: &str) {
        if self.sessions.get(id).is_some_and(|s| s.entries == 0 && s.lock.is_none() && s.state.is_none()) {
            self.sessions.remove(id);
        }
    }

    /// Message `seq` is no longer held by its session's lock (it was settled).
    pub(super) fn leave_session_lock(&mut self, id: &str, seq: i64) {
        if let Some(lock) = self.sessions.get_mut(id).and_then(|s| s.lock.as_mut()) {
            lock.locked.remove(&seq);
        }
    }
}

impl Queue {
    /// Checks that `claim` still holds its session's lock.
    pub(super) fn check_claim(st: &State, claim: &SessionClaim) -> Result<(), SessionError> {
        let held = st
            .sessions
            .get(&claim.id)
            .and_then(|s| s.lock.as_ref())
            .is_some_and(|l| l.owner == claim.owner && l.until > Instant::now());
        if held { Ok(()) } else { Err(SessionError::LockLost(claim.id.clone())) }
    }

    /// Checks that session `id` is locked (its messages may be settled).
    pub(super) fn check_session_lock(st: &State, id: &str) -> Result<(), SettleError> {
        let held = st.sessions.get(id).and_then(|s| s.lock.as_ref()).is_some_and(|l| l.until > Instant::now());
        if held { Ok(()) } else { Err(SettleError::SessionLockLost) }
    }

    /// Locks session `id` (which may have no messages yet).
    pub(crate) fn lock_session(&self, id: &str) -> Result<SessionClaim, SessionError> {
        let mut st = self.lock();
        let now = Instant::now();
        let session = st.sessions.entry(id.to_string()).or_default();
        if session.lock.as_ref().is_some_and(|l| l.until > now) {
            return Err(SessionError::CannotBeLocked(id.to_string()));
        }
        Ok(self.take_lock(&mut st, id, now))
    }

    /// Locks the free session whose oldest ready message is the oldest, or registers `wake`
    /// to be called when one may have come free.
    pub(crate) fn lock_next_session(&self, wake: impl FnOnce() + Send + 'static) -> Option<SessionClaim> {
        let mut st = self.lock();
        let now = Instant::now();
        let next = st
            .sessions
            .iter()
            .filter(|(_, s)| s.lock.as_ref().is_none_or(|l| l.until <= now))
            .filter_map(|(id, s)| s.available.first().map(|&seq| (seq, id.clone())))
            .min();
        match next {
            Some((_, id)) => Some(self.take_lock(&mut st, &id, now)),
            None => {
                st.waiters.push(Box::new(wake));
                None
            }
        }
    }

    /// Gives session `id` a new lock; a lapsed one is released first.
    fn take_lock(&self, st: &mut State, id: &str, now: Instant) -> SessionClaim {
        self.release_lock(st, id, true);
        let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        let (until, until_ms) = self.lock_until(now);
        let session = st.sessions.entry(id.to_string()).or_default();
        session.lock = Some(SessionLock { owner, until, until_ms, locked: BTreeSet::new() });
        st.session_deadlines.insert((until, id.to_string()));
        self.timer.notify_one();
        SessionClaim { id: id.to_string(), owner, locked_until_ms: until_ms }
    }

    /// Extends the session lock `claim` holds; returns its new expiry (ms since the epoch).
    pub(crate) fn renew_session_lock(&self, claim: &SessionClaim) -> Result<i64, SessionError> {
        let mut st = self.lock();
        Self::check_claim(&st, claim)?;
        let (until, until_ms) = self.lock_until(Instant::now());
        if let Some(lock) = st.sessions.get_mut(&claim.id).and_then(|s| s.lock.as_mut()) {
            lock.until = until;
            lock.until_ms = until_ms;
        }
        st.session_deadlines.insert((until, claim.id.clone()));
        self.timer.notify_one();
        Ok(until_ms)
    }

    /// Whether `claim` still holds its session.
    pub(crate) fn holds(&self, claim: &SessionClaim) -> bool {
        Self::check_claim(&self.lock(), claim).is_ok()
    }

    /// Lets go of the session `claim` holds (its receiver closed): the messages it holds
    /// return to the session, counting a delivery.
    pub(crate) fn release_session(&self, claim: &SessionClaim) {
        let mut st = self.lock();
        let owned = st.sessions.get(&claim.id).and_then(|s| s.lock.as_ref()).is_some_and(|l| l.owner == claim.owner);
        if owned {
            self.release_lock(&mut st, &claim.id, true);
        }
    }

    /// Clears session `id`'s lock; the messages it held return (counted, if `counted`).
    fn release_lock(&self, st: &mut State, id: &str, counted: bool) {
        let Some(lock) = st.sessions.get_mut(id).and_then(|s| s.lock.take()) else { return };
        for seq in lock.locked {
            let Some(entry) = st.entries.get(&seq) else { continue };
            if let super::EntryState::Locked { token, deferred, .. } = entry.state {
                st.locks.remove(&token);
                self.unlock(st, seq, deferred, counted);
            }
        }
        st.woken = true; // A receiver waiting for a free session may take this one.
        st.prune_session(id);
    }

    /// Releases the session locks that lapsed by `now`.
    pub(super) fn expire_session_locks(&self, st: &mut State, now: Instant) {
        while let Some((when, id)) = st.session_deadlines.first().cloned() {
            if when > now {
                break;
            }
            st.session_deadlines.pop_first();
            let lapsed = st.sessions.get(&id).and_then(|s| s.lock.as_ref()).is_some_and(|l| l.until <= now);
            if lapsed {
                tracing::debug!(queue = %self.name, session = %id, "session lock expired; its messages return");
                self.release_lock(st, &id, true);
            }
        }
    }

    /// The state of the session `claim` holds (`None`: never set, or cleared).
    pub(crate) fn session_state(&self, claim: &SessionClaim) -> Result<Option<Bytes>, SessionError> {
        let st = self.lock();
        Self::check_claim(&st, claim)?;
        Ok(st.sessions.get(&claim.id).and_then(|s| s.state.clone()))
    }

    /// Sets (or, with `None`, clears) the state of the session `claim` holds.
    pub(crate) fn set_session_state(&self, claim: &SessionClaim, state: Option<Bytes>) -> Result<(), SessionError> {
        let mut st = self.lock();
        Self::check_claim(&st, claim)?;
        st.record(|j| [j.session_state(&claim.id, state.as_ref())]);
        if let Some(s) = st.sessions.get_mut(&claim.id) {
            s.state = state;
            s.state_updated_ms = now_ms();
        }
        Ok(())
    }

    /// Ids of sessions, in order: with `updated_since_ms`, those whose state was set at or after
    /// it; without, those that have messages. `skip` and `top` page through them.
    pub(crate) fn session_ids(&self, updated_since_ms: Option<i64>, skip: usize, top: usize) -> Vec<String> {
        let st = self.lock();
        st.sessions
            .iter()
            .filter(|(_, s)| match updated_since_ms {
                Some(since) => s.state.is_some() && s.state_updated_ms >= since,
                None => s.entries > 0,
            })
            .skip(skip)
            .take(top)
            .map(|(id, _)| id.clone())
            .collect()
    }
}
