//! The February 2024 draft's imports on [`Messaging`]: `messaging-types`, `producer`,
//! `consumer`, and the extension's `settlement` and `sessions` (`servicebus:messaging@0.1.0`).
//! A message names its delivery by its `delivery-id` metadata key; a failure is an `error`
//! resource whose `trace` is the last failure's text.

use std::time::Duration;

use wasmtime::component::Resource;
use wit_interface::wasi_messaging::{consumer, messaging_types, producer};
use wit_interface::{Client, GuestConfiguration, GuestError, Message, metadata, sessions, settlement};

use super::call::Messaging;
use super::ops::Done;
use crate::convert;
use crate::delivery::Settlement;

/// What an import returns to the guest: a value, or an error handle.
type Answer<T> = wasmtime::Result<Result<T, Resource<GuestError>>>;

impl Messaging<'_> {
    /// Hands a failure to the guest as an `error` handle.
    fn answer<T>(&mut self, done: Done<T>) -> Answer<T> {
        match done {
            Ok(v) => Ok(Ok(v)),
            Err(e) => Ok(Err(self.table.push(e)?)),
        }
    }

    /// The connection a client handle names (the handle is consumed: the draft's operations
    /// take it by value).
    fn take_client(&mut self, c: Resource<Client>) -> wasmtime::Result<String> {
        Ok(self.table.delete(c)?.connection().to_string())
    }
}

/// The `delivery-id` of a message record.
fn delivery_id(m: &Message) -> Option<&str> {
    m.metadata.iter().flatten().find(|(k, _)| k == metadata::DELIVERY_ID).map(|(_, v)| v.as_str())
}

impl messaging_types::Host for Messaging<'_> {}

impl messaging_types::HostClient for Messaging<'_> {
    async fn connect(&mut self, name: String) -> Answer<Resource<Client>> {
        match self.connection(&name) {
            Ok(()) => Ok(Ok(self.table.push(Client::new(name))?)),
            Err(e) => self.answer(Err(e)),
        }
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
        let connection = self.take_client(c)?;
        let converted: Done<Vec<_>> = m.iter().map(|m| self.outgoing(convert::from_guest(m))).collect();
        let done = match converted {
            Ok(messages) => self.send_messages(&connection, &ch, messages).await,
            Err(e) => Err(e),
        };
        self.answer(done)
    }
}

impl Messaging<'_> {
    async fn pull_records(&mut self, c: Resource<Client>, ch: &str, wait: Duration) -> Answer<Vec<Message>> {
        let connection = self.take_client(c)?;
        let pulled = self.pull(&connection, ch, wait).await;
        self.answer(pulled.map(|ds| ds.iter().map(|d| d.guest_message()).collect()))
    }
}

impl consumer::Host for Messaging<'_> {
    async fn subscribe_try_receive(
        &mut self,
        c: Resource<Client>,
        ch: String,
        t_milliseconds: u32,
    ) -> Answer<Option<Vec<Message>>> {
        let wait = Duration::from_millis(u64::from(t_milliseconds));
        Ok(self.pull_records(c, &ch, wait).await?.map(|v| (!v.is_empty()).then_some(v)))
    }

    async fn subscribe_receive(&mut self, c: Resource<Client>, ch: String) -> Answer<Vec<Message>> {
        // Waits until something arrives; the handler's deadline bounds it.
        let connection = self.table.get(&c)?.connection().to_string();
        let mut handle = c;
        loop {
            let got = self.pull_records(handle, &ch, Duration::from_secs(30)).await?;
            match got {
                Ok(v) if v.is_empty() => handle = self.table.push(Client::new(connection.clone()))?,
                other => return Ok(other),
            }
        }
    }

    async fn update_guest_configuration(&mut self, gc: GuestConfiguration) -> Answer<()> {
        let done = self.update_configuration(gc).await;
        self.answer(done)
    }

    async fn complete_message(&mut self, m: Message) -> Answer<()> {
        let done = self.complete_delivery(delivery_id(&m)).await;
        self.answer(done)
    }

    async fn abandon_message(&mut self, m: Message) -> Answer<()> {
        let done = self.settle(delivery_id(&m), Settlement::Abandon).await;
        self.answer(done)
    }
}

impl Messaging<'_> {
    /// Checks a configuration update and passes it to the host.
    async fn update_configuration(&mut self, gc: GuestConfiguration) -> Done<()> {
        use wit_interface::ErrorKind;
        let Some(updates) = self.ctx.updates.clone() else {
            return Err(self.refuse(ErrorKind::NotAllowed, "this host does not take configuration updates"));
        };
        for ch in &gc.channels {
            if let Err(e) = self.ctx.links().default_client().check_entity(ch).await {
                return Err(self.refuse_sb(&e));
            }
        }
        if let Err(e) = crate::config::guest_options(gc.extensions.as_deref().unwrap_or_default()) {
            return Err(self.refuse(ErrorKind::InvalidArgument, e.to_string()));
        }
        updates.send(gc).map_err(|_| self.refuse(ErrorKind::Unavailable, "the host is shutting down"))
    }
}

impl settlement::Host for Messaging<'_> {
    async fn kind(&mut self, e: Resource<GuestError>) -> wasmtime::Result<settlement::ErrorKind> {
        Ok(self.table.get(&e)?.kind().into())
    }

    async fn new_error(&mut self, detail: String) -> wasmtime::Result<Resource<GuestError>> {
        self.call.last_error = detail.clone();
        Ok(self.table.push(GuestError::new(wit_interface::ErrorKind::Other, detail))?)
    }

    async fn redirect(&mut self, m: Message, to: String) -> Answer<()> {
        let done = self.settle(delivery_id(&m), Settlement::Redirect(to)).await;
        self.answer(done)
    }

    async fn dead_letter(&mut self, m: Message, reason: String, description: Option<String>) -> Answer<()> {
        let done = self.dead_letter_delivery(delivery_id(&m), reason, description).await;
        self.answer(done)
    }

    async fn defer(&mut self, m: Message) -> Answer<()> {
        let done = self.settle(delivery_id(&m), Settlement::Defer).await;
        self.answer(done)
    }

    async fn renew_lock(&mut self, m: Message) -> Answer<u64> {
        let done = self.renew_delivery_lock(delivery_id(&m)).await;
        self.answer(done)
    }

    async fn abandon_with_delay(&mut self, m: Message, delay_ms: u32) -> Answer<()> {
        let delay = Duration::from_millis(u64::from(delay_ms));
        let done = self.settle(delivery_id(&m), Settlement::AbandonWithDelay(delay)).await;
        self.answer(done)
    }
}

impl sessions::Host for Messaging<'_> {
    async fn get_state(&mut self, m: Message) -> Answer<Option<Vec<u8>>> {
        let done = self.session_state(delivery_id(&m)).await;
        self.answer(done)
    }

    async fn set_state(&mut self, m: Message, state: Option<Vec<u8>>) -> Answer<()> {
        let done = self.set_session_state(delivery_id(&m), state).await;
        self.answer(done)
    }
}
