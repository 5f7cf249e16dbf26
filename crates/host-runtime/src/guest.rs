//! What a guest instance sees: its store data, and the messaging imports.
//!
//! Each handler call gets a fresh [`State`] holding the deliveries given to that
//! call (by `delivery-id`). Settlement functions look the delivery up there, so a
//! guest can settle only what it was given; see `docs/semantics.md`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use amqp_servicebus::{
    Error as SbError, ErrorKind as SbErrorKind, OrderedMap, ReceivedMessage, Receiver, ReceiverOptions, Sender,
    ServiceBusClient, SimpleValue,
};
use tokio::sync::mpsc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wit_interface::wasi_messaging::{consumer, messaging_types, producer};
use wit_interface::{Client, ErrorKind, GuestConfiguration, GuestError, Message, metadata, settlement};

use crate::convert;
use crate::metrics::Metrics;

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Abandoned,
    DeadLettered,
    Deferred,
    Redirected,
    DelayedRetry,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryState {
    Unsettled,
    /// A settlement is on its way to the broker.
    Settling,
    Settled(Outcome),
    LockLost,
}

/// One message given to a handler call.
pub(crate) struct Delivery {
    pub(crate) id: String,
    pub(crate) channel: String,
    pub(crate) message: ReceivedMessage,
    pub(crate) receiver: Arc<Receiver>,
    pub(crate) received_at: tokio::time::Instant,
    pub(crate) state: Mutex<(DeliveryState, Option<SystemTime>)>,
}

impl Delivery {
    pub(crate) fn state(&self) -> DeliveryState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub(crate) fn set(&self, s: DeliveryState) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = s;
    }

    /// Records a lost lock, unless the delivery was settled meanwhile (a renewal racing a
    /// completion sees the lock gone because the message is); returns whether it was recorded.
    pub(crate) fn mark_lock_lost(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == DeliveryState::Unsettled {
            state.0 = DeliveryState::LockLost;
            true
        } else {
            false
        }
    }

    pub(crate) fn locked_until(&self) -> Option<SystemTime> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1.or(self.message.locked_until)
    }

    pub(crate) fn set_locked_until(&self, t: SystemTime) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(t);
    }
}

/// A cached receiver's connection, channel (lower case), receive mode and prefetch.
pub(crate) type ReceiverKey = (String, String, amqp_servicebus::ReceiveMode, u32);

/// What every instance of the guest shares: connections, the allow-list, receivers, metrics.
pub(crate) struct Shared {
    pub(crate) connections: HashMap<String, ServiceBusClient>,
    /// Channels the guest may send to (lower-case).
    pub(crate) allowed: RwLock<HashSet<String>>,
    senders: Mutex<HashMap<(String, String), Arc<Sender>>>,
    /// By connection, channel (lower case), receive mode and prefetch: a pull through another
    /// connection, or with other options, never gets a worker's receiver.
    pub(crate) receivers: Mutex<HashMap<ReceiverKey, Arc<Receiver>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config_updates: mpsc::UnboundedSender<GuestConfiguration>,
    next_delivery: AtomicU64,
    /// Random, drawn once: delivery ids are a counter plus this, so they differ between host
    /// processes without a random draw (a syscall) per message.
    process_tag: String,
    pub(crate) env: Vec<(String, String)>,
}

impl Shared {
    pub(crate) fn new(
        connections: HashMap<String, ServiceBusClient>,
        allowed: HashSet<String>,
        metrics: Arc<Metrics>,
        config_updates: mpsc::UnboundedSender<GuestConfiguration>,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            connections,
            allowed: RwLock::new(allowed),
            senders: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            metrics,
            config_updates,
            next_delivery: AtomicU64::new(0),
            process_tag: uuid::Uuid::new_v4().simple().to_string(),
            env,
        }
    }

    pub(crate) fn default_client(&self) -> &ServiceBusClient {
        self.connections.get("default").expect("the default connection is always configured")
    }

    /// The receiver of `channel` through `connection` with `options`, shared by a worker and by
    /// pulls that ask for the same.
    pub(crate) fn receiver(
        &self,
        connection: &str,
        channel: &str,
        options: ReceiverOptions,
        client: &ServiceBusClient,
    ) -> Arc<Receiver> {
        let key = (connection.to_string(), channel.to_ascii_lowercase(), options.mode, options.prefetch);
        self.receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(client.receiver_with(channel, options)))
            .clone()
    }

    fn sender(&self, connection: &str, channel: &str) -> Option<Arc<Sender>> {
        let client = self.connections.get(connection)?;
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            senders
                .entry((connection.to_string(), channel.to_ascii_lowercase()))
                .or_insert_with(|| Arc::new(client.sender(channel)))
                .clone(),
        )
    }

    pub(crate) fn may_send_to(&self, channel: &str) -> bool {
        self.allowed.read().unwrap_or_else(|p| p.into_inner()).contains(&channel.to_ascii_lowercase())
    }

    /// A new delivery for a handler call.
    pub(crate) fn delivery(&self, channel: &str, message: ReceivedMessage, receiver: Arc<Receiver>) -> Arc<Delivery> {
        let n = self.next_delivery.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::new(Delivery {
            id: format!("d{n}-{}", self.process_tag),
            channel: channel.to_string(),
            message,
            receiver,
            received_at: tokio::time::Instant::now(),
            state: Mutex::new((DeliveryState::Unsettled, None)),
        })
    }
}

