//! The per-process context: connections and their links, the allow-list, the counters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use amqp_servicebus::{Error as SbError, ReceivedMessage, Receiver, ServiceBusClient};
use tokio::sync::mpsc;
use wit_interface::GuestConfiguration;

use crate::delivery::{self, Delivery, DeliveryIds, Settlement};
use crate::links::{DEFAULT_CONNECTION, Links};
use crate::metrics::Metrics;

/// Why a [`MessagingCtx`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// There is no connection named `default`.
    #[error(
        "no connection named \"default\": workers receive, and redirects and delayed retries are sent, through it; \
         add one with MessagingCtxBuilder::connection(\"default\", client)"
    )]
    NoDefaultConnection,
}

/// What every call of a guest shares: connections and their links, the allow-list, counters.
pub struct MessagingCtx {
    links: Arc<Links>,
    /// Channels the guest may send and redirect to (lower case).
    allowed: RwLock<HashSet<String>>,
    metrics: Arc<Metrics>,
    pub(super) updates: Option<mpsc::UnboundedSender<GuestConfiguration>>,
    ids: DeliveryIds,
    /// The guest's `wasi:config/store` values.
    pub(super) config: BTreeMap<String, String>,
    /// Where requests ask their replies to go (a queue that requires sessions).
    reply_queue: Option<String>,
}

impl std::fmt::Debug for MessagingCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingCtx").field("links", &self.links).finish_non_exhaustive()
    }
}

/// Builds a [`MessagingCtx`].
#[derive(Default)]
pub struct MessagingCtxBuilder {
    connections: HashMap<String, ServiceBusClient>,
    allowed: HashSet<String>,
    metrics: Option<Arc<Metrics>>,
    updates: Option<mpsc::UnboundedSender<GuestConfiguration>>,
    config: BTreeMap<String, String>,
    reply_queue: Option<String>,
}

impl MessagingCtxBuilder {
    /// Adds the connection `name` (what the guest's `connect(name)` opens). One must be
    /// named `default`.
    pub fn connection(mut self, name: impl Into<String>, client: ServiceBusClient) -> Self {
        self.connections.insert(name.into(), client);
        self
    }

    /// Lets the guest send and redirect to `channel`.
    pub fn allow(mut self, channel: &str) -> Self {
        self.allowed.insert(channel.to_ascii_lowercase());
        self
    }

    /// Counts into `metrics` (else into counters of its own, see [`MessagingCtx::metrics`]).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Passes the guest's `update-guest-configuration` calls, once checked, to `updates`.
    /// Without it the guest is told the host does not take updates (`not-allowed`).
    pub fn configuration_updates(mut self, updates: mpsc::UnboundedSender<GuestConfiguration>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Gives the guest the `wasi:config/store` value `value` under `key`.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Lets the guest make requests (`request-reply.request`, December 2024 revision): each
    /// asks its replies to come to `queue`, a queue that requires sessions, in a message
    /// session of its own. The guest may also send there.
    pub fn reply_queue(mut self, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        self.allowed.insert(queue.to_ascii_lowercase());
        self.reply_queue = Some(queue);
        self
    }

    /// The context.
    pub fn build(self) -> Result<MessagingCtx, BuildError> {
        if !self.connections.contains_key(DEFAULT_CONNECTION) {
            return Err(BuildError::NoDefaultConnection);
        }
        Ok(MessagingCtx {
            links: Arc::new(Links::new(self.connections)),
            allowed: RwLock::new(self.allowed),
            metrics: self.metrics.unwrap_or_default(),
            updates: self.updates,
            ids: DeliveryIds::new(),
            config: self.config,
            reply_queue: self.reply_queue,
        })
    }
}

impl MessagingCtx {
    /// A builder.
    pub fn builder() -> MessagingCtxBuilder {
        MessagingCtxBuilder::default()
    }

    /// The connections and their links.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The queue requests ask their replies to come to, if the guest may make requests.
    pub fn reply_queue(&self) -> Option<&str> {
        self.reply_queue.as_deref()
    }

    /// Lets the guest send and redirect to `channel` from now on.
    pub fn allow(&self, channel: &str) {
        self.allowed.write().unwrap_or_else(|p| p.into_inner()).insert(channel.to_ascii_lowercase());
    }

    /// Whether the guest may send and redirect to `channel`.
    pub fn may_send_to(&self, channel: &str) -> bool {
        self.allowed.read().unwrap_or_else(|p| p.into_inner()).contains(&channel.to_ascii_lowercase())
    }

    /// A message received from `channel` by `receiver`, made a delivery to give to a call.
    pub fn delivery(&self, channel: &str, message: ReceivedMessage, receiver: Arc<Receiver>) -> Arc<Delivery> {
        Arc::new(Delivery::new(self.ids.next(), channel, message, receiver))
    }

    /// Settles `d` (and counts it); see [`delivery::settle`]. The settlement runs to its end
    /// even if the call that asked for it is cut off at its deadline meanwhile: a settlement
    /// dropped halfway (a redirect's transaction, say) would leave the message neither settled
    /// nor abandoned, locked until its lock expires.
    pub async fn settle(&self, d: &Arc<Delivery>, settlement: Settlement) -> Result<(), SbError> {
        let (links, metrics, d) = (self.links.clone(), self.metrics.clone(), d.clone());
        let settling = tokio::spawn(async move { delivery::settle(&links, &metrics, &d, settlement).await });
        settling.await.unwrap_or_else(|e| {
            Err(SbError::new(amqp_servicebus::ErrorKind::Connection, format!("the settlement task ended early: {e}")))
        })
    }

    /// Settles what a call left unsettled by the matrix of `docs/semantics.md`: complete if
    /// the call `succeeded`, else abandon.
    pub async fn settle_leftovers(&self, deliveries: &[Arc<Delivery>], succeeded: bool) {
        delivery::settle_leftovers(&self.links, &self.metrics, deliveries, succeeded).await;
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.links.close().await;
    }
}
