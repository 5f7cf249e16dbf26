//! Links: `attach`/`detach`, credit, and the node each link serves.
//!
//! An attach is resolved to a [`Kind`]: which node the link serves and in which direction.
//! A refused attach is answered the service's way: an attach with a null terminus, then a
//! detach with the error. A link the broker detaches stays known as *detached* until the
//! peer's `detach`: frames it sent before it saw ours are dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{Error as AmqpError, Handle, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::{DeliveryState, Source, TargetArchetype};
use fe2o3_amqp_types::performatives::{Attach, Detach, Flow};
use fe2o3_amqp_types::primitives::Symbol;
use serde_amqp::Value;

use super::message_session::{self, SessionFilter};
use super::{Engine, Fault, Step};
use crate::auth::{self, Rights};
use crate::management::error;
use crate::namespace::{Destination, Node};
use crate::queue::{Queue, ReceiveMode, SessionClaim};

/// Link credit the broker grants a sender (topped up at half).
pub(super) const SENDER_CREDIT: u32 = 1000;

/// What a link does: the node it serves, and in which direction.
pub(super) enum Kind {
    /// Broker → client: messages of a queue (of one message session, for a session receiver).
    Deliver { queue: Arc<Queue>, mode: ReceiveMode, session: Option<SessionClaim> },
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

impl Link {
    /// The entity this link is on, if it was deleted since the link attached.
    pub(super) fn deleted_entity(&self) -> Option<&str> {
        match &self.kind {
            Kind::Deliver { queue, .. } | Kind::ManagementRequest { queue } => queue.is_deleted().then(|| queue.name()),
            Kind::Accept { dest } => dest.is_deleted().then(|| dest.name()),
            Kind::CbsRequest | Kind::Response { .. } | Kind::Coordinator => None,
        }
    }

    /// The largest message the peer may send on this link: its entity's, else `default`.
    pub(super) fn max_message_size(&self, default: usize) -> usize {
        match &self.kind {
            Kind::Accept { dest } => dest.max_message_size().unwrap_or(default),
            _ => default,
        }
    }
}

pub(super) struct Link {
    pub(super) name: String,
    pub(super) kind: Kind,
    /// Credit the client gave us (we send), or we gave it (it sends).
    pub(super) credit: u32,
    pub(super) delivery_count: u32,
    pub(super) drain: bool,
    /// A queue will wake the engine when this link may get a message.
    pub(super) waiting: bool,
    /// Responses waiting for credit.
    pub(super) pending: VecDeque<Bytes>,
    /// A client → broker delivery still arriving in pieces.
    pub(super) partial: Option<Partial>,
    /// What authorization was checked for, and until when it holds.
    pub(super) auth: Option<LinkAuth>,
    pub(super) next_tag: u64,
}

/// A client → broker transfer still arriving in pieces.
pub(super) struct Partial {
    pub(super) delivery_id: u32,
    pub(super) settled: bool,
    pub(super) format: u32,
    pub(super) state: Option<DeliveryState>,
    /// Bytes kept: the whole delivery, unless it passed the size limit.
    pub(super) payload: BytesMut,
    /// Bytes received, kept or not.
    pub(super) size: usize,
}

/// An attach resolved: what the link does, its authorization, and (for a session receiver)
/// the session it asked for.
pub(super) struct Resolved {
    pub(super) kind: Kind,
    pub(super) auth: Option<LinkAuth>,
    pub(super) session: Option<SessionFilter>,
}

impl Resolved {
    fn plain(kind: Kind, auth: Option<LinkAuth>) -> Self {
        Self { kind, auth, session: None }
    }
}

/// The path and rights a link was authorized for, and until when (Unix seconds).
pub(super) struct LinkAuth {
    pub(super) path: String,
    rights: Rights,
    until: u64,
}

/// A broker → client delivery awaiting its disposition.
pub(super) struct Unsettled {
    pub(super) handle: u32,
    pub(super) queue: Arc<Queue>,
    pub(super) token: uuid::Uuid,
    /// It came on a session receiver: a lost lock is the session's.
    pub(super) in_session: bool,
}

impl Link {
    fn new(name: String, kind: Kind, auth: Option<LinkAuth>, client_sends: bool, initial_count: u32) -> Self {
        Self {
            name,
            kind,
            credit: if client_sends { SENDER_CREDIT } else { 0 },
            delivery_count: if client_sends { initial_count } else { 0 },
            drain: false,
            waiting: false,
            pending: VecDeque::new(),
            partial: None,
            auth,
            next_tag: 0,
        }
    }