/// The store data of one instance.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    pub(crate) shared: Arc<Shared>,
    pub(crate) deliveries: HashMap<String, Arc<Delivery>>,
    last_error: String,
    /// The channel the call is for (pulled messages may come from others).
    pub(crate) channel: String,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for State {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.memory_growing(current, desired, maximum)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

impl State {
    /// Store data for one call; `deliveries` are the messages given to it.
    pub(crate) fn new(shared: Arc<Shared>, channel: &str, deliveries: &[Arc<Delivery>], max_memory: usize) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout().inherit_stderr().envs(&shared.env);
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new().memory_size(max_memory).trap_on_grow_failure(false).build(),
            shared,
            deliveries: deliveries.iter().map(|d| (d.id.clone(), d.clone())).collect(),
            last_error: String::new(),
            channel: channel.to_string(),
        }
    }

    /// Records an error for `error.trace` and hands the guest a handle on it.
    fn fail<T>(
        &mut self,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> wasmtime::Result<Result<T, Resource<GuestError>>> {
        let message = message.into();
        self.last_error = format!("{kind}: {message}");
        tracing::debug!(channel = %self.channel, %kind, "guest call failed: {message}");
        Ok(Err(self.table.push(GuestError::new(kind, message))?))
    }

    fn fail_sb<T>(&mut self, e: &SbError) -> wasmtime::Result<Result<T, Resource<GuestError>>> {
        self.fail(kind_of(e), e.to_string())
    }

    /// Takes an error handle the guest returned from an export, freeing it.
    pub(crate) fn take_error(&mut self, e: Resource<GuestError>) -> GuestError {
        self.table
            .delete(e)
            .unwrap_or_else(|_| GuestError::new(ErrorKind::Other, "the guest returned an unknown error handle"))
    }

    /// The delivery named by a message's `delivery-id`.
    fn find(&mut self, m: &Message) -> Result<Arc<Delivery>, (ErrorKind, String)> {
        let id = m.metadata.iter().flatten().find(|(k, _)| k == metadata::DELIVERY_ID).map(|(_, v)| v.as_str());
        let Some(id) = id else {
            return Err((
                ErrorKind::UnknownDelivery,
                "the message has no delivery-id: only messages given to this call can be settled".into(),
            ));
        };
        match self.deliveries.get(id) {
            Some(d) => Ok(d.clone()),
            None => Err((ErrorKind::UnknownDelivery, format!("delivery-id {id:?} was not given to this call"))),
        }
    }

    /// The delivery of `m`, if it can still be settled.
    fn settleable(&mut self, m: &Message) -> Result<Arc<Delivery>, (ErrorKind, String)> {
        let d = self.find(m)?;
        if d.message.lock_token.is_none() {
            return Err((
                ErrorKind::NotAllowed,
                format!(
                    "channel {:?} is in receive-and-delete mode: its messages are settled when received",
                    d.channel
                ),
            ));
        }
        match d.state() {
            DeliveryState::Unsettled => Ok(d),
            DeliveryState::Settled(o) => Err((
                ErrorKind::AlreadySettled,
                format!("message {} was already settled ({o:?})", d.message.sequence_number),
            )),
            DeliveryState::LockLost => {
                Err((ErrorKind::LockLost, format!("the lock on message {} was lost", d.message.sequence_number)))
            }
            DeliveryState::Settling => {
                Err((ErrorKind::AlreadySettled, format!("message {} is being settled", d.message.sequence_number)))
            }
        }
    }

    async fn settle(&mut self, m: Message, op: Settlement) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        let d = match self.settleable(&m) {
            Ok(d) => d,
            Err((kind, msg)) => return self.fail(kind, msg),
        };
        match apply(&self.shared, &d, op).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => self.fail_sb(&e),
        }
    }

    /// The connection a client handle names, and its client (the handle is consumed).
    fn client(&mut self, c: Resource<Client>) -> wasmtime::Result<(String, ServiceBusClient)> {
        let client = self.table.delete(c)?;
        let name = client.connection().to_string();
        let sb = self.shared.connections.get(&name).cloned().expect("connect hands out only configured names");
        Ok((name, sb))
    }
}

