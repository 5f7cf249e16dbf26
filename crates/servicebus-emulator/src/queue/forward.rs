//! Auto-forwarding: where a queue's (or subscription's) messages move to, and what happens
//! to a message the target refuses.
//!
//! A queue with `ForwardTo` stores no active message: each one moves to the target as it
//! arrives (a scheduled one when it is due), in one batch per send. A queue with
//! `ForwardDeadLetteredMessagesTo` moves what it dead-letters there instead of into its own
//! dead-letter queue. Each move is a hop; a message that would take a fifth hop goes to the
//! dead-letter queue of the entity it is in, with `MaxTransferHopCountExceeded` (so a
//! forwarding loop ends there). A message the target refuses (it is full, it requires
//! sessions and the message has none, it was deleted) goes to that dead-letter queue too,
//! with the reason. Nothing is lost, and the sender is never told: its send was accepted.
//!
//! Targets are held weakly: a loop of entities forwarding to each other is not a loop of
//! owners, and an entity deleted later is a refusal, not a dangling reference.

use std::sync::{Arc, Weak};

use fe2o3_amqp_types::primitives::SimpleValue;
use serde_amqp::Value;

use super::Queue;
use super::types::{QuotaExceeded, SessionIdMissing};
use crate::message::{DEAD_LETTER_DESCRIPTION, DEAD_LETTER_REASON, StoredMessage, annotation, key};

/// A message leaving its entity for another.
#[derive(Debug)]
pub(super) enum Transfer {
    /// To `ForwardTo`.
    Forward(StoredMessage),
    /// Dead-lettered, to `ForwardDeadLetteredMessagesTo`.
    DeadLettered(StoredMessage),
}

/// The most times a message is forwarded, as on Service Bus.
pub(crate) const MAX_HOPS: u8 = 4;

/// An entity that takes messages: a queue, or a topic (which copies them to its subscriptions).
pub(crate) trait Inbox: Send + Sync + std::fmt::Debug {
    /// Takes `messages`, all or none; refused, they are handed back.
    fn accept(&self, messages: Vec<StoredMessage>) -> Result<(), (Refused, Vec<StoredMessage>)>;
}

/// Why an entity refused messages forwarded to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(transparent)]
    SessionIdMissing(#[from] SessionIdMissing),
    /// The target no longer exists.
    #[error("The messaging entity '{0}' could not be found.")]
    Gone(String),
}

impl Refused {
    /// The `DeadLetterReason` of a message this refusal sends to a dead-letter queue.
    fn reason(&self) -> &'static str {
        match self {
            Self::Quota(_) => "QuotaExceededException",
            // The service's reason for this one is a sentence, as its documentation lists it.
            Self::SessionIdMissing(_) => "Session ID is null.",
            Self::Gone(_) => "MessagingEntityNotFoundException",
        }
    }
}

/// Where a queue forwards to: a target's name, and the target.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    inbox: Weak<dyn Inbox>,
}

impl Target {
    pub(crate) fn new(name: &str, inbox: &Arc<dyn Inbox>) -> Self {
        Self { name: name.to_string(), inbox: Arc::downgrade(inbox) }
    }

    /// A target that no longer exists: what is forwarded to it stays where it was,
    /// dead-lettered, as after the target is deleted.
    pub(crate) fn gone(name: &str) -> Self {
        let nothing: Weak<dyn Inbox> = Weak::<super::Queue>::new();
        Self { name: name.to_string(), inbox: nothing }
    }

    /// Moves `messages` one hop on. Returns those that cannot go, each with its reason and
    /// description, for the caller's dead-letter queue.
    pub(crate) fn forward(&self, messages: Vec<StoredMessage>) -> Vec<(StoredMessage, DeadLetter)> {
        let mut stuck = Vec::new();
        let mut batch = Vec::with_capacity(messages.len());
        for mut msg in messages {
            if msg.hops >= MAX_HOPS {
                stuck.push((msg, DeadLetter::hops()));
                continue;
            }
            if msg.hops == 0 {
                // Where it first arrived: readers see it as `enqueued_sequence_number`.
                msg.annotations.insert(key(annotation::ENQUEUE_SEQUENCE_NUMBER), Value::Long(msg.sequence_number));
            }
            msg.hops += 1;
            batch.push(msg);
        }
        if batch.is_empty() {
            return stuck;
        }
        let result = match self.inbox.upgrade() {
            Some(inbox) => inbox.accept(batch),
            None => Err((Refused::Gone(self.name.clone()), batch)),
        };
        if let Err((refused, back)) = result {
            tracing::debug!(target = %self.name, "forwarded messages were refused: {refused}");
            let dead_letter = DeadLetter { reason: refused.reason().into(), description: refused.to_string() };
            stuck.extend(back.into_iter().map(|mut m| {
                m.hops -= 1; // It stays where it was.
                (m, dead_letter.clone())
            }));
        }
        stuck
    }
}

