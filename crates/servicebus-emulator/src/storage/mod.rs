//! Durable storage (`--data-dir`): what the emulator acknowledged survives a crash.
//!
//! The engine is [fjall](https://docs.rs/fjall), an embedded log-structured key-value store
//! with a checksummed journal: a torn last write is found and dropped when it opens. This
//! module keeps it behind a small interface the entities write through:
//!
//! - An entity records a [`Change`] (a key of a [`Space`] set or removed) while it holds its
//!   lock, and hands its changes to [`Storage::submit`] before it releases the lock, so
//!   changes to one key reach the journal in the order they were made.
//! - One writer thread ([`writer`]) commits what was submitted as one batch (group commit),
//!   syncs the journal as the [`Fsync`] policy says, and publishes how far it got.
//! - Whoever acknowledges a change to a client waits for it ([`Storage::durable`]): a
//!   connection holds back its output until the changes made for it are on disk
//!   ([`take_barrier`] says how far that is).
//! - A change that spans entities (dead-lettering, forwarding, a topic's fan-out, a
//!   transaction) runs inside a [`group`]: the writer commits a group whole or not at all.
//!
//! Without `--data-dir` there is no `Storage`, and none of this runs.

mod group;
mod writer;

pub(crate) use group::{Group, take_barrier};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

/// When the journal is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// After each change a client asked for, alone: one sync per send or settlement.
    Always,
    /// After each batch of changes (group commit): a client's change is acknowledged once its
    /// batch is synced. As safe as `Always`, at a fraction of the syncs.
    #[default]
    Batch,
    /// Never: changes are written to the operating system and acknowledged at once. They
    /// survive the emulator's crash, not the machine's.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "batch" => Ok(Self::Batch),
            "never" => Ok(Self::Never),
            _ => Err(format!("{s:?} is not an fsync policy: use always, batch or never")),
        }
    }
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another process (an emulator still running?) has the directory open.
    #[error(
        "the data directory {dir} is in use by another process (is another emulator running with --data-dir {dir}?)"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The store could not be opened, read or written.
    #[error("the data directory {dir}: {source}")]
    Engine {
        /// The directory.
        dir: PathBuf,
        /// What the storage engine said.
        source: fjall::Error,
    },
    /// A record the emulator wrote cannot be read back.
    #[error("the data directory {dir} holds a record this emulator cannot read ({what}): {detail}")]
    Corrupt {
        /// The directory.
        dir: PathBuf,
        /// Which record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The writer stopped after a failed write: nothing more is acknowledged.
    #[error("writing to the data directory failed, so the emulator acknowledges nothing more: {0}")]
    Failed(Arc<str>),
}

/// The key spaces of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Space {
    /// A message of an entity: `entity \0 sequence-number` → its record.
    Messages,
    /// A message locked when last written: same key → nothing. Recovery counts a delivery.
    Locks,
    /// A message session's state: `entity \0 session-id` → the state.
    Sessions,
    /// An entity's next sequence number: `entity` → i64 big-endian.
    Sequences,
    /// An entity the administration API made: `entity` → its description (`Config.json`'s
    /// schema, as JSON).
    Entities,
}

impl Space {
    const ALL: [Space; 5] = [Space::Messages, Space::Locks, Space::Sessions, Space::Sequences, Space::Entities];

    fn name(self) -> &'static str {
        match self {
            Space::Messages => "messages",
            Space::Locks => "locks",
            Space::Sessions => "sessions",
            Space::Sequences => "sequences",
            Space::Entities => "entities",
        }
    }
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) space: Space,
    pub(crate) key: Vec<u8>,
    pub(crate) op: Op,
}

/// What a [`Change`] does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Sets the key. `fresh`: the key was never written before (a new message), so a removal
    /// in the same batch cancels both and the engine sees neither.
    Set {
        value: Vec<u8>,
        fresh: bool,
    },
    Remove,
    /// Removes every key that starts with this one (an entity deleted).
    RemovePrefix,
}

impl Change {
    pub(crate) fn set(space: Space, key: Vec<u8>, value: Vec<u8>, fresh: bool) -> Self {
        Self { space, key, op: Op::Set { value, fresh } }
    }

    pub(crate) fn remove(space: Space, key: Vec<u8>) -> Self {
        Self { space, key, op: Op::Remove }
    }

    pub(crate) fn remove_prefix(space: Space, prefix: Vec<u8>) -> Self {
        Self { space, key: prefix, op: Op::RemovePrefix }
    }
}

/// What a client's acknowledgement may not run ahead of: every change but a lock marker.
fn acknowledged(changes: &[Change]) -> bool {
    changes.iter().any(|c| c.space != Space::Locks)
}

