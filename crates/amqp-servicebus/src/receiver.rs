//! Receiving and settling.
//!
//! Messages arrive on a receive link (peek-lock or receive-and-delete), with
//! credit granted per [`Receiver::receive`] call or kept topped up by a prefetch.
//!
//! Settlement goes through `$management` `update-disposition`, because only that
//! path gives a confirmed answer for each lock token: the broker says whether the
//! lock was still valid, and a lost lock comes back as [`Error::LockLost`]. The
//! delivery is then also settled on the link, so the link keeps no record of it.
//! A message whose receive link was lost (the connection dropped, the link was
//! detached) is reported as lock-lost without asking the broker: the broker will
//! redeliver it when its lock expires, so nothing is lost silently.
//!
//! Size: past 600 lines; issue #13 redesigns it as a link task plus a handle.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fe2o3_amqp::Receiver as AmqpReceiver;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::{CreditMode, ReceiverDisposer, TerminalDeliveryState};
use fe2o3_amqp::link::{MessageDecodeError, RecvError};
use fe2o3_amqp::types::definitions::{ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue};
use futures_util::{FutureExt as _, Stream};
use serde_amqp::Value;
use tokio::sync::Mutex;

use crate::client::{Dialect, ServiceBusClient, receiver_attach_error, sender_attach_error};
use crate::error::{Error, Result};
use crate::message::{Message, ReceivedMessage, system_time};

/// How long `receive` holds the link while it waits for messages, at a time.
const RECEIVE_SLICE: Duration = Duration::from_millis(50);

/// The `DeadLetterReason` of a message the receiver could not decode.
pub const UNDECODABLE_REASON: &str = "UndecodableMessage";

/// How messages are taken from the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveMode {
    /// Locked until settled (or the lock expires).
    #[default]
    PeekLock,
    /// Removed when delivered; no settlement.
    ReceiveAndDelete,
}

/// Receiver settings.
#[derive(Debug, Clone, Default)]
pub struct ReceiverOptions {
    /// Peek-lock or receive-and-delete.
    pub mode: ReceiveMode,
    /// Messages the link keeps requested ahead of `receive` calls (their locks run while
    /// they wait). 0: credit is granted per `receive` call only.
    pub prefetch: u32,
}

struct Link {
    receiver: AmqpReceiver,
    generation: u64,
    connection_generation: u64,
    /// The link's own AMQP session; dropped after the link.
    session: fe2o3_amqp::session::SessionHandle<()>,
}

/// A transaction controller on a receive link's own session (for `complete_and_send`), and
/// the generation of that link. On the same session, the transactional disposition is on
/// the wire before the discharge that commits it: the session writes its frames in order,
/// and separate sessions would not.
type TxnController = Option<(u64, fe2o3_amqp::transaction::Controller)>;

/// Receives from one queue, subscription or dead-letter queue.
pub struct Receiver {
    client: ServiceBusClient,
    entity: String,
    options: ReceiverOptions,
    link: Mutex<Option<Link>>,
    /// The generation of the current receive link; messages from older links have lost their locks.
    current_generation: AtomicU64,
    /// The connection generation the current receive link lives on.
    link_connection: AtomicU64,
    /// How many times the receive link was attached.
    attached: AtomicU64,
    /// Link delivery records, by lock token, to settle on the link after `$management` confirms.
    deliveries: StdMutex<HashMap<uuid::Uuid, (u64, DeliveryInfo)>>,
    /// Settles deliveries of the current link (its generation first) without taking `link`,
    /// which a `receive` holds while it waits for messages.
    disposer: StdMutex<Option<(u64, ReceiverDisposer)>>,
    /// Held for a whole transaction of `complete_and_send`.
    controller: Mutex<TxnController>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("entity", &self.entity).field("options", &self.options).finish()
    }
}

/// How a message is settled.
enum Disposition {
    Complete,
    Abandon(OrderedMap<String, SimpleValue>),
    DeadLetter { reason: Option<String>, description: Option<String> },
    Defer,
}

