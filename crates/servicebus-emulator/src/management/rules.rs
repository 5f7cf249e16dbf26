//! `com.microsoft:add-rule`, `remove-rule` and `enumerate-rules` on a subscription's
//! `$management` node, in the encodings the SDKs' rule managers use: requests carry a
//! `rule-description` map (`sql-filter` or `correlation-filter`, and `sql-rule-action`);
//! answers describe each rule as the service does, with described lists.

use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue};
use serde_amqp::Value;
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

use super::{Failure, OpResult, Request, bad_request, fail, integer, map};
use crate::message::simple_value;
use crate::namespace::Namespace;
use crate::queue::Queue;
use crate::rules::{AddRuleError, CorrelationFilter, Rule, RuleConfig, RuleFilter, RuleSet};

/// Descriptor codes of the service's rule descriptions.
const RULE_DESCRIPTION: u64 = 0x0000_0137_0000_0004;
const SQL_FILTER: u64 = 0x0000_0013_7000_0006;
const TRUE_FILTER: u64 = 0x0000_0013_7000_0007;
const FALSE_FILTER: u64 = 0x0000_0013_7000_0008;
const CORRELATION_FILTER: u64 = 0x0000_0013_7000_0009;
const EMPTY_RULE_ACTION: u64 = 0x0000_0137_0000_0005;
const SQL_RULE_ACTION: u64 = 0x0000_0137_0000_0006;

fn rules_of(queue: &Queue) -> Result<&RuleSet, Failure> {
    queue.rules().ok_or_else(|| {
        bad_request(format!("'{}' is not a subscription: only topic subscriptions have rules", queue.name()))
    })
}

fn text(m: &OrderedMap<Value, Value>, key: &str) -> Result<Option<String>, Failure> {
    match m.get(&Value::String(key.into())) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Symbol(s)) => Ok(Some(s.to_string())),
        Some(other) => Err(bad_request(format!("'{key}' must be a string, not {other:?}"))),
    }
}

fn described_map<'a>(
    m: &'a OrderedMap<Value, Value>,
    key: &str,
) -> Result<Option<&'a OrderedMap<Value, Value>>, Failure> {
    match m.get(&Value::String(key.into())) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Map(inner)) => Ok(Some(inner)),
        Some(other) => Err(bad_request(format!("'{key}' must be a map, not {other:?}"))),
    }
}

/// The rule an `add-rule` request describes.
fn requested_rule(request: &Request) -> Result<RuleConfig, Failure> {
    let name = match request.field("rule-name") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(bad_request("the request body has no 'rule-name' string")),
    };
    let Some(Value::Map(description)) = request.field("rule-description") else {
        return Err(bad_request("the request body has no 'rule-description' map"));
    };
    let sql = described_map(description, "sql-filter")?;
    let correlation = described_map(description, "correlation-filter")?;
    let filter = match (sql, correlation) {
        (Some(sql), None) => RuleFilter::Sql(
            text(sql, "expression")?.ok_or_else(|| bad_request("'sql-filter' has no 'expression' string"))?,
        ),
        (None, Some(c)) => RuleFilter::Correlation(CorrelationFilter {
            correlation_id: text(c, "correlation-id")?,
            message_id: text(c, "message-id")?,
            to: text(c, "to")?,
            reply_to: text(c, "reply-to")?,
            label: text(c, "label")?,
            session_id: text(c, "session-id")?,
            reply_to_session_id: text(c, "reply-to-session-id")?,
            content_type: text(c, "content-type")?,
            properties: match c.get(&Value::String("properties".into())) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Map(p)) => p
                    .iter()
                    .map(|(k, v)| match (k, simple_value(v.clone())) {
                        (Value::String(k), Some(v)) => Ok((k.clone(), v)),
                        _ => Err(bad_request("correlation-filter properties must map strings to simple values")),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => return Err(bad_request(format!("'properties' must be a map, not {other:?}"))),
            },
        }),
        (None, None) => {
            return Err(bad_request("the rule description has neither a 'sql-filter' nor a 'correlation-filter'"));
        }
        (Some(_), Some(_)) => {
            return Err(bad_request("the rule description has both a 'sql-filter' and a 'correlation-filter'"));
        }
    };
    let action = match described_map(description, "sql-rule-action")? {
        None => None,
        Some(a) => {
            Some(text(a, "expression")?.ok_or_else(|| bad_request("'sql-rule-action' has no 'expression' string"))?)
        }
    };
    Ok(RuleConfig { name, filter, action })
}

