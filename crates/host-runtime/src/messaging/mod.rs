//! The `wasi:messaging` imports on Service Bus, for any Wasmtime embedder, shaped as
//! Wasmtime's own WASI crates are:
//! - [`MessagingCtx`], one per process (built with [`MessagingCtx::builder`]): the named
//!   connections and their cached links, the channels a guest may send to, the counters;
//! - [`CallCtx`], one per handler call: the channel, the deliveries given to the call (and those
//!   it pulls), the last error;
//! - [`Messaging`], a view borrowing both and the store's `ResourceTable`, on which the imports
//!   are implemented; [`add_to_linker`] adds those of a revision to a linker of any store type.
//!
//! What the imports do is in `ops`, once for both revisions; `feb2024` and `dec2024` are
//! each revision's imports in its own shapes (a message record named by its `delivery-id`, or a
//! message resource). Settling goes through [`crate::delivery`]. `docs/semantics.md` is the
//! contract they keep.

mod call;
mod ctx;
mod dec2024;
mod feb2024;
mod ops;

use wasmtime::component::{HasData, Linker};
use wit_interface::{Revision, ServicebusGuest};

pub use call::{CallCtx, Messaging};
pub use ctx::{BuildError, MessagingCtx, MessagingCtxBuilder};

/// The [`HasData`] of [`Messaging`], for the generated `add_to_linker` functions.
struct HasMessaging;

impl HasData for HasMessaging {
    type Data<'a> = Messaging<'a>;
}

/// Adds the imports a guest of `revision` may have to `linker` (`wasi:messaging`, the Service
/// Bus extension, `wasi:config/store`); `get` finds the view in a store's data. A guest that
/// imports less (of the draft or upstream's worlds alone) runs on this linker too.
///
/// The revisions' interfaces share names with different types, so one linker serves one
/// revision: [`Revision::of`] tells a component's.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    revision: Revision,
    get: fn(&mut T) -> Messaging<'_>,
) -> wasmtime::Result<()> {
    match revision {
        Revision::Feb2024 => ServicebusGuest::add_to_linker::<T, HasMessaging>(linker, get),
        Revision::Dec2024 => wit_interface::dec2024::ServicebusGuest::add_to_linker::<T, HasMessaging>(linker, get),
    }
}
