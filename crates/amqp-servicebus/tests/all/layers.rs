//! The crate's modules form layers: no module imports a module that imports it back.
//! Read from the sources (unit tests aside), so a new import that closes a circle fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`receiver::link`) → the modules it names (`crate::x`, `super::y`, `mod z;`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let module_of = |path: &Path| {
        let rel = path.strip_prefix(&src).expect("under src").with_extension("");
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
        let text = std::fs::read_to_string(file).expect("a source file is readable");
        // Unit tests (at the end of a file) import their own module's items.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (prefix, base) in [("crate::", String::new()), ("super::", parent(&name))] {
                for (at, _) in line.match_indices(prefix) {
                    let rest = &line[at + prefix.len()..];
                    let path: String =
                        rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    let full = if base.is_empty() { path } else { format!("{base}::{path}") };
                    deps.insert(resolve(full.trim_end_matches(':')));
                }
            }
            if let Some(child) = line.split("mod ").nth(1).and_then(|r| r.strip_suffix(';'))
                && (line.starts_with("mod ") || line.starts_with("pub"))
            {
                deps.insert(if name == "lib" { child.to_string() } else { format!("{name}::{child}") });
            }
        }
        deps.remove(&name);
        graph.insert(name, deps);
    }
    graph
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string())
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = imports();
    assert!(
        graph.get("receiver").is_some_and(|d| d.contains("receiver::link")),
        "the scan sees child modules: {graph:?}"
    );
    assert!(graph.get("sender").is_some_and(|d| d.contains("connection")), "the scan sees crate imports: {graph:?}");
    let mut circles = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            // Does `dep` lead back to `module`?
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
    assert!(circles.is_empty(), "import circles:\n{}\n{graph:#?}", circles.join("\n"));
}
