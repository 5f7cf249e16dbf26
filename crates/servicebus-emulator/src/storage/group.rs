//! Groups of changes that span entities, and the barrier a connection's output waits for.
//!
//! Both live in thread-locals: every change the emulator makes runs synchronously on one
//! thread, from the moment a frame (or a timer) starts it until the last lock it took is
//! released, so "this thread, since the group opened" names exactly the changes it made.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Storage;

static NEXT_GROUP: AtomicU64 = AtomicU64::new(1);

struct Open {
    id: u64,
    depth: u32,
    /// The stores that took a unit of this group (one, in practice).
    used: Vec<Arc<Storage>>,
}

thread_local! {
    static OPEN: RefCell<Option<Open>> = const { RefCell::new(None) };
    static BARRIER: Cell<u64> = const { Cell::new(0) };
}

/// While alive, every unit submitted on this thread belongs to one group, which the writer
/// commits whole. Groups nest: the outermost one ends the group. Not `Send`: it must end on
/// the thread that opened it, before any `.await`.
pub(crate) struct Group {
    _thread_bound: PhantomData<*const ()>,
}

impl Group {
    pub(crate) fn open() -> Self {
        OPEN.with_borrow_mut(|open| match open {
            Some(o) => o.depth += 1,
            None => {
                *open = Some(Open { id: NEXT_GROUP.fetch_add(1, Ordering::Relaxed), depth: 1, used: Vec::new() });
            }
        });
        Self { _thread_bound: PhantomData }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let ended = OPEN.with_borrow_mut(|open| {
            let o = open.as_mut().expect("a group is open while its guard lives");
            o.depth -= 1;
            if o.depth == 0 { open.take() } else { None }
        });
        if let Some(o) = ended {
            for storage in o.used {
                storage.close_group(o.id);
            }
        }
    }
}

/// The group a unit submitted now to `storage` belongs to, if one is open.
pub(super) fn joined(storage: &Arc<Storage>) -> Option<u64> {
    OPEN.with_borrow_mut(|open| {
        let o = open.as_mut()?;
        if !o.used.iter().any(|s| Arc::ptr_eq(s, storage)) {
            o.used.push(storage.clone());
        }
        Some(o.id)
    })
}

/// Notes that what this thread is doing must not be acknowledged before `pos` is durable.
pub(super) fn raise_barrier(pos: u64) {
    BARRIER.set(BARRIER.get().max(pos));
}

/// The position this thread's acknowledgements must wait for, since the last call (0: none).
pub(crate) fn take_barrier() -> u64 {
    BARRIER.replace(0)
}
