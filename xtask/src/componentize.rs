//! Guests in Python and JavaScript: the same handler as `guests/sample-handler`, built from
//! upstream's WIT alone (`wit/dec2024`, world `messaging-core`) by each language's tool, which
//! is installed into the target directory (pinned, as the interop tests' SDKs are):
//! componentize-py from PyPI into a venv, componentize-js from npm (`guests/js/package-lock.json`).
//!
//! Each guest is rebuilt only when its sources, the WIT or its tool's pin changed (a stamp per
//! guest, under the caller's lock on the guests).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{guests, node, paths, python};

/// componentize-py, pinned.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The directory of the WIT these guests are built from, from the repository root.
const WIT: &str = "wit/dec2024";
/// The world they target: upstream's, without our extension.
const WORLD: &str = "wasi:messaging/messaging-core@0.2.0-draft";

/// The language of a guest, which says how it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `app.py`, built by componentize-py.
    Python,
    /// `app.js`, built by componentize-js.
    JavaScript,
}

/// A guest built by a componentize tool.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    /// Its component's name (`target/components/<name>.wasm`).
    pub name: &'static str,
    /// Its sources, from the repository root.
    pub dir: &'static str,
    /// Its language.
    pub language: Language,
}

/// The guests in other languages than Rust.
pub const GUESTS: [Guest; 2] = [
    Guest { name: "sample-handler-py", dir: "guests/python", language: Language::Python },
    Guest { name: "sample-handler-js", dir: "guests/js", language: Language::JavaScript },
];

/// Builds `guest` into `out_dir` unless it is up to date; returns its component.
pub fn ensure_built(guest: &Guest, target: &Path, out_dir: &Path) -> Result<PathBuf> {
    let root = paths::repo_root();
    let (sources, wit) = (root.join(guest.dir), root.join(WIT));
    let tool = match guest.language {
        Language::Python => COMPONENTIZE_PY.to_string(),
        Language::JavaScript => {
            std::fs::read_to_string(sources.join("package-lock.json")).context("reading guests/js/package-lock.json")?
        }
    };
    let fingerprint = guests::fingerprint(&[sources.clone(), wit.clone()], tool.as_bytes())?;
    let component = out_dir.join(format!("{}.wasm", guest.name));
    let stamp = target.join(format!("{}.stamp", guest.name));
    if guests::is_built(&stamp, &fingerprint, std::iter::once(&component))? {
        return Ok(component);
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    eprintln!("building {} ({:?}) from {}", guest.name, guest.language, guest.dir);
    let mut command = match guest.language {
        Language::Python => {
            let python = python::ensure_venv_with("guest-tools-python", &[COMPONENTIZE_PY])?;
            // componentize-py imports app.py to snapshot it, and leaves a __pycache__ beside
            // it: it runs on a copy, so that the source tree stays as it is.
            let copy = target.join("guest-sources").join(guest.name);
            copy_sources(&sources, &copy)?;
            let mut c = Command::new(python.with_file_name("componentize-py"));
            c.arg("-d").arg(&wit).args(["-w", WORLD, "componentize", "-p"]).arg(&copy).arg("app");
            c
        }
        Language::JavaScript => {
            let modules = node::ensure_npm_project(guest.dir, "guest-tools-js")?;
            let mut c = Command::new(node::node());
            c.arg(modules.join("@bytecodealliance/componentize-js/src/cli.js"))
                .arg(sources.join("app.js"))
                .arg("-w")
                .arg(&wit)
                .args(["-n", WORLD])
                // Guests have no network: without these it would import wasi:http for `fetch`.
                .args(["-d", "http", "fetch-event"]);
            c
        }
    };
    let status = command.arg("-o").arg(&component).status().with_context(|| format!("building {}", guest.name))?;
    if !status.success() {
        bail!("building {} failed ({status}); the tool's messages are above", guest.name);
    }
    guests::stamp(&stamp, &fingerprint)?;
    Ok(component)
}

/// Copies the files of `from` (not its directories) into a fresh `to`.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().expect("a file has a name");
            std::fs::copy(&path, to.join(name)).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}
