//! The connection layer: the one live AMQP connection a client shares, opened lazily,
//! authorized per entity through CBS, and opened again after a loss. Nothing above this
//! module sees the connection itself: links are attached through it, each on an AMQP session
//! of its own ([`Connection::attach`]), and tell it when their connection looked broken.
//!
//! - `transport`: TCP (direct, or through an HTTP proxy), TLS, WebSockets.
//! - `guard`: the check of every byte the broker sends before fe2o3 decodes it.
//! - `cbs`: SAS tokens on `$cbs`, and their renewal.
//!
//! Each connection a client opens has the next **epoch**. A link remembers the epoch it was
//! attached on, so a link whose connection died is attached again on the next one instead
//! of being used.
//!
//! [`Connection::attach`] runs in a task that goes on to its end even when the caller stops
//! waiting (a handler's deadline, a `select!`): fe2o3 ends a session whose
//! attach was dropped halfway, and then the whole connection when the broker's answer to that
//! session finds no one to take it, and every lock on the connection would go with it.

mod cbs;
pub(crate) mod guard;
mod transport;

use std::sync::Arc;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection as AmqpConnection, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, MutexGuard};

use crate::connection_string::{ConnectionString, Credential};
use crate::error::{Error, ErrorKind, Result};
use crate::options::{ClientOptions, Dialect};
use cbs::Cbs;
use guard::Guarded;

/// The number of one of a client's connections: 1 for the first, one more for each reconnection.
pub(crate) type Epoch = u64;

/// The client's connection to one namespace, open or not.
pub(crate) struct Connection {
    settings: ConnectionString,
    options: ClientOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    epoch: Epoch,
    live: Option<Live>,
}

/// An open connection: its control session (for `$cbs`) and the token renewal.
struct Live {
    connection: ConnectionHandle<()>,
    control: SessionHandle<()>,
    cbs: Option<Arc<Cbs>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    fn is_open(&self) -> bool {
        !self.connection.is_closed() && !self.control.is_ended()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(r) = &self.refresher {
            r.abort();
        }
    }
}

/// A link [`Connection::attach`] attached, on its own session.
pub(crate) struct Attached<L> {
    pub(crate) link: L,
    pub(crate) session: SessionHandle<()>,
    pub(crate) epoch: Epoch,
}

/// A link that can be detached: what [`Connection::attach`] does with one nobody waits for.
pub(crate) trait Detach: Send + 'static {
    /// Detaches (closes) the link, waiting for the broker's answer, so that nothing the broker
    /// sent on it meanwhile arrives for a link that is gone.
    fn detach(self) -> BoxFuture<'static, ()>;
}

impl Detach for fe2o3_amqp::Sender {
    fn detach(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.close().await;
        })
    }
}

impl Detach for fe2o3_amqp::Receiver {
    fn detach(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.close().await;
        })
    }
}

impl<A: Detach, B: Detach> Detach for (A, B) {
    fn detach(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.0.detach().await;
            self.1.detach().await;
        })
    }
}

/// How [`Connection::attach`] attaches a link on the session it opened.
pub(crate) type AttachFn<L> = Box<dyn for<'s> FnOnce(&'s mut SessionHandle<()>) -> BoxFuture<'s, Result<L>> + Send>;

/// An AMQP session of one link's own, on the connection of `epoch`. Dropping it ends the
/// session, and with it every link still on it.
struct LinkSession {
    session: SessionHandle<()>,
    epoch: Epoch,
}

impl Connection {
    pub(crate) fn new(settings: ConnectionString, options: ClientOptions) -> Self {
        Self { settings, options, state: Mutex::new(State::default()) }
    }

    pub(crate) fn settings(&self) -> &ConnectionString {
        &self.settings
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.options.dialect
    }

    /// The address links use for `entity`: Service Bus entity paths lose surrounding slashes;
    /// in generic AMQP mode the address is used exactly as given (RabbitMQ's `/queue/name`).
    pub(crate) fn address(&self, entity: &str) -> String {
        match self.options.dialect {
            Dialect::ServiceBus => entity.trim_matches('/').to_string(),
            Dialect::GenericAmqp => entity.to_string(),
        }
    }

    /// The epoch of the live connection, connecting if needed.
    pub(crate) async fn epoch(&self) -> Result<Epoch> {
        Ok(self.live("(connection)").await?.epoch)
    }

    /// A new AMQP session for one link, on the live connection (connecting if needed), with
    /// `entity` authorized.
    async fn link_session(&self, entity: &str) -> Result<LinkSession> {
        let mut state = self.live(entity).await?;
        let cbs = state.live.as_ref().and_then(|l| l.cbs.clone());
        if let Some(cbs) = cbs {
            cbs.authorize(&self.audience(entity), entity).await?;
        }
        let epoch = state.epoch;
        let live = state.live.as_mut().expect("live() leaves the connection open");
        let session = tokio::time::timeout(self.options.operation_timeout, begin_session(&mut live.connection))
            .await
            .map_err(|_| Error::timeout(entity, "beginning a session timed out"))?
            .map_err(|e| Error::connection(entity, "beginning a session failed", e))?;
        Ok(LinkSession { session, epoch })
    }

