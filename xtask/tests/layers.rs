//! The client and the host are in layers: no module imports a module that imports it back.
//!
//! The other crates are not checked yet: the emulator's children reach for their parents'
//! items (`connection::link` uses `super::`...), and the small crates share an inline module
//! with their root. A crate joins the list once it holds.

use std::path::Path;

use xtask::layers::{ModuleGraph, circles, module_graph};

const LAYERED: [&str; 3] = ["amqp-servicebus", "amqp-ws", "host-runtime"];

fn graph(name: &str) -> ModuleGraph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates").join(name).join("src");
    module_graph(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()))
}

#[test]
fn no_module_of_a_layered_crate_imports_a_module_that_imports_it_back() {
    let mut found = Vec::new();
    for name in LAYERED {
        found.extend(circles(&graph(name)).into_iter().map(|c| format!("{name}: {c}")));
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_scan_sees_child_modules_and_imports_of_the_crates_own_modules() {
    let client = graph("amqp-servicebus");
    assert!(client["receiver"].contains("receiver::link"), "{client:?}");
    assert!(client["sender"].contains("connection"), "{client:?}");
    let host = graph("host-runtime");
    assert!(host["messaging::ops"].contains("delivery"), "{host:?}");
    assert!(host["messaging::dec2024"].contains("messaging::call"), "{host:?}");
    assert!(host["worker"].contains("instance"), "{host:?}");
}
