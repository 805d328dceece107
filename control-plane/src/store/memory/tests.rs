//! Unit tests of the memory store: semantics the shared suite (`tests/tests/store.rs`) cannot
//! reach from outside (lag recovery, the expiry task's lifetime, the file format), and a property
//! test against a model map.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use proptest::prelude::*;

use super::*;
use crate::store::{Compare, Op};

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

fn del(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

fn ops(ops: Vec<Op>) -> Txn {
    Txn {
        compare: vec![],
        ops,
    }
}

async fn commit(store: &MemoryStore, txn: Txn) -> Revision {
    match store.txn(txn).await.unwrap() {
        TxnOutcome::Committed(rev) => rev,
        TxnOutcome::Conflict => panic!("unexpected conflict"),
    }
}

#[tokio::test]
async fn revisions_follow_etcd() {
    let s = MemoryStore::new();
    assert_eq!(commit(&s, ops(vec![put("a", "1"), put("b", "2")])).await, 1);
    assert_eq!(commit(&s, ops(vec![del("a")])).await, 2);
    // Nothing changed: no new revision, as in etcd.
    assert_eq!(commit(&s, ops(vec![del("missing")])).await, 2);
    assert_eq!(commit(&s, ops(vec![])).await, 2);
    assert_eq!(s.revision(), 2);
    let b = s.get("b").await.unwrap().unwrap();
    assert_eq!(b.mod_revision, 1);
}

#[tokio::test]
async fn duplicate_keys_in_one_txn_are_refused() {
    let s = MemoryStore::new();
    let err = s.txn(ops(vec![put("a", "1"), put("a", "2")])).await;
    assert!(matches!(err, Err(StoreError::Other(_))), "{err:?}");
    let err = s.txn(ops(vec![put("a", "1"), del("a")])).await;
    assert!(matches!(err, Err(StoreError::Other(_))), "{err:?}");
    assert_eq!(s.revision(), 0);
}

#[tokio::test]
async fn put_with_unknown_lease_applies_nothing() {
    let s = MemoryStore::new();
    let txn = ops(vec![
        put("a", "1"),
        Op::Put {
            key: "b".into(),
            value: vec![],
            lease: Some(LeaseId(42)),
        },
    ]);
    let err = s.txn(txn).await;
    assert!(
        matches!(err, Err(StoreError::LeaseNotFound(LeaseId(42)))),
        "{err:?}"
    );
    assert!(s.get("a").await.unwrap().is_none());
}

/// A watcher that falls more than the live buffer behind catches up from the history.
#[tokio::test]
async fn lagging_watcher_catches_up_from_history() {
    let s = MemoryStore::new();
    let mut w = s.watch("", 1).await.unwrap();
    let n = (LIVE_BUFFER * 3) as i64;
    for i in 0..n {
        commit(&s, ops(vec![put("k", &i.to_string())])).await;
    }
    for rev in 1..=n {
        let events = w.next().await.unwrap().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].revision(), rev);
    }
}

/// A watcher that falls behind the history too is told to re-list.
#[tokio::test]
async fn watcher_behind_the_history_gets_compacted() {
    let s = MemoryStore::new();
    let mut w = s.watch("", 1).await.unwrap();
    for i in 0..(HISTORY_REVISIONS + LIVE_BUFFER + 10) {
        commit(&s, ops(vec![put("k", &i.to_string())])).await;
    }
    let err = w.next().await.unwrap();
    assert!(
        matches!(err, Err(StoreError::Compacted { requested: 1, .. })),
        "{err:?}"
    );
    assert!(w.next().await.is_none());
    assert!(matches!(
        s.watch("", 1).await,
        Err(StoreError::Compacted { .. })
    ));
}

#[tokio::test]
async fn compact_keeps_the_compacted_revision_watchable() {
    let s = MemoryStore::new();
    for i in 0..5 {
        commit(&s, ops(vec![put("k", &i.to_string())])).await;
    }
    s.compact(3).unwrap();
    let err = s.watch("", 2).await.err();
    assert!(
        matches!(
            err,
            Some(StoreError::Compacted {
                requested: 2,
                compacted: 3
            })
        ),
        "{err:?}"
    );
    let mut w = s.watch("", 3).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap()[0].revision(), 3);
    assert!(s.compact(99).is_err());
}

