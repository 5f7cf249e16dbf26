//! Local transactions (`$coordinator`): sends and settlements staged until discharge.
//!
//! As in Service Bus, a transaction belongs to one connection: it is declared on a
//! coordinator link and used by that connection's other links, through a
//! `transactional-state` on transfers and dispositions. On commit every staged
//! operation is applied; on rollback, or if any staged settlement's lock was lost
//! in the meantime, none is.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::StoredMessage;
use crate::namespace::Destination;
use crate::queue::{Queue, Settlement};

/// One staged operation.
pub(crate) enum Staged {
    Send(Destination, Vec<StoredMessage>),
    Settle(Arc<Queue>, uuid::Uuid, Settlement),
}

/// Why a discharge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DischargeError {
    #[error("unknown transaction id")]
    Unknown,
    #[error("the lock on a message settled in the transaction was lost; the transaction was rolled back")]
    LockLost,
}

/// The open transactions of one connection.
#[derive(Default)]
pub(crate) struct Transactions {
    next_id: u64,
    open: HashMap<Vec<u8>, Vec<Staged>>,
    /// Transactions an operation failed in: their discharge rolls back.
    doomed: std::collections::HashSet<Vec<u8>>,
}

impl Transactions {
    /// Declares a transaction; returns its id.
    pub(crate) fn declare(&mut self) -> Vec<u8> {
        self.next_id += 1;
        let id = format!("txn-{}", self.next_id).into_bytes();
        self.open.insert(id.clone(), Vec::new());
        id
    }

    /// Stages an operation in `txn_id`; false if there is no such transaction.
    pub(crate) fn stage(&mut self, txn_id: &[u8], op: Staged) -> bool {
        match self.open.get_mut(txn_id) {
            Some(ops) => {
                ops.push(op);
                true
            }
            None => false,
        }
    }

    /// Marks a transaction rollback-only: one of its operations failed (a lost lock).
    pub(crate) fn doom(&mut self, txn_id: &[u8]) {
        if self.open.contains_key(txn_id) {
            self.doomed.insert(txn_id.to_vec());
        }
    }

    pub(crate) fn is_open(&self, txn_id: &[u8]) -> bool {
        self.open.contains_key(txn_id)
    }

    /// Ends a transaction: commits (`fail == false`) or rolls back.
    pub(crate) fn discharge(&mut self, txn_id: &[u8], fail: bool) -> Result<(), DischargeError> {
        let ops = self.open.remove(txn_id).ok_or(DischargeError::Unknown)?;
        let doomed = self.doomed.remove(txn_id);
        if fail {
            return Ok(());
        }
        if doomed {
            return Err(DischargeError::LockLost);
        }
        // Refuse the whole transaction if any lock it settles is gone.
        for op in &ops {
            if let Staged::Settle(queue, token, _) = op
                && queue.check_lock(*token).is_err()
            {
                return Err(DischargeError::LockLost);
            }
        }
        // With a store, the transaction's changes are committed together, or none is.
        let _group = crate::storage::Group::open();
        for op in ops {
            match op {
                Staged::Send(dest, messages) => {
                    // The room was checked when the send was staged; a send that no longer fits
                    // is the one part of a committed transaction that can be refused.
                    if let Err(e) = dest.enqueue(messages) {
                        tracing::warn!("a send in a committed transaction was refused: {e}");
                    }
                }
                Staged::Settle(queue, token, settlement) => {
                    if let Err(e) = queue.settle(token, settlement) {
                        tracing::warn!(queue = queue.name(), %token, "settlement in a committed transaction failed: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}
