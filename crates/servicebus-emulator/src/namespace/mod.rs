//! The namespace: its entities, and how link addresses resolve to them.
//!
//! The entities are made from the configuration when the emulator starts, and made, changed
//! and deleted while it runs ([`entities`]: the administration API's operations). With a data
//! directory, those the API made are kept there and made again at start ([`durable`]). A
//! deleted entity is marked so: the links that hold it are detached at their connection's next
//! tick.

mod durable;
mod entities;

pub(crate) use entities::EntityError;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::Instant;

use crate::auth::normalize;
use crate::config::{Config, TopicProperties};
use crate::message::StoredMessage;
use crate::queue::{Duplicates, Inbox, Memory, Queue, QueueCounts, QuotaExceeded, Refused, SessionIdMissing, Target};
use crate::rules::MessageView;
use crate::storage::{Group, Storage, StorageError};

/// What [`Namespace::restore`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Entities the administration API had made, made again.
    pub(crate) made: usize,
    /// Entities that had messages or state.
    pub(crate) entities: usize,
    pub(crate) messages: usize,
    /// Messages of entities the namespace does not have.
    pub(crate) orphaned: usize,
}

/// A topic: a message sent to it is copied to each subscription whose rules match.
#[derive(Debug)]
pub(crate) struct Topic {
    name: String,
    /// By lowercase name.
    subscriptions: RwLock<HashMap<String, Arc<Queue>>>,
    /// The message-ids sent inside the window, when the topic detects duplicates.
    duplicates: Option<Mutex<Duplicates>>,
    properties: RwLock<TopicProperties>,
    deleted: AtomicBool,
    /// When it was made, and last changed (ms since the epoch).
    created_ms: i64,
    updated_ms: std::sync::atomic::AtomicI64,
}