pub(super) fn add_rule(request: &Request, namespace: &Namespace, queue: &Queue) -> OpResult {
    rules_of(queue)?;
    let rule = Rule::compile(requested_rule(request)?).map_err(|e| bad_request(e.to_string()))?;
    namespace.change_rules(queue, |rules| rules.add(rule)).map_err(|e| match e {
        AddRuleError::Exists(_) => fail(409, "com.microsoft:entity-already-exists", e.to_string()),
        AddRuleError::TooMany => fail(403, "com.microsoft:quota-exceeded", e.to_string()),
    })?;
    Ok((200, map([])))
}

pub(super) fn remove_rule(request: &Request, namespace: &Namespace, queue: &Queue) -> OpResult {
    rules_of(queue)?;
    let Some(Value::String(name)) = request.field("rule-name") else {
        return Err(bad_request("the request body has no 'rule-name' string"));
    };
    if !namespace.change_rules(queue, |rules| rules.remove(name)) {
        return Err(fail(
            404,
            "amqp:not-found",
            format!("The subscription '{}' has no rule named {name:?}.", queue.name()),
        ));
    }
    Ok((200, map([])))
}

pub(super) fn enumerate_rules(request: &Request, queue: &Queue) -> OpResult {
    let rules = rules_of(queue)?;
    let count = |key: &str, default: i64| request.field(key).and_then(integer).unwrap_or(default).max(0) as usize;
    let (top, skip) = (count("top", i64::from(i32::MAX)), count("skip", 0));
    let page: Vec<Value> = rules
        .list()
        .iter()
        .skip(skip)
        .take(top)
        .map(|rule| {
            map([(
                "rule-description",
                described(
                    RULE_DESCRIPTION,
                    vec![filter(&rule.filter), action(rule.action.as_deref()), Value::String(rule.name.clone())],
                ),
            )])
        })
        .collect();
    if page.is_empty() {
        return Ok((204, map([])));
    }
    Ok((200, map([("rules", Value::List(page))])))
}

fn described(code: u64, fields: Vec<Value>) -> Value {
    Value::Described(Box::new(Described { descriptor: Descriptor::Code(code), value: Value::List(fields) }))
}

fn optional(s: &Option<String>) -> Value {
    s.clone().map_or(Value::Null, Value::String)
}

fn filter(f: &RuleFilter) -> Value {
    match f {
        RuleFilter::Sql(expression) => described(SQL_FILTER, vec![Value::String(expression.clone()), Value::Int(20)]),
        RuleFilter::True => described(TRUE_FILTER, vec![Value::String("1=1".into()), Value::Int(20)]),
        RuleFilter::False => described(FALSE_FILTER, vec![Value::String("1=0".into()), Value::Int(20)]),
        RuleFilter::Correlation(c) => described(
            CORRELATION_FILTER,
            vec![
                optional(&c.correlation_id),
                optional(&c.message_id),
                optional(&c.to),
                optional(&c.reply_to),
                optional(&c.label),
                optional(&c.session_id),
                optional(&c.reply_to_session_id),
                optional(&c.content_type),
                Value::Map(c.properties.iter().map(|(k, v)| (Value::String(k.clone()), simple(v))).collect()),
            ],
        ),
    }
}

fn simple(v: &SimpleValue) -> Value {
    serde_amqp::to_value(v).unwrap_or(Value::Null)
}

fn action(a: Option<&str>) -> Value {
    match a {
        None => described(EMPTY_RULE_ACTION, vec![]),
        Some(expression) => described(SQL_RULE_ACTION, vec![Value::String(expression.into()), Value::Int(20)]),
    }
}
