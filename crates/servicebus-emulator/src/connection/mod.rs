//! One AMQP connection: the engine that owns its sessions and links.
//!
//! A connection runs three tasks: a reader that splits bytes into frames, this engine that
//! owns every session and link of the connection, and a writer that drains the engine's
//! output ([`output`]). The engine never waits on the socket, so a peer that stops reading
//! cannot stall its own acknowledgements. Queues wake the engine through
//! [`Event::Available`] when a link waiting for messages may get one.
//!
//! The engine is split by protocol layer; a message moves through it in one direction:
//! - [`sasl`]: protocol headers and SASL, before the first frame;
//! - this file: the event loop, `open`/`close`, timers, and where faults end up;
//! - [`session`]: `begin`/`end` and the session's flow window;
//! - [`link`]: `attach`/`detach`, link credit, and which node a link serves;
//! - [`message_session`]: session receivers: the session filter, waiting for a free session;
//! - [`inbound`]: a client's transfers, assembled into messages for an entity or a node;
//! - [`nodes`]: `$cbs`, `$management` and the transaction coordinator;
//! - [`outbound`]: messages and responses sent to receivers;
//! - [`settle`]: a receiver's dispositions, applied with the service's rules and echoed.
//!
//! What the engine does that a generic AMQP acceptor does not (and that the official SDKs
//! need): it chooses delivery tags (16-byte lock tokens in .NET GUID order), answers every
//! unsettled disposition with the settled echo of the outcome it applied, and writes
//! `delivery-count` into every header.
//!
//! Faults are scoped ([`Fault`]): a bad transfer detaches its link, a bad handle ends its
//! session, and only what cannot be pinned to a session closes the connection. A session
//! or link the broker ended stays half-closed until the peer answers: frames that were
//! already in flight are dropped, not treated as errors.

mod inbound;
mod link;
mod message_session;
mod nodes;
mod outbound;
mod output;
mod sasl;
mod session;
mod settle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::frames::amqp::{Frame, FrameBody, FrameDecoder};
use fe2o3_amqp_types::definitions::Error as AmqpError;
use fe2o3_amqp_types::performatives::Open;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder as _, FramedRead};

use self::output::{Backlog, Chunk, Output};
use self::session::Session;
use crate::auth::{self, Authorizations, Keys};
use crate::codec::{self, Incoming, WireDecoder};
use crate::limits::Limits;
use crate::management::error;
use crate::namespace::Namespace;
use crate::transaction::Transactions;

/// The largest frame the broker accepts and advertises.
pub(crate) const MAX_FRAME_SIZE: usize = 1024 * 1024;

/// Everything connections share.
pub(crate) struct Shared {
    pub(crate) namespace: Arc<Namespace>,
    pub(crate) keys: Keys,
    pub(crate) max_message_size: usize,
    pub(crate) limits: Limits,
}

/// Instructions to a connection from outside (the listener, test hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Close gracefully: send `close` with `amqp:connection:forced`.
    Shutdown,
    /// Drop the TCP connection without a word (fault injection).
    Kill,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn serve<Io>(io: Io, shared: Arc<Shared>, control: mpsc::UnboundedReceiver<Control>, peer: String)
where
    Io: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let reader = FramedRead::new(rd, WireDecoder::new());
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Chunk>();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let backlog = Backlog::new(shared.limits.max_write_backlog);
    let storage = shared.namespace.storage().cloned();
    let writer = tokio::spawn(output::write_loop(wr, out_rx, backlog.clone(), events_tx.clone(), storage));
    let now = tokio::time::Instant::now();
    let mut engine = Engine {
        shared,
        out: Output::new(),
        out_tx,
        events_tx,
        remote_idle: None,
        last_sent: now,
        started: now,
        last_received: now,
        opened: false,
        backlog,
        sessions: HashMap::new(),
        ended: HashSet::new(),
        auth: Authorizations::default(),
        txns: Transactions::default(),
        peer: peer.clone(),
    };
    let end = engine.run(reader, events_rx, control).await;
    match end {
        Ending::Killed => {
            writer.abort();
            tracing::debug!(%peer, "connection dropped on request");
        }
        Ending::Finished(reason) => {
            drop(engine); // Closes the writer's channel: it flushes and shuts the socket down.
            let _ = writer.await;
            tracing::debug!(%peer, "connection ended: {reason}");
        }
    }
}

/// Events from queues (and ourselves) to the engine.
#[derive(Debug)]
pub(super) enum Event {
    /// The link may have messages to deliver now.
    Available { channel: u16, handle: u32 },
    /// The peer read what was waiting: messages may flow again.
    Writable,
    /// A message session may have come free for the receiver waiting on this handle.
    SessionFree { channel: u16, handle: u32 },
}

enum Ending {
    Killed,
    Finished(String),
}

/// Something the peer sent that breaks a rule, and the smallest scope it breaks.
#[derive(Debug)]
pub(super) enum Fault {
    /// Close the connection: the fault cannot be pinned to one session.
    Connection(AmqpError),
    /// End the session on this channel; the connection's other sessions go on.
    Session(u16, AmqpError),
    /// Detach this link; its session's other links go on.
    Link { channel: u16, handle: u32, error: AmqpError },
}

