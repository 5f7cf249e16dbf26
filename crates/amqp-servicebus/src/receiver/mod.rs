//! Receiving and settling.
//!
//! A [`Receiver`] is a handle; the receive link itself is owned by a task (`link`), which
//! takes the receiver's commands: receive, settle on the link, close. Messages arrive on
//! the link (peek-lock or receive-and-delete), with credit granted per
//! [`Receiver::receive`] call or kept topped up by a prefetch.
//!
//! Settlement goes through `$management` `update-disposition`, because only that path
//! gives a confirmed answer for each lock token: the broker says whether the lock was
//! still valid, and a lost lock comes back as [`ErrorKind::LockLost`]. The delivery is then
//! also settled on the link, so the link keeps no record of it. A message whose receive
//! link was lost (the connection dropped, the link was detached) is reported as lock-lost
//! without asking the broker: the broker will redeliver it when its lock expires, so
//! nothing is lost silently. Where a message's lock came from is its `LockOrigin`.

mod link;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use fe2o3_amqp::link::receiver::TerminalDeliveryState;
use fe2o3_amqp::transaction::Controller;
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue};
use futures_util::Stream;
use serde_amqp::Value;
use tokio::sync::Mutex;

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::management::{Management, Response};
use crate::message::{LinkId, LockOrigin, Message, ReceivedMessage, system_time};
use crate::options::{Dialect, ReceiveMode, ReceiverOptions, SessionReceiverOptions};
use crate::sender::Sender;
use link::{LinkContext, LinkHandle, LinkOutcome};
pub use session::MessageSession;
use session::SessionLock;
pub(crate) use session::Wanted as WantedSession;

pub use link::UNDECODABLE_REASON;

/// Receives from one queue, subscription or dead-letter queue.
pub struct Receiver {
    connection: Arc<Connection>,
    management: Arc<Management>,
    entity: String,
    options: ReceiverOptions,
    /// The current receive link's task, if one runs.
    link: StdMutex<Option<Arc<LinkHandle>>>,
    /// Held while a link is attached, so that concurrent receives attach one.
    attaching: Mutex<()>,
    /// How many times the receive link was attached.
    attached: AtomicU64,
    /// The transaction controller of `complete_and_send`, on the session of the link it was
    /// attached for; held for a whole transaction.
    controller: Mutex<Option<(LinkId, Controller)>>,
    /// A session receiver's message session: its one link holds the session's lock.
    session: Option<Arc<SessionLock>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("entity", &self.entity).field("options", &self.options).finish()
    }
}

/// A settlement: what ends a delivery.
enum Settlement {
    Complete,
    Abandon(OrderedMap<String, SimpleValue>),
    DeadLetter { reason: Option<String>, description: Option<String> },
    Defer,
}

impl Receiver {
    pub(crate) fn new(
        connection: Arc<Connection>,
        management: Arc<Management>,
        entity: &str,
        options: ReceiverOptions,
    ) -> Self {
        Self {
            entity: connection.address(entity),
            connection,
            management,
            options,
            link: StdMutex::new(None),
            attaching: Mutex::new(()),
            attached: AtomicU64::new(0),
            controller: Mutex::new(None),
            session: None,
        }
    }

