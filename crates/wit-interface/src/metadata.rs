//! Metadata keys: the contract between the host and guests for `message.metadata`.
//!
//! `docs/semantics.md` is the prose version; this module is the one source of
//! the key names. There are three kinds of key:
//! - **host-assigned** keys ([`HOST_ASSIGNED`]): set by the host on received
//!   messages, ignored on sent ones, so a received message can be forwarded as is;
//! - **system** keys ([`SYSTEM`]): Service Bus message properties, readable on
//!   received messages and settable on sent ones;
//! - **application** keys: everything else, carried as Service Bus application
//!   properties.
//!
//! An application property whose name is a host-assigned or system key, or starts
//! with [`APP_PREFIX`], travels as `app:<name>` in both directions, so no two
//! keys can ever be confused.

/// Names the delivery inside one handler invocation; settlement calls find the message by it.
pub const DELIVERY_ID: &str = "delivery-id";
/// The Service Bus lock token (a UUID), in peek-lock mode.
pub const LOCK_TOKEN: &str = "lock-token";
/// The channel the message was received from.
pub const CHANNEL: &str = "channel";
/// How many times the message has been delivered, this delivery included (1 the first time).
pub const DELIVERY_COUNT: &str = "delivery-count";
/// When the broker accepted the message (RFC 3339, UTC, milliseconds).
pub const ENQUEUED_TIME: &str = "enqueued-time";
/// The message's sequence number in its entity (decimal).
pub const SEQUENCE_NUMBER: &str = "sequence-number";
/// When the lock expires unless renewed (RFC 3339, UTC, milliseconds); peek-lock only.
pub const LOCKED_UNTIL: &str = "locked-until";

/// `message-id` property.
pub const MESSAGE_ID: &str = "message-id";
/// `correlation-id` property.
pub const CORRELATION_ID: &str = "correlation-id";
/// `content-type` property.
pub const CONTENT_TYPE: &str = "content-type";
/// `subject` property (the "label" in older SDKs).
pub const SUBJECT: &str = "subject";
/// `session-id` (AMQP `group-id`).
pub const SESSION_ID: &str = "session-id";
/// `reply-to` property.
pub const REPLY_TO: &str = "reply-to";
/// `reply-to-session-id` (AMQP `reply-to-group-id`).
pub const REPLY_TO_SESSION_ID: &str = "reply-to-session-id";
/// `to` property.
pub const TO: &str = "to";
/// Time to live in milliseconds (decimal).
pub const TIME_TO_LIVE: &str = "time-to-live";
/// Enqueue no earlier than this instant (RFC 3339); on send only, turns the send into a schedule.
pub const SCHEDULED_ENQUEUE_TIME: &str = "scheduled-enqueue-time";
/// Partition key (`x-opt-partition-key`).
pub const PARTITION_KEY: &str = "partition-key";

/// Keys the host sets on received messages and ignores on sent ones.
pub const HOST_ASSIGNED: [&str; 7] =
    [DELIVERY_ID, LOCK_TOKEN, CHANNEL, DELIVERY_COUNT, ENQUEUED_TIME, SEQUENCE_NUMBER, LOCKED_UNTIL];

/// Service Bus message properties, in both directions.
pub const SYSTEM: [&str; 11] = [
    MESSAGE_ID,
    CORRELATION_ID,
    CONTENT_TYPE,
    SUBJECT,
    SESSION_ID,
    REPLY_TO,
    REPLY_TO_SESSION_ID,
    TO,
    TIME_TO_LIVE,
    SCHEDULED_ENQUEUE_TIME,
    PARTITION_KEY,
];

/// The prefix that marks an application property whose bare name would be ambiguous.
pub const APP_PREFIX: &str = "app:";

/// What a metadata key means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A key the host assigns on received messages.
    HostAssigned(&'a str),
    /// A Service Bus message property.
    System(&'a str),
    /// An application property, with the name it has on the wire.
    Application(&'a str),
}

/// True for the keys in [`HOST_ASSIGNED`].
pub fn is_host_assigned(key: &str) -> bool {
    HOST_ASSIGNED.contains(&key)
}

/// True for the keys in [`SYSTEM`].
pub fn is_system(key: &str) -> bool {
    SYSTEM.contains(&key)
}

/// What a metadata key on a message means. `app:<name>` is always application property `<name>`.
pub fn classify(key: &str) -> Key<'_> {
    if let Some(name) = key.strip_prefix(APP_PREFIX) {
        Key::Application(name)
    } else if is_host_assigned(key) {
        Key::HostAssigned(key)
    } else if is_system(key) {
        Key::System(key)
    } else {
        Key::Application(key)
    }
}

/// The metadata key under which an application property named `name` is shown to a guest.
///
/// `order-id` stays `order-id`; `to` (a system key) becomes `app:to`, and so does
/// any name that itself starts with `app:`, which keeps [`classify`] its inverse.
pub fn application_key(name: &str) -> std::borrow::Cow<'_, str> {
    if is_host_assigned(name) || is_system(name) || name.starts_with(APP_PREFIX) {
        std::borrow::Cow::Owned(format!("{APP_PREFIX}{name}"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_assigned_and_system_keys_do_not_overlap() {
        for key in HOST_ASSIGNED {
            assert!(!is_system(key), "{key} is in both lists");
        }
    }

    #[test]
    fn plain_names_are_application_properties() {
        assert_eq!(classify("order-id"), Key::Application("order-id"));
        assert_eq!(classify("DeadLetterReason"), Key::Application("DeadLetterReason"));
    }

    #[test]
    fn reserved_names_are_classified_as_such() {
        assert_eq!(classify("delivery-id"), Key::HostAssigned("delivery-id"));
        assert_eq!(classify("content-type"), Key::System("content-type"));
    }

    #[test]
    fn keys_are_case_sensitive() {
        // Service Bus application property names are case-sensitive; so are ours.
        assert_eq!(classify("Content-Type"), Key::Application("Content-Type"));
    }

    #[test]
    fn application_key_round_trips_through_classify() {
        for name in ["order-id", "to", "delivery-id", "app:x", "app:", "", "sequence-number"] {
            let key = application_key(name);
            assert_eq!(classify(&key), Key::Application(name), "name {name:?} shown as {key:?}");
        }
    }

    #[test]
    fn only_ambiguous_names_get_the_prefix() {
        assert_eq!(application_key("order-id"), "order-id");
        assert_eq!(application_key("subject"), "app:subject");
        assert_eq!(application_key("app:z"), "app:app:z");
    }
}
