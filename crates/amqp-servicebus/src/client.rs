//! The client: one shared connection, made lazily, authorized per entity through
//! CBS, and remade after a loss.
//!
//! Every sender, receiver and management link of a [`ServiceBusClient`] shares one
//! AMQP connection, and each has an AMQP session of its own on it ([`LinkSession`]),
//! as the official SDKs do: a link error, or a session that ends under a failed attach,
//! costs that link alone. The `$cbs` links have the connection's control session; a
//! receiver's transaction controller shares that receiver's session.
//!
//! Each (re)connection gets a new *generation*; links remember the generation they were
//! made on, so a link whose connection died is remade on the next one instead of being used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{ReceiverAttachError, SenderAttachError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_types::primitives::Timestamp;
use tokio::net::TcpStream;

use crate::guard::Guarded;
use tokio::sync::{Mutex, MutexGuard};

use crate::connection_string::{ConnectionString, Credential};
use crate::error::{Error, Result};
use crate::management::ManagementLink;
use crate::receiver::{ReceiveMode, Receiver, ReceiverOptions};
use crate::retry::RetryPolicy;
use crate::sas;
use crate::sender::Sender;

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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            token_lifetime: Duration::from_secs(3600),
            extra_ca_pem: None,
            operation_timeout: Duration::from_secs(60),
            dialect: Dialect::ServiceBus,
        }
    }
}

/// A Service Bus (or AMQP 1.0) client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct ServiceBusClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceBusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusClient").field("host", &self.inner.settings.host).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) settings: ConnectionString,
    pub(crate) options: ClientOptions,
    state: Mutex<State>,
    /// Audience → token expiry (Unix seconds), shared with the refresh task.
    tokens: Arc<StdMutex<HashMap<String, u64>>>,
    pub(crate) management: StdMutex<HashMap<String, ManagementLink>>,
    link_generation: AtomicU64,
}

#[derive(Default)]
struct State {
    generation: u64,
    live: Option<Live>,
}

struct Live {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    cbs: Option<Arc<Mutex<CbsClient>>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(r) = &self.refresher {
            r.abort();
        }
    }
}

/// Access to the live connection, held while a session is begun.
pub(crate) struct SessionGuard<'a> {
    guard: MutexGuard<'a, State>,
}

impl SessionGuard<'_> {
    fn live(&mut self) -> &mut Live {
        self.guard.live.as_mut().expect("a guard exists only while connected")
    }

    pub(crate) fn generation(&self) -> u64 {
        self.guard.generation
    }
}

/// An AMQP session of one link's own, on the connection of `generation`. Dropping it ends
/// the session (and so detaches its link).
pub(crate) struct LinkSession {
    pub(crate) session: SessionHandle<()>,
    pub(crate) generation: u64,
}

impl ServiceBusClient {
    /// A client for a connection string. Nothing is connected until first use.
    pub fn new(connection_string: &str, options: ClientOptions) -> Result<Self> {
        Ok(Self::from_settings(ConnectionString::parse(connection_string)?, options))
    }

