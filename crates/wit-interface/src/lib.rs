//! Host bindings for the two revisions of `wasi:messaging@0.2.0-draft` the host runs, each
//! with its Service Bus extension, generated from the WIT in the repository's `wit/`.
//!
//! Both revisions carry the same package label with different contents, so each has a WIT
//! directory of its own and a resolve of its own:
//! - the **February 2024 draft** (`wit/`, extension `servicebus:messaging@0.1.0`): the guest
//!   exports `messaging-guest` (`configure`, `handler(list<message>)`), `message` is a record;
//! - the **December 2024 revision** (`wit/dec2024/`, upstream's commit 4ee59bb vendored
//!   unchanged, extension `servicebus:messaging@0.2.0`): the guest exports
//!   `incoming-handler.handle(message)`, `message` is a resource ([`dec2024`]).
//!
//! [`Revision::of`] tells which one a component targets from its imports and exports.
//!
//! This crate does no I/O. It gives the host:
//! - the generated host traits and guest export wrappers of each revision;
//! - the Rust types behind the WIT resources ([`Client`], [`GuestError`], [`MessageState`],
//!   [`RequestOptions`]);
//! - the metadata keys of the contract in `docs/semantics.md` ([`metadata`]).
//!
//! # Layout
//! - `bindings`: the `bindgen!` output (private; re-exported below).
//! - [`resources`]: what each resource handle stands for on the host.
//! - [`metadata`]: system metadata keys, and how application keys stay apart from them.
//! - [`revision`]: which revision a component targets, and what it may import.
//!
//! # Worlds
//! - [`ServicebusGuest`] (`servicebus:messaging/servicebus-guest@0.1.0`): the February 2024
//!   draft's `messaging` world plus `settlement`, `sessions` and `wasi:config/store`.
//! - [`DraftGuest`] (`wasi:messaging/messaging@0.2.0-draft`): the draft alone. A
//!   component built for the draft by anyone else satisfies it, and runs on a
//!   linker made for [`ServicebusGuest`], which only adds imports.
//! - [`dec2024::ServicebusGuest`] (`servicebus:messaging/servicebus-guest@0.2.0`): upstream's
//!   `messaging-request-reply` world plus the extension and `wasi:config/store`; a component
//!   of upstream's `messaging-core` runs on its linker too.
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
pub mod revision;

pub use resources::{Client, ErrorKind, GuestError, MessageState, RequestOptions};
pub use revision::Revision;

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

    pub(crate) mod dec2024 {
        // Another resolve (`wit/dec2024`): its `wasi:messaging` is a different package of the
        // same name. What only touches the resource table is synchronous: a `message` getter
        // costs a table look-up, not a future.
        wasmtime::component::bindgen!({
            path: "../../wit/dec2024",
            world: "servicebus:messaging/servicebus-guest",
            imports: {
                "wasi:messaging/producer.send": async | trappable,
                "wasi:messaging/request-reply.request": async | trappable,
                "wasi:messaging/request-reply.reply": async | trappable,
                "servicebus:messaging/settlement": async | trappable,
                "servicebus:messaging/sessions": async | trappable,
                default: trappable,
            },
            exports: { default: async },
            with: {
                "wasi:messaging/types.client": crate::resources::Client,
                "wasi:messaging/types.message": crate::resources::MessageState,
                "wasi:messaging/request-reply.request-options": crate::resources::RequestOptions,
                "wasi:config/store": super::servicebus::wasi::config::store,
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

/// `wasi:config/store@0.2.0-draft`, offered to guests of both revisions.
pub mod config_store {
    pub use crate::bindings::servicebus::wasi::config::store::*;
}

/// The WIT `message` record.
pub use wasi_messaging::messaging_types::{FormatSpec, GuestConfiguration, Message};

/// The December 2024 revision (`wit/dec2024`): upstream's `wasi:messaging` at commit 4ee59bb
/// and the extension `servicebus:messaging@0.2.0`.
pub mod dec2024 {
    /// The `servicebus:messaging/servicebus-guest@0.2.0` world: bindings and `add_to_linker`.
    pub use crate::bindings::dec2024::{ServicebusGuest, ServicebusGuestPre};

    /// Upstream's interfaces: `types`, `producer`, `request-reply`.
    pub mod wasi_messaging {
        pub use crate::bindings::dec2024::wasi::messaging::{producer, request_reply, types};
    }

    /// The guest's export, `incoming-handler`.
    pub use crate::bindings::dec2024::exports::wasi::messaging::incoming_handler;

    /// The extension's `settlement` interface.
    pub mod settlement {
        pub use crate::bindings::dec2024::servicebus::messaging::settlement::*;
    }

    /// The extension's `sessions` interface.
    pub mod sessions {
        pub use crate::bindings::dec2024::servicebus::messaging::sessions::*;
    }

    /// Upstream's `error` variant.
    pub use crate::bindings::dec2024::wasi::messaging::types::Error;
}

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

    /// `wasi:config/store`, offered to guests of both revisions.
    pub const CONFIG_STORE: &str = "wasi:config/store@0.2.0-draft";

    /// The December 2024 revision's `wasi:messaging/types`.
    pub const TYPES: &str = "wasi:messaging/types@0.2.0-draft";
    /// The December 2024 revision's `wasi:messaging/request-reply`.
    pub const REQUEST_REPLY: &str = "wasi:messaging/request-reply@0.2.0-draft";
    /// The December 2024 revision's export, `wasi:messaging/incoming-handler`.
    pub const INCOMING_HANDLER: &str = "wasi:messaging/incoming-handler@0.2.0-draft";
    /// `servicebus:messaging/settlement@0.2.0`, the December 2024 revision's extension import.
    pub const SETTLEMENT_DEC2024: &str = "servicebus:messaging/settlement@0.2.0";
    /// `servicebus:messaging/sessions@0.2.0`.
    pub const SESSIONS_DEC2024: &str = "servicebus:messaging/sessions@0.2.0";
    /// What a guest of the December 2024 revision may import besides WASI 0.2, each optional.
    /// (Its `producer` has the February draft's name, not its types.)
    pub const DEC2024_IMPORTS: [&str; 6] =
        [TYPES, PRODUCER, REQUEST_REPLY, SETTLEMENT_DEC2024, SESSIONS_DEC2024, CONFIG_STORE];
    /// What a guest of the February 2024 draft may import besides WASI 0.2.
    pub const FEB2024_IMPORTS: [&str; 6] = [MESSAGING_TYPES, PRODUCER, CONSUMER, SETTLEMENT, SESSIONS, CONFIG_STORE];
    /// The WASI 0.2 packages a guest may import besides messaging (a Rust guest's std imports some).
    pub const WASI_IMPORT_PREFIXES: [&str; 6] =
        ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:sockets/"];
}
