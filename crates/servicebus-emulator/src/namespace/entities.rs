//! Making, changing and deleting entities while the emulator runs: what the configuration
//! does at start-up, and what the administration API does after.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Namespace, Topic, subscription_path};
use crate::auth::normalize;
use crate::config::TopicProperties;
use crate::queue::{Queue, QueueProperties, Routes, Target};
use crate::rules::{Rule, RuleConfig, RuleError, RuleSet};

/// Why an entity could not be made, changed or deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EntityError {
    /// The name is taken (by a queue or a topic: they share one name space).
    #[error("The messaging entity '{0}' already exists.")]
    AlreadyExists(String),
    #[error("The messaging entity '{0}' could not be found.")]
    NotFound(String),
    /// A forwarding target that is not a queue or topic of the namespace.
    #[error("{key} of '{entity}' names '{target}', which is not a queue or topic of this namespace; create it first")]
    NoSuchTarget { entity: String, key: &'static str, target: String },
    /// A queue forwarding to itself.
    #[error("'{0}' cannot forward to itself")]
    ForwardsToItself(String),
    /// What the service fixes when an entity is made.
    #[error("{key} of '{entity}' cannot be changed after it is created; delete and create it again")]
    Immutable { entity: String, key: &'static str },
    #[error(transparent)]
    Rule(#[from] RuleError),
}

impl Namespace {
    /// Makes a queue (without its forwarding links: [`Self::link_routes`]).
    pub(crate) fn add_queue(&self, name: &str, properties: QueueProperties) -> Result<Arc<Queue>, EntityError> {
        let mut entities = self.entities.write().unwrap_or_else(|p| p.into_inner());
        let key = name.to_ascii_lowercase();
        if entities.queues.contains_key(&key) || entities.topics.contains_key(&key) {
            return Err(EntityError::AlreadyExists(name.to_string()));
        }
        let queue = Queue::build(name, properties, None, self.memory.clone(), self.storage.as_ref());
        entities.queues.insert(key, queue.clone());
        drop(entities);
        self.start_timers(&queue);
        Ok(queue)
    }

    /// Makes a topic, without subscriptions.
    pub(crate) fn add_topic(&self, name: &str, properties: TopicProperties) -> Result<Arc<Topic>, EntityError> {
        let mut entities = self.entities.write().unwrap_or_else(|p| p.into_inner());
        let key = name.to_ascii_lowercase();
        if entities.queues.contains_key(&key) || entities.topics.contains_key(&key) {
            return Err(EntityError::AlreadyExists(name.to_string()));
        }
        let topic = Arc::new(Topic::new(name, &properties));
        entities.topics.insert(key, topic.clone());
        Ok(topic)
    }

    /// Makes a subscription of `topic` with `rules` (none: `$Default`), without its forwarding
    /// links. It holds as much as its topic may, and keeps a message no longer than its topic's
    /// default TTL.
    pub(crate) fn add_subscription(
        &self,
        topic: &str,
        name: &str,
        properties: QueueProperties,
        rules: Vec<RuleConfig>,
    ) -> Result<Arc<Queue>, EntityError> {
        let topic = self.topic(topic)?;
        let rules = rules.into_iter().map(Rule::compile).collect::<Result<Vec<_>, _>>()?;
        let mut subscriptions = topic.subscriptions.write().unwrap_or_else(|p| p.into_inner());
        let key = name.to_ascii_lowercase();
        if subscriptions.contains_key(&key) {
            return Err(EntityError::AlreadyExists(subscription_path(&topic.name, name)));
        }
        let properties = topic.props().bound(properties);
        let path = subscription_path(&topic.name, name);
        let queue =
            Queue::build(&path, properties, Some(RuleSet::new(rules)), self.memory.clone(), self.storage.as_ref());
        subscriptions.insert(key, queue.clone());
        drop(subscriptions);
        self.start_timers(&queue);
        Ok(queue)
    }

    /// A topic, by name (case-insensitive).
    pub(crate) fn topic(&self, name: &str) -> Result<Arc<Topic>, EntityError> {
        self.entities()
            .topics
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| EntityError::NotFound(name.into()))
    }

    /// A queue, by name (case-insensitive).
    pub(crate) fn queue(&self, name: &str) -> Result<Arc<Queue>, EntityError> {
        self.entities()
            .queues
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| EntityError::NotFound(name.into()))
    }

    /// Every queue, and every topic, by name.
    pub(crate) fn all(&self) -> (Vec<Arc<Queue>>, Vec<Arc<Topic>>) {
        let entities = self.entities();
        let mut queues: Vec<_> = entities.queues.values().cloned().collect();
        let mut topics: Vec<_> = entities.topics.values().cloned().collect();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        topics.sort_by(|a, b| a.name().cmp(b.name()));
        (queues, topics)
    }

    /// Makes a queue with its forwarding links, checked before it is made (the administration
    /// API's create; the data directory keeps it).
    pub(crate) fn create_queue(&self, name: &str, properties: QueueProperties) -> Result<Arc<Queue>, EntityError> {
        let _changing = self.changing();
        let routes = self.routes_for(name, &properties)?;
        if self.inbox(name).is_some() {
            return Err(EntityError::AlreadyExists(name.to_string()));
        }
        // Cleared before the queue is there to take a message; no one else makes it meanwhile.
        let _group = crate::storage::Group::open();
        self.clear_leftovers(name);
        let queue = self.add_queue(name, properties)?;
        queue.set_routes(routes);
        self.keep_queue(&queue);
        Ok(queue)
    }

    /// Makes a topic (the administration API's create; the data directory keeps it).
    pub(crate) fn create_topic(&self, name: &str, properties: TopicProperties) -> Result<Arc<Topic>, EntityError> {
        let _changing = self.changing();
        let topic = self.add_topic(name, properties)?;
        self.keep_topic(&topic);
        Ok(topic)
    }

    /// Makes a subscription with its forwarding links, checked before it is made.
    pub(crate) fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        properties: QueueProperties,
        rules: Vec<RuleConfig>,
    ) -> Result<Arc<Queue>, EntityError> {
        let _changing = self.changing();
        let path = subscription_path(topic, name);
        let routes = self.routes_for(&path, &properties)?;
        let owner = self.topic(topic)?;
        if owner.subscription(name).is_some() {
            return Err(EntityError::AlreadyExists(subscription_path(&owner.name, name)));
        }
        let _group = crate::storage::Group::open();
        self.clear_leftovers(&path);
        let subscription = self.add_subscription(topic, name, properties, rules)?;
        subscription.set_routes(routes);
        self.keep_queue(&subscription);
        Ok(subscription)
    }

    /// Links `source` to the targets its properties name ([`Self::routes_for`]).
    pub(crate) fn link_routes(&self, source: &Queue, properties: &QueueProperties) -> Result<(), EntityError> {
        source.set_routes(self.routes_for(source.name(), properties)?);
        Ok(())
    }

    /// The targets that `properties` of the entity `source` name (`ForwardTo`,
    /// `ForwardDeadLetteredMessagesTo`), which must be queues or topics of the namespace; a
    /// queue may not forward to itself.
    fn routes_for(&self, source: &str, properties: &QueueProperties) -> Result<Routes, EntityError> {
        if properties.forward_to.as_deref().is_some_and(|t| normalize(t) == source.to_ascii_lowercase()) {
            return Err(EntityError::ForwardsToItself(source.to_string()));
        }
        self.routes(properties, |key, target| {
            Err(EntityError::NoSuchTarget { entity: source.to_string(), key, target: target.to_string() })
        })
    }

    /// Links a restored entity to its targets. A target that is gone (deleted before the
    /// emulator stopped) stays gone: what would move there is dead-lettered, as it was.
    pub(super) fn restore_routes(&self, source: &Queue, properties: &QueueProperties) {
        let routes = self.routes(properties, |key, target| {
            tracing::warn!(entity = source.name(), key, target, "a forwarding target of a restored entity is gone");
            Ok(Target::gone(target))
        });
        source.set_routes(routes.expect("a missing target is not an error here"));
    }

    /// The targets `properties` name; `missing` says what a name that is not a queue or
    /// topic of the namespace comes to.
    fn routes(
        &self,
        properties: &QueueProperties,
        missing: impl Fn(&'static str, &str) -> Result<Target, EntityError>,
    ) -> Result<Routes, EntityError> {
        let target = |key: &'static str, name: &Option<String>| match name {
            None => Ok(None),
            Some(name) => self.inbox(name).map_or_else(|| missing(key, name), Ok).map(Some),
        };
        Ok(Routes {
            forward_to: target("ForwardTo", &properties.forward_to)?,
            dead_lettered_to: target("ForwardDeadLetteredMessagesTo", &properties.forward_dead_lettered_messages_to)?,
        })
    }

    /// Changes a queue's or subscription's settings (and forwarding).
    pub(crate) fn update_queue(&self, queue: &Queue, properties: QueueProperties) -> Result<(), EntityError> {
        let _changing = self.changing();
        let now = queue.props().clone();
        let immutable = |key, changed: bool| match changed {
            true => Err(EntityError::Immutable { entity: queue.name().to_string(), key }),
            false => Ok(()),
        };
        immutable("RequiresSession", now.requires_session != properties.requires_session)?;
        let detects = |p: &QueueProperties| p.duplicate_detection_window.is_some();
        immutable("RequiresDuplicateDetection", detects(&now) != detects(&properties))?;
        self.link_routes(queue, &properties)?;
        queue.update(properties);
        self.keep_queue(queue);
        Ok(())
    }

    /// Changes a topic's settings; its subscriptions' size and TTL follow.
    pub(crate) fn update_topic(&self, topic: &Topic, properties: TopicProperties) -> Result<(), EntityError> {
        let _changing = self.changing();
        let detects = topic.props().duplicate_detection_window.is_some();
        if detects != properties.duplicate_detection_window.is_some() {
            return Err(EntityError::Immutable { entity: topic.name.clone(), key: "RequiresDuplicateDetection" });
        }
        if let (Some(d), Some(window)) = (&topic.duplicates, properties.duplicate_detection_window) {
            d.lock().unwrap_or_else(|p| p.into_inner()).set_window(window);
        }
        *topic.properties.write().unwrap_or_else(|p| p.into_inner()) = properties.clone();
        for sub in topic.subscriptions() {
            sub.update(properties.bound(sub.props().clone()));
            self.keep_queue(&sub);
        }
        topic.updated_ms.store(crate::message::now_ms(), Ordering::Release);
        self.keep_topic(topic);
        Ok(())
    }

    /// Deletes a queue, a topic (with its subscriptions) or a subscription
    /// (`topic/Subscriptions/name`), with their messages and the data directory's record: all
    /// of it, or (after a crash) none.
    pub(crate) fn delete(&self, path: &str) -> Result<(), EntityError> {
        let _changing = self.changing();
        let _group = crate::storage::Group::open();
        self.delete_entity(path)?;
        self.forget(path);
        Ok(())
    }

    fn delete_entity(&self, path: &str) -> Result<(), EntityError> {
        let not_found = || EntityError::NotFound(path.to_string());
        if let Some((topic, sub)) = path.split_once("/Subscriptions/").or_else(|| path.split_once("/subscriptions/")) {
            let topic = self.topic(topic).map_err(|_| not_found())?;
            let removed =
                topic.subscriptions.write().unwrap_or_else(|p| p.into_inner()).remove(&sub.to_ascii_lowercase());
            return removed.map(|q| q.delete()).ok_or_else(not_found);
        }
        let key = path.to_ascii_lowercase();
        let mut entities = self.entities.write().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = entities.queues.remove(&key) {
            drop(entities);
            queue.delete();
            return Ok(());
        }
        let topic = entities.topics.remove(&key).ok_or_else(not_found)?;
        drop(entities);
        topic.deleted.store(true, Ordering::Release);
        for sub in topic.subscriptions.write().unwrap_or_else(|p| p.into_inner()).drain() {
            sub.1.delete();
        }
        Ok(())
    }
}
