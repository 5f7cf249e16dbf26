//! The Wasmtime host that runs `wasi:messaging` guests on Azure Service Bus.
//!
//! The flow: load the component (compiled once, cached on disk) and tell its revision of
//! `wasi:messaging` from its exports → take its channels (a February 2024 guest's
//! `configure()`, `host.toml`, `--channel`) and options → check every channel exists → run a
//! worker per channel → for each delivery, call `handler` (February 2024) or `handle`
//! (December 2024) in a fresh instance (deadline, memory cap) → the guest settles through its
//! imports → the host settles what is left by the matrix (ok → complete; error, trap or
//! timeout → abandon). `docs/semantics.md` is the guest's contract.
//!
//! # Layout
//! A message moves down this list: a worker receives it, a call's store is built, the guest
//! runs and calls its imports, and the delivery is settled.
//! - [`config`]: `host.toml`, guest `extensions`, channel options.
//! - [`engine`]: the Wasmtime engine, loading and caching the guest.
//! - `worker`: a worker per channel, handler calls, their deadlines.
//! - `instance`: the one place a call's store is built (the host's store data and linker).
//! - [`messaging`]: the `wasi:messaging` imports for any embedder: a per-process
//!   [`MessagingCtx`], a per-call [`CallCtx`], the [`Messaging`] view, and
//!   [`messaging::add_to_linker`].
//! - [`delivery`]: a delivery's state, settlement, lock renewal, and the matrix for what a
//!   call left unsettled.
//! - [`links`]: the named connections and their cached senders and receivers.
//! - [`convert`]: messages ↔ the WIT record (metadata keys).
//! - [`host`]: start ([`Host::prepare`], then [`Prepared::serve`]: nothing is received before
//!   `serve`, so a program told to stop during start-up stops having taken nothing),
//!   configuration updates, shutdown.
//! - [`metrics`]: counters, worker readiness, and the HTTP endpoint (`/metrics`, `/healthz`,
//!   `/readyz`).
//! - [`trace`]: W3C trace context: a call's span continues the trace of its message, and
//!   what the guest sends continues the call's.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use host_runtime::{Host, HostOptions, config::HostConfig, engine::EngineSettings};
//!
//! let host = Host::start(HostOptions {
//!     component: "target/components/sample-guest.wasm".into(),
//!     connection: amqp_servicebus::ConnectionString::parse(
//!         "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true",
//!     )?,
//!     config: HostConfig::default(),
//!     engine: EngineSettings::default(),
//!     client: amqp_servicebus::ClientOptions::default(),
//! })
//! .await?;
//! tokio::time::sleep(Duration::from_secs(10)).await;
//! host.shutdown(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! # Embedding
//! Another Wasmtime program adds the messaging imports to its own linker, next to WASI, with
//! a view of its own store data (`examples/embed.rs` is a whole program, run in the tests):
//! ```no_run
//! # fn demo(engine: &wasmtime::Engine, client: amqp_servicebus::ServiceBusClient) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use host_runtime::messaging::{self, CallCtx, Messaging, MessagingCtx};
//! use wasmtime::component::{Linker, ResourceTable};
//!
//! struct MyState {
//!     wasi: wasmtime_wasi::WasiCtx,
//!     table: ResourceTable,
//!     messaging: Arc<MessagingCtx>,
//!     call: CallCtx,
//! }
//!
//! impl wasmtime_wasi::WasiView for MyState {
//!     fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
//!         wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
//!     }
//! }
//!
//! let mut linker = Linker::<MyState>::new(engine);
//! wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
//! messaging::add_to_linker(&mut linker, wit_interface::Revision::Dec2024, |s: &mut MyState| {
//!     Messaging::new(&s.messaging, &mut s.call, &mut s.table)
//! })?;
//! let ctx = MessagingCtx::builder().connection("default", client).allow("payments").build()?;
//! # Ok(()) }
//! ```

#[doc(hidden)]
pub mod bench;
mod cache;
pub mod config;
pub mod convert;
pub mod delivery;
pub mod engine;
pub mod host;
mod instance;
pub mod links;
pub mod messaging;
pub mod metrics;
pub mod trace;
mod worker;

pub use host::{Host, HostOptions, Prepared, ShutdownReport, StartError};
pub use messaging::{CallCtx, Messaging, MessagingCtx};
