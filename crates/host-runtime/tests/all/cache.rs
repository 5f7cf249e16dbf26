//! The compiled-artifact cache loads nothing it cannot tie to the component being run.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use host_runtime::engine::{EngineSettings, load};

use super::support::guest;

fn settings(dir: &Path) -> EngineSettings {
    EngineSettings { max_memory: 32 << 20, max_instances: 4, cache_dir: Some(dir.to_path_buf()) }
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

/// Finding 6: copying one guest's artifact over another's file name ran the first guest's code.
#[test]
fn an_artifact_copied_over_another_guests_file_is_refused_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!load(&guest("test-guest"), settings(dir.path())).unwrap().from_cache);
    let test_guest_artifact = artifacts(dir.path());
    assert_eq!(test_guest_artifact.len(), 1);
    assert!(!load(&guest("sample-guest"), settings(dir.path())).unwrap().from_cache);
    let sample_artifact: Vec<PathBuf> =
        artifacts(dir.path()).into_iter().filter(|p| *p != test_guest_artifact[0]).collect();
    assert!(load(&guest("sample-guest"), settings(dir.path())).unwrap().from_cache);

    std::fs::copy(&test_guest_artifact[0], &sample_artifact[0]).unwrap();
    let loaded = load(&guest("sample-guest"), settings(dir.path())).unwrap();
    assert!(!loaded.from_cache, "the test guest's artifact must not be run as the sample guest");
    // Recompiled and written back: the next start uses the sample guest's own artifact.
    assert_ne!(std::fs::read(&sample_artifact[0]).unwrap(), std::fs::read(&test_guest_artifact[0]).unwrap());
    assert!(load(&guest("sample-guest"), settings(dir.path())).unwrap().from_cache);
}

#[test]
fn an_altered_artifact_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    load(&guest("sample-guest"), settings(dir.path())).unwrap();
    let file = &artifacts(dir.path())[0];
    let mut bytes = std::fs::read(file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(file, &bytes).unwrap();
    assert!(!load(&guest("sample-guest"), settings(dir.path())).unwrap().from_cache);
}

#[test]
fn a_new_cache_directory_is_private_and_one_others_can_write_is_not_used() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/cache");
    load(&guest("sample-guest"), settings(&dir)).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&artifacts(&dir)[0]).unwrap().permissions().mode() & 0o777, 0o600);

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(!load(&guest("sample-guest"), settings(&dir)).unwrap().from_cache, "a shared directory is not trusted");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = &artifacts(&dir)[0];
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(
        !load(&guest("sample-guest"), settings(&dir)).unwrap().from_cache,
        "a file others can write is not trusted"
    );
}
