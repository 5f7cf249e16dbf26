//! Entities and settings, in the schema of Microsoft's emulator `Config.json`.
//!
//! A file written for Microsoft's emulator loads unchanged, and every property of its schema
//! is honoured. Keys outside that schema are reported as warnings ([`Config::warnings`]);
//! a property on an entity that cannot have it (`LockDuration` on a topic, duplicate
//! detection on a subscription), a forwarding target that does not exist, and a value out
//! of the service's range are errors. Errors name the file and the key (and the line, for
//! what JSON itself refuses); a subscription rule that does not parse names its subscription
//! and where it went wrong (`rules`).
//!
//! Size: about 700 lines (its tests are in `tests.rs`): the schema, the types of its values
//! and the checks on them stay in one place, so each key's rule is read in one file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::auth::{Keys, Rights};

use serde::Deserialize;

use crate::queue::{DEFAULT_DUPLICATE_DETECTION_WINDOW, DEFAULT_MAX_SIZE_MEGABYTES, QueueProperties};
use crate::rules::RuleConfig;

mod rules;
mod write;

pub(crate) use write::{iso_duration, properties_json, rule_json, topic_properties_json};

/// A configuration error: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid, or a value is out of range.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file (`<inline>` for text).
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key's path, e.g. `UserConfig.Namespaces[0].Queues[1].Properties.LockDuration`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The entities are inconsistent (duplicate names, ...).
    #[error("{path}: {message}")]
    Entities {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A queue to create.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub properties: QueueProperties,
}

/// A topic and its subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// Its name.
    pub name: String,
    /// Its own settings (what applies to its subscriptions is in theirs).
    pub properties: TopicProperties,
    /// Its subscriptions.
    pub subscriptions: Vec<QueueConfig>,
    /// The rules of subscriptions, by subscription name; a subscription without any gets
    /// `$Default` (every message).
    pub rules: BTreeMap<String, Vec<RuleConfig>>,
}

/// A topic's own settings (from `Config.json` `Properties` of a topic).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicProperties {
    /// `RequiresDuplicateDetection` with its window: a message whose message-id was sent to
    /// the topic inside the window is accepted and dropped, before any subscription sees it.
    pub duplicate_detection_window: Option<Duration>,
    /// `DefaultMessageTimeToLive`: its subscriptions' default TTL is at most this.
    pub default_message_ttl: Option<Duration>,
    /// `MaxSizeInMegabytes`: the most each of its subscriptions holds.
    pub max_size_megabytes: u64,
    /// `MaxMessageSizeInKilobytes` (in bytes): the largest message a sender may send to it;
    /// `None` is the emulator's.
    pub max_message_size: Option<usize>,
}

impl From<QueueProperties> for TopicProperties {
    /// The part of a `Properties` block a topic has.
    fn from(p: QueueProperties) -> Self {
        Self {
            duplicate_detection_window: p.duplicate_detection_window,
            default_message_ttl: p.default_message_ttl,
            max_size_megabytes: p.max_size_megabytes,
            max_message_size: p.max_message_size,
        }
    }
}

impl TopicProperties {
    /// A subscription's settings as its topic bounds them: it holds as much as the topic may,
    /// and keeps a message no longer than the topic's default TTL.
    pub fn bound(&self, subscription: QueueProperties) -> QueueProperties {
        QueueProperties {
            max_size_megabytes: self.max_size_megabytes,
            default_message_ttl: match (subscription.default_message_ttl, self.default_message_ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            ..subscription
        }
    }
}

impl Default for TopicProperties {
    fn default() -> Self {
        Self {
            duplicate_detection_window: None,
            default_message_ttl: None,
            max_size_megabytes: DEFAULT_MAX_SIZE_MEGABYTES,
            max_message_size: None,
        }
    }
}

/// The emulator's entities.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The namespace name (informational).
    pub namespace: String,
    /// Queues.
    pub queues: Vec<QueueConfig>,
    /// Topics.
    pub topics: Vec<TopicConfig>,
    /// The shared access policies of `SharedAccessPolicies` (our addition to the schema); `None`
    /// when the file names none, and the emulator's keys come from elsewhere.
    pub keys: Option<Keys>,
    /// Things in the file that load but are not implemented, one sentence each.
    pub warnings: Vec<String>,
}