/// Where a sender's messages go.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl Topic {
    fn new(name: &str, properties: &TopicProperties) -> Self {
        let duplicates = properties.duplicate_detection_window.map(|w| Mutex::new(Duplicates::new(w)));
        let now = crate::message::now_ms();
        Self {
            name: name.to_string(),
            subscriptions: RwLock::new(HashMap::new()),
            duplicates,
            properties: RwLock::new(properties.clone()),
            deleted: AtomicBool::new(false),
            created_ms: now,
            updated_ms: std::sync::atomic::AtomicI64::new(now),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its subscriptions now.
    pub(crate) fn subscriptions(&self) -> Vec<Arc<Queue>> {
        self.subscriptions.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// One subscription, by name (case-insensitive).
    pub(crate) fn subscription(&self, name: &str) -> Option<Arc<Queue>> {
        self.subscriptions.read().unwrap_or_else(|p| p.into_inner()).get(&name.to_ascii_lowercase()).cloned()
    }

    /// Its settings now.
    pub(crate) fn props(&self) -> TopicProperties {
        self.properties.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// When it was made and last changed (ms since the epoch).
    pub(crate) fn times_ms(&self) -> (i64, i64) {
        (self.created_ms, self.updated_ms.load(Ordering::Acquire))
    }

    fn requires_session(&self) -> bool {
        self.subscriptions().iter().any(|s| s.requires_session())
    }

    /// Refuses `bytes` more if any subscription would pass its `MaxSizeInMegabytes`.
    fn check_room(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        self.subscriptions().iter().try_for_each(|sub| sub.check_room(bytes))
    }

    /// Copies messages to the subscriptions whose rules match, after dropping duplicates.
    /// Returns the sequence numbers of the subscription that took the most copies (all of
    /// them, when a subscription takes every message). A send that would pass a
    /// subscription's `MaxSizeInMegabytes` is refused whole, as the service refuses a send
    /// to a topic whose subscription is full; refused, the messages are handed back.
    fn enqueue(&self, messages: Vec<StoredMessage>) -> Result<Vec<i64>, (QuotaExceeded, Vec<StoredMessage>)> {
        // With a store, every subscription's copy is committed together, or none is.
        let _group = Group::open();
        let messages = match &self.duplicates {
            Some(d) => {
                let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let messages = d.unseen(messages, now);
                if let Err(e) = self.check_room(StoredMessage::total_size(&messages)) {
                    return Err((e, messages));
                }
                d.record(&messages, now);
                messages
            }
            None => match self.check_room(StoredMessage::total_size(&messages)) {
                Ok(()) => messages,
                Err(e) => return Err((e, messages)),
            },
        };
        let mut seqs = Vec::new();
        let views: Vec<MessageView> = messages.iter().map(|_| MessageView::default()).collect();
        for sub in self.subscriptions() {
            let copies: Vec<StoredMessage> = match sub.rules() {
                Some(rules) => messages.iter().zip(&views).flat_map(|(m, v)| rules.route(m, v)).collect(),
                None => messages.clone(),
            };
            if copies.is_empty() {
                continue;
            }
            // Checked just above; a subscription filled by a concurrent send in between
            // misses this message, as the log says.
            match sub.enqueue(copies) {
                Ok(s) if s.len() > seqs.len() => seqs = s,
                Ok(_) => {}
                Err(e) => tracing::warn!("a topic message missed a subscription: {e}"),
            }
        }
        Ok(seqs)
    }
}

impl Inbox for Topic {
    fn accept(&self, messages: Vec<StoredMessage>) -> Result<(), (Refused, Vec<StoredMessage>)> {
        if self.is_deleted() {
            return Err((Refused::Gone(self.name.clone()), messages));
        }
        if self.requires_session() && messages.iter().any(|m| m.session_id.is_none()) {
            return Err((SessionIdMissing { entity: self.name.clone() }.into(), messages));
        }
        self.enqueue(messages).map(drop).map_err(|(e, back)| (e.into(), back))
    }
}

impl Destination {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Queue(q) => q.name(),
            Self::Topic(t) => t.name(),
        }
    }

    /// The largest message a sender may send here, if the entity sets one.
    pub(crate) fn max_message_size(&self) -> Option<usize> {
        match self {
            Self::Queue(q) => q.max_message_size(),
            Self::Topic(t) => t.props().max_message_size,
        }
    }

    /// Whether the entity was deleted (its links are detached).
    pub(crate) fn is_deleted(&self) -> bool {
        match self {
            Self::Queue(q) => q.is_deleted(),
            Self::Topic(t) => t.is_deleted(),
        }
    }

    /// Refuses messages this entity takes from no one: ones without a session id, when it (or,
    /// for a topic, one of its subscriptions) requires sessions.
    pub(crate) fn check_messages(&self, messages: &[StoredMessage]) -> Result<(), SessionIdMissing> {
        let requires_session = match self {
            Self::Queue(q) => q.requires_session(),
            Self::Topic(t) => t.requires_session(),
        };
        if requires_session && messages.iter().any(|m| m.session_id.is_none()) {
            return Err(SessionIdMissing { entity: self.name().to_string() });
        }
        Ok(())
    }

    /// Refuses `bytes` more if they would pass `MaxSizeInMegabytes` (of any subscription, for topics).
    pub(crate) fn check_room(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        match self {
            Self::Queue(q) => q.check_room(bytes),
            Self::Topic(t) => t.check_room(bytes),
        }
    }

    /// Enqueues atomically; returns the sequence numbers (of one subscription, for topics).
    /// A send that would pass an entity's `MaxSizeInMegabytes` is refused whole.
    pub(crate) fn enqueue(&self, messages: Vec<StoredMessage>) -> Result<Vec<i64>, QuotaExceeded> {
        match self {
            Self::Queue(q) => q.enqueue(messages),
            Self::Topic(t) => t.enqueue(messages).map_err(|(e, _)| e),
        }
    }
}

/// What a link address names.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// `$cbs`.
    Cbs,
    /// `<entity>/$management`.
    Management(Arc<Queue>),
    /// A queue, subscription, or dead-letter queue (receive; queues also send).
    Queue(Arc<Queue>),
    /// A topic (send only).
    Topic(Arc<Topic>),
}

