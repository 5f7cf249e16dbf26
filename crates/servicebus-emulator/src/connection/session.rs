//! AMQP sessions: `begin`/`end`, and the session's flow window in both directions.
//!
//! A session the broker ends (a [`Fault::Session`]) stays in the engine's map as *ending*
//! until the peer's `end` arrives; frames the peer sent before it saw ours are dropped.

use std::collections::{BTreeMap, HashMap, HashSet};

use fe2o3_amqp_types::definitions::{Error as AmqpError, Handle};
use fe2o3_amqp_types::performatives::{Begin, End, Flow};

use super::link::{Link, Unsettled};
use super::message_session::PendingAttach;
use super::{Engine, Fault, Step};

/// Session incoming window the broker advertises (and tops up at half).
const INCOMING_WINDOW: u32 = 5000;

pub(super) struct Session {
    pub(super) next_outgoing_id: u32,
    pub(super) remote_incoming_window: u32,
    pub(super) incoming_left: u32,
    pub(super) next_incoming_id: u32,
    pub(super) next_delivery_id: u32,
    pub(super) links: HashMap<u32, Link>,
    /// Broker → client deliveries awaiting the receiver's disposition, by delivery-id.
    pub(super) unsettled: BTreeMap<u32, Unsettled>,
    /// Handles the broker detached, until the peer's `detach` answers.
    pub(super) detached: HashSet<u32>,
    /// Session receivers waiting for a free message session, by handle.
    pub(super) pending: HashMap<u32, PendingAttach>,
    /// The broker sent `end` and waits for the peer's.
    ending: bool,
}

impl Session {
    fn new(begin: &Begin) -> Self {
        Self {
            next_outgoing_id: 0,
            remote_incoming_window: begin.incoming_window,
            incoming_left: INCOMING_WINDOW,
            next_incoming_id: begin.next_outgoing_id,
            next_delivery_id: 0,
            links: HashMap::new(),
            unsettled: BTreeMap::new(),
            detached: HashSet::new(),
            pending: HashMap::new(),
            ending: false,
        }
    }

    /// Counts one incoming transfer frame against the window; at half, tops the window up
    /// and returns the `flow` that tells the peer.
    pub(super) fn on_transfer_frame(&mut self) -> Option<Flow> {
        self.next_incoming_id = self.next_incoming_id.wrapping_add(1);
        self.incoming_left = self.incoming_left.saturating_sub(1);
        if self.incoming_left >= INCOMING_WINDOW / 2 {
            return None;
        }
        self.incoming_left = INCOMING_WINDOW;
        Some(self.flow(None))
    }

    /// Takes the window the peer announced in a `flow`.
    fn on_flow(&mut self, flow: &Flow) {
        self.remote_incoming_window =
            flow.next_incoming_id.unwrap_or(0).wrapping_add(flow.incoming_window).wrapping_sub(self.next_outgoing_id);
    }

    /// Counts a delivery sent as `frames` transfer frames: the next delivery-id, and the
    /// peer's window.
    pub(super) fn sent_transfer(&mut self, frames: u32) {
        self.next_delivery_id = self.next_delivery_id.wrapping_add(1);
        self.next_outgoing_id = self.next_outgoing_id.wrapping_add(frames);
        self.remote_incoming_window = self.remote_incoming_window.saturating_sub(frames);
    }

    /// A `flow` with this session's state, and the link state if `link` is given.
    pub(super) fn flow(&self, link: Option<(u32, &Link, bool)>) -> Flow {
        Flow {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: self.incoming_left,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: link.map(|(h, _, _)| Handle(h)),
            delivery_count: link.map(|(_, l, _)| l.delivery_count),
            link_credit: link.map(|(_, l, _)| l.credit),
            available: None,
            drain: link.is_some_and(|(_, _, drain)| drain),
            echo: false,
            properties: None,
        }
    }
}

impl Engine {
    pub(super) fn session(&mut self, channel: u16) -> Result<&mut Session, Fault> {
        self.sessions.get_mut(&channel).ok_or_else(|| {
            Fault::connection("amqp:connection:framing-error", format!("no session is begun on channel {channel}"))
        })
    }

    /// Whether frames on `channel` are to be dropped: the broker ended the session there and
    /// waits for the peer's `end`, or the peer ended it and still sends. Python's SDK detaches
    /// its `$management` links after its own `end` when a request failed; the service lets
    /// that pass, and so does the emulator.
    pub(super) fn is_ending(&mut self, channel: u16) -> Result<bool, Fault> {
        if self.ended.contains(&channel) {
            tracing::debug!(peer = %self.peer, channel, "a frame after the peer's end is dropped");
            return Ok(true);
        }
        Ok(self.session(channel)?.ending)
    }

    pub(super) fn on_begin(&mut self, channel: u16, begin: Begin) -> Step {
        let channel_max = self.shared.limits.channel_max;
        if channel > channel_max {
            return Err(Fault::connection(
                "amqp:connection:framing-error",
                format!("channel {channel} is above the channel-max of {channel_max} this broker advertised"),
            ));
        }
        if self.sessions.contains_key(&channel) {
            return Err(Fault::connection(
                "amqp:illegal-state",
                format!("a session is already begun on channel {channel}"),
            ));
        }
        if begin.remote_channel.is_some() {
            return Err(Fault::connection(
                "amqp:not-allowed",
                "begin with a remote-channel answers a broker's begin; this broker begins no sessions",
            ));
        }
        self.ended.remove(&channel);
        self.sessions.insert(channel, Session::new(&begin));
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
        self.out.put(channel, &reply);
        Ok(())
    }

    /// The peer's `end`: answers it, unless it answers ours.
    pub(super) fn on_end(&mut self, channel: u16, end: End) -> Step {
        if self.ended.contains(&channel) {
            return Ok(()); // A second end.
        }
        if let Some(e) = end.error {
            tracing::info!(peer = %self.peer, channel, condition = ?e.condition, "the peer ended a session: {:?}", e.description);
        }
        let ending = self.session(channel)?.ending;
        self.sessions.remove(&channel); // Its links let their message sessions go as they drop.
        self.ended.insert(channel);
        if !ending {
            self.out.put(channel, &End { error: None });
        }
        Ok(())
    }

    /// Ends a session from the broker's side: its links are gone at once, and the session
    /// stays half-closed until the peer's `end`.
    pub(super) fn end_session(&mut self, channel: u16, error: AmqpError) {
        let Some(session) = self.sessions.get_mut(&channel) else { return };
        if session.ending {
            return;
        }
        session.links.clear();
        session.unsettled.clear();
        session.detached.clear();
        session.pending.clear();
        session.ending = true;
        self.out.put(channel, &End { error: Some(error) });
    }

    pub(super) fn on_flow(&mut self, channel: u16, flow: Flow) -> Step {
        let session = self.session(channel)?;
        session.on_flow(&flow);
        let Some(handle) = flow.handle.as_ref().map(|h| h.0) else {
            // Session flow: the window may have opened for every sending link.
            let handles: Vec<u32> = session.links.keys().copied().collect();
            for h in handles {
                self.deliver(channel, h);
            }
            return Ok(());
        };
        if let Some(pending) = self.session(channel)?.pending.get_mut(&handle) {
            pending.flow = Some(flow); // Applied when it gets its session.
            return Ok(());
        }
        let link = self.attached(channel, handle)?;
        let Some(link) = link else { return Ok(()) };
        if link.is_sending() {
            link.on_flow(&flow);
            self.deliver(channel, handle);
        }
        if flow.echo {
            self.send_link_flow(channel, handle, false);
        }
        Ok(())
    }
}