/// A settlement requested by the guest, or by the host's matrix.
pub(crate) enum Settlement {
    Complete,
    Abandon,
    DeadLetter { reason: String, description: String },
    Defer,
    Redirect(String),
    AbandonWithDelay(Duration),
}

/// Applies a settlement to a delivery and records its outcome.
pub(crate) async fn apply(shared: &Shared, d: &Delivery, op: Settlement) -> Result<(), SbError> {
    // From here on a racing lock renewal leaves the delivery alone.
    d.set(DeliveryState::Settling);
    let r = &d.receiver;
    let m = &d.message;
    let outcome = match op {
        Settlement::Complete => r.complete(m).await.map(|_| Outcome::Completed),
        Settlement::Abandon => r.abandon(m, OrderedMap::new()).await.map(|_| Outcome::Abandoned),
        Settlement::DeadLetter { reason, description } => {
            r.dead_letter(m, &reason, &description).await.map(|_| Outcome::DeadLettered)
        }
        Settlement::Defer => r.defer(m).await.map(|_| Outcome::Deferred),
        Settlement::Redirect(to) => {
            let sender = shared.sender("default", &to).expect("the default connection exists");
            forward(r, m, &sender, copy_of(m)).await.map(|_| Outcome::Redirected)
        }
        Settlement::AbandonWithDelay(delay) => {
            let sender = shared.sender("default", &d.channel).expect("the default connection exists");
            let mut copy = copy_of(m);
            let retries = match m.application_properties.get("delayed-retry-count") {
                Some(SimpleValue::Long(n)) => *n + 1,
                Some(SimpleValue::Int(n)) => i64::from(*n) + 1,
                Some(SimpleValue::String(s)) => s.parse::<i64>().unwrap_or(0) + 1,
                _ => 1,
            };
            copy.application_properties.insert("delayed-retry-count".into(), SimpleValue::Long(retries));
            copy.scheduled_enqueue_time = Some(SystemTime::now() + delay);
            forward(r, m, &sender, copy).await.map(|_| Outcome::DelayedRetry)
        }
    };
    match outcome {
        Ok(o) => {
            d.set(DeliveryState::Settled(o));
            shared.metrics.settled(&d.channel, o);
            Ok(())
        }
        Err(e) => {
            if e.is_lock_lost() {
                d.set(DeliveryState::LockLost);
                shared.metrics.lock_lost(&d.channel);
            } else {
                d.set(DeliveryState::Unsettled);
            }
            Err(e)
        }
    }
}

/// Sends `copy` and completes `m` in one broker transaction. Where there are no transactions
/// (a generic AMQP broker, or a message received by sequence number), sends and then completes:
/// a failed completion leaves the original to be redelivered, so at most one extra copy per failed
/// completion, and nothing is lost.
async fn forward(
    r: &Receiver,
    m: &ReceivedMessage,
    sender: &Sender,
    copy: amqp_servicebus::Message,
) -> Result<(), SbError> {
    match r.complete_and_send(m, sender, copy.clone()).await {
        Err(e) if e.kind() == SbErrorKind::NotSupported => {
            sender.send(copy).await?;
            r.complete(m).await
        }
        other => other,
    }
}

/// A received message as a new message with the same body and properties.
fn copy_of(m: &ReceivedMessage) -> amqp_servicebus::Message {
    let mut c = amqp_servicebus::Message::new(m.body.clone());
    c.message_id = m.message_id.clone();
    c.correlation_id = m.correlation_id.clone();
    c.content_type = m.content_type.clone();
    c.subject = m.subject.clone();
    c.to = m.to.clone();
    c.reply_to = m.reply_to.clone();
    c.session_id = m.session_id.clone();
    c.reply_to_session_id = m.reply_to_session_id.clone();
    c.partition_key = m.partition_key.clone();
    c.application_properties = m.application_properties.clone();
    c
}

