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
//! - [`RuleManager`]: a subscription's rules (SQL and correlation filters, SQL actions).
//! - AMQP over WebSockets, directly or through an HTTP proxy ([`TransportType`], [`HttpProxy`]).
//! - [`Receiver`]: peek-lock or receive-and-delete, prefetch, `receive(max, timeout)`,
//!   a stream; complete, abandon, dead-letter, defer with confirmed answers (through
//!   `$management`, so a lost lock is always reported); `complete_and_send` (forward and
//!   complete in one transaction); deferred receive, renew-lock, peek; message sessions
//!   ([`ServiceBusClient::accept_session`], [`MessageSession`]). Receive from one
//!   task and hand messages to workers, as `examples/drain.rs` does.
//! - Errors with a stable [`ErrorKind`] and their source chain ([`Error`]), and retries with exponential backoff and jitter ([`RetryPolicy`]).
//!
//! # Layout
//! Layers, each depending only on those below it:
//! - `connection` (private): the live connection, its transport (TCP, TLS, the guard),
//!   CBS tokens, reconnection, and an AMQP session per link. Nothing else touches it.
//! - `management`: `$management` request/response pairs, a task per entity.
//! - [`sender`]; [`receiver`] (a handle, and a task that owns each receive link).
//! - [`rules`]: a subscription's rules, through `$management`.
//! - [`client`]: [`ServiceBusClient`], the façade that makes the others.
//! - Beside them: [`connection_string`], [`sas`], [`options`], [`message`], [`error`], [`retry`].
//!
//! The types are re-exported here; each also lives in its public module.
//!
//! # Sending and receiving
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
//!
//! # Settling, forwarding atomically, and errors to match on
//! ```no_run
//! use std::time::Duration;
//! use amqp_servicebus::{ErrorKind, Message, ServiceBusClient};
//!
//! # async fn demo(client: ServiceBusClient) -> amqp_servicebus::Result<()> {
//! let receiver = client.receiver("orders");
//! let shipping = client.sender("shipping");
//! for m in receiver.receive(10, Duration::from_secs(5)).await? {
//!     // Send on and complete in one broker transaction: both happen, or neither.
//!     match receiver.complete_and_send(&m, &shipping, Message::new(m.body.clone())).await {
//!         Ok(()) => {}
//!         // The lock lapsed: the broker redelivers the message; nothing was sent.
//!         Err(e) if e.kind() == ErrorKind::LockLost => eprintln!("{e}"),
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Message sessions
//! ```no_run
//! use std::time::Duration;
//! use amqp_servicebus::{Message, ServiceBusClient, SessionReceiverOptions};
//!
//! # async fn demo(client: ServiceBusClient) -> amqp_servicebus::Result<()> {
//! let mut m = Message::new("step 1");
//! m.session_id = Some("order-17".into());
//! client.sender("workflows").send(m).await?;
//!
//! // The next session that comes free, its lock renewed for up to 5 minutes.
//! let options = SessionReceiverOptions { max_lock_renewal: Duration::from_secs(300), ..Default::default() };
//! let receiver = client.accept_next_session("workflows", options).await?;
//! let session = receiver.session().expect("a session receiver");
//! let state = session.state().await?;
//! for m in receiver.receive(10, Duration::from_secs(5)).await? {
//!     receiver.complete(&m).await?;
//! }
//! session.set_state(Some(b"after step 1")).await?;
//! println!("{} was at {state:?}, locked until {:?}", session.id(), session.locked_until());
//! # Ok(()) }
//! ```
//!
//! # Subscription rules
//! ```no_run
//! use amqp_servicebus::{CorrelationFilter, RuleFilter, ServiceBusClient};
//!
//! # async fn demo(client: ServiceBusClient) -> amqp_servicebus::Result<()> {
//! let rules = client.rule_manager("orders", "big-red");
//! rules.delete_rule("$Default").await?;
//! rules.create_rule("red", RuleFilter::Sql("color = 'red' AND quantity > 10".into()), None).await?;
//! let vip = CorrelationFilter { subject: Some("vip".into()), ..Default::default() };
//! rules.create_rule("vip", RuleFilter::Correlation(vip), Some("SET priority = 1")).await?;
//! for rule in rules.rules().await? {
//!     println!("{}: {:?}", rule.name, rule.filter);
//! }
//! # Ok(()) }
//! ```
//!
//! # AMQP over WebSockets, through a proxy
//! ```no_run
//! use amqp_servicebus::{ClientOptions, HttpProxy, ServiceBusClient, TransportType};
//!
//! # fn demo() -> amqp_servicebus::Result<()> {
//! let options = ClientOptions {
//!     transport: TransportType::AmqpWebSockets,
//!     http_proxy: Some(HttpProxy { host: "proxy.internal".into(), port: 3128, credentials: None }),
//!     ..ClientOptions::default()
//! };
//! let client = ServiceBusClient::new(
//!     "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=c2VjcmV0",
//!     options,
//! )?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod client;
mod connection;
pub mod connection_string;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod management;
pub mod message;
pub mod options;
pub mod receiver;
pub mod retry;
pub mod rules;
pub mod sas;
pub mod sender;

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
pub use rules::{CorrelationFilter, RuleFilter, RuleManager, RuleProperties};
pub use sender::Sender;
