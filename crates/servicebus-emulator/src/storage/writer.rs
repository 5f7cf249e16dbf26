//! The writer thread: commits what entities submit, a batch at a time (group commit).
//!
//! Each round takes every item submitted since the last one. A group's items are committed
//! only once the group is closed, so a round commits up to the last point where no group is
//! open ("a cut") and keeps the rest for the next round. Within a batch the changes are
//! coalesced per key, in order: a message stored and completed within one batch never
//! reaches the engine. Then the batch is committed and synced as the policy says, and
//! [`Committed`] moves on, which wakes whoever waits to acknowledge.

use std::collections::{BTreeMap, HashSet};

use fjall::{Keyspace, PersistMode};

use super::{Committed, Fsync, Inner, Item, Op, Space};

pub(super) struct Writer {
    /// The data directory, for the log.
    pub(super) dir: std::path::PathBuf,
    pub(super) db: fjall::Database,
    pub(super) spaces: BTreeMap<Space, Keyspace>,
    pub(super) fsync: Fsync,
    pub(super) inner: std::sync::Arc<Inner>,
}

/// What a batch does to one key, after coalescing its changes.
struct Coalesced<'a> {
    /// The first change set a key never written before: if it ends removed, skip it.
    fresh: bool,
    value: Option<&'a [u8]>,
}

impl Writer {
    pub(super) fn run(self) {
        let mut held: Vec<Item> = Vec::new();
        // Scanning `held` from `scanned` on: the groups open, and the safe cuts so far.
        let mut open: HashSet<u64> = HashSet::new();
        let mut cuts: Vec<usize> = Vec::new();
        let mut scanned = 0;
        loop {
            let stop = {
                let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
                while p.items.is_empty() && !p.stop {
                    p = self.inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                held.append(&mut p.items);
                p.stop
            };
            for (i, item) in held.iter().enumerate().skip(scanned) {
                match item {
                    Item::Unit { group: Some(g), .. } => {
                        open.insert(*g);
                    }
                    Item::Unit { group: None, .. } => {}
                    Item::Close { group, .. } => {
                        open.remove(group);
                    }
                }
                if open.is_empty() {
                    cuts.push(i + 1);
                }
            }
            scanned = held.len();
            if stop {
                // Shutting down: whatever is held was made before the last lock was released.
                cuts = vec![held.len()];
            }
            let segments: Vec<usize> = match self.fsync {
                Fsync::Always => cuts.clone(),
                Fsync::Batch | Fsync::Never => cuts.last().copied().into_iter().collect(),
            };
            let mut done = 0;
            for end in segments {
                let items = &held[done..end];
                if items.is_empty() {
                    continue;
                }
                let pos = items.last().map(Item::pos).unwrap_or_default();
                if let Err(e) = self.commit(items) {
                    let why: std::sync::Arc<str> = e.to_string().into();
                    tracing::error!(dir = %self.dir.display(), "writing to the data directory failed: {why}; nothing more is acknowledged");
                    self.inner.committed.send_modify(|c| c.failed = Some(why));
                    return;
                }
                self.inner.committed.send_modify(|c: &mut Committed| c.pos = pos);
                done = end;
            }
            held.drain(..done);
            scanned -= done;
            cuts.clear();
            if stop && held.is_empty() {
                return;
            }
        }
    }

    /// Commits `items` as one atomic batch, synced by policy.
    fn commit(&self, items: &[Item]) -> Result<(), fjall::Error> {
        let mut keys: BTreeMap<(Space, &[u8]), Coalesced<'_>> = BTreeMap::new();
        let changes = items.iter().flat_map(|i| match i {
            Item::Unit { changes, .. } => changes.as_slice(),
            Item::Close { .. } => &[],
        });
        // Written (before a prefix removal) but not yet synced.
        let mut unsynced = false;
        for change in changes {
            let slot = (change.space, change.key.as_slice());
            match &change.op {
                Op::Set { value, fresh } => {
                    keys.entry(slot)
                        .and_modify(|c| c.value = Some(value))
                        .or_insert(Coalesced { fresh: *fresh, value: Some(value) });
                }
                Op::Remove => {
                    keys.entry(slot).and_modify(|c| c.value = None).or_insert(Coalesced { fresh: false, value: None });
                }
                Op::RemovePrefix => {
                    // What came before must be in the engine for the scan to see it.
                    self.apply(std::mem::take(&mut keys), None)?;
                    self.remove_prefix(change.space, &change.key)?;
                    unsynced = true;
                }
            }
        }
        let mode = match self.fsync {
            Fsync::Always | Fsync::Batch => PersistMode::SyncData,
            Fsync::Never => PersistMode::Buffer,
        };
        let wrote = self.apply(keys, Some(mode))?;
        if unsynced && !wrote {
            self.db.persist(mode)?;
        }
        Ok(())
    }

    /// Writes one batch (synced by `mode`, if given); returns whether it held anything.
    fn apply(
        &self,
        keys: BTreeMap<(Space, &[u8]), Coalesced<'_>>,
        mode: Option<PersistMode>,
    ) -> Result<bool, fjall::Error> {
        let mut batch = self.db.batch().durability(mode);
        for ((space, key), c) in keys {
            let ks = &self.spaces[&space];
            match c.value {
                Some(v) => batch.insert(ks, key, v),
                None if c.fresh => {}
                None => batch.remove(ks, key),
            }
        }
        let wrote = !batch.is_empty();
        batch.commit()?;
        Ok(wrote)
    }

    fn remove_prefix(&self, space: Space, prefix: &[u8]) -> Result<(), fjall::Error> {
        let ks = &self.spaces[&space];
        let mut batch = self.db.batch();
        for kv in ks.prefix(prefix) {
            batch.remove(ks, kv.key()?);
        }
        batch.commit()
    }
}
