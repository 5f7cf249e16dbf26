//! Subscription rules: which of a topic's messages a subscription gets, and how its copies
//! are changed.
//!
//! A rule has a filter (SQL, correlation, true or false) and may have a SQL action. A
//! message sent to a topic goes to a subscription when a rule of it matches: the rules
//! without an action give one copy between them however many match; each matching rule
//! with an action gives a copy of its own, changed by the action and carrying a `RuleName`
//! property. A subscription made without rules has `$Default`, a true filter.
//!
//! - `sql`: the SQL dialect (parsing, evaluation).
//! - [`RuleConfig`]: a rule as `Config.json` or `$management` gives it; `RuleSet`: a
//!   subscription's rules, compiled.

pub(crate) mod sql;

use std::cell::OnceCell;
use std::sync::{RwLock, RwLockReadGuard};

use bytes::Bytes;
use fe2o3_amqp_types::messaging::{ApplicationProperties, MessageId, Properties};
use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue, Symbol};

use crate::message::{StoredMessage, message_id_text};
pub use sql::SqlError;
use sql::{Predicate, Props, Statement, Val};

/// The rule a subscription gets when it is made without rules.
pub const DEFAULT_RULE: &str = "$Default";
/// The most rules one subscription may have.
pub const MAX_RULES: usize = 2000;
/// The longest rule name Service Bus accepts.
const MAX_NAME_LENGTH: usize = 50;
/// The application property each copy made by a rule with an action carries.
const RULE_NAME_PROPERTY: &str = "RuleName";

/// A rule as configured (`Config.json`) or requested (`$management` `add-rule`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    /// Its name, unique in its subscription.
    pub name: String,
    /// Which messages it selects.
    pub filter: RuleFilter,
    /// A SQL action applied to the copy it selects (`SET`, `REMOVE`).
    pub action: Option<String>,
}

/// A rule's filter.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleFilter {
    /// A SQL expression over the message's system and user properties.
    Sql(String),
    /// Exact matches of system properties and user properties.
    Correlation(CorrelationFilter),
    /// Every message (`1=1`).
    True,
    /// No message (`1=0`).
    False,
}

/// A correlation filter: every field given must equal the message's.
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
    pub label: Option<String>,
    /// `group-id` (the session id).
    pub session_id: Option<String>,
    /// `reply-to-group-id`.
    pub reply_to_session_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// Application properties, each of which must be present and equal.
    pub properties: Vec<(String, SimpleValue)>,
}

impl CorrelationFilter {
    /// Its system-property fields, by the names the service's schemas give them.
    pub(crate) fn named_fields(&self) -> [(&'static str, &Option<String>); 8] {
        [
            ("CorrelationId", &self.correlation_id),
            ("MessageId", &self.message_id),
            ("To", &self.to),
            ("ReplyTo", &self.reply_to),
            ("Label", &self.label),
            ("SessionId", &self.session_id),
            ("ReplyToSessionId", &self.reply_to_session_id),
            ("ContentType", &self.content_type),
        ]
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn matches(&self, props: &Props) -> bool {
        let field = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        field(&self.correlation_id, &props.correlation_id)
            && field(&self.message_id, &props.message_id)
            && field(&self.to, &props.to)
            && field(&self.reply_to, &props.reply_to)
            && field(&self.label, &props.label)
            && field(&self.session_id, &props.session_id)
            && field(&self.reply_to_session_id, &props.reply_to_session_id)
            && field(&self.content_type, &props.content_type)
            && self
                .properties
                .iter()
                .all(|(name, want)| props.user(name).is_some_and(|have| equal(&Val::of(have), &Val::of(want))))
    }
}

/// Equality as a correlation filter sees it: numbers by value across their types.
fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Long(x), Val::Double(y)) | (Val::Double(y), Val::Long(x)) => (*x as f64) == *y,
        _ => a == b,
    }
}

