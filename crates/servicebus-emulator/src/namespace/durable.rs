//! The entities the administration API made, kept in the data directory (`--data-dir`), so
//! that the namespace comes back as it was left.
//!
//! - `Config.json` makes its entities at every start, as written there. Changes the API makes
//!   to them last until the emulator stops; to keep one, change the file.
//! - An entity the API made (a queue, a topic, a subscription, also of a topic of the file)
//!   is kept as it was last changed, with its rules, until the API deletes it. Its record is
//!   `Config.json`'s schema as JSON ([`crate::config::properties_json`]), read back through
//!   the same checks as the file.
//! - A record of a name `Config.json` now has is dropped at start: the file wins.
//!
//! Every change runs under [`Namespace::changing`], so records are written in the order the
//! changes were made; whoever acknowledges one waits for it to be durable.

use std::sync::MutexGuard;

use serde::{Deserialize, Serialize};

use super::{EntityError, Namespace, Topic, subscription_path};
use crate::auth::normalize;
use crate::config::{self, Kind};
use crate::queue::Queue;
use crate::rules::{Rule, RuleSet};
use crate::storage::{Change, Space, StorageError};

/// An entity as the data directory keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Record {
    kind: RecordKind,
    /// Its own name, as it was made.
    name: String,
    /// A subscription's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    /// Its `Properties` block.
    properties: serde_json::Value,
    /// A subscription's rules, in order (none at all is kept as none: not `$Default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum RecordKind {
    // In the order they are made back: a subscription needs its topic.
    Topic,
    Queue,
    Subscription,
}

impl Record {
    fn of_queue(queue: &Queue) -> Self {
        let rules = queue.rules().map(|r| r.list().iter().map(config::rule_json).collect());
        let (kind, properties_kind, topic, name) = match queue.name().split_once("/Subscriptions/") {
            Some((topic, name)) => (RecordKind::Subscription, Kind::Subscription, Some(topic), name),
            None => (RecordKind::Queue, Kind::Queue, None, queue.name()),
        };
        Self {
            kind,
            name: name.to_string(),
            topic: topic.map(str::to_string),
            properties: config::properties_json(&queue.props(), properties_kind),
            rules,
        }
    }

    fn of_topic(topic: &Topic) -> Self {
        Self {
            kind: RecordKind::Topic,
            name: topic.name().to_string(),
            topic: None,
            properties: config::topic_properties_json(&topic.props()),
            rules: None,
        }
    }

    /// The entity's path as addresses resolve it (lowercase), its key in the store.
    fn path(&self) -> String {
        match &self.topic {
            Some(topic) => normalize(&subscription_path(topic, &self.name)),
            None => normalize(&self.name),
        }
    }
}

impl Namespace {
    /// Held while an entity is made, changed or deleted, and its record written.
    pub(super) fn changing(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the record of a queue or subscription the API made (nothing for one of the file's).
    pub(super) fn keep_queue(&self, queue: &Queue) {
        self.keep(Record::of_queue(queue));
    }

    /// Writes the record of a topic the API made.
    pub(super) fn keep_topic(&self, topic: &Topic) {
        self.keep(Record::of_topic(topic));
    }

    fn keep(&self, record: Record) {
        let Some(storage) = &self.storage else { return };
        let path = record.path();
        if self.from_config.contains(&path) {
            return;
        }
        let value = serde_json::to_vec(&record).expect("a record is JSON");
        storage.submit(vec![Change::set(Space::Entities, path.into_bytes(), value, false)]);
    }

    /// Before the API makes an entity at `path`: whatever an earlier entity of that name left
    /// in the store is removed, so the new one starts empty and its sequence numbers meet none.
    pub(super) fn clear_leftovers(&self, path: &str) {
        if let Some(storage) = &self.storage {
            crate::queue::Journal::clear(storage, path);
        }
    }

    /// Drops the record of the entity at `path`, and of a topic's subscriptions.
    pub(super) fn forget(&self, path: &str) {
        let Some(storage) = &self.storage else { return };
        let path = normalize(path);
        let subscriptions = format!("{path}/subscriptions/").into_bytes();
        storage.submit(vec![
            Change::remove(Space::Entities, path.into_bytes()),
            Change::remove_prefix(Space::Entities, subscriptions),
        ]);
    }

    /// Changes a subscription's rules with `change`, and keeps what it did.
    pub(crate) fn change_rules<R>(&self, subscription: &Queue, change: impl FnOnce(&RuleSet) -> R) -> R {
        let _changing = self.changing();
        let rules = subscription.rules().expect("only a subscription's rules are changed");
        let result = change(rules);
        self.keep_queue(subscription);
        result
    }

    /// Makes again the entities the API made (as the emulator starts, before their messages
    /// are restored). Returns how many.
    pub(crate) fn restore_entities(&self, contents: &crate::storage::Contents) -> Result<usize, StorageError> {
        let Some(storage) = &self.storage else { return Ok(0) };
        let corrupt = |key: &[u8], detail: String| StorageError::Corrupt {
            dir: storage.dir().to_path_buf(),
            what: format!("the entity {}", String::from_utf8_lossy(key)),
            detail,
        };
        let mut records = Vec::new();
        for (key, value) in contents.space(Space::Entities) {
            let record: Record = serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))?;
            if record.path().as_bytes() != key.as_slice() {
                return Err(corrupt(key, format!("its record names {}", record.path())));
            }
            if self.from_config.contains(&record.path()) {
                tracing::info!(
                    entity = record.path(),
                    "Config.json has this entity, so it is made as the file says; the administration API's \
                     record of it is dropped"
                );
                storage.submit(vec![Change::remove(Space::Entities, key.clone())]);
                continue;
            }
            records.push(record);
        }
        records.sort_by_key(|r| r.kind);
        let mut topics = 0;
        let mut made = Vec::new();
        for record in records {
            let key = record.path();
            let what = format!("the data directory's record of {key}");
            let bad = |e: String| corrupt(key.as_bytes(), e);
            let kind = match record.kind {
                RecordKind::Topic => {
                    let properties = config::topic_properties(&what, record.properties).map_err(bad)?;
                    self.add_topic(&record.name, properties).map_err(|e| bad(e.to_string()))?;
                    topics += 1;
                    continue;
                }
                RecordKind::Queue => Kind::Queue,
                RecordKind::Subscription => Kind::Subscription,
            };
            let properties = config::entity_properties(kind, &what, record.properties).map_err(bad)?;
            let queue = match &record.topic {
                None => self.add_queue(&record.name, properties.clone()),
                Some(topic) => match self.add_subscription(topic, &record.name, properties.clone(), Vec::new()) {
                    Err(EntityError::NotFound(_)) => {
                        tracing::warn!(
                            entity = key,
                            "the data directory holds a subscription of a topic this namespace does not have; it \
                             is kept there, unmade, until a topic of that name exists again"
                        );
                        continue;
                    }
                    made => made,
                },
            }
            .map_err(|e| bad(e.to_string()))?;
            if let (Some(set), Some(rules)) = (queue.rules(), record.rules) {
                let rules = rules
                    .into_iter()
                    .map(|r| config::rule(&what, r).and_then(|r| Rule::compile(r).map_err(|e| e.to_string())))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                set.replace(rules);
            }
            made.push((queue, properties));
        }
        // Forwarding last: a target may be made after its source.
        for (queue, properties) in &made {
            self.restore_routes(queue, properties);
        }
        Ok(topics + made.len())
    }
}
