//! Node.js projects installed into the target directory: the official Azure SDK for the
//! interop tests, and componentize-js for the JavaScript guest.
//!
//! [`ensure_npm_project`] copies a project's `package.json` and `package-lock.json` into
//! `<target>/<name>` and runs `npm ci` there, once: a stamp records the lock file that was
//! installed, and a file lock serializes concurrent callers. The lock file pins every package,
//! so CI installs what was tested.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::paths;

/// Where the pinned Node.js project of the interop tests lives, from the repository root.
pub const NODE_PROJECT: &str = "crates/servicebus-emulator/tests/node";

/// The `node_modules` directory with the SDK installed, installing it if needed.
pub fn ensure_node_modules() -> Result<PathBuf> {
    ensure_npm_project(NODE_PROJECT, "node-sdk")
}

/// The `node_modules` of the npm project at `project` (from the repository root), installed
/// into `<target>/<name>` if it is not there with the same lock file.
pub fn ensure_npm_project(project: &str, name: &str) -> Result<PathBuf> {
    let (target, _lock) = paths::lock_in_target(name)?;

    let project = paths::repo_root().join(project);
    let dir = target.join(name);
    let modules = dir.join("node_modules");
    let stamp = dir.join("installed.stamp");
    let read = |file: &str| {
        let path = project.join(file);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (manifest, locked) = (read("package.json")?, read("package-lock.json")?);
    let wanted = format!("{manifest}\n{locked}");
    if modules.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(modules);
    }
    eprintln!("installing the npm packages of {} into {}", project.display(), dir.display());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("package.json"), &manifest)?;
    fs::write(dir.join("package-lock.json"), &locked)?;
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    let status = Command::new(&npm)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .with_context(|| format!("running `{npm} ci` (are Node.js and npm installed?)"))?;
    if !status.success() {
        bail!("`{npm} ci` in {} failed ({status})", dir.display());
    }
    fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(modules)
}

/// The `node` binary (`$NODE`, else `node` on the path).
pub fn node() -> String {
    std::env::var("NODE").unwrap_or_else(|_| "node".into())
}