/// The guest-visible kind of a client error.
pub(crate) fn kind_of(e: &SbError) -> ErrorKind {
    match e.kind() {
        SbErrorKind::LockLost | SbErrorKind::SessionLockLost => ErrorKind::LockLost,
        SbErrorKind::NotFound => ErrorKind::NotFound,
        SbErrorKind::Unauthorized => ErrorKind::Unauthorized,
        SbErrorKind::MessageTooLarge => ErrorKind::TooLarge,
        SbErrorKind::Timeout => ErrorKind::Timeout,
        SbErrorKind::ServerBusy | SbErrorKind::Connection | SbErrorKind::SessionCannotBeLocked => {
            ErrorKind::Unavailable
        }
        SbErrorKind::InvalidConnectionString | SbErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
        SbErrorKind::NotSupported | SbErrorKind::InvalidOperation => ErrorKind::NotAllowed,
        _ => ErrorKind::Other,
    }
}

impl messaging_types::Host for State {}

impl messaging_types::HostClient for State {
    async fn connect(&mut self, name: String) -> wasmtime::Result<Result<Resource<Client>, Resource<GuestError>>> {
        if !self.shared.connections.contains_key(&name) {
            let mut known: Vec<&String> = self.shared.connections.keys().collect();
            known.sort();
            return self.fail(ErrorKind::NotFound, format!("no connection named {name:?}; configured: {known:?}"));
        }
        Ok(Ok(self.table.push(Client::new(name))?))
    }

    async fn drop(&mut self, rep: Resource<Client>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl messaging_types::HostError for State {
    async fn trace(&mut self) -> wasmtime::Result<String> {
        Ok(self.last_error.clone())
    }

    async fn drop(&mut self, rep: Resource<GuestError>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl producer::Host for State {
    async fn send(
        &mut self,
        c: Resource<Client>,
        ch: String,
        m: Vec<Message>,
    ) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        let connection = self.table.get(&c)?.connection().to_string();
        let _ = self.client(c)?; // The draft's send consumes the handle.
        if !self.shared.may_send_to(&ch) {
            return self.fail(ErrorKind::NotAllowed, format!("channel {ch:?} is not in this guest's allow-list"));
        }
        let mut messages = Vec::with_capacity(m.len());
        for msg in &m {
            match convert::from_guest(msg) {
                Ok(sb) => messages.push(sb),
                Err(e) => return self.fail(ErrorKind::InvalidArgument, e.to_string()),
            }
        }
        let sender = self.shared.sender(&connection, &ch).expect("connect hands out only configured names");
        let count = messages.len() as u64;
        let result = if messages.len() == 1 {
            sender.send(messages.pop().expect("one message")).await
        } else {
            sender.send_batch(messages).await
        };
        match result {
            Ok(()) => {
                self.shared.metrics.sent(&self.channel, count);
                Ok(Ok(()))
            }
            Err(e) => self.fail_sb(&e),
        }
    }
}

impl State {
    async fn pull(
        &mut self,
        c: Resource<Client>,
        ch: String,
        wait: Duration,
    ) -> wasmtime::Result<Result<Vec<Message>, Resource<GuestError>>> {
        let (connection, client) = self.client(c)?;
        if let Err(e) = client.check_entity(&ch).await {
            return self.fail_sb(&e);
        }
        let receiver = self.shared.receiver(&connection, &ch, ReceiverOptions::default(), &client);
        match receiver.receive(16, wait).await {
            Ok(got) => {
                let mut out = Vec::with_capacity(got.len());
                for m in got {
                    self.shared.metrics.received(&ch, 1);
                    let d = self.shared.delivery(&ch, m, receiver.clone());
                    out.push(convert::to_guest(&d.message, &ch, &d.id));
                    self.deliveries.insert(d.id.clone(), d);
                }
                Ok(Ok(out))
            }
            Err(e) => self.fail_sb(&e),
        }
    }
}

impl consumer::Host for State {
    async fn subscribe_try_receive(
        &mut self,
        c: Resource<Client>,
        ch: String,
        t_milliseconds: u32,
    ) -> wasmtime::Result<Result<Option<Vec<Message>>, Resource<GuestError>>> {
        Ok(self
            .pull(c, ch, Duration::from_millis(u64::from(t_milliseconds)))
            .await?
            .map(|v| (!v.is_empty()).then_some(v)))
    }

    async fn subscribe_receive(
        &mut self,
        c: Resource<Client>,
        ch: String,
    ) -> wasmtime::Result<Result<Vec<Message>, Resource<GuestError>>> {
        // Waits until something arrives; the handler's deadline bounds it.
        let connection = self.table.get(&c)?.connection().to_string();
        let mut handle = c;
        loop {
            let got = self.pull(handle, ch.clone(), Duration::from_secs(30)).await?;
            match got {
                Ok(v) if v.is_empty() => handle = self.table.push(Client::new(connection.clone()))?,
                other => return Ok(other),
            }
        }
    }

    async fn update_guest_configuration(
        &mut self,
        gc: GuestConfiguration,
    ) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        for ch in &gc.channels {
            if let Err(e) = self.shared.default_client().check_entity(ch).await {
                return self.fail_sb(&e);
            }
        }
        if let Err(e) = crate::config::guest_options(gc.extensions.as_deref().unwrap_or_default()) {
            return self.fail(ErrorKind::InvalidArgument, e.to_string());
        }
        match self.shared.config_updates.send(gc) {
            Ok(()) => Ok(Ok(())),
            Err(_) => self.fail(ErrorKind::Unavailable, "the host is shutting down"),
        }
    }

    async fn complete_message(&mut self, m: Message) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        if self.is_receive_and_delete(&m) {
            return Ok(Ok(())); // Already removed when delivered.
        }
        self.settle(m, Settlement::Complete).await
    }

    async fn abandon_message(&mut self, m: Message) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        self.settle(m, Settlement::Abandon).await
    }
}

