//! Typed errors. Each carries the entity it concerns and the broker's description.

use fe2o3_amqp_types::definitions::Error as AmqpError;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string or settings are invalid.
    #[error("invalid connection string: {0}")]
    InvalidConnectionString(String),
    /// The broker refused the credentials or token for the entity.
    #[error("unauthorized for '{entity}': {description}")]
    Unauthorized {
        /// The entity.
        entity: String,
        /// The broker's description.
        description: String,
    },
    /// The entity does not exist.
    #[error("entity '{entity}' not found: {description}")]
    EntityNotFound {
        /// The entity.
        entity: String,
        /// The broker's description.
        description: String,
    },
    /// The message's lock expired, was already used, or died with its link.
    #[error("lock lost on '{entity}': {description}")]
    LockLost {
        /// The entity.
        entity: String,
        /// The broker's (or the client's) description.
        description: String,
    },
    /// The message is larger than the broker accepts.
    #[error("message too large for '{entity}': {description}")]
    MessageTooLarge {
        /// The entity.
        entity: String,
        /// The broker's description.
        description: String,
    },
    /// The broker is busy; retry later.
    #[error("server busy on '{entity}': {description}")]
    ServerBusy {
        /// The entity.
        entity: String,
        /// The broker's description.
        description: String,
    },
    /// No answer in time.
    #[error("timed out on '{entity}': {description}")]
    Timeout {
        /// The entity.
        entity: String,
        /// What was being waited for.
        description: String,
    },
    /// The connection failed or was lost.
    #[error("connection error on '{entity}': {description}")]
    Connection {
        /// The entity.
        entity: String,
        /// What happened.
        description: String,
    },
    /// The broker answered something this client does not understand, or refused the request.
    #[error("protocol error on '{entity}': {description}")]
    Protocol {
        /// The entity.
        entity: String,
        /// What happened.
        description: String,
    },
    /// The operation needs Service Bus (`$management`, CBS) but the client is in generic AMQP mode.
    #[error("'{operation}' needs Service Bus; this client is in generic AMQP 1.0 mode")]
    NotSupported {
        /// The operation.
        operation: &'static str,
    },
}

impl Error {
    /// Whether retrying the operation may succeed (connection loss, busy, timeout).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::ServerBusy { .. } | Self::Timeout { .. } | Self::Connection { .. })
    }

    /// The entity the error concerns, if any.
    pub fn entity(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { entity, .. }
            | Self::EntityNotFound { entity, .. }
            | Self::LockLost { entity, .. }
            | Self::MessageTooLarge { entity, .. }
            | Self::ServerBusy { entity, .. }
            | Self::Timeout { entity, .. }
            | Self::Connection { entity, .. }
            | Self::Protocol { entity, .. } => Some(entity),
            _ => None,
        }
    }

    /// Names `entity` in an error made where the entity was not known.
    pub(crate) fn in_entity(mut self, name: &str) -> Self {
        match &mut self {
            Self::Unauthorized { entity, .. }
            | Self::EntityNotFound { entity, .. }
            | Self::LockLost { entity, .. }
            | Self::MessageTooLarge { entity, .. }
            | Self::ServerBusy { entity, .. }
            | Self::Timeout { entity, .. }
            | Self::Connection { entity, .. }
            | Self::Protocol { entity, .. }
                if entity.is_empty() =>
            {
                *entity = name.to_string();
            }
            _ => {}
        }
        self
    }

    /// Maps an AMQP error condition (from a detach, a rejected outcome or a management response).
    pub(crate) fn from_condition(condition: &str, entity: &str, description: impl Into<String>) -> Self {
        let entity = entity.to_string();
        let description = description.into();
        match condition {
            "amqp:unauthorized-access" | "com.microsoft:auth-failed" | "com.microsoft:publisher-revoked" => {
                Self::Unauthorized { entity, description }
            }
            "amqp:not-found" | "com.microsoft:message-not-found" | "com.microsoft:entity-disabled" => {
                Self::EntityNotFound { entity, description }
            }
            "com.microsoft:message-lock-lost" | "com.microsoft:session-lock-lost" | "com.microsoft:store-lock-lost" => {
                Self::LockLost { entity, description }
            }
            "amqp:link:message-size-exceeded" => Self::MessageTooLarge { entity, description },
            "com.microsoft:server-busy" | "amqp:resource-limit-exceeded" => Self::ServerBusy { entity, description },
            "com.microsoft:timeout" | "com.microsoft:operation-cancelled" => Self::Timeout { entity, description },
            "amqp:connection:forced"
            | "amqp:link:detach-forced"
            | "amqp:connection:framing-error"
            | "com.microsoft:container-close" => Self::Connection { entity, description },
            _ => Self::Protocol { entity, description: format!("{condition}: {description}") },
        }
    }

    /// Maps an AMQP error.
    pub(crate) fn from_amqp(e: &AmqpError, entity: &str) -> Self {
        let condition = condition_text(e);
        Self::from_condition(&condition, entity, e.description.clone().unwrap_or_else(|| condition.clone()))
    }

    pub(crate) fn connection(entity: &str, description: impl std::fmt::Display) -> Self {
        Self::Connection { entity: entity.into(), description: description.to_string() }
    }

    pub(crate) fn protocol(entity: &str, description: impl std::fmt::Display) -> Self {
        Self::Protocol { entity: entity.into(), description: description.to_string() }
    }
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

    #[test]
    fn conditions_map_to_kinds() {
        let e = AmqpError::new(ErrorCondition::AmqpError(Cond::NotFound), Some("gone".into()), None);
        assert_eq!(Error::from_amqp(&e, "q"), Error::EntityNotFound { entity: "q".into(), description: "gone".into() });
        let e = AmqpError::new(ErrorCondition::Custom("com.microsoft:message-lock-lost".into()), None, None);
        assert!(matches!(Error::from_amqp(&e, "q"), Error::LockLost { .. }));
        assert!(Error::from_condition("com.microsoft:server-busy", "q", "x").is_transient());
        assert!(!Error::from_condition("amqp:unauthorized-access", "q", "x").is_transient());
        assert_eq!(Error::from_condition("amqp:weird", "q", "x").to_string(), "protocol error on 'q': amqp:weird: x");
    }
}