    /// A client for parsed settings.
    pub fn from_settings(settings: ConnectionString, options: ClientOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                options,
                state: Mutex::new(State::default()),
                tokens: Arc::new(StdMutex::new(HashMap::new())),
                management: StdMutex::new(HashMap::new()),
                link_generation: AtomicU64::new(0),
            }),
        }
    }

    /// The settings this client connects with.
    pub fn settings(&self) -> &ConnectionString {
        &self.inner.settings
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// A sender to a queue or topic.
    pub fn sender(&self, entity: &str) -> Sender {
        Sender::new(self.clone(), entity)
    }

    /// A peek-lock receiver from a queue, subscription (`topic/Subscriptions/sub`) or
    /// dead-letter queue (`queue/$DeadLetterQueue`), with no prefetch.
    pub fn receiver(&self, entity: &str) -> Receiver {
        Receiver::new(self.clone(), entity, ReceiverOptions::default())
    }

    /// A receiver with options (mode, prefetch).
    pub fn receiver_with(&self, entity: &str, options: ReceiverOptions) -> Receiver {
        Receiver::new(self.clone(), entity, options)
    }

    /// A receive-and-delete receiver.
    pub fn receive_and_delete_receiver(&self, entity: &str) -> Receiver {
        Receiver::new(
            self.clone(),
            entity,
            ReceiverOptions { mode: ReceiveMode::ReceiveAndDelete, ..Default::default() },
        )
    }

    /// Connects now (otherwise the first operation does). Useful to fail fast on bad settings.
    pub async fn connect(&self) -> Result<()> {
        self.session_for("$cbs").await.map(drop)
    }

    /// Closes the connection. Later operations reconnect.
    pub async fn close(&self) {
        let mut state = self.inner.state.lock().await;
        if let Some(mut live) = state.live.take() {
            let _ = live.session.end().await;
            let _ = live.connection.close().await;
        }
        self.inner.management.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The current connection generation, connecting if needed.
    pub(crate) async fn generation(&self) -> Result<u64> {
        Ok(self.session_for("$cbs").await?.generation())
    }

    /// A fresh link generation number.
    pub(crate) fn next_link_generation(&self) -> u64 {
        self.inner.link_generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The live session, connecting if needed, with `entity` authorized.
    pub(crate) async fn session_for(&self, entity: &str) -> Result<SessionGuard<'_>> {
        let mut guard = self.inner.state.lock().await;
        let connected = guard.live.as_ref().is_some_and(|l| !l.connection.is_closed() && !l.session.is_ended());
        if !connected {
            guard.live = None;
            // Tokens are put per connection: a new connection starts with none.
            self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let live = tokio::time::timeout(self.inner.options.operation_timeout, self.open())
                .await
                .map_err(|_| Error::Timeout { entity: entity.into(), description: "connecting timed out".into() })??;
            guard.generation += 1;
            guard.live = Some(live);
            tracing::debug!(host = %self.inner.settings.host, generation = guard.generation, "connected");
        }
        if entity != "$cbs" {
            let cbs = guard.live.as_ref().and_then(|l| l.cbs.clone());
            if let Some(cbs) = cbs {
                self.authorize(&cbs, entity).await?;
            }
        }
        Ok(SessionGuard { guard })
    }

    /// A new AMQP session for one link, on the live connection (connecting if needed), with
    /// `entity` authorized.
    pub(crate) async fn link_session(&self, entity: &str) -> Result<LinkSession> {
        let mut guard = self.session_for(entity).await?;
        let generation = guard.generation();
        let begin = begin_session(&mut guard.live().connection);
        let session = tokio::time::timeout(self.inner.options.operation_timeout, begin)
            .await
            .map_err(|_| Error::Timeout { entity: entity.into(), description: "beginning a session timed out".into() })?
            .map_err(|e| Error::connection(entity, format!("beginning a session failed: {e}")))?;
        Ok(LinkSession { session, generation })
    }

    /// Marks the connection of `generation` broken, so the next use reconnects.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut guard = self.inner.state.lock().await;
        if guard.generation == generation && guard.live.take().is_some() {
            tracing::info!(host = %self.inner.settings.host, generation, "connection lost; will reconnect");
            self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Whether the connection of `generation` is still the live one.
    pub(crate) async fn connection_alive(&self, generation: u64) -> bool {
        let guard = self.inner.state.lock().await;
        guard.generation == generation
            && guard.live.as_ref().is_some_and(|l| !l.connection.is_closed() && !l.session.is_ended())
    }

    /// After a transient link failure: if the connection of `generation` is down, forget it.
    pub(crate) async fn invalidate_if_broken(&self, generation: u64) {
        let mut guard = self.inner.state.lock().await;
        let broken = guard.live.as_ref().is_some_and(|l| l.connection.is_closed() || l.session.is_ended());
        if guard.generation == generation && broken {
            guard.live = None;
            self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).clear();
            tracing::info!(host = %self.inner.settings.host, generation, "connection lost; will reconnect");
        }
    }

    /// The audience of an entity, as the SDKs write it.
    pub(crate) fn audience(&self, entity: &str) -> String {
        format!("sb://{}/{}", self.inner.settings.fully_qualified_namespace(), entity.trim_matches('/'))
    }

    async fn authorize(&self, cbs: &Arc<Mutex<CbsClient>>, entity: &str) -> Result<()> {
        let audience = self.audience(entity);
        let now = now_secs();
        let valid = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(a, exp)| *exp > now + 5 && (audience == *a || audience.starts_with(&format!("{a}/"))));
        if valid {
            return Ok(());
        }
        let expires = put_token(&self.inner.settings.credential, &self.inner.options, cbs, &audience, entity).await?;
        self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(audience, expires);
        Ok(())
    }

    async fn open(&self) -> Result<Live> {
        let settings = &self.inner.settings;
        let options = &self.inner.options;
        let host = settings.host.clone();
        let port = settings.effective_port();
        let entity = "(connection)";
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Error::connection(entity, format!("cannot reach {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let sasl = match (options.dialect, &settings.credential) {
            (Dialect::GenericAmqp, Credential::SharedKey { name, key }) => {
                SaslProfile::Plain { username: name.clone(), password: key.clone() }
            }
            _ => SaslProfile::Anonymous,
        };
        let container_id = format!("amqp-servicebus-{}", uuid::Uuid::new_v4().simple());
        let builder = Connection::builder()
            .container_id(container_id)
            .hostname(host.as_str())
            .sasl_profile(sasl)
            .max_frame_size(1024 * 1024u32)
            .idle_time_out(60_000u32);
        let mut connection = if settings.uses_tls() {
            let tls = tls_connect(tcp, &host, options.extra_ca_pem.as_deref()).await?;
            builder.open_with_stream(Guarded::new(tls)).await
        } else {
            builder.open_with_stream(Guarded::new(tcp)).await
        }
        .map_err(|e| Error::connection(entity, format!("opening the AMQP connection to {host}:{port} failed: {e}")))?;
        let mut session = begin_session(&mut connection)
            .await
            .map_err(|e| Error::connection(entity, format!("beginning a session failed: {e}")))?;
        let (cbs, refresher) = if options.dialect == Dialect::ServiceBus {
            let cbs = CbsClient::attach(&mut session)
                .await
                .map_err(|e| Error::connection("$cbs", format!("attaching the $cbs links failed: {e}")))?;
            let cbs = Arc::new(Mutex::new(cbs));
            let refresher = tokio::spawn(refresh_tokens(
                cbs.clone(),
                self.inner.tokens.clone(),
                settings.credential.clone(),
                options.clone(),
            ));
            (Some(cbs), Some(refresher))
        } else {
            (None, None)
        };
        Ok(Live { connection, session, cbs, refresher })
    }
}

/// Begins an AMQP session on `connection`, with the windows every session of the client uses.
async fn begin_session(
    connection: &mut ConnectionHandle<()>,
) -> std::result::Result<SessionHandle<()>, fe2o3_amqp::session::BeginError> {
    Session::builder().incoming_window(50_000).outgoing_window(50_000).begin(connection).await
}

/// Puts a token for `audience`; returns its expiry (Unix seconds).
async fn put_token(
    credential: &Credential,
    options: &ClientOptions,
    cbs: &Mutex<CbsClient>,
    audience: &str,
    entity: &str,
) -> Result<u64> {
    let (token, expires) = match credential {
        Credential::SharedKey { name, key } => sas::token_for(audience, name, key, options.token_lifetime),
        Credential::SharedAccessSignature(t) => (t.clone(), sas::expiry_of(t).unwrap_or(u64::MAX)),
        Credential::Anonymous => return Ok(u64::MAX),
    };
    let expiry = sas::expiry_millis(expires).map(Timestamp::from_milliseconds);
    let mut cbs = cbs.lock().await;
    let put = cbs.put_token(audience.to_string(), CbsToken::new(token, "servicebus.windows.net:sastoken", expiry));
    match tokio::time::timeout(options.operation_timeout, put).await {
        Err(_) => Err(Error::Timeout { entity: entity.into(), description: "the $cbs put-token got no answer".into() }),
        Ok(Ok(())) => Ok(expires),
        Ok(Err(e)) => {
            let text = e.to_string();
            let description = format!("$cbs refused the token for {audience}: {text}");
            if text.contains("401") || text.contains("403") || text.to_ascii_lowercase().contains("unauthorized") {
                Err(Error::Unauthorized { entity: entity.into(), description })
            } else if text.contains("404") {
                Err(Error::EntityNotFound { entity: entity.into(), description })
            } else {
                Err(Error::Connection { entity: entity.into(), description })
            }
        }
    }
}

/// Renews tokens at four fifths of their lifetime, for as long as the connection lives.
async fn refresh_tokens(
    cbs: Arc<Mutex<CbsClient>>,
    tokens: Arc<StdMutex<HashMap<String, u64>>>,
    credential: Credential,
    options: ClientOptions,
) {
    if !matches!(credential, Credential::SharedKey { .. }) {
        return; // A fixed SAS token cannot be renewed.
    }
    let lifetime = options.token_lifetime.as_secs().max(1);
    let margin = (lifetime / 5).max(1);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = now_secs();
        let due: Vec<String> = tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, exp)| **exp != u64::MAX && **exp <= now.saturating_add(margin))
            .map(|(a, _)| a.clone())
            .collect();
        for audience in due {
            match put_token(&credential, &options, &cbs, &audience, &audience).await {
                Ok(expires) => {
                    tracing::debug!(%audience, expires, "token renewed");
                    tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(audience, expires);
                }
                Err(e) => {
                    tracing::warn!(%audience, "renewing the token failed: {e}");
                    if !e.is_transient() {
                        tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(&audience);
                    }
                }
            }
        }
    }
}

