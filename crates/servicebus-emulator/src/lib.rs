//! An embedded Azure Service Bus emulator: an AMQP 1.0 broker that speaks the
//! Service Bus dialect well enough for the official SDKs to use it unchanged.
//!
//! No Docker, no SQL: it starts in milliseconds, inside a test (`127.0.0.1:0`) or
//! as the `servicebus-emulator` binary, and it loads Microsoft's emulator
//! `Config.json` as it is.
//!
//! What it implements: SASL (`MSSBCBS`, `ANONYMOUS`, `PLAIN`), `$cbs` put-token with
//! SAS validation, queues and topic subscriptions with peek-lock and
//! receive-and-delete, the settled echoes the SDKs wait for, lock expiry and
//! `MaxDeliveryCount` dead-lettering, dead-letter queues, deferral, scheduling,
//! TTL, message sessions (`RequiresSession`: session receivers, session locks and state),
//! subscription rules (SQL and correlation filters, SQL actions), duplicate detection,
//! auto-forwarding (`ForwardTo`, `ForwardDeadLetteredMessagesTo`), quotas, the `$management`
//! operations, local transactions (`$coordinator`), TLS, AMQP over WebSockets, and the
//! management endpoint (`/health` and the administration REST API), and, with a data
//! directory, durability across restarts and crashes.
//! `docs/emulator.md` says what each does and where it differs from Azure.
//!
//! # Layout
//! - `codec`: protocol headers, frames, message sections.
//! - `connection`: one connection's engine, a file per protocol layer (SASL, AMQP sessions,
//!   links, session receivers, inbound transfers, nodes, outbound transfers, settlement).
//! - `management`: `$cbs` and `$management` requests.
//! - `admin`: the management endpoint (HTTP): `/health` and the administration REST API.
//! - `transaction`: the coordinator's transactions.
//! - `namespace`: the entities, topics and their fan-out, how addresses resolve, and the
//!   forwarding links between entities.
//! - `queue`, `message`: an entity's messages, locks, message sessions, duplicate detection
//!   and forwarding.
//! - `storage`: the data directory (`--data-dir`): what entities write so that what the
//!   emulator acknowledged survives a crash, committed in groups by one writer thread.
//! - [`rules`]: subscription rules and their SQL dialect.
//! - [`auth`]: keys, SAS tokens, grants.
//! - [`config`]: Microsoft's `Config.json` schema.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), servicebus_emulator::StartError> {
//! use servicebus_emulator::{Config, Emulator};
//!
//! let emulator = Emulator::builder().config(Config::default()).bind("127.0.0.1:0".parse().unwrap()).start().await?;
//! println!("connect with: {}", emulator.connection_string());
//! assert_eq!(emulator.queue_counts("orders").unwrap().active, 0);
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod admin;
pub mod auth;
mod codec;
pub mod config;
mod connection;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod limits;
mod management;
mod message;
mod namespace;
mod queue;
pub mod rules;
mod storage;
mod transaction;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use auth::{Keys, Rights};
pub use config::{Config, ConfigError, QueueConfig, TopicConfig, TopicProperties};
pub use limits::Limits;
pub use queue::{DEFAULT_DUPLICATE_DETECTION_WINDOW, DEFAULT_MAX_SIZE_MEGABYTES, QueueCounts, QueueProperties};
pub use rules::{CorrelationFilter, RuleConfig, RuleFilter};
pub use storage::{Fsync, StorageError};

use connection::{Control, Shared};