impl Receiver {
    pub(crate) fn new(client: ServiceBusClient, entity: &str, options: ReceiverOptions) -> Self {
        Self {
            entity: crate::sender::entity_address(&client, entity),
            client,
            options,
            link: Mutex::new(None),
            current_generation: AtomicU64::new(0),
            link_connection: AtomicU64::new(0),
            attached: AtomicU64::new(0),
            deliveries: StdMutex::new(HashMap::new()),
            disposer: StdMutex::new(None),
            controller: Mutex::new(None),
        }
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
        self.client.inner.options.retry.run("receive", &self.entity, || self.receive_once(max, deadline, linger)).await
    }

    async fn receive_once(
        &self,
        max: usize,
        deadline: tokio::time::Instant,
        linger: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut linger_until = None;
        {
            let mut slot = self.link.lock().await;
            let link = self.ensure_link(&mut slot).await?;
            if self.options.prefetch == 0
                && let Err(e) = link.receiver.set_credit(max as u32).await
            {
                self.discard_link(&mut slot);
                return Err(Error::connection(&self.entity, format!("granting credit failed: {e}")));
            }
        }
        let mut got = Vec::new();
        // Wait in short slices, letting go of the link in between: settlements and
        // transactions need it too, and must not wait for a whole receive timeout.
        loop {
            let mut slot = self.link.lock().await;
            let Some(link) = slot.as_mut() else {
                return if got.is_empty() {
                    Err(Error::connection(&self.entity, "the receive link was lost"))
                } else {
                    Ok(got)
                };
            };
            while got.len() < max {
                let next = if got.is_empty() {
                    let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).min(RECEIVE_SLICE);
                    tokio::time::timeout(wait, link.receiver.recv::<Body<Value>>()).await.ok()
                } else if !linger.is_zero() {
                    let until = *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    tokio::time::timeout_at(until, link.receiver.recv::<Body<Value>>()).await.ok()
                } else {
                    // A batch takes what has already arrived and never waits for more: a wait
                    // here would add to the latency of every message at low load (even a zero
                    // timeout would, as timers fire on the next millisecond tick). One yield
                    // lets the connection's tasks pass on deliveries they hold.
                    tokio::task::yield_now().await;
                    link.receiver.recv::<Body<Value>>().now_or_never()
                };
                let delivery = match next {
                    None => break,
                    Some(Ok(d)) => d,
                    Some(Err(RecvError::MessageDecode(e))) => {
                        self.dead_letter_undecodable(&link.receiver, e).await;
                        continue;
                    }
                    Some(Err(e)) => {
                        let generation = link.connection_generation;
                        self.discard_link(&mut slot);
                        drop(slot);
                        self.client.invalidate_if_broken(generation).await;
                        if got.is_empty() {
                            return Err(Error::connection(&self.entity, format!("the receive link stopped: {e}")));
                        }
                        return Ok(got);
                    }
                };
                let tag = delivery.delivery_tag().to_vec();
                let info = DeliveryInfo::from(&delivery);
                // In receive-and-delete mode the tag is not a lock token.
                let tag = (self.options.mode == ReceiveMode::PeekLock).then_some(tag);
                let mut message = ReceivedMessage::from_amqp(
                    delivery.into_message(),
                    tag.as_deref(),
                    None,
                    &self.entity,
                    link.generation,
                );
                if self.options.mode == ReceiveMode::PeekLock {
                    if self.client.inner.options.dialect == Dialect::GenericAmqp {
                        // Generic brokers' tags are not lock tokens: key the record by an id of our own.
                        message.lock_token = None;
                        message.delivery_key = Some(uuid::Uuid::new_v4());
                    }
                    if let Some(key) = message.delivery_key {
                        self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (link.generation, info));
                    }
                }
                got.push(message);
            }
            drop(slot);
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
        }
    }

    /// A delivery that cannot be decoded (malformed, or nested too deeply to decode
    /// safely) can never be handed to anyone: it goes to the dead-letter queue on its own,
    /// with the reason, and the link goes on. In receive-and-delete mode it is already
    /// gone from the broker; the log says so.
    async fn dead_letter_undecodable(&self, receiver: &AmqpReceiver, e: MessageDecodeError) {
        use fe2o3_amqp::types::definitions::{Error as AmqpError, ErrorCondition};
        use fe2o3_amqp::types::primitives::Symbol;
        let description = format!("the message cannot be decoded: {}", e.source);
        if self.options.mode == ReceiveMode::ReceiveAndDelete {
            tracing::error!(entity = %self.entity, "dropping a message received in receive-and-delete mode: {description}");
            return;
        }
        tracing::warn!(entity = %self.entity, "dead-lettering a message: {description}");
        let mut info = OrderedMap::new();
        info.insert(Symbol::from("DeadLetterReason"), Value::String(UNDECODABLE_REASON.into()));
        info.insert(Symbol::from("DeadLetterErrorDescription"), Value::String(description.clone()));
        let error = AmqpError::new(
            ErrorCondition::Custom(Symbol::from("com.microsoft:dead-letter")),
            Some(description),
            Some(info),
        );
        if let Err(e) = receiver.reject(e.info, error).await {
            // The lock expires and the broker redelivers it; it ends here again, or in the
            // dead-letter queue once its delivery count runs out.
            tracing::warn!(entity = %self.entity, "dead-lettering an undecodable message failed: {e}");
        }
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
        self.settle(message, Disposition::Complete).await
    }

    /// Abandons a message: it is unlocked and its delivery count rises; `properties` are merged
    /// into its application properties.
    pub async fn abandon(&self, message: &ReceivedMessage, properties: OrderedMap<String, SimpleValue>) -> Result<()> {
        self.settle(message, Disposition::Abandon(properties)).await
    }

    /// Moves a message to the dead-letter queue with a reason and description.
    pub async fn dead_letter(&self, message: &ReceivedMessage, reason: &str, description: &str) -> Result<()> {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        self.settle(message, Disposition::DeadLetter { reason: text(reason), description: text(description) }).await
    }

    /// Defers a message: it stays in the entity, receivable only by sequence number.
    pub async fn defer(&self, message: &ReceivedMessage) -> Result<()> {
        self.settle(message, Disposition::Defer).await
    }

    /// How many times the receive link has been attached (1 after the first receive; more after recoveries).
    pub fn links_attached(&self) -> u64 {
        self.attached.load(Ordering::Relaxed)
    }

    async fn lock_token(&self, message: &ReceivedMessage) -> Result<uuid::Uuid> {
        if self.options.mode == ReceiveMode::ReceiveAndDelete && message.generation != 0 {
            return Err(Error::protocol(&self.entity, "receive-and-delete messages are already settled"));
        }
        let token = message.lock_token.ok_or_else(|| Error::protocol(&self.entity, "the message has no lock token"))?;
        if message.generation == u64::MAX {
            return Err(Error::protocol(&self.entity, "a peeked message is not locked and cannot be settled"));
        }
        // Locks die with the link that delivered them (0: received through $management):
        // the link was replaced, or its connection is gone.
        let replaced = message.generation != self.current_generation.load(Ordering::Acquire);
        let link_lost = message.generation != 0
            && (replaced || !self.client.connection_alive(self.link_connection.load(Ordering::Acquire)).await);
        if link_lost {
            self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
            return Err(Error::LockLost {
                entity: self.entity.clone(),
                description: format!(
                    "message {} came on a receive link that was lost; the broker will redeliver it",
                    message.sequence_number
                ),
            });
        }
        Ok(token)
    }

    async fn settle(&self, message: &ReceivedMessage, disposition: Disposition) -> Result<()> {
        if self.client.inner.options.dialect == Dialect::GenericAmqp {
            let key = message
                .delivery_key
                .ok_or_else(|| Error::protocol(&self.entity, "the message was not received in peek-lock mode"))?;
            return self.settle_on_link(key, disposition).await;
        }
        let token = self.lock_token(message).await?;
        let (status, mut body) = match &disposition {
            Disposition::Complete => ("completed", vec![]),
            Disposition::Abandon(props) => ("abandoned", vec![("properties-to-modify", properties(props))]),
            Disposition::Defer => ("defered", vec![]),
            Disposition::DeadLetter { reason, description } => (
                "suspended",
                vec![
                    ("deadletter-reason", Value::String(reason.clone().unwrap_or_default())),
                    ("deadletter-description", Value::String(description.clone().unwrap_or_default())),
                ],
            ),
        };
        body.push(("disposition-status", Value::String(status.into())));
        body.push(("lock-tokens", Value::Array(Array(vec![Value::Uuid(token.into_bytes().into())]))));
        self.client.management(&self.entity, "com.microsoft:update-disposition", body).await?;
        // Confirmed: also settle it on the link, so the link keeps no record of it.
        let record = self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
        if let Some((generation, info)) = record
            && let Some(disposer) = self.disposer_for(generation)
        {
            let _ = disposer.accept(info).await;
        }
        Ok(())
    }

    /// The disposer of the link of `generation`, if that link is still the current one.
    fn disposer_for(&self, generation: u64) -> Option<ReceiverDisposer> {
        let slot = self.disposer.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|(g, _)| *g == generation).map(|(_, d)| d.clone())
    }

    /// Generic AMQP brokers have no `$management`: settle with the link's outcome.
    async fn settle_on_link(&self, token: uuid::Uuid, disposition: Disposition) -> Result<()> {
        use fe2o3_amqp::types::messaging::{Modified, Rejected};
        let (generation, info) =
            self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).remove(&token).ok_or_else(|| {
                Error::LockLost { entity: self.entity.clone(), description: "already settled".into() }
            })?;
        let link_lost = || Error::LockLost {
            entity: self.entity.clone(),
            description: "the receive link that delivered the message was lost".into(),
        };
        let state: TerminalDeliveryState = match disposition {
            Disposition::Complete => {
                // The common case settles without waiting for a `receive` to let go of the link
                // (fe2o3's disposer can accept, but not modify or reject).
                let disposer = self.disposer_for(generation).ok_or_else(link_lost)?;
                return disposer
                    .accept(info)
                    .await
                    .map_err(|e| Error::connection(&self.entity, format!("settling on the link failed: {e}")));
            }
            Disposition::Abandon(_) => {
                Modified { delivery_failed: Some(true), undeliverable_here: None, message_annotations: None }.into()
            }
            Disposition::Defer => {
                Modified { delivery_failed: None, undeliverable_here: Some(true), message_annotations: None }.into()
            }
            Disposition::DeadLetter { .. } => Rejected { error: None }.into(),
        };
        let slot = self.link.lock().await;
        let link = slot.as_ref().filter(|l| l.generation == generation).ok_or_else(link_lost)?;
        link.receiver
            .dispose(info, state)
            .await
            .map_err(|e| Error::connection(&self.entity, format!("settling on the link failed: {e}")))
    }

    /// Sends `message` through `to` and completes `received`, atomically: both happen in one
    /// broker transaction, or neither does. A lost lock fails the whole transaction with
    /// [`Error::LockLost`], and nothing is sent.
    pub async fn complete_and_send(
        &self,
        received: &ReceivedMessage,
        to: &crate::Sender,
        message: Message,
    ) -> Result<()> {
        use fe2o3_amqp::transaction::{Transaction, TransactionDischarge as _, TransactionRetirement as _};
        if self.client.inner.options.dialect == Dialect::GenericAmqp {
            return Err(Error::NotSupported { operation: "complete_and_send" });
        }
        let token = self.lock_token(received).await?;
        if received.generation == 0 {
            return Err(Error::NotSupported {
                operation: "complete_and_send of a message received by sequence number",
            });
        }
        let (generation, info) =
            self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).get(&token).cloned().ok_or_else(|| {
                Error::LockLost { entity: self.entity.clone(), description: "the message was already settled".into() }
            })?;
        let controller = self.controller(generation).await?;
        let (_, ctl) = controller.as_ref().expect("controller() attaches one");
        let mut txn = Transaction::declare(ctl, None)
            .await
            .map_err(|e| Error::connection(&self.entity, format!("declaring a transaction failed: {e}")))?;
        if let Err(e) = to.post_in(&txn, &message).await {
            let _ = txn.discharge(true).await;
            return Err(e);
        }
        {
            let mut slot = self.link.lock().await;
            let Some(link) = slot.as_mut().filter(|l| l.generation == generation) else {
                let _ = txn.discharge(true).await;
                return Err(Error::LockLost {
                    entity: self.entity.clone(),
                    description: "the receive link that delivered the message was lost".into(),
                });
            };
            if let Err(e) = txn.accept(&mut link.receiver, info).await {
                drop(slot);
                let _ = txn.discharge(true).await;
                return Err(Error::connection(&self.entity, format!("completing in the transaction failed: {e}")));
            }
        }
        match txn.commit().await {
            Ok(()) => {
                self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
                Ok(())
            }
            Err(fe2o3_amqp::transaction::ControllerSendError::Rejected(r)) => Err(match r.error {
                Some(e) if crate::error::condition_text(&e) == "amqp:transaction:rollback" => {
                    Error::LockLost { entity: self.entity.clone(), description: e.description.unwrap_or_default() }
                }
                Some(e) => Error::from_amqp(&e, &self.entity),
                None => Error::protocol(&self.entity, "the commit was rejected"),
            }),
            Err(e) => Err(Error::connection(&self.entity, format!("committing failed: {e}"))),
        }
    }

    /// Extends a message's lock; returns the new expiry.
    pub async fn renew_lock(&self, message: &ReceivedMessage) -> Result<SystemTime> {
        let token = self.lock_token(message).await?;
        let tokens = Value::Array(Array(vec![Value::Uuid(token.into_bytes().into())]));
        let response =
            self.client.management(&self.entity, "com.microsoft:renew-lock", vec![("lock-tokens", tokens)]).await?;
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
        let mode = match self.options.mode {
            ReceiveMode::PeekLock => 1u32,
            ReceiveMode::ReceiveAndDelete => 0,
        };
        let response = self
            .client
            .management(
                &self.entity,
                "com.microsoft:receive-by-sequence-number",
                vec![("sequence-numbers", seqs), ("receiver-settle-mode", Value::Uint(mode))],
            )
            .await?;
        self.messages_of(&response, 0)
    }

    /// Looks at messages from `from_sequence_number` on without locking them.
    pub async fn peek(&self, from_sequence_number: i64, max: u32) -> Result<Vec<ReceivedMessage>> {
        let response = self
            .client
            .management(
                &self.entity,
                "com.microsoft:peek-message",
                vec![
                    ("from-sequence-number", Value::Long(from_sequence_number)),
                    ("message-count", Value::Int(max as i32)),
                ],
            )
            .await?;
        if response.status == 204 {
            return Ok(Vec::new());
        }
        // Peeked messages are not locked: mark them as unsettleable.
        self.messages_of(&response, u64::MAX)
    }

    fn messages_of(&self, response: &crate::management::Response, generation: u64) -> Result<Vec<ReceivedMessage>> {
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
                ReceivedMessage::decode(bytes, token, &self.entity, generation)
                    .map_err(|e| Error::protocol(&self.entity, format!("a message could not be decoded: {e}")))
            })
            .collect()
    }

    /// Closes the link. Messages still locked stay locked until they expire (or are settled).
    pub async fn close(&self) {
        if let Some(link) = self.discard_link(&mut *self.link.lock().await) {
            let _ = link.receiver.close().await;
        }
    }

    /// Takes the receive link out of use. Its deliveries can no longer be settled, neither
    /// through the link nor through its disposer.
    fn discard_link(&self, slot: &mut Option<Link>) -> Option<Link> {
        *self.disposer.lock().unwrap_or_else(|p| p.into_inner()) = None;
        slot.take()
    }

    async fn ensure_link<'a>(&self, slot: &'a mut Option<Link>) -> Result<&'a mut Link> {
        let current = self.client.generation().await?;
        if slot.as_ref().is_some_and(|l| l.connection_generation != current) {
            self.discard_link(slot);
        }
        if slot.is_none() {
            let mut own = self.client.link_session(&self.entity).await?;
            let connection_generation = own.generation;
            let generation = self.client.next_link_generation();
            let (snd, rcv) = match self.options.mode {
                ReceiveMode::PeekLock => (SenderSettleMode::Unsettled, ReceiverSettleMode::First),
                ReceiveMode::ReceiveAndDelete => (SenderSettleMode::Settled, ReceiverSettleMode::First),
            };
            let credit = match self.options.prefetch {
                0 => CreditMode::Manual,
                n => CreditMode::Auto(n),
            };
            let receiver = AmqpReceiver::builder()
                .name(format!("receiver-{}-{}", self.entity, uuid::Uuid::new_v4().simple()))
                .source(self.entity.clone())
                .target(format!("receiver-{}", uuid::Uuid::new_v4().simple()))
                .sender_settle_mode(snd)
                .receiver_settle_mode(rcv)
                .credit_mode(credit)
                .auto_accept(false)
                .attach(&mut own.session)
                .await;
            let receiver = match receiver {
                Ok(r) => r,
                Err(e) => return Err(self.explain_refusal(receiver_attach_error(e, &self.entity)).await),
            };
            self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.current_generation.store(generation, Ordering::Release);
            self.link_connection.store(connection_generation, Ordering::Release);
            self.attached.fetch_add(1, Ordering::Relaxed);
            *self.disposer.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, receiver.disposer()));
            *slot = Some(Link { receiver, generation, connection_generation, session: own.session });
        }
        Ok(slot.as_mut().expect("set just above"))
    }
}

