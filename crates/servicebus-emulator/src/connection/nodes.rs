//! The request/response nodes: `$cbs`, `<entity>/$management`, and the transaction
//! coordinator. A request arrives on a client sender link ([`super::inbound`]); its
//! response goes out on the client receiver link that serves the node.

use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState};
use fe2o3_amqp_types::transaction::{Declare, Declared, Discharge};

use super::Engine;
use super::link::Kind;
use super::settle::rejected;
use crate::auth::{self, Rights};
use crate::codec;
use crate::management::{self, ManagementContext, Request};
use crate::queue::{Queue, SessionClaim};
use crate::transaction::DischargeError;

impl Engine {
    /// A `$cbs` or `$management` request; returns the request delivery's outcome.
    pub(super) fn on_request(&mut self, channel: u16, handle: u32, payload: &Bytes) -> DeliveryState {
        let request = match Request::parse(payload) {
            Ok(r) => r,
            Err(e) => return rejected("amqp:decode-error", format!("malformed request message: {e}")),
        };
        let Some(link) = self.link_mut(channel, handle) else {
            return rejected("amqp:not-found", "the link is gone");
        };
        match &link.kind {
            Kind::CbsRequest => {
                let keys = self.shared.keys.clone();
                let response = management::put_token(&request, &keys, &mut self.auth);
                self.respond(channel, "$cbs", request.reply_to.as_deref(), response);
            }
            Kind::ManagementRequest { queue } => {
                let queue = queue.clone();
                let path = link.auth.as_ref().map(|a| a.path.clone()).unwrap_or_default();
                let sessions = self.held_sessions(&queue);
                let mut settled = Vec::new();
                let auth = &self.auth;
                let authorize = |needed: Rights| auth.check(&path, needed, auth::now_secs()).map(|_| ());
                let response = management::management(
                    &request,
                    ManagementContext {
                        queue: &queue,
                        namespace: &self.shared.namespace,
                        authorize: &authorize,
                        on_settled: &mut |t| settled.push(t),
                        sessions: &sessions,
                        max_state_size: self.shared.max_message_size,
                    },
                );
                for session in self.sessions.values_mut() {
                    session.unsettled.retain(|_, u| !settled.contains(&u.token));
                }
                let node = format!("{}/$management", queue.name().to_ascii_lowercase());
                self.respond(channel, &node, request.reply_to.as_deref(), response);
            }
            _ => return rejected("amqp:not-allowed", "this link does not take requests"),
        }
        DeliveryState::Accepted(Accepted {})
    }

    /// The message sessions of `queue` that receivers on this connection hold.
    fn held_sessions(&self, queue: &Arc<Queue>) -> Vec<SessionClaim> {
        let links = self.sessions.values().flat_map(|s| s.links.values());
        links
            .filter_map(|l| l.session_claim())
            .filter(|(q, _)| Arc::ptr_eq(q, queue))
            .map(|(_, claim)| claim.clone())
            .collect()
    }

    /// A `declare` or `discharge` on the coordinator link.
    pub(super) fn on_coordinator(&mut self, payload: &Bytes) -> DeliveryState {
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
                        DischargeError::Unknown => "amqp:transaction:unknown-id",
                        DischargeError::LockLost => "amqp:transaction:rollback",
                    };
                    rejected(condition, e.to_string())
                }
            },
            Err(_) => rejected("amqp:decode-error", "the coordinator expects declare or discharge"),
        }
    }

    /// Queues a response on the link whose target is `reply_to`, else on the first link that
    /// serves `node` (the request's session first).
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
}
