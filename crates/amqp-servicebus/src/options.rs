//! Settings beyond the connection string: the client's, and each receiver's.

use std::time::Duration;

use crate::retry::RetryPolicy;

/// Which dialect the broker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Azure Service Bus (or its emulator): SASL ANONYMOUS + CBS tokens, `$management`.
    #[default]
    ServiceBus,
    /// A plain AMQP 1.0 broker: SASL PLAIN with the key name and key (or ANONYMOUS), no CBS,
    /// addresses used as given, no `$management` operations.
    GenericAmqp,
}

/// How the client reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportType {
    /// AMQP over TCP: TLS on 5671 (plain on 5672 for the development emulator).
    #[default]
    Amqp,
    /// AMQP over WebSockets at `/$servicebus/websocket` (subprotocol `AMQPWSB10`): TLS on 443
    /// (plain on 80 for the development emulator), for networks that let only HTTPS out; an
    /// [`HttpProxy`] may carry it. A port in the connection string's endpoint wins.
    AmqpWebSockets,
}

/// An HTTP proxy that AMQP over WebSockets goes through (an HTTP `CONNECT` tunnel).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    /// The proxy's host.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// Basic authentication: user name and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.credentials.as_ref().map(|(user, _)| user);
        f.debug_struct("HttpProxy").field("host", &self.host).field("port", &self.port).field("user", &user).finish()
    }
}

/// Client settings beyond the connection string.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Lifetime of the SAS tokens the client makes; they are renewed at four fifths of it.
    pub token_lifetime: Duration,
    /// An extra trusted root CA (PEM), besides the web PKI roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// How long one operation (attach, send, management request) may take.
    pub operation_timeout: Duration,
    /// The broker's dialect.
    pub dialect: Dialect,
    /// AMQP over TCP, or over WebSockets.
    pub transport: TransportType,
    /// The HTTP proxy for [`TransportType::AmqpWebSockets`] (none: connect directly).
    pub http_proxy: Option<HttpProxy>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            token_lifetime: Duration::from_secs(3600),
            extra_ca_pem: None,
            operation_timeout: Duration::from_secs(60),
            dialect: Dialect::ServiceBus,
            transport: TransportType::Amqp,
            http_proxy: None,
        }
    }
}

/// How messages are taken from the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReceiveMode {
    /// Locked until settled (or the lock expires).
    #[default]
    PeekLock,
    /// Removed when delivered; no settlement.
    ReceiveAndDelete,
}

/// Receiver settings.
#[derive(Debug, Clone, Default)]
pub struct ReceiverOptions {
    /// Peek-lock or receive-and-delete.
    pub mode: ReceiveMode,
    /// Messages the link keeps requested ahead of `receive` calls (their locks run while
    /// they wait). 0: credit is granted per `receive` call only.
    pub prefetch: u32,
}

/// Session receiver settings.
#[derive(Debug, Clone)]
pub struct SessionReceiverOptions {
    /// Mode and prefetch, as for any receiver.
    pub receiver: ReceiverOptions,
    /// How long to wait for a session to come free, when accepting the next available one.
    pub wait: Duration,
    /// Renew the session lock automatically, before it lapses, for up to this long after the
    /// session is accepted (as the SDK processors do). Zero: renew only when asked.
    pub max_lock_renewal: Duration,
}

impl Default for SessionReceiverOptions {
    fn default() -> Self {
        Self { receiver: ReceiverOptions::default(), wait: Duration::from_secs(60), max_lock_renewal: Duration::ZERO }
    }
}