impl Default for Config {
    /// The demo's queues: `orders`, `payments`, `review`.
    fn default() -> Self {
        let queue = |name: &str| QueueConfig { name: name.into(), properties: QueueProperties::default() };
        Self {
            namespace: "sbemulatorns".into(),
            queues: vec![queue("orders"), queue("payments"), queue("review")],
            topics: Vec::new(),
            keys: None,
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a `Config.json` file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `Config.json` text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            let key = e.path().to_string();
            ConfigError::Invalid {
                path: origin.into(),
                line: inner.line(),
                column: inner.column(),
                key: if key == "." { "(top level)".into() } else { key },
                message: strip_position(&inner.to_string()),
            }
        })?;
        file.into_config(origin)
    }
}

/// serde_json appends " at line L column C"; we report the position separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct File {
    user_config: UserConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserConfig {
    namespaces: Vec<Namespace>,
    #[serde(default)]
    logging: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Namespace {
    name: String,
    #[serde(default)]
    queues: Vec<Queue>,
    #[serde(default)]
    topics: Vec<Topic>,
    /// Not in Microsoft's schema: keys and their rights.
    #[serde(default)]
    shared_access_policies: Vec<Policy>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// `{"Name": "sender", "Key": "…", "Rights": ["Send"]}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Policy {
    name: String,
    key: String,
    rights: PolicyRights,
}

struct PolicyRights(Rights);

impl<'de> Deserialize<'de> for PolicyRights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let words = Vec::<String>::deserialize(d)?;
        if words.is_empty() {
            return Err(serde::de::Error::custom("Rights is empty: list Manage, Send or Listen"));
        }
        Rights::parse(&words.join(",")).map(PolicyRights).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Queue {
    name: EntityName,
    #[serde(default)]
    properties: Properties,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Topic {
    name: EntityName,
    #[serde(default)]
    properties: Properties,
    subscriptions: Vec<Subscription>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Subscription {
    name: EntityName,
    #[serde(default)]
    properties: Properties,
    #[serde(default)]
    rules: Vec<rules::Rule>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Properties {
    lock_duration: Option<LockDuration>,
    max_delivery_count: Option<MaxDeliveryCount>,
    max_size_in_megabytes: Option<MaxSizeInMegabytes>,
    /// Not in Microsoft's schema (its emulator is Standard-sized); the service's Premium property.
    max_message_size_in_kilobytes: Option<MaxMessageSizeInKilobytes>,
    default_message_time_to_live: Option<IsoDuration>,
    dead_lettering_on_message_expiration: Option<bool>,
    requires_session: Option<bool>,
    requires_duplicate_detection: Option<bool>,
    duplicate_detection_history_time_window: Option<DuplicateWindow>,
    forward_to: Option<String>,
    forward_dead_lettered_messages_to: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// An entity name, checked against the service's rules.
struct EntityName(String);

impl<'de> Deserialize<'de> for EntityName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        check_entity_name(&name).map_err(serde::de::Error::custom)?;
        Ok(Self(name))
    }
}

/// Refuses a queue, topic or subscription name the service refuses.
pub(crate) fn check_entity_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    let edges_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 260 || !name.chars().all(ok_char) || !edges_ok {
        return Err(format!(
            "invalid entity name {name:?}: use letters, digits, '_', '-', '.' and '/', \
             starting and ending with a letter or digit, at most 260 characters"
        ));
    }
    Ok(())
}

/// A whole number in `range`; the error names `key` and the range.
fn bounded<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, D::Error> {
    let n = i64::deserialize(d)?;
    match u64::try_from(n) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!("{key} must be from {} to {}, got {n}", range.start(), range.end()))),
    }
}

/// `MaxDeliveryCount`: at least 1.
struct MaxDeliveryCount(u32);

impl<'de> Deserialize<'de> for MaxDeliveryCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = bounded(d, "MaxDeliveryCount", 1..=u64::from(u32::MAX))?;
        Ok(Self(n as u32))
    }
}

/// `LockDuration`: at most 5 minutes, as the service allows.
struct LockDuration(Duration);

/// The longest lock the service gives.
pub const MAX_LOCK_DURATION: Duration = Duration::from_secs(300);

impl<'de> Deserialize<'de> for LockDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let range = Duration::ZERO..=MAX_LOCK_DURATION;
        bounded_duration(d, "LockDuration", range, "at most PT5M (5 minutes), as on Service Bus").map(Self)
    }
}

/// An ISO 8601 duration in `range`; the error names `key` and says `allowed`.
fn bounded_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &str,
    range: std::ops::RangeInclusive<Duration>,
    allowed: &str,
) -> Result<Duration, D::Error> {
    let IsoDuration(duration) = IsoDuration::deserialize(d)?;
    if !range.contains(&duration) {
        return Err(serde::de::Error::custom(format!("{key} is {allowed}; got {duration:?}")));
    }
    Ok(duration)
}

