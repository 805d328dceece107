//! The store contract, written once and run against both implementations: `MemoryStore` and
//! `EtcdStore` over a real etcd started per test on free loopback ports. Cases that only one
//! store can have (an etcd restart, dead endpoints, the memory snapshot file) follow.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use weft_control_plane::store::{
    Compare, EtcdConfig, EtcdStore, Event, EventStream, LeaseId, MemoryStore, Op, Revision, Store,
    StoreError, Txn, TxnOutcome,
};
use weft_tests::etcd::{Blackhole, EtcdServer, closed_port_url};

/// A store under test plus what the generic cases cannot do through the trait.
#[derive(Debug)]
struct Fixture {
    store: Arc<dyn Store>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Memory(Arc<MemoryStore>),
    Etcd {
        store: Arc<EtcdStore>,
        server: Box<EtcdServer>,
    },
}

impl Fixture {
    fn memory() -> Self {
        let store = Arc::new(MemoryStore::new());
        Self {
            store: store.clone(),
            backend: Backend::Memory(store),
        }
    }

    async fn etcd() -> Self {
        let server = Box::new(EtcdServer::start().await.unwrap());
        let store = Arc::new(etcd_store(vec![server.client_url()]).await);
        Self {
            store: store.clone(),
            backend: Backend::Etcd { store, server },
        }
    }

    async fn compact(&self, revision: Revision) {
        match &self.backend {
            Backend::Memory(m) => m.compact(revision).unwrap(),
            Backend::Etcd { store, .. } => store.compact(revision).await.unwrap(),
        }
    }
}

fn etcd_config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        prefix: "/weft-test/".to_owned(),
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        watch_resume_timeout: Duration::from_secs(30),
        ..EtcdConfig::default()
    }
}

async fn etcd_store(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::connect(etcd_config(endpoints)).await.unwrap()
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

fn put_leased(key: &str, value: &str, lease: LeaseId) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: Some(lease),
    }
}

fn del(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

fn at(key: &str, revision: Revision) -> Compare {
    Compare::ModRevision {
        key: key.to_owned(),
        revision,
    }
}

async fn commit(store: &dyn Store, ops: Vec<Op>) -> Revision {
    match store
        .txn(Txn {
            compare: vec![],
            ops,
        })
        .await
        .unwrap()
    {
        TxnOutcome::Committed(rev) => rev,
        TxnOutcome::Conflict => panic!("a txn without compares conflicted"),
    }
}

/// The next batch of events, failing the test after 10 s.
async fn next_events(w: &mut EventStream) -> Vec<Event> {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(events))) => events,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

/// The error a watch from `from` ends with, whether `watch` itself or the stream reports it.
async fn watch_error(store: &dyn Store, prefix: &str, from: Revision) -> StoreError {
    match store.watch(prefix, from).await {
        Err(e) => e,
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected the watch to fail, got {other:?}"),
        },
    }
}

async fn values(store: &dyn Store, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let listing = store.list(prefix).await.unwrap();
    listing
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// Polls `get(key)` until it is absent.
async fn wait_absent(store: &dyn Store, key: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    while store.get(key).await.unwrap().is_some() {
        assert!(
            Instant::now() < end,
            "{key} still present after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$case(&super::Fixture::memory()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$case(&super::Fixture::etcd().await).await;
            }
        }
    )*};
}

on_both_stores!(
    put_get_list,
    txn_compares,
    list_then_watch_has_no_gap,
    lease_expiry_deletes_keys_with_events,
    keep_alive_extends_a_lease,
    revoke_deletes_keys,
    compaction_fails_old_watches,
);

