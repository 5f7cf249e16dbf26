//! Messages: what is sent ([`Message`]) and what is received ([`ReceivedMessage`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::Deserializable;
use fe2o3_amqp_types::messaging::{
    Annotations, ApplicationProperties, Body, Data, Header, Message as AmqpMessage, MessageAnnotations, MessageId,
    Properties,
};
use fe2o3_amqp_types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp};
use serde_amqp::Value;

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// The payload, sent as one `data` section.
    pub body: Bytes,
    /// `message-id`.
    pub message_id: Option<String>,
    /// `correlation-id`.
    pub correlation_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `subject` (the label).
    pub subject: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `reply-to`.
    pub reply_to: Option<String>,
    /// Session id (`group-id`).
    pub session_id: Option<String>,
    /// Reply-to session id (`reply-to-group-id`).
    pub reply_to_session_id: Option<String>,
    /// Time to live (`header.ttl`).
    pub time_to_live: Option<Duration>,
    /// Enqueue no earlier than this (`x-opt-scheduled-enqueue-time`).
    pub scheduled_enqueue_time: Option<SystemTime>,
    /// `x-opt-partition-key`.
    pub partition_key: Option<String>,
    /// Application properties.
    pub application_properties: OrderedMap<String, SimpleValue>,
}

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }

    /// Sets an application property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<SimpleValue>) -> Self {
        self.application_properties.insert(name.into(), value.into());
        self
    }

    /// The message as an AMQP message.
    pub(crate) fn to_amqp(&self) -> AmqpMessage<Data> {
        let properties = Properties {
            message_id: self.message_id.clone().map(MessageId::String),
            correlation_id: self.correlation_id.clone().map(MessageId::String),
            content_type: self.content_type.clone().map(Symbol::from),
            subject: self.subject.clone(),
            to: self.to.clone(),
            reply_to: self.reply_to.clone(),
            group_id: self.session_id.clone(),
            reply_to_group_id: self.reply_to_session_id.clone(),
            ..Properties::default()
        };
        let mut annotations = Annotations::new();
        if let Some(at) = self.scheduled_enqueue_time {
            annotations.insert(key("x-opt-scheduled-enqueue-time"), Value::Timestamp(timestamp(at)));
        }
        if let Some(pk) = &self.partition_key {
            annotations.insert(key("x-opt-partition-key"), Value::String(pk.clone()));
        }
        AmqpMessage {
            header: self.time_to_live.map(|ttl| Header {
                ttl: Some(u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX)),
                ..Header::default()
            }),
            delivery_annotations: None,
            message_annotations: (!annotations.is_empty()).then_some(MessageAnnotations(annotations)),
            properties: Some(properties),
            application_properties: (!self.application_properties.is_empty())
                .then(|| ApplicationProperties(self.application_properties.clone())),
            body: Data(Binary::from(self.body.to_vec())),
            footer: None,
        }
    }

    /// The message in AMQP 1.0 encoding (as it goes on the wire).
    pub fn encode(&self) -> Vec<u8> {
        serde_amqp::to_vec(&fe2o3_amqp_types::messaging::message::__private::Serializable(self.to_amqp()))
            .expect("a message of strings and bytes always encodes")
    }
}

/// How a received message's body was encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyKind {
    /// `data` section(s): [`ReceivedMessage::body`] is their bytes.
    Data,
    /// An `amqp-value`; strings and binary are also given as [`ReceivedMessage::body`].
    Value(Value),
    /// `amqp-sequence` sections, or an empty body.
    Other,
}