/// `MaxSizeInMegabytes`: 1 to 81920 (the largest a Premium entity has).
struct MaxSizeInMegabytes(u64);

impl<'de> Deserialize<'de> for MaxSizeInMegabytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, "MaxSizeInMegabytes", 1..=81_920).map(Self)
    }
}

/// `DuplicateDetectionHistoryTimeWindow`: from 5 seconds (the floor of Microsoft's emulator;
/// the service's is 20 seconds) to 7 days (the service's ceiling).
struct DuplicateWindow(Duration);

/// The shortest duplicate-detection window accepted.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(5);
/// The longest duplicate-detection window the service allows.
const MAX_DUPLICATE_WINDOW: Duration = Duration::from_secs(7 * 86_400);

impl<'de> Deserialize<'de> for DuplicateWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let range = MIN_DUPLICATE_WINDOW..=MAX_DUPLICATE_WINDOW;
        bounded_duration(d, "DuplicateDetectionHistoryTimeWindow", range, "from PT5S to P7D").map(Self)
    }
}

/// `MaxMessageSizeInKilobytes`: 1 to 102400 (100 MB, the largest a Premium entity takes).
struct MaxMessageSizeInKilobytes(u64);

impl<'de> Deserialize<'de> for MaxMessageSizeInKilobytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, "MaxMessageSizeInKilobytes", 1..=102_400).map(Self)
    }
}

/// The longest duration the service's `TimeSpan` holds: about 10,675,199 days.
const MAX_TIMESPAN: Duration = Duration::from_secs(10_675_199 * 86_400);

/// An ISO 8601 duration such as `PT1M`, `PT30S`, `P1D`, `PT0.5S`.
struct IsoDuration(Duration);

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_iso_duration(&text).map(IsoDuration).map_err(serde::de::Error::custom)
    }
}

/// Parses an ISO 8601 duration (`P[nD][T[nH][nM][n[.f]S]]`).
pub fn parse_iso_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: use ISO 8601, e.g. \"PT30S\", \"PT1M\", \"PT1H\" or \"P1D\"");
    let rest = text.strip_prefix('P').ok_or_else(bad)?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
        let mut number = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let factor = loop {
                match allowed.next() {
                    Some((u, f)) if *u == c => break *f,
                    Some(_) => continue,
                    None => return Err(bad()),
                }
            };
            let n: f64 = number.parse().map_err(|_| bad())?;
            total += n * factor;
            number.clear();
            any = true;
        }
        if number.is_empty() { Ok(()) } else { Err(bad()) }
    };
    take(days, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return Err(bad());
        }
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    if !any {
        return Err(bad());
    }
    match Duration::try_from_secs_f64(total) {
        Ok(d) if d <= MAX_TIMESPAN => Ok(d),
        _ => Err(format!("duration {text:?} is longer than the longest the service allows (P10675199D)")),
    }
}