#[tokio::test]
async fn watch_filters_by_prefix_and_skips_empty_revisions() {
    let s = MemoryStore::new();
    let mut w = s.watch("svc/", 0).await.unwrap();
    commit(&s, ops(vec![put("other", "x")])).await;
    commit(&s, ops(vec![put("svc/a", "1"), put("zzz", "y")])).await;
    let events = w.next().await.unwrap().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key(), "svc/a");
    assert_eq!(events[0].revision(), 2);
}

#[tokio::test]
async fn dropping_the_store_ends_the_expiry_task_and_watches() {
    let s = MemoryStore::new();
    let mut w = s.watch("", 0).await.unwrap();
    s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let weak = s.downgrade();
    drop(s);
    // Only the expiry task or a watcher could keep the state alive; neither holds it strongly.
    assert!(weak.upgrade().is_none());
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert!(
        matches!(end, Some(Err(StoreError::Unavailable(_)))),
        "{end:?}"
    );
}

#[tokio::test]
async fn lease_ttl_is_rounded_up_to_whole_seconds() {
    let s = MemoryStore::new();
    let id = s.grant_lease(Duration::from_millis(1)).await.unwrap();
    let ttl = s.shared.lock().leases[&id].ttl;
    assert_eq!(ttl, Duration::from_secs(1));
    let id = s.grant_lease(Duration::from_millis(2001)).await.unwrap();
    assert_eq!(s.shared.lock().leases[&id].ttl, Duration::from_secs(3));
    assert!(s.grant_lease(Duration::from_secs(u64::MAX)).await.is_err());
}

#[tokio::test]
async fn snapshot_round_trips_bytes_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    {
        let s = MemoryStore::open(&path).unwrap();
        let txn = ops(vec![
            put("text", "{\"a\":1}"),
            Op::Put {
                key: "binary".into(),
                value: vec![0xff, 0x00, 0xfe],
                lease: None,
            },
        ]);
        commit(&s, txn).await;
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let s = MemoryStore::open(&path).unwrap();
    assert_eq!(
        s.get("binary").await.unwrap().unwrap().value,
        vec![0xff, 0x00, 0xfe]
    );
    assert_eq!(s.get("text").await.unwrap().unwrap().value, b"{\"a\":1}");
    // The reopen is a revision of its own.
    assert_eq!(s.revision(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");
}

#[test]
fn corrupt_snapshots_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    for bad in [
        "not json",
        r#"{"format":2,"revision":1,"keys":[]}"#,
        r#"{"format":1,"revision":1,"keys":[{"key":"a","value":"x","mod_revision":5}]}"#,
        r#"{"format":1,"revision":3,"keys":[{"key":"b","value":"x","mod_revision":1},{"key":"a","value":"x","mod_revision":1}]}"#,
        r#"{"format":1,"revision":3,"keys":[{"key":"a","mod_revision":1}]}"#,
        r#"{"format":1,"revision":3,"keys":[{"key":"a","value":"x","mod_revision":2,"create_revision":3}]}"#,
    ] {
        std::fs::write(&path, bad).unwrap();
        let err = MemoryStore::open(&path).unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("store.json"), "{err}");
        // The corrupt file is left for the operator to inspect.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
    }
}

#[tokio::test]
async fn a_snapshot_from_before_creation_revisions_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    std::fs::write(
        &path,
        r#"{"format":1,"revision":4,"keys":[{"key":"a","value":"x","mod_revision":3}]}"#,
    )
    .unwrap();
    let s = MemoryStore::open(&path).unwrap();
    let a = s.get("a").await.unwrap().unwrap();
    // Its creation is not known: the last write stands in for it.
    assert_eq!((a.mod_revision, a.create_revision), (3, 3));
}

#[derive(Debug, Clone)]
enum ModelOp {
    Put(u8, u8),
    Delete(u8),
}

#[derive(Debug, Clone)]
struct ModelTxn {
    /// (key, use the current mod_revision?, offset when not)
    compare: Vec<(u8, bool, i64)>,
    ops: Vec<ModelOp>,
}

