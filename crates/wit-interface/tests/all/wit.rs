//! The WIT in `wit/` parses and both worlds resolve to what the contract says.

use std::collections::BTreeSet;

use wit_interface::names;
use wit_parser::{Resolve, WorldItem, WorldKey};

/// Parses `wit/` (with `deps/`) the way `bindgen!` does.
pub(crate) fn resolve() -> (Resolve, wit_parser::PackageId) {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(xtask::paths::wit_dir()).expect("wit/ parses and resolves");
    (resolve, pkg)
}

/// The interface names a world imports and exports, fully qualified with versions.
pub(crate) fn world_interfaces(resolve: &Resolve, world: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (pkg_name, world_name) = world.split_once('/').unwrap();
    let world_id = resolve
        .worlds
        .iter()
        .find(|(_, w)| {
            w.name == world_name && w.package.map(|p| resolve.packages[p].name.to_string()).as_deref() == Some(pkg_name)
        })
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("world {world} is in wit/"));
    let names = |items: &wit_parser::IndexMap<WorldKey, WorldItem>| {
        items
            .iter()
            .filter_map(|(key, item)| match item {
                WorldItem::Interface { .. } => Some(resolve.name_world_key(key)),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
    };
    let w = &resolve.worlds[world_id];
    (names(&w.imports), names(&w.exports))
}

#[test]
fn the_root_package_is_the_extension() {
    let (resolve, pkg) = resolve();
    assert_eq!(resolve.packages[pkg].name.to_string(), "servicebus:messaging@0.1.0");
}

#[test]
fn the_draft_world_has_the_feb_2024_shape() {
    let (resolve, _) = resolve();
    let (imports, exports) = world_interfaces(&resolve, "wasi:messaging@0.2.0-draft/messaging");
    let expected: BTreeSet<String> = names::DRAFT_IMPORTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(imports, expected);
    assert_eq!(exports, BTreeSet::from([names::MESSAGING_GUEST.to_string()]));
}

#[test]
fn the_servicebus_world_is_the_draft_plus_the_extension() {
    let (resolve, _) = resolve();
    let (imports, exports) = world_interfaces(&resolve, "servicebus:messaging@0.1.0/servicebus-guest");
    let mut expected: BTreeSet<String> = names::DRAFT_IMPORTS.iter().map(|s| s.to_string()).collect();
    expected.extend(names::EXTENSION_IMPORTS.iter().map(|s| s.to_string()));
    assert_eq!(imports, expected);
    assert_eq!(exports, BTreeSet::from([names::MESSAGING_GUEST.to_string()]));
}

#[test]
fn the_draft_functions_have_the_draft_signatures() {
    // The draft's functions, exactly: a component built against the draft must link.
    let (resolve, _) = resolve();
    let iface = |name: &str| {
        resolve
            .interfaces
            .iter()
            .find(|(_, i)| {
                i.name.as_deref() == Some(name)
                    && i.package.map(|p| resolve.packages[p].name.name.as_str()) == Some("messaging")
                    && i.package.map(|p| resolve.packages[p].name.namespace.as_str()) == Some("wasi")
            })
            .map(|(_, i)| i)
            .unwrap_or_else(|| panic!("interface {name}"))
    };
    let funcs = |name: &str| iface(name).functions.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(funcs("producer"), BTreeSet::from(["send".to_string()]));
    assert_eq!(
        funcs("consumer"),
        [
            "subscribe-try-receive",
            "subscribe-receive",
            "update-guest-configuration",
            "complete-message",
            "abandon-message"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    assert_eq!(funcs("messaging-guest"), BTreeSet::from(["configure".to_string(), "handler".to_string()]));
    assert_eq!(
        funcs("messaging-types"),
        BTreeSet::from(["[static]client.connect".to_string(), "[static]error.trace".to_string()])
    );
    let types = iface("messaging-types").types.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        types,
        ["client", "error", "channel", "guest-configuration", "format-spec", "message"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