impl File {
    fn into_config(self, origin: &str) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let user = self.user_config;
        unknown(&mut warnings, "UserConfig", &user.other);
        let _ = user.logging; // Logging is configured with --log-level / RUST_LOG instead.
        let mut namespaces = user.namespaces.into_iter();
        let Some(ns) = namespaces.next() else {
            return Err(ConfigError::Entities {
                path: origin.into(),
                message: "UserConfig.Namespaces is empty: add one namespace with its Queues and Topics".into(),
            });
        };
        if namespaces.next().is_some() {
            warnings.push("UserConfig.Namespaces has more than one namespace; only the first is served".into());
        }
        unknown(&mut warnings, "Namespace", &ns.other);
        let mut keys = None;
        for p in ns.shared_access_policies {
            if p.name.is_empty() || p.key.is_empty() {
                return Err(ConfigError::Entities {
                    path: origin.into(),
                    message: "a SharedAccessPolicies entry has an empty Name or Key".into(),
                });
            }
            keys = Some(keys.unwrap_or_else(Keys::empty).with_rights(p.name, p.key, p.rights.0));
        }
        let mut config =
            Config { namespace: ns.name, queues: Vec::new(), topics: Vec::new(), keys, warnings: Vec::new() };
        let mut seen = std::collections::HashMap::new();
        let mut check_unique = |name: &str| -> Result<(), ConfigError> {
            if seen.insert(name.to_ascii_lowercase(), name.to_string()).is_some() {
                return Err(ConfigError::Entities {
                    path: origin.into(),
                    message: format!("entity name {name:?} is used twice (names are case-insensitive)"),
                });
            }
            Ok(())
        };
        let invalid = |message: String| ConfigError::Entities { path: origin.into(), message };
        for q in ns.queues {
            check_unique(&q.name.0)?;
            let what = format!("queue {:?}", q.name.0);
            unknown(&mut warnings, &what, &q.other);
            q.properties.check_keys(&what, Kind::Queue).map_err(invalid)?;
            let properties = q.properties.resolve(&what, &mut warnings);
            config.queues.push(QueueConfig { name: q.name.0, properties });
        }
        for t in ns.topics {
            check_unique(&t.name.0)?;
            let what = format!("topic {:?}", t.name.0);
            unknown(&mut warnings, &what, &t.other);
            t.properties.check_keys(&what, Kind::Topic).map_err(invalid)?;
            let properties = TopicProperties::from(t.properties.resolve(&what, &mut warnings));
            let mut subscriptions = Vec::new();
            let mut topic_rules = BTreeMap::new();
            let mut sub_names = std::collections::HashSet::new();
            for s in t.subscriptions {
                let what = format!("subscription {:?} of topic {:?}", s.name.0, t.name.0);
                if !sub_names.insert(s.name.0.to_ascii_lowercase()) {
                    return Err(invalid(format!("{what} is listed twice")));
                }
                unknown(&mut warnings, &what, &s.other);
                s.properties.check_keys(&what, Kind::Subscription).map_err(invalid)?;
                let mut rules = Vec::new();
                for rule in s.rules {
                    let rule = rule.resolve(&what, &mut warnings).map_err(invalid)?;
                    if rules.iter().any(|r: &RuleConfig| r.name.eq_ignore_ascii_case(&rule.name)) {
                        return Err(invalid(format!("{what}: the rule {:?} is listed twice", rule.name)));
                    }
                    rules.push(rule);
                }
                if !rules.is_empty() {
                    topic_rules.insert(s.name.0.clone(), rules);
                }
                let properties = properties.bound(s.properties.resolve(&what, &mut warnings));
                subscriptions.push(QueueConfig { name: s.name.0, properties });
            }
            config.topics.push(TopicConfig { name: t.name.0, properties, subscriptions, rules: topic_rules });
        }
        config.resolve_forwarding(&seen).map_err(invalid)?;
        config.warnings = warnings;
        Ok(config)
    }
}

impl Config {
    /// Checks every `ForwardTo` and `ForwardDeadLetteredMessagesTo` against the namespace's
    /// queues and topics (`names`, by lowercase name), and spells each as its target is named.
    fn resolve_forwarding(&mut self, names: &std::collections::HashMap<String, String>) -> Result<(), String> {
        let queues = self.queues.iter_mut().map(|q| (format!("queue {:?}", q.name), Some(&q.name), &mut q.properties));
        let subscriptions = self.topics.iter_mut().flat_map(|t| {
            let topic = &t.name;
            t.subscriptions
                .iter_mut()
                .map(move |s| (format!("subscription {:?} of topic {topic:?}", s.name), None, &mut s.properties))
        });
        for (what, own_name, properties) in queues.chain(subscriptions) {
            for (key, value) in [
                ("ForwardTo", &mut properties.forward_to),
                ("ForwardDeadLetteredMessagesTo", &mut properties.forward_dead_lettered_messages_to),
            ] {
                let Some(target) = value.as_deref() else { continue };
                let Some(name) = names.get(&crate::auth::normalize(target)) else {
                    return Err(format!(
                        "{what}: {key} {target:?} names no queue or topic of this namespace; \
                         add the target to Queues or Topics, or correct the name"
                    ));
                };
                if key == "ForwardTo" && own_name.is_some_and(|own| own.eq_ignore_ascii_case(name)) {
                    return Err(format!("{what}: ForwardTo names the queue itself; a queue cannot forward to itself"));
                }
                *value = Some(name.clone());
            }
        }
        Ok(())
    }
}

/// Settings given some other way than `Config.json` (the administration API), under the same
/// keys: checked as `Config.json`'s are, with the same errors. Keys outside the schema are
/// the caller's to have left out. Forwarding targets are as given (the namespace checks them).
pub(crate) fn entity_properties(kind: Kind, what: &str, json: serde_json::Value) -> Result<QueueProperties, String> {
    let properties: Properties = serde_path_to_error::deserialize(json)
        .map_err(|e| format!("{what}: {}: {}", e.path(), strip_position(&e.inner().to_string())))?;
    properties.check_keys(what, kind)?;
    Ok(properties.resolve(what, &mut Vec::new()))
}

/// A topic's settings, given some other way than `Config.json` ([`entity_properties`]).
pub(crate) fn topic_properties(what: &str, json: serde_json::Value) -> Result<TopicProperties, String> {
    entity_properties(Kind::Topic, what, json).map(TopicProperties::from)
}