    /// A session receiver: attaches now, and holds the session it was granted until it is
    /// closed or dropped, or its lock is lost.
    pub(crate) async fn accept_session(
        connection: Arc<Connection>,
        management: Arc<Management>,
        entity: &str,
        wanted: WantedSession,
        options: SessionReceiverOptions,
    ) -> Result<Self> {
        let mut receiver = Self::new(connection, management, entity, options.receiver);
        let retry = &receiver.connection.options().retry;
        // A lost connection is retried; no session coming free in time is the answer itself.
        let (link, lock) = retry
            .run("accepting a session", &receiver.entity, || async {
                match receiver.attach_session(&wanted, options.wait).await {
                    Err(e) if e.kind() == ErrorKind::Timeout => Ok(Err(e)),
                    other => other.map(Ok),
                }
            })
            .await??;
        lock.renew_automatically(receiver.management.clone(), receiver.entity.clone(), options.max_lock_renewal);
        receiver.session = Some(lock);
        *receiver.link.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(link));
        receiver.attached.fetch_add(1, Ordering::Relaxed);
        Ok(receiver)
    }

    /// The message session this receiver holds, if it is a session receiver.
    pub fn session(&self) -> Option<MessageSession<'_>> {
        self.session.as_deref().map(|lock| MessageSession::new(&self.management, &self.entity, lock))
    }

    /// The `session-id` a `$management` request about this receiver's messages names, if any.
    fn session_field(&self) -> Option<(&'static str, Value)> {
        self.session.as_deref().map(SessionLock::id_field)
    }

    /// The entity this receiver receives from.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Receives up to `max` messages: waits up to `timeout` for the first, then takes what
    /// has already arrived. An empty result means nothing came in time.
    pub async fn receive(&self, max: usize, timeout: Duration) -> Result<Vec<ReceivedMessage>> {
        self.receive_batch(max, timeout, Duration::ZERO).await
    }

    /// Like [`Receiver::receive`], but once the first message is in, waits up to `linger` more
    /// for the batch to fill. Worth it only to form batches: the wait is added to the latency
    /// of the first message whenever fewer than `max` are on their way.
    pub async fn receive_batch(&self, max: usize, timeout: Duration, linger: Duration) -> Result<Vec<ReceivedMessage>> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + timeout;
        let retry = &self.connection.options().retry;
        retry
            .run("receive", &self.entity, || async {
                let link = self.current_or_attach().await?;
                let received = link.receive(&self.entity, max, deadline, linger).await;
                if received.is_err() {
                    self.connection.forget_if_closed(link.epoch).await;
                }
                received
            })
            .await
    }

    /// A stream of messages, one at a time, waiting as long as it takes.
    pub fn stream(&self) -> impl Stream<Item = Result<ReceivedMessage>> + '_ {
        futures_util::stream::unfold((self, Vec::<ReceivedMessage>::new()), |(r, mut buffered)| async move {
            loop {
                if let Some(m) = buffered.pop() {
                    return Some((Ok(m), (r, buffered)));
                }
                match r.receive(16, Duration::from_secs(60)).await {
                    Ok(mut ms) => {
                        ms.reverse();
                        buffered = ms;
                    }
                    Err(e) => return Some((Err(e), (r, buffered))),
                }
            }
        })
    }

    /// Completes a message: it is removed.
    pub async fn complete(&self, message: &ReceivedMessage) -> Result<()> {
        self.settle(message, Settlement::Complete).await
    }

    /// Abandons a message: it is unlocked and its delivery count rises; `properties` are merged
    /// into its application properties.
    pub async fn abandon(&self, message: &ReceivedMessage, properties: OrderedMap<String, SimpleValue>) -> Result<()> {
        self.settle(message, Settlement::Abandon(properties)).await
    }

    /// Moves a message to the dead-letter queue with a reason and description.
    pub async fn dead_letter(&self, message: &ReceivedMessage, reason: &str, description: &str) -> Result<()> {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        self.settle(message, Settlement::DeadLetter { reason: text(reason), description: text(description) }).await
    }

    /// Defers a message: it stays in the entity, receivable only by sequence number.
    pub async fn defer(&self, message: &ReceivedMessage) -> Result<()> {
        self.settle(message, Settlement::Defer).await
    }

    /// How many times the receive link has been attached (1 after the first receive; more after recoveries).
    pub fn links_attached(&self) -> u64 {
        self.attached.load(Ordering::Relaxed)
    }

    /// The current link's task, if it still runs.
    fn current(&self) -> Option<Arc<LinkHandle>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|l| l.is_alive()).cloned()
    }

    /// The link `id`, if it is still the current one and its connection is still open.
    async fn link_of(&self, id: LinkId) -> Option<Arc<LinkHandle>> {
        let link = self.current().filter(|l| l.id == id)?;
        self.connection.is_open(link.epoch).await.then_some(link)
    }

    fn link_lost(&self, message: &ReceivedMessage) -> Error {
        let seq = message.sequence_number;
        match &self.session {
            Some(session) => Error::new(
                ErrorKind::SessionLockLost,
                format!("message {seq} came on the link that held session {:?}, and it was lost", session.id),
            )
            .at(&self.entity),
            None => Error::lock_lost(
                &self.entity,
                format!("message {seq} came on a receive link that was lost; the broker will redeliver it"),
            ),
        }
    }

    /// The lock token of a message this receiver can settle, and the link that delivered it
    /// (none when it was received through `$management`).
    async fn lock_token(&self, message: &ReceivedMessage) -> Result<(uuid::Uuid, Option<Arc<LinkHandle>>)> {
        let invalid = |what: &str| Error::new(ErrorKind::InvalidOperation, what).at(&self.entity);
        let link = match message.origin {
            LockOrigin::Peeked => return Err(invalid("a peeked message is not locked and cannot be settled")),
            LockOrigin::Deleted => {
                return Err(invalid("a message received in receive-and-delete mode is already settled"));
            }
            LockOrigin::Management => None,
            // Locks die with the link that delivered them.
            LockOrigin::Link(id) => Some(self.link_of(id).await.ok_or_else(|| self.link_lost(message))?),
        };
        let token = message.lock_token.ok_or_else(|| invalid("the message has no lock token"))?;
        Ok((token, link))
    }

    async fn settle(&self, message: &ReceivedMessage, settlement: Settlement) -> Result<()> {
        if self.connection.dialect() == Dialect::GenericAmqp {
            return self.settle_on_link(message, settlement).await;
        }
        let (token, link) = self.lock_token(message).await?;
        let (status, mut body) = match &settlement {
            Settlement::Complete => ("completed", vec![]),
            Settlement::Abandon(props) => ("abandoned", vec![("properties-to-modify", properties(props))]),
            Settlement::Defer => ("defered", vec![]),
            Settlement::DeadLetter { reason, description } => (
                "suspended",
                vec![
                    ("deadletter-reason", Value::String(reason.clone().unwrap_or_default())),
                    ("deadletter-description", Value::String(description.clone().unwrap_or_default())),
                ],
            ),
        };
        body.push(("disposition-status", Value::String(status.into())));
        body.extend(self.session_field());
        body.push(("lock-tokens", Value::Array(Array(vec![Value::Uuid(token.into_bytes().into())]))));
        self.management.request(&self.entity, "com.microsoft:update-disposition", body).await?;
        // Confirmed: accepted on the link too, so that the link forgets it (the broker has
        // settled it already, and ignores the disposition).
        if let (Some(link), Some(delivery)) = (link, &message.delivery)
            && link.mark_settled(delivery)
        {
            let _ = link.accept(&self.entity, delivery).await;
        }
        Ok(())
    }

    /// Generic AMQP brokers have no `$management`: settle with the link's outcome.
    async fn settle_on_link(&self, message: &ReceivedMessage, settlement: Settlement) -> Result<()> {
        use fe2o3_amqp::types::messaging::{Accepted, Modified, Rejected};
        let delivery = message
            .delivery
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "the message was not received in peek-lock mode"))?;
        let LockOrigin::Link(id) = message.origin else {
            return Err(Error::new(ErrorKind::InvalidOperation, "only messages received on a link can be settled"));
        };
        let link = self.link_of(id).await.ok_or_else(|| self.link_lost(message))?;
        let state: TerminalDeliveryState = match settlement {
            Settlement::Complete => Accepted {}.into(),
            Settlement::Abandon(_) => {
                Modified { delivery_failed: Some(true), undeliverable_here: None, message_annotations: None }.into()
            }
            Settlement::Defer => {
                Modified { delivery_failed: None, undeliverable_here: Some(true), message_annotations: None }.into()
            }
            Settlement::DeadLetter { .. } => Rejected { error: None }.into(),
        };
        link.settle(&self.entity, delivery, LinkOutcome::Terminal(state)).await
    }

    /// Sends `message` through `to` and completes `received`, atomically: both happen in one
    /// broker transaction, or neither does. A lost lock fails the whole transaction with
    /// [`ErrorKind::LockLost`], and nothing is sent.
    pub async fn complete_and_send(&self, received: &ReceivedMessage, to: &Sender, message: Message) -> Result<()> {
        use fe2o3_amqp::transaction::{Transaction, TransactionBase as _, TransactionDischarge as _};
        if self.connection.dialect() == Dialect::GenericAmqp {
            return Err(Error::not_supported("complete_and_send"));
        }
        let (_, link) = self.lock_token(received).await?;
        let (LockOrigin::Link(id), Some(link)) = (received.origin, link) else {
            return Err(Error::new(
                ErrorKind::NotSupported,
                "complete_and_send works on messages received on a link, not by sequence number",
            )
            .at(&self.entity));
        };
        let delivery = received.delivery.as_ref().ok_or_else(|| self.link_lost(received))?;
        let mut controller = self.controller.lock().await;
        if controller.as_ref().is_none_or(|(of, _)| *of != id) {
            *controller = None;
            *controller = Some((id, link.controller(&self.entity).await?));
        }
        let (_, ctl) = controller.as_ref().expect("attached just above");
        // Checked under the controller's lock: one transaction at a time settles a message.
        if !link.is_unsettled(delivery) {
            return Err(Error::lock_lost(&self.entity, "the message was settled already"));
        }
        // Every step is bounded by the link's life: a step whose answer died with the connection
        // would otherwise hold the controller, and every later transaction of this receiver.
        let (entity, timeout) = (self.entity.as_str(), self.connection.options().operation_timeout);
        let declared =
            link.while_alive(entity, "declaring a transaction", timeout, Transaction::declare(ctl, None)).await?;
        let mut txn = declared.map_err(|e| Error::connection(entity, "declaring a transaction failed", e))?;
        let posted = link.while_alive(entity, "sending in a transaction", timeout, to.post_in(&txn, &message)).await;
        if let Err(e) = posted.and_then(|r| r) {
            let _ = link.while_alive(entity, "rolling back", timeout, txn.discharge(true)).await;
            return Err(e);
        }
        if let Err(e) = link.settle(entity, delivery, LinkOutcome::AcceptIn(txn.txn_id().clone())).await {
            let _ = link.while_alive(entity, "rolling back", timeout, txn.discharge(true)).await;
            return Err(e);
        }
        match link.while_alive(entity, "committing", timeout, txn.commit()).await? {
            Ok(()) => {
                link.mark_settled(delivery);
                Ok(())
            }
            Err(fe2o3_amqp::transaction::ControllerSendError::Rejected(r)) => Err(match r.error {
                Some(e) if crate::error::condition_text(&e) == "amqp:transaction:rollback" => {
                    Error::lock_lost(&self.entity, e.description.unwrap_or_default())
                }
                Some(e) => Error::from_amqp(&e, &self.entity),
                None => Error::protocol(&self.entity, "the commit was rejected"),
            }),
            Err(e) => Err(Error::connection(&self.entity, "committing failed", e)),
        }
    }

    /// Extends a message's lock; returns the new expiry. A session's messages are locked by
    /// the session's lock: renew that ([`MessageSession::renew_lock`]).
    pub async fn renew_lock(&self, message: &ReceivedMessage) -> Result<SystemTime> {
        if let Some(session) = &self.session {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("the messages of session {:?} are locked by the session lock: renew that", session.id),
            )
            .at(&self.entity));
        }
        let (token, _) = self.lock_token(message).await?;
        let tokens = Value::Array(Array(vec![Value::Uuid(token.into_bytes().into())]));
        let response =
            self.management.request(&self.entity, "com.microsoft:renew-lock", vec![("lock-tokens", tokens)]).await?;
        match response.field("expirations") {
            Some(Value::Array(a)) => match a.0.first() {
                Some(Value::Timestamp(t)) => Ok(system_time(t.milliseconds())),
                other => {
                    Err(Error::protocol(&self.entity, format!("renew-lock gave an unexpected expiration {other:?}")))
                }
            },
            other => Err(Error::protocol(&self.entity, format!("renew-lock answered without expirations: {other:?}"))),
        }
    }

    /// Receives deferred messages by sequence number (locked in peek-lock mode; settle them as usual).
    pub async fn receive_deferred(&self, sequence_numbers: &[i64]) -> Result<Vec<ReceivedMessage>> {
        let seqs = Value::Array(Array(sequence_numbers.iter().map(|&n| Value::Long(n)).collect()));
        let (mode, origin) = match self.options.mode {
            ReceiveMode::PeekLock => (1u32, LockOrigin::Management),
            ReceiveMode::ReceiveAndDelete => (0, LockOrigin::Deleted),
        };
        let response = self
            .management
            .request(
                &self.entity,
                "com.microsoft:receive-by-sequence-number",
                [("sequence-numbers", seqs), ("receiver-settle-mode", Value::Uint(mode))]
                    .into_iter()
                    .chain(self.session_field())
                    .collect(),
            )
            .await?;
        self.messages_of(&response, origin)
    }

    /// Looks at messages from `from_sequence_number` on without locking them.
    pub async fn peek(&self, from_sequence_number: i64, max: u32) -> Result<Vec<ReceivedMessage>> {
        let response = self
            .management
            .request(
                &self.entity,
                "com.microsoft:peek-message",
                [
                    ("from-sequence-number", Value::Long(from_sequence_number)),
                    ("message-count", Value::Int(max as i32)),
                ]
                .into_iter()
                .chain(self.session_field())
                .collect(),
            )
            .await?;
        if response.status == 204 {
            return Ok(Vec::new());
        }
        self.messages_of(&response, LockOrigin::Peeked)
    }

    fn messages_of(&self, response: &Response, origin: LockOrigin) -> Result<Vec<ReceivedMessage>> {
        let list = match response.field("messages") {
            Some(Value::List(l)) => l.as_slice(),
            Some(Value::Array(a)) => a.0.as_slice(),
            None if response.status == 204 => return Ok(Vec::new()),
            other => {
                return Err(Error::protocol(&self.entity, format!("the response has no messages list: {other:?}")));
            }
        };
        list.iter()
            .map(|item| {
                let Value::Map(m) = item else {
                    return Err(Error::protocol(&self.entity, "a message entry is not a map"));
                };
                let Some(Value::Binary(bytes)) = m.get(&Value::String("message".into())) else {
                    return Err(Error::protocol(&self.entity, "a message entry has no message"));
                };
                let token = match m.get(&Value::String("lock-token".into())) {
                    Some(Value::Uuid(u)) => Some(uuid::Uuid::from_bytes(*u.as_inner())),
                    _ => None,
                };
                ReceivedMessage::decode(bytes, token, &self.entity, origin)
                    .map_err(|e| Error::protocol(&self.entity, "a message could not be decoded").because(e))
            })
            .collect()
    }

    /// Closes the link. Messages still locked stay locked until they expire (or are settled).
    pub async fn close(&self) {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner()).take();
        *self.controller.lock().await = None;
        if let Some(link) = link {
            link.close().await;
        }
    }

    /// The current link, or a new one if there is none, it ended, or its connection was replaced.
    /// A session receiver has one link: when it ends, the session's lock is lost with it.
    async fn current_or_attach(&self) -> Result<Arc<LinkHandle>> {
        if let Some(session) = &self.session {
            let link = self.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return match link {
                Some(link) if link.is_alive() && self.connection.is_open(link.epoch).await => Ok(link),
                link => Err(link.and_then(|l| l.failure()).filter(Error::is_lock_lost).unwrap_or_else(|| {
                    Error::new(
                        ErrorKind::SessionLockLost,
                        format!(
                            "the link that held session {:?} was lost or closed; accept the session again",
                            session.id
                        ),
                    )
                    .at(&self.entity)
                })),
            };
        }
        let epoch = self.connection.epoch().await?;
        if let Some(link) = self.current().filter(|l| l.epoch == epoch) {
            return Ok(link);
        }
        let _attaching = self.attaching.lock().await;
        if let Some(link) = self.current().filter(|l| l.epoch == epoch) {
            return Ok(link); // Another receive attached it meanwhile.
        }
        let link = Arc::new(self.attach().await?);
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        self.attached.fetch_add(1, Ordering::Relaxed);
        Ok(link)
    }

    async fn attach(&self) -> Result<LinkHandle> {
        let context = self.link_context();
        let source = fe2o3_amqp::types::messaging::Source::from(self.entity.clone());
        let attached = self.connection.attach(&self.entity, context.attach_fn(source, None, None)).await;
        match attached {
            Ok(a) => Ok(LinkHandle::spawn(a.link, a.session, a.epoch, context)),
            Err(e) => Err(self.explain_refusal(e).await),
        }
    }

    /// Attaches a session receiver; the broker grants a session (or refuses, or times out).
    async fn attach_session(&self, wanted: &WantedSession, wait: Duration) -> Result<(LinkHandle, Arc<SessionLock>)> {
        let context = self.link_context();
        let source = session::source(&self.entity, wanted);
        // The broker answers when a session comes free, or refuses when `wait` has passed.
        let patience = wait + self.connection.options().operation_timeout;
        let attach = context.attach_fn(source, session::properties(wanted, wait), Some(patience));
        let receiver = match self.connection.attach(&self.entity, attach).await {
            Ok(a) => a,
            Err(e) => return Err(self.explain_refusal(e).await),
        };
        let (id, until) = session::granted(&receiver.link, &self.entity)?;
        tracing::debug!(entity = %self.entity, session = %id, ?until, "session accepted");
        let link = LinkHandle::spawn(receiver.link, receiver.session, receiver.epoch, context);
        Ok((link, SessionLock::new(id, until)))
    }

    fn link_context(&self) -> LinkContext {
        LinkContext {
            entity: self.entity.clone(),
            mode: self.options.mode,
            prefetch: self.options.prefetch,
            dialect: self.connection.dialect(),
            operation_timeout: self.connection.options().operation_timeout,
        }
    }

    /// fe2o3 reports a refused receiver attach (null source, then a detach with the reason)
    /// without the reason. Attaching the entity's `$management` node, a sender-side attach
    /// that does carry the broker's error, tells why (not found, unauthorized).
    async fn explain_refusal(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Protocol || self.connection.dialect() == Dialect::GenericAmqp {
            return e;
        }
        match self.management.probe(&self.entity).await {
            Err(reason) if matches!(reason.kind(), ErrorKind::NotFound | ErrorKind::Unauthorized) => reason,
            _ => e,
        }
    }
}

fn properties(props: &OrderedMap<String, SimpleValue>) -> Value {
    Value::Map(
        props.iter().map(|(k, v)| (Value::String(k.clone()), serde_amqp::to_value(v).unwrap_or(Value::Null))).collect(),
    )
}
