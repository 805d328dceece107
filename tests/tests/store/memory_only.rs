//! What only the memory store has: its snapshot file.

use super::*;

#[tokio::test]
async fn snapshot_survives_reopen_without_leased_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    let (r, lease, created) = {
        let s = MemoryStore::open(&path).unwrap();
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        let created = commit(&s, vec![put("keep/a", "1"), put("keep/b", "2")]).await;
        commit(&s, vec![put("keep/a", "1")]).await;
        let r = commit(&s, vec![put_leased("reg/x", "3", lease), del("keep/b")]).await;
        (r, lease, created)
    };
    let s = MemoryStore::open(&path).unwrap();
    let listing = s.list("").await.unwrap();
    let keys: Vec<_> = listing.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["keep/a"], "leased keys are not restored");
    assert_eq!(listing.items[0].value, b"1");
    assert_eq!(
        listing.items[0].create_revision, created,
        "creation survives a reopen"
    );
    assert!(
        listing.revision > r,
        "revisions never go back across a restart"
    );
    let err = s.keep_alive(lease).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err}");
    // History starts at the reopen: an older watch must re-list.
    let err = watch_error(&s, "", r).await;
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    let mut w = s.watch("", listing.revision + 1).await.unwrap();
    let r2 = commit(&s, vec![put("keep/c", "4")]).await;
    assert_eq!(next_events(&mut w).await[0].revision(), r2);
}

#[test]
fn corrupt_snapshot_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    std::fs::write(&path, b"{\"format\":1,\"revision\":").unwrap();
    let err = MemoryStore::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn unwritable_snapshot_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("registry.json");
    let err = MemoryStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("registry.json"), "{err}");
}