/// What the writer is handed, in order.
#[derive(Debug)]
enum Item {
    /// Changes made under one entity's lock, in `group` if one was open.
    Unit { pos: u64, group: Option<u64>, changes: Vec<Change> },
    /// The end of a group: what came before it in the group may be committed.
    Close { pos: u64, group: u64 },
}

impl Item {
    fn pos(&self) -> u64 {
        match self {
            Item::Unit { pos, .. } | Item::Close { pos, .. } => *pos,
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    items: Vec<Item>,
    /// The position of the last item submitted.
    last: u64,
    stop: bool,
}

/// How far the writer got: every item up to `pos` is committed (and synced, by policy).
#[derive(Debug, Clone, Default)]
struct Committed {
    pos: u64,
    failed: Option<Arc<str>>,
}

/// What submitters and the writer share.
#[derive(Debug)]
struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    committed: watch::Sender<Committed>,
}

impl Inner {
    fn push(&self, item: impl FnOnce(u64) -> Item) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.last += 1;
        let pos = p.last;
        p.items.push(item(pos));
        drop(p);
        self.wake.notify_one();
        pos
    }
}

/// The open store and its writer thread.
#[derive(Debug)]
pub(crate) struct Storage {
    dir: PathBuf,
    inner: Arc<Inner>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A key and its value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// What the store held when it opened: every key of every space, in key order.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    pub(crate) spaces: std::collections::BTreeMap<Space, Vec<Row>>,
}

impl Contents {
    /// The keys and values of one space.
    pub(crate) fn space(&self, space: Space) -> &[Row] {
        self.spaces.get(&space).map(Vec::as_slice).unwrap_or_default()
    }
}

impl Storage {
    /// Opens (or makes) the store in `dir`, reads what it holds, and starts its writer.
    pub(crate) fn open(dir: &Path, fsync: Fsync) -> Result<(Arc<Self>, Contents), StorageError> {
        let engine = |source: fjall::Error| match source {
            fjall::Error::Locked => StorageError::Locked { dir: dir.to_path_buf() },
            source => StorageError::Engine { dir: dir.to_path_buf(), source },
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Engine { dir: dir.to_path_buf(), source: fjall::Error::Io(e) })?;
        let db = fjall::Database::builder(dir)
            // The smallest journal fjall allows: what it holds is replayed at start.
            .max_journaling_size(64 << 20)
            .open()
            .map_err(engine)?;
        let mut spaces = std::collections::BTreeMap::new();
        let mut contents = Contents::default();
        for space in Space::ALL {
            let ks = db.keyspace(space.name(), fjall::KeyspaceCreateOptions::default).map_err(engine)?;
            let mut rows = Vec::new();
            for kv in ks.iter() {
                let (k, v) = kv.into_inner().map_err(engine)?;
                rows.push((k.to_vec(), v.to_vec()));
            }
            contents.spaces.insert(space, rows);
            spaces.insert(space, ks);
        }
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            committed: watch::Sender::new(Committed::default()),
        });
        let thread = writer::Writer { dir: dir.to_path_buf(), db, spaces, fsync, inner: inner.clone() };
        let handle = std::thread::Builder::new()
            .name("emulator-storage".into())
            .spawn(move || thread.run())
            .map_err(|e| StorageError::Engine { dir: dir.to_path_buf(), source: fjall::Error::Io(e) })?;
        let storage = Arc::new(Self { dir: dir.to_path_buf(), inner, writer: Mutex::new(Some(handle)) });
        Ok((storage, contents))
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands the writer changes made under one entity's lock (call it before releasing the
    /// lock). Inside a [`group`], they are committed with the rest of the group.
    pub(crate) fn submit(self: &Arc<Self>, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let acked = acknowledged(&changes);
        let group = group::joined(self);
        let pos = self.inner.push(|pos| Item::Unit { pos, group, changes });
        if acked {
            group::raise_barrier(pos);
        }
    }

    /// Ends group `id` (its last lock released).
    fn close_group(&self, id: u64) {
        self.inner.push(|pos| Item::Close { pos, group: id });
    }

    /// Waits until everything submitted up to `pos` is committed and synced by policy.
    pub(crate) async fn durable(&self, pos: u64) -> Result<(), StorageError> {
        let mut rx = self.inner.committed.subscribe();
        let c = rx
            .wait_for(|c| c.pos >= pos || c.failed.is_some())
            .await
            .map_err(|_| StorageError::Failed("the writer is gone".into()))?;
        match &c.failed {
            Some(why) if c.pos < pos => Err(StorageError::Failed(why.clone())),
            _ => Ok(()),
        }
    }

    /// Waits until everything submitted so far is committed.
    #[cfg(test)]
    pub(crate) async fn settled(&self) -> Result<(), StorageError> {
        let last = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).last;
        self.durable(last).await
    }

    /// Commits what is pending and stops the writer.
    pub(crate) fn close(&self) {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.inner.wake.notify_one();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