async fn put_get_list(f: &Fixture) {
    let s = &*f.store;
    let base = s.list("").await.unwrap().revision;
    let r1 = commit(s, vec![put("svc/b", "2"), put("svc/a", "1")]).await;
    assert_eq!(r1, base + 1, "one revision per txn");
    let r2 = commit(s, vec![put("other/x", "3")]).await;
    assert_eq!(r2, r1 + 1);
    let r3 = commit(s, vec![put("svc/a", "1b")]).await;

    let listing = s.list("svc/").await.unwrap();
    assert_eq!(listing.revision, r3);
    let got: Vec<_> = listing
        .items
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                kv.value.as_slice(),
                kv.mod_revision,
                kv.lease,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("svc/a", b"1b".as_slice(), r3, None),
            ("svc/b", b"2".as_slice(), r1, None)
        ]
    );
    let all: Vec<_> = s
        .list("")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(all, ["other/x", "svc/a", "svc/b"]);
    assert_eq!(s.get("svc/a").await.unwrap().unwrap().mod_revision, r3);
    // An update keeps the key's creation revision (routes are ordered by it).
    assert_eq!(s.get("svc/a").await.unwrap().unwrap().create_revision, r1);
    assert_eq!(listing.items[0].create_revision, r1);
    assert!(s.get("svc/").await.unwrap().is_none());
    assert!(s.get("missing").await.unwrap().is_none());

    // Deleting a missing key is fine, and a txn that changes nothing makes no revision.
    assert_eq!(commit(s, vec![del("missing")]).await, r3);
    let r4 = commit(s, vec![del("svc/b")]).await;
    assert_eq!(r4, r3 + 1);
    assert_eq!(s.list("svc/").await.unwrap().items.len(), 1);
    // Written again after a delete, a key is created anew.
    let r5 = commit(s, vec![put("svc/b", "2c")]).await;
    let again = s.get("svc/b").await.unwrap().unwrap();
    assert_eq!((again.create_revision, again.mod_revision), (r5, r5));
    commit(s, vec![del("svc/b")]).await;

    // Values are bytes, stored as given.
    let odd = vec![0u8, 0xff, b'{'];
    let txn = Txn {
        compare: vec![],
        ops: vec![Op::Put {
            key: "bin".into(),
            value: odd.clone(),
            lease: None,
        }],
    };
    s.txn(txn).await.unwrap();
    assert_eq!(s.get("bin").await.unwrap().unwrap().value, odd);
}

async fn txn_compares(f: &Fixture) {
    let s = &*f.store;
    let create = |v: &str| Txn {
        compare: vec![at("k", 0)],
        ops: vec![put("k", v)],
    };
    let TxnOutcome::Committed(r1) = s.txn(create("1")).await.unwrap() else {
        panic!("create of an absent key conflicted");
    };
    assert_eq!(s.txn(create("2")).await.unwrap(), TxnOutcome::Conflict);
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"1");

    let update = Txn {
        compare: vec![at("k", r1)],
        ops: vec![put("k", "3"), put("side", "x")],
    };
    let TxnOutcome::Committed(r2) = s.txn(update).await.unwrap() else {
        panic!("update at the current revision conflicted");
    };
    let before = values(s, "").await;

    // A stale compare applies nothing, not even the ops on other keys.
    let stale = Txn {
        compare: vec![at("k", r1), at("absent", 0)],
        ops: vec![put("k", "4"), put("side2", "y"), del("side")],
    };
    assert_eq!(s.txn(stale).await.unwrap(), TxnOutcome::Conflict);
    // One failing compare among holding ones is enough.
    let mixed = Txn {
        compare: vec![
            at("k", r2),
            at("side", r2),
            at("absent", 0),
            at("absent2", 5),
        ],
        ops: vec![put("k", "5")],
    };
    assert_eq!(s.txn(mixed).await.unwrap(), TxnOutcome::Conflict);
    assert_eq!(values(s, "").await, before);
    assert_eq!(s.list("").await.unwrap().revision, r2);

    // A put on a lease that does not exist fails the whole txn.
    let ghost = LeaseId(0x7ee7_0000_0001);
    let txn = Txn {
        compare: vec![],
        ops: vec![put("a", "1"), put_leased("b", "2", ghost)],
    };
    let err = s.txn(txn).await.unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseNotFound(l) if l == ghost),
        "{err}"
    );
    assert_eq!(values(s, "").await, before);
}

async fn list_then_watch_has_no_gap(f: &Fixture) {
    // The writer runs until told to stop, so writes land before the listing, between the
    // listing and the watch, and after the watch, whatever the speed of the store.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(0));
    let writer = {
        let (store, stop, written) = (f.store.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut ops = vec![put(&format!("w/{}", i % 17), &i.to_string())];
                if i.is_multiple_of(5) {
                    ops.push(del(&format!("w/{}", (i + 3) % 17)));
                }
                last = commit(&*store, ops).await;
                written.store(last, Ordering::Relaxed);
                i += 1;
                tokio::task::yield_now().await;
            }
            last
        })
    };
    let wait_for = |revision: Revision| {
        let written = written.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(20);
            while written.load(Ordering::Relaxed) < revision {
                assert!(Instant::now() < end, "the writer is stuck");
                tokio::task::yield_now().await;
            }
        }
    };
    let base = f.store.list("").await.unwrap().revision;
    wait_for(base + 5).await;
    let listing = f.store.list("w/").await.unwrap();
    let mut w = f.store.watch("w/", listing.revision + 1).await.unwrap();
    wait_for(listing.revision + 50).await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.await.unwrap();
    let mut state: BTreeMap<String, Vec<u8>> = listing
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();

    let mut revisions = BTreeSet::new();
    let mut seen = listing.revision;
    while seen < last {
        for e in next_events(&mut w).await {
            assert!(
                e.revision() >= seen,
                "revisions go back: {e:?} after {seen}"
            );
            seen = e.revision();
            revisions.insert(seen);
            match e {
                Event::Put(kv) => {
                    state.insert(kv.key, kv.value);
                }
                Event::Delete { key, .. } => {
                    state.remove(&key);
                }
            }
        }
    }
    // Every write touched w/, so every revision after the listing must have been seen.
    let expected: BTreeSet<_> = (listing.revision + 1..=last).collect();
    assert_eq!(revisions, expected);
    assert_eq!(state, values(&*f.store, "w/").await);
}

