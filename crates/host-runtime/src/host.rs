//! The host: load the guest, `configure()`, check the channels, run a worker per
//! channel, apply configuration updates, and shut down without losing messages.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ClientOptions, ConnectionString, Error as SbError, ServiceBusClient};
use tokio::sync::{mpsc, watch};
use wit_interface::{GuestConfiguration, Revision};

use crate::config::{self, ChannelOptions, ConfigError, HostConfig};
use crate::engine::{self, EngineSettings, LoadError};
use crate::instance::Instances;
use crate::links::DEFAULT_CONNECTION;
use crate::messaging::{CallCtx, MessagingCtx};
use crate::metrics::Metrics;
use crate::worker::run_worker;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A connection string is invalid.
    #[error("connection {name:?}: {error}")]
    Connection {
        /// The connection's name.
        name: String,
        /// What is wrong.
        error: SbError,
    },
    /// The guest's `configure()` failed.
    #[error("the guest's configure() {0}")]
    Configure(String),
    /// No channel to consume.
    #[error(
        "no channels: a guest of the February 2024 draft names them in configure(); for any guest, host.toml's \
         [guest] channels or --channel NAME add them"
    )]
    NoChannels,
    /// A channel does not exist, or cannot be reached.
    #[error("channel {channel:?}: {error}")]
    Channel {
        /// The channel.
        channel: String,
        /// What the broker said.
        error: SbError,
    },
}

/// Everything the host needs to start.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The guest component.
    pub component: PathBuf,
    /// The `default` connection.
    pub connection: ConnectionString,
    /// `host.toml`.
    pub config: HostConfig,
    /// Engine limits and the compilation cache.
    pub engine: EngineSettings,
    /// Client settings (retries, timeouts) for every connection.
    pub client: ClientOptions,
}

struct Worker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A running host.
pub struct Host {
    rt: Arc<Instances>,
    channels: Arc<std::sync::Mutex<BTreeMap<String, (ChannelOptions, Worker)>>>,
    /// Workers of channels a configuration update removed: they finish their calls, and a
    /// shutdown waits for them as for the others.
    retired: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    hard_stop: watch::Sender<bool>,
    updates: tokio::task::JoinHandle<()>,
    /// Whether the compiled guest came from the cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("channels", &self.channels().iter().map(|c| c.0.clone()).collect::<Vec<_>>())
            .finish()
    }
}

/// What a shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every handler call finished within the grace period.
    pub drained: bool,
}

impl Host {
    /// Loads the guest, runs `configure()`, checks every channel, and starts the workers:
    /// [`Host::prepare`], then [`Prepared::serve`].
    pub async fn start(options: HostOptions) -> Result<Self, StartError> {
        Ok(Self::prepare(options).await?.serve())
    }

    /// Everything [`Host::start`] does but start the workers: load (and compile) the guest,
    /// run `configure()`, check every channel. Nothing is received until [`Prepared::serve`],
    /// so a host told to stop meanwhile stops having taken nothing.
    pub async fn prepare(options: HostOptions) -> Result<Prepared, StartError> {
        // Compiling takes a while; off the runtime's threads, so a caller can stop waiting.
        let (component, settings) = (options.component.clone(), options.engine.clone());
        let guest = tokio::task::spawn_blocking(move || engine::load(&component, settings))
            .await
            .map_err(|e| StartError::Configure(format!("loading the guest stopped: {e}")))??;
        let from_cache = guest.from_cache;
        tracing::info!(
            component = %options.component.display(),
            revision = %guest.revision,
            "the guest targets the {} of wasi:messaging (it exports {})",
            guest.revision,
            guest.revision.export()
        );
        let (updates_tx, updates_rx) = mpsc::unbounded_channel::<GuestConfiguration>();
        let mut ctx = MessagingCtx::builder()
            .connection(
                DEFAULT_CONNECTION,
                ServiceBusClient::from_settings(options.connection.clone(), options.client.clone()),
            )
            .configuration_updates(updates_tx);
        for (name, c) in &options.config.connections {
            let client = ServiceBusClient::new(&c.connection_string, options.client.clone())
                .map_err(|error| StartError::Connection { name: name.clone(), error })?;
            ctx = ctx.connection(name.clone(), client);
        }
        for (key, value) in &options.config.guest.config {
            ctx = ctx.config(key.clone(), value.clone());
        }
        if let Some(queue) = &options.config.guest.reply_queue {
            ctx = ctx.reply_queue(queue.clone());
        }
        let ctx = Arc::new(ctx.build().expect("the default connection was added"));
        let env: Vec<(String, String)> = options.config.guest.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let rt = Arc::new(Instances::new(Arc::new(guest), ctx.clone(), env)?);

        let configured = configure(&rt).await?;
        let initial = plan(&configured, &options.config, rt.revision())?;
        if initial.is_empty() {
            return Err(StartError::NoChannels);
        }
        for channel in initial.keys().chain(&options.config.guest.reply_queue) {
            ctx.links()
                .default_client()
                .check_entity(channel)
                .await
                .map_err(|error| StartError::Channel { channel: channel.clone(), error })?;
        }
        for channel in initial.keys().chain(&options.config.guest.allowed_targets) {
            ctx.allow(channel);
        }
        Ok(Prepared { rt, initial, host_config: options.config, updates_rx, from_cache })
    }