/// The reason and description a message is dead-lettered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub(crate) reason: String,
    pub(crate) description: String,
}

impl DeadLetter {
    /// The fifth hop.
    fn hops() -> Self {
        Self {
            reason: "MaxTransferHopCountExceeded".into(),
            description: format!(
                "The maximum number of allowed hops when forwarding between queues has been exceeded. \
                 This value is set to {MAX_HOPS}."
            ),
        }
    }

    /// `ForwardTo` was removed while a message was on its way.
    pub(crate) fn forwarding_removed() -> Self {
        Self {
            reason: "ForwardingRemoved".into(),
            description: "The entity stopped forwarding while the message was being forwarded.".into(),
        }
    }

    /// Whether this is the hop limit.
    pub(crate) fn is_hop_limit(&self) -> bool {
        self.reason == "MaxTransferHopCountExceeded"
    }

    /// The application properties that say so on the message.
    pub(crate) fn properties(self) -> Vec<(String, SimpleValue)> {
        vec![
            (DEAD_LETTER_REASON.into(), SimpleValue::String(self.reason)),
            (DEAD_LETTER_DESCRIPTION.into(), SimpleValue::String(self.description)),
        ]
    }
}

/// A queue's targets: `ForwardTo` and `ForwardDeadLetteredMessagesTo`, linked once the
/// namespace has made every entity.
#[derive(Debug, Default, Clone)]
pub(crate) struct Routes {
    pub(crate) forward_to: Option<Target>,
    pub(crate) dead_lettered_to: Option<Target>,
}

impl Queue {
    /// Moves messages out, once the lock is released: forwarded ones in one batch, then
    /// dead-lettered ones. What a target refuses goes to this queue's dead-letter queue.
    pub(super) fn transfer(&self, outbox: Vec<Transfer>) {
        let routes = self.routes();
        let (mut forward, mut dead_lettered) = (Vec::new(), Vec::new());
        for t in outbox {
            match t {
                Transfer::Forward(m) => forward.push(m),
                Transfer::DeadLettered(mut m) => {
                    m.annotations.insert(key(annotation::DEAD_LETTER_SOURCE), Value::String(self.name.clone()));
                    dead_lettered.push(m);
                }
            }
        }
        let move_on = |messages: Vec<StoredMessage>, target: &Option<Target>| match target {
            Some(target) => target.forward(messages),
            // Its forwarding was removed while these were on their way: they stay, dead-lettered.
            None => messages.into_iter().map(|m| (m, DeadLetter::forwarding_removed())).collect::<Vec<_>>(),
        };
        for (mut msg, why) in move_on(forward, &routes.forward_to) {
            msg.merge_application_properties(why.properties());
            self.dead_letter_here(msg);
        }
        for (mut msg, why) in move_on(dead_lettered, &routes.dead_lettered_to) {
            // It keeps the reason it was dead-lettered with, unless it could not go for
            // a reason of its own (the hop limit).
            if why.is_hop_limit() {
                msg.merge_application_properties(why.properties());
            }
            msg.annotations.swap_remove(&key(annotation::DEAD_LETTER_SOURCE));
            self.dead_letter_here(msg);
        }
    }

    /// Puts a message straight into this queue's dead-letter queue.
    fn dead_letter_here(&self, msg: StoredMessage) {
        match &self.dead_letter {
            Some(dlq) => {
                let count = msg.header.delivery_count;
                dlq.enqueue_dead_lettered(msg, count);
            }
            None => tracing::warn!(queue = %self.name, "a dead-letter queue forwards nothing; message dropped"),
        }
    }
}

impl Inbox for Queue {
    fn accept(&self, messages: Vec<StoredMessage>) -> Result<(), (Refused, Vec<StoredMessage>)> {
        if self.is_deleted() {
            return Err((Refused::Gone(self.name().to_string()), messages));
        }
        if self.requires_session() && messages.iter().any(|m| m.session_id.is_none()) {
            return Err((SessionIdMissing { entity: self.name().to_string() }.into(), messages));
        }
        self.store(messages).map(drop).map_err(|(e, back)| (e.into(), back))
    }
}
