//! Sending: one message, batches (split to fit the link's maximum message size),
//! and scheduled messages.

use std::sync::Arc;
use std::time::SystemTime;

use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::messaging::{Data, Message as AmqpMessage, Outcome};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Sendable, Sender as AmqpSender};
use serde_amqp::Value;
use tokio::sync::Mutex;

use crate::connection::{AttachFn, Connection, Epoch};
use crate::error::{Error, ErrorKind, Result};
use crate::link::{link_state_error, sender_attach_error};
use crate::management::Management;
use crate::message::Message;
use fe2o3_amqp::session::SessionHandle;

/// The Service Bus batch message format.
const BATCH_FORMAT: u32 = 0x8001_3700;
/// Bytes of envelope around the messages of a batch, with room to spare.
const BATCH_OVERHEAD: usize = 64;
/// Per-message overhead inside a batch: a `data` section header.
const DATA_SECTION_OVERHEAD: usize = 8;
/// When the broker advertises no limit.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024;

struct Link {
    sender: AmqpSender,
    epoch: Epoch,
    max_message_size: usize,
    /// The link's own AMQP session; dropped after the link.
    _session: fe2o3_amqp::session::SessionHandle<()>,
}

/// Sends to one queue or topic. Sends through one sender are serialized; make more
/// senders for parallel sends.
pub struct Sender {
    connection: Arc<Connection>,
    management: Arc<Management>,
    entity: String,
    link: Mutex<Option<Link>>,
    attached: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("entity", &self.entity).finish()
    }
}

impl Sender {
    pub(crate) fn new(connection: Arc<Connection>, management: Arc<Management>, entity: &str) -> Self {
        Self {
            entity: connection.address(entity),
            connection,
            management,
            link: Mutex::new(None),
            attached: Default::default(),
        }
    }

    /// The entity this sender sends to.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// How many times the send link has been attached (1 after the first send; more after recoveries).
    pub fn links_attached(&self) -> u64 {
        self.attached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one message.
    pub async fn send(&self, message: Message) -> Result<()> {
        let amqp = message.to_amqp();
        let size = message.encode().len();
        self.with_retry(|link| {
            let amqp = amqp.clone();
            Box::pin(async move {
                if size > link.max_message_size {
                    return Err(too_large(size, link.max_message_size));
                }
                let outcome = link.sender.send(Sendable::builder().message(amqp).build()).await;
                outcome_result(outcome)
            })
        })
        .await
    }

    /// Sends messages as batches: each batch is enqueued atomically, and messages are split
    /// into as many batches as the link's maximum message size requires. A single message
    /// larger than the maximum fails with [`ErrorKind::MessageTooLarge`](crate::error::ErrorKind) before anything is sent.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let max = self.max_message_size().await?;
        let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode).collect();
        for e in &encoded {
            if e.len() + DATA_SECTION_OVERHEAD + BATCH_OVERHEAD > max {
                return Err(too_large(e.len(), max));
            }
        }
        for batch in split_batches(&encoded, max) {
            let first = &messages[batch.start];
            // The envelope carries the first message's message-id and session-id, as the SDKs do.
            let mut envelope = AmqpMessage::builder()
                .data_batch(encoded[batch.clone()].iter().map(|e| Data(Binary::from(e.clone()))).collect::<Vec<_>>())
                .build();
            envelope.properties = Some(fe2o3_amqp::types::messaging::Properties {
                message_id: first.message_id.clone().map(fe2o3_amqp::types::messaging::MessageId::String),
                group_id: first.session_id.clone(),
                ..Default::default()
            });
            self.with_retry(|link| {
                let envelope = envelope.clone();
                Box::pin(async move {
                    let sendable = Sendable::builder().message(envelope).message_format(BATCH_FORMAT).build();
                    outcome_result(link.sender.send(sendable).await)
                })
            })
            .await?;
        }
        Ok(())
    }

    /// Schedules a message to appear at `at`; returns its sequence number (for cancelling).
    pub async fn schedule(&self, message: Message, at: SystemTime) -> Result<i64> {
        let mut message = message;
        message.scheduled_enqueue_time = Some(at);
        let message_id = message.message_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        message.message_id = Some(message_id.clone());
        let item = Value::Map(
            [
                (Value::String("message-id".into()), Value::String(message_id)),
                (Value::String("message".into()), Value::Binary(Binary::from(message.encode()))),
            ]
            .into_iter()
            .collect(),
        );
        let response = self
            .management
            .request(&self.entity, "com.microsoft:schedule-message", vec![("messages", Value::List(vec![item]))])
            .await?;
        match response.field("sequence-numbers") {
            Some(Value::Array(a)) => match a.0.first() {
                Some(Value::Long(n)) => Ok(*n),
                other => Err(Error::protocol(&self.entity, format!("unexpected sequence number {other:?}"))),
            },
            other => Err(Error::protocol(
                &self.entity,
                format!("schedule-message answered without sequence-numbers: {other:?}"),
            )),
        }
    }

    /// Cancels a scheduled message.
    pub async fn cancel_scheduled(&self, sequence_number: i64) -> Result<()> {
        let seqs = Value::Array(fe2o3_amqp::types::primitives::Array(vec![Value::Long(sequence_number)]));
        self.management
            .request(&self.entity, "com.microsoft:cancel-scheduled-message", vec![("sequence-numbers", seqs)])
            .await?;
        Ok(())
    }

    /// Sends `message` as part of `txn` (it is enqueued only if the transaction commits).
    pub(crate) async fn post_in(
        &self,
        txn: &fe2o3_amqp::transaction::Transaction<'_>,
        message: &Message,
    ) -> Result<()> {
        use fe2o3_amqp::transaction::TransactionPosting as _;
        let mut slot = self.link.lock().await;
        let link = self.ensure_link(&mut slot).await.map_err(|e| e.in_entity(&self.entity))?;
        let sendable = Sendable::builder().message(message.to_amqp()).build();
        match txn.post(&mut link.sender, sendable).await {
            Ok(Outcome::Accepted(_)) => Ok(()),
            Ok(Outcome::Rejected(r)) => Err(match r.error {
                Some(e) => Error::from_amqp(&e, &self.entity),
                None => Error::protocol(&self.entity, "the transactional send was rejected"),
            }),
            Ok(other) => Err(Error::protocol(&self.entity, format!("the transactional send ended {other:?}"))),
            Err(e) => {
                *slot = None;
                Err(Error::connection(&self.entity, "the transactional send failed", e))
            }
        }
    }

    /// The largest message the broker accepts on this link (attaching it if needed).
    pub async fn max_message_size(&self) -> Result<usize> {
        self.with_retry(|link| {
            let max = link.max_message_size;
            Box::pin(async move { Ok(max) })
        })
        .await
    }

    /// Closes the link. A later send attaches again.
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            let _ = link.sender.close().await;
        }
    }

    async fn with_retry<T>(
        &self,
        op: impl for<'a> Fn(&'a mut Link) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>,
    ) -> Result<T> {
        let op = &op;
        self.connection.options().retry.run("send", &self.entity, || self.attempt(op)).await
    }

    /// One try of `op` on the link (attached if needed). A transient failure drops the link,
    /// and the connection too if it is gone, so the next try starts afresh.
    async fn attempt<T>(
        &self,
        op: &impl for<'a> Fn(&'a mut Link) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>,
    ) -> Result<T> {
        let mut slot = self.link.lock().await;
        let link = self.ensure_link(&mut slot).await.map_err(|e| e.in_entity(&self.entity))?;
        let epoch = link.epoch;
        let result = tokio::time::timeout(self.connection.options().operation_timeout, op(link))
            .await
            .unwrap_or_else(|_| Err(Error::timeout(&self.entity, "the send got no answer")));
        if let Err(e) = &result
            && e.is_transient()
        {
            *slot = None;
            self.connection.forget_if_closed(epoch).await;
        }
        result.map_err(|e| e.in_entity(&self.entity))
    }

    async fn ensure_link<'a>(&self, slot: &'a mut Option<Link>) -> Result<&'a mut Link> {
        let current = self.connection.epoch().await?;
        if slot.as_ref().is_some_and(|l| l.epoch != current) {
            *slot = None;
        }
        if slot.is_none() {
            let entity = self.entity.clone();
            let attach: AttachFn<AmqpSender> = Box::new(move |session: &mut SessionHandle<()>| {
                Box::pin(async move {
                    let name = format!("sender-{entity}-{}", uuid::Uuid::new_v4().simple());
                    AmqpSender::attach(session, name, entity.clone()).await.map_err(|e| sender_attach_error(e, &entity))
                })
            });
            let attached = self.connection.attach(&self.entity, attach).await?;
            let max_message_size = match attached.link.max_message_size() {
                Some(0) | None => DEFAULT_MAX_MESSAGE_SIZE,
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            };
            *slot = Some(Link {
                sender: attached.link,
                epoch: attached.epoch,
                max_message_size,
                _session: attached.session,
            });
            self.attached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(slot.as_mut().expect("set just above"))
    }
}