/// The default maximum message size: 256 KiB, as Microsoft's emulator and the Standard tier.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// The default memory budget for messages: 2 GiB, room for a laptop's tests and well short
/// of its memory.
pub const DEFAULT_MAX_MEMORY: u64 = 2 << 30;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The address is taken.
    #[error(
        "cannot listen on {addr}: the address is already in use (stop the other process, or choose another port; 0 picks a free one)"
    )]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Any other failure to listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The entities cannot be made as configured (a name used twice, a rule that does not
    /// compile, a forwarding target that is not a queue or topic).
    #[error("the configuration cannot be served: {0}")]
    Config(String),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The data directory could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// TLS settings: PEM files.
#[derive(Debug, Clone)]
struct TlsSettings {
    cert: PathBuf,
    key: PathBuf,
    addr: SocketAddr,
}

/// Configures and starts an [`Emulator`].
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    config: Config,
    keys: Option<Keys>,
    addr: SocketAddr,
    tls: Option<TlsSettings>,
    /// AMQP over WebSockets: plain, and with TLS (the certificate of `tls`).
    ws_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    /// The management endpoint (HTTP, and HTTPS with the certificate of `tls`).
    management_addr: Option<SocketAddr>,
    max_message_size: usize,
    max_memory: u64,
    limits: Limits,
    /// Where acknowledged changes are kept (`--data-dir`), and when they are synced.
    data_dir: Option<PathBuf>,
    fsync: Fsync,
}

/// A running emulator. Dropping it without [`Emulator::shutdown`] stops accepting
/// and leaves open connections to end with their peers.
pub struct Emulator {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    connections: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Control>>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("local_addr", &self.local_addr).field("tls_addr", &self.tls_addr).finish()
    }
}

