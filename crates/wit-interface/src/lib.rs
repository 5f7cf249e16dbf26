//! Host bindings for `wasi:messaging@0.2.0-draft` and the Service Bus extension
//! `servicebus:messaging@0.1.0`, generated from the WIT in the repository's `wit/`.
//!
//! This crate does no I/O. It gives the host:
//! - the generated host traits and guest export wrappers for both worlds,
//!   sharing one set of Rust types;
//! - the Rust types behind the WIT resources ([`Client`], [`GuestError`]);
//! - the metadata keys of the contract in `docs/semantics.md` ([`metadata`]).
//!
//! # Layout
//! - `bindings`: the `bindgen!` output (private; re-exported below).
//! - [`resources`]: what a `client` and an `error` handle stand for on the host.
//! - [`metadata`]: system metadata keys, and how application keys stay apart from them.
//!
//! # Worlds
//! - [`ServicebusGuest`] (`servicebus:messaging/servicebus-guest`): the draft's
//!   `messaging` world plus the `settlement` and `sessions` imports. The host links this one.
//! - [`DraftGuest`] (`wasi:messaging/messaging@0.2.0-draft`): the draft alone. A
//!   component built for the draft by anyone else satisfies it, and runs on a
//!   linker made for [`ServicebusGuest`], which only adds an import.
//!
//! # Example
//! ```
//! use wit_interface::{GuestError, ErrorKind, metadata};
//!
//! let e = GuestError::new(ErrorKind::LockLost, "the lock on message 7 expired");
//! assert_eq!(e.kind(), ErrorKind::LockLost);
//! assert!(metadata::is_host_assigned(metadata::DELIVERY_ID));
//! assert_eq!(metadata::classify("order-id"), metadata::Key::Application("order-id"));
//! ```

pub mod metadata;
pub mod resources;

pub use resources::{Client, ErrorKind, GuestError};

#[allow(missing_docs, unreachable_pub)] // Generated code; documented by the WIT.
mod bindings {
    //! The generated code. One `bindgen!` for our world; the draft world reuses
    //! its interface modules through `with`, so both share one set of types.

    pub(crate) mod servicebus {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "servicebus:messaging/servicebus-guest",
            imports: { default: async | trappable },
            exports: { default: async },
            with: {
                "wasi:messaging/messaging-types.client": crate::resources::Client,
                "wasi:messaging/messaging-types.error": crate::resources::GuestError,
            },
        });
    }

    pub(crate) mod draft {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "wasi:messaging/messaging@0.2.0-draft",
            imports: { default: async | trappable },
            exports: { default: async },
            with: {
                "wasi:messaging/messaging-types": super::servicebus::wasi::messaging::messaging_types,
                "wasi:messaging/producer": super::servicebus::wasi::messaging::producer,
                "wasi:messaging/consumer": super::servicebus::wasi::messaging::consumer,
            },
        });
    }
}

/// The `servicebus:messaging/servicebus-guest` world: bindings and `add_to_linker`.
pub use bindings::servicebus::{ServicebusGuest, ServicebusGuestPre};

/// The `wasi:messaging/messaging@0.2.0-draft` world, for components built for the draft alone.
pub use bindings::draft::{Messaging as DraftGuest, MessagingPre as DraftGuestPre};

/// The draft's interfaces: `messaging-types`, `producer`, `consumer`, `messaging-guest`.
pub mod wasi_messaging {
    pub use crate::bindings::servicebus::exports::wasi::messaging::messaging_guest;
    pub use crate::bindings::servicebus::wasi::messaging::{consumer, messaging_types, producer};
}

/// The extension's `settlement` interface.
pub mod settlement {
    pub use crate::bindings::servicebus::servicebus::messaging::settlement::*;
}

/// The extension's `sessions` interface.
pub mod sessions {
    pub use crate::bindings::servicebus::servicebus::messaging::sessions::*;
}

/// The WIT `message` record.
pub use wasi_messaging::messaging_types::{FormatSpec, GuestConfiguration, Message};

/// Fully qualified names of the WIT interfaces, as they appear in a component's imports and exports.
pub mod names {
    /// `wasi:messaging/messaging-types`.
    pub const MESSAGING_TYPES: &str = "wasi:messaging/messaging-types@0.2.0-draft";
    /// `wasi:messaging/producer`.
    pub const PRODUCER: &str = "wasi:messaging/producer@0.2.0-draft";
    /// `wasi:messaging/consumer`.
    pub const CONSUMER: &str = "wasi:messaging/consumer@0.2.0-draft";
    /// `wasi:messaging/messaging-guest`, the guest's export.
    pub const MESSAGING_GUEST: &str = "wasi:messaging/messaging-guest@0.2.0-draft";
    /// `servicebus:messaging/settlement`, the extension import.
    pub const SETTLEMENT: &str = "servicebus:messaging/settlement@0.1.0";
    /// `servicebus:messaging/sessions`, the extension import for session channels.
    pub const SESSIONS: &str = "servicebus:messaging/sessions@0.1.0";
    /// The extension's imports, each optional.
    pub const EXTENSION_IMPORTS: [&str; 2] = [SETTLEMENT, SESSIONS];
    /// The draft world's imports.
    pub const DRAFT_IMPORTS: [&str; 3] = [MESSAGING_TYPES, PRODUCER, CONSUMER];
    /// The WASI 0.2 packages a guest may import besides messaging (a Rust guest's std imports some).
    pub const WASI_IMPORT_PREFIXES: [&str; 6] =
        ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:sockets/"];
}
