use std::time::Duration;

use super::*;

fn key(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn rows(c: &Contents, space: Space) -> Vec<(String, String)> {
    c.space(space)
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

#[tokio::test]
async fn what_was_committed_is_there_after_a_reopen_and_a_fresh_key_removed_in_its_batch_never_was() {
    let dir = tempfile::tempdir().unwrap();
    for fsync in [Fsync::Always, Fsync::Batch, Fsync::Never] {
        let (s, contents) = Storage::open(dir.path(), fsync).unwrap();
        assert!(contents.spaces.values().all(Vec::is_empty), "{fsync:?}: starts empty");
        s.submit(vec![
            Change::set(Space::Messages, key("q\0a"), b"1".to_vec(), true),
            Change::set(Space::Messages, key("q\0b"), b"2".to_vec(), true),
            Change::set(Space::Sessions, key("q\0s"), b"state".to_vec(), false),
        ]);
        s.submit(vec![Change::set(Space::Messages, key("q\0a"), b"1'".to_vec(), false)]);
        // Stored and gone within one batch: coalesced away.
        s.submit(vec![Change::set(Space::Messages, key("q\0c"), b"3".to_vec(), true)]);
        s.submit(vec![Change::remove(Space::Messages, key("q\0c"))]);
        s.settled().await.unwrap();
        s.close();
        drop(s);
        let (s, contents) = Storage::open(dir.path(), fsync).unwrap();
        assert_eq!(rows(&contents, Space::Messages), [("q\0a".into(), "1'".into()), ("q\0b".into(), "2".into())]);
        assert_eq!(rows(&contents, Space::Sessions), [("q\0s".into(), "state".into())]);
        // Clean up for the next policy: an entity's keys go by prefix.
        s.submit(vec![
            Change::remove_prefix(Space::Messages, key("q\0")),
            Change::remove_prefix(Space::Sessions, key("q\0")),
        ]);
        s.settled().await.unwrap();
        s.close();
        drop(s);
        let (_, contents) = Storage::open(dir.path(), fsync).unwrap();
        assert!(contents.spaces.values().all(Vec::is_empty), "{fsync:?}: {contents:?}");
    }
}

#[tokio::test]
async fn a_group_is_committed_only_once_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Storage::open(dir.path(), Fsync::Batch).unwrap();
    let group = Group::open();
    s.submit(vec![Change::set(Space::Messages, key("dlq\0a"), b"moved".to_vec(), true)]);
    let inside = take_barrier();
    assert!(inside > 0, "a stored message raises the barrier");
    // A unit outside the group, from another thread, is committed; the group's is not.
    let other = s.clone();
    let outside = std::thread::spawn(move || {
        other.submit(vec![Change::set(Space::Messages, key("other\0a"), b"x".to_vec(), true)]);
        take_barrier()
    })
    .join()
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.durable(outside)).await.is_err(),
        "a commit past an open group would split it"
    );
    drop(group);
    s.durable(outside).await.unwrap();
    s.durable(inside).await.unwrap();
}

#[test]
fn a_lock_marker_alone_raises_no_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Storage::open(dir.path(), Fsync::Never).unwrap();
    take_barrier();
    s.submit(vec![Change::set(Space::Locks, key("q\0a"), Vec::new(), true)]);
    assert_eq!(take_barrier(), 0);
    s.submit(vec![Change::remove(Space::Messages, key("q\0a"))]);
    assert!(take_barrier() > 0);
}

#[test]
fn a_directory_in_use_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _) = Storage::open(dir.path(), Fsync::Batch).unwrap();
    let e = Storage::open(dir.path(), Fsync::Batch).unwrap_err();
    assert!(matches!(e, StorageError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("is another emulator running with --data-dir"), "{e}");
}

#[test]
fn fsync_policies_parse_and_say_what_is_wrong() {
    assert_eq!("batch".parse::<Fsync>(), Ok(Fsync::Batch));
    assert_eq!("always".parse::<Fsync>(), Ok(Fsync::Always));
    assert_eq!("never".parse::<Fsync>(), Ok(Fsync::Never));
    assert!("sometimes".parse::<Fsync>().unwrap_err().contains("use always, batch or never"));
}
