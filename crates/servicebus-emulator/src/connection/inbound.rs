//! A client's transfers, from frames to a stored message (or a request to a node).
//!
//! Follow a sent message through this file top to bottom: [`Engine::on_transfer`] counts
//! the frame against the session window and the link's credit, and assembles the delivery;
//! [`Engine::on_message`] routes the whole message by the link's [`Kind`];
//! [`Engine::accept_messages`] parses it into [`StoredMessage`]s and enqueues them (or
//! stages them in a transaction); the outcome goes back in a settled `disposition`.

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::Role;
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, Outcome};
use fe2o3_amqp_types::performatives::{Disposition, Transfer};
use fe2o3_amqp_types::transaction::TransactionalState;

use super::link::{Kind, Partial, SENDER_CREDIT};
use super::settle::rejected;
use super::{Engine, Fault, Step};
use crate::message::StoredMessage;
use crate::namespace::Destination;
use crate::queue::QuotaExceeded;
use crate::transaction::Staged;

impl Engine {
    pub(super) fn on_transfer(&mut self, channel: u16, transfer: Transfer, payload: Bytes) -> Step {
        let handle = transfer.handle.0;
        if let Some(flow) = self.session(channel)?.on_transfer_frame() {
            self.out.put(channel, &flow);
        }
        let default_max = self.shared.max_message_size;
        let Some(link) = self.attached(channel, handle)? else { return Ok(()) };
        let max_message_size = link.max_message_size(default_max);
        if link.is_sending() {
            return Err(Fault::link(
                channel,
                handle,
                "amqp:not-allowed",
                "a transfer on a link where the broker is the sender",
            ));
        }
        if transfer.aborted {
            link.partial = None;
            return Ok(());
        }
        let mut partial = match link.partial.take() {
            Some(p) => p,
            None => {
                let Some(delivery_id) = transfer.delivery_id else {
                    return Err(Fault::link(
                        channel,
                        handle,
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
                    payload: BytesMut::new(),
                    size: 0,
                }
            }
        };
        // Bytes past the limit are counted, not kept: the delivery is refused when it ends.
        partial.size = partial.size.saturating_add(payload.len());
        if partial.size <= max_message_size {
            partial.payload.extend_from_slice(&payload);
        } else {
            partial.payload = BytesMut::new();
        }
        if transfer.more {
            link.partial = Some(partial);
            return Ok(());
        }
        let low_credit = link.credit < SENDER_CREDIT / 2;
        if low_credit {
            link.credit = SENDER_CREDIT;
        }
        let outcome = self.on_message(channel, handle, &partial, max_message_size);
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
            self.out.put(channel, &d);
        }
        if low_credit {
            self.send_link_flow(channel, handle, false);
        }
        Ok(())
    }

    /// Handles a whole message from the client; returns the delivery's outcome.
    fn on_message(&mut self, channel: u16, handle: u32, p: &Partial, max: usize) -> Option<DeliveryState> {
        if p.size > max {
            return Some(rejected(
                "amqp:link:message-size-exceeded",
                format!(
                    "The received message (size {} bytes) exceeds the limit ({max} bytes) currently allowed on the link.",
                    p.size
                ),
            ));
        }
        let payload = p.payload.clone().freeze();
        match &self.link_mut(channel, handle)?.kind {
            Kind::Accept { dest } => {
                let dest = dest.clone();
                Some(self.accept_messages(dest, &payload, p))
            }
            Kind::CbsRequest | Kind::ManagementRequest { .. } => Some(self.on_request(channel, handle, &payload)),
            Kind::Coordinator => Some(self.on_coordinator(&payload)),
            Kind::Deliver { .. } | Kind::Response { .. } => {
                Some(rejected("amqp:not-allowed", "this link does not accept messages"))
            }
        }
    }

    /// Parses the messages of a delivery and enqueues them, or stages them in its transaction.
    fn accept_messages(&mut self, dest: Destination, payload: &Bytes, p: &Partial) -> DeliveryState {
        let messages = match StoredMessage::parse_transfer(payload, p.format) {
            Ok(m) => m,
            Err(e) => return rejected("amqp:decode-error", format!("malformed message: {e}")),
        };
        if let Err(e) = dest.check_messages(&messages) {
            return rejected(e.condition(), e.to_string());
        }
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
}
