//! Building the guests: the Rust ones (`guests/`, a workspace of its own) for `wasm32-wasip2`,
//! and those in Python and JavaScript ([`crate::componentize`]).
//!
//! [`ensure_built`] hashes every source file a build depends on (for the Rust guests: under
//! `guests/` and `wit/`, plus the `rustc` version) and rebuilds only when the hash differs
//! from the one recorded by the last successful build. A file lock serializes concurrent
//! callers, so test binaries running in parallel build once and then all read the result.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::paths;

/// The guest target triple.
pub const TARGET: &str = "wasm32-wasip2";

/// The built components, by guest (package) name.
#[derive(Debug, Clone)]
pub struct Components {
    by_name: BTreeMap<String, PathBuf>,
}

impl Components {
    /// The component file of the guest `name`, e.g. `sample-guest` (a Rust guest's package
    /// name) or `sample-handler-py`.
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        self.by_name.get(name).cloned().with_context(|| {
            format!(
                "no guest named '{name}'; the guests are: {}",
                self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Every guest and its component file.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.by_name.iter().map(|(n, p)| (n.as_str(), p.as_path()))
    }
}

/// Builds the guests if anything changed since the last build, and returns their components.
pub fn ensure_built() -> Result<Components> {
    let (target, lock) = paths::lock_in_target("guests")?;

    let names = guest_names()?;
    let rustc_version = Command::new(rustc()).arg("-vV").output().context("running rustc -vV")?;
    let fingerprint = fingerprint(&[paths::guests_dir(), paths::wit_dir()], &rustc_version.stdout)?;
    let out_dir = paths::components_dir();
    let mut by_name: BTreeMap<String, PathBuf> =
        names.iter().map(|n| (n.clone(), out_dir.join(format!("{n}.wasm")))).collect();
    if !is_built(&target.join("guests.stamp"), &fingerprint, by_name.values())? {
        build(&names, &out_dir)?;
        stamp(&target.join("guests.stamp"), &fingerprint)?;
    }
    for guest in crate::componentize::GUESTS {
        by_name.insert(guest.name.to_string(), crate::componentize::ensure_built(&guest, &target, &out_dir)?);
    }
    drop(lock);
    Ok(Components { by_name })
}

/// Whether the last build recorded in `stamp` was of `fingerprint`, and its `outputs` are there.
pub(crate) fn is_built<'a>(
    stamp: &Path,
    fingerprint: &str,
    mut outputs: impl Iterator<Item = &'a PathBuf>,
) -> Result<bool> {
    Ok(fs::read_to_string(stamp).is_ok_and(|s| s.trim() == fingerprint) && outputs.all(|p| p.is_file()))
}

/// Records that a build of `fingerprint` succeeded.
pub(crate) fn stamp(stamp: &Path, fingerprint: &str) -> Result<()> {
    fs::write(stamp, fingerprint).with_context(|| format!("writing {}", stamp.display()))
}

/// The package names of the guests: each directory under `guests/` with a `Cargo.toml`.
pub fn guest_names() -> Result<Vec<String>> {
    let dir = paths::guests_dir();
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        names.push(package_name(&text).with_context(|| format!("no package name in {}", manifest.display()))?);
    }
    names.sort();
    if names.is_empty() {
        bail!("no guests found under {}", dir.display());
    }
    Ok(names)
}

/// The `name = "..."` of a manifest's `[package]` table.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_string());
        }
    }
    None
}

fn build(names: &[String], out_dir: &Path) -> Result<()> {
    ensure_target_installed()?;
    let target_dir = paths::target_dir().join("guests");
    let manifest = paths::guests_dir().join("Cargo.toml");
    eprintln!("building guests ({}) for {TARGET}", names.join(", "));
    let status = cargo()
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .context("running cargo to build the guests")?;
    if !status.success() {
        bail!("building the guests failed ({status}); the compiler's messages are above");
    }
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for name in names {
        let built = target_dir.join(TARGET).join("release").join(format!("{}.wasm", name.replace('-', "_")));
        let placed = out_dir.join(format!("{name}.wasm"));
        fs::copy(&built, &placed).with_context(|| format!("copying {} to {}", built.display(), placed.display()))?;
    }
    Ok(())
}

/// Adds the `wasm32-wasip2` target with rustup when the toolchain lacks it.
pub fn ensure_target_installed() -> Result<()> {
    let output = Command::new(rustc()).args(["--print", "sysroot"]).output().context("running rustc")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        return Ok(());
    }
    eprintln!("the {TARGET} target is missing; adding it with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("running `rustup target add wasm32-wasip2` (is rustup installed?)")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed ({status})");
    }
    Ok(())
}

/// A hash of what a build depends on: the files under `roots`, and `extra` (a tool's version).
pub(crate) fn fingerprint(roots: &[PathBuf], extra: &[u8]) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(extra);
    for root in roots {
        let mut files = Vec::new();
        collect_files(root, &mut files)?;
        files.sort();
        for file in files {
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
            hasher.update([0]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let generated = ["target", "node_modules", "__pycache__"].contains(&name);
        if generated || name.starts_with('.') && name != ".cargo" {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The cargo that runs us, or `cargo` from `PATH`, without the parent's target settings
/// (callers set the target directory they mean: `--target-dir` for guests, `CARGO_TARGET_DIR`
/// = [`paths::target_dir`] for the workspace).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // A parent cargo's target settings must not redirect the guest build.
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

fn rustc() -> std::ffi::OsString {
    std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

/// Prints the components, for `cargo xtask build-guests`.
pub fn print_components(components: &Components, out: &mut impl std::io::Write) -> Result<()> {
    for (name, path) in components.iter() {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        writeln!(out, "{name:<18} {:>9} bytes  {}", size, path.display())?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_name_reads_the_package_table_only() {
        let manifest = "[workspace]\nname = \"nope\"\n[package]\nname = \"sample-guest\"\nversion = \"0.1.0\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("sample-guest"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    #[test]
    fn every_guest_directory_has_a_package_name() {
        let names = guest_names().expect("guests/ lists its guests");
        assert!(names.contains(&"sample-guest".to_string()), "{names:?}");
    }
}