async fn lease_expiry_deletes_keys_with_events(f: &Fixture) {
    let s = &*f.store;
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    let r = commit(
        s,
        vec![
            put_leased("reg/a", "1", lease),
            put_leased("reg/b", "2", lease),
            put("reg/static", "3"),
        ],
    )
    .await;
    assert_eq!(s.get("reg/a").await.unwrap().unwrap().lease, Some(lease));
    assert_eq!(s.get("reg/static").await.unwrap().unwrap().lease, None);
    let mut w = s.watch("reg/", r + 1).await.unwrap();

    let mut deleted = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(15);
    while deleted.len() < 2 {
        assert!(
            Instant::now() < end,
            "lease keys not deleted; saw {deleted:?}"
        );
        for e in next_events(&mut w).await {
            match e {
                Event::Delete { key, revision } => {
                    deleted.insert(key, revision);
                }
                Event::Put(kv) => panic!("unexpected put {kv:?}"),
            }
        }
    }
    let revs: BTreeSet<_> = deleted.values().collect();
    assert_eq!(revs.len(), 1, "one revision for the expiry: {deleted:?}");
    assert!(s.get("reg/a").await.unwrap().is_none());
    assert!(s.get("reg/static").await.unwrap().is_some());
    let err = s.keep_alive(lease).await.unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseNotFound(l) if l == lease),
        "{err}"
    );
}

async fn keep_alive_extends_a_lease(f: &Fixture) {
    let s = &*f.store;
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    commit(s, vec![put_leased("ka/a", "1", lease)]).await;
    // Renew for well past the TTL (etcd's minimum is 2 s here): the key must stay throughout.
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while start.elapsed() < Duration::from_secs(4) {
        tick.tick().await;
        s.keep_alive(lease).await.unwrap();
        assert!(
            s.get("ka/a").await.unwrap().is_some(),
            "expired while renewed"
        );
    }
    // Stop renewing: it expires.
    wait_absent(s, "ka/a", Duration::from_secs(10)).await;
}

async fn revoke_deletes_keys(f: &Fixture) {
    let s = &*f.store;
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let r = commit(s, vec![put_leased("rv/a", "1", lease), put("rv/b", "2")]).await;
    let mut w = s.watch("rv/", r + 1).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert!(s.get("rv/a").await.unwrap().is_none());
    assert!(s.get("rv/b").await.unwrap().is_some());
    let events = next_events(&mut w).await;
    assert!(
        matches!(&events[..], [Event::Delete { key, revision }] if key == "rv/a" && *revision == r + 1),
        "{events:?}"
    );
    s.revoke_lease(lease).await.unwrap();
    let err = s.keep_alive(lease).await.unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseNotFound(l) if l == lease),
        "{err}"
    );
    let txn = Txn {
        compare: vec![],
        ops: vec![put_leased("rv/c", "3", lease)],
    };
    let err = s.txn(txn).await.unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseNotFound(l) if l == lease),
        "{err}"
    );
}

async fn compaction_fails_old_watches(f: &Fixture) {
    let s = &*f.store;
    let r1 = commit(s, vec![put("c/a", "1")]).await;
    let mut last = r1;
    for i in 2..=5 {
        last = commit(s, vec![put("c/a", &i.to_string())]).await;
    }
    let keep = last - 1;
    f.compact(keep).await;

    let err = watch_error(s, "c/", r1).await;
    assert!(
        matches!(err, StoreError::Compacted { compacted, .. } if compacted == keep),
        "{err}"
    );
    // The compaction revision itself and later are still watchable.
    let mut w = s.watch("c/", keep).await.unwrap();
    let events = next_events(&mut w).await;
    assert_eq!(events[0].revision(), keep);
    let mut live = s.watch("c/", last + 1).await.unwrap();
    let r = commit(s, vec![put("c/b", "x")]).await;
    assert_eq!(next_events(&mut live).await[0].revision(), r);
}

#[path = "store/etcd_only.rs"]
mod etcd_only;
#[path = "store/memory_only.rs"]
mod memory_only;
