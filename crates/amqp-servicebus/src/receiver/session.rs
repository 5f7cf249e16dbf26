//! Message sessions, the receiver's side: what a session receiver asks for when it attaches
//! (`com.microsoft:session-filter`, and `com.microsoft:timeout` for the next available
//! session), what the broker grants (the session id in the filter it echoes, and
//! `com.microsoft:locked-until-utc`), and the session lock, renewed automatically up to a
//! maximum if asked; [`MessageSession`], the view of it a caller gets.

use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::Receiver as AmqpReceiver;
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::messaging::{FilterSet, Source};
use fe2o3_amqp::types::primitives::Symbol;
use serde_amqp::Value;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::management::Management;
use crate::message::system_time;

/// The source filter that names the session.
const SESSION_FILTER: &str = "com.microsoft:session-filter";
/// The attach property with the session lock's expiry, in .NET ticks.
const LOCKED_UNTIL_UTC: &str = "com.microsoft:locked-until-utc";
/// The attach property with how long to wait for the next available session, in milliseconds.
const TIMEOUT: &str = "com.microsoft:timeout";
/// .NET ticks (100 ns) from 0001-01-01 to the Unix epoch.
const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;
/// Renew this long before the lock lapses (less for short locks: half of what is left).
const RENEW_AHEAD: Duration = Duration::from_secs(10);

/// Which session a receiver asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wanted {
    Id(String),
    NextAvailable,
}

/// The source of a session receiver on `entity`.
pub(super) fn source(entity: &str, wanted: &Wanted) -> Source {
    let value = match wanted {
        Wanted::Id(id) => Value::String(id.clone()),
        Wanted::NextAvailable => Value::Null,
    };
    let mut filter = FilterSet::new();
    filter.insert(Symbol::from(SESSION_FILTER), value);
    Source::builder().address(entity.to_string()).filter(filter).build()
}

/// The attach properties: how long to wait for the next available session.
pub(super) fn properties(wanted: &Wanted, wait: Duration) -> Option<Fields> {
    (*wanted == Wanted::NextAvailable).then(|| {
        let mut fields = Fields::new();
        fields.insert(Symbol::from(TIMEOUT), Value::Uint(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX)));
        fields
    })
}

/// The session the broker granted an attached receiver, and until when it is locked.
pub(super) fn granted(receiver: &AmqpReceiver, entity: &str) -> Result<(String, SystemTime)> {
    let filter = receiver.source().as_ref().and_then(|s| s.filter.as_ref());
    let id = match filter.and_then(|f| f.get(&Symbol::from(SESSION_FILTER))) {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Described(d)) => match &d.value {
            Value::String(id) => id.clone(),
            other => return Err(Error::protocol(entity, format!("the broker granted a session id of {other:?}"))),
        },
        other => {
            return Err(Error::protocol(
                entity,
                format!("the broker's attach names no session (its filter is {other:?})"),
            ));
        }
    };
    let until = receiver.properties(|p| match p.as_ref().and_then(|p| p.get(&Symbol::from(LOCKED_UNTIL_UTC))) {
        Some(Value::Long(ticks)) => Some(from_ticks(*ticks)),
        Some(Value::Timestamp(t)) => Some(system_time(t.milliseconds())),
        _ => None,
    });
    let until = until.ok_or_else(|| {
        Error::protocol(entity, format!("the broker's attach for session {id:?} has no {LOCKED_UNTIL_UTC}"))
    })?;
    Ok((id, until))
}

/// .NET ticks as a time.
fn from_ticks(ticks: i64) -> SystemTime {
    let since_epoch = ticks.saturating_sub(TICKS_AT_UNIX_EPOCH);
    let (secs, rest) = (since_epoch / 10_000_000, since_epoch % 10_000_000);
    if since_epoch >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, (rest * 100) as u32)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), (rest.unsigned_abs() * 100) as u32)
    }
}

/// A session receiver's hold on its session.
pub(super) struct SessionLock {
    pub(super) id: String,
    locked_until: StdMutex<SystemTime>,
    renewal: StdMutex<Option<JoinHandle<()>>>,
}

impl SessionLock {
    pub(super) fn new(id: String, locked_until: SystemTime) -> Arc<Self> {
        Arc::new(Self { id, locked_until: StdMutex::new(locked_until), renewal: StdMutex::new(None) })
    }

    /// The `session-id` field of a `$management` request about this session.
    pub(super) fn id_field(&self) -> (&'static str, Value) {
        ("session-id", Value::String(self.id.clone()))
    }