async fn tls_connect(
    tcp: TcpStream,
    host: &str,
    extra_ca: Option<&[u8]>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let entity = "(connection)";
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| Error::connection(entity, format!("the extra CA is not valid PEM: {e}")))?;
            roots.add(cert).map_err(|e| Error::connection(entity, format!("the extra CA was refused: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::connection(entity, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Error::connection(entity, format!("{host:?} is not a valid TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Error::connection(entity, format!("the TLS handshake with {host} failed: {e}")))
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Maps a sender attach failure.
pub(crate) fn sender_attach_error(e: SenderAttachError, entity: &str) -> Error {
    match e {
        SenderAttachError::RemoteClosedWithError(err) => Error::from_amqp(&err, entity),
        SenderAttachError::SessionStopped(_) | SenderAttachError::SessionNotMapped => {
            Error::connection(entity, format!("attaching a sender failed: {e}"))
        }
        other => Error::protocol(entity, format!("attaching a sender failed: {other}")),
    }
}

/// Maps a receiver attach failure.
pub(crate) fn receiver_attach_error(e: ReceiverAttachError, entity: &str) -> Error {
    match e {
        ReceiverAttachError::RemoteClosedWithError(err) => Error::from_amqp(&err, entity),
        ReceiverAttachError::SessionStopped(_) | ReceiverAttachError::SessionNotMapped => {
            Error::connection(entity, format!("attaching a receiver failed: {e}"))
        }
        other => Error::protocol(entity, format!("attaching a receiver failed: {other}")),
    }
}

/// Maps a link state failure (detach, close, session end).
pub(crate) fn link_state_error(e: fe2o3_amqp::link::LinkStateError, entity: &str) -> Error {
    use fe2o3_amqp::link::LinkStateError as L;
    match e {
        L::RemoteDetachedWithError(err) | L::RemoteClosedWithError(err) => Error::from_amqp(&err, entity),
        other => Error::connection(entity, format!("the link stopped: {other}")),
    }
}