    /// Opens a session of its own for a link to `entity` (authorizing `entity`), and attaches
    /// the link with `attach`. Both run in a task that finishes even if the caller stops
    /// waiting; a link attached for no one is then detached in order.
    pub(crate) async fn attach<L: Detach>(self: &Arc<Self>, entity: &str, attach: AttachFn<L>) -> Result<Attached<L>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (connection, name) = (self.clone(), entity.to_string());
        tokio::spawn(async move {
            let attached = async {
                let mut own = connection.link_session(&name).await?;
                let link = attach(&mut own.session).await?;
                Ok(Attached { link, session: own.session, epoch: own.epoch })
            }
            .await;
            if let Err(Ok(unwanted)) = reply.send(attached) {
                let _ = tokio::time::timeout(connection.options.operation_timeout, unwanted.link.detach()).await;
                drop(unwanted.session);
            }
        });
        answer.await.unwrap_or_else(|_| {
            Err(Error::new(ErrorKind::Connection, "attaching a link was cut short: the runtime is stopping").at(entity))
        })
    }

    /// Whether the connection of `epoch` is the live one and still open.
    pub(crate) async fn is_open(&self, epoch: Epoch) -> bool {
        let state = self.state.lock().await;
        state.epoch == epoch && state.live.as_ref().is_some_and(Live::is_open)
    }

    /// After a link failed: if the connection of `epoch` is closed, forget it, so the next
    /// use opens a new one.
    pub(crate) async fn forget_if_closed(&self, epoch: Epoch) {
        let mut state = self.state.lock().await;
        if state.epoch == epoch && state.live.as_ref().is_some_and(|l| !l.is_open()) {
            state.live = None;
            tracing::info!(host = %self.settings.host, epoch, "connection lost; will reconnect");
        }
    }

    /// Forgets the connection of `epoch` (a link saw it fail), so the next use opens a new one.
    pub(crate) async fn forget(&self, epoch: Epoch) {
        let mut state = self.state.lock().await;
        if state.epoch == epoch && state.live.take().is_some() {
            tracing::info!(host = %self.settings.host, epoch, "connection lost; will reconnect");
        }
    }

    /// Closes the live connection, if any. The next use opens a new one.
    pub(crate) async fn close(&self) {
        let live = self.state.lock().await.live.take();
        if let Some(mut live) = live {
            let _ = live.control.end().await;
            let _ = live.connection.close().await;
        }
    }

    /// The audience of an entity, as the SDKs write it.
    fn audience(&self, entity: &str) -> String {
        format!("sb://{}/{}", self.settings.fully_qualified_namespace(), entity.trim_matches('/'))
    }

    /// The state, with the connection open (opened now if it was not).
    async fn live(&self, entity: &str) -> Result<MutexGuard<'_, State>> {
        let mut state = self.state.lock().await;
        if !state.live.as_ref().is_some_and(Live::is_open) {
            state.live = None;
            let live = tokio::time::timeout(self.options.operation_timeout, self.open())
                .await
                .map_err(|_| Error::timeout(entity, "connecting timed out"))??;
            state.epoch += 1;
            state.live = Some(live);
            tracing::debug!(host = %self.settings.host, epoch = state.epoch, "connected");
        }
        Ok(state)
    }

    async fn open(&self) -> Result<Live> {
        let host = self.settings.host.as_str();
        let at = "(connection)";
        let stream = transport::open(&self.settings, &self.options).await?;
        let sasl = match (self.options.dialect, &self.settings.credential) {
            (Dialect::GenericAmqp, Credential::SharedKey { name, key }) => {
                SaslProfile::Plain { username: name.clone(), password: key.clone() }
            }
            _ => SaslProfile::Anonymous,
        };
        let mut connection = AmqpConnection::builder()
            .container_id(format!("amqp-servicebus-{}", uuid::Uuid::new_v4().simple()))
            .hostname(host)
            .sasl_profile(sasl)
            .max_frame_size(1024 * 1024u32)
            .idle_time_out(60_000u32)
            .open_with_stream(Guarded::new(stream))
            .await
            .map_err(|e| Error::connection(at, format!("opening the AMQP connection to {host} failed"), e))?;
        let mut control =
            begin_session(&mut connection).await.map_err(|e| Error::connection(at, "beginning a session failed", e))?;
        let (cbs, refresher) = if self.options.dialect == Dialect::ServiceBus {
            let client = CbsClient::attach(&mut control)
                .await
                .map_err(|e| Error::connection("$cbs", "attaching the $cbs links failed", e))?;
            let cbs = Cbs::new(client, self.settings.credential.clone(), self.options.clone());
            let refresher = tokio::spawn(cbs.clone().refresh());
            (Some(cbs), Some(refresher))
        } else {
            (None, None)
        };
        Ok(Live { connection, control, cbs, refresher })
    }
}

/// Begins an AMQP session on `connection`, with the windows every session of the client uses.
async fn begin_session(
    connection: &mut ConnectionHandle<()>,
) -> std::result::Result<SessionHandle<()>, fe2o3_amqp::session::BeginError> {
    Session::builder().incoming_window(50_000).outgoing_window(50_000).begin(connection).await
}
