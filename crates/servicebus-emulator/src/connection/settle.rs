//! A receiver's dispositions: the outcome it chose, applied with the service's rules, and
//! the settled echo the official SDKs wait for.
//!
//! | the receiver sends | the broker applies | the echo |
//! |---|---|---|
//! | `accepted` | complete | `accepted` |
//! | `released` | unlock, the delivery count stays | `released` |
//! | `modified` | abandon (defer when `undeliverable-here`) | `modified` without annotations |
//! | `rejected` | dead-letter, reason and description from `info` | `rejected` without an error |
//! | anything, on a lost lock | nothing | `rejected` with `com.microsoft:message-lock-lost` |

use fe2o3_amqp_types::definitions::{Fields, Role};
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, Modified, Outcome, Rejected, Released};
use fe2o3_amqp_types::performatives::Disposition;
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol};
use fe2o3_amqp_types::transaction::TransactionalState;
use serde_amqp::Value;

use super::link::Unsettled;
use super::{Engine, Step};
use crate::management::error;
use crate::message::simple_value;
use crate::queue::{SettleError, Settlement};
use crate::transaction::Staged;

impl Engine {
    pub(super) fn on_disposition(&mut self, channel: u16, d: Disposition) -> Step {
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
                self.out.put(channel, &reply);
            }
        }
        Ok(())
    }

    /// Applies a receiver's outcome; returns the echo the service would send.
    fn apply_outcome(&mut self, u: &Unsettled, state: &DeliveryState) -> DeliveryState {
        let (settlement, echo) = match state {
            DeliveryState::TransactionalState(ts) => return self.stage_outcome(u, ts),
            other => match settlement_of(other) {
                Some(x) => x,
                None => return DeliveryState::Accepted(Accepted {}),
            },
        };
        match u.queue.settle(u.token, settlement) {
            Ok(()) => echo,
            Err(e) => lost_outcome(u, e),
        }
    }

    /// A settlement inside a transaction: staged, applied when the transaction commits.
    fn stage_outcome(&mut self, u: &Unsettled, ts: &TransactionalState) -> DeliveryState {
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
        if let Err(e) = u.queue.check_lock(u.token) {
            // The transaction cannot do what it was asked: it must not commit the rest.
            self.txns.doom(&ts.txn_id);
            return lost_outcome(u, e);
        }
        self.txns.stage(&ts.txn_id, Staged::Settle(u.queue.clone(), u.token, settlement));
        let echo_outcome = match echo {
            DeliveryState::Accepted(a) => Outcome::Accepted(a),
            DeliveryState::Rejected(r) => Outcome::Rejected(r),
            DeliveryState::Released(r) => Outcome::Released(r),
            DeliveryState::Modified(m) => Outcome::Modified(m),
            _ => Outcome::Accepted(Accepted {}),
        };
        DeliveryState::TransactionalState(TransactionalState { txn_id: ts.txn_id.clone(), outcome: Some(echo_outcome) })
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

fn properties_to_modify(annotations: Option<&Fields>) -> Vec<(String, SimpleValue)> {
    annotations
        .map(|a| a.iter().filter_map(|(k, v)| simple_value(v.clone()).map(|v| (k.as_str().to_string(), v))).collect())
        .unwrap_or_default()
}

/// A `rejected` outcome with an error.
pub(super) fn rejected(condition: &str, description: impl Into<String>) -> DeliveryState {
    DeliveryState::Rejected(Rejected { error: Some(error(condition, description)) })
}

/// The echo for a disposition whose lock (of the message, or of its session) is gone. A
/// message of a session receiver whose lock is gone lost it with its session.
fn lost_outcome(u: &Unsettled, e: SettleError) -> DeliveryState {
    let e = if u.in_session && e == SettleError::LockLost { SettleError::SessionLockLost } else { e };
    rejected(e.condition(), e.description())
}
