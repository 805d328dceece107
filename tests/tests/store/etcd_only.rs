//! What only etcd has: restarts, several endpoints, a shared cluster with other prefixes.

use super::*;

/// A watch opened before an etcd restart delivers what is written after it, with no gap, and
/// requests work again once etcd is back.
#[tokio::test]
async fn watch_and_requests_survive_a_restart() {
    let Fixture { store, backend } = Fixture::etcd().await;
    let Backend::Etcd { mut server, .. } = backend else {
        unreachable!()
    };
    let s = &*store;
    let r1 = commit(s, vec![put("rs/a", "1")]).await;
    let mut w = s.watch("rs/", r1 + 1).await.unwrap();
    let r2 = commit(s, vec![put("rs/b", "2")]).await;
    assert_eq!(next_events(&mut w).await[0].revision(), r2);

    server.restart().await.unwrap();
    // etcd reports healthy; the store's first request may still meet the dead connection, and
    // then says so rather than failing silently: retry like a caller would.
    let end = Instant::now() + Duration::from_secs(15);
    let r3 = loop {
        match s
            .txn(Txn {
                compare: vec![],
                ops: vec![put("rs/c", "3")],
            })
            .await
        {
            Ok(TxnOutcome::Committed(r)) => break r,
            Ok(TxnOutcome::Conflict) => unreachable!(),
            Err(StoreError::Unavailable(why)) if Instant::now() < end => {
                eprintln!("retrying after restart: {why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("txn after restart: {e}"),
        }
    };
    assert_eq!(s.get("rs/c").await.unwrap().unwrap().mod_revision, r3);
    let r4 = commit(s, vec![del("rs/a")]).await;

    let mut got = Vec::new();
    while got.last().is_none_or(|e: &Event| e.revision() < r4) {
        got.extend(next_events(&mut w).await);
    }
    let keys: Vec<_> = got
        .iter()
        .map(|e| (e.key().to_owned(), e.revision()))
        .collect();
    assert_eq!(keys, [("rs/c".to_owned(), r3), ("rs/a".to_owned(), r4)]);
}

/// A watch on a member that is down for a while resumes once it is back, from where it was.
#[tokio::test]
async fn watch_resumes_after_an_outage() {
    let Fixture { store, backend } = Fixture::etcd().await;
    let Backend::Etcd { mut server, .. } = backend else {
        unreachable!()
    };
    let r1 = commit(&*store, vec![put("o/a", "1")]).await;
    let mut w = store.watch("o/", r1 + 1).await.unwrap();
    server.stop().await.unwrap();
    // Pull from the watch while etcd is down, so the store's resume loop (not a fresh watch
    // after the outage) is what is tested.
    let pending = tokio::spawn(async move {
        let e = next_events(&mut w).await;
        (e, w)
    });
    let err = store.get("o/a").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    server.start_again().unwrap();
    server.wait_healthy(Duration::from_secs(20)).await.unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let r2 = loop {
        match store
            .txn(Txn {
                compare: vec![],
                ops: vec![put("o/b", "2")],
            })
            .await
        {
            Ok(TxnOutcome::Committed(r)) => break r,
            Ok(TxnOutcome::Conflict) => unreachable!(),
            Err(e) if Instant::now() < end => eprintln!("retrying: {e}"),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (events, _w) = pending.await.unwrap();
    assert_eq!(events[0].key(), "o/b");
    assert_eq!(events[0].revision(), r2);
}

/// A closed port and a blackhole listed before the real member cost bounded time and fail
/// nothing: reads, txns, leases and watches all reach the live member.
#[tokio::test]
async fn dead_endpoints_first_do_not_fail_requests() {
    let server = EtcdServer::start().await.unwrap();
    let blackhole = Blackhole::start().unwrap();
    let endpoints = vec![
        closed_port_url().unwrap(),
        blackhole.url().to_owned(),
        server.client_url(),
    ];
    let s = etcd_store(endpoints).await;
    let started = Instant::now();
    let r = commit(&s, vec![put("d/a", "1")]).await;
    // Two dead endpoints, each bounded by the 1 s request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.get("d/a").await.unwrap().unwrap().mod_revision, r);
    assert_eq!(s.list("d/").await.unwrap().items.len(), 1);
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    s.keep_alive(lease).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    // Once the live member answered, requests go straight to it: well under the 1 s a detour
    // through the blackhole would cost.
    let again = Instant::now();
    commit(&s, vec![put("d/b", "2")]).await;
    assert!(
        again.elapsed() < Duration::from_millis(950),
        "{:?}",
        again.elapsed()
    );

    // A fresh store whose first request is a watch.
    let endpoints = vec![
        blackhole.url().to_owned(),
        closed_port_url().unwrap(),
        server.client_url(),
    ];
    let w_store = etcd_store(endpoints).await;
    let mut w = w_store.watch("d/", 0).await.unwrap();
    let r = commit(&s, vec![put("d/c", "3")]).await;
    let events = next_events(&mut w).await;
    assert_eq!((events[0].key(), events[0].revision()), ("d/c", r));
}

/// With only dead endpoints, a request fails with `Unavailable` naming each of them.
#[tokio::test]
async fn no_live_endpoint_is_unavailable_naming_them() {
    let blackhole = Blackhole::start().unwrap();
    let closed = closed_port_url().unwrap();
    let s = etcd_store(vec![closed.clone(), blackhole.url().to_owned()]).await;
    let started = Instant::now();
    let err = s.get("x").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let StoreError::Unavailable(msg) = &err else {
        panic!("{err}")
    };
    assert!(
        msg.contains(&closed) && msg.contains(blackhole.url()),
        "{msg}"
    );
    let err = s
        .txn(Txn {
            compare: vec![],
            ops: vec![put("x", "1")],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

/// Two stores with different prefixes on one etcd see only their own keys, relative.
#[tokio::test]
async fn prefixes_isolate_stores() {
    let server = EtcdServer::start().await.unwrap();
    let a = etcd_store(vec![server.client_url()]).await;
    let b = EtcdStore::connect(EtcdConfig {
        prefix: "/other/".into(),
        ..etcd_config(vec![server.client_url()])
    })
    .await
    .unwrap();
    commit(&a, vec![put("k", "a")]).await;
    commit(&b, vec![put("k", "b"), put("only-b", "b")]).await;
    assert_eq!(a.get("k").await.unwrap().unwrap().value, b"a");
    let keys: Vec<_> = a
        .list("")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["k"]);
    assert_eq!(b.list("").await.unwrap().items.len(), 2);
}
