//! The `wasi:messaging` imports on Service Bus, for any Wasmtime embedder, shaped as
//! Wasmtime's own WASI crates are:
//! - [`MessagingCtx`], one per process (built with [`MessagingCtx::builder`]): the named
//!   connections and their cached links, the channels a guest may send to, the counters;
//! - [`CallCtx`], one per handler call: the channel, the deliveries given to the call (and those
//!   it pulls), the last error;
//! - [`Messaging`], a view borrowing both and the store's `ResourceTable`, on which the imports
//!   are implemented; [`add_to_linker`] adds them to a linker of any store type.
//!
//! The imports themselves are in `imports`; settling goes through [`crate::delivery`].
//! `docs/semantics.md` is the contract they keep.

mod call;
mod ctx;
mod imports;

use wasmtime::component::{HasData, Linker};
use wit_interface::ServicebusGuest;

pub use call::{CallCtx, Messaging};
pub use ctx::{BuildError, MessagingCtx, MessagingCtxBuilder};

/// The [`HasData`] of [`Messaging`], for the generated `add_to_linker` functions.
struct HasMessaging;

impl HasData for HasMessaging {
    type Data<'a> = Messaging<'a>;
}

/// Adds the imports of `servicebus:messaging/servicebus-guest` (the draft's `wasi:messaging`
/// interfaces and our `settlement` extension) to `linker`; `get` finds the view in a store's
/// data. A guest of the draft alone runs on this linker too: it only imports less.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Messaging<'_>,
) -> wasmtime::Result<()> {
    ServicebusGuest::add_to_linker::<T, HasMessaging>(linker, get)
}
