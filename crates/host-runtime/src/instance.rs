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
use wit_interface::{ServicebusGuest, ServicebusGuestPre};

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

/// The guest linked and pre-instantiated, and what each of its stores starts with.
pub(crate) struct Instances {
    guest: Arc<LoadedGuest>,
    pre: ServicebusGuestPre<HostState>,
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
        messaging::add_to_linker(&mut linker, HostState::messaging).map_err(link)?;
        let pre = linker.instantiate_pre(&guest.component).map_err(link)?;
        let pre = ServicebusGuestPre::new(pre).map_err(link)?;
        Ok(Self { guest, pre, ctx, env })
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
    pub(crate) async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<ServicebusGuest> {
        self.pre.instantiate_async(store).await
    }

    /// Takes an error handle a guest export returned, freeing it.
    pub(crate) fn take_error(
        store: &mut Store<HostState>,
        e: wasmtime::component::Resource<wit_interface::GuestError>,
    ) -> wit_interface::GuestError {
        store.data_mut().messaging().take_error(e)
    }
}
