//! Broker → client transfers: queue messages and node responses, as credit, the session
//! window and the write backlog allow.

use fe2o3_amqp_types::definitions::{DeliveryTag, Handle};
use fe2o3_amqp_types::performatives::Transfer;

use super::link::{Kind, Unsettled};
use super::{Engine, Event};
use crate::management::error;
use crate::message::delivery_tag;

impl Engine {
    /// Sends what a broker → client link has room for: pending responses, then queue messages.
    pub(super) fn deliver(&mut self, channel: u16, handle: u32) {
        let mut lost = None;
        loop {
            if self.backlog.must_wait(self.out.len()) {
                // The peer is not reading: hold its messages until the writer says it did.
                return; // Not `break`: a drain must not give up credit for messages that wait.
            }
            let Some(session) = self.sessions.get_mut(&channel) else { return };
            let Some(link) = session.links.get_mut(&handle) else { return };
            if link.credit == 0 || session.remote_incoming_window == 0 {
                break;
            }
            let (payload, tag, settled, unsettled) = if let Some(p) = link.pending.pop_front() {
                link.next_tag += 1;
                (p, link.next_tag.to_be_bytes().to_vec(), true, None)
            } else if let Kind::Deliver { queue, mode, session: claim } = &link.kind {
                if link.waiting {
                    break;
                }
                let events = self.events_tx.clone();
                let wake = move || {
                    let _ = events.send(Event::Available { channel, handle });
                };
                match queue.take_or_wait(*mode, claim.as_ref(), wake) {
                    Ok(Some(d)) => {
                        tracing::trace!(link = %link.name, queue = queue.name(), seq = d.sequence_number, "delivering");
                        let tag = match d.lock_token {
                            Some(t) => delivery_tag(t).to_vec(),
                            None => uuid::Uuid::new_v4().to_bytes_le().to_vec(),
                        };
                        let in_session = claim.is_some();
                        let unsettled =
                            d.lock_token.map(|token| Unsettled { handle, queue: queue.clone(), token, in_session });
                        (d.payload, tag, unsettled.is_none(), unsettled)
                    }
                    Ok(None) => {
                        link.waiting = true;
                        break;
                    }
                    Err(e) => {
                        lost = Some(e);
                        break;
                    }
                }
            } else {
                break;
            };
            link.credit -= 1;
            link.delivery_count = link.delivery_count.wrapping_add(1);
            let delivery_id = session.next_delivery_id;
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
            let frames = self.out.put_transfer(channel, transfer, &payload);
            session.sent_transfer(frames);
            if let Some(u) = unsettled {
                session.unsettled.insert(delivery_id, u);
            }
        }
        if let Some(e) = lost {
            tracing::info!(peer = %self.peer, "session lock lost; detaching its receiver: {e}");
            self.detach(channel, handle, Some(error(e.condition(), e.to_string())));
            return;
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
}
