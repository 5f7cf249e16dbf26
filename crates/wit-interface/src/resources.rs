//! What the WIT resources `client` and `error` stand for on the host.

use std::fmt;

/// The host side of a `client` handle: the name of a configured connection.
///
/// A handle is deliberately light: it names a connection the host already holds,
/// so `connect` costs a table insert and `send` consuming the handle costs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    connection: String,
}

impl Client {
    /// A handle on the connection configured under `connection`.
    pub fn new(connection: impl Into<String>) -> Self {
        Self { connection: connection.into() }
    }

    /// The configured connection's name.
    pub fn connection(&self) -> &str {
        &self.connection
    }
}

/// The kind of a [`GuestError`]; mirrors the WIT enum `settlement.error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The message's lock expired or was lost.
    LockLost,
    /// The message was already settled.
    AlreadySettled,
    /// The message was not delivered to this invocation.
    UnknownDelivery,
    /// The channel or operation is not allowed for this guest.
    NotAllowed,
    /// The channel or connection does not exist.
    NotFound,
    /// The broker refused the credentials.
    Unauthorized,
    /// The message is too large.
    TooLarge,
    /// The broker did not answer in time.
    Timeout,
    /// The broker is busy or unreachable.
    Unavailable,
    /// An argument was invalid.
    InvalidArgument,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kebab-case name used in the WIT and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LockLost => "lock-lost",
            Self::AlreadySettled => "already-settled",
            Self::UnknownDelivery => "unknown-delivery",
            Self::NotAllowed => "not-allowed",
            Self::NotFound => "not-found",
            Self::Unauthorized => "unauthorized",
            Self::TooLarge => "too-large",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::InvalidArgument => "invalid-argument",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorKind> for crate::settlement::ErrorKind {
    fn from(kind: ErrorKind) -> Self {
        use crate::settlement::ErrorKind as W;
        match kind {
            ErrorKind::LockLost => W::LockLost,
            ErrorKind::AlreadySettled => W::AlreadySettled,
            ErrorKind::UnknownDelivery => W::UnknownDelivery,
            ErrorKind::NotAllowed => W::NotAllowed,
            ErrorKind::NotFound => W::NotFound,
            ErrorKind::Unauthorized => W::Unauthorized,
            ErrorKind::TooLarge => W::TooLarge,
            ErrorKind::Timeout => W::Timeout,
            ErrorKind::Unavailable => W::Unavailable,
            ErrorKind::InvalidArgument => W::InvalidArgument,
            ErrorKind::Other => W::Other,
        }
    }
}

/// The host side of an `error` handle: a kind and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GuestError {
    kind: ErrorKind,
    message: String,
}

impl GuestError {
    /// An error of `kind` with the detail `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The detail, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_error_displays_kind_then_detail() {
        let e = GuestError::new(ErrorKind::NotAllowed, "channel 'audit' is not in the allow-list");
        assert_eq!(e.to_string(), "not-allowed: channel 'audit' is not in the allow-list");
    }

    #[test]
    fn every_kind_maps_to_the_wit_enum_of_the_same_name() {
        let kinds = [
            ErrorKind::LockLost,
            ErrorKind::AlreadySettled,
            ErrorKind::UnknownDelivery,
            ErrorKind::NotAllowed,
            ErrorKind::NotFound,
            ErrorKind::Unauthorized,
            ErrorKind::TooLarge,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::InvalidArgument,
            ErrorKind::Other,
        ];
        for kind in kinds {
            let wit: crate::settlement::ErrorKind = kind.into();
            // The generated Debug prints the WIT case in UpperCamelCase.
            let camel: String = kind.as_str().split('-').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            assert!(format!("{wit:?}").starts_with(&format!("ErrorKind::{camel}")), "{wit:?} vs {camel}");
        }
    }
}