fn model_txn() -> impl Strategy<Value = ModelTxn> {
    let op = prop_oneof![
        (0u8..6, any::<u8>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        (0u8..6).prop_map(ModelOp::Delete),
    ];
    (
        prop::collection::vec((0u8..6, any::<bool>(), -2i64..3), 0..3),
        prop::collection::vec(op, 0..5),
    )
        .prop_map(|(compare, ops)| ModelTxn { compare, ops })
}

proptest! {
    /// Random transactions keep `list()` equal to a model map, revisions move exactly when
    /// something changed, and a watch from revision 1 replays to the same map.
    #[test]
    fn random_txns_match_a_model(txns in prop::collection::vec(model_txn(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = MemoryStore::new();
            let mut model: BTreeMap<String, (Vec<u8>, Revision)> = BTreeMap::new();
            let mut rev = 0;
            for t in txns {
                let key = |k: u8| format!("k{k}");
                let compare: Vec<Compare> = t.compare.iter().map(|&(k, exact, off)| {
                    let cur = model.get(&key(k)).map_or(0, |e| e.1);
                    Compare::ModRevision { key: key(k), revision: if exact { cur } else { cur + off } }
                }).collect();
                let holds = compare.iter().all(|Compare::ModRevision { key, revision }| {
                    model.get(key).map_or(0, |e| e.1) == *revision
                });
                let mut ops = Vec::new();
                let mut puts = BTreeSet::new();
                for op in &t.ops {
                    match *op {
                        // Keep the txn valid: each key at most once.
                        ModelOp::Put(k, v) if puts.insert(k) => ops.push(Op::Put { key: key(k), value: vec![v], lease: None }),
                        ModelOp::Delete(k) if puts.insert(k) => ops.push(Op::Delete { key: key(k) }),
                        _ => {}
                    }
                }
                let outcome = s.txn(Txn { compare, ops: ops.clone() }).await.unwrap();
                if !holds {
                    prop_assert_eq!(outcome, TxnOutcome::Conflict);
                    continue;
                }
                let changes = ops.iter().any(|op| match op {
                    Op::Put { .. } => true,
                    Op::Delete { key } => model.contains_key(key),
                });
                if changes {
                    rev += 1;
                }
                for op in ops {
                    match op {
                        Op::Put { key, value, .. } => { model.insert(key, (value, rev)); }
                        Op::Delete { key } => { model.remove(&key); }
                    }
                }
                prop_assert_eq!(outcome, TxnOutcome::Committed(rev));
                let listing = s.list("").await.unwrap();
                prop_assert_eq!(listing.revision, rev);
                let got: BTreeMap<_, _> = listing.items.into_iter().map(|kv| (kv.key, (kv.value, kv.mod_revision))).collect();
                prop_assert_eq!(&got, &model);
            }
            let mut replayed = BTreeMap::new();
            if rev > 0 {
                let mut w = s.watch("", 1).await.unwrap();
                let mut seen = 0;
                while seen < rev {
                    for e in w.next().await.unwrap().unwrap() {
                        seen = e.revision();
                        match e {
                            Event::Put(kv) => { replayed.insert(kv.key, (kv.value, kv.mod_revision)); }
                            Event::Delete { key, .. } => { replayed.remove(&key); }
                        }
                    }
                }
            }
            prop_assert_eq!(&replayed, &model);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn expiry_deletes_keys_with_events_and_forgets_the_lease() {
    let s = MemoryStore::new();
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    let txn = ops(vec![
        Op::Put {
            key: "a".into(),
            value: vec![1],
            lease: Some(lease),
        },
        put("b", "kept"),
    ]);
    let rev = commit(&s, txn).await;
    let mut w = s.watch("", rev + 1).await.unwrap();
    // The expiry task's own wake-up deletes the key: nothing here reads or writes meanwhile.
    let events = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        events,
        vec![Event::Delete {
            key: "a".into(),
            revision: rev + 1
        }]
    );
    assert!(s.get("a").await.unwrap().is_none());
    assert!(s.get("b").await.unwrap().is_some());
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
}
