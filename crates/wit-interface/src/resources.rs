//! What the WIT resources stand for on the host: `client` and `error` (both revisions'),
//! `message` and `request-options` (the December 2024 revision's).

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

/// The host side of a `message` handle (December 2024 revision): what the message holds, and
/// for a message the host gave the guest, which delivery of the call it is.
///
/// A received message carries the same metadata as in the February 2024 contract
/// (`docs/semantics.md`), system and host-assigned keys included; its `delivery` is the
/// call's delivery id, by which settlements find it. A message the guest made has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageState {
    /// The body.
    pub data: Vec<u8>,
    /// The Service Bus ContentType.
    pub content_type: Option<String>,
    /// Metadata, in order; `None` until any is set.
    pub metadata: Option<Vec<(String, String)>>,
    /// The channel the message was received from.
    pub topic: Option<String>,
    /// The delivery id within the call, for a received message.
    pub delivery: Option<String>,
}

impl MessageState {
    /// A message the guest made, holding `data`.
    pub fn new(data: Vec<u8>) -> Self {
        Self { data, ..Self::default() }
    }

    /// Sets `key` to `value`, replacing the value of an existing `key`.
    pub fn add_metadata(&mut self, key: String, value: String) {
        let md = self.metadata.get_or_insert_with(Vec::new);
        match md.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => md.push((key, value)),
        }
    }

    /// Removes `key`, if present.
    pub fn remove_metadata(&mut self, key: &str) {
        if let Some(md) = &mut self.metadata {
            md.retain(|(k, _)| k != key);
        }
    }

    /// The value of metadata `key`, if present.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The host side of a `request-options` handle (December 2024 revision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// How long to wait for replies; `None` waits for as long as the call may run.
    pub timeout_ms: Option<u32>,
    /// How many replies to wait for; `None` is one.
    pub expected_replies: Option<u32>,
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

/// `From<ErrorKind>` for a generated `error-kind` enum: the cases have the same names in
/// both revisions' extensions.
macro_rules! into_wit_error_kind {
    ($wit:ty) => {
        impl From<ErrorKind> for $wit {
            fn from(kind: ErrorKind) -> Self {
                type W = $wit;
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
    };
}

into_wit_error_kind!(crate::settlement::ErrorKind);
into_wit_error_kind!(crate::dec2024::settlement::ErrorKind);

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
    fn add_metadata_replaces_a_key_in_place_and_remove_drops_it() {
        let mut m = MessageState::new(b"x".to_vec());
        assert_eq!(m.metadata, None);
        m.add_metadata("a".into(), "1".into());
        m.add_metadata("b".into(), "2".into());
        m.add_metadata("a".into(), "3".into());
        assert_eq!(m.metadata, Some(vec![("a".into(), "3".into()), ("b".into(), "2".into())]));
        assert_eq!(m.metadata_value("a"), Some("3"));
        m.remove_metadata("a");
        assert_eq!(m.metadata_value("a"), None);
        assert_eq!(m.metadata, Some(vec![("b".into(), "2".into())]));
    }

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
            // The generated Debug prints the WIT case in UpperCamelCase.
            let camel: String = kind.as_str().split('-').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            let feb: crate::settlement::ErrorKind = kind.into();
            let dec: crate::dec2024::settlement::ErrorKind = kind.into();
            for wit in [format!("{feb:?}"), format!("{dec:?}")] {
                assert!(wit.starts_with(&format!("ErrorKind::{camel}")), "{wit} vs {camel}");
            }
        }
    }
}
