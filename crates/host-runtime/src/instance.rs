//! The one place a store for a call is built: the host's store data (WASI, the resource
//! table, the memory cap, the messaging contexts), the linker, and the pre-instantiated guest.
//!
//! Every instance the host makes comes from here: `configure()`'s, each handler call's, and
//! the benches'. An embedder with its own store type does what this module does with
//! [`crate::messaging::add_to_linker`] (see `examples/embed.rs`).

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wit_interface::{GuestConfiguration, GuestError, Revision, ServicebusGuest, ServicebusGuestPre, dec2024};

use crate::delivery::Delivery;
use crate::engine::{LoadError, LoadedGuest};
use crate::messaging::{self, CallCtx, Messaging, MessagingCtx};

/// The store data of one instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    ctx: Arc<MessagingCtx>,
    pub(crate) call: CallCtx,
}

impl HostState {
    fn messaging(&mut self) -> Messaging<'_> {
        Messaging::new(&self.ctx, &mut self.call, &mut self.table)
    }

    /// The store's resource table.
    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.memory_growing(current, desired, maximum)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

/// The guest linked for its revision and pre-instantiated.
enum Pre {
    Feb2024(ServicebusGuestPre<HostState>),
    Dec2024(dec2024::ServicebusGuestPre<HostState>),
}

/// An instance of the guest.
pub(crate) enum Instance {
    /// Of the February 2024 draft.
    Feb2024(ServicebusGuest),
    /// Of the December 2024 revision.
    Dec2024(dec2024::ServicebusGuest),
}

/// A handler call that returned an error: what it said, and how loud to log it. (A trap is
/// not a return: it is the call's `wasmtime::Error`.)
#[derive(Debug)]
pub(crate) struct Failure {
    /// The level to log it at.
    pub(crate) level: tracing::Level,
    /// What the guest said.
    pub(crate) text: String,
}

impl Failure {
    /// An error handle returned by a guest of the February 2024 draft: an error of the
    /// guest's own (logged at INFO, as any handler error was).
    fn feb2024(e: GuestError) -> Self {
        Self { level: tracing::Level::INFO, text: e.to_string() }
    }

    /// Upstream's `error` returned by a guest of the December 2024 revision. Its cases say how
    /// loud, not how to settle (`docs/semantics.md`): `other` is the guest's own failure
    /// (INFO); `timeout` and `connection` say something it depends on is down (WARN);
    /// `permission-denied` needs a person (ERROR).
    fn dec2024(e: dec2024::Error) -> Self {
        use dec2024::Error as E;
        let (level, text) = match e {
            E::Other(t) => (tracing::Level::INFO, format!("other: {t}")),
            E::Timeout => (tracing::Level::WARN, "timeout".to_string()),
            E::Connection(t) => (tracing::Level::WARN, format!("connection: {t}")),
            E::PermissionDenied(t) => (tracing::Level::ERROR, format!("permission-denied: {t}")),
        };
        Self { level, text }
    }
}

/// The guest linked and pre-instantiated, and what each of its stores starts with.
pub(crate) struct Instances {
    guest: Arc<LoadedGuest>,
    pre: Pre,
    ctx: Arc<MessagingCtx>,
    /// The guest's environment variables.
    env: Vec<(String, String)>,
}

