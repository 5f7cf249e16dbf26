//! Errors, in the shape of [`std::io::Error`]: a stable [`ErrorKind`] to match on, the
//! entity the failure concerns, what happened in words, and the underlying error as
//! [`std::error::Error::source`].
//!
//! When the broker refused something, the source is a [`BrokerError`] with the AMQP
//! condition (`amqp:not-found`, `com.microsoft:message-lock-lost`, ...) and the broker's
//! description; when fe2o3, the socket or TLS failed, the source is their error.

use std::fmt;
use std::sync::Arc;

use fe2o3_amqp_types::definitions::Error as AmqpError;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is: the stable thing to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection string or settings are invalid.
    InvalidConnectionString,
    /// The broker refused the credentials or token for the entity.
    Unauthorized,
    /// The entity (or the message or rule asked for) does not exist.
    NotFound,
    /// What was to be created (a rule) already exists.
    AlreadyExists,
    /// The broker refused an argument: a rule's SQL, a name, a value out of range.
    InvalidArgument,
    /// The message's lock expired, was already used, or died with its link.
    LockLost,
    /// The session's lock expired or was lost: every message of the session with it.
    SessionLockLost,
    /// The message session is held by another receiver, or none became available in time.
    SessionCannotBeLocked,
    /// The message is larger than the broker accepts.
    MessageTooLarge,
    /// The broker is busy; retry later.
    ServerBusy,
    /// No answer in time.
    Timeout,
    /// The connection failed or was lost.
    Connection,
    /// The broker answered something this client does not understand, or refused the request.
    Protocol,
    /// The operation cannot be done on this message or receiver (settling a peeked message).
    InvalidOperation,
    /// The operation needs Service Bus (`$management`, CBS), and the client is in generic AMQP mode.
    NotSupported,
}

