//! Where things are: the repository root, the shared target directory, the components.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(PathBuf::from).unwrap_or(manifest_dir)
}

/// The workspace's target directory: `$CARGO_TARGET_DIR`, or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { repo_root().join(dir) }
        }
        _ => repo_root().join("target"),
    }
}

/// The `guests/` workspace.
pub fn guests_dir() -> PathBuf {
    repo_root().join("guests")
}

/// The `wit/` directory.
pub fn wit_dir() -> PathBuf {
    repo_root().join("wit")
}

/// Where built components are placed: `<target>/components/<guest>.wasm`.
pub fn components_dir() -> PathBuf {
    target_dir().join("components")
}

/// Takes `<target>/<name>.lock` (creating the target directory), so that one process at a
/// time prepares what it guards; the lock goes with the returned file.
pub fn lock_in_target(name: &str) -> Result<(PathBuf, fs::File)> {
    let target = target_dir();
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let lock_path = target.join(format!("{name}.lock"));
    let lock = fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    Ok((target, lock))
}
