//! Messages as the broker stores them, and as it delivers them.
//!
//! A message is parsed once, when it is sent: its header, message annotations and
//! properties are decoded (the broker acts on them); its application properties
//! and body are kept as the sender encoded them. Each delivery writes a fresh
//! header (always with `delivery-count`) and the broker's annotations in front of
//! the stored bytes.

use bytes::{BufMut, Bytes, BytesMut};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{Annotations, ApplicationProperties, MessageAnnotations, MessageId, Properties};
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Timestamp, Uuid};
use serde_amqp::Value;

use crate::codec::{EncodingError, HeaderFields, split_sections};

/// The Service Bus batch message format: the body is `data` sections, each a whole message.
pub(crate) const BATCH_FORMAT: u32 = 0x8001_3700;

/// Annotation keys the broker reads or writes.
pub(crate) mod annotation {
    pub(crate) const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
    pub(crate) const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
    pub(crate) const LOCKED_UNTIL: &str = "x-opt-locked-until";
    pub(crate) const SCHEDULED_ENQUEUE_TIME: &str = "x-opt-scheduled-enqueue-time";
    pub(crate) const MESSAGE_STATE: &str = "x-opt-message-state";
    /// On a forwarded message: its sequence number where it first arrived.
    pub(crate) const ENQUEUE_SEQUENCE_NUMBER: &str = "x-opt-enqueue-sequence-number";
    /// On a dead-lettered message forwarded on: the entity that dead-lettered it.
    pub(crate) const DEAD_LETTER_SOURCE: &str = "x-opt-deadletter-source";
}

/// Application property keys of dead-lettered messages.
pub(crate) const DEAD_LETTER_REASON: &str = "DeadLetterReason";
pub(crate) const DEAD_LETTER_DESCRIPTION: &str = "DeadLetterErrorDescription";

/// Why a sent message could not be accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MessageError {
    #[error(transparent)]
    Malformed(#[from] EncodingError),
    #[error("malformed {section} section: {source}")]
    Section { section: &'static str, source: serde_amqp::Error },
    #[error("a batch message (format 0x80013700) must have only data sections, each a whole message")]
    BadBatch,
}

/// The state shown in `x-opt-message-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageState {
    Active = 0,
    Deferred = 1,
    Scheduled = 2,
}

/// A message in an entity.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    pub(crate) header: HeaderFields,
    /// The sender's message annotations (the broker's are added on delivery).
    pub(crate) annotations: Annotations,
    /// The `properties` section as encoded (re-encoded if the broker set a message-id).
    pub(crate) properties: Option<Bytes>,
    pub(crate) application_properties: Option<Bytes>,
    /// Body sections and footer, verbatim.
    pub(crate) body: Bytes,
    pub(crate) message_id: Option<String>,
    pub(crate) session_id: Option<String>,
    /// Size as sent, for the size limit.
    pub(crate) size: usize,
    /// When it should become visible (scheduled messages), ms since the epoch.
    pub(crate) scheduled_enqueue_ms: Option<i64>,
    // Set by the entity.
    pub(crate) sequence_number: i64,
    pub(crate) enqueued_ms: i64,
    /// How many times it was forwarded (never on the wire).
    pub(crate) hops: u8,
}

/// What the broker adds to a message when it hands it out.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamp {
    pub(crate) locked_until_ms: Option<i64>,
    pub(crate) state: Option<MessageState>,
}

impl StoredMessage {
    /// Parses one encoded message, as sent in a transfer of format 0.
    pub(crate) fn parse(payload: &Bytes) -> Result<Self, MessageError> {
        let s = split_sections(payload)?;
        let header = match &s.header {
            Some(h) => HeaderFields::decode(h).map_err(|source| MessageError::Section { section: "header", source })?,
            None => HeaderFields::default(),
        };
        let annotations = match &s.message_annotations {
            Some(a) => {
                serde_amqp::from_slice::<MessageAnnotations>(a)
                    .map_err(|source| MessageError::Section { section: "message-annotations", source })?
                    .0
            }
            None => Annotations::new(),
        };
        let parsed_props = match &s.properties {
            Some(p) => Some(
                serde_amqp::from_slice::<Properties>(p)
                    .map_err(|source| MessageError::Section { section: "properties", source })?,
            ),
            None => None,
        };
        if let Some(a) = &s.application_properties {
            serde_amqp::from_slice::<ApplicationProperties>(a)
                .map_err(|source| MessageError::Section { section: "application-properties", source })?;
        }
        let scheduled_enqueue_ms = annotations.get(&key(annotation::SCHEDULED_ENQUEUE_TIME)).and_then(|v| match v {
            Value::Timestamp(t) => Some(t.milliseconds()),
            Value::Long(ms) => Some(*ms),
            _ => None,
        });
        let mut msg = Self {
            header,
            annotations,
            properties: s.properties.clone(),
            application_properties: s.application_properties.clone(),
            body: s.body.clone(),
            message_id: None,
            session_id: None,
            size: payload.len(),
            scheduled_enqueue_ms,
            sequence_number: 0,
            enqueued_ms: 0,
            hops: 0,
        };
        let mut props = parsed_props.unwrap_or_default();
        msg.session_id = props.group_id.clone();
        match &props.message_id {
            Some(id) => msg.message_id = Some(message_id_text(id)),
            None => {
                // The service assigns a message-id when the sender gave none.
                let id = uuid::Uuid::new_v4().simple().to_string();
                props.message_id = Some(MessageId::String(id.clone()));
                msg.message_id = Some(id);
                msg.properties = Some(Bytes::from(
                    serde_amqp::to_vec(&props).expect("properties decoded a moment ago encode again"),
                ));
            }
        }
        Ok(msg)
    }