impl ErrorKind {
    /// How the kind reads in a message.
    fn text(self) -> &'static str {
        match self {
            Self::InvalidConnectionString => "invalid connection string",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::InvalidArgument => "invalid argument",
            Self::LockLost => "lock lost",
            Self::SessionLockLost => "session lock lost",
            Self::SessionCannotBeLocked => "session cannot be locked",
            Self::MessageTooLarge => "message too large",
            Self::ServerBusy => "server busy",
            Self::Timeout => "timed out",
            Self::Connection => "connection error",
            Self::Protocol => "protocol error",
            Self::InvalidOperation => "invalid operation",
            Self::NotSupported => "not supported",
        }
    }

    /// The kind of an AMQP error condition (from a detach, a rejected outcome or a
    /// management response).
    pub fn of_condition(condition: &str) -> Self {
        match condition {
            "amqp:unauthorized-access" | "com.microsoft:auth-failed" | "com.microsoft:publisher-revoked" => {
                Self::Unauthorized
            }
            "amqp:not-found" | "com.microsoft:message-not-found" | "com.microsoft:entity-disabled" => Self::NotFound,
            "com.microsoft:entity-already-exists" => Self::AlreadyExists,
            "com.microsoft:argument-error" | "com.microsoft:argument-out-of-range" | "amqp:invalid-field" => {
                Self::InvalidArgument
            }
            "com.microsoft:message-lock-lost" | "com.microsoft:store-lock-lost" => Self::LockLost,
            "com.microsoft:session-lock-lost" => Self::SessionLockLost,
            "com.microsoft:session-cannot-be-locked" => Self::SessionCannotBeLocked,
            "amqp:not-allowed" => Self::InvalidOperation,
            "amqp:link:message-size-exceeded" => Self::MessageTooLarge,
            "com.microsoft:server-busy" | "amqp:resource-limit-exceeded" => Self::ServerBusy,
            "com.microsoft:timeout" | "com.microsoft:operation-cancelled" => Self::Timeout,
            "amqp:connection:forced"
            | "amqp:link:detach-forced"
            | "amqp:connection:framing-error"
            | "com.microsoft:container-close" => Self::Connection,
            _ => Self::Protocol,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// An error of this crate. Cheap to clone: the source is shared.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    entity: Option<String>,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` that says `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, entity: None, message: message.into(), source: None }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The entity the error concerns, if any.
    pub fn entity(&self) -> Option<&str> {
        self.entity.as_deref()
    }

    /// What happened, without the kind and the entity.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The AMQP condition, when the broker refused something.
    pub fn condition(&self) -> Option<&str> {
        self.source.as_deref()?.downcast_ref::<BrokerError>().map(|b| b.condition.as_str())
    }

    /// Whether retrying the operation may succeed (connection loss, busy, timeout).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::ServerBusy | ErrorKind::Timeout | ErrorKind::Connection)
    }

    /// Whether a lock was lost: the message's own, or its session's.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self.kind, ErrorKind::LockLost | ErrorKind::SessionLockLost)
    }

    /// This error, about `entity` (none if it is empty: a caller names it later).
    pub(crate) fn at(mut self, entity: impl Into<String>) -> Self {
        self.entity = Some(entity.into()).filter(|e| !e.is_empty());
        self
    }

    /// Names `entity` in an error made where the entity was not known.
    pub(crate) fn in_entity(mut self, entity: &str) -> Self {
        if self.entity.is_none() {
            self.entity = Some(entity.to_string());
        }
        self
    }

    /// This error, caused by `source`.
    pub(crate) fn because(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The broker refused with `condition`.
    pub(crate) fn from_condition(condition: &str, entity: &str, description: impl Into<String>) -> Self {
        let broker = BrokerError { condition: condition.to_string(), description: description.into() };
        let message = if broker.description.is_empty() { condition.to_string() } else { broker.description.clone() };
        Self::new(ErrorKind::of_condition(condition), message).at(entity).because(broker)
    }

    /// The broker refused with an AMQP error.
    pub(crate) fn from_amqp(e: &AmqpError, entity: &str) -> Self {
        let condition = condition_text(e);
        Self::from_condition(&condition, entity, e.description.clone().unwrap_or_default())
    }

    /// The connection failed: `what` failed because of `source`.
    pub(crate) fn connection(
        entity: &str,
        what: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::new(ErrorKind::Connection, what.to_string()).at(entity).because(source)
    }

    pub(crate) fn protocol(entity: &str, what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Protocol, what.to_string()).at(entity)
    }

    pub(crate) fn timeout(entity: &str, what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Timeout, what.to_string()).at(entity)
    }

    pub(crate) fn lock_lost(entity: &str, what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::LockLost, what.to_string()).at(entity)
    }

    pub(crate) fn not_supported(operation: &str) -> Self {
        Self::new(
            ErrorKind::NotSupported,
            format!("'{operation}' needs Service Bus; this client is in generic AMQP 1.0 mode"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entity {
            Some(entity) => write!(f, "{} on '{entity}': {}", self.kind, self.message)?,
            None => write!(f, "{}: {}", self.kind, self.message)?,
        }
        // A source that is not the broker's own words adds what the message does not say.
        if let Some(source) = &self.source
            && !source.is::<BrokerError>()
        {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// What the broker said when it refused something: an AMQP error condition and its description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{condition}: {description}")]
pub struct BrokerError {
    /// The condition symbol (`amqp:not-found`).
    pub condition: String,
    /// The broker's description (may be empty).
    pub description: String,
}

/// An AMQP error condition as its symbol text (`amqp:not-found`).
pub(crate) fn condition_text(e: &AmqpError) -> String {
    match serde_amqp::to_value(&e.condition) {
        Ok(serde_amqp::Value::Symbol(s)) => s.to_string(),
        Ok(other) => format!("{other:?}"),
        Err(_) => format!("{:?}", e.condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::definitions::{AmqpError as Cond, ErrorCondition};
    use std::error::Error as _;

    #[test]
    fn conditions_map_to_kinds_and_keep_the_broker_words() {
        let e = AmqpError::new(ErrorCondition::AmqpError(Cond::NotFound), Some("gone".into()), None);
        let e = Error::from_amqp(&e, "q");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.entity(), Some("q"));
        assert_eq!(e.condition(), Some("amqp:not-found"));
        assert_eq!(e.to_string(), "not found on 'q': gone");
        let broker =
            e.source().and_then(|s| s.downcast_ref::<BrokerError>()).expect("the broker's error is the source");
        assert_eq!(broker.description, "gone");

        let e = AmqpError::new(ErrorCondition::Custom("com.microsoft:message-lock-lost".into()), None, None);
        let e = Error::from_amqp(&e, "q");
        assert_eq!(e.kind(), ErrorKind::LockLost);
        assert!(e.is_lock_lost());
        assert_eq!(e.message(), "com.microsoft:message-lock-lost");
        assert!(Error::from_condition("com.microsoft:session-lock-lost", "q", "x").is_lock_lost());
        assert!(Error::from_condition("com.microsoft:server-busy", "q", "x").is_transient());
        assert!(!Error::from_condition("amqp:unauthorized-access", "q", "x").is_transient());
        assert_eq!(Error::from_condition("amqp:weird", "q", "x").kind(), ErrorKind::Protocol);
    }

    #[test]
    fn a_local_source_is_kept_and_shown() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::connection("q", "cannot reach 127.0.0.1:1", io);
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "connection error on 'q': cannot reach 127.0.0.1:1: refused");
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>()).expect("the io error is the source");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        let clone = e.clone();
        assert!(clone.source().is_some(), "clones share the source");
        assert_eq!(Error::new(ErrorKind::Timeout, "no answer").in_entity("q").entity(), Some("q"));
    }
}