/// A received message: body, properties, and what the broker says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    /// The payload.
    pub body: Bytes,
    /// How the body was encoded.
    pub body_kind: BodyKind,
    /// `message-id`, as text.
    pub message_id: Option<String>,
    /// `correlation-id`, as text.
    pub correlation_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `reply-to`.
    pub reply_to: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Reply-to session id.
    pub reply_to_session_id: Option<String>,
    /// Time to live.
    pub time_to_live: Option<Duration>,
    /// Scheduled enqueue time, if it was scheduled.
    pub scheduled_enqueue_time: Option<SystemTime>,
    /// Partition key.
    pub partition_key: Option<String>,
    /// Application properties.
    pub application_properties: OrderedMap<String, SimpleValue>,
    /// The lock token (peek-lock only).
    pub lock_token: Option<uuid::Uuid>,
    /// When the lock expires unless renewed (peek-lock only).
    pub locked_until: Option<SystemTime>,
    /// The sequence number in the entity.
    pub sequence_number: i64,
    /// Earlier deliveries of this message (0 the first time).
    pub delivery_count: u32,
    /// When the broker accepted it.
    pub enqueued_time: Option<SystemTime>,
    /// The entity it was received from.
    pub entity: String,
    /// Where its lock came from, which says whether and how it can be settled.
    pub(crate) origin: LockOrigin,
    /// Its delivery on the link that brought it (peek-lock only), to settle it there.
    pub(crate) delivery: Option<LinkDelivery>,
}

/// A delivery as its receive link knows it: what settling it on the link takes.
#[derive(Clone)]
pub(crate) struct LinkDelivery {
    /// The delivery-id, which tells deliveries of one link apart.
    pub(crate) id: u32,
    pub(crate) info: fe2o3_amqp::link::delivery::DeliveryInfo,
}

impl std::fmt::Debug for LinkDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkDelivery").field("id", &self.id).finish_non_exhaustive()
    }
}

impl PartialEq for LinkDelivery {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl ReceivedMessage {
    /// `DeadLetterReason`, on dead-lettered messages.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        self.string_property("DeadLetterReason")
    }

    /// `DeadLetterErrorDescription`, on dead-lettered messages.
    pub fn dead_letter_description(&self) -> Option<&str> {
        self.string_property("DeadLetterErrorDescription")
    }

