//! Entities and settings, in the schema of Microsoft's emulator `Config.json`.
//!
//! A file written for Microsoft's emulator loads unchanged. Properties we do not
//! implement yet are reported as warnings ([`Config::warnings`]) rather than
//! failures. Errors name the file, the line and the key; a subscription rule that does not
//! parse names its subscription and where it went wrong (`rules`).
//!
//! Size: past 600 lines, half of it tests; the schema and its checks stay in one place.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::auth::{Keys, Rights};

use serde::Deserialize;

use crate::queue::QueueProperties;
use crate::rules::RuleConfig;

mod rules;

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
    /// Its subscriptions.
    pub subscriptions: Vec<QueueConfig>,
    /// The rules of subscriptions, by subscription name; a subscription without any gets
    /// `$Default` (every message).
    pub rules: BTreeMap<String, Vec<RuleConfig>>,
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
    default_message_time_to_live: Option<IsoDuration>,
    dead_lettering_on_message_expiration: Option<bool>,
    requires_session: Option<bool>,
    requires_duplicate_detection: Option<bool>,
    duplicate_detection_history_time_window: Option<IsoDuration>,
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
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
        let edges_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if name.is_empty() || name.len() > 260 || !name.chars().all(ok_char) || !edges_ok {
            return Err(serde::de::Error::custom(format!(
                "invalid entity name {name:?}: use letters, digits, '_', '-', '.' and '/', \
                 starting and ending with a letter or digit, at most 260 characters"
            )));
        }
        Ok(Self(name))
    }
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
        let IsoDuration(duration) = IsoDuration::deserialize(d)?;
        if duration > MAX_LOCK_DURATION {
            return Err(serde::de::Error::custom(format!(
                "LockDuration is at most PT5M (5 minutes), as on Service Bus; got {duration:?}"
            )));
        }
        Ok(Self(duration))
    }
}

/// `MaxSizeInMegabytes`: 1 to 81920 (the largest a Premium entity has).
struct MaxSizeInMegabytes(u64);

impl<'de> Deserialize<'de> for MaxSizeInMegabytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, "MaxSizeInMegabytes", 1..=81_920).map(Self)
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
        let mut seen = std::collections::HashSet::new();
        let mut check_unique = |name: &str| -> Result<(), ConfigError> {
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(ConfigError::Entities {
                    path: origin.into(),
                    message: format!("entity name {name:?} is used twice (names are case-insensitive)"),
                });
            }
            Ok(())
        };
        for q in ns.queues {
            check_unique(&q.name.0)?;
            unknown(&mut warnings, &format!("queue {:?}", q.name.0), &q.other);
            let properties = q.properties.resolve(&format!("queue {:?}", q.name.0), &mut warnings);
            config.queues.push(QueueConfig { name: q.name.0, properties });
        }
        for t in ns.topics {
            check_unique(&t.name.0)?;
            let what = format!("topic {:?}", t.name.0);
            unknown(&mut warnings, &what, &t.other);
            // A subscription holds as much as its topic may: the topic's quota applies to each.
            let topic_max_size = t.properties.resolve(&what, &mut warnings).max_size_megabytes;
            let mut subscriptions = Vec::new();
            let mut topic_rules = BTreeMap::new();
            let mut sub_names = std::collections::HashSet::new();
            for s in t.subscriptions {
                let what = format!("subscription {:?} of topic {:?}", s.name.0, t.name.0);
                if !sub_names.insert(s.name.0.to_ascii_lowercase()) {
                    return Err(ConfigError::Entities {
                        path: origin.into(),
                        message: format!("{what} is listed twice"),
                    });
                }
                unknown(&mut warnings, &what, &s.other);
                let mut rules = Vec::new();
                for rule in s.rules {
                    let rule = rule
                        .resolve(&what, &mut warnings)
                        .map_err(|message| ConfigError::Entities { path: origin.into(), message })?;
                    if rules.iter().any(|r: &RuleConfig| r.name.eq_ignore_ascii_case(&rule.name)) {
                        return Err(ConfigError::Entities {
                            path: origin.into(),
                            message: format!("{what}: the rule {:?} is listed twice", rule.name),
                        });
                    }
                    rules.push(rule);
                }
                if !rules.is_empty() {
                    topic_rules.insert(s.name.0.clone(), rules);
                }
                let properties = QueueProperties {
                    max_size_megabytes: topic_max_size,
                    ..s.properties.resolve(&what, &mut warnings)
                };
                subscriptions.push(QueueConfig { name: s.name.0, properties });
            }
            config.topics.push(TopicConfig { name: t.name.0, subscriptions, rules: topic_rules });
        }
        config.warnings = warnings;
        Ok(config)
    }
}

impl Properties {
    fn resolve(self, what: &str, warnings: &mut Vec<String>) -> QueueProperties {
        let d = QueueProperties::default();
        if self.requires_duplicate_detection == Some(true) {
            warnings.push(format!("{what}: RequiresDuplicateDetection is not implemented yet; duplicates are kept"));
        }
        let _ = self.duplicate_detection_history_time_window;
        for (key, value) in [
            ("ForwardTo", &self.forward_to),
            ("ForwardDeadLetteredMessagesTo", &self.forward_dead_lettered_messages_to),
        ] {
            if value.as_deref().is_some_and(|v| !v.is_empty()) {
                warnings.push(format!("{what}: {key} is not implemented yet; messages stay in the entity"));
            }
        }
        unknown(warnings, what, &self.other);
        QueueProperties {
            lock_duration: self.lock_duration.map_or(d.lock_duration, |x| x.0),
            max_size_megabytes: self.max_size_in_megabytes.map_or(d.max_size_megabytes, |x| x.0),
            max_delivery_count: self.max_delivery_count.map_or(d.max_delivery_count, |x| x.0),
            default_message_ttl: self.default_message_time_to_live.map(|x| x.0),
            dead_lettering_on_message_expiration: self
                .dead_lettering_on_message_expiration
                .unwrap_or(d.dead_lettering_on_message_expiration),
            requires_session: self.requires_session.unwrap_or(d.requires_session),
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
