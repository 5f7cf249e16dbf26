//! The Wasmtime host that runs `wasi:messaging` guests on Azure Service Bus.
//!
//! The flow: load the component (compiled once, cached on disk) → call its
//! `configure()` → merge its channels and options with `host.toml` → check every
//! channel exists → run a worker per channel → for each delivery, call `handler`
//! in a fresh instance (deadline, memory cap) → the guest settles through its
//! imports → the host settles what is left by the matrix (ok → complete; error,
//! trap or timeout → abandon). `docs/semantics.md` is the guest's contract.
//!
//! # Layout
//! - [`config`]: `host.toml`, guest `extensions`, channel options.
//! - [`engine`]: the Wasmtime engine, loading and caching the guest.
//! - `guest`: the store data and the messaging imports.
//! - [`convert`]: messages ↔ the WIT record (metadata keys).
//! - `dispatch`: workers, handler calls, lock renewal, the matrix.
//! - [`host`]: start ([`Host::prepare`], then [`Prepared::serve`]: nothing is received before
//!   `serve`, so a program told to stop during start-up stops having taken nothing),
//!   configuration updates, shutdown.
//! - [`metrics`]: counters and the Prometheus endpoint.
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

#[doc(hidden)]
pub mod bench;
mod cache;
pub mod config;
pub mod convert;
mod dispatch;
pub mod engine;
mod guest;
pub mod host;
pub mod metrics;

pub use guest::State;
pub use host::{Host, HostOptions, Prepared, ShutdownReport, StartError};
