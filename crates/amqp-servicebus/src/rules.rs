//! A subscription's rules through its `$management` node: create, delete, list. Rules decide
//! which of a topic's messages the subscription gets (SQL or correlation filters) and how
//! its copies change (SQL actions).

use std::sync::Arc;

use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue};
use serde_amqp::Value;
use serde_amqp::descriptor::Descriptor;

use crate::error::{Error, Result};
use crate::management::Management;

/// How many rules one `enumerate-rules` request asks for.
const PAGE: i32 = 100;

/// A rule's filter.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "rules are made a few at a time; a box would only burden callers")]
pub enum RuleFilter {
    /// A SQL expression over system (`sys.Label`) and user properties.
    Sql(String),
    /// Exact matches of system properties and application properties.
    Correlation(CorrelationFilter),
    /// Every message (sent as the SQL filter `1=1`).
    True,
    /// No message (sent as the SQL filter `1=0`).
    False,
}

/// A correlation filter: every field set must equal the message's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorrelationFilter {
    /// `correlation-id`.
    pub correlation_id: Option<String>,
    /// `message-id`.
    pub message_id: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `reply-to`.
    pub reply_to: Option<String>,
    /// `subject` (the label).
    pub subject: Option<String>,
    /// The session id.
    pub session_id: Option<String>,
    /// The reply-to session id.
    pub reply_to_session_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// Application properties, each of which must be present and equal.
    pub application_properties: OrderedMap<String, SimpleValue>,
}

/// A rule as the broker lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleProperties {
    /// Its name.
    pub name: String,
    /// Which messages it selects.
    pub filter: RuleFilter,
    /// The SQL action applied to the copies it selects, if any.
    pub action: Option<String>,
}

/// The rules of one topic subscription.
pub struct RuleManager {
    management: Arc<Management>,
    /// `<topic>/Subscriptions/<subscription>`.
    entity: String,
}

impl std::fmt::Debug for RuleManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleManager").field("entity", &self.entity).finish()
    }
}

fn field(key: &str, value: Value) -> (Value, Value) {
    (Value::String(key.into()), value)
}

fn optional(value: &Option<String>) -> Value {
    value.clone().map_or(Value::Null, Value::String)
}

impl RuleManager {
    pub(crate) fn new(management: Arc<Management>, topic: &str, subscription: &str) -> Self {
        Self { management, entity: format!("{}/Subscriptions/{}", topic.trim_matches('/'), subscription) }
    }

    /// The subscription's path.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Adds a rule. A name in use fails with
    /// [`ErrorKind::AlreadyExists`](crate::error::ErrorKind::AlreadyExists), SQL the broker
    /// cannot parse with [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument).
    pub async fn create_rule(&self, name: &str, filter: RuleFilter, action: Option<&str>) -> Result<()> {
        let sql = |expression: &str| {
            Value::Map([field("expression", Value::String(expression.into()))].into_iter().collect())
        };
        let mut description = OrderedMap::new();
        match &filter {
            RuleFilter::Sql(expression) => description.insert(Value::String("sql-filter".into()), sql(expression)),
            RuleFilter::True => description.insert(Value::String("sql-filter".into()), sql("1=1")),
            RuleFilter::False => description.insert(Value::String("sql-filter".into()), sql("1=0")),
            RuleFilter::Correlation(c) => {
                let properties = c
                    .application_properties
                    .iter()
                    .map(|(k, v)| (Value::String(k.clone()), serde_amqp::to_value(v).unwrap_or(Value::Null)))
                    .collect();
                let fields = [
                    field("correlation-id", optional(&c.correlation_id)),
                    field("message-id", optional(&c.message_id)),
                    field("to", optional(&c.to)),
                    field("reply-to", optional(&c.reply_to)),
                    field("label", optional(&c.subject)),
                    field("session-id", optional(&c.session_id)),
                    field("reply-to-session-id", optional(&c.reply_to_session_id)),
                    field("content-type", optional(&c.content_type)),
                    field("properties", Value::Map(properties)),
                ];
                description.insert(Value::String("correlation-filter".into()), Value::Map(fields.into_iter().collect()))
            }
        };
        if let Some(action) = action {
            description.insert(Value::String("sql-rule-action".into()), sql(action));
        }
        let body = vec![("rule-name", Value::String(name.into())), ("rule-description", Value::Map(description))];
        self.management.request(&self.entity, "com.microsoft:add-rule", body).await.map(drop)
    }