impl Emulator {
    /// A builder with the default config (the demo's queues), the default key, and `127.0.0.1:5672`.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            config: Config::default(),
            keys: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 5672)),
            tls: None,
            ws_addr: None,
            wss_addr: None,
            management_addr: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_memory: DEFAULT_MAX_MEMORY,
            limits: Limits::default(),
            data_dir: None,
            fsync: Fsync::default(),
        }
    }

    /// The plain AMQP listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address, if TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The AMQP-over-WebSockets listener's address (`ws://<addr>/$servicebus/websocket`), if on.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The AMQP-over-WebSockets-with-TLS listener's address (`wss://`), if on.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// The management endpoint's address (`GET /health`, the administration REST API), if on.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// A connection string for the plain listener with the first configured key, as the SDKs take it.
    pub fn connection_string(&self) -> String {
        let (name, key) = self.shared.keys.first().unwrap_or(("none", "none"));
        format!(
            "Endpoint=sb://{};SharedAccessKeyName={name};SharedAccessKey={key};UseDevelopmentEmulator=true",
            self.local_addr
        )
    }

    /// Counts of the messages of a queue, subscription (`topic/Subscriptions/sub`) or DLQ (`q/$DeadLetterQueue`).
    pub fn queue_counts(&self, entity: &str) -> Option<QueueCounts> {
        self.shared.namespace.counts(entity)
    }

    /// The bytes its messages take now, counted against [`EmulatorBuilder::max_memory`].
    pub fn memory_used(&self) -> u64 {
        self.shared.namespace.memory_used()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Test hook: drops every open connection without a `close` frame, as a network failure would.
    /// Returns how many were dropped.
    pub fn drop_connections(&self) -> usize {
        let conns = self.connections.lock().map(|c| c.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        conns.iter().filter(|tx| tx.send(Control::Kill).is_ok()).count()
    }

    /// Test hook: puts a message on `queue` whose body sections are `body`, stored and
    /// delivered byte for byte without the checks every sent message passes, as a broker
    /// that relays what it does not understand would. Receivers must survive what it
    /// delivers. Returns false if there is no such queue, or it is full.
    pub fn enqueue_unchecked(&self, queue: &str, body: &[u8]) -> bool {
        match self.shared.namespace.resolve(queue) {
            Ok((namespace::Node::Queue(q), _)) => {
                q.enqueue(vec![message::StoredMessage::unchecked(bytes::Bytes::copy_from_slice(body))]).is_ok()
            }
            _ => false,
        }
    }

    /// Stops accepting, sends `close` to every connection, and waits (up to 5 s) for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let conns = self.connections.lock().map(|c| c.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        for tx in conns {
            let _ = tx.send(Control::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(storage) = self.shared.namespace.storage() {
            storage.close();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl EmulatorBuilder {
    /// The entities to serve.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The shared access keys tokens are checked against. Without this, the config's
    /// `SharedAccessPolicies`, else [`Keys::default`].
    pub fn keys(mut self, keys: Keys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The plain AMQP listener's address; port 0 picks a free port (see [`Emulator::local_addr`]).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Also listen with TLS on `addr`, with a PEM certificate chain and private key.
    pub fn tls(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>, addr: SocketAddr) -> Self {
        self.tls = Some(TlsSettings { cert: cert.as_ref().into(), key: key.as_ref().into(), addr });
        self
    }

    /// Also serve AMQP over WebSockets (at `/$servicebus/websocket`, subprotocol `AMQPWSB10`
    /// or `amqp`) on `addr`, without TLS.
    pub fn websocket(mut self, addr: SocketAddr) -> Self {
        self.ws_addr = Some(addr);
        self
    }

    /// Also serve AMQP over WebSockets with TLS on `addr`, as Azure does on 443. Needs the
    /// certificate of [`EmulatorBuilder::tls`].
    pub fn websocket_tls(mut self, addr: SocketAddr) -> Self {
        self.wss_addr = Some(addr);
        self
    }

    /// Also serve the management endpoint on `addr`: `GET /health`, and the administration
    /// REST API the SDKs' administration clients speak (HTTPS when [`EmulatorBuilder::tls`]
    /// gives a certificate, plain HTTP always; one port serves both).
    pub fn management(mut self, addr: SocketAddr) -> Self {
        self.management_addr = Some(addr);
        self
    }

    /// The largest message accepted, in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The most all entities' messages may take together, in bytes (each message counts its
    /// size as sent and about 500 bytes of bookkeeping). Past it, sends are refused with
    /// `amqp:resource-limit-exceeded`; dead-lettering is never refused. Default
    /// [`DEFAULT_MAX_MEMORY`].
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Keeps what the emulator acknowledges in `dir` (made if missing), and takes back what
    /// it kept there when it starts: messages in every state, delivery counts, session state,
    /// sequence numbers. A send or settlement is acknowledged once it is written, synced by
    /// [`EmulatorBuilder::fsync`]. Without this, everything is in memory (and faster).
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.data_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// When writes to the data directory are synced to disk (default [`Fsync::Batch`]).
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// What one connection may cost: timeouts, caps on sessions, links and names, unread output.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Binds the listeners and starts serving. Needs a Tokio runtime.
    pub async fn start(self) -> Result<Emulator, StartError> {
        for w in &self.config.warnings {
            tracing::warn!("config: {w}");
        }
        let tls_acceptor = self.tls.as_ref().map(load_tls).transpose()?;
        if self.wss_addr.is_some() && tls_acceptor.is_none() {
            return Err(StartError::Tls(
                "a TLS WebSocket listener needs a certificate and key (--tls-cert and --tls-key)".into(),
            ));
        }
        let mut listeners = vec![Listener::bind(self.addr, None, false).await?];
        if let (Some(t), Some(acceptor)) = (&self.tls, &tls_acceptor) {
            listeners.push(Listener::bind(t.addr, Some(acceptor.clone()), false).await?);
        }
        if let Some(addr) = self.ws_addr {
            listeners.push(Listener::bind(addr, None, true).await?);
        }
        if let Some(addr) = self.wss_addr {
            listeners.push(Listener::bind(addr, tls_acceptor.clone(), true).await?);
        }
        let addr_of = |tls: bool, websocket: bool| {
            listeners.iter().find(|l| l.tls.is_some() == tls && l.websocket == websocket).map(|l| l.addr)
        };
        let local_addr = addr_of(false, false).expect("the plain listener is always bound");
        let (tls_addr, ws_addr, wss_addr) = (addr_of(true, false), addr_of(false, true), addr_of(true, true));
        let (storage, contents) = match &self.data_dir {
            Some(dir) => {
                let (storage, contents) = storage::Storage::open(dir, self.fsync)?;
                (Some(storage), contents)
            }
            None => (None, storage::Contents::default()),
        };
        let namespace = namespace::Namespace::with_storage(&self.config, self.max_memory, storage)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let restored = namespace.restore(&contents)?;
        drop(contents);
        if let Some(dir) = &self.data_dir {
            tracing::info!(
                dir = %dir.display(), fsync = ?self.fsync, made = restored.made, entities = restored.entities,
                messages = restored.messages, "data directory opened"
            );
        }
        let shared = Arc::new(Shared {
            namespace: Arc::new(namespace),
            keys: self.keys.or_else(|| self.config.keys.clone()).unwrap_or_default(),
            max_message_size: self.max_message_size,
            limits: self.limits,
        });
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks: Vec<_> = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(l, shared.clone(), connections.clone(), stop_rx.clone())))
            .collect();
        let management_addr = match self.management_addr {
            Some(addr) => {
                let management = Listener::bind(addr, None, false).await?;
                let serve = admin::serve(management.tcp, tls_acceptor.clone(), shared.clone(), stop_rx.clone());
                tasks.push(tokio::spawn(serve));
                Some(management.addr)
            }
            None => None,
        };
        tracing::info!(
            %local_addr, tls = ?tls_addr, ws = ?ws_addr, wss = ?wss_addr, management = ?management_addr,
            namespace = shared.namespace.name(),
            "servicebus emulator listening"
        );
        Ok(Emulator { local_addr, tls_addr, ws_addr, wss_addr, management_addr, shared, connections, stop, tasks })
    }
}

/// A bound listener and how its connections are opened.
struct Listener {
    tcp: TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    websocket: bool,
}

impl Listener {
    async fn bind(
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        websocket: bool,
    ) -> Result<Self, StartError> {
        let tcp = TcpListener::bind(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                StartError::AddressInUse { addr }
            } else {
                StartError::Bind { addr, source }
            }
        })?;
        let addr = tcp.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self { tcp, addr, tls, websocket })
    }
}