impl Fault {
    pub(super) fn connection(condition: &str, description: impl Into<String>) -> Self {
        Self::Connection(error(condition, description))
    }

    pub(super) fn session(channel: u16, condition: &str, description: impl Into<String>) -> Self {
        Self::Session(channel, error(condition, description))
    }

    pub(super) fn link(channel: u16, handle: u32, condition: &str, description: impl Into<String>) -> Self {
        Self::Link { channel, handle, error: error(condition, description) }
    }
}

/// The result of handling one frame.
pub(super) type Step = Result<(), Fault>;

/// One connection's state; its methods are spread over this module's files, by layer.
pub(super) struct Engine {
    shared: Arc<Shared>,
    out: Output,
    out_tx: mpsc::UnboundedSender<Chunk>,
    events_tx: mpsc::UnboundedSender<Event>,
    remote_idle: Option<Duration>,
    last_sent: tokio::time::Instant,
    /// When the socket was accepted.
    started: tokio::time::Instant,
    last_received: tokio::time::Instant,
    /// The peer's `open` arrived.
    opened: bool,
    backlog: Backlog,
    sessions: HashMap<u16, Session>,
    /// Channels whose session the peer ended, until a `begin` uses them again.
    ended: HashSet<u16>,
    auth: Authorizations,
    txns: Transactions,
    peer: String,
}

