//! The named connections, and the senders and receivers opened on them, shared by every call.
//!
//! A sender is cached by connection and channel; a receiver by connection, channel, receive
//! mode and prefetch, so a pull through another connection, or with other options, never gets
//! a worker's receiver. Channel names are compared without case, as Service Bus does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use amqp_servicebus::{ReceiveMode, Receiver, ReceiverOptions, Sender, ServiceBusClient};

/// The connection every host has: where workers receive, and where redirects and delayed
/// retries are sent.
pub const DEFAULT_CONNECTION: &str = "default";

/// A cached receiver's connection, channel (lower case), receive mode and prefetch.
type ReceiverKey = (String, String, ReceiveMode, u32);

/// The named connections and the links opened on them.
pub struct Links {
    connections: HashMap<String, ServiceBusClient>,
    senders: Mutex<HashMap<(String, String), Arc<Sender>>>,
    receivers: Mutex<HashMap<ReceiverKey, Arc<Receiver>>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("connections", &self.names()).finish_non_exhaustive()
    }
}

impl Links {
    /// Links over `connections`, which hold [`DEFAULT_CONNECTION`].
    pub(crate) fn new(connections: HashMap<String, ServiceBusClient>) -> Self {
        debug_assert!(connections.contains_key(DEFAULT_CONNECTION));
        Self { connections, senders: Mutex::new(HashMap::new()), receivers: Mutex::new(HashMap::new()) }
    }

    /// The client of the connection `name`.
    pub fn client(&self, name: &str) -> Option<&ServiceBusClient> {
        self.connections.get(name)
    }

    /// The client of [`DEFAULT_CONNECTION`].
    pub fn default_client(&self) -> &ServiceBusClient {
        self.connections.get(DEFAULT_CONNECTION).expect("the default connection is always configured")
    }

    /// The connections' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.connections.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The sender to `channel` through `connection`, or `None` if there is no such connection.
    pub fn sender(&self, connection: &str, channel: &str) -> Option<Arc<Sender>> {
        let client = self.connections.get(connection)?;
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            senders
                .entry((connection.to_string(), channel.to_ascii_lowercase()))
                .or_insert_with(|| Arc::new(client.sender(channel)))
                .clone(),
        )
    }

    /// The sender to `channel` through [`DEFAULT_CONNECTION`].
    pub fn default_sender(&self, channel: &str) -> Arc<Sender> {
        self.sender(DEFAULT_CONNECTION, channel).expect("the default connection is always configured")
    }

    /// The receiver of `channel` through `connection` with `options`, or `None` if there is no
    /// such connection. A worker and the pulls that ask for the same share it.
    pub fn receiver(&self, connection: &str, channel: &str, options: ReceiverOptions) -> Option<Arc<Receiver>> {
        let client = self.connections.get(connection)?;
        let key = (connection.to_string(), channel.to_ascii_lowercase(), options.mode, options.prefetch);
        let mut receivers = self.receivers.lock().unwrap_or_else(|p| p.into_inner());
        Some(receivers.entry(key).or_insert_with(|| Arc::new(client.receiver_with(channel, options))).clone())
    }

    /// Closes every connection (and with them their links).
    pub async fn close(&self) {
        for client in self.connections.values() {
            client.close().await;
        }
    }
}
