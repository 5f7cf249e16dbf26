//! What every kind of link shares: how fe2o3's attach and link errors read as [`Error`]s.

use fe2o3_amqp::link::{LinkStateError, ReceiverAttachError, SenderAttachError};

use crate::error::Error;

/// Maps a sender attach failure.
pub(crate) fn sender_attach_error(e: SenderAttachError, entity: &str) -> Error {
    match e {
        SenderAttachError::RemoteClosedWithError(err) => Error::from_amqp(&err, entity),
        e @ (SenderAttachError::SessionStopped(_) | SenderAttachError::SessionNotMapped) => {
            Error::connection(entity, "attaching a sender failed", e)
        }
        e => Error::protocol(entity, "attaching a sender failed").because(e),
    }
}

/// Maps a receiver attach failure.
pub(crate) fn receiver_attach_error(e: ReceiverAttachError, entity: &str) -> Error {
    match e {
        ReceiverAttachError::RemoteClosedWithError(err) => Error::from_amqp(&err, entity),
        e @ (ReceiverAttachError::SessionStopped(_) | ReceiverAttachError::SessionNotMapped) => {
            Error::connection(entity, "attaching a receiver failed", e)
        }
        e => Error::protocol(entity, "attaching a receiver failed").because(e),
    }
}

/// Maps a link state failure (detach, close, session end).
pub(crate) fn link_state_error(e: LinkStateError, entity: &str) -> Error {
    match e {
        LinkStateError::RemoteDetachedWithError(err) | LinkStateError::RemoteClosedWithError(err) => {
            Error::from_amqp(&err, entity)
        }
        e => Error::connection(entity, "the link stopped", e),
    }
}