/// A subscription's rule given some other way than `Config.json` (the data directory), as an
/// entry of `Rules`: checked as `Config.json`'s are.
pub(crate) fn rule(what: &str, json: serde_json::Value) -> Result<RuleConfig, String> {
    let rule: rules::Rule = serde_path_to_error::deserialize(json)
        .map_err(|e| format!("{what}: {}: {}", e.path(), strip_position(&e.inner().to_string())))?;
    rule.resolve(what, &mut Vec::new())
}

/// What kind of entity a `Properties` block belongs to: each may set only its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Queue,
    Topic,
    Subscription,
}

impl Properties {
    /// The keys this block sets. An empty `ForwardTo` sets nothing, as Microsoft's sample has it.
    fn keys_set(&self) -> Vec<&'static str> {
        let forwards = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        [
            ("LockDuration", self.lock_duration.is_some()),
            ("MaxDeliveryCount", self.max_delivery_count.is_some()),
            ("MaxSizeInMegabytes", self.max_size_in_megabytes.is_some()),
            ("MaxMessageSizeInKilobytes", self.max_message_size_in_kilobytes.is_some()),
            ("DefaultMessageTimeToLive", self.default_message_time_to_live.is_some()),
            ("DeadLetteringOnMessageExpiration", self.dead_lettering_on_message_expiration.is_some()),
            ("RequiresSession", self.requires_session.is_some()),
            ("RequiresDuplicateDetection", self.requires_duplicate_detection.is_some()),
            ("DuplicateDetectionHistoryTimeWindow", self.duplicate_detection_history_time_window.is_some()),
            ("ForwardTo", forwards(&self.forward_to)),
            ("ForwardDeadLetteredMessagesTo", forwards(&self.forward_dead_lettered_messages_to)),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// Refuses a key the service does not have on this kind of entity.
    fn check_keys(&self, what: &str, kind: Kind) -> Result<(), String> {
        const TOPIC: [&str; 5] = [
            "DefaultMessageTimeToLive",
            "DuplicateDetectionHistoryTimeWindow",
            "MaxMessageSizeInKilobytes",
            "MaxSizeInMegabytes",
            "RequiresDuplicateDetection",
        ];
        const NOT_SUBSCRIPTION: [&str; 4] = [
            "DuplicateDetectionHistoryTimeWindow",
            "MaxMessageSizeInKilobytes",
            "MaxSizeInMegabytes",
            "RequiresDuplicateDetection",
        ];
        for key in self.keys_set() {
            match kind {
                Kind::Topic if !TOPIC.contains(&key) => {
                    return Err(format!(
                        "{what}: a topic has no {key}; set it on the topic's subscriptions (a topic's own \
                         properties are {})",
                        TOPIC.join(", ")
                    ));
                }
                Kind::Subscription if NOT_SUBSCRIPTION.contains(&key) => {
                    return Err(format!("{what}: a subscription has no {key}; set it on the subscription's topic"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn resolve(self, what: &str, warnings: &mut Vec<String>) -> QueueProperties {
        let d = QueueProperties::default();
        unknown(warnings, what, &self.other);
        let target = |v: Option<String>| v.filter(|v| !v.is_empty());
        QueueProperties {
            lock_duration: self.lock_duration.map_or(d.lock_duration, |x| x.0),
            max_size_megabytes: self.max_size_in_megabytes.map_or(d.max_size_megabytes, |x| x.0),
            max_delivery_count: self.max_delivery_count.map_or(d.max_delivery_count, |x| x.0),
            default_message_ttl: self.default_message_time_to_live.map(|x| x.0),
            dead_lettering_on_message_expiration: self
                .dead_lettering_on_message_expiration
                .unwrap_or(d.dead_lettering_on_message_expiration),
            requires_session: self.requires_session.unwrap_or(d.requires_session),
            duplicate_detection_window: (self.requires_duplicate_detection == Some(true)).then(|| {
                self.duplicate_detection_history_time_window.map_or(DEFAULT_DUPLICATE_DETECTION_WINDOW, |w| w.0)
            }),
            max_message_size: self.max_message_size_in_kilobytes.map(|k| k.0 as usize * 1024),
            forward_to: target(self.forward_to),
            forward_dead_lettered_messages_to: target(self.forward_dead_lettered_messages_to),
        }
    }
}

fn unknown(warnings: &mut Vec<String>, what: &str, other: &BTreeMap<String, serde_json::Value>) {
    for key in other.keys() {
        warnings.push(format!("{what}: unknown key {key:?} is ignored"));
    }
}

#[cfg(test)]
mod tests;