    /// The channels being consumed, with their options.
    pub fn channels(&self) -> Vec<(String, ChannelOptions)> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, (o, _))| (c.clone(), o.clone()))
            .collect()
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.rt.ctx().metrics().clone()
    }

    /// Stops receiving, lets handler calls finish for up to `grace`, then stops the rest
    /// (their messages are abandoned), and closes the connections.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.rt.ctx().metrics().stopping();
        self.updates.abort();
        let workers: Vec<(String, Worker)> =
            std::mem::take(&mut *self.channels.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .map(|(c, (_, w))| (c, w))
                .collect();
        for (_, w) in &workers {
            let _ = w.stop.send(true);
        }
        let mut tasks: Vec<_> = workers.into_iter().map(|(_, w)| w.task).collect();
        tasks.append(&mut self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        let drained = tokio::time::timeout(grace, futures_join_all(&mut tasks)).await.is_ok();
        if !drained {
            tracing::warn!(
                "grace period of {grace:?} over; stopping the remaining handler calls and abandoning their messages"
            );
            let _ = self.hard_stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(30), futures_join_all(&mut tasks)).await;
        }
        self.rt.ctx().close().await;
        ShutdownReport { drained }
    }
}

/// A host ready to serve: its guest loaded and configured, its channels checked, and no
/// worker started yet.
pub struct Prepared {
    rt: Arc<Instances>,
    initial: BTreeMap<String, ChannelOptions>,
    host_config: HostConfig,
    updates_rx: mpsc::UnboundedReceiver<GuestConfiguration>,
    from_cache: bool,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("channels", &self.initial.keys().collect::<Vec<_>>()).finish()
    }
}

impl Prepared {
    /// Starts a worker per channel, and follows the guest's configuration updates.
    pub fn serve(self) -> Host {
        let Self { rt, initial, host_config, mut updates_rx, from_cache } = self;
        let (hard_stop, _) = watch::channel(false);
        let channels = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let retired = Arc::new(std::sync::Mutex::new(Vec::<tokio::task::JoinHandle<()>>::new()));
        for (channel, opts) in initial {
            start_worker(&rt, &channels, &hard_stop, channel, opts);
        }

        // Configuration updates from the guest: start and stop workers.
        let updates = {
            let rt = rt.clone();
            let channels = channels.clone();
            let retired = retired.clone();
            let hard_stop = hard_stop.clone();
            tokio::spawn(async move {
                while let Some(gc) = updates_rx.recv().await {
                    let next = match plan(&gc, &host_config, rt.revision()) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!("update-guest-configuration ignored: {e}");
                            continue;
                        }
                    };
                    let current: Vec<String> =
                        channels.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
                    for removed in current.iter().filter(|c| !next.contains_key(*c)) {
                        if let Some((_, w)) = channels.lock().unwrap_or_else(|p| p.into_inner()).remove(removed) {
                            tracing::info!(channel = %removed, "channel removed by update-guest-configuration; its worker finishes its calls and stops");
                            let _ = w.stop.send(true);
                            rt.ctx().metrics().worker_gone(removed);
                            let mut retired = retired.lock().unwrap_or_else(|p| p.into_inner());
                            retired.retain(|t| !t.is_finished());
                            retired.push(w.task);
                        }
                    }
                    for (channel, opts) in next {
                        if !current.contains(&channel) {
                            rt.ctx().allow(&channel);
                            start_worker(&rt, &channels, &hard_stop, channel, opts);
                        }
                    }
                }
            })
        };
        Host { rt, channels, retired, hard_stop, updates, from_cache }
    }
}

