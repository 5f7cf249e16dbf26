//! An AMQP 1.0 client for Azure Service Bus, built on `fe2o3-amqp` and
//! `fe2o3-amqp-cbs`. It also talks to plain AMQP 1.0 brokers ([`Dialect::GenericAmqp`]).
//!
//! - Connection strings in Azure's format ([`ConnectionString`]), or built from parts.
//! - SAS tokens made exactly as the service expects, put on `$cbs` per entity and
//!   renewed before they expire.
//! - TLS (rustls, web PKI roots plus an optional extra CA) on 5671; plain TCP for the
//!   development emulator (`UseDevelopmentEmulator=true`).
//! - One shared connection per client, and an AMQP session per link on it (a refused or
//!   failed link costs that link alone); links are made lazily and reused, and come back
//!   after a connection loss without the caller rebuilding anything.
//! - [`Sender`]: send, batches split to the broker's size limit, schedule, cancel.
//! - [`Receiver`]: peek-lock or receive-and-delete, prefetch, `receive(max, timeout)`,
//!   a stream; complete, abandon, dead-letter, defer with confirmed answers (through
//!   `$management`, so a lost lock is always reported); `complete_and_send` (forward and
//!   complete in one transaction); deferred receive, renew-lock, peek. Receive from one
//!   task and hand messages to workers, as `examples/drain.rs` does.
//! - Errors with a stable [`ErrorKind`] and their source chain ([`Error`]), and retries with exponential backoff and jitter ([`RetryPolicy`]).
//!
//! # Layout
//! Layers, each depending only on those below it:
//! - `connection` (private): the live connection, its transport (TCP, TLS, the guard),
//!   CBS tokens, reconnection, and an AMQP session per link. Nothing else touches it.
//! - `management`: `$management` request/response pairs, a task per entity.
//! - `sender`; `receiver` (a handle, and a task that owns each receive link).
//! - `client`: [`ServiceBusClient`], the façade that makes the others.
//! - Beside them: [`connection_string`], [`sas`], `options`, `message`, [`error`], [`retry`].
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use amqp_servicebus::{ClientOptions, Message, ServiceBusClient};
//!
//! # async fn demo() -> amqp_servicebus::Result<()> {
//! let client = ServiceBusClient::new(
//!     "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true",
//!     ClientOptions::default(),
//! )?;
//! client.sender("orders").send(Message::new("hello")).await?;
//! let receiver = client.receiver("orders");
//! for m in receiver.receive(10, Duration::from_secs(5)).await? {
//!     println!("{} (delivery {})", String::from_utf8_lossy(&m.body), m.delivery_count);
//!     receiver.complete(&m).await?;
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod client;
mod connection;
pub mod connection_string;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod management;
mod message;
mod options;
mod receiver;
pub mod retry;
pub mod sas;
mod sender;

pub use client::ServiceBusClient;
pub use connection_string::{ConnectionString, Credential};
pub use error::{BrokerError, Error, ErrorKind, Result};
pub use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue};
pub use message::{BodyKind, Message, ReceivedMessage};
pub use options::{
    ClientOptions, Dialect, HttpProxy, ReceiveMode, ReceiverOptions, SessionReceiverOptions, TransportType,
};
pub use receiver::{MessageSession, Receiver, UNDECODABLE_REASON};
pub use retry::RetryPolicy;
pub use sender::Sender;
