//! The per-call context, and the view of a store the imports are implemented on.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};
use wit_interface::{ErrorKind, GuestError};

use super::ctx::MessagingCtx;
use crate::delivery::Delivery;
use crate::trace::TraceContext;

/// What one handler call has: its channel, the deliveries given to it and those it pulled,
/// and the last error it was handed (for `error.trace`).
#[derive(Debug, Default)]
pub struct CallCtx {
    pub(super) channel: String,
    pub(super) deliveries: HashMap<String, Arc<Delivery>>,
    pub(super) last_error: String,
    pub(super) trace: Option<TraceContext>,
}

impl CallCtx {
    /// A call for `channel`, given `deliveries`. A guest can settle only what its call was
    /// given or pulled.
    pub fn new(channel: &str, deliveries: &[Arc<Delivery>]) -> Self {
        Self {
            channel: channel.to_string(),
            deliveries: deliveries.iter().map(|d| (d.id().to_string(), d.clone())).collect(),
            last_error: String::new(),
            trace: None,
        }
    }

    /// The call's trace context: messages the guest sends carry it (`traceparent` and
    /// `Diagnostic-Id`), unless they carry one of their own.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The channel the call is for (pulled messages may come from others).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Every delivery of the call: those it was given and those it pulled.
    pub fn deliveries(&self) -> Vec<Arc<Delivery>> {
        self.deliveries.values().cloned().collect()
    }
}

/// The messaging imports' view of a store: the process's context, the call's, and the
/// store's resource table (shared with WASI).
pub struct Messaging<'a> {
    pub(super) ctx: &'a MessagingCtx,
    pub(super) call: &'a mut CallCtx,
    pub(super) table: &'a mut ResourceTable,
}

impl<'a> Messaging<'a> {
    /// A view over `ctx`, `call` and `table`.
    pub fn new(ctx: &'a MessagingCtx, call: &'a mut CallCtx, table: &'a mut ResourceTable) -> Self {
        Self { ctx, call, table }
    }

    /// Takes an error handle a guest export returned, freeing it.
    pub fn take_error(&mut self, e: Resource<GuestError>) -> GuestError {
        self.table
            .delete(e)
            .unwrap_or_else(|_| GuestError::new(ErrorKind::Other, "the guest returned an unknown error handle"))
    }
}
