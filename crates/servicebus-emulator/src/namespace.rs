//! The namespace: its entities, and how link addresses resolve to them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::normalize;
use crate::config::Config;
use crate::message::StoredMessage;
use crate::queue::{Queue, QueueCounts, QuotaExceeded};
use crate::rules::{MessageView, Rule, RuleSet};

/// A topic: a message sent to it is copied to each subscription.
#[derive(Debug)]
pub(crate) struct Topic {
    name: String,
    subscriptions: HashMap<String, Arc<Queue>>,
}

/// Where a sender's messages go.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl Topic {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Destination {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Queue(q) => q.name(),
            Self::Topic(t) => t.name(),
        }
    }

    /// Refuses messages this entity takes from no one: ones without a session id, when it (or,
    /// for a topic, one of its subscriptions) requires sessions.
    pub(crate) fn check_messages(&self, messages: &[StoredMessage]) -> Result<(), SessionIdMissing> {
        let requires_session = match self {
            Self::Queue(q) => q.requires_session(),
            Self::Topic(t) => t.subscriptions.values().any(|s| s.requires_session()),
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
            Self::Topic(t) => t.subscriptions.values().try_for_each(|sub| sub.check_room(bytes)),
        }
    }

    /// Enqueues atomically; returns the sequence numbers (of the first subscription, for topics).
    /// A send that would pass an entity's `MaxSizeInMegabytes` is refused whole; for a topic,
    /// when any subscription is full (as the service refuses a send to a topic whose
    /// subscription is full).
    pub(crate) fn enqueue(&self, messages: Vec<StoredMessage>) -> Result<Vec<i64>, QuotaExceeded> {
        match self {
            Self::Queue(q) => q.enqueue(messages),
            Self::Topic(t) => {
                self.check_room(StoredMessage::total_size(&messages))?;
                // The sequence numbers of the subscription that took the most copies (all of
                // them, when a subscription takes every message).
                let mut seqs = Vec::new();
                let views: Vec<MessageView> = messages.iter().map(|_| MessageView::default()).collect();
                for sub in t.subscriptions.values() {
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
    }
}

/// A message without a session id, sent to an entity that requires sessions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The SessionId was not set on a message, and it cannot be sent to the entity '{entity}'. Entities that have \
     session support enabled can only receive messages that have the SessionId set to a valid value."
)]
pub(crate) struct SessionIdMissing {
    pub(crate) entity: String,
}

impl SessionIdMissing {
    /// The AMQP condition the service uses.
    pub(crate) fn condition(&self) -> &'static str {
        "amqp:not-allowed"
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

/// An address that names nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("The messaging entity '{0}' could not be found.")]
pub(crate) struct NotFound(pub(crate) String);

/// The entities of the emulator.
#[derive(Debug)]
pub(crate) struct Namespace {
    name: String,
    queues: HashMap<String, Arc<Queue>>,
    topics: HashMap<String, Arc<Topic>>,
    timers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for t in &self.timers {
            t.abort();
        }
    }
}

impl Namespace {
    /// Creates the entities and starts their timers (needs a Tokio runtime).
    pub(crate) fn new(config: &Config) -> Self {
        let mut ns =
            Self { name: config.namespace.clone(), queues: HashMap::new(), topics: HashMap::new(), timers: Vec::new() };
        for q in &config.queues {
            let queue = Queue::new(&q.name, q.properties.clone());
            ns.start_timers(&queue);
            ns.queues.insert(q.name.to_ascii_lowercase(), queue);
        }
        for t in &config.topics {
            let mut subscriptions = HashMap::new();
            for s in &t.subscriptions {
                let rules = t.rules.get(&s.name).into_iter().flatten().cloned().map(Rule::compile);
                let rules = rules.collect::<Result<Vec<_>, _>>().expect("the configuration checked its rules");
                let name = format!("{}/Subscriptions/{}", t.name, s.name);
                let queue = Queue::subscription(&name, s.properties.clone(), RuleSet::new(rules));
                ns.start_timers(&queue);
                subscriptions.insert(s.name.to_ascii_lowercase(), queue);
            }
            ns.topics.insert(t.name.to_ascii_lowercase(), Arc::new(Topic { name: t.name.clone(), subscriptions }));
        }
        ns
    }

    fn start_timers(&mut self, queue: &Arc<Queue>) {
        self.timers.push(tokio::spawn(queue.clone().run_timer()));
        if let Some(dlq) = queue.dead_letter_queue() {
            self.timers.push(tokio::spawn(dlq.clone().run_timer()));
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
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
        let queue = if let Some(q) = self.queues.get(entity_path) {
            Some(q.clone())
        } else if let Some((topic, sub)) = entity_path.split_once("/subscriptions/") {
            Some(self.topics.get(topic).and_then(|t| t.subscriptions.get(sub)).cloned().ok_or_else(not_found)?)
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
            (None, false, false) => Node::Topic(self.topics.get(entity_path).cloned().ok_or_else(not_found)?),
            (None, _, _) => return Err(not_found()),
        };
        Ok((node, path))
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
mod tests {
    use super::*;
    use crate::config::{QueueConfig, TopicConfig};

    fn ns() -> Namespace {
        let mut c = Config::default();
        c.queues.push(QueueConfig { name: "site1/Inbox".into(), properties: Default::default() });
        c.topics.push(TopicConfig {
            name: "events".into(),
            subscriptions: vec![QueueConfig { name: "audit".into(), properties: Default::default() }],
            rules: Default::default(),
        });
        Namespace::new(&c)
    }

    #[tokio::test]
    async fn addresses_in_every_sdk_form_resolve() {
        let ns = ns();
        for a in ["orders", "/orders", "amqps://127.0.0.1:5672/orders", "sb://LOCALHOST/Orders/"] {
            assert!(matches!(ns.resolve(a), Ok((Node::Queue(q), _)) if q.name() == "orders"), "{a}");
        }
        assert!(
            matches!(ns.resolve("orders/$DeadLetterQueue"), Ok((Node::Queue(q), _)) if q.name() == "orders/$DeadLetterQueue")
        );
        assert!(matches!(ns.resolve("orders/$management"), Ok((Node::Management(q), _)) if q.name() == "orders"));
        assert!(matches!(ns.resolve("site1/inbox"), Ok((Node::Queue(_), _))));
        assert!(matches!(ns.resolve("events"), Ok((Node::Topic(_), _))));
        assert!(matches!(ns.resolve("events/subscriptions/audit"), Ok((Node::Queue(_), _))));
        assert!(matches!(ns.resolve("events/Subscriptions/audit/$DeadLetterQueue"), Ok((Node::Queue(_), _))));
        assert!(matches!(ns.resolve("$cbs"), Ok((Node::Cbs, _))));
    }

    #[tokio::test]
    async fn unknown_entities_are_not_found() {
        let ns = ns();
        for a in ["nope", "nope/$management", "events/Subscriptions/nope", "orders/x", "nope/$DeadLetterQueue"] {
            assert!(ns.resolve(a).is_err(), "{a}");
        }
        assert_eq!(
            ns.resolve("amqps://h/Nope").unwrap_err().to_string(),
            "The messaging entity 'nope' could not be found."
        );
    }
}