impl State {
    fn is_receive_and_delete(&self, m: &Message) -> bool {
        let id = m.metadata.iter().flatten().find(|(k, _)| k == metadata::DELIVERY_ID).map(|(_, v)| v.as_str());
        id.and_then(|id| self.deliveries.get(id)).is_some_and(|d| d.message.lock_token.is_none())
    }
}

impl settlement::Host for State {
    async fn kind(&mut self, e: Resource<GuestError>) -> wasmtime::Result<settlement::ErrorKind> {
        Ok(self.table.get(&e)?.kind().into())
    }

    async fn new_error(&mut self, detail: String) -> wasmtime::Result<Resource<GuestError>> {
        self.last_error = detail.clone();
        Ok(self.table.push(GuestError::new(ErrorKind::Other, detail))?)
    }

    async fn redirect(&mut self, m: Message, to: String) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        if !self.shared.may_send_to(&to) {
            return self.fail(ErrorKind::NotAllowed, format!("channel {to:?} is not in this guest's allow-list"));
        }
        self.settle(m, Settlement::Redirect(to)).await
    }

    async fn dead_letter(
        &mut self,
        m: Message,
        reason: String,
        description: Option<String>,
    ) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        if reason.trim().is_empty() {
            return self.fail(ErrorKind::InvalidArgument, "the dead-letter reason must not be empty");
        }
        if reason.len() > 4096 || description.as_ref().is_some_and(|d| d.len() > 4096) {
            return self
                .fail(ErrorKind::InvalidArgument, "the dead-letter reason and description are limited to 4096 bytes");
        }
        self.settle(m, Settlement::DeadLetter { reason, description: description.unwrap_or_default() }).await
    }

    async fn defer(&mut self, m: Message) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        self.settle(m, Settlement::Defer).await
    }

    async fn renew_lock(&mut self, m: Message) -> wasmtime::Result<Result<u64, Resource<GuestError>>> {
        let d = match self.settleable(&m) {
            Ok(d) => d,
            Err((kind, msg)) => return self.fail(kind, msg),
        };
        match d.receiver.renew_lock(&d.message).await {
            Ok(until) => {
                d.set_locked_until(until);
                self.shared.metrics.renewed(&d.channel);
                Ok(Ok(until.duration_since(std::time::UNIX_EPOCH).map(|x| x.as_millis() as u64).unwrap_or(0)))
            }
            Err(e) => {
                if e.is_lock_lost() && d.mark_lock_lost() {
                    self.shared.metrics.lock_lost(&d.channel);
                }
                self.fail_sb(&e)
            }
        }
    }

    async fn abandon_with_delay(
        &mut self,
        m: Message,
        delay_ms: u32,
    ) -> wasmtime::Result<Result<(), Resource<GuestError>>> {
        self.settle(m, Settlement::AbandonWithDelay(Duration::from_millis(u64::from(delay_ms)))).await
    }
}