impl Engine {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: FramedRead<R, WireDecoder>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> Ending {
        let deadline = self.started + self.shared.limits.handshake_timeout;
        match tokio::time::timeout_at(deadline, self.handshake(&mut reader)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ending::Finished("handshake refused".into()),
            Ok(Err(e)) => return Ending::Finished(format!("handshake failed: {e}")),
            Err(_) => return Ending::Finished("no protocol handshake within the handshake timeout".into()),
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                item = reader.next() => match item {
                    None => return Ending::Finished("peer closed the socket".into()),
                    Some(Err(e)) => {
                        self.out.close(error("amqp:connection:framing-error", e.to_string()));
                        self.flush();
                        return Ending::Finished(format!("framing error: {e}"));
                    }
                    Some(Ok(Incoming::Header(_))) => {
                        self.out.close(error("amqp:connection:framing-error", "unexpected protocol header"));
                        self.flush();
                        return Ending::Finished("unexpected protocol header".into());
                    }
                    Some(Ok(Incoming::Frame(bytes))) => {
                        self.last_received = tokio::time::Instant::now();
                        let step = self.on_frame(bytes, &mut reader);
                        if let Err(fault) = step {
                            self.on_fault(fault);
                        }
                    }
                },
                Some(event) = events.recv() => match event {
                    Event::Available { channel, handle } => {
                        if let Some(link) = self.link_mut(channel, handle) {
                            link.waiting = false;
                        }
                        self.deliver(channel, handle);
                    }
                    Event::Writable => {
                        for (channel, handle) in self.link_ids() {
                            self.deliver(channel, handle);
                        }
                    }
                    Event::SessionFree { channel, handle } => self.on_session_free(channel, handle),
                },
                ctl = control.recv() => match ctl {
                    Some(Control::Kill) => return Ending::Killed,
                    Some(Control::Shutdown) | None => {
                        self.out.close(error("amqp:connection:forced", "the emulator is shutting down"));
                        self.flush();
                        return Ending::Finished("emulator shutdown".into());
                    }
                },
                _ = tick.tick() => self.on_tick(),
            }
            self.flush();
            if self.out.closed {
                return Ending::Finished("closed".into());
            }
            if self.backlog.len() > self.backlog.max {
                tracing::warn!(peer = %self.peer, bytes = self.backlog.len(), "dropping a connection that does not read what it is sent");
                return Ending::Killed;
            }
        }
    }

    /// Hands what was written to the writer task, with the store's position it acknowledges:
    /// every change this thread made since the last flush (the handling of one event).
    fn flush(&mut self) {
        let barrier = crate::storage::take_barrier();
        if let Some(bytes) = self.out.take() {
            self.last_sent = tokio::time::Instant::now();
            self.backlog.add(bytes.len());
            let _ = self.out_tx.send(Chunk { bytes, barrier });
        }
    }

    /// Ends the scope a fault belongs to, and logs it with the peer.
    fn on_fault(&mut self, fault: Fault) {
        match fault {
            Fault::Connection(e) => {
                tracing::info!(peer = %self.peer, "closing the connection: {:?}", e.description);
                self.out.close(e);
            }
            Fault::Session(channel, e) => {
                tracing::info!(peer = %self.peer, channel, "ending the session: {:?}", e.description);
                self.end_session(channel, e);
            }
            Fault::Link { channel, handle, error } => {
                tracing::info!(peer = %self.peer, channel, handle, "detaching the link: {:?}", error.description);
                self.detach(channel, handle, Some(error));
            }
        }
    }

    /// Every attached link, as (channel, handle).
    fn link_ids(&self) -> Vec<(u16, u32)> {
        self.sessions.iter().flat_map(|(&c, s)| s.links.keys().map(move |&h| (c, h))).collect()
    }

    fn on_tick(&mut self) {
        let limits = &self.shared.limits;
        let age = self.started.elapsed();
        if !self.opened {
            if age >= limits.handshake_timeout {
                tracing::info!(peer = %self.peer, "no open within the handshake timeout; disconnecting");
                self.out.closed = true; // No close frame before open: the socket just ends.
            }
            return;
        }
        if !self.auth.is_authenticated() && age >= limits.authentication_timeout {
            let secs = limits.authentication_timeout.as_secs();
            self.out.close(error(
                "amqp:unauthorized-access",
                format!("no valid token was put on $cbs within {secs} s of connecting; put a token first"),
            ));
            return;
        }
        if self.last_received.elapsed() >= limits.idle_timeout {
            let ms = limits.idle_timeout.as_millis();
            self.out.close(error(
                "amqp:connection:forced",
                format!(
                    "The connection was inactive for more than the allowed {ms} milliseconds (the idle-time-out \
                     this broker advertised) and is closed by the emulator."
                ),
            ));
            return;
        }
        if let Some(idle) = self.remote_idle
            && self.last_sent.elapsed() >= idle / 2
        {
            self.out.heartbeat();
        }
        self.expire_link_authorizations(auth::now_secs());
        self.check_session_receivers(tokio::time::Instant::now());
        self.detach_deleted_entities();
    }

    /// Detaches the links on entities deleted since they attached, as the service does.
    fn detach_deleted_entities(&mut self) {
        let deleted: Vec<(u16, u32, String)> = self
            .sessions
            .iter()
            .flat_map(|(&c, s)| s.links.iter().filter_map(move |(&h, l)| Some((c, h, l.deleted_entity()?.to_string()))))
            .collect();
        for (channel, handle, entity) in deleted {
            let e =
                error("amqp:not-found", format!("The messaging entity '{entity}' could not be found; it was deleted."));
            self.detach(channel, handle, Some(e));
        }
    }

    fn on_frame<R: AsyncRead + Unpin>(
        &mut self,
        mut bytes: bytes::BytesMut,
        reader: &mut FramedRead<R, WireDecoder>,
    ) -> Step {
        // Walked before it is decoded: serde_amqp recurses once per nesting level.
        codec::check_performative(&mut bytes)
            .map_err(|e| Fault::connection("amqp:decode-error", format!("malformed frame: {e}")))?;
        let frame = match (FrameDecoder {}).decode(&mut bytes) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Fault::connection("amqp:decode-error", format!("malformed frame: {e}"))),
        };
        let Frame { channel, body } = frame;
        if !self.opened && !matches!(body, FrameBody::Open(_) | FrameBody::Close(_) | FrameBody::Empty) {
            return Err(Fault::connection("amqp:illegal-state", "a frame other than open arrived before open"));
        }
        match body {
            FrameBody::Open(open) => self.on_open(open, reader),
            FrameBody::Begin(begin) => self.on_begin(channel, begin),
            FrameBody::End(end) => self.on_end(channel, end),
            FrameBody::Close(close) => {
                if let Some(e) = close.error {
                    tracing::info!(peer = %self.peer, condition = ?e.condition, "the peer closed the connection: {:?}", e.description);
                }
                self.out.close_reply();
                Ok(())
            }
            FrameBody::Empty => Ok(()),
            // Session-scoped frames on a session the broker ended are in flight: dropped.
            _ if self.is_ending(channel)? => Ok(()),
            FrameBody::Attach(attach) => self.on_attach(channel, attach),
            FrameBody::Flow(flow) => self.on_flow(channel, flow),
            FrameBody::Transfer { performative, payload } => self.on_transfer(channel, performative, payload),
            FrameBody::Disposition(d) => self.on_disposition(channel, d),
            FrameBody::Detach(d) => self.on_detach(channel, d),
        }
    }

    fn on_open<R: AsyncRead + Unpin>(&mut self, open: Open, reader: &mut FramedRead<R, WireDecoder>) -> Step {
        if self.opened {
            return Err(Fault::connection("amqp:illegal-state", "a second open on the same connection"));
        }
        self.out.peer_max_frame = usize::from(open.max_frame_size).clamp(codec::MIN_MAX_FRAME_SIZE, MAX_FRAME_SIZE);
        self.remote_idle = open.idle_time_out.filter(|&ms| ms > 0).map(|ms| Duration::from_millis(u64::from(ms)));
        reader.decoder_mut().set_max_frame_size(MAX_FRAME_SIZE);
        self.opened = true;
        let limits = &self.shared.limits;
        let reply = Open {
            container_id: format!("servicebus-emulator:{}", self.shared.namespace.name()),
            hostname: None,
            max_frame_size: (MAX_FRAME_SIZE as u32).into(),
            channel_max: limits.channel_max.into(),
            idle_time_out: Some(u32::try_from(limits.idle_timeout.as_millis()).unwrap_or(u32::MAX)),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.out.put(0, &reply);
        Ok(())
    }
}
