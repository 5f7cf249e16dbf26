//! Duplicate detection: the message-ids an entity took inside its window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::message::StoredMessage;

/// The message-ids an entity took in the last `window`, oldest first.
///
/// Its memory is the ids of one window: each is forgotten once the window has passed it.
#[derive(Debug)]
pub(crate) struct Duplicates {
    window: Duration,
    /// When each id was last taken.
    seen: HashMap<String, Instant>,
    /// Ids in the order they were taken (an id taken again appears twice; `seen` says which counts).
    order: VecDeque<(Instant, String)>,
}

impl Duplicates {
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// The messages whose message-id was not taken inside the window, nor earlier in
    /// `messages`; the others are dropped (the service accepts a duplicate and drops it).
    /// Nothing is remembered until [`Self::record`].
    pub(crate) fn unseen(&mut self, messages: Vec<StoredMessage>, now: Instant) -> Vec<StoredMessage> {
        self.forget_before(now);
        let mut in_batch = HashSet::new();
        messages
            .into_iter()
            .filter(|m| match &m.message_id {
                Some(id) => {
                    let fresh = !self.seen.contains_key(id) && in_batch.insert(id.clone());
                    if !fresh {
                        tracing::debug!(message_id = %id, "duplicate message dropped");
                    }
                    fresh
                }
                None => true,
            })
            .collect()
    }

    /// Changes the window (an entity's update); what is remembered stays.
    pub(crate) fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Remembers the message-ids of messages the entity took.
    pub(crate) fn record(&mut self, messages: &[StoredMessage], now: Instant) {
        for id in messages.iter().filter_map(|m| m.message_id.as_ref()) {
            self.seen.insert(id.clone(), now);
            self.order.push_back((now, id.clone()));
        }
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            let (at, id) = self.order.pop_front().expect("front checked above");
            if self.seen.get(&id) == Some(&at) {
                self.seen.remove(&id);
            }
        }
    }

    /// How many ids are remembered (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(id: &str) -> StoredMessage {
        let mut m = StoredMessage::unchecked(Bytes::from_static(b"x"));
        m.message_id = Some(id.into());
        m
    }

    fn ids(messages: &[StoredMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.message_id.as_deref().unwrap()).collect()
    }

    #[test]
    fn an_id_inside_the_window_is_dropped_and_forgotten_after_it() {
        let start = Instant::now();
        let mut d = Duplicates::new(Duration::from_secs(10));
        let first = d.unseen(vec![msg("a"), msg("b"), msg("a")], start);
        assert_eq!(ids(&first), ["a", "b"], "a repeat inside one send is a duplicate too");
        d.record(&first, start);
        let again = d.unseen(vec![msg("a"), msg("c")], start + Duration::from_secs(9));
        assert_eq!(ids(&again), ["c"]);
        let later = d.unseen(vec![msg("a")], start + Duration::from_secs(10));
        assert_eq!(ids(&later), ["a"], "the window has passed");
        assert_eq!(d.len(), 0, "nothing is remembered past the window");
    }

    #[test]
    fn an_id_refused_is_not_remembered() {
        let now = Instant::now();
        let mut d = Duplicates::new(Duration::from_secs(10));
        assert_eq!(d.unseen(vec![msg("a")], now).len(), 1);
        // Not recorded (the entity refused the send): the retry is not a duplicate.
        assert_eq!(d.unseen(vec![msg("a")], now).len(), 1);
    }

    #[test]
    fn an_id_taken_again_counts_from_its_latest_time() {
        let start = Instant::now();
        let mut d = Duplicates::new(Duration::from_secs(10));
        d.record(&[msg("a")], start);
        // Not a duplicate after the window; taken again at 12 s.
        let at12 = start + Duration::from_secs(12);
        let again = d.unseen(vec![msg("a")], at12);
        d.record(&again, at12);
        assert!(d.unseen(vec![msg("a")], start + Duration::from_secs(21)).is_empty());
    }
}