    /// Whether the broker sends on this link.
    pub(super) fn is_sending(&self) -> bool {
        matches!(self.kind, Kind::Deliver { .. } | Kind::Response { .. })
    }

    /// Takes the credit a receiver's `flow` grants.
    pub(super) fn on_flow(&mut self, flow: &Flow) {
        if let Some(credit) = flow.link_credit {
            let their_count = flow.delivery_count.unwrap_or(0);
            self.credit = their_count.wrapping_add(credit).wrapping_sub(self.delivery_count);
        }
        self.drain = flow.drain;
    }

    /// The message session this link holds, if it is a session receiver.
    pub(super) fn session_claim(&self) -> Option<(&Arc<Queue>, &SessionClaim)> {
        match &self.kind {
            Kind::Deliver { queue, session: Some(claim), .. } => Some((queue, claim)),
            _ => None,
        }
    }

    /// Frees what the link holds: a session receiver's session.
    fn release(&mut self) {
        if let Kind::Deliver { queue, session, .. } = &mut self.kind
            && let Some(claim) = session.take()
        {
            queue.release_session(&claim);
        }
    }
}

impl Drop for Link {
    /// However a link goes (detach, end, a dropped connection), its session is let go at once.
    fn drop(&mut self) {
        self.release();
    }
}

impl Engine {
    pub(super) fn link_mut(&mut self, channel: u16, handle: u32) -> Option<&mut Link> {
        self.sessions.get_mut(&channel)?.links.get_mut(&handle)
    }

    /// The link a frame names: `None` when the broker detached it and waits for the peer's
    /// `detach`; a session fault when the handle names no link.
    pub(super) fn attached(&mut self, channel: u16, handle: u32) -> Result<Option<&mut Link>, Fault> {
        let session = self.session(channel)?;
        if session.detached.contains(&handle) || session.pending.contains_key(&handle) {
            return Ok(None);
        }
        match session.links.get_mut(&handle) {
            Some(link) => Ok(Some(link)),
            None => Err(Fault::session(
                channel,
                "amqp:session:unattached-handle",
                format!("handle {handle} is not attached on channel {channel}"),
            )),
        }
    }

    pub(super) fn on_attach(&mut self, channel: u16, attach: Attach) -> Step {
        let handle = attach.handle.0;
        let session = self.session(channel)?;
        // A handle the broker detached and the peer reuses without answering: the detach is over.
        session.detached.remove(&handle);
        if session.links.contains_key(&handle) || session.pending.contains_key(&handle) {
            return Err(Fault::session(
                channel,
                "amqp:session:handle-in-use",
                format!("handle {handle} is already attached"),
            ));
        }
        self.check_attach_size(channel, &attach)?;
        let now = auth::now_secs();
        let client_sends = attach.role == Role::Sender;
        let max_links = self.shared.limits.max_links_per_connection;
        let links: usize = self.sessions.values().map(|s| s.links.len() + s.pending.len()).sum();
        let resolved = if links >= max_links {
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
            Ok(Resolved { kind, auth, session: None }) => self.accept_attach(channel, attach, kind, auth),
            Ok(Resolved { kind, auth, session: Some(filter) }) => {
                self.attach_session_receiver(channel, attach, kind, auth, filter)
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, link = %attach.name, "attach refused: {:?}", e.description);
                self.refuse_attach(channel, attach, e);
                Ok(())
            }
        }
    }