    /// Deletes the rule `name`
    /// ([`ErrorKind::NotFound`](crate::error::ErrorKind::NotFound) if there is none).
    pub async fn delete_rule(&self, name: &str) -> Result<()> {
        let body = vec![("rule-name", Value::String(name.into()))];
        self.management.request(&self.entity, "com.microsoft:remove-rule", body).await.map(drop)
    }

    /// Every rule of the subscription, in the order they were added.
    pub async fn rules(&self) -> Result<Vec<RuleProperties>> {
        let mut rules = Vec::new();
        loop {
            let skip = i32::try_from(rules.len()).unwrap_or(i32::MAX);
            let body = vec![("top", Value::Int(PAGE)), ("skip", Value::Int(skip))];
            let response = self.management.request(&self.entity, "com.microsoft:enumerate-rules", body).await?;
            let page = match response.field("rules") {
                Some(Value::List(l)) => l.as_slice(),
                Some(Value::Array(a)) => a.0.as_slice(),
                None if response.status == 204 => &[],
                other => return Err(self.malformed(format!("the answer has no rules list: {other:?}"))),
            };
            for item in page {
                rules.push(self.rule(item)?);
            }
            if page.len() < PAGE as usize {
                return Ok(rules);
            }
        }
    }

    fn malformed(&self, what: String) -> Error {
        Error::protocol(&self.entity, format!("enumerate-rules: {what}"))
    }

    fn rule(&self, item: &Value) -> Result<RuleProperties> {
        let description = match item {
            Value::Map(m) => m.get(&Value::String("rule-description".into())),
            _ => None,
        };
        let (_, fields) = described(description).ok_or_else(|| self.malformed(format!("a rule is {item:?}")))?;
        let [filter, action, name, ..] = fields else {
            return Err(self.malformed(format!("a rule description has {} fields, not 3", fields.len())));
        };
        let Value::String(name) = name else { return Err(self.malformed(format!("a rule's name is {name:?}"))) };
        let (filter_kind, filter_fields) =
            described(Some(filter)).ok_or_else(|| self.malformed(format!("the filter of {name} is {filter:?}")))?;
        let text = |i: usize| match filter_fields.get(i) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let filter = match filter_kind.as_str() {
            "sql-filter" => RuleFilter::Sql(text(0).unwrap_or_default()),
            "true-filter" => RuleFilter::True,
            "false-filter" => RuleFilter::False,
            "correlation-filter" => RuleFilter::Correlation(CorrelationFilter {
                correlation_id: text(0),
                message_id: text(1),
                to: text(2),
                reply_to: text(3),
                subject: text(4),
                session_id: text(5),
                reply_to_session_id: text(6),
                content_type: text(7),
                application_properties: match filter_fields.get(8) {
                    Some(Value::Map(m)) => m
                        .iter()
                        .filter_map(|(k, v)| match k {
                            Value::String(k) => Some((k.clone(), serde_amqp::from_value(v.clone()).ok()?)),
                            _ => None,
                        })
                        .collect(),
                    _ => OrderedMap::new(),
                },
            }),
            other => return Err(self.malformed(format!("the filter of {name} is of an unknown kind {other}"))),
        };
        let action = match described(Some(action)) {
            Some((kind, fields)) if kind == "sql-rule-action" => match fields.first() {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        Ok(RuleProperties { name: name.clone(), filter, action })
    }
}

/// A described list's kind (`sql-filter`, …) and fields, by descriptor code or name.
fn described(v: Option<&Value>) -> Option<(String, &[Value])> {
    let Some(Value::Described(d)) = v else { return None };
    let kind = match &d.descriptor {
        Descriptor::Code(code) => match code {
            0x0000_0137_0000_0004 => "rule-description",
            0x0000_0013_7000_0006 => "sql-filter",
            0x0000_0013_7000_0007 => "true-filter",
            0x0000_0013_7000_0008 => "false-filter",
            0x0000_0013_7000_0009 => "correlation-filter",
            0x0000_0137_0000_0005 => "empty-rule-action",
            0x0000_0137_0000_0006 => "sql-rule-action",
            _ => return None,
        }
        .to_string(),
        Descriptor::Name(name) => {
            name.as_str().trim_start_matches("com.microsoft:").trim_end_matches(":list").to_string()
        }
    };
    match &d.value {
        Value::List(fields) => Some((kind, fields.as_slice())),
        _ => None,
    }
}