fn load_tls(t: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())));
    let cert_pem = read(&t.cert)?;
    let key_pem = read(&t.key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("{} is not a PEM certificate chain: {e}", t.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!("{} holds no certificate", t.cert.display())));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| StartError::Tls(format!("{} is not a PEM private key: {e}", t.key.display())))?
        .ok_or_else(|| StartError::Tls(format!("{} holds no private key", t.key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(format!("the certificate and key do not work together: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    connections: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Control>>>>,
    mut stop: watch::Receiver<bool>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut c = connections.lock().unwrap_or_else(|p| p.into_inner());
            if c.len() >= shared.limits.max_connections {
                tracing::warn!(%peer, max = shared.limits.max_connections, "refusing a connection: too many are open");
                continue; // Dropping the socket closes it.
            }
            c.insert(id, tx);
        }
        let shared = shared.clone();
        let connections = connections.clone();
        let (tls, websocket) = (listener.tls.clone(), listener.websocket);
        tokio::spawn(async move {
            // Leaves the registry however the connection ends, a panic included: shutdown
            // waits for the registry to empty.
            let _registered = Registered { id, connections };
            let peer = peer.to_string();
            // The TLS and WebSocket handshakes have the handshake timeout too (then AMQP's starts afresh).
            let timeout = shared.limits.handshake_timeout;
            match tls {
                None => serve_over(stream, websocket, shared, rx, peer).await,
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => serve_over(s, websocket, shared, rx, peer).await,
                    Ok(Err(e)) => tracing::info!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

/// Serves a connection on `stream`, after the WebSocket upgrade if `websocket`.
async fn serve_over<S>(
    stream: S,
    websocket: bool,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Control>,
    peer: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !websocket {
        return connection::serve(stream, shared, rx, peer).await;
    }
    match tokio::time::timeout(shared.limits.handshake_timeout, amqp_ws::accept(stream)).await {
        Ok(Ok(ws)) => connection::serve(ws, shared, rx, peer).await,
        Ok(Err(e)) => tracing::info!(%peer, "WebSocket upgrade failed: {e}"),
        Err(_) => tracing::info!(%peer, "WebSocket upgrade timed out"),
    }
}

/// A connection's entry in the registry, removed when dropped.
struct Registered {
    id: u64,
    connections: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Control>>>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}
