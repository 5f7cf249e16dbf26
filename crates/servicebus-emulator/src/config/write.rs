//! Settings written back in `Config.json`'s schema: how the data directory keeps an entity the
//! administration API made, so that it is read again through the same checks as the file
//! ([`super::entity_properties`], [`super::rule`]). What is written reads back equal.

use std::time::Duration;

use base64::Engine as _;
use fe2o3_amqp_types::primitives::SimpleValue;
use serde_json::{Map, Value, json};

use super::{Kind, TopicProperties};
use crate::queue::QueueProperties;
use crate::rules::{CorrelationFilter, RuleConfig, RuleFilter};

/// `d` as ISO 8601 (`PT1M`, `P1DT2H`, `PT0.5S`), as [`super::parse_iso_duration`] reads it.
pub(crate) fn iso_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::from("P");
    if days > 0 {
        out += &format!("{days}D");
    }
    let nanos = d.subsec_nanos();
    if h > 0 || m > 0 || s > 0 || nanos > 0 || days == 0 {
        out.push('T');
        if h > 0 {
            out += &format!("{h}H");
        }
        if m > 0 {
            out += &format!("{m}M");
        }
        if s > 0 || nanos > 0 || (h == 0 && m == 0) {
            match nanos {
                0 => out += &format!("{s}S"),
                n => out += format!("{s}.{n:09}").trim_end_matches('0'),
            }
            if nanos > 0 {
                out.push('S');
            }
        }
    }
    out
}

/// A queue's or subscription's `Properties` block: every key its kind has, set as `p` has it.
pub(crate) fn properties_json(p: &QueueProperties, kind: Kind) -> Value {
    let mut m = Map::new();
    let mut set = |key: &str, value: Value| {
        m.insert(key.into(), value);
    };
    set("LockDuration", iso_duration(p.lock_duration).into());
    set("MaxDeliveryCount", p.max_delivery_count.into());
    set("DeadLetteringOnMessageExpiration", p.dead_lettering_on_message_expiration.into());
    set("RequiresSession", p.requires_session.into());
    if let Some(ttl) = p.default_message_ttl {
        set("DefaultMessageTimeToLive", iso_duration(ttl).into());
    }
    for (key, target) in
        [("ForwardTo", &p.forward_to), ("ForwardDeadLetteredMessagesTo", &p.forward_dead_lettered_messages_to)]
    {
        if let Some(t) = target {
            set(key, t.clone().into());
        }
    }
    if kind == Kind::Queue {
        set("MaxSizeInMegabytes", p.max_size_megabytes.into());
        set("RequiresDuplicateDetection", p.duplicate_detection_window.is_some().into());
        if let Some(w) = p.duplicate_detection_window {
            set("DuplicateDetectionHistoryTimeWindow", iso_duration(w).into());
        }
        if let Some(bytes) = p.max_message_size {
            set("MaxMessageSizeInKilobytes", (bytes / 1024).into());
        }
    }
    Value::Object(m)
}

/// A topic's `Properties` block.
pub(crate) fn topic_properties_json(p: &TopicProperties) -> Value {
    let mut m = Map::new();
    m.insert("MaxSizeInMegabytes".into(), p.max_size_megabytes.into());
    m.insert("RequiresDuplicateDetection".into(), p.duplicate_detection_window.is_some().into());
    if let Some(w) = p.duplicate_detection_window {
        m.insert("DuplicateDetectionHistoryTimeWindow".into(), iso_duration(w).into());
    }
    if let Some(ttl) = p.default_message_ttl {
        m.insert("DefaultMessageTimeToLive".into(), iso_duration(ttl).into());
    }
    if let Some(bytes) = p.max_message_size {
        m.insert("MaxMessageSizeInKilobytes".into(), (bytes / 1024).into());
    }
    Value::Object(m)
}

/// A rule, as an entry of a subscription's `Rules`.
pub(crate) fn rule_json(rule: &RuleConfig) -> Value {
    let mut properties = Map::new();
    let filter_type = match &rule.filter {
        RuleFilter::Sql(sql) => {
            properties.insert("SqlFilter".into(), json!({ "SqlExpression": sql }));
            "Sql"
        }
        RuleFilter::Correlation(c) => {
            properties.insert("CorrelationFilter".into(), correlation_json(c));
            "Correlation"
        }
        RuleFilter::True => "True",
        RuleFilter::False => "False",
    };
    properties.insert("FilterType".into(), filter_type.into());
    if let Some(action) = &rule.action {
        properties.insert("Action".into(), json!({ "SqlExpression": action }));
    }
    json!({ "Name": rule.name, "Properties": properties })
}

fn correlation_json(c: &CorrelationFilter) -> Value {
    let mut m = Map::new();
    for (key, value) in c.named_fields() {
        if let Some(v) = value {
            m.insert(key.into(), v.clone().into());
        }
    }
    if !c.properties.is_empty() {
        let properties = c.properties.iter().map(|(k, v)| (k.clone(), value_json(v))).collect();
        m.insert("Properties".into(), Value::Object(properties));
    }
    Value::Object(m)
}

/// A correlation filter's property value: a string, a boolean, a long or a double as itself;
/// null as null; a value of any other AMQP type (int, timestamp, uuid, …) as
/// `{"Amqp": "<base64 of its AMQP encoding>"}`, so that its type survives.
pub(crate) fn value_json(v: &SimpleValue) -> Value {
    match v {
        SimpleValue::Null => Value::Null,
        SimpleValue::String(s) => s.clone().into(),
        SimpleValue::Bool(b) => (*b).into(),
        SimpleValue::Long(n) => (*n).into(),
        SimpleValue::Double(f) if f.is_finite() => f.into_inner().into(),
        other => {
            let bytes =
                serde_amqp::to_vec(&serde_amqp::Value::from(other.clone())).expect("a simple value always encodes");
            json!({ "Amqp": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

/// Reads what [`value_json`] wrote in the `{"Amqp": …}` form.
pub(super) fn amqp_value(encoded: &str) -> Option<SimpleValue> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let value: serde_amqp::Value = serde_amqp::from_slice(&bytes).ok()?;
    SimpleValue::try_from(value).ok()
}
