//! What the imports of both revisions do, on [`Messaging`], in terms of delivery ids and
//! Service Bus messages. A failure is a [`GuestError`] (a kind and a detail); each revision's
//! imports (`feb2024`, `dec2024`) hand it to the guest in its own shape. Also
//! `wasi:config/store`, which both revisions import alike.

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{Error as SbError, ErrorKind as SbErrorKind, Message as SbMessage, ReceiverOptions};
use wit_interface::{ErrorKind, GuestError, config_store};

use super::call::Messaging;
use crate::convert::MetadataError;
use crate::delivery::{Delivery, NotSettleable, Settlement};

/// Longest a dead-letter reason or description may be, in bytes.
const DEAD_LETTER_TEXT_LIMIT: usize = 4096;

/// What an operation gives back: a value, or why not.
pub(super) type Done<T> = Result<T, GuestError>;

impl Messaging<'_> {
    /// An error of `kind`, recorded for `error.trace` (February 2024 draft) and the debug log.
    pub(super) fn refuse(&mut self, kind: ErrorKind, message: impl Into<String>) -> GuestError {
        let message = message.into();
        self.call.last_error = format!("{kind}: {message}");
        tracing::debug!(channel = %self.call.channel, %kind, "guest call failed: {message}");
        GuestError::new(kind, message)
    }

    pub(super) fn refuse_sb(&mut self, e: &SbError) -> GuestError {
        self.refuse(kind_of(e), e.to_string())
    }

    /// The delivery `id` names, if the call has it.
    fn lookup(&self, id: Option<&str>) -> Option<Arc<Delivery>> {
        self.call.deliveries.get(id?).cloned()
    }

    /// The delivery a message names by its delivery id (`None`: a message the guest made).
    fn find(&mut self, id: Option<&str>) -> Done<Arc<Delivery>> {
        let Some(id) = id else {
            return Err(self.refuse(
                ErrorKind::UnknownDelivery,
                "the message was not received by this call: only messages given to this call can be settled",
            ));
        };
        match self.lookup(Some(id)) {
            Some(d) => Ok(d),
            None => {
                Err(self.refuse(ErrorKind::UnknownDelivery, format!("delivery-id {id:?} was not given to this call")))
            }
        }
    }

    /// The delivery `id` names, if it can still be settled.
    fn settleable(&mut self, id: Option<&str>) -> Done<Arc<Delivery>> {
        let d = self.find(id)?;
        if let Err(e) = d.check_settleable() {
            let kind = match e {
                NotSettleable::ReceiveAndDelete { .. } => ErrorKind::NotAllowed,
                NotSettleable::Settled { .. } | NotSettleable::Settling { .. } => ErrorKind::AlreadySettled,
                NotSettleable::LockLost { .. } => ErrorKind::LockLost,
            };
            return Err(self.refuse(kind, e.to_string()));
        }
        Ok(d)
    }

    /// Settles the delivery `id` names.
    pub(super) async fn settle(&mut self, id: Option<&str>, settlement: Settlement) -> Done<()> {
        if let Settlement::Redirect(to) = &settlement
            && !self.ctx.may_send_to(to)
        {
            return Err(self.refuse(ErrorKind::NotAllowed, format!("channel {to:?} is not in this guest's allow-list")));
        }
        let d = self.settleable(id)?;
        match self.ctx.settle(&d, settlement).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.refuse_sb(&e)),
        }
    }

    /// Completes the delivery `id` names; nothing to do for a receive-and-delete message
    /// (removed when it was delivered).
    pub(super) async fn complete_delivery(&mut self, id: Option<&str>) -> Done<()> {
        if self.lookup(id).is_some_and(|d| !d.is_locked()) {
            return Ok(());
        }
        self.settle(id, Settlement::Complete).await
    }

    /// Dead-letters the delivery `id` names, with a reason it checks first.
    pub(super) async fn dead_letter_delivery(
        &mut self,
        id: Option<&str>,
        reason: String,
        description: Option<String>,
    ) -> Done<()> {
        if reason.trim().is_empty() {
            return Err(self.refuse(ErrorKind::InvalidArgument, "the dead-letter reason must not be empty"));
        }
        if reason.len() > DEAD_LETTER_TEXT_LIMIT
            || description.as_ref().is_some_and(|d| d.len() > DEAD_LETTER_TEXT_LIMIT)
        {
            return Err(self.refuse(
                ErrorKind::InvalidArgument,
                format!("the dead-letter reason and description are limited to {DEAD_LETTER_TEXT_LIMIT} bytes"),
            ));
        }
        self.settle(id, Settlement::DeadLetter { reason, description: description.unwrap_or_default() }).await
    }

    /// Renews the lock of the delivery `id` names: the new expiry, in ms since the Unix epoch.
    pub(super) async fn renew_delivery_lock(&mut self, id: Option<&str>) -> Done<u64> {
        let d = self.settleable(id)?;
        match d.renew_lock(self.ctx.metrics()).await {
            Ok(until) => Ok(until.duration_since(std::time::UNIX_EPOCH).map(|x| x.as_millis() as u64).unwrap_or(0)),
            Err(e) => Err(self.refuse_sb(&e)),
        }
    }

    /// A message the guest made, converted to send ([`crate::convert`]), or why its metadata
    /// cannot be sent.
    pub(super) fn outgoing(&mut self, converted: Result<SbMessage, MetadataError>) -> Done<SbMessage> {
        converted.map_err(|e| self.refuse(ErrorKind::InvalidArgument, e.to_string()))
    }

    /// Sends `messages` to `channel` through `connection`, as one batch, carrying the call's
    /// trace context.
    pub(super) async fn send_messages(
        &mut self,
        connection: &str,
        channel: &str,
        mut messages: Vec<SbMessage>,
    ) -> Done<()> {
        if !self.ctx.may_send_to(channel) {
            return Err(
                self.refuse(ErrorKind::NotAllowed, format!("channel {channel:?} is not in this guest's allow-list"))
            );
        }
        if let Some(trace) = &self.call.trace {
            for m in &mut messages {
                trace.stamp(&mut m.application_properties);
            }
        }
        let sender = self.ctx.links().sender(connection, channel).expect("connect hands out only configured names");
        let count = messages.len() as u64;
        let result = match messages.len() {
            1 => sender.send(messages.pop().expect("one message")).await,
            _ => sender.send_batch(messages).await,
        };
        match result {
            Ok(()) => {
                self.ctx.metrics().sent(&self.call.channel, count);
                Ok(())
            }
            Err(e) => Err(self.refuse_sb(&e)),
        }
    }

    /// Receives up to 16 messages from `channel` through `connection`, waiting at most
    /// `wait`; they become deliveries of the call.
    pub(super) async fn pull(&mut self, connection: &str, channel: &str, wait: Duration) -> Done<Vec<Arc<Delivery>>> {
        let client = self.ctx.links().client(connection).cloned().expect("connect hands out only configured names");
        if let Err(e) = client.check_entity(channel).await {
            return Err(self.refuse_sb(&e));
        }
        let receiver = self
            .ctx
            .links()
            .receiver(connection, channel, ReceiverOptions::default())
            .expect("connect hands out only configured names");
        match receiver.receive(16, wait).await {
            Ok(got) => {
                if !got.is_empty() {
                    self.ctx.metrics().received(channel, got.len() as u64);
                }
                let pulled: Vec<Arc<Delivery>> =
                    got.into_iter().map(|m| self.ctx.delivery(channel, m, receiver.clone())).collect();
                for d in &pulled {
                    self.call.deliveries.insert(d.id().to_string(), d.clone());
                }
                Ok(pulled)
            }
            Err(e) => Err(self.refuse_sb(&e)),
        }
    }

    /// The delivery `id` names, if it was received in a message session the call holds.
    fn in_session(&mut self, id: Option<&str>) -> Done<Arc<Delivery>> {
        let d = self.find(id)?;
        if d.session().is_none() {
            return Err(self.refuse(
                ErrorKind::NotAllowed,
                format!(
                    "message {} of channel {:?} is not in a message session: session state belongs to the \
                     messages of a channel with requires-session = true",
                    d.message().sequence_number,
                    d.channel()
                ),
            ));
        }
        Ok(d)
    }

    /// The state of the message session of the delivery `id` names.
    pub(super) async fn session_state(&mut self, id: Option<&str>) -> Done<Option<Vec<u8>>> {
        let d = self.in_session(id)?;
        let state = d.session().expect("in_session checked").state().await;
        state.map(|s| s.map(|s| s.to_vec())).map_err(|e| self.refuse_sb(&e))
    }

    /// Sets (or with `None` clears) the state of the message session of the delivery `id` names.
    pub(super) async fn set_session_state(&mut self, id: Option<&str>, state: Option<Vec<u8>>) -> Done<()> {
        let d = self.in_session(id)?;
        let set = d.session().expect("in_session checked").set_state(state.as_deref()).await;
        set.map_err(|e| self.refuse_sb(&e))
    }

    /// The configured connection `name`, or why not.
    pub(super) fn connection(&mut self, name: &str) -> Done<()> {
        if self.ctx.links().client(name).is_none() {
            let known = self.ctx.links().names();
            return Err(
                self.refuse(ErrorKind::NotFound, format!("no connection named {name:?}; configured: {known:?}"))
            );
        }
        Ok(())
    }
}

/// The guest-visible kind of a client error.
pub(super) fn kind_of(e: &SbError) -> ErrorKind {
    match e.kind() {
        SbErrorKind::LockLost | SbErrorKind::SessionLockLost => ErrorKind::LockLost,
        SbErrorKind::NotFound => ErrorKind::NotFound,
        SbErrorKind::Unauthorized => ErrorKind::Unauthorized,
        SbErrorKind::MessageTooLarge => ErrorKind::TooLarge,
        SbErrorKind::Timeout => ErrorKind::Timeout,
        SbErrorKind::ServerBusy | SbErrorKind::Connection | SbErrorKind::SessionCannotBeLocked => {
            ErrorKind::Unavailable
        }
        SbErrorKind::InvalidConnectionString | SbErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
        SbErrorKind::NotSupported | SbErrorKind::InvalidOperation => ErrorKind::NotAllowed,
        _ => ErrorKind::Other,
    }
}

impl wit_interface::config_store::Host for Messaging<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config_store::Error>> {
        Ok(Ok(self.ctx.config.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config_store::Error>> {
        Ok(Ok(self.ctx.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}