    /// Answers an attach and starts the link. A session receiver's answer names the session it
    /// got in its source filter, and when that session's lock lapses.
    pub(super) fn accept_attach(&mut self, channel: u16, attach: Attach, kind: Kind, auth: Option<LinkAuth>) -> Step {
        let handle = attach.handle.0;
        let client_sends = attach.role == Role::Sender;
        let max_message_size = match &kind {
            Kind::Accept { dest } => Some(dest.max_message_size().unwrap_or(self.shared.max_message_size) as u64),
            _ => None,
        };
        let (source, properties) = match &kind {
            Kind::Deliver { session: Some(claim), .. } => (
                attach.source.as_deref().map(|s| Box::new(message_session::granted_source(s, &claim.id))),
                Some(message_session::locked_until_property(claim.locked_until_ms)),
            ),
            _ => (attach.source.clone(), None),
        };
        let reply = Attach {
            handle: Handle(handle),
            role: if client_sends { Role::Receiver } else { Role::Sender },
            source,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: if client_sends { None } else { Some(0) },
            max_message_size,
            offered_capabilities: None,
            desired_capabilities: None,
            properties,
            ..attach.clone()
        };
        self.out.put(channel, &reply);
        let initial_count = attach.initial_delivery_count.unwrap_or(0);
        let link = Link::new(attach.name, kind, auth, client_sends, initial_count);
        self.session(channel)?.links.insert(handle, link);
        if client_sends {
            self.send_link_flow(channel, handle, false);
        }
        Ok(())
    }

    /// The service's way of refusing a link: attach with a null terminus, then detach with the error.
    pub(super) fn refuse_attach(&mut self, channel: u16, attach: Attach, e: AmqpError) {
        self.answer_attach_with_detach(channel, attach, Some(e));
        // The peer answers our detach; until then, frames on the handle are dropped.
    }

    /// Writes an attach with a null terminus and a detach; records the handle as detached
    /// when the detach carries an error (the peer answers it).
    pub(super) fn answer_attach_with_detach(&mut self, channel: u16, attach: Attach, e: Option<AmqpError>) {
        let client_sends = attach.role == Role::Sender;
        let handle = attach.handle.clone();
        let reply = Attach {
            role: if client_sends { Role::Receiver } else { Role::Sender },
            source: if client_sends { attach.source } else { None },
            target: if client_sends { None } else { attach.target },
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: if client_sends { None } else { Some(0) },
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
            ..attach
        };
        self.out.put(channel, &reply);
        let awaits_answer = e.is_some();
        self.out.put(channel, &Detach { handle, closed: true, error: e });
        if awaits_answer && let Some(session) = self.sessions.get_mut(&channel) {
            session.detached.insert(reply.handle.0);
        }
    }