impl Instances {
    /// Links `guest` with WASI and the messaging imports over `ctx`.
    pub(crate) fn new(
        guest: Arc<LoadedGuest>,
        ctx: Arc<MessagingCtx>,
        env: Vec<(String, String)>,
    ) -> Result<Self, LoadError> {
        let link = |e: wasmtime::Error| LoadError::Compile { path: guest.path.clone(), message: format!("{e:#}") };
        let mut linker: Linker<HostState> = Linker::new(&guest.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        messaging::add_to_linker(&mut linker, guest.revision, HostState::messaging).map_err(link)?;
        let pre = linker.instantiate_pre(&guest.component).map_err(link)?;
        let pre = match guest.revision {
            Revision::Feb2024 => Pre::Feb2024(ServicebusGuestPre::new(pre).map_err(link)?),
            Revision::Dec2024 => Pre::Dec2024(dec2024::ServicebusGuestPre::new(pre).map_err(link)?),
        };
        Ok(Self { guest, pre, ctx, env })
    }

    /// The revision of `wasi:messaging` the guest targets.
    pub(crate) fn revision(&self) -> Revision {
        self.guest.revision
    }

    /// The messaging context every store shares.
    pub(crate) fn ctx(&self) -> &Arc<MessagingCtx> {
        &self.ctx
    }

    /// A store for `call`: the guest's environment, its memory cap, and an epoch deadline that
    /// makes running wasm yield to the executor every tick (so a deadline can stop a busy loop).
    pub(crate) fn store(&self, call: CallCtx) -> Store<HostState> {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout().inherit_stderr().envs(&self.env);
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(self.guest.settings.max_memory)
                .trap_on_grow_failure(false)
                .build(),
            ctx: self.ctx.clone(),
            call,
        };
        let mut store = Store::new(&self.guest.engine, state);
        store.limiter(|s| s);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// A fresh instance of the guest in `store`.
    pub(crate) async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match &self.pre {
            Pre::Feb2024(pre) => Instance::Feb2024(pre.instantiate_async(store).await?),
            Pre::Dec2024(pre) => Instance::Dec2024(pre.instantiate_async(store).await?),
        })
    }

    /// Runs the guest's handler on `deliveries` in a fresh instance in `store`: `handler` with
    /// their records (February 2024 draft), or `handle` with a message handle on the one
    /// delivery (December 2024 revision, whose channels take one message a call).
    pub(crate) async fn handle(
        &self,
        store: &mut Store<HostState>,
        deliveries: &[Arc<Delivery>],
    ) -> wasmtime::Result<Result<(), Failure>> {
        match self.instantiate(store).await? {
            Instance::Feb2024(guest) => {
                let messages: Vec<_> = deliveries.iter().map(|d| d.guest_message()).collect();
                let returned = guest.wasi_messaging_messaging_guest().call_handler(&mut *store, &messages).await?;
                Ok(returned.map_err(|e| Failure::feb2024(Self::take_error(store, e))))
            }
            Instance::Dec2024(guest) => {
                let [delivery] = deliveries else {
                    wasmtime::bail!(
                        "incoming-handler.handle takes one message; the call was given {}",
                        deliveries.len()
                    )
                };
                let message = store.data_mut().table_mut().push(delivery.message_state())?;
                let returned = guest.wasi_messaging_incoming_handler().call_handle(&mut *store, message).await?;
                Ok(returned.map_err(Failure::dec2024))
            }
        }
    }

    /// Runs `configure()` in a fresh instance in `store`: the guest's configuration, or the
    /// error it returned. `None` for a guest of the December 2024 revision, which has no
    /// `configure()` (the host names its channels).
    pub(crate) async fn configure(
        &self,
        store: &mut Store<HostState>,
    ) -> Option<wasmtime::Result<Result<GuestConfiguration, GuestError>>> {
        let Pre::Feb2024(pre) = &self.pre else { return None };
        let configured = async {
            let guest = pre.instantiate_async(&mut *store).await?;
            let returned = guest.wasi_messaging_messaging_guest().call_configure(&mut *store).await?;
            Ok(returned.map_err(|e| Self::take_error(store, e)))
        };
        Some(configured.await)
    }

    /// Takes an error handle a guest export returned, freeing it.
    pub(crate) fn take_error(
        store: &mut Store<HostState>,
        e: wasmtime::component::Resource<wit_interface::GuestError>,
    ) -> wit_interface::GuestError {
        store.data_mut().messaging().take_error(e)
    }
}
