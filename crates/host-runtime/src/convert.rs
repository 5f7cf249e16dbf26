//! Messages between Service Bus and the guest, by the rules of `docs/semantics.md`:
//! host-assigned keys, system keys, application keys (with the `app:` escape), and
//! `format` ↔ `content-type` (the February 2024 draft's record) or the `content-type`
//! accessors (the December 2024 revision's resource).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqp_servicebus::{BodyKind, Message as SbMessage, ReceivedMessage, SimpleValue};
use base64::Engine as _;
use serde_amqp::Value;
use wit_interface::metadata::{self, Key};
use wit_interface::{FormatSpec, Message, MessageState};

/// A bad metadata value on a message the guest sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata key '{key}': {problem}")]
pub struct MetadataError {
    /// The key.
    pub key: String,
    /// What is wrong with its value.
    pub problem: String,
}

/// A received message as a guest of the February 2024 draft sees it.
pub fn to_guest(m: &ReceivedMessage, channel: &str, delivery_id: &str) -> Message {
    let (data, format, md) = guest_parts(m, channel, Some(delivery_id));
    Message { data, format, metadata: Some(md) }
}

/// A received message as a guest of the December 2024 revision sees it: the same data and
/// metadata, its ContentType, and the channel as its topic. `delivery_id` is `None` for a
/// message the call cannot settle (a reply the host received for a request).
pub fn to_message_state(m: &ReceivedMessage, channel: &str, delivery_id: Option<&str>) -> MessageState {
    let (data, _, md) = guest_parts(m, channel, delivery_id);
    MessageState {
        data,
        content_type: m.content_type.clone(),
        metadata: Some(md),
        topic: Some(channel.to_string()),
        delivery: delivery_id.map(String::from),
    }
}

/// The body, its format, and the metadata of a received message.
fn guest_parts(
    m: &ReceivedMessage,
    channel: &str,
    delivery_id: Option<&str>,
) -> (Vec<u8>, FormatSpec, Vec<(String, String)>) {
    let mut md: Vec<(String, String)> = Vec::with_capacity(16 + m.application_properties.len());
    let mut put = |k: &str, v: String| md.push((k.to_string(), v));
    if let Some(id) = delivery_id {
        put(metadata::DELIVERY_ID, id.to_string());
    }
    if let Some(t) = m.lock_token {
        put(metadata::LOCK_TOKEN, t.hyphenated().to_string());
    }
    put(metadata::CHANNEL, channel.to_string());
    put(metadata::DELIVERY_COUNT, (u64::from(m.delivery_count) + 1).to_string());
    if let Some(t) = m.enqueued_time {
        put(metadata::ENQUEUED_TIME, rfc3339(t));
    }
    put(metadata::SEQUENCE_NUMBER, m.sequence_number.to_string());
    if let Some(t) = m.locked_until {
        put(metadata::LOCKED_UNTIL, rfc3339(t));
    }
    let system = [
        (metadata::MESSAGE_ID, &m.message_id),
        (metadata::CORRELATION_ID, &m.correlation_id),
        (metadata::CONTENT_TYPE, &m.content_type),
        (metadata::SUBJECT, &m.subject),
        (metadata::SESSION_ID, &m.session_id),
        (metadata::REPLY_TO, &m.reply_to),
        (metadata::REPLY_TO_SESSION_ID, &m.reply_to_session_id),
        (metadata::TO, &m.to),
        (metadata::PARTITION_KEY, &m.partition_key),
    ];
    for (k, v) in system {
        if let Some(v) = v {
            put(k, v.clone());
        }
    }
    if let Some(ttl) = m.time_to_live {
        put(metadata::TIME_TO_LIVE, ttl.as_millis().to_string());
    }
    if let Some(t) = m.scheduled_enqueue_time {
        put(metadata::SCHEDULED_ENQUEUE_TIME, rfc3339(t));
    }
    for (name, value) in m.application_properties.iter() {
        md.push((metadata::application_key(name).into_owned(), value_text(value)));
    }
    let (data, format) = match &m.body_kind {
        BodyKind::Data | BodyKind::Value(Value::String(_) | Value::Binary(_)) => {
            (m.body.to_vec(), format_of(m.content_type.as_deref()))
        }
        // Any other AMQP body reaches the guest as its AMQP encoding.
        BodyKind::Value(v) => (serde_amqp::to_vec(v).unwrap_or_default(), FormatSpec::Amqp),
        BodyKind::Other => (m.body.to_vec(), FormatSpec::Amqp),
    };
    (data, format, md)
}

