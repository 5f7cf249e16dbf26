//! The client: the façade a caller starts from. It owns the connection layer and the
//! `$management` pairs, and makes senders and receivers that share them.

use std::sync::Arc;

use crate::connection::Connection;
use crate::connection_string::ConnectionString;
use crate::error::Result;
use crate::management::Management;
use crate::options::{ClientOptions, Dialect, ReceiveMode, ReceiverOptions, SessionReceiverOptions};
use crate::receiver::{Receiver, WantedSession};
use crate::rules::RuleManager;
use crate::sender::Sender;

/// A Service Bus (or AMQP 1.0) client. Cheap to clone; clones share the connection.
///
/// Every sender, receiver and management link of a client shares one AMQP connection, and
/// each has an AMQP session of its own on it, as the official SDKs do: a link error, or a
/// session that ends under a failed attach, costs that link alone.
#[derive(Clone)]
pub struct ServiceBusClient {
    connection: Arc<Connection>,
    management: Arc<Management>,
}

impl std::fmt::Debug for ServiceBusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusClient").field("host", &self.connection.settings().host).finish_non_exhaustive()
    }
}

impl ServiceBusClient {
    /// A client for a connection string. Nothing is connected until first use.
    pub fn new(connection_string: &str, options: ClientOptions) -> Result<Self> {
        Ok(Self::from_settings(ConnectionString::parse(connection_string)?, options))
    }

    /// A client for parsed settings.
    pub fn from_settings(settings: ConnectionString, options: ClientOptions) -> Self {
        let connection = Arc::new(Connection::new(settings, options));
        let management = Arc::new(Management::new(connection.clone()));
        Self { connection, management }
    }

    /// The settings this client connects with.
    pub fn settings(&self) -> &ConnectionString {
        self.connection.settings()
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        self.connection.options()
    }

    /// A sender to a queue or topic.
    pub fn sender(&self, entity: &str) -> Sender {
        Sender::new(self.connection.clone(), self.management.clone(), entity)
    }

    /// A peek-lock receiver from a queue, subscription (`topic/Subscriptions/sub`) or
    /// dead-letter queue (`queue/$DeadLetterQueue`), with no prefetch.
    pub fn receiver(&self, entity: &str) -> Receiver {
        self.receiver_with(entity, ReceiverOptions::default())
    }

    /// A receiver with options (mode, prefetch).
    pub fn receiver_with(&self, entity: &str, options: ReceiverOptions) -> Receiver {
        Receiver::new(self.connection.clone(), self.management.clone(), entity, options)
    }

    /// A receive-and-delete receiver.
    pub fn receive_and_delete_receiver(&self, entity: &str) -> Receiver {
        self.receiver_with(entity, ReceiverOptions { mode: ReceiveMode::ReceiveAndDelete, ..Default::default() })
    }

    /// A session receiver for the message session `session_id` of an entity that requires
    /// sessions. Fails with [`ErrorKind::SessionCannotBeLocked`](crate::error::ErrorKind::SessionCannotBeLocked)
    /// if another receiver holds it. [`Receiver::session`] gives its id, lock and state.
    pub async fn accept_session(
        &self,
        entity: &str,
        session_id: &str,
        options: SessionReceiverOptions,
    ) -> Result<Receiver> {
        let wanted = WantedSession::Id(session_id.to_string());
        Receiver::accept_session(self.connection.clone(), self.management.clone(), entity, wanted, options).await
    }

    /// A session receiver for whichever message session comes free first (the one whose
    /// oldest message is oldest), waiting up to `options.wait` for one; then it fails with
    /// [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout).
    pub async fn accept_next_session(&self, entity: &str, options: SessionReceiverOptions) -> Result<Receiver> {
        let wanted = WantedSession::NextAvailable;
        Receiver::accept_session(self.connection.clone(), self.management.clone(), entity, wanted, options).await
    }

    /// The rules of `topic`'s subscription `subscription`.
    pub fn rule_manager(&self, topic: &str, subscription: &str) -> RuleManager {
        RuleManager::new(self.management.clone(), topic, subscription)
    }

    /// Connects now (otherwise the first operation does). Useful to fail fast on bad settings.
    pub async fn connect(&self) -> Result<()> {
        self.connection.epoch().await.map(drop)
    }

    /// Checks that `entity` exists and that the credentials reach it
    /// ([`ErrorKind::NotFound`](crate::error::ErrorKind::NotFound),
    /// [`ErrorKind::Unauthorized`](crate::error::ErrorKind::Unauthorized) otherwise). In generic AMQP
    /// mode there is no cheap check, and this succeeds.
    pub async fn check_entity(&self, entity: &str) -> Result<()> {
        if self.connection.dialect() == Dialect::GenericAmqp {
            return Ok(());
        }
        let entity = entity.trim_matches('/');
        self.options().retry.run("checking the entity", entity, || self.management.probe(entity)).await
    }

    /// Closes the connection. Later operations reconnect.
    pub async fn close(&self) {
        self.management.clear();
        self.connection.close().await;
    }
}
