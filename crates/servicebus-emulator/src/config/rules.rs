//! Subscription rules in `Config.json`: `"Rules": [{ "Name", "Properties": { "FilterType":
//! "Sql" | "Correlation", "SqlFilter": { "SqlExpression" }, "CorrelationFilter": { … },
//! "Action": { "SqlExpression" } } }]`, as Microsoft's emulator reads them. A rule that does
//! not parse stops the load, naming its subscription and saying where it went wrong.
//!
//! Beyond Microsoft's schema, as the data directory writes rules ([`super::write`]):
//! `FilterType` `True` and `False` (the service's `TrueFilter` and `FalseFilter`), a
//! correlation property of `null`, and one of another AMQP type as `{"Amqp": "<base64>"}`.

use std::collections::BTreeMap;

use fe2o3_amqp_types::primitives::SimpleValue;
use serde::Deserialize;

use super::unknown;
use crate::rules::{CorrelationFilter, Rule as CompiledRule, RuleConfig, RuleFilter};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Rule {
    name: String,
    properties: RuleProperties,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RuleProperties {
    filter_type: String,
    sql_filter: Option<SqlExpression>,
    correlation_filter: Option<Correlation>,
    action: Option<SqlExpression>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SqlExpression {
    sql_expression: String,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Correlation {
    correlation_id: Option<String>,
    message_id: Option<String>,
    to: Option<String>,
    reply_to: Option<String>,
    label: Option<String>,
    session_id: Option<String>,
    reply_to_session_id: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl Rule {
    /// The rule, checked: `what` names its subscription in errors and warnings.
    pub(super) fn resolve(self, what: &str, warnings: &mut Vec<String>) -> Result<RuleConfig, String> {
        let what = format!("{what}, rule {:?}", self.name);
        unknown(warnings, &what, &self.other);
        let p = self.properties;
        unknown(warnings, &what, &p.other);
        let filter = match p.filter_type.as_str() {
            "Sql" => {
                let sql =
                    p.sql_filter.ok_or_else(|| format!("{what}: FilterType Sql needs SqlFilter.SqlExpression"))?;
                unknown(warnings, &what, &sql.other);
                RuleFilter::Sql(sql.sql_expression)
            }
            "Correlation" => {
                let c = p
                    .correlation_filter
                    .ok_or_else(|| format!("{what}: FilterType Correlation needs a CorrelationFilter"))?;
                unknown(warnings, &what, &c.other);
                let properties =
                    c.properties
                        .into_iter()
                        .map(|(k, v)| {
                            Ok((k.clone(), json_value(&v).ok_or_else(|| {
                        format!(
                            "{what}: CorrelationFilter.Properties.{k} must be a string, a number, a boolean or \
                             null"
                        )
                    })?))
                        })
                        .collect::<Result<_, String>>()?;
                RuleFilter::Correlation(CorrelationFilter {
                    correlation_id: c.correlation_id,
                    message_id: c.message_id,
                    to: c.to,
                    reply_to: c.reply_to,
                    label: c.label,
                    session_id: c.session_id,
                    reply_to_session_id: c.reply_to_session_id,
                    content_type: c.content_type,
                    properties,
                })
            }
            "True" => RuleFilter::True,
            "False" => RuleFilter::False,
            other => return Err(format!("{what}: FilterType {other:?} is not Sql, Correlation, True or False")),
        };
        let action = p.action.map(|a| {
            unknown(warnings, &what, &a.other);
            a.sql_expression
        });
        let config = RuleConfig { name: self.name, filter, action };
        CompiledRule::compile(config.clone()).map_err(|e| format!("{what}: {e}"))?;
        Ok(config)
    }
}

/// A JSON property value as an application property value.
fn json_value(v: &serde_json::Value) -> Option<SimpleValue> {
    Some(match v {
        serde_json::Value::Null => SimpleValue::Null,
        serde_json::Value::Object(m) if m.len() == 1 => super::write::amqp_value(m.get("Amqp")?.as_str()?)?,
        serde_json::Value::String(s) => SimpleValue::String(s.clone()),
        serde_json::Value::Bool(b) => SimpleValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => SimpleValue::Long(i),
            None => SimpleValue::Double(n.as_f64()?.into()),
        },
        _ => return None,
    })
}
