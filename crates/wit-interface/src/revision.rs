//! Which revision of `wasi:messaging@0.2.0-draft` a component targets, told from its exports,
//! and whether its imports are all of that revision.
//!
//! The two revisions share the package label, and one interface name (`producer`) with
//! different types, so the export decides: `messaging-guest` is the February 2024 draft,
//! `incoming-handler` the December 2024 revision. An import that only the other revision has
//! is a mix, refused by name (linking it would fail later with a type error that names
//! neither revision).

use std::fmt;

use crate::names;

/// A revision of `wasi:messaging@0.2.0-draft`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revision {
    /// The February 2024 draft: `configure()` and `handler(list<message>)`, `message` a record.
    Feb2024,
    /// The December 2024 revision (upstream commit 4ee59bb): `incoming-handler.handle(message)`,
    /// `message` a resource.
    Dec2024,
}

/// Why a component is not a guest of either revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    /// It exports neither revision's handler.
    #[error(
        "it exports neither {feb} (the February 2024 draft) nor {dec} (the December 2024 revision)",
        feb = names::MESSAGING_GUEST,
        dec = names::INCOMING_HANDLER
    )]
    NoHandler,
    /// It exports both revisions' handlers.
    #[error(
        "it exports both {feb} and {dec}: a guest targets one revision of wasi:messaging",
        feb = names::MESSAGING_GUEST,
        dec = names::INCOMING_HANDLER
    )]
    BothHandlers,
    /// It exports one revision's handler and imports what only the other revision has.
    #[error(
        "it exports the {revision}'s handler but imports {} of the {other}: build it against one revision's WIT",
        offending.join(", "),
        other = revision.other()
    )]
    Mixed {
        /// The revision its export names.
        revision: Revision,
        /// The other revision's imports.
        offending: Vec<String>,
    },
    /// It imports what the host does not provide.
    #[error("it imports {} that this host does not provide", unknown.join(", "))]
    Unknown {
        /// Those imports.
        unknown: Vec<String>,
    },
}

impl Revision {
    /// The revision a component with these imports and exports targets, if its imports are all
    /// of that revision (or WASI 0.2).
    pub fn of<'a>(
        imports: impl IntoIterator<Item = &'a str>,
        exports: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, WorldError> {
        let exports: Vec<&str> = exports.into_iter().collect();
        let feb = exports.contains(&names::MESSAGING_GUEST);
        let dec = exports.contains(&names::INCOMING_HANDLER);
        let revision = match (feb, dec) {
            (true, true) => return Err(WorldError::BothHandlers),
            (true, false) => Self::Feb2024,
            (false, true) => Self::Dec2024,
            (false, false) => return Err(WorldError::NoHandler),
        };
        let imports: Vec<&str> = imports.into_iter().collect();
        let offending: Vec<String> = imports
            .iter()
            .filter(|i| !revision.provides(i) && revision.other().provides(i))
            .map(|i| i.to_string())
            .collect();
        if !offending.is_empty() {
            return Err(WorldError::Mixed { revision, offending });
        }
        let unknown: Vec<String> = imports.iter().filter(|i| !revision.provides(i)).map(|i| i.to_string()).collect();
        if !unknown.is_empty() {
            return Err(WorldError::Unknown { unknown });
        }
        Ok(revision)
    }

    /// The other revision.
    pub fn other(self) -> Self {
        match self {
            Self::Feb2024 => Self::Dec2024,
            Self::Dec2024 => Self::Feb2024,
        }
    }

    /// The interface a guest of this revision exports.
    pub fn export(self) -> &'static str {
        match self {
            Self::Feb2024 => names::MESSAGING_GUEST,
            Self::Dec2024 => names::INCOMING_HANDLER,
        }
    }

    /// The interfaces beside WASI 0.2 the host provides to a guest of this revision.
    pub fn imports(self) -> &'static [&'static str] {
        match self {
            Self::Feb2024 => &names::FEB2024_IMPORTS,
            Self::Dec2024 => &names::DEC2024_IMPORTS,
        }
    }

    /// Whether the host provides `import` to a guest of this revision.
    pub fn provides(self, import: &str) -> bool {
        self.imports().contains(&import) || names::WASI_IMPORT_PREFIXES.iter().any(|p| import.starts_with(p))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Feb2024 => "February 2024 draft",
            Self::Dec2024 => "December 2024 revision",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASI: &str = "wasi:io/streams@0.2.6";

    #[test]
    fn the_export_decides_the_revision() {
        let feb = Revision::of([names::MESSAGING_TYPES, names::PRODUCER, WASI], [names::MESSAGING_GUEST]);
        assert_eq!(feb, Ok(Revision::Feb2024));
        let dec = Revision::of([names::TYPES, names::PRODUCER, names::CONFIG_STORE], [names::INCOMING_HANDLER]);
        assert_eq!(dec, Ok(Revision::Dec2024));
        // The shared names are each revision's own.
        assert_eq!(Revision::of([names::PRODUCER], [names::INCOMING_HANDLER]), Ok(Revision::Dec2024));
    }

    #[test]
    fn a_mix_names_the_other_revisions_imports() {
        let mixed = Revision::of([names::TYPES, names::CONSUMER, names::SETTLEMENT], [names::INCOMING_HANDLER]);
        let Err(e @ WorldError::Mixed { .. }) = mixed else { panic!("{mixed:?}") };
        assert_eq!(
            e,
            WorldError::Mixed {
                revision: Revision::Dec2024,
                offending: vec![names::CONSUMER.into(), names::SETTLEMENT.into()]
            }
        );
        let text = e.to_string();
        assert!(text.contains("December 2024 revision's handler"), "{text}");
        assert!(text.contains(names::CONSUMER) && text.contains("February 2024 draft"), "{text}");
        let mixed = Revision::of([names::REQUEST_REPLY], [names::MESSAGING_GUEST]);
        assert!(matches!(mixed, Err(WorldError::Mixed { revision: Revision::Feb2024, .. })), "{mixed:?}");
    }

    #[test]
    fn both_handlers_no_handler_and_unknown_imports_are_refused() {
        assert_eq!(Revision::of([], [names::MESSAGING_GUEST, names::INCOMING_HANDLER]), Err(WorldError::BothHandlers));
        assert_eq!(Revision::of([], ["wasi:http/incoming-handler@0.2.0"]), Err(WorldError::NoHandler));
        assert_eq!(
            Revision::of(["wasi:keyvalue/store@0.2.0-draft"], [names::INCOMING_HANDLER]),
            Err(WorldError::Unknown { unknown: vec!["wasi:keyvalue/store@0.2.0-draft".into()] })
        );
    }
}
