//! One AMQP connection: protocol headers, SASL, and the connection/session/link
//! engine.
//!
//! A connection runs three tasks: a reader that splits bytes into frames, this
//! engine that owns every session and link of the connection, and a writer that
//! drains the engine's output. The engine never waits on the socket, so a peer
//! that stops reading cannot stall its own acknowledgements. Queues wake the
//! engine through [`Event::Available`] when a link waiting for messages may get one.
//!
//! What the engine does that a generic AMQP acceptor does not (and that the
//! official SDKs need): it chooses delivery tags (16-byte lock tokens in .NET
//! GUID order), answers every unsettled disposition with the settled echo of the
//! outcome it applied, and writes `delivery-count` into every header.
//!
//! Size: over 1,300 lines, all of one engine. Splitting it by protocol layer (connection,
//! session, link, nodes, settlement) is the first step of issue #12, before sessions land.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp::frames::amqp::{Frame, FrameBody, FrameDecoder};
use fe2o3_amqp_types::definitions::{DeliveryTag, Error as AmqpError, Fields, Handle, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::{
    Accepted, DeliveryState, Modified, Outcome, Rejected, Released, Source, TargetArchetype,
};
use fe2o3_amqp_types::performatives::{Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Transfer};
use fe2o3_amqp_types::primitives::{Array, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use fe2o3_amqp_types::transaction::{Declare, Declared, Discharge, TransactionalState};
use futures_util::StreamExt as _;
use serde_amqp::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder as _, FramedRead};

use crate::auth::{self, Authorizations, Keys, Rights};
use crate::codec::{self, FRAME_TYPE_AMQP, FRAME_TYPE_SASL, Incoming, ProtocolId, WireDecoder};
use crate::limits::Limits;
use crate::management::{self, ManagementContext, Request, error};
use crate::message::{StoredMessage, delivery_tag, simple_value};
use crate::namespace::{Destination, Namespace, Node};
use crate::queue::{Queue, QuotaExceeded, ReceiveMode, Settlement};
use crate::transaction::{Staged, Transactions};

/// The largest frame the broker accepts and advertises.
pub(crate) const MAX_FRAME_SIZE: usize = 1024 * 1024;
/// Session incoming window the broker advertises (and tops up at half).
const INCOMING_WINDOW: u32 = 5000;
/// Link credit the broker grants a sender (topped up at half).
const SENDER_CREDIT: u32 = 1000;

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
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Bytes>();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let backlog = Backlog {
        bytes: Arc::new(AtomicUsize::new(0)),
        paused: Arc::new(AtomicBool::new(false)),
        max: shared.limits.max_write_backlog,
    };
    let writer = tokio::spawn(write_loop(wr, out_rx, backlog.clone(), events_tx.clone()));
    let now = tokio::time::Instant::now();
    let mut engine = Engine {
        shared,
        out: BytesMut::new(),
        out_tx,
        events_tx,
        peer_max_frame: codec::MIN_MAX_FRAME_SIZE,
        remote_idle: None,
        last_sent: now,
        started: now,
        last_received: now,
        opened: false,
        backlog,
        sessions: HashMap::new(),
        auth: Authorizations::default(),
        txns: Transactions::default(),
        closed: false,
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

/// Bytes flushed to the writer that the peer has not read yet.
#[derive(Clone)]
struct Backlog {
    bytes: Arc<AtomicUsize>,
    /// The engine stopped sending messages until the backlog drains.
    paused: Arc<AtomicBool>,
    max: usize,
}

impl Backlog {
    fn len(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Messages wait while this much is unread (`pending`: written but not yet flushed).
    fn is_high(&self, pending: usize) -> bool {
        self.len() + pending >= self.max / 2
    }
}

/// Writes what the engine flushes. Chunks that queued up while a write was under way go out
/// together in one write: a syscall per chunk was the largest part of the broker's CPU cost
/// per message under load.
async fn write_loop<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    backlog: Backlog,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::pin!(wr);
    let mut gathered = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let (result, written) = match rx.try_recv() {
            Err(_) => (wr.write_all(&first).await, first.len()),
            Ok(second) => {
                gathered.extend_from_slice(&first);
                gathered.extend_from_slice(&second);
                while let Ok(more) = rx.try_recv() {
                    gathered.extend_from_slice(&more);
                }
                let result = wr.write_all(&gathered).await;
                let written = gathered.len();
                gathered.clear();
                (result, written)
            }
        };
        if result.is_err() || wr.flush().await.is_err() {
            return;
        }
        let left = backlog.bytes.fetch_sub(written, Ordering::AcqRel) - written;
        if left < backlog.max / 4 && backlog.paused.swap(false, Ordering::AcqRel) {
            let _ = events.send(Event::Writable);
        }
    }
    let _ = wr.shutdown().await;
}

/// Events from queues (and ourselves) to the engine.
#[derive(Debug)]
enum Event {
    /// The link may have messages to deliver now.
    Available { channel: u16, handle: u32 },
    /// The peer read what was waiting: messages may flow again.
    Writable,
}

enum Ending {
    Killed,
    Finished(String),
}

/// A client → broker transfer still arriving in pieces.
struct Partial {
    delivery_id: u32,
    settled: bool,
    format: u32,
    state: Option<DeliveryState>,
    payload: BytesMut,
}

enum Kind {
    /// Broker → client: messages of a queue.
    Deliver { queue: Arc<Queue>, mode: ReceiveMode },
    /// Client → broker: messages for an entity.
    Accept { dest: Destination },
    /// Client → broker: `$cbs` requests.
    CbsRequest,
    /// Client → broker: `$management` requests about a queue.
    ManagementRequest { queue: Arc<Queue> },
    /// Broker → client: responses of a request/response node.
    Response { node: String, reply_address: Option<String> },
    /// Client → broker: transaction control.
    Coordinator,
}

struct Link {
    name: String,
    kind: Kind,
    /// Credit the client gave us (we send), or we gave it (it sends).
    credit: u32,
    delivery_count: u32,
    drain: bool,
    waiting: bool,
    pending: VecDeque<Bytes>,
    partial: Option<Partial>,
    /// What authorization was checked for, and until when it holds.
    auth: Option<LinkAuth>,
    next_tag: u64,
}

/// The path and rights a link was authorized for, and until when (Unix seconds).
struct LinkAuth {
    path: String,
    rights: Rights,
    until: u64,
}

struct Unsettled {
    handle: u32,
    queue: Arc<Queue>,
    token: uuid::Uuid,
}

struct Session {
    next_outgoing_id: u32,
    remote_incoming_window: u32,
    incoming_left: u32,
    next_incoming_id: u32,
    next_delivery_id: u32,
    links: HashMap<u32, Link>,
    unsettled: BTreeMap<u32, Unsettled>,
}

struct Engine {
    shared: Arc<Shared>,
    out: BytesMut,
    out_tx: mpsc::UnboundedSender<Bytes>,
    events_tx: mpsc::UnboundedSender<Event>,
    peer_max_frame: usize,
    remote_idle: Option<Duration>,
    last_sent: tokio::time::Instant,
    /// When the socket was accepted.
    started: tokio::time::Instant,
    last_received: tokio::time::Instant,
    /// The peer's `open` arrived.
    opened: bool,
    backlog: Backlog,
    sessions: HashMap<u16, Session>,
    auth: Authorizations,
    txns: Transactions,
    closed: bool,
    peer: String,
}

/// A protocol violation: the connection is closed with this error.
struct Violation(AmqpError);

fn violation(condition: &str, description: impl Into<String>) -> Violation {
    Violation(error(condition, description))
}

type Step = Result<(), Violation>;

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
                        self.close_with(error("amqp:connection:framing-error", e.to_string()));
                        return Ending::Finished(format!("framing error: {e}"));
                    }
                    Some(Ok(Incoming::Header(_))) => {
                        self.close_with(error("amqp:connection:framing-error", "unexpected protocol header"));
                        return Ending::Finished("unexpected protocol header".into());
                    }
                    Some(Ok(Incoming::Frame(bytes))) => {
                        self.last_received = tokio::time::Instant::now();
                        if let Err(Violation(e)) = self.on_frame(bytes, &mut reader) {
                            tracing::info!(peer = %self.peer, "closing connection: {:?}", e.description);
                            self.close_with(e);
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
                        let links: Vec<(u16, u32)> = self
                            .sessions
                            .iter()
                            .flat_map(|(&c, s)| s.links.keys().map(move |&h| (c, h)))
                            .collect();
                        for (channel, handle) in links {
                            self.deliver(channel, handle);
                        }
                    }
                },
                ctl = control.recv() => match ctl {
                    Some(Control::Kill) => return Ending::Killed,
                    Some(Control::Shutdown) | None => {
                        self.close_with(error("amqp:connection:forced", "the emulator is shutting down"));
                        self.flush();
                        return Ending::Finished("emulator shutdown".into());
                    }
                },
                _ = tick.tick() => self.on_tick(),
            }
            self.flush();
            if self.closed {
                return Ending::Finished("closed".into());
            }
            if self.backlog.len() > self.backlog.max {
                tracing::warn!(peer = %self.peer, bytes = self.backlog.len(), "dropping a connection that does not read what it is sent");
                return Ending::Killed;
            }
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.last_sent = tokio::time::Instant::now();
            self.backlog.bytes.fetch_add(self.out.len(), Ordering::AcqRel);
            let _ = self.out_tx.send(self.out.split().freeze());
        }
    }

    /// Protocol headers and SASL. Returns false when the peer was refused.
    async fn handshake<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FramedRead<R, WireDecoder>,
    ) -> Result<bool, String> {
        let mut header = next_header(reader).await?;
        if ProtocolId::parse(&header) == Some(ProtocolId::Sasl) {
            self.raw(&ProtocolId::Sasl.header());
            let mechanisms = SaslMechanisms {
                sasl_server_mechanisms: Array(
                    ["MSSBCBS", "ANONYMOUS", "PLAIN", "EXTERNAL"].into_iter().map(Symbol::from).collect(),
                ),
            };
            self.put(FRAME_TYPE_SASL, 0, &mechanisms);
            self.flush();
            let init = match reader.next().await {
                Some(Ok(Incoming::Frame(mut bytes))) => {
                    codec::check_performative(&bytes).map_err(|e| format!("malformed SASL frame: {e}"))?;
                    let mut codec = fe2o3_amqp::frames::sasl::FrameCodec {};
                    match codec.decode(&mut bytes) {
                        Ok(Some(fe2o3_amqp::frames::sasl::Frame::Init(init))) => init,
                        Ok(other) => return Err(format!("expected sasl-init, got {other:?}")),
                        Err(e) => return Err(format!("malformed SASL frame: {e}")),
                    }
                }
                Some(Ok(Incoming::Header(_))) => return Err("protocol header instead of sasl-init".into()),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("peer closed the socket during SASL".into()),
            };
            let mechanism = init.mechanism.as_str().to_string();
            let code = match mechanism.as_str() {
                "ANONYMOUS" | "MSSBCBS" | "EXTERNAL" => SaslCode::Ok,
                "PLAIN" => {
                    let response = init.initial_response.map(|b| b.into_vec()).unwrap_or_default();
                    let mut parts = response.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
                    let (_authzid, name, key) = (parts.next(), parts.next(), parts.next());
                    match (name, key) {
                        (Some(n), Some(k)) => match self.shared.keys.check_plain(&n, &k) {
                            Some(rights) => {
                                self.auth.grant_plain(rights);
                                SaslCode::Ok
                            }
                            None => SaslCode::Auth,
                        },
                        _ => SaslCode::Auth,
                    }
                }
                _ => SaslCode::Auth,
            };
            self.put(FRAME_TYPE_SASL, 0, &SaslOutcome { code: code.clone(), additional_data: None });
            self.flush();
            if code != SaslCode::Ok {
                tracing::info!(peer = %self.peer, mechanism, "SASL authentication failed");
                return Ok(false);
            }
            reader.decoder_mut().expect_header();
            header = next_header(reader).await?;
        }
        match ProtocolId::parse(&header) {
            Some(ProtocolId::Amqp) => {
                self.raw(&ProtocolId::Amqp.header());
                self.flush();
                Ok(true)
            }
            _ => {
                // Say what we speak (plain AMQP with SASL; TLS is a separate listener), then close.
                self.raw(&ProtocolId::Sasl.header());
                self.flush();
                Ok(false)
            }
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes a frame that has no payload. One the peer's max-frame-size cannot hold is not
    /// sent: the connection is closed with `amqp:frame-size-too-small` instead.
    fn put<T: serde::Serialize>(&mut self, frame_type: u8, channel: u16, performative: &T) {
        let start = self.out.len();
        codec::put_frame(&mut self.out, frame_type, channel, Some(performative), &[])
            .expect("performatives built by the broker always encode");
        let size = self.out.len() - start;
        if size > self.peer_max_frame {
            self.out.truncate(start);
            self.close_with(error(
                "amqp:frame-size-too-small",
                format!("a frame of {size} bytes does not fit the peer's max-frame-size of {}", self.peer_max_frame),
            ));
        }
    }

    fn close_with(&mut self, e: AmqpError) {
        if !self.closed {
            self.closed = true;
            self.put(FRAME_TYPE_AMQP, 0, &Close { error: Some(e) });
        }
    }

    fn link_mut(&mut self, channel: u16, handle: u32) -> Option<&mut Link> {
        self.sessions.get_mut(&channel)?.links.get_mut(&handle)
    }

    fn on_tick(&mut self) {
        let limits = &self.shared.limits;
        let age = self.started.elapsed();
        if !self.opened {
            if age >= limits.handshake_timeout {
                tracing::info!(peer = %self.peer, "no open within the handshake timeout; disconnecting");
                self.closed = true; // No close frame before open: the socket just ends.
            }
            return;
        }
        if !self.auth.is_authenticated() && age >= limits.authentication_timeout {
            let secs = limits.authentication_timeout.as_secs();
            self.close_with(error(
                "amqp:unauthorized-access",
                format!("no valid token was put on $cbs within {secs} s of connecting; put a token first"),
            ));
            return;
        }
        if self.last_received.elapsed() >= limits.idle_timeout {
            let ms = limits.idle_timeout.as_millis();
            self.close_with(error(
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
            codec::put_frame::<()>(&mut self.out, FRAME_TYPE_AMQP, 0, None, &[]).expect("empty frames encode");
        }
        // Links whose authorization expired without a renewed token are detached, as the service does.
        let now = auth::now_secs();
        let mut expired = Vec::new();
        for (&channel, session) in &mut self.sessions {
            for (&handle, link) in &mut session.links {
                if let Some(a) = &mut link.auth
                    && a.until <= now
                {
                    match self.auth.authorized_until(&a.path, a.rights, now) {
                        Some(renewed) => a.until = renewed,
                        None => expired.push((channel, handle, a.path.clone())),
                    }
                }
            }
        }
        for (channel, handle, path) in expired {
            tracing::info!(peer = %self.peer, path, "token expired; detaching link");
            self.detach(
                channel,
                handle,
                Some(error("amqp:unauthorized-access", format!("the token for '{path}' expired"))),
            );
        }
    }

    fn on_frame<R: AsyncRead + Unpin>(&mut self, mut bytes: BytesMut, reader: &mut FramedRead<R, WireDecoder>) -> Step {
        // Walked before it is decoded: serde_amqp recurses once per nesting level.
        codec::check_performative(&bytes)
            .map_err(|e| violation("amqp:decode-error", format!("malformed frame: {e}")))?;
        let frame = match (FrameDecoder {}).decode(&mut bytes) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(violation("amqp:decode-error", format!("malformed frame: {e}"))),
        };
        let Frame { channel, body } = frame;
        match body {
            FrameBody::Open(open) => {
                self.peer_max_frame = usize::from(open.max_frame_size).clamp(codec::MIN_MAX_FRAME_SIZE, MAX_FRAME_SIZE);
                self.remote_idle =
                    open.idle_time_out.filter(|&ms| ms > 0).map(|ms| Duration::from_millis(u64::from(ms)));
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
                self.put(FRAME_TYPE_AMQP, 0, &reply);
                Ok(())
            }
            FrameBody::Begin(begin) => self.on_begin(channel, begin),
            FrameBody::Attach(attach) => self.on_attach(channel, attach),
            FrameBody::Flow(flow) => self.on_flow(channel, flow),
            FrameBody::Transfer { performative, payload } => self.on_transfer(channel, performative, payload),
            FrameBody::Disposition(d) => self.on_disposition(channel, d),
            FrameBody::Detach(d) => {
                let handle = d.handle.0;
                self.session(channel)?;
                self.detach(channel, handle, None);
                Ok(())
            }
            FrameBody::End(_) => {
                self.sessions.remove(&channel);
                self.put(FRAME_TYPE_AMQP, channel, &End { error: None });
                Ok(())
            }
            FrameBody::Close(_) => {
                if !self.closed {
                    self.put(FRAME_TYPE_AMQP, 0, &Close { error: None });
                    self.closed = true;
                }
                Ok(())
            }
            FrameBody::Empty => Ok(()),
        }
    }

    fn session(&mut self, channel: u16) -> Result<&mut Session, Violation> {
        self.sessions.get_mut(&channel).ok_or_else(|| {
            violation("amqp:connection:framing-error", format!("no session is begun on channel {channel}"))
        })
    }

    fn on_begin(&mut self, channel: u16, begin: Begin) -> Step {
        if !self.opened {
            return Err(violation("amqp:illegal-state", "begin before open"));
        }
        let channel_max = self.shared.limits.channel_max;
        if channel > channel_max {
            return Err(violation(
                "amqp:connection:framing-error",
                format!("channel {channel} is above the channel-max of {channel_max} this broker advertised"),
            ));
        }
        if self.sessions.contains_key(&channel) {
            return Err(violation("amqp:illegal-state", format!("a session is already begun on channel {channel}")));
        }
        self.sessions.insert(
            channel,
            Session {
                next_outgoing_id: 0,
                remote_incoming_window: begin.incoming_window,
                incoming_left: INCOMING_WINDOW,
                next_incoming_id: begin.next_outgoing_id,
                next_delivery_id: 0,
                links: HashMap::new(),
                unsettled: BTreeMap::new(),
            },
        );
        let reply = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: u32::MAX,
            handle_max: Handle(self.shared.limits.handle_max),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.put(FRAME_TYPE_AMQP, channel, &reply);
        Ok(())
    }

    fn on_attach(&mut self, channel: u16, attach: Attach) -> Step {
        let handle = attach.handle.0;
        if self.session(channel)?.links.contains_key(&handle) {
            return Err(violation("amqp:session:handle-in-use", format!("handle {handle} is already attached")));
        }
        self.check_attach_size(&attach)?;
        let now = auth::now_secs();
        let client_sends = attach.role == Role::Sender;
        let max_links = self.shared.limits.max_links_per_connection;
        let links: usize = self.sessions.values().map(|s| s.links.len()).sum();
        let resolved: Result<(Kind, Option<LinkAuth>), AmqpError> = if links >= max_links {
            Err(error(
                "amqp:resource-limit-exceeded",
                format!("this connection has {max_links} links attached, the most it may: detach some first"),
            ))
        } else if client_sends {
            self.resolve_target(&attach, now)
        } else {
            self.resolve_source(&attach, now)
        };
        match resolved {
            Ok((kind, auth)) => {
                let max_message_size =
                    matches!(kind, Kind::Accept { .. }).then_some(self.shared.max_message_size as u64);
                let reply = Attach {
                    name: attach.name.clone(),
                    handle: Handle(handle),
                    role: if client_sends { Role::Receiver } else { Role::Sender },
                    snd_settle_mode: attach.snd_settle_mode.clone(),
                    rcv_settle_mode: attach.rcv_settle_mode.clone(),
                    source: attach.source.clone(),
                    target: attach.target.clone(),
                    unsettled: None,
                    incomplete_unsettled: false,
                    initial_delivery_count: if client_sends { None } else { Some(0) },
                    max_message_size,
                    offered_capabilities: None,
                    desired_capabilities: None,
                    properties: None,
                };
                self.put(FRAME_TYPE_AMQP, channel, &reply);
                let credit = if client_sends { SENDER_CREDIT } else { 0 };
                let delivery_count = if client_sends { attach.initial_delivery_count.unwrap_or(0) } else { 0 };
                let link = Link {
                    name: attach.name,
                    kind,
                    credit,
                    delivery_count,
                    drain: false,
                    waiting: false,
                    pending: VecDeque::new(),
                    partial: None,
                    auth,
                    next_tag: 0,
                };
                self.session(channel)?.links.insert(handle, link);
                if client_sends {
                    self.send_link_flow(channel, handle, false);
                }
                Ok(())
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, link = %attach.name, "attach refused: {:?}", e.description);
                // The service's way: attach with a null terminus, then detach with the error.
                let reply = Attach {
                    name: attach.name,
                    handle: Handle(handle),
                    role: if client_sends { Role::Receiver } else { Role::Sender },
                    snd_settle_mode: attach.snd_settle_mode,
                    rcv_settle_mode: attach.rcv_settle_mode,
                    source: if client_sends { attach.source } else { None },
                    target: if client_sends { None } else { attach.target },
                    unsettled: None,
                    incomplete_unsettled: false,
                    initial_delivery_count: if client_sends { None } else { Some(0) },
                    max_message_size: None,
                    offered_capabilities: None,
                    desired_capabilities: None,
                    properties: None,
                };
                self.put(FRAME_TYPE_AMQP, channel, &reply);
                self.put(FRAME_TYPE_AMQP, channel, &Detach { handle: Handle(handle), closed: true, error: Some(e) });
                Ok(())
            }
        }
    }

    /// Refuses handles above `handle-max`, and names and addresses longer than the limit: the
    /// broker keeps the name for the link's life and echoes all of them.
    fn check_attach_size(&self, attach: &Attach) -> Step {
        let limits = &self.shared.limits;
        if attach.handle.0 > limits.handle_max {
            return Err(violation(
                "amqp:session:handle-max-exceeded",
                format!(
                    "handle {} is above the handle-max of {} this broker advertised",
                    attach.handle.0, limits.handle_max
                ),
            ));
        }
        let source = attach.source.as_deref().and_then(|s| s.address.as_deref());
        let target = match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.as_deref(),
            _ => None,
        };
        for (what, text) in
            [("link name", Some(attach.name.as_str())), ("source address", source), ("target address", target)]
        {
            let len = text.map_or(0, str::len);
            if len > limits.max_name_length {
                return Err(violation(
                    "amqp:invalid-field",
                    format!(
                        "a {what} of {len} bytes is longer than the {} bytes this broker accepts",
                        limits.max_name_length
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that the connection holds a token for `path` with `rights`.
    fn authorize(&self, path: String, rights: Rights, now: u64) -> Result<Option<LinkAuth>, AmqpError> {
        let until = self.auth.check(&path, rights, now).map_err(|why| error("amqp:unauthorized-access", why))?;
        Ok(Some(LinkAuth { path, rights, until }))
    }

    /// A client sender's target: an entity, `$cbs`, `$management`, or the coordinator.
    fn resolve_target(&self, attach: &Attach, now: u64) -> Result<(Kind, Option<LinkAuth>), AmqpError> {
        let address = match attach.target.as_deref() {
            Some(TargetArchetype::Coordinator(_)) => return Ok((Kind::Coordinator, None)),
            Some(TargetArchetype::Target(t)) => t.address.clone(),
            None => None,
        };
        // Send-via: the link is attached to one entity, messages go to another.
        let via =
            attach.properties.as_ref().and_then(|p| p.get(&Symbol::from("com.microsoft:transfer-destination-address")));
        let address = match via {
            Some(Value::String(dest)) => Some(dest.clone()),
            _ => address,
        };
        let address = address.ok_or_else(|| error("amqp:invalid-field", "the target has no address"))?;
        let (node, path) =
            self.shared.namespace.resolve(&address).map_err(|e| error("amqp:not-found", e.to_string()))?;
        match node {
            Node::Cbs => Ok((Kind::CbsRequest, None)),
            Node::Management(queue) => {
                // Any right opens the link; each operation checks the one it needs.
                Ok((Kind::ManagementRequest { queue }, self.authorize(path, Rights::NONE, now)?))
            }
            Node::Queue(q) if q.name().contains("/$DeadLetterQueue") || q.name().contains("/Subscriptions/") => Err(
                error("amqp:not-allowed", format!("cannot send to '{}': send to its queue or topic instead", q.name())),
            ),
            Node::Queue(q) => {
                Ok((Kind::Accept { dest: Destination::Queue(q) }, self.authorize(path, Rights::SEND, now)?))
            }
            Node::Topic(t) => {
                Ok((Kind::Accept { dest: Destination::Topic(t) }, self.authorize(path, Rights::SEND, now)?))
            }
        }
    }

    /// A client receiver's source: an entity, or the response side of `$cbs`/`$management`.
    fn resolve_source(&self, attach: &Attach, now: u64) -> Result<(Kind, Option<LinkAuth>), AmqpError> {
        let source: Option<&Source> = attach.source.as_deref();
        let address = source
            .and_then(|s| s.address.clone())
            .ok_or_else(|| error("amqp:invalid-field", "the source has no address"))?;
        let reply_address = match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone(),
            _ => None,
        };
        let (node, path) =
            self.shared.namespace.resolve(&address).map_err(|e| error("amqp:not-found", e.to_string()))?;
        match node {
            Node::Cbs | Node::Management(_) => Ok((Kind::Response { node: path, reply_address }, None)),
            Node::Queue(queue) => {
                let auth = self.authorize(path, Rights::LISTEN, now)?;
                let mode = if attach.snd_settle_mode == SenderSettleMode::Settled {
                    ReceiveMode::ReceiveAndDelete
                } else {
                    ReceiveMode::PeekLock
                };
                Ok((Kind::Deliver { queue, mode }, auth))
            }
            Node::Topic(t) => Err(error(
                "amqp:not-allowed",
                format!("cannot receive from topic '{}': receive from '<topic>/Subscriptions/<name>'", t.name()),
            )),
        }
    }

    fn detach(&mut self, channel: u16, handle: u32, error: Option<AmqpError>) {
        let Some(session) = self.sessions.get_mut(&channel) else { return };
        if session.links.remove(&handle).is_some() {
            session.unsettled.retain(|_, u| u.handle != handle);
            self.put(FRAME_TYPE_AMQP, channel, &Detach { handle: Handle(handle), closed: true, error });
        }
    }

    fn on_flow(&mut self, channel: u16, flow: Flow) -> Step {
        let session = self.session(channel)?;
        session.remote_incoming_window = flow
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(session.next_outgoing_id);
        let Some(handle) = flow.handle.map(|h| h.0) else {
            // Session flow: the window may have opened for every sending link.
            let handles: Vec<u32> = session.links.keys().copied().collect();
            for h in handles {
                self.deliver(channel, h);
            }
            return Ok(());
        };
        let Some(link) = session.links.get_mut(&handle) else { return Ok(()) };
        let sending = matches!(link.kind, Kind::Deliver { .. } | Kind::Response { .. });
        if sending {
            if let Some(credit) = flow.link_credit {
                let their_count = flow.delivery_count.unwrap_or(0);
                link.credit = their_count.wrapping_add(credit).wrapping_sub(link.delivery_count);
            }
            link.drain = flow.drain;
            self.deliver(channel, handle);
        }
        if flow.echo {
            self.send_link_flow(channel, handle, false);
        }
        Ok(())
    }

    fn send_link_flow(&mut self, channel: u16, handle: u32, drain: bool) {
        let Some(session) = self.sessions.get(&channel) else { return };
        let Some(link) = session.links.get(&handle) else { return };
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: session.incoming_left,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: Some(Handle(handle)),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(link.credit),
            available: None,
            drain,
            echo: false,
            properties: None,
        };
        self.put(FRAME_TYPE_AMQP, channel, &flow);
    }

    /// Sends what a broker → client link has room for: pending responses, then queue messages.
    fn deliver(&mut self, channel: u16, handle: u32) {
        let max_frame = self.peer_max_frame;
        loop {
            if self.backlog.is_high(self.out.len()) {
                // The peer is not reading: hold its messages until the writer says it did. The
                // flag goes up before the second look, so a writer that drains in between either
                // is seen here or sees the flag (and sends `Writable`).
                self.backlog.paused.store(true, Ordering::Release);
                if self.backlog.is_high(self.out.len()) {
                    return; // Not `break`: a drain must not give up credit for messages that wait.
                }
            }
            let Some(session) = self.sessions.get_mut(&channel) else { return };
            let Some(link) = session.links.get_mut(&handle) else { return };
            if link.credit == 0 || session.remote_incoming_window == 0 {
                break;
            }
            let (payload, tag, settled, unsettled) = if let Some(p) = link.pending.pop_front() {
                link.next_tag += 1;
                (p, link.next_tag.to_be_bytes().to_vec(), true, None)
            } else if let Kind::Deliver { queue, mode } = &link.kind {
                if link.waiting {
                    break;
                }
                let events = self.events_tx.clone();
                let wake = move || {
                    let _ = events.send(Event::Available { channel, handle });
                };
                match queue.take_or_wait(*mode, wake) {
                    Some(d) => {
                        tracing::trace!(link = %link.name, queue = queue.name(), seq = d.sequence_number, "delivering");
                        let tag = match d.lock_token {
                            Some(t) => delivery_tag(t).to_vec(),
                            None => uuid::Uuid::new_v4().to_bytes_le().to_vec(),
                        };
                        let unsettled = d.lock_token.map(|token| Unsettled { handle, queue: queue.clone(), token });
                        (d.payload, tag, unsettled.is_none(), unsettled)
                    }
                    None => {
                        link.waiting = true;
                        break;
                    }
                }
            } else {
                break;
            };
            link.credit -= 1;
            link.delivery_count = link.delivery_count.wrapping_add(1);
            let delivery_id = session.next_delivery_id;
            session.next_delivery_id = session.next_delivery_id.wrapping_add(1);
            if let Some(u) = unsettled {
                session.unsettled.insert(delivery_id, u);
            }
            let transfer = Transfer {
                handle: Handle(handle),
                delivery_id: Some(delivery_id),
                delivery_tag: Some(DeliveryTag::from(tag)),
                message_format: Some(0),
                settled: Some(settled),
                more: false,
                rcv_settle_mode: None,
                state: None,
                resume: false,
                aborted: false,
                batchable: false,
            };
            let frames = codec::put_transfer(&mut self.out, channel, transfer, &payload, max_frame)
                .expect("transfers built by the broker always encode") as u32;
            session.next_outgoing_id = session.next_outgoing_id.wrapping_add(frames);
            session.remote_incoming_window = session.remote_incoming_window.saturating_sub(frames);
        }
        // Drain: nothing more to send now, so use up the credit and say so.
        let Some(link) = self.link_mut(channel, handle) else { return };
        if link.drain && link.credit > 0 && link.pending.is_empty() {
            link.delivery_count = link.delivery_count.wrapping_add(link.credit);
            link.credit = 0;
            link.drain = false;
            self.send_link_flow(channel, handle, true);
        }
    }

    fn on_transfer(&mut self, channel: u16, transfer: Transfer, payload: Bytes) -> Step {
        let handle = transfer.handle.0;
        let session = self.session(channel)?;
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        session.incoming_left = session.incoming_left.saturating_sub(1);
        let top_up = session.incoming_left < INCOMING_WINDOW / 2;
        if top_up {
            session.incoming_left = INCOMING_WINDOW;
            let flow = Flow {
                next_incoming_id: Some(session.next_incoming_id),
                incoming_window: INCOMING_WINDOW,
                next_outgoing_id: session.next_outgoing_id,
                outgoing_window: u32::MAX,
                handle: None,
                delivery_count: None,
                link_credit: None,
                available: None,
                drain: false,
                echo: false,
                properties: None,
            };
            self.put(FRAME_TYPE_AMQP, channel, &flow);
        }
        let max_message_size = self.shared.max_message_size;
        let session = self.session(channel)?;
        let Some(link) = session.links.get_mut(&handle) else {
            return Err(violation("amqp:session:unattached-handle", format!("transfer on unattached handle {handle}")));
        };
        if transfer.aborted {
            link.partial = None;
            return Ok(());
        }
        let partial = match link.partial.take() {
            Some(mut p) => {
                p.payload.extend_from_slice(&payload);
                p
            }
            None => {
                let Some(delivery_id) = transfer.delivery_id else {
                    return Err(violation(
                        "amqp:invalid-field",
                        "the first transfer of a delivery must carry its delivery-id",
                    ));
                };
                link.credit = link.credit.saturating_sub(1);
                link.delivery_count = link.delivery_count.wrapping_add(1);
                Partial {
                    delivery_id,
                    settled: transfer.settled.unwrap_or(false),
                    format: transfer.message_format.unwrap_or(0),
                    state: transfer.state.clone(),
                    payload: BytesMut::from(&payload[..]),
                }
            }
        };
        if partial.payload.len() > max_message_size.saturating_mul(2).max(MAX_FRAME_SIZE) {
            link.partial = None;
            return Err(violation(
                "amqp:link:message-size-exceeded",
                "a delivery grew far past the maximum message size",
            ));
        }
        if transfer.more {
            link.partial = Some(partial);
            return Ok(());
        }
        let low_credit = link.credit < SENDER_CREDIT / 2;
        if low_credit {
            link.credit = SENDER_CREDIT;
        }
        let outcome = self.on_message(channel, handle, &partial);
        if let Some(state) = outcome
            && !partial.settled
        {
            let d = Disposition {
                role: Role::Receiver,
                first: partial.delivery_id,
                last: None,
                settled: true,
                state: Some(state),
                batchable: false,
            };
            self.put(FRAME_TYPE_AMQP, channel, &d);
        }
        if low_credit {
            self.send_link_flow(channel, handle, false);
        }
        Ok(())
    }

    /// Handles a whole message from the client; returns the delivery's outcome.
    fn on_message(&mut self, channel: u16, handle: u32, p: &Partial) -> Option<DeliveryState> {
        let payload = p.payload.clone().freeze();
        let kind = match self.link_mut(channel, handle).map(|l| &l.kind) {
            Some(Kind::Accept { dest }) => Some(dest.clone()),
            _ => None,
        };
        if let Some(dest) = kind {
            return Some(self.accept_messages(dest, &payload, p));
        }
        let request = match Request::parse(&payload) {
            Ok(r) => r,
            Err(e) => return Some(rejected("amqp:decode-error", format!("malformed request message: {e}"))),
        };
        let link = self.link_mut(channel, handle)?;
        match &link.kind {
            Kind::CbsRequest => {
                let keys = self.shared.keys.clone();
                let response = management::put_token(&request, &keys, &mut self.auth);
                self.respond(channel, "$cbs", request.reply_to.as_deref(), response);
                Some(DeliveryState::Accepted(Accepted {}))
            }
            Kind::ManagementRequest { queue } => {
                let queue = queue.clone();
                let path = link.auth.as_ref().map(|a| a.path.clone()).unwrap_or_default();
                let mut settled = Vec::new();
                let auth = &self.auth;
                let authorize = |needed: Rights| auth.check(&path, needed, auth::now_secs()).map(|_| ());
                let response = management::management(
                    &request,
                    ManagementContext { queue: &queue, authorize: &authorize, on_settled: &mut |t| settled.push(t) },
                );
                for session in self.sessions.values_mut() {
                    session.unsettled.retain(|_, u| !settled.contains(&u.token));
                }
                let node = format!("{}/$management", queue.name().to_ascii_lowercase());
                self.respond(channel, &node, request.reply_to.as_deref(), response);
                Some(DeliveryState::Accepted(Accepted {}))
            }
            Kind::Coordinator => Some(self.on_coordinator(&payload)),
            _ => Some(rejected("amqp:not-allowed", "this link does not accept messages")),
        }
    }

    fn accept_messages(&mut self, dest: Destination, payload: &Bytes, p: &Partial) -> DeliveryState {
        if payload.len() > self.shared.max_message_size {
            return rejected(
                "amqp:link:message-size-exceeded",
                format!(
                    "The received message (size {} bytes) exceeds the limit ({} bytes) currently allowed on the link.",
                    payload.len(),
                    self.shared.max_message_size
                ),
            );
        }
        let messages = match StoredMessage::parse_transfer(payload, p.format) {
            Ok(m) => m,
            Err(e) => return rejected("amqp:decode-error", format!("malformed message: {e}")),
        };
        match &p.state {
            Some(DeliveryState::TransactionalState(ts)) => {
                let txn_id = ts.txn_id.clone();
                if let Err(e) = dest.check_room(StoredMessage::total_size(&messages)) {
                    return rejected(QuotaExceeded::CONDITION, e.to_string());
                }
                if self.txns.stage(&txn_id, Staged::Send(dest, messages)) {
                    DeliveryState::TransactionalState(TransactionalState {
                        txn_id,
                        outcome: Some(Outcome::Accepted(Accepted {})),
                    })
                } else {
                    rejected("amqp:transaction:unknown-id", "the transaction is not open on this connection")
                }
            }
            _ => {
                let count = messages.len();
                match dest.enqueue(messages) {
                    Ok(_) => {
                        tracing::trace!(entity = dest.name(), count, "enqueued");
                        DeliveryState::Accepted(Accepted {})
                    }
                    Err(e) => rejected(QuotaExceeded::CONDITION, e.to_string()),
                }
            }
        }
    }

    fn on_coordinator(&mut self, payload: &Bytes) -> DeliveryState {
        // The body is an amqp-value holding a described declare or discharge list.
        let Some(value) = codec::amqp_value(payload) else {
            return rejected("amqp:decode-error", "the coordinator expects declare or discharge in an amqp-value body");
        };
        if let Ok(_declare) = serde_amqp::from_slice::<Declare>(&value) {
            let txn_id = self.txns.declare();
            return DeliveryState::Declared(Declared { txn_id: txn_id.into() });
        }
        match serde_amqp::from_slice::<Discharge>(&value) {
            Ok(discharge) => match self.txns.discharge(&discharge.txn_id, discharge.fail.unwrap_or(false)) {
                Ok(()) => DeliveryState::Accepted(Accepted {}),
                Err(e) => {
                    let condition = match e {
                        crate::transaction::DischargeError::Unknown => "amqp:transaction:unknown-id",
                        crate::transaction::DischargeError::LockLost => "amqp:transaction:rollback",
                    };
                    rejected(condition, e.to_string())
                }
            },
            Err(_) => rejected("amqp:decode-error", "the coordinator expects declare or discharge"),
        }
    }

    /// Queues a response on the link that serves `node` (or whose target is `reply_to`).
    fn respond(&mut self, channel: u16, node: &str, reply_to: Option<&str>, response: Bytes) {
        let mut channels: Vec<u16> = vec![channel];
        channels.extend(self.sessions.keys().copied().filter(|&c| c != channel));
        let mut by_node = None;
        for c in channels {
            let Some(session) = self.sessions.get(&c) else { continue };
            for (&h, link) in &session.links {
                if let Kind::Response { node: n, reply_address } = &link.kind {
                    if reply_to.is_some() && reply_address.as_deref() == reply_to {
                        return self.push_response(c, h, response);
                    }
                    if n == node && by_node.is_none() {
                        by_node = Some((c, h));
                    }
                }
            }
        }
        match by_node {
            Some((c, h)) => self.push_response(c, h, response),
            None => {
                tracing::info!(peer = %self.peer, node, "no response link is attached for {node}; response dropped")
            }
        }
    }

    fn push_response(&mut self, channel: u16, handle: u32, response: Bytes) {
        if let Some(link) = self.link_mut(channel, handle) {
            link.pending.push_back(response);
        }
        self.deliver(channel, handle);
    }

    fn on_disposition(&mut self, channel: u16, d: Disposition) -> Step {
        if d.role != Role::Receiver {
            // Dispositions from a client sender: nothing to do (we settle its sends at once).
            return Ok(());
        }
        let last = d.last.unwrap_or(d.first);
        let session = self.session(channel)?;
        let ids: Vec<u32> = session.unsettled.range(d.first..=last.max(d.first)).map(|(&id, _)| id).collect();
        let Some(state) = d.state else { return Ok(()) };
        for id in ids {
            let Some(u) = self.session(channel)?.unsettled.remove(&id) else { continue };
            let echo = self.apply_outcome(&u, &state);
            if !d.settled {
                let reply = Disposition {
                    role: Role::Sender,
                    first: id,
                    last: None,
                    settled: true,
                    state: Some(echo),
                    batchable: false,
                };
                self.put(FRAME_TYPE_AMQP, channel, &reply);
            }
        }
        Ok(())
    }

    /// Applies a receiver's outcome; returns the echo the service would send.
    fn apply_outcome(&mut self, u: &Unsettled, state: &DeliveryState) -> DeliveryState {
        let (settlement, echo) = match state {
            DeliveryState::TransactionalState(ts) => {
                let Some(outcome) = &ts.outcome else {
                    return rejected("amqp:invalid-field", "a transactional disposition needs an outcome");
                };
                let inner: DeliveryState = outcome.clone().into();
                let Some((settlement, echo)) = settlement_of(&inner) else {
                    return rejected("amqp:invalid-field", "unsupported outcome");
                };
                if !self.txns.is_open(&ts.txn_id) {
                    return rejected("amqp:transaction:unknown-id", "the transaction is not open on this connection");
                }
                if u.queue.check_lock(u.token).is_err() {
                    // The transaction cannot do what it was asked: it must not commit the rest.
                    self.txns.doom(&ts.txn_id);
                    return lock_lost_outcome();
                }
                self.txns.stage(&ts.txn_id, Staged::Settle(u.queue.clone(), u.token, settlement));
                let echo_outcome = match echo {
                    DeliveryState::Accepted(a) => Outcome::Accepted(a),
                    DeliveryState::Rejected(r) => Outcome::Rejected(r),
                    DeliveryState::Released(r) => Outcome::Released(r),
                    DeliveryState::Modified(m) => Outcome::Modified(m),
                    _ => Outcome::Accepted(Accepted {}),
                };
                return DeliveryState::TransactionalState(TransactionalState {
                    txn_id: ts.txn_id.clone(),
                    outcome: Some(echo_outcome),
                });
            }
            other => match settlement_of(other) {
                Some(x) => x,
                None => return DeliveryState::Accepted(Accepted {}),
            },
        };
        match u.queue.settle(u.token, settlement) {
            Ok(()) => echo,
            Err(_) => lock_lost_outcome(),
        }
    }
}

/// Maps a receiver's outcome to a settlement and the echo the service sends for it.
fn settlement_of(state: &DeliveryState) -> Option<(Settlement, DeliveryState)> {
    Some(match state {
        DeliveryState::Accepted(_) => (Settlement::Complete, DeliveryState::Accepted(Accepted {})),
        DeliveryState::Released(_) => (Settlement::Release, DeliveryState::Released(Released {})),
        DeliveryState::Modified(m) => {
            let props = properties_to_modify(m.message_annotations.as_ref());
            let echo = DeliveryState::Modified(Modified {
                delivery_failed: None,
                undeliverable_here: m.undeliverable_here,
                message_annotations: None,
            });
            if m.undeliverable_here == Some(true) {
                (Settlement::Defer(props), echo)
            } else {
                (Settlement::Abandon(props), echo)
            }
        }
        DeliveryState::Rejected(r) => {
            let info = r.error.as_ref().and_then(|e| e.info.as_deref());
            let text = |key: &str| match info.and_then(|i| i.get(&Symbol::from(key))) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let reason = text("DeadLetterReason");
            let description =
                text("DeadLetterErrorDescription").or_else(|| r.error.as_ref().and_then(|e| e.description.clone()));
            let properties = info
                .map(|i| {
                    i.iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "DeadLetterReason" | "DeadLetterErrorDescription"))
                        .filter_map(|(k, v)| simple_value(v.clone()).map(|v| (k.as_str().to_string(), v)))
                        .collect()
                })
                .unwrap_or_default();
            (
                Settlement::DeadLetter { reason, description, properties },
                DeliveryState::Rejected(Rejected { error: None }),
            )
        }
        _ => return None,
    })
}

fn properties_to_modify(annotations: Option<&Fields>) -> Vec<(String, fe2o3_amqp_types::primitives::SimpleValue)> {
    annotations
        .map(|a| a.iter().filter_map(|(k, v)| simple_value(v.clone()).map(|v| (k.as_str().to_string(), v))).collect())
        .unwrap_or_default()
}

fn rejected(condition: &str, description: impl Into<String>) -> DeliveryState {
    DeliveryState::Rejected(Rejected { error: Some(error(condition, description)) })
}

fn lock_lost_outcome() -> DeliveryState {
    rejected(
        "com.microsoft:message-lock-lost",
        "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.",
    )
}

async fn next_header<R: AsyncRead + Unpin>(reader: &mut FramedRead<R, WireDecoder>) -> Result<[u8; 8], String> {
    match reader.next().await {
        Some(Ok(Incoming::Header(h))) => Ok(h),
        Some(Ok(Incoming::Frame(_))) => Err("a frame arrived before the protocol header".into()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("peer closed the socket before the protocol header".into()),
    }
}