fn too_large(size: usize, max: usize) -> Error {
    Error::new(ErrorKind::MessageTooLarge, format!("the message is {size} bytes; the link accepts at most {max}"))
}

fn outcome_result(outcome: std::result::Result<Outcome, SendError>) -> Result<()> {
    // The entity is filled in by the caller's error context; here we only classify.
    let failed = |kind, what: String| Err(Error::new(kind, what));
    match outcome {
        Ok(Outcome::Accepted(_)) => Ok(()),
        Ok(Outcome::Rejected(r)) => match r.error {
            Some(e) => Err(Error::from_amqp(&e, "")),
            None => failed(ErrorKind::Protocol, "the broker rejected the message without saying why".into()),
        },
        Ok(Outcome::Released(_)) => failed(ErrorKind::ServerBusy, "the broker released the message".into()),
        Ok(Outcome::Modified(m)) => failed(ErrorKind::ServerBusy, format!("the broker modified the delivery: {m:?}")),
        Ok(other) => failed(ErrorKind::Protocol, format!("unexpected outcome for a send: {other:?}")),
        Err(SendError::MessageSizeExceeded(e)) => Err(too_large(e.size as usize, e.max_size as usize)),
        Err(SendError::Detached(d)) => Err(link_state_error(d.into(), "")),
        Err(SendError::LinkStateError(l)) => Err(link_state_error(l, "")),
        Err(other) => Err(Error::new(ErrorKind::Protocol, "sending failed").because(other)),
    }
}

/// Splits encoded messages into consecutive batches whose envelope fits in `max` bytes.
fn split_batches(encoded: &[Vec<u8>], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut size = BATCH_OVERHEAD;
    for (i, e) in encoded.iter().enumerate() {
        let add = e.len() + DATA_SECTION_OVERHEAD;
        if i > start && size + add > max {
            batches.push(start..i);
            start = i;
            size = BATCH_OVERHEAD;
        }
        size += add;
    }
    batches.push(start..encoded.len());
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_to_fit_and_keep_order() {
        let msgs: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; 100]).collect();
        let batches = split_batches(&msgs, 64 + 3 * 108);
        assert_eq!(batches, vec![0..3, 3..6, 6..9, 9..10]);
        assert_eq!(split_batches(&msgs, 1 << 20), vec![0..10]);
        assert_eq!(split_batches(&msgs[..1], 10), vec![0..1]);
    }
}