fn format_of(content_type: Option<&str>) -> FormatSpec {
    match content_type {
        Some(ct) if ct.starts_with("application/cloudevents") => FormatSpec::Cloudevents,
        Some("application/http") => FormatSpec::Http,
        _ => FormatSpec::Raw,
    }
}

/// A message a guest of the February 2024 draft sent, as a Service Bus message.
pub fn from_guest(m: &Message) -> Result<SbMessage, MetadataError> {
    let mut out = with_metadata(m.data.clone(), m.metadata.as_deref().unwrap_or_default())?;
    if out.content_type.is_none() {
        out.content_type = match m.format {
            FormatSpec::Cloudevents => Some("application/cloudevents+json".into()),
            FormatSpec::Http => Some("application/http".into()),
            _ => None,
        };
    }
    Ok(out)
}

/// A message a guest of the December 2024 revision sent, as a Service Bus message: its
/// metadata as for the February 2024 draft; its content type, when set, over a
/// `content-type` key.
pub fn from_message_state(m: MessageState) -> Result<SbMessage, MetadataError> {
    let mut out = with_metadata(m.data, m.metadata.as_deref().unwrap_or_default())?;
    if m.content_type.is_some() {
        out.content_type = m.content_type;
    }
    Ok(out)
}

/// A Service Bus message of `data` with the properties `metadata` names.
fn with_metadata(data: Vec<u8>, md: &[(String, String)]) -> Result<SbMessage, MetadataError> {
    let mut out = SbMessage::new(data);
    for (k, v) in md {
        match metadata::classify(k) {
            Key::HostAssigned(_) => {}
            Key::System(key) => set_system(&mut out, key, v)?,
            Key::Application(name) => {
                out.application_properties.insert(name.to_string(), SimpleValue::String(v.clone()));
            }
        }
    }
    Ok(out)
}

fn set_system(out: &mut SbMessage, key: &str, v: &str) -> Result<(), MetadataError> {
    let bad = |problem: String| MetadataError { key: key.to_string(), problem };
    let text = Some(v.to_string());
    match key {
        metadata::MESSAGE_ID => out.message_id = text,
        metadata::CORRELATION_ID => out.correlation_id = text,
        metadata::CONTENT_TYPE => out.content_type = text,
        metadata::SUBJECT => out.subject = text,
        metadata::SESSION_ID => out.session_id = text,
        metadata::REPLY_TO => out.reply_to = text,
        metadata::REPLY_TO_SESSION_ID => out.reply_to_session_id = text,
        metadata::TO => out.to = text,
        metadata::PARTITION_KEY => out.partition_key = text,
        metadata::TIME_TO_LIVE => {
            let ms: u64 = v.trim().parse().map_err(|_| bad(format!("{v:?} is not a number of milliseconds")))?;
            out.time_to_live = Some(Duration::from_millis(ms));
        }
        metadata::SCHEDULED_ENQUEUE_TIME => {
            out.scheduled_enqueue_time = Some(
                parse_rfc3339(v)
                    .ok_or_else(|| bad(format!("{v:?} is not an RFC 3339 time like 2026-11-21T17:30:05Z")))?,
            );
        }
        _ => {}
    }
    Ok(())
}