async fn futures_join_all(tasks: &mut [tokio::task::JoinHandle<()>]) {
    for t in tasks.iter_mut() {
        let _ = t.await;
    }
}

fn start_worker(
    rt: &Arc<Instances>,
    channels: &std::sync::Mutex<BTreeMap<String, (ChannelOptions, Worker)>>,
    hard_stop: &watch::Sender<bool>,
    channel: String,
    opts: ChannelOptions,
) {
    tracing::info!(
        %channel,
        max_concurrent_calls = opts.max_concurrent_calls,
        prefetch = opts.prefetch,
        max_batch_size = opts.max_batch_size,
        max_auto_lock_renewal = ?opts.max_auto_lock_renewal,
        handler_timeout = ?opts.handler_timeout,
        receive_mode = ?opts.receive_mode,
        "worker starting"
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_worker(rt.clone(), channel.clone(), opts.clone(), stop_rx, hard_stop.subscribe()));
    channels.lock().unwrap_or_else(|p| p.into_inner()).insert(channel, (opts, Worker { stop, task }));
}

/// Calls the guest's `configure()` in an instance of its own: what it asked for. A guest of the
/// December 2024 revision has no `configure()`, and asks for nothing (the host names its
/// channels).
async fn configure(rt: &Instances) -> Result<GuestConfiguration, StartError> {
    let mut store = rt.store(CallCtx::new("(configure)", &[]));
    let Some(call) = tokio::time::timeout(Duration::from_secs(30), rt.configure(&mut store)).await.transpose() else {
        return Ok(GuestConfiguration { channels: Vec::new(), extensions: None });
    };
    match call {
        Err(_) => Err(StartError::Configure("did not return within 30 s".into())),
        Ok(Err(trap)) => Err(StartError::Configure(format!("trapped: {trap:#}"))),
        Ok(Ok(Err(e))) => Err(StartError::Configure(format!("returned an error: {e}"))),
        Ok(Ok(Ok(gc))) => {
            tracing::info!(channels = ?gc.channels, extensions = ?gc.extensions, "configure() returned");
            Ok(gc)
        }
    }
}

/// The channels to consume and their options: the guest's plus host.toml's, merged. A guest
/// of the December 2024 revision handles one message a call.
fn plan(
    gc: &GuestConfiguration,
    host: &HostConfig,
    revision: Revision,
) -> Result<BTreeMap<String, ChannelOptions>, ConfigError> {
    let guest = config::guest_options(gc.extensions.as_deref().unwrap_or_default())?;
    let mut seen = HashSet::new();
    let mut out = BTreeMap::new();
    for channel in gc.channels.iter().chain(&host.guest.channels) {
        let channel = channel.trim_matches('/').to_string();
        if channel.is_empty() || !seen.insert(channel.to_ascii_lowercase()) {
            continue;
        }
        let opts = config::channel_options(&channel, &guest, host)?;
        if revision == Revision::Dec2024 && opts.max_batch_size > 1 {
            return Err(ConfigError::Invalid {
                at: format!("channel {channel:?}"),
                key: "max-batch-size".into(),
                message: format!(
                    "is {}, but a guest of the December 2024 revision takes one message a call \
                     (incoming-handler.handle): remove it, or set it to 1",
                    opts.max_batch_size
                ),
            });
        }
        out.insert(channel, opts);
    }
    Ok(out)
}