    /// A message with these body sections and nothing else, unchecked (a test hook).
    pub(crate) fn unchecked(body: Bytes) -> Self {
        Self {
            header: HeaderFields::default(),
            annotations: Annotations::new(),
            properties: None,
            application_properties: None,
            size: body.len(),
            body,
            message_id: None,
            session_id: None,
            scheduled_enqueue_ms: None,
            sequence_number: 0,
            enqueued_ms: 0,
            hops: 0,
        }
    }

    /// The sizes of `messages` as sent, added up (what they count against a quota).
    pub(crate) fn total_size(messages: &[Self]) -> u64 {
        messages.iter().map(|m| m.size as u64).sum()
    }

    /// Parses a transfer's payload: one message, or the messages of a batch.
    pub(crate) fn parse_transfer(payload: &Bytes, format: u32) -> Result<Vec<Self>, MessageError> {
        if format != BATCH_FORMAT {
            return Ok(vec![Self::parse(payload)?]);
        }
        let s = split_sections(payload)?;
        if s.data.is_empty() {
            return Err(MessageError::BadBatch);
        }
        s.data.iter().map(Self::parse).collect()
    }

    /// The message as the broker hands it out.
    pub(crate) fn encode(&self, stamp: Stamp) -> Bytes {
        let mut out = BytesMut::with_capacity(self.size + 128);
        self.header.encode(&mut out);
        let mut annotations = self.annotations.clone();
        annotations.insert(key(annotation::SEQUENCE_NUMBER), Value::Long(self.sequence_number));
        annotations
            .insert(key(annotation::ENQUEUED_TIME), Value::Timestamp(Timestamp::from_milliseconds(self.enqueued_ms)));
        if let Some(until) = stamp.locked_until_ms {
            annotations.insert(key(annotation::LOCKED_UNTIL), Value::Timestamp(Timestamp::from_milliseconds(until)));
        }
        if let Some(state) = stamp.state {
            annotations.insert(key(annotation::MESSAGE_STATE), Value::Int(state as i32));
        }
        let encoded = serde_amqp::to_vec(&MessageAnnotations(annotations)).expect("annotations always encode");
        out.put_slice(&encoded);
        if let Some(p) = &self.properties {
            out.put_slice(p);
        }
        if let Some(a) = &self.application_properties {
            out.put_slice(a);
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Merges properties into the application properties (dead-letter reason, properties-to-modify).
    pub(crate) fn merge_application_properties(&mut self, entries: impl IntoIterator<Item = (String, SimpleValue)>) {
        let mut map = self
            .application_properties
            .as_ref()
            .and_then(|a| serde_amqp::from_slice::<ApplicationProperties>(a).ok())
            .map(|a| a.0)
            .unwrap_or_default();
        let mut changed = false;
        for (k, v) in entries {
            map.insert(k, v);
            changed = true;
        }
        if changed {
            let encoded = serde_amqp::to_vec(&ApplicationProperties(map)).expect("application properties encode");
            self.application_properties = Some(Bytes::from(encoded));
        }
    }

    /// The application properties, decoded (for tests and the management API).
    #[cfg(test)]
    pub(crate) fn application_property(&self, name: &str) -> Option<SimpleValue> {
        let a = self.application_properties.as_ref()?;
        serde_amqp::from_slice::<ApplicationProperties>(a).ok()?.0.get(name).cloned()
    }
}

/// An annotation key (a symbol).
pub(crate) fn key(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

/// A message-id as text, in the form the SDKs show.
pub(crate) fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).hyphenated().to_string(),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// Converts properties-to-modify values to application property values; others are dropped.
pub(crate) fn simple_value(v: Value) -> Option<SimpleValue> {
    Some(match v {
        Value::Null => SimpleValue::Null,
        Value::Bool(b) => SimpleValue::Bool(b),
        Value::Ubyte(x) => SimpleValue::Ubyte(x),
        Value::Ushort(x) => SimpleValue::Ushort(x),
        Value::Uint(x) => SimpleValue::Uint(x),
        Value::Ulong(x) => SimpleValue::Ulong(x),
        Value::Byte(x) => SimpleValue::Byte(x),
        Value::Short(x) => SimpleValue::Short(x),
        Value::Int(x) => SimpleValue::Int(x),
        Value::Long(x) => SimpleValue::Long(x),
        Value::Float(x) => SimpleValue::Float(x),
        Value::Double(x) => SimpleValue::Double(x),
        Value::Char(x) => SimpleValue::Char(x),
        Value::Timestamp(x) => SimpleValue::Timestamp(x),
        Value::Uuid(x) => SimpleValue::Uuid(x),
        Value::Binary(x) => SimpleValue::Binary(x),
        Value::String(x) => SimpleValue::String(x),
        Value::Symbol(x) => SimpleValue::Symbol(x),
        _ => return None,
    })
}

/// A lock token as the AMQP uuid in management bodies (RFC 4122 byte order).
pub(crate) fn amqp_uuid(token: uuid::Uuid) -> Uuid {
    Uuid::from(*token.as_bytes())
}

/// A lock token as the 16-byte delivery tag: .NET `Guid.ToByteArray()` order.
pub(crate) fn delivery_tag(token: uuid::Uuid) -> [u8; 16] {
    token.to_bytes_le()
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::Message;
    use fe2o3_amqp_types::messaging::message::__private::Serializable;
    use serde_amqp::primitives::Binary;

    fn encode<T: fe2o3_amqp_types::messaging::SerializableBody>(m: Message<T>) -> Bytes {
        Bytes::from(serde_amqp::to_vec(&Serializable(m)).unwrap())
    }

    #[test]
    fn a_message_without_id_gets_one_and_keeps_its_body() {
        let sent = encode(Message::builder().data(Binary::from(b"hello".to_vec())).build());
        let mut m = StoredMessage::parse(&sent).unwrap();
        assert_eq!(m.message_id.as_ref().map(|s| s.len()), Some(32));
        m.sequence_number = 42;
        m.enqueued_ms = 1_700_000_000_000;
        let out = m.encode(Stamp { locked_until_ms: Some(1_700_000_060_000), state: None });
        let back: Message<fe2o3_amqp_types::messaging::Body<Value>> =
            serde_amqp::from_slice::<fe2o3_amqp_types::messaging::message::__private::Deserializable<_>>(&out)
                .unwrap()
                .0;
        let header = back.header.expect("header is always written");
        assert_eq!(header.delivery_count, 0);
        let ann = back.message_annotations.unwrap().0;
        assert_eq!(ann.get(&key(annotation::SEQUENCE_NUMBER)), Some(&Value::Long(42)));
        assert_eq!(
            ann.get(&key(annotation::LOCKED_UNTIL)),
            Some(&Value::Timestamp(Timestamp::from_milliseconds(1_700_000_060_000)))
        );
        assert!(matches!(back.body, fe2o3_amqp_types::messaging::Body::Data(_)));
    }

    #[test]
    fn a_batch_is_split_into_its_messages() {
        let one = encode(Message::builder().data(Binary::from(b"1".to_vec())).build());
        let two = encode(Message::builder().data(Binary::from(b"2".to_vec())).build());
        let batch = encode(
            Message::builder()
                .data_batch(vec![
                    fe2o3_amqp_types::messaging::Data(Binary::from(one.to_vec())),
                    fe2o3_amqp_types::messaging::Data(Binary::from(two.to_vec())),
                ])
                .build(),
        );
        let ms = StoredMessage::parse_transfer(&batch, BATCH_FORMAT).unwrap();
        assert_eq!(ms.len(), 2);
    }

    #[test]
    fn dead_letter_properties_merge_into_application_properties() {
        let sent = encode(
            Message::builder()
                .application_properties(ApplicationProperties::builder().insert("k", 1i32).build())
                .data(Binary::from(b"x".to_vec()))
                .build(),
        );
        let mut m = StoredMessage::parse(&sent).unwrap();
        m.merge_application_properties([(DEAD_LETTER_REASON.to_string(), SimpleValue::String("bad".into()))]);
        assert_eq!(m.application_property("k"), Some(SimpleValue::Int(1)));
        assert_eq!(m.application_property(DEAD_LETTER_REASON), Some(SimpleValue::String("bad".into())));
    }

    #[test]
    fn lock_tokens_use_dotnet_byte_order_in_tags() {
        let token = uuid::Uuid::parse_str("11223344-5566-7788-99aa-bbccddeeff01").unwrap();
        assert_eq!(
            delivery_tag(token),
            [0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01]
        );
        assert_eq!(amqp_uuid(token).into_inner(), *token.as_bytes());
    }
}