impl Receiver {
    /// The transaction controller on the session of the receive link of `generation`,
    /// attached on first use; held for the whole transaction.
    async fn controller(&self, generation: u64) -> Result<tokio::sync::MutexGuard<'_, TxnController>> {
        let mut controller = self.controller.lock().await;
        if controller.as_ref().is_none_or(|(g, _)| *g != generation) {
            *controller = None;
            let mut slot = self.link.lock().await;
            let Some(link) = slot.as_mut().filter(|l| l.generation == generation) else {
                return Err(Error::LockLost {
                    entity: self.entity.clone(),
                    description: "the receive link that delivered the message was lost".into(),
                });
            };
            let name = format!("controller-{}", uuid::Uuid::new_v4().simple());
            let attached = fe2o3_amqp::transaction::Controller::attach(&mut link.session, name)
                .await
                .map_err(|e| sender_attach_error(e, "$coordinator"))?;
            *controller = Some((generation, attached));
        }
        Ok(controller)
    }

    /// fe2o3 reports a refused receiver attach (null source, then a detach with the reason)
    /// without the reason. Attaching the entity's `$management` node, a sender-side attach
    /// that does carry the broker's error, tells why (not found, unauthorized).
    async fn explain_refusal(&self, e: Error) -> Error {
        if !matches!(e, Error::Protocol { .. }) || self.client.inner.options.dialect == Dialect::GenericAmqp {
            return e;
        }
        match self.client.probe_management(&self.entity).await {
            Err(reason @ (Error::EntityNotFound { .. } | Error::Unauthorized { .. })) => reason,
            _ => e,
        }
    }
}

impl Drop for Receiver {
    /// Closes the link in the background, so credit it still holds is not answered with
    /// messages nobody will read (they would stay locked until their locks expire).
    fn drop(&mut self) {
        let link = self.link.get_mut().take();
        if let (Some(link), Ok(runtime)) = (link, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = link.receiver.close().await;
            });
        }
    }
}

fn properties(props: &OrderedMap<String, SimpleValue>) -> Value {
    Value::Map(
        props.iter().map(|(k, v)| (Value::String(k.clone()), serde_amqp::to_value(v).unwrap_or(Value::Null))).collect(),
    )
}
