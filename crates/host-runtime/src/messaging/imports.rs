//! The imports a guest calls, implemented on [`Messaging`]: `messaging-types`, `producer`,
//! `consumer` (the draft), `settlement` and `sessions` (our extension). Each checks what the guest asked,
//! then hands the work to the links (sending, pulling) or to [`crate::delivery`] (settling).

use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{Error as SbError, ErrorKind as SbErrorKind, ReceiverOptions, ServiceBusClient};
use wasmtime::component::Resource;
use wit_interface::wasi_messaging::{consumer, messaging_types, producer};
use wit_interface::{Client, ErrorKind, GuestConfiguration, GuestError, Message, metadata, sessions, settlement};

use super::call::Messaging;
use crate::convert;
use crate::delivery::{Delivery, NotSettleable, Settlement};

/// What an import returns to the guest: a value, or an error handle.
type Answer<T> = wasmtime::Result<Result<T, Resource<GuestError>>>;

/// Longest a dead-letter reason or description may be, in bytes.
const DEAD_LETTER_TEXT_LIMIT: usize = 4096;

impl Messaging<'_> {
    /// Records an error for `error.trace` and hands the guest a handle on it.
    fn fail<T>(&mut self, kind: ErrorKind, message: impl Into<String>) -> Answer<T> {
        let message = message.into();
        self.call.last_error = format!("{kind}: {message}");
        tracing::debug!(channel = %self.call.channel, %kind, "guest call failed: {message}");
        Ok(Err(self.table.push(GuestError::new(kind, message))?))
    }

    fn fail_sb<T>(&mut self, e: &SbError) -> Answer<T> {
        self.fail(kind_of(e), e.to_string())
    }

    /// The delivery named by a message's `delivery-id`.
    fn find(&self, m: &Message) -> Result<Arc<Delivery>, (ErrorKind, String)> {
        let id = m.metadata.iter().flatten().find(|(k, _)| k == metadata::DELIVERY_ID).map(|(_, v)| v.as_str());
        let Some(id) = id else {
            return Err((
                ErrorKind::UnknownDelivery,
                "the message has no delivery-id: only messages given to this call can be settled".into(),
            ));
        };
        match self.call.deliveries.get(id) {
            Some(d) => Ok(d.clone()),
            None => Err((ErrorKind::UnknownDelivery, format!("delivery-id {id:?} was not given to this call"))),
        }
    }

    /// The delivery of `m`, if it can still be settled.
    fn settleable(&self, m: &Message) -> Result<Arc<Delivery>, (ErrorKind, String)> {
        let d = self.find(m)?;
        d.check_settleable().map_err(|e| {
            let kind = match e {
                NotSettleable::ReceiveAndDelete { .. } => ErrorKind::NotAllowed,
                NotSettleable::Settled { .. } | NotSettleable::Settling { .. } => ErrorKind::AlreadySettled,
                NotSettleable::LockLost { .. } => ErrorKind::LockLost,
            };
            (kind, e.to_string())
        })?;
        Ok(d)
    }

    async fn settle(&mut self, m: Message, settlement: Settlement) -> Answer<()> {
        let d = match self.settleable(&m) {
            Ok(d) => d,
            Err((kind, msg)) => return self.fail(kind, msg),
        };
        match self.ctx.settle(&d, settlement).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => self.fail_sb(&e),
        }
    }

    /// The connection a client handle names, and its client (the handle is consumed).
    fn client(&mut self, c: Resource<Client>) -> wasmtime::Result<(String, ServiceBusClient)> {
        let client = self.table.delete(c)?;
        let name = client.connection().to_string();
        let sb = self.ctx.links().client(&name).cloned().expect("connect hands out only configured names");
        Ok((name, sb))
    }

    async fn pull(&mut self, c: Resource<Client>, ch: String, wait: Duration) -> Answer<Vec<Message>> {
        let (connection, client) = self.client(c)?;
        if let Err(e) = client.check_entity(&ch).await {
            return self.fail_sb(&e);
        }
        let receiver = self
            .ctx
            .links()
            .receiver(&connection, &ch, ReceiverOptions::default())
            .expect("connect hands out only configured names");
        match receiver.receive(16, wait).await {
            Ok(got) => {
                if !got.is_empty() {
                    self.ctx.metrics().received(&ch, got.len() as u64);
                }
                let mut out = Vec::with_capacity(got.len());
                for m in got {
                    let d = self.ctx.delivery(&ch, m, receiver.clone());
                    out.push(d.guest_message());
                    self.call.deliveries.insert(d.id().to_string(), d);
                }
                Ok(Ok(out))
            }
            Err(e) => self.fail_sb(&e),
        }
    }

    /// The delivery of `m`, if it was received in a message session the call holds.
    fn in_session(&self, m: &Message) -> Result<Arc<Delivery>, (ErrorKind, String)> {
        let d = self.find(m)?;
        if d.session().is_none() {
            return Err((
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

    fn is_receive_and_delete(&self, m: &Message) -> bool {
        self.find(m).is_ok_and(|d| !d.is_locked())
    }
}

/// The guest-visible kind of a client error.
fn kind_of(e: &SbError) -> ErrorKind {
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

impl messaging_types::Host for Messaging<'_> {}

impl messaging_types::HostClient for Messaging<'_> {
    async fn connect(&mut self, name: String) -> Answer<Resource<Client>> {
        if self.ctx.links().client(&name).is_none() {
            let known = self.ctx.links().names();
            return self.fail(ErrorKind::NotFound, format!("no connection named {name:?}; configured: {known:?}"));
        }
        Ok(Ok(self.table.push(Client::new(name))?))
    }

    async fn drop(&mut self, rep: Resource<Client>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl messaging_types::HostError for Messaging<'_> {
    async fn trace(&mut self) -> wasmtime::Result<String> {
        Ok(self.call.last_error.clone())
    }

    async fn drop(&mut self, rep: Resource<GuestError>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl producer::Host for Messaging<'_> {
    async fn send(&mut self, c: Resource<Client>, ch: String, m: Vec<Message>) -> Answer<()> {
        let (connection, _) = self.client(c)?; // The draft's send consumes the handle.
        if !self.ctx.may_send_to(&ch) {
            return self.fail(ErrorKind::NotAllowed, format!("channel {ch:?} is not in this guest's allow-list"));
        }
        let mut messages = Vec::with_capacity(m.len());
        for msg in &m {
            match convert::from_guest(msg) {
                Ok(mut sb) => {
                    if let Some(trace) = &self.call.trace {
                        trace.stamp(&mut sb.application_properties);
                    }
                    messages.push(sb);
                }
                Err(e) => return self.fail(ErrorKind::InvalidArgument, e.to_string()),
            }
        }
        let sender = self.ctx.links().sender(&connection, &ch).expect("connect hands out only configured names");
        let count = messages.len() as u64;
        let result = if messages.len() == 1 {
            sender.send(messages.pop().expect("one message")).await
        } else {
            sender.send_batch(messages).await
        };
        match result {
            Ok(()) => {
                self.ctx.metrics().sent(&self.call.channel, count);
                Ok(Ok(()))
            }
            Err(e) => self.fail_sb(&e),
        }
    }
}

impl consumer::Host for Messaging<'_> {
    async fn subscribe_try_receive(
        &mut self,
        c: Resource<Client>,
        ch: String,
        t_milliseconds: u32,
    ) -> Answer<Option<Vec<Message>>> {
        Ok(self
            .pull(c, ch, Duration::from_millis(u64::from(t_milliseconds)))
            .await?
            .map(|v| (!v.is_empty()).then_some(v)))
    }

    async fn subscribe_receive(&mut self, c: Resource<Client>, ch: String) -> Answer<Vec<Message>> {
        // Waits until something arrives; the handler's deadline bounds it.
        let connection = self.table.get(&c)?.connection().to_string();
        let mut handle = c;
        loop {
            let got = self.pull(handle, ch.clone(), Duration::from_secs(30)).await?;
            match got {
                Ok(v) if v.is_empty() => handle = self.table.push(Client::new(connection.clone()))?,
                other => return Ok(other),
            }
        }
    }

    async fn update_guest_configuration(&mut self, gc: GuestConfiguration) -> Answer<()> {
        let Some(updates) = self.ctx.updates.clone() else {
            return self.fail(ErrorKind::NotAllowed, "this host does not take configuration updates");
        };
        for ch in &gc.channels {
            if let Err(e) = self.ctx.links().default_client().check_entity(ch).await {
                return self.fail_sb(&e);
            }
        }
        if let Err(e) = crate::config::guest_options(gc.extensions.as_deref().unwrap_or_default()) {
            return self.fail(ErrorKind::InvalidArgument, e.to_string());
        }
        match updates.send(gc) {
            Ok(()) => Ok(Ok(())),
            Err(_) => self.fail(ErrorKind::Unavailable, "the host is shutting down"),
        }
    }

    async fn complete_message(&mut self, m: Message) -> Answer<()> {
        if self.is_receive_and_delete(&m) {
            return Ok(Ok(())); // Already removed when delivered.
        }
        self.settle(m, Settlement::Complete).await
    }

    async fn abandon_message(&mut self, m: Message) -> Answer<()> {
        self.settle(m, Settlement::Abandon).await
    }
}

impl settlement::Host for Messaging<'_> {
    async fn kind(&mut self, e: Resource<GuestError>) -> wasmtime::Result<settlement::ErrorKind> {
        Ok(self.table.get(&e)?.kind().into())
    }

    async fn new_error(&mut self, detail: String) -> wasmtime::Result<Resource<GuestError>> {
        self.call.last_error = detail.clone();
        Ok(self.table.push(GuestError::new(ErrorKind::Other, detail))?)
    }

    async fn redirect(&mut self, m: Message, to: String) -> Answer<()> {
        if !self.ctx.may_send_to(&to) {
            return self.fail(ErrorKind::NotAllowed, format!("channel {to:?} is not in this guest's allow-list"));
        }
        self.settle(m, Settlement::Redirect(to)).await
    }

    async fn dead_letter(&mut self, m: Message, reason: String, description: Option<String>) -> Answer<()> {
        if reason.trim().is_empty() {
            return self.fail(ErrorKind::InvalidArgument, "the dead-letter reason must not be empty");
        }
        if reason.len() > DEAD_LETTER_TEXT_LIMIT
            || description.as_ref().is_some_and(|d| d.len() > DEAD_LETTER_TEXT_LIMIT)
        {
            return self.fail(
                ErrorKind::InvalidArgument,
                format!("the dead-letter reason and description are limited to {DEAD_LETTER_TEXT_LIMIT} bytes"),
            );
        }
        self.settle(m, Settlement::DeadLetter { reason, description: description.unwrap_or_default() }).await
    }

    async fn defer(&mut self, m: Message) -> Answer<()> {
        self.settle(m, Settlement::Defer).await
    }

    async fn renew_lock(&mut self, m: Message) -> Answer<u64> {
        let d = match self.settleable(&m) {
            Ok(d) => d,
            Err((kind, msg)) => return self.fail(kind, msg),
        };
        match d.renew_lock(self.ctx.metrics()).await {
            Ok(until) => Ok(Ok(until.duration_since(std::time::UNIX_EPOCH).map(|x| x.as_millis() as u64).unwrap_or(0))),
            Err(e) => self.fail_sb(&e),
        }
    }

    async fn abandon_with_delay(&mut self, m: Message, delay_ms: u32) -> Answer<()> {
        self.settle(m, Settlement::AbandonWithDelay(Duration::from_millis(u64::from(delay_ms)))).await
    }
}

impl sessions::Host for Messaging<'_> {
    async fn get_state(&mut self, m: Message) -> Answer<Option<Vec<u8>>> {
        let d = match self.in_session(&m) {
            Ok(d) => d,
            Err((kind, msg)) => return self.fail(kind, msg),
        };
        let state = d.session().expect("in_session checked").state().await;
        match state {
            Ok(state) => Ok(Ok(state.map(|s| s.to_vec()))),
            Err(e) => self.fail_sb(&e),
        }
    }

    async fn set_state(&mut self, m: Message, state: Option<Vec<u8>>) -> Answer<()> {
        let d = match self.in_session(&m) {
            Ok(d) => d,
            Err((kind, msg)) => return self.fail(kind, msg),
        };
        let set = d.session().expect("in_session checked").set_state(state.as_deref()).await;
        match set {
            Ok(()) => Ok(Ok(())),
            Err(e) => self.fail_sb(&e),
        }
    }
}