/// The path of `topic`'s subscription `name` (`topic/Subscriptions/name`).
pub(crate) fn subscription_path(topic: &str, name: &str) -> String {
    format!("{topic}/Subscriptions/{name}")
}

/// An address that names nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("The messaging entity '{0}' could not be found.")]
pub(crate) struct NotFound(pub(crate) String);

/// The entities of the emulator.
#[derive(Debug)]
pub(crate) struct Namespace {
    name: String,
    entities: RwLock<Entities>,
    timers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What every entity's messages take, together.
    memory: Arc<Memory>,
    /// Where every entity records its changes, with `--data-dir`.
    storage: Option<Arc<Storage>>,
    /// The paths of `Config.json`'s entities (lowercase): the data directory keeps the others.
    from_config: std::collections::HashSet<String>,
    /// Held while an entity is made, changed or deleted ([`durable`]).
    changing: Mutex<()>,
    /// When it was made (ms since the epoch).
    created_ms: i64,
}

/// Queues and topics, by lowercase name (one name space for both).
#[derive(Debug, Default)]
struct Entities {
    queues: HashMap<String, Arc<Queue>>,
    topics: HashMap<String, Arc<Topic>>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for t in self.timers.get_mut().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

impl Namespace {
    /// Creates the entities and starts their timers (needs a Tokio runtime). Together they
    /// hold at most `max_memory` bytes of messages. A configuration loaded from a file was
    /// checked already; one built in code is checked here (names, rules, forwarding targets).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn new(config: &Config, max_memory: u64) -> Result<Self, EntityError> {
        Self::with_storage(config, max_memory, None)
    }

    /// [`Self::new`], with every entity recording its changes in `storage`.
    pub(crate) fn with_storage(
        config: &Config,
        max_memory: u64,
        storage: Option<Arc<Storage>>,
    ) -> Result<Self, EntityError> {
        let ns = Self {
            name: config.namespace.clone(),
            entities: RwLock::new(Entities::default()),
            timers: Mutex::new(Vec::new()),
            memory: Arc::new(Memory::new(max_memory)),
            storage,
            from_config: config
                .queues
                .iter()
                .map(|q| normalize(&q.name))
                .chain(config.topics.iter().flat_map(|t| {
                    let subscriptions = t.subscriptions.iter().map(|s| normalize(&subscription_path(&t.name, &s.name)));
                    std::iter::once(normalize(&t.name)).chain(subscriptions)
                }))
                .collect(),
            changing: Mutex::new(()),
            created_ms: crate::message::now_ms(),
        };
        // Every entity first, then their forwarding links: a target may come later in the file.
        for q in &config.queues {
            ns.add_queue(&q.name, q.properties.clone())?;
        }
        for t in &config.topics {
            ns.add_topic(&t.name, t.properties.clone())?;
            for s in &t.subscriptions {
                let rules = t.rules.get(&s.name).cloned().unwrap_or_default();
                ns.add_subscription(&t.name, &s.name, s.properties.clone(), rules)?;
            }
        }
        let subscriptions = config.topics.iter().flat_map(|t| t.subscriptions.iter().map(move |s| (Some(t), s)));
        for (topic, q) in config.queues.iter().map(|q| (None, q)).chain(subscriptions) {
            let path = match topic {
                Some(t) => format!("{}/subscriptions/{}", t.name, q.name),
                None => q.name.clone(),
            };
            if let Ok((Node::Queue(source), _)) = ns.resolve(&path) {
                ns.link_routes(&source, &q.properties)?;
            }
        }
        Ok(ns)
    }

    fn entities(&self) -> std::sync::RwLockReadGuard<'_, Entities> {
        self.entities.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A queue or topic, as a forwarding target.
    fn inbox(&self, name: &str) -> Option<Target> {
        let key = normalize(name);
        let entities = self.entities();
        let (name, inbox): (&str, Arc<dyn Inbox>) = match (entities.queues.get(&key), entities.topics.get(&key)) {
            (Some(q), _) => (q.name(), q.clone()),
            (None, Some(t)) => (t.name(), t.clone()),
            (None, None) => return None,
        };
        Some(Target::new(name, &inbox))
    }