/// An application property value as text.
pub fn value_text(v: &SimpleValue) -> String {
    match v {
        SimpleValue::Null => String::new(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(x) => x.to_string(),
        SimpleValue::Ushort(x) => x.to_string(),
        SimpleValue::Uint(x) => x.to_string(),
        SimpleValue::Ulong(x) => x.to_string(),
        SimpleValue::Byte(x) => x.to_string(),
        SimpleValue::Short(x) => x.to_string(),
        SimpleValue::Int(x) => x.to_string(),
        SimpleValue::Long(x) => x.to_string(),
        SimpleValue::Float(x) => x.to_string(),
        SimpleValue::Double(x) => x.to_string(),
        SimpleValue::Decimal32(_) | SimpleValue::Decimal64(_) | SimpleValue::Decimal128(_) => format!("{v:?}"),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Timestamp(t) => rfc3339(UNIX_EPOCH + Duration::from_millis(t.milliseconds().max(0) as u64)),
        SimpleValue::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).hyphenated().to_string(),
        SimpleValue::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b.as_slice()),
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.to_string(),
        SimpleValue::Described(d) => format!("{d:?}"),
    }
}

/// RFC 3339, UTC, milliseconds: `2026-11-21T17:30:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return None;
        }
        let padded = format!("{:0<3}", &digits[..digits.len().min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits.len()..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo, d);
    let total_ms = ((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + millis;
    (total_ms >= 0).then(|| UNIX_EPOCH + Duration::from_millis(total_ms as u64))
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_knows_the_calendar() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_205_123);
        let s = rfc3339(t);
        assert_eq!(s, "2026-11-18T11:10:05.123Z"); // Python: datetime.fromtimestamp(1795000205.123, utc)
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("2024-02-29T23:59:59+01:00"), parse_rfc3339("2024-02-29T22:59:59Z"));
        assert_eq!(parse_rfc3339("2026-11-21T17:30:05.5Z").map(rfc3339).as_deref(), Some("2026-11-21T17:30:05.500Z"));
        for bad in
            ["", "soon", "2026-13-01T00:00:00Z", "2026-11-21 17:30", "2026-11-21T17:30:05", "2026-11-21T17:30:05+1"]
        {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sent_metadata_maps_to_properties_and_bad_values_name_the_key() {
        let m = Message {
            data: b"{}".to_vec(),
            format: FormatSpec::Cloudevents,
            metadata: Some(vec![
                ("message-id".into(), "m1".into()),
                ("time-to-live".into(), "1500".into()),
                ("delivery-id".into(), "ignored".into()),
                ("app:to".into(), "an app property".into()),
                ("order-id".into(), "42".into()),
            ]),
        };
        let sb = from_guest(&m).unwrap();
        assert_eq!(sb.message_id.as_deref(), Some("m1"));
        assert_eq!(sb.time_to_live, Some(Duration::from_millis(1500)));
        assert_eq!(sb.to, None);
        assert_eq!(sb.content_type.as_deref(), Some("application/cloudevents+json"));
        assert_eq!(sb.application_properties.get("to"), Some(&SimpleValue::String("an app property".into())));
        assert_eq!(sb.application_properties.get("order-id"), Some(&SimpleValue::String("42".into())));
        assert!(sb.application_properties.get("delivery-id").is_none());
        let bad = Message { metadata: Some(vec![("time-to-live".into(), "soon".into())]), ..m };
        let e = from_guest(&bad).unwrap_err();
        assert_eq!(e.key, "time-to-live");
        assert!(e.to_string().contains("\"soon\" is not a number"), "{e}");
    }

    #[test]
    fn values_render_as_documented() {
        assert_eq!(value_text(&SimpleValue::Bool(true)), "true");
        assert_eq!(value_text(&SimpleValue::Long(-7)), "-7");
        assert_eq!(value_text(&SimpleValue::Null), "");
        assert_eq!(value_text(&SimpleValue::Binary(vec![1u8, 2, 3].into())), "AQID");
    }
}