/// Why a rule cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The name is empty, too long, or has characters Service Bus refuses.
    #[error("the rule name {0:?} is invalid: use 1 to 50 characters, none of / \\ ? # or control characters")]
    Name(String),
    /// The SQL filter does not parse.
    #[error("the filter of rule {rule:?} does not parse, {source}")]
    Filter {
        /// The rule.
        rule: String,
        /// Where and why.
        source: SqlError,
    },
    /// The SQL action does not parse.
    #[error("the action of rule {rule:?} does not parse, {source}")]
    Action {
        /// The rule.
        rule: String,
        /// Where and why.
        source: SqlError,
    },
    /// A correlation filter with no field set would match every message by accident.
    #[error("the correlation filter of rule {0:?} sets no field: set at least one, or use a SQL filter '1=1'")]
    EmptyCorrelation(String),
}

/// A rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    config: RuleConfig,
    filter: Filter,
    action: Option<Vec<Statement>>,
}

#[derive(Debug, Clone)]
enum Filter {
    Sql(Predicate),
    Correlation(CorrelationFilter),
    Constant(bool),
}

impl Rule {
    /// Checks and compiles a rule.
    pub(crate) fn compile(config: RuleConfig) -> Result<Self, RuleError> {
        let name = &config.name;
        if name.is_empty()
            || name.chars().count() > MAX_NAME_LENGTH
            || name.chars().any(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control())
        {
            return Err(RuleError::Name(name.clone()));
        }
        let filter = match &config.filter {
            RuleFilter::Sql(text) => {
                Filter::Sql(sql::parse_filter(text).map_err(|source| RuleError::Filter { rule: name.clone(), source })?)
            }
            RuleFilter::Correlation(c) if c.is_empty() => return Err(RuleError::EmptyCorrelation(name.clone())),
            RuleFilter::Correlation(c) => Filter::Correlation(c.clone()),
            RuleFilter::True => Filter::Constant(true),
            RuleFilter::False => Filter::Constant(false),
        };
        let action = match &config.action {
            None => None,
            Some(text) => {
                Some(sql::parse_action(text).map_err(|source| RuleError::Action { rule: name.clone(), source })?)
            }
        };
        Ok(Self { config, filter, action })
    }

    /// `$Default`: every message, unchanged.
    pub(crate) fn default_rule() -> Self {
        Self::compile(RuleConfig { name: DEFAULT_RULE.into(), filter: RuleFilter::True, action: None })
            .expect("the default rule is valid")
    }

    fn needs_properties(&self) -> bool {
        !matches!(self.filter, Filter::Constant(_)) || self.action.is_some()
    }

    fn matches(&self, props: &Props) -> bool {
        match &self.filter {
            Filter::Sql(predicate) => sql::matches(predicate, props),
            Filter::Correlation(c) => c.matches(props),
            Filter::Constant(b) => *b,
        }
    }
}

/// Why a rule could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AddRuleError {
    #[error("The messaging entity already has a rule named {0:?}.")]
    Exists(String),
    #[error("The subscription has {MAX_RULES} rules, the most it may have.")]
    TooMany,
}

/// A subscription's rules, in the order they were added.
#[derive(Debug)]
pub(crate) struct RuleSet {
    rules: RwLock<Vec<Rule>>,
}

impl RuleSet {
    /// The rules; `$Default` when there are none.
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        let rules = if rules.is_empty() { vec![Rule::default_rule()] } else { rules };
        Self { rules: RwLock::new(rules) }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Rule>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(&self, rule: Rule) -> Result<(), AddRuleError> {
        let mut rules = self.rules.write().unwrap_or_else(|p| p.into_inner());
        if rules.iter().any(|r| r.config.name.eq_ignore_ascii_case(&rule.config.name)) {
            return Err(AddRuleError::Exists(rule.config.name));
        }
        if rules.len() >= MAX_RULES {
            return Err(AddRuleError::TooMany);
        }
        rules.push(rule);
        Ok(())
    }

    /// Replaces every rule with `rules` (none: the subscription takes no message).
    pub(crate) fn replace(&self, rules: Vec<Rule>) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// Removes the rule named `name`; false if there is none.
    pub(crate) fn remove(&self, name: &str) -> bool {
        let mut rules = self.rules.write().unwrap_or_else(|p| p.into_inner());
        let before = rules.len();
        rules.retain(|r| !r.config.name.eq_ignore_ascii_case(name));
        rules.len() != before
    }