    fn start_timers(&self, queue: &Arc<Queue>) {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        timers.retain(|t| !t.is_finished());
        timers.push(tokio::spawn(queue.clone().run_timer()));
        if let Some(dlq) = queue.dead_letter_queue() {
            timers.push(tokio::spawn(dlq.clone().run_timer()));
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A namespace without entities (for operations tested on entities made alone).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn empty() -> Self {
        Self::new(&Config { queues: Vec::new(), ..Config::default() }, u64::MAX).expect("no entity to refuse")
    }

    /// When it was made (ms since the epoch).
    pub(crate) fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// The bytes the entities' messages take, counted against `--max-memory`.
    pub(crate) fn memory_used(&self) -> u64 {
        self.memory.used()
    }

    /// Resolves a link address (`amqps://host/q`, `/q`, `q/$DeadLetterQueue`, `t/Subscriptions/s`, ...).
    /// Returns the node and the normalized path that authorization is checked against.
    pub(crate) fn resolve(&self, address: &str) -> Result<(Node, String), NotFound> {
        let path = normalize(address);
        if path == "$cbs" {
            return Ok((Node::Cbs, path));
        }
        let not_found = || NotFound(path.clone());
        let (entity_path, management) = match path.strip_suffix("/$management") {
            Some(p) => (p, true),
            None => (path.as_str(), false),
        };
        let (entity_path, dead_letter) = match entity_path.strip_suffix("/$deadletterqueue") {
            Some(p) => (p.strip_suffix("/$transfer").unwrap_or(p), true),
            None => (entity_path, false),
        };
        let entities = self.entities();
        let queue = if let Some(q) = entities.queues.get(entity_path) {
            Some(q.clone())
        } else if let Some((topic, sub)) = entity_path.split_once("/subscriptions/") {
            Some(entities.topics.get(topic).and_then(|t| t.subscription(sub)).ok_or_else(not_found)?)
        } else {
            None
        };
        let node = match (queue, dead_letter, management) {
            (Some(q), true, m) => {
                let dlq = q.dead_letter_queue().cloned().ok_or_else(not_found)?;
                if m { Node::Management(dlq) } else { Node::Queue(dlq) }
            }
            (Some(q), false, true) => Node::Management(q),
            (Some(q), false, false) => Node::Queue(q),
            (None, false, false) => Node::Topic(entities.topics.get(entity_path).cloned().ok_or_else(not_found)?),
            (None, _, _) => return Err(not_found()),
        };
        Ok((node, path))
    }

    /// Makes again the entities the administration API made, and gives each entity what the
    /// store kept of it (as the emulator starts). Records of an entity the namespace no longer
    /// has stay in the store, untouched, and are named in the log.
    pub(crate) fn restore(&self, contents: &crate::storage::Contents) -> Result<Restored, StorageError> {
        let Some(storage) = &self.storage else { return Ok(Restored::default()) };
        let mut restored = Restored { made: self.restore_entities(contents)?, ..Restored::default() };
        for (entity, records) in crate::queue::by_entity(contents, storage.dir())? {
            let kept = records.messages.len();
            match self.resolve(&entity) {
                Ok((Node::Queue(q), _)) => {
                    restored.messages += q.restore(records, storage.dir())?;
                    restored.entities += 1;
                }
                _ => {
                    tracing::warn!(
                        entity,
                        messages = kept,
                        "the data directory holds messages of an entity this namespace does not have; they are kept \
                         there, unread, until an entity of that name exists again"
                    );
                    restored.orphaned += kept;
                }
            }
        }
        Ok(restored)
    }

    pub(crate) fn storage(&self) -> Option<&Arc<Storage>> {
        self.storage.as_ref()
    }

    /// Counts of a queue's (or `topic/Subscriptions/sub`'s) messages.
    pub(crate) fn counts(&self, entity: &str) -> Option<QueueCounts> {
        match self.resolve(entity) {
            Ok((Node::Queue(q), _)) => Some(q.counts()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
