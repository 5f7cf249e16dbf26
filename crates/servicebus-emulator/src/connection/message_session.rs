//! Session receivers: a receiver that asks for a message session with the
//! `com.microsoft:session-filter` source filter, by id or for the next free one.
//!
//! A receiver that asks for the next free session waits, with its attach unanswered, until a
//! session with messages comes free or its `com.microsoft:timeout` passes (then it is refused
//! with `com.microsoft:timeout`, as the service does). The answer names the session it got in
//! the filter, kept in the encoding the client used (a string, or a described string), and
//! carries `com.microsoft:locked-until-utc`. A receiver whose session lock lapses is detached
//! with `com.microsoft:session-lock-lost`.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp_types::definitions::{Error as AmqpError, Fields};
use fe2o3_amqp_types::messaging::Source;
use fe2o3_amqp_types::performatives::{Attach, Flow};
use fe2o3_amqp_types::primitives::Symbol;
use serde_amqp::Value;
use serde_amqp::described::Described;
use tokio::time::Instant;

use super::link::{Kind, LinkAuth};
use super::{Engine, Event, Step};
use crate::management::error;
use crate::queue::{Queue, SessionClaim};

/// The source filter a session receiver sends.
const SESSION_FILTER: &str = "com.microsoft:session-filter";
/// The attach property that says when the session's lock lapses, in .NET ticks.
const LOCKED_UNTIL_UTC: &str = "com.microsoft:locked-until-utc";
/// The attach property with the client's wait for a session, in milliseconds.
const TIMEOUT: &str = "com.microsoft:timeout";
/// How long a receiver waits for the next free session when it names no timeout (the
/// service's default operation timeout).
const DEFAULT_SESSION_WAIT: Duration = Duration::from_secs(60);
/// .NET ticks (100 ns) from 0001-01-01 to the Unix epoch.
const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;

/// What a session receiver asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionFilter {
    Id(String),
    NextAvailable,
}

/// A session receiver waiting for a free session, its attach unanswered.
pub(super) struct PendingAttach {
    pub(super) attach: Attach,
    kind: Kind,
    auth: Option<LinkAuth>,
    deadline: Instant,
    /// The last `flow` the client sent for it (applied when it gets a session).
    pub(super) flow: Option<Flow>,
}

/// The session a receiver asks for on `queue`, or why it may not receive from it.
pub(super) fn requested(source: Option<&Source>, queue: &Queue) -> Result<Option<SessionFilter>, AmqpError> {
    let filter = source.and_then(|s| s.filter.as_ref()).and_then(|f| f.get(&Symbol::from(SESSION_FILTER)));
    let filter = match filter.map(inner) {
        None => None,
        Some(Value::Null) => Some(SessionFilter::NextAvailable),
        Some(Value::String(id)) => Some(SessionFilter::Id(id.clone())),
        Some(other) => {
            return Err(error(
                "amqp:invalid-field",
                format!("the {SESSION_FILTER} filter must be a string (a session id) or null, not {other:?}"),
            ));
        }
    };
    match (queue.requires_session(), &filter) {
        (true, None) => Err(error(
            "amqp:not-allowed",
            format!(
                "It is not possible for an entity that requires sessions to create a non-sessionful message \
                 receiver: '{}' requires sessions; accept a session to receive from it.",
                queue.name()
            ),
        )),
        (false, Some(_)) => Err(error(
            "amqp:not-allowed",
            format!(
                "It is not possible for an entity that does not require sessions to create a sessionful message \
                 receiver: '{}' does not require sessions.",
                queue.name()
            ),
        )),
        _ => Ok(filter),
    }
}

/// The value of a filter entry: Go's SDK wraps it in a described type.
fn inner(value: &Value) -> &Value {
    match value {
        Value::Described(d) => &d.value,
        other => other,
    }
}

/// The client's source with the session filter naming `id`, in the client's encoding.
pub(super) fn granted_source(source: &Source, id: &str) -> Source {
    let mut source = source.clone();
    if let Some(filter) = &mut source.filter
        && let Some(value) = filter.get_mut(&Symbol::from(SESSION_FILTER))
    {
        *value = match value {
            Value::Described(d) => Value::Described(Box::new(Described {
                descriptor: d.descriptor.clone(),
                value: Value::String(id.into()),
            })),
            _ => Value::String(id.into()),
        };
    }
    source
}

/// Attach properties with `com.microsoft:locked-until-utc` for a lock that lapses at `until_ms`.
pub(super) fn locked_until_property(until_ms: i64) -> Fields {
    let ticks = until_ms.saturating_mul(10_000).saturating_add(TICKS_AT_UNIX_EPOCH);
    let mut fields = Fields::default();
    fields.insert(Symbol::from(LOCKED_UNTIL_UTC), Value::Long(ticks));
    fields
}

/// How long the client waits for a session (`com.microsoft:timeout`, in ms).
fn session_wait(attach: &Attach) -> Duration {
    let timeout = attach.properties.as_ref().and_then(|p| p.get(&Symbol::from(TIMEOUT)));
    match timeout {
        Some(Value::Uint(ms)) => Duration::from_millis(u64::from(*ms)),
        Some(Value::Int(ms)) => Duration::from_millis(u64::try_from(*ms).unwrap_or(0)),
        Some(Value::Ulong(ms)) => Duration::from_millis(*ms),
        Some(Value::Long(ms)) => Duration::from_millis(u64::try_from(*ms).unwrap_or(0)),
        _ => DEFAULT_SESSION_WAIT,
    }
}