    /// The rules as configured, in order.
    pub(crate) fn list(&self) -> Vec<RuleConfig> {
        self.read().iter().map(|r| r.config.clone()).collect()
    }

    /// The copies of `message` this subscription gets: none, one, or one per matching rule
    /// with an action (plus one if a rule without an action matches). `view` is what the
    /// rules see of the message, read once however many subscriptions route it.
    pub(crate) fn route(&self, message: &StoredMessage, view: &MessageView) -> Vec<StoredMessage> {
        let rules = self.read();
        if !rules.iter().any(Rule::needs_properties) {
            // Only true and false filters: no need to read the message.
            return if rules.iter().any(|r| matches!(r.filter, Filter::Constant(true))) {
                vec![message.clone()]
            } else {
                Vec::new()
            };
        }
        let props = view.0.get_or_init(|| props_of(message));
        let mut plain = false;
        let mut copies = Vec::new();
        for rule in rules.iter().filter(|r| r.matches(props)) {
            match &rule.action {
                None => plain = true,
                Some(statements) => {
                    let mut changed = props.clone();
                    sql::apply(statements, &mut changed);
                    changed.set_user(RULE_NAME_PROPERTY, SimpleValue::String(rule.config.name.clone()));
                    copies.push(with_props(message, props, &changed));
                }
            }
        }
        if plain {
            copies.insert(0, message.clone());
        }
        copies
    }
}

/// What the rules of a topic's subscriptions see of one message: its properties, decoded when
/// the first rule that reads them needs them, and only then.
#[derive(Default)]
pub(crate) struct MessageView(OnceCell<Props>);

/// What a rule sees of a message.
fn props_of(message: &StoredMessage) -> Props {
    let properties: Properties =
        message.properties.as_ref().and_then(|p| serde_amqp::from_slice(p).ok()).unwrap_or_default();
    let user = message
        .application_properties
        .as_ref()
        .and_then(|a| serde_amqp::from_slice::<ApplicationProperties>(a).ok())
        .map(|a| a.0.into_iter().collect())
        .unwrap_or_default();
    Props {
        message_id: properties.message_id.as_ref().map(message_id_text),
        correlation_id: properties.correlation_id.as_ref().map(message_id_text),
        to: properties.to,
        reply_to: properties.reply_to,
        label: properties.subject,
        session_id: properties.group_id,
        reply_to_session_id: properties.reply_to_group_id,
        content_type: properties.content_type.map(|s| s.to_string()),
        size: i64::try_from(message.size).unwrap_or(i64::MAX),
        user,
    }
}

/// `message` with the properties an action changed from `before` to `after`.
fn with_props(message: &StoredMessage, before: &Props, after: &Props) -> StoredMessage {
    let mut copy = message.clone();
    let system_changed = Props { user: Vec::new(), ..before.clone() } != Props { user: Vec::new(), ..after.clone() };
    if system_changed {
        let mut properties: Properties =
            message.properties.as_ref().and_then(|p| serde_amqp::from_slice(p).ok()).unwrap_or_default();
        // Fields the action left alone keep their encoding (a uuid message-id stays a uuid).
        if after.message_id != before.message_id {
            properties.message_id = after.message_id.clone().map(MessageId::String);
        }
        if after.correlation_id != before.correlation_id {
            properties.correlation_id = after.correlation_id.clone().map(MessageId::String);
        }
        properties.to = after.to.clone();
        properties.reply_to = after.reply_to.clone();
        properties.subject = after.label.clone();
        properties.group_id = after.session_id.clone();
        properties.reply_to_group_id = after.reply_to_session_id.clone();
        properties.content_type = after.content_type.clone().map(Symbol::from);
        copy.properties = Some(Bytes::from(serde_amqp::to_vec(&properties).expect("properties encode")));
        copy.message_id = after.message_id.clone();
        copy.session_id = after.session_id.clone();
    }
    let map: OrderedMap<String, SimpleValue> = after.user.iter().cloned().collect();
    copy.application_properties =
        Some(Bytes::from(serde_amqp::to_vec(&ApplicationProperties(map)).expect("application properties encode")));
    copy
}

#[cfg(test)]
mod tests;
