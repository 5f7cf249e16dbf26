//! Entry points for the criterion benches (`benches/`): one handler call on a fresh
//! instance, or on a reused one, with the host's real engine, linker and store setup
//! but no broker. Not part of the host's API.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use amqp_servicebus::{ClientOptions, ServiceBusClient};
use tokio::sync::mpsc;
use wasmtime::Store;
use wit_interface::{Message, ServicebusGuest};

use crate::engine::{self, EngineSettings, LoadError, LoadedGuest};
use crate::guest::{Shared, State};
use crate::metrics::Metrics;

/// A loaded guest with the host's linker, and what its store data needs.
pub struct Bench {
    guest: Arc<LoadedGuest>,
    shared: Arc<Shared>,
}

/// A store and an instance kept across calls (for comparison with fresh instances).
pub struct Reused {
    store: Store<State>,
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
        let (tx, _rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            HashMap::from([("default".to_string(), unused)]),
            HashSet::new(),
            Arc::new(Metrics::default()),
            tx,
            Vec::new(),
        ));
        Ok(Self { guest, shared })
    }

    fn store(&self) -> Store<State> {
        let mut store = Store::new(
            &self.guest.engine,
            State::new(self.shared.clone(), "bench", &[], self.guest.settings.max_memory),
        );
        store.limiter(|s| s);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// Instantiates afresh, calls `handler(messages)`, and drops the instance: one host dispatch.
    pub async fn fresh_call(&self, messages: &[Message]) -> wasmtime::Result<()> {
        let mut store = self.store();
        let instance = self.guest.pre.instantiate_async(&mut store).await?;
        let result = instance.wasi_messaging_messaging_guest().call_handler(&mut store, messages).await?;
        if let Err(e) = result {
            store.data_mut().take_error(e);
        }
        Ok(())
    }

    /// A store and instance to call repeatedly.
    pub async fn reused(&self) -> wasmtime::Result<Reused> {
        let mut store = self.store();
        let instance = self.guest.pre.instantiate_async(&mut store).await?;
        Ok(Reused { store, instance })
    }
}

impl Reused {
    /// Calls `handler(messages)` on the kept instance.
    pub async fn call(&mut self, messages: &[Message]) -> wasmtime::Result<()> {
        let result = self.instance.wasi_messaging_messaging_guest().call_handler(&mut self.store, messages).await?;
        if let Err(e) = result {
            self.store.data_mut().take_error(e);
        }
        Ok(())
    }
}