    /// Refuses handles above `handle-max`, and names and addresses longer than the limit: the
    /// broker keeps the name for the link's life and echoes all of them.
    fn check_attach_size(&self, channel: u16, attach: &Attach) -> Step {
        let limits = &self.shared.limits;
        if attach.handle.0 > limits.handle_max {
            return Err(Fault::session(
                channel,
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
                // The link cannot be named back to the peer in a detach: its whole session ends.
                return Err(Fault::session(
                    channel,
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
    fn resolve_target(&self, attach: &Attach, now: u64) -> Result<Resolved, AmqpError> {
        let address = match attach.target.as_deref() {
            Some(TargetArchetype::Coordinator(_)) => return Ok(Resolved::plain(Kind::Coordinator, None)),
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
            Node::Cbs => Ok(Resolved::plain(Kind::CbsRequest, None)),
            Node::Management(queue) => {
                // Any right opens the link; each operation checks the one it needs.
                Ok(Resolved::plain(Kind::ManagementRequest { queue }, self.authorize(path, Rights::NONE, now)?))
            }
            Node::Queue(q) if q.name().contains("/$DeadLetterQueue") || q.name().contains("/Subscriptions/") => Err(
                error("amqp:not-allowed", format!("cannot send to '{}': send to its queue or topic instead", q.name())),
            ),
            Node::Queue(q) => {
                let auth = self.authorize(path, Rights::SEND, now)?;
                Ok(Resolved::plain(Kind::Accept { dest: Destination::Queue(q) }, auth))
            }
            Node::Topic(t) => {
                let auth = self.authorize(path, Rights::SEND, now)?;
                Ok(Resolved::plain(Kind::Accept { dest: Destination::Topic(t) }, auth))
            }
        }
    }

    /// A client receiver's source: an entity, or the response side of `$cbs`/`$management`.
    fn resolve_source(&self, attach: &Attach, now: u64) -> Result<Resolved, AmqpError> {
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
            Node::Cbs | Node::Management(_) => Ok(Resolved::plain(Kind::Response { node: path, reply_address }, None)),
            Node::Queue(queue) => {
                let auth = self.authorize(path, Rights::LISTEN, now)?;
                if queue.forwards() {
                    return Err(error(
                        "amqp:not-allowed",
                        format!(
                            "Cannot create a message receiver on an entity with auto-forwarding enabled: '{}' \
                             forwards every message (receive from its ForwardTo target, or its dead-letter queue)",
                            queue.name()
                        ),
                    ));
                }
                let session = message_session::requested(source, &queue)?;
                let mode = if attach.snd_settle_mode == SenderSettleMode::Settled {
                    ReceiveMode::ReceiveAndDelete
                } else {
                    ReceiveMode::PeekLock
                };
                Ok(Resolved { kind: Kind::Deliver { queue, mode, session: None }, auth, session })
            }
            Node::Topic(t) => Err(error(
                "amqp:not-allowed",
                format!("cannot receive from topic '{}': receive from '<topic>/Subscriptions/<name>'", t.name()),
            )),
        }
    }

    /// The peer's `detach`: answers it, unless it answers ours.
    pub(super) fn on_detach(&mut self, channel: u16, detach: Detach) -> Step {
        let handle = detach.handle.0;
        let session = self.session(channel)?;
        if session.detached.remove(&handle) {
            return Ok(());
        }
        if let Some(pending) = session.pending.remove(&handle) {
            // It gave up waiting for a session: answer its attach, then its detach.
            self.answer_attach_with_detach(channel, pending.attach, None);
            return Ok(());
        }
        if !session.links.contains_key(&handle) {
            // fe2o3 answers a refused attach with two detaches (the first echoes our error);
            // the second names a handle that is already free. Nothing is attached there, so
            // nothing can go wrong by letting it pass, and Service Bus does.
            tracing::debug!(peer = %self.peer, channel, handle, "a detach of a handle that is not attached is dropped");
            return Ok(());
        }
        self.drop_link(channel, handle);
        self.out.put(channel, &Detach { handle: Handle(handle), closed: true, error: None });
        Ok(())
    }

    /// Detaches a link from the broker's side; it stays known until the peer's `detach`.
    pub(super) fn detach(&mut self, channel: u16, handle: u32, error: Option<AmqpError>) {
        if self.drop_link(channel, handle) {
            if let Some(session) = self.sessions.get_mut(&channel) {
                session.detached.insert(handle);
            }
            self.out.put(channel, &Detach { handle: Handle(handle), closed: true, error });
        }
    }

    /// Removes a link (letting its session go) and its unsettled deliveries; false if there was none.
    fn drop_link(&mut self, channel: u16, handle: u32) -> bool {
        let Some(session) = self.sessions.get_mut(&channel) else { return false };
        if session.links.remove(&handle).is_none() {
            return false;
        }
        session.unsettled.retain(|_, u| u.handle != handle);
        true
    }

    pub(super) fn send_link_flow(&mut self, channel: u16, handle: u32, drain: bool) {
        let Some(session) = self.sessions.get(&channel) else { return };
        let Some(link) = session.links.get(&handle) else { return };
        let flow = session.flow(Some((handle, link, drain)));
        self.out.put(channel, &flow);
    }

    /// Links whose authorization expired without a renewed token are detached, as the service does.
    pub(super) fn expire_link_authorizations(&mut self, now: u64) {
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
}