impl Engine {
    /// A session receiver's attach: lock the session it names, or the next free one (waiting
    /// for one if none is free).
    pub(super) fn attach_session_receiver(
        &mut self,
        channel: u16,
        attach: Attach,
        kind: Kind,
        auth: Option<LinkAuth>,
        filter: SessionFilter,
    ) -> Step {
        let Kind::Deliver { queue, .. } = &kind else { unreachable!("only receivers ask for sessions") };
        let queue = queue.clone();
        match filter {
            SessionFilter::Id(id) => match queue.lock_session(&id) {
                Ok(claim) => self.accept_attach(channel, attach, with_claim(kind, claim), auth),
                Err(e) => {
                    tracing::info!(peer = %self.peer, session = %id, "session receiver refused: {e}");
                    self.refuse_attach(channel, attach, error(e.condition(), e.to_string()));
                    Ok(())
                }
            },
            SessionFilter::NextAvailable => {
                let handle = attach.handle.0;
                match queue.lock_next_session(self.session_free_waker(channel, handle)) {
                    Some(claim) => self.accept_attach(channel, attach, with_claim(kind, claim), auth),
                    None => {
                        let deadline = Instant::now() + session_wait(&attach);
                        let pending = PendingAttach { attach, kind, auth, deadline, flow: None };
                        self.session(channel)?.pending.insert(handle, pending);
                        Ok(())
                    }
                }
            }
        }
    }

    fn session_free_waker(&self, channel: u16, handle: u32) -> impl FnOnce() + Send + 'static {
        let events = self.events_tx.clone();
        move || {
            let _ = events.send(Event::SessionFree { channel, handle });
        }
    }

    /// A session may have come free: a waiting receiver tries again.
    pub(super) fn on_session_free(&mut self, channel: u16, handle: u32) {
        let Some(pending) = self.sessions.get(&channel).and_then(|s| s.pending.get(&handle)) else { return };
        let Kind::Deliver { queue, .. } = &pending.kind else { return };
        let queue: Arc<Queue> = queue.clone();
        let Some(claim) = queue.lock_next_session(self.session_free_waker(channel, handle)) else { return };
        let Some(pending) = self.sessions.get_mut(&channel).and_then(|s| s.pending.remove(&handle)) else {
            queue.release_session(&claim);
            return;
        };
        let flow = pending.flow;
        if let Err(fault) = self.accept_attach(channel, pending.attach, with_claim(pending.kind, claim), pending.auth) {
            self.on_fault(fault);
            return;
        }
        if let Some(flow) = flow
            && let Some(link) = self.link_mut(channel, handle)
        {
            link.on_flow(&flow);
            self.deliver(channel, handle);
        }
    }

    /// Refuses receivers that waited past their timeout, and detaches those whose session lock lapsed.
    pub(super) fn check_session_receivers(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        let mut lost = Vec::new();
        for (&channel, session) in &mut self.sessions {
            let expired: Vec<u32> =
                session.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(&h, _)| h).collect();
            for handle in expired {
                if let Some(p) = session.pending.remove(&handle) {
                    timed_out.push((channel, p.attach));
                }
            }
            for (&handle, link) in &session.links {
                if let Some((queue, claim)) = link.session_claim()
                    && !queue.holds(claim)
                {
                    lost.push((channel, handle, claim.id.clone()));
                }
            }
        }
        for (channel, attach) in timed_out {
            let e = error(
                "com.microsoft:timeout",
                "The operation did not complete within the allotted timeout: no session with messages came free. \
                 Send messages with a session id, or wait longer.",
            );
            self.refuse_attach(channel, attach, e);
        }
        for (channel, handle, id) in lost {
            tracing::info!(peer = %self.peer, session = %id, "session lock lost; detaching its receiver");
            let description = format!(
                "The session lock has expired on the MessageSession '{id}'. Accept a new MessageSession, and renew \
                 its lock before it expires."
            );
            self.detach(channel, handle, Some(error("com.microsoft:session-lock-lost", description)));
        }
    }
}

fn with_claim(kind: Kind, claim: SessionClaim) -> Kind {
    match kind {
        Kind::Deliver { queue, mode, .. } => Kind::Deliver { queue, mode, session: Some(claim) },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::FilterSet;

    fn source(value: Value) -> Source {
        let mut filter = FilterSet::default();
        filter.insert(Symbol::from(SESSION_FILTER), value);
        Source::builder().address("q").filter(filter).build()
    }

    #[test]
    fn the_granted_id_keeps_the_filters_encoding() {
        let plain = granted_source(&source(Value::Null), "s1");
        assert_eq!(plain.filter.unwrap().get(&Symbol::from(SESSION_FILTER)), Some(&Value::String("s1".into())));
        let described = Value::Described(Box::new(Described {
            descriptor: serde_amqp::descriptor::Descriptor::Code(0x0000_0137_0000_000C),
            value: Value::Null,
        }));
        let granted = granted_source(&source(described), "s1");
        match granted.filter.unwrap().get(&Symbol::from(SESSION_FILTER)) {
            Some(Value::Described(d)) => {
                assert_eq!(d.value, Value::String("s1".into()));
                assert_eq!(d.descriptor, serde_amqp::descriptor::Descriptor::Code(0x0000_0137_0000_000C));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn locked_until_is_in_dotnet_ticks() {
        let fields = locked_until_property(1_000);
        assert_eq!(fields.get(&Symbol::from(LOCKED_UNTIL_UTC)), Some(&Value::Long(621_355_968_010_000_000)));
    }
}
