//! The module graph of a crate, read from its sources, and the import circles in it.
//!
//! Every library crate is kept in layers: no module imports a module that imports it back
//! (`xtask/tests/layers.rs` checks each). An import is a `crate::` or `super::` path, or a
//! `mod` declaration; unit tests (a `#[cfg(test)] mod tests` at the end of a file) are left
//! out, since they import their own module's items.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`receiver::link`; `lib` for the root) → the modules it imports.
pub type ModuleGraph = BTreeMap<String, BTreeSet<String>>;

/// The module graph of the crate whose sources are under `src`.
pub fn module_graph(src: &Path) -> std::io::Result<ModuleGraph> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let module_of = |path: &Path| {
        let rel = path.strip_prefix(src).unwrap_or(path).with_extension("");
        let rel = rel.to_string_lossy().replace('\\', "/");
        let rel = rel.strip_suffix("/mod").unwrap_or(&rel).to_string();
        rel.replace('/', "::")
    };
    let known: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    // The longest known module a path starts with (`connection::guard::Guarded` → `connection::guard`).
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| known.contains(m))
            .unwrap_or_else(|| "lib".into())
    };
    let mut graph = BTreeMap::new();
    for file in &files {
        let name = module_of(file);
        let text = std::fs::read_to_string(file)?;
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (prefix, base) in [("crate::", String::new()), ("super::", parent(&name))] {
                for (at, _) in line.match_indices(prefix) {
                    if line[..at].ends_with(':') {
                        continue; // The middle of a longer path, seen from its start.
                    }
                    let rest = &line[at + prefix.len()..];
                    let path: String =
                        rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    let full = if base.is_empty() { path } else { format!("{base}::{path}") };
                    deps.insert(resolve(&climb(full.trim_end_matches(':'))));
                }
            }
            if let Some(child) = line.split("mod ").nth(1).and_then(|r| r.strip_suffix(';'))
                && (line.starts_with("mod ") || line.starts_with("pub"))
            {
                deps.insert(if name == "lib" || name == "main" {
                    child.to_string()
                } else {
                    format!("{name}::{child}")
                });
            }
        }
        deps.remove(&name);
        graph.insert(name, deps);
    }
    Ok(graph)
}

/// `a::b::super::c` → `a::c`: each `super` takes a step up.
fn climb(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split("::") {
        if part == "super" {
            parts.pop();
        } else {
            parts.push(part);
        }
    }
    parts.join("::")
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string())
}

/// Each import `module -> dep` from which `module` can be reached again, as
/// `"module -> dep -> ... -> module"`.
pub fn circles(graph: &ModuleGraph) -> Vec<String> {
    let mut circles = Vec::new();
    for (module, deps) in graph {
        for dep in deps {
            let mut seen = BTreeSet::new();
            let mut stack = vec![dep.clone()];
            while let Some(m) = stack.pop() {
                if m == *module {
                    circles.push(format!("{module} -> {dep} -> ... -> {module}"));
                    break;
                }
                if seen.insert(m.clone()) {
                    stack.extend(graph.get(&m).into_iter().flatten().cloned());
                }
            }
        }
    }
    circles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circle_is_found_and_a_layer_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        std::fs::create_dir(src.join("a")).unwrap();
        std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
        std::fs::write(src.join("a/mod.rs"), "mod inner;\nuse crate::b::B;\n").unwrap();
        std::fs::write(src.join("a/inner.rs"), "use super::super::b;\n").unwrap();
        std::fs::write(src.join("b.rs"), "pub struct B;\n#[cfg(test)]\nmod tests {\n use crate::a::inner;\n}\n")
            .unwrap();
        let graph = module_graph(src).unwrap();
        assert_eq!(graph["a"], BTreeSet::from(["a::inner".to_string(), "b".to_string()]));
        assert!(circles(&graph).is_empty(), "{graph:?}");

        std::fs::write(src.join("b.rs"), "use crate::a::inner::X;\n").unwrap();
        std::fs::write(src.join("a/inner.rs"), "pub struct X;\nuse super::Y;\n").unwrap();
        let graph = module_graph(src).unwrap();
        let found = circles(&graph);
        assert!(found.contains(&"a::inner -> a -> ... -> a::inner".to_string()), "{found:?}");
    }
}
