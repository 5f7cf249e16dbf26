//! The compiled-artifact cache: a restart loads native code instead of compiling.
//!
//! Loading an artifact runs native code outside the sandbox, so nothing is loaded
//! that cannot be shown to come from the component being run:
//! - each file names, in a header, the key it was compiled for (a SHA-256 of the
//!   component's bytes, the engine's compatibility hash and this crate's version)
//!   and the SHA-256 of the artifact; an artifact copied over another component's
//!   file, cut short or altered is refused and recompiled;
//! - the directory is created `0700`, and a directory or file that another user
//!   owns, or that group or others can write, is not used at all: whoever can write
//!   there could write a header too.
//!
//! A refused cache never stops the host: it compiles in memory and says why in the log.

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every cache file (format version 1).
const MAGIC: &[u8; 16] = b"wasi-sb-cwasm/1\n";
/// Magic, key, artifact digest.
const HEADER_SIZE: usize = 16 + 32 + 32;

/// Compiles `bytes`, or loads the artifact compiled earlier for the same bytes and engine.
/// Returns the component and whether it came from the cache.
pub(crate) fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Component, bool), String> {
    let compile = || Component::new(engine, bytes).map_err(|e| format!("{e:#}"));
    let Some(dir) = cache_dir else {
        return Ok((compile()?, false));
    };
    if let Err(why) = prepare_dir(dir) {
        tracing::warn!(dir = %dir.display(), "not using the compile cache: {why}");
        return Ok((compile()?, false));
    }
    let key = cache_key(engine, bytes);
    let file = dir.join(format!("{}.cwasm", hex::encode(key)));
    match load(engine, &file, &key) {
        Ok(Some(component)) => return Ok((component, true)),
        Ok(None) => {}
        Err(why) => tracing::warn!(file = %file.display(), "refusing the cached artifact, recompiling: {why}"),
    }
    let component = compile()?;
    match component.serialize() {
        Ok(artifact) => {
            if let Err(e) = store(dir, &file, &key, &artifact) {
                tracing::warn!(dir = %dir.display(), "cannot cache the compiled component: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot serialize the compiled component: {e:#}"),
    }
    Ok((component, false))
}

/// What an artifact must have been compiled for: the component, the engine's settings, this host.
fn cache_key(engine: &Engine, bytes: &[u8]) -> [u8; 32] {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let mut key = Sha256::new();
    key.update(bytes);
    key.update(engine_hash.finish().to_le_bytes());
    key.update(env!("CARGO_PKG_VERSION").as_bytes());
    key.finalize().into()
}

/// Creates the directory (`0700`) if it is missing, and checks that only we can write it.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    private(&meta).map_err(|why| format!("{why}; fix with: chmod 700 {}", dir.display()))
}

/// Refuses what another user owns, or what group or others may write.
fn private(meta: &std::fs::Metadata) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!("it belongs to user {}, not to this process's user {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("group or others may write it (mode {:o})", meta.mode() & 0o777));
    }
    Ok(())
}

/// The cached component for `key`; `Ok(None)` when there is no file.
fn load(engine: &Engine, file: &Path, key: &[u8; 32]) -> Result<Option<Component>, String> {
    let meta = match std::fs::symlink_metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".into());
    }
    private(&meta)?;
    let contents = std::fs::read(file).map_err(|e| format!("cannot read it: {e}"))?;
    let artifact = verify(&contents, key)?;
    // SAFETY: Wasmtime requires that deserialized bytes come from `Component::serialize` of a
    // compatible engine. These do: the header binds them to this component's bytes and this
    // engine's settings, their digest matches, and only this user can have written the file or
    // its directory (checked above). Wasmtime itself checks the engine settings again.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, artifact) };
    component.map(Some).map_err(|e| format!("{e:#}"))
}

/// Checks a cache file's header against `key`; returns the artifact.
fn verify<'a>(contents: &'a [u8], key: &[u8; 32]) -> Result<&'a [u8], String> {
    if contents.len() < HEADER_SIZE || &contents[..16] != MAGIC {
        return Err("it is not a cache file of this host".into());
    }
    if &contents[16..48] != key {
        return Err("it was compiled from another component or for other engine settings".into());
    }
    let artifact = &contents[HEADER_SIZE..];
    if Sha256::digest(artifact)[..] != contents[48..HEADER_SIZE] {
        return Err("its contents do not match their digest (cut short or altered)".into());
    }
    Ok(artifact)
}

/// Writes the file (`0600`) through a temporary file and a rename: a concurrent reader never
/// sees half a file.
fn store(dir: &Path, file: &Path, key: &[u8; 32], artifact: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    out.write_all(MAGIC)?;
    out.write_all(key)?;
    out.write_all(&Sha256::digest(artifact))?;
    out.write_all(artifact)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_names_its_component_and_guards_its_contents() {
        let key = [7u8; 32];
        let artifact = b"native code".to_vec();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&key);
        file.extend_from_slice(&Sha256::digest(&artifact));
        file.extend_from_slice(&artifact);
        assert_eq!(verify(&file, &key), Ok(&artifact[..]));
        assert!(verify(&file, &[8u8; 32]).unwrap_err().contains("another component"));
        let mut altered = file.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(verify(&altered, &key).unwrap_err().contains("digest"));
        assert!(verify(&file[..file.len() - 1], &key).unwrap_err().contains("digest"));
        assert!(verify(&artifact, &key).unwrap_err().contains("not a cache file"));
    }
}
