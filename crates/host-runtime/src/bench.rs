//! Entry points for the criterion benches (`benches/`): one handler call on a fresh
//! instance (of either revision), or on a reused one, with the host's real engine, linker and
//! store setup but no broker; and a call's span. Not part of the host's API.

use std::path::Path;
use std::sync::Arc;

use amqp_servicebus::{ClientOptions, ServiceBusClient};
use wasmtime::Store;
use wit_interface::{Message, MessageState, ServicebusGuest};

use crate::engine::{self, EngineSettings, LoadError};
use crate::instance::{HostState, Instance, Instances};
use crate::links::DEFAULT_CONNECTION;
use crate::messaging::{CallCtx, MessagingCtx};

/// The span and trace context a worker makes for a call on `messages` from `channel`.
pub fn call_span(channel: &str, messages: &[amqp_servicebus::ReceivedMessage]) -> tracing::Span {
    crate::worker::call_span(channel, messages).0
}

/// A loaded guest with the host's linker and store set-up.
pub struct Bench {
    instances: Instances,
}

/// A store and an instance kept across calls (for comparison with fresh instances).
pub struct Reused {
    store: Store<HostState>,
    instance: ServicebusGuest,
}

impl Bench {
    /// Loads `component` as the host does.
    pub fn new(component: &Path) -> Result<Self, LoadError> {
        let guest = Arc::new(engine::load(component, EngineSettings::default())?);
        // A client that is never used: the benched handler does not touch the broker.
        let unused = ServiceBusClient::new(
            "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true",
            ClientOptions::default(),
        )
        .expect("a valid connection string");
        let ctx = MessagingCtx::builder().connection(DEFAULT_CONNECTION, unused).build().expect("it has the default");
        Ok(Self { instances: Instances::new(guest, Arc::new(ctx), Vec::new())? })
    }

    fn store(&self) -> Store<HostState> {
        self.instances.store(CallCtx::new("bench", &[]))
    }

    /// Instantiates afresh, calls `handler(messages)`, and drops the instance: one host
    /// dispatch to a guest of the February 2024 draft.
    pub async fn fresh_call(&self, messages: &[Message]) -> wasmtime::Result<()> {
        let mut store = self.store();
        let guest = feb2024(self.instances.instantiate(&mut store).await?)?;
        let result = guest.wasi_messaging_messaging_guest().call_handler(&mut store, messages).await?;
        if let Err(e) = result {
            Instances::take_error(&mut store, e);
        }
        Ok(())
    }

    /// Instantiates afresh, calls `handle` on a handle holding `message`, and drops the
    /// instance: one host dispatch to a guest of the December 2024 revision. The inner result
    /// is what `handle` returned.
    pub async fn fresh_handle(&self, message: MessageState) -> wasmtime::Result<Result<(), String>> {
        let mut store = self.store();
        let Instance::Dec2024(guest) = self.instances.instantiate(&mut store).await? else {
            wasmtime::bail!("the benched guest is not of the December 2024 revision")
        };
        let handle = store.data_mut().table_mut().push(message)?;
        let returned = guest.wasi_messaging_incoming_handler().call_handle(&mut store, handle).await?;
        Ok(returned.map_err(|e| format!("{e:?}")))
    }

    /// Instantiates afresh and drops the instance without calling it: what a dispatch costs
    /// before the guest runs.
    pub async fn fresh_instance(&self) -> wasmtime::Result<()> {
        let mut store = self.store();
        self.instances.instantiate(&mut store).await?;
        Ok(())
    }

    /// A store and instance to call repeatedly.
    pub async fn reused(&self) -> wasmtime::Result<Reused> {
        let mut store = self.store();
        let instance = feb2024(self.instances.instantiate(&mut store).await?)?;
        Ok(Reused { store, instance })
    }
}

impl Reused {
    /// Calls `handler(messages)` on the kept instance.
    pub async fn call(&mut self, messages: &[Message]) -> wasmtime::Result<()> {
        let result = self.instance.wasi_messaging_messaging_guest().call_handler(&mut self.store, messages).await?;
        if let Err(e) = result {
            Instances::take_error(&mut self.store, e);
        }
        Ok(())
    }
}

fn feb2024(instance: Instance) -> wasmtime::Result<ServicebusGuest> {
    match instance {
        Instance::Feb2024(guest) => Ok(guest),
        Instance::Dec2024(_) => wasmtime::bail!("the benched guest is not of the February 2024 draft"),
    }
}