    pub(super) fn locked_until(&self) -> SystemTime {
        *self.locked_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the lock through `$management`; returns the new expiry.
    pub(super) async fn renew(&self, management: &Management, entity: &str) -> Result<SystemTime> {
        let body = vec![self.id_field()];
        let response = management.request(entity, "com.microsoft:renew-session-lock", body).await?;
        let until = match response.field("expiration") {
            Some(Value::Timestamp(t)) => system_time(t.milliseconds()),
            other => {
                return Err(Error::protocol(
                    entity,
                    format!("renew-session-lock answered without an expiration: {other:?}"),
                ));
            }
        };
        *self.locked_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
        Ok(until)
    }

    /// Renews the lock before it lapses, for up to `max` from now, until the lock is lost or
    /// dropped (with its receiver).
    pub(super) fn renew_automatically(self: &Arc<Self>, management: Arc<Management>, entity: String, max: Duration) {
        if max.is_zero() {
            return;
        }
        let lock = Arc::downgrade(self);
        let task = tokio::spawn(renew_until(lock, management, entity, tokio::time::Instant::now() + max));
        *self.renewal.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// The message session a session receiver holds: its id, its lock and its state.
#[derive(Clone, Copy)]
pub struct MessageSession<'a> {
    management: &'a Management,
    entity: &'a str,
    lock: &'a SessionLock,
}

impl std::fmt::Debug for MessageSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSession").field("id", &self.lock.id).field("locked_until", &self.locked_until()).finish()
    }
}

impl<'a> MessageSession<'a> {
    pub(super) fn new(management: &'a Management, entity: &'a str, lock: &'a SessionLock) -> Self {
        Self { management, entity, lock }
    }

    /// The session id (the messages' `session_id`).
    pub fn id(&self) -> &'a str {
        &self.lock.id
    }

    /// When the session lock lapses unless renewed.
    pub fn locked_until(&self) -> SystemTime {
        self.lock.locked_until()
    }

    /// Renews the session lock (and with it the locks of the session's messages); returns
    /// the new expiry.
    pub async fn renew_lock(&self) -> Result<SystemTime> {
        self.lock.renew(self.management, self.entity).await
    }

    /// The session's state, if it has one.
    pub async fn state(&self) -> Result<Option<bytes::Bytes>> {
        let body = vec![self.lock.id_field()];
        let response = self.management.request(self.entity, "com.microsoft:get-session-state", body).await?;
        match response.field("session-state") {
            Some(Value::Binary(b)) => Ok(Some(bytes::Bytes::copy_from_slice(b))),
            None | Some(Value::Null) => Ok(None),
            Some(other) => {
                Err(Error::protocol(self.entity, format!("get-session-state answered a state of {other:?}")))
            }
        }
    }

    /// Sets the session's state; `None` clears it. It is kept until it is set again or cleared.
    pub async fn set_state(&self, state: Option<&[u8]>) -> Result<()> {
        let state = state.map_or(Value::Null, |s| Value::Binary(s.to_vec().into()));
        let body = vec![self.lock.id_field(), ("session-state", state)];
        self.management.request(self.entity, "com.microsoft:set-session-state", body).await.map(drop)
    }
}

async fn renew_until(lock: Weak<SessionLock>, management: Arc<Management>, entity: String, end: tokio::time::Instant) {
    loop {
        let Some(until) = lock.upgrade().map(|l| l.locked_until()) else { return };
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        let at = tokio::time::Instant::now() + left.saturating_sub(RENEW_AHEAD.min(left / 2));
        if at >= end {
            return; // The lock lasts past the end of the renewal.
        }
        tokio::time::sleep_until(at).await;
        let Some(lock) = lock.upgrade() else { return };
        match lock.renew(&management, &entity).await {
            Ok(until) => tracing::debug!(%entity, session = %lock.id, ?until, "session lock renewed"),
            Err(e) => {
                tracing::warn!(%entity, session = %lock.id, "renewing the session lock failed; renewal stops: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_as_times() {
        assert_eq!(from_ticks(TICKS_AT_UNIX_EPOCH), UNIX_EPOCH);
        let t = from_ticks(TICKS_AT_UNIX_EPOCH + 17_000_000_000_000_000 + 1_234_567);
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_nanos(123_456_700));
        assert_eq!(from_ticks(0), UNIX_EPOCH - Duration::from_secs(62_135_596_800));
    }

    #[test]
    fn the_filter_names_the_session_or_asks_for_any() {
        let with_id = source("q", &Wanted::Id("a".into()));
        assert_eq!(with_id.filter.unwrap().get(&Symbol::from(SESSION_FILTER)), Some(&Value::String("a".into())));
        let any = source("q", &Wanted::NextAvailable);
        assert_eq!(any.filter.unwrap().get(&Symbol::from(SESSION_FILTER)), Some(&Value::Null));
        assert!(properties(&Wanted::Id("a".into()), Duration::from_secs(1)).is_none());
        let props = properties(&Wanted::NextAvailable, Duration::from_secs(2)).unwrap();
        assert_eq!(props.get(&Symbol::from(TIMEOUT)), Some(&Value::Uint(2000)));
    }
}