    fn string_property(&self, name: &str) -> Option<&str> {
        match self.application_properties.get(name) {
            Some(SimpleValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Reads a received AMQP message; `tag` is the delivery tag (the lock token in .NET GUID order).
    pub(crate) fn from_amqp(
        m: AmqpMessage<Body<Value>>,
        tag: Option<&[u8]>,
        lock_token: Option<uuid::Uuid>,
        entity: &str,
        origin: LockOrigin,
    ) -> Self {
        let props = m.properties.unwrap_or_default();
        let annotations = m.message_annotations.map(|a| a.0).unwrap_or_default();
        let (body, body_kind) = match m.body {
            Body::Data(batch) => {
                let mut all = Vec::new();
                for d in batch.into_iter() {
                    all.extend_from_slice(&d.0);
                }
                (Bytes::from(all), BodyKind::Data)
            }
            Body::Value(v) => match v.0 {
                Value::String(s) => (Bytes::from(s.clone().into_bytes()), BodyKind::Value(Value::String(s))),
                Value::Binary(b) => (Bytes::from(b.to_vec()), BodyKind::Value(Value::Binary(b))),
                other => (Bytes::new(), BodyKind::Value(other)),
            },
            _ => (Bytes::new(), BodyKind::Other),
        };
        let token = lock_token.or_else(|| {
            let t: [u8; 16] = tag?.try_into().ok()?;
            Some(uuid::Uuid::from_bytes_le(t))
        });
        Self {
            body,
            body_kind,
            message_id: props.message_id.as_ref().map(id_text),
            correlation_id: props.correlation_id.as_ref().map(id_text),
            content_type: props.content_type.map(|s| s.to_string()),
            subject: props.subject,
            to: props.to,
            reply_to: props.reply_to,
            session_id: props.group_id,
            reply_to_session_id: props.reply_to_group_id,
            time_to_live: m.header.as_ref().and_then(|h| h.ttl).map(|ms| Duration::from_millis(u64::from(ms))),
            delivery_count: m.header.as_ref().map_or(0, |h| h.delivery_count),
            scheduled_enqueue_time: time_annotation(&annotations, "x-opt-scheduled-enqueue-time"),
            partition_key: match annotations.get(&key("x-opt-partition-key")) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            },
            application_properties: m.application_properties.map(|a| a.0).unwrap_or_default(),
            lock_token: token,
            locked_until: time_annotation(&annotations, "x-opt-locked-until"),
            sequence_number: match annotations.get(&key("x-opt-sequence-number")) {
                Some(Value::Long(n)) => *n,
                _ => 0,
            },
            enqueued_time: time_annotation(&annotations, "x-opt-enqueued-time"),
            entity: entity.to_string(),
            origin,
            delivery: None,
        }
    }

    /// Reads a message from its AMQP 1.0 encoding (as a peek or a deferred receive returns it).
    pub fn from_encoded(bytes: &[u8], entity: &str) -> Result<Self, serde_amqp::Error> {
        Self::decode(bytes, None, entity, LockOrigin::Peeked)
    }

    /// Reads an encoded message (from `$management`).
    pub(crate) fn decode(
        bytes: &[u8],
        lock_token: Option<uuid::Uuid>,
        entity: &str,
        origin: LockOrigin,
    ) -> Result<Self, serde_amqp::Error> {
        // Walked first: the decode below recurses once per nesting level, and these bytes
        // come from a binary field the transport's own check does not look into.
        amqp_wire::check_values(bytes, amqp_wire::MAX_DEPTH).map_err(|e| serde_amqp::Error::Message(e.to_string()))?;
        let m = serde_amqp::from_slice::<Deserializable<AmqpMessage<Body<Value>>>>(bytes)?.0;
        Ok(Self::from_amqp(m, None, lock_token, entity, origin))
    }
}

/// Where a received message's lock came from, and so whether and how it can be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockOrigin {
    /// Delivered on a receive link: the lock dies with that link.
    Link(LinkId),
    /// Received by sequence number through `$management`: the lock lasts until it expires.
    Management,
    /// Looked at without a lock (peek): nothing to settle.
    Peeked,
    /// Removed from the entity as it was delivered (receive-and-delete): already settled.
    Deleted,
}

/// One receive link of any receiver of the process, to tell whether a lock's link is
/// still the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LinkId(u64);

impl LinkId {
    /// An id no other link of the process has.
    pub(crate) fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

fn key(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

fn time_annotation(a: &Annotations, name: &str) -> Option<SystemTime> {
    match a.get(&key(name)) {
        Some(Value::Timestamp(t)) => Some(system_time(t.milliseconds())),
        Some(Value::Long(ms)) => Some(system_time(*ms)),
        _ => None,
    }
}

/// A message-id as text.
fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).hyphenated().to_string(),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// Milliseconds since the epoch as a `SystemTime`.
pub(crate) fn system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A `SystemTime` as an AMQP timestamp.
pub(crate) fn timestamp(t: SystemTime) -> Timestamp {
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    Timestamp::from_milliseconds(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_encoding_and_decoding() {
        let mut m = Message::new(&b"payload"[..]).with_property("order", 42i64);
        m.message_id = Some("m-1".into());
        m.correlation_id = Some("c-1".into());
        m.content_type = Some("application/json".into());
        m.subject = Some("s".into());
        m.session_id = Some("sess".into());
        m.time_to_live = Some(Duration::from_secs(30));
        m.partition_key = Some("pk".into());
        let back = ReceivedMessage::decode(&m.encode(), None, "q", LockOrigin::Management).unwrap();
        assert_eq!(&back.body[..], b"payload");
        assert_eq!(back.body_kind, BodyKind::Data);
        assert_eq!(back.message_id.as_deref(), Some("m-1"));
        assert_eq!(back.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(back.content_type.as_deref(), Some("application/json"));
        assert_eq!(back.session_id.as_deref(), Some("sess"));
        assert_eq!(back.time_to_live, Some(Duration::from_secs(30)));
        assert_eq!(back.partition_key.as_deref(), Some("pk"));
        assert_eq!(back.application_properties.get("order"), Some(&SimpleValue::Long(42)));
    }

    #[test]
    fn lock_tokens_are_read_from_dotnet_ordered_tags() {
        let m = AmqpMessage::builder()
            .body(Body::Value(fe2o3_amqp_types::messaging::AmqpValue(Value::String("x".into()))))
            .build();
        let tag = [0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01];
        let r = ReceivedMessage::from_amqp(m, Some(&tag), None, "q", LockOrigin::Link(LinkId::next()));
        assert_eq!(r.lock_token.unwrap().to_string(), "11223344-5566-7788-99aa-bbccddeeff01");
        assert_eq!(&r.body[..], b"x");
    }

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(system_time(timestamp(t).milliseconds()), t);
    }
}
