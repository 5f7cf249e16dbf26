//! The WIT in `wit/` and `wit/dec2024/` parses, each world resolves to what the contract
//! says, and the vendored upstream files are unchanged.

use std::collections::BTreeSet;

use wit_interface::names;
use wit_parser::{Resolve, WorldItem, WorldKey};

/// Parses `wit/` (with `deps/`) the way `bindgen!` does: the February 2024 draft.
pub(crate) fn resolve() -> (Resolve, wit_parser::PackageId) {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(xtask::paths::wit_dir()).expect("wit/ parses and resolves");
    (resolve, pkg)
}

/// Parses `wit/dec2024/` (with `deps/`): the December 2024 revision.
pub(crate) fn resolve_dec2024() -> (Resolve, wit_parser::PackageId) {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(xtask::paths::wit_dir().join("dec2024")).expect("wit/dec2024 parses and resolves");
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
    expected.insert(names::CONFIG_STORE.to_string());
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

#[test]
fn the_vendored_files_are_upstreams_byte_for_byte() {
    use sha2::Digest as _;
    let wit = xtask::paths::wit_dir();
    let readme = std::fs::read_to_string(wit.join("README.md")).unwrap();
    let rows: Vec<(&str, &str)> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells.len() == 4 && cells[1].ends_with(".wit") && cells[2].len() == 64).then(|| (cells[1], cells[2]))
        })
        .collect();
    assert_eq!(rows.len(), 7, "wit/README.md lists every vendored file with its hash");
    for (file, expected) in rows {
        let bytes = std::fs::read(wit.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), expected, "{file} differs from upstream's");
    }
    // Every file of the vendored packages is in the table.
    for dir in ["dec2024/deps/messaging", "deps/config"] {
        for entry in std::fs::read_dir(wit.join(dir)).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(readme.contains(&format!("`{name}`")), "{name} is vendored but not in wit/README.md");
        }
    }
}

#[test]
fn the_dec2024_worlds_have_upstreams_shape_and_ours_adds_the_extension() {
    let (resolve, pkg) = resolve_dec2024();
    assert_eq!(resolve.packages[pkg].name.to_string(), "servicebus:messaging@0.2.0");
    let (imports, exports) = world_interfaces(&resolve, "wasi:messaging@0.2.0-draft/messaging-core");
    assert_eq!(imports, BTreeSet::from([names::TYPES.to_string(), names::PRODUCER.to_string()]));
    assert_eq!(exports, BTreeSet::from([names::INCOMING_HANDLER.to_string()]));
    let (imports, exports) = world_interfaces(&resolve, "servicebus:messaging@0.2.0/servicebus-guest");
    let expected: BTreeSet<String> = names::DEC2024_IMPORTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(imports, expected);
    assert_eq!(exports, BTreeSet::from([names::INCOMING_HANDLER.to_string()]));
}

#[test]
fn the_feb2024_world_offers_config_too() {
    let (resolve, _) = resolve();
    let (imports, _) = world_interfaces(&resolve, "servicebus:messaging@0.1.0/servicebus-guest");
    let expected: BTreeSet<String> = names::FEB2024_IMPORTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(imports, expected);
}
