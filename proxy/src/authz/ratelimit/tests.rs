use weft_proto::model::RateLimitOverride;

use super::*;

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://mesh.test/ns/shop/sa/{sa}")).unwrap()
}

fn limit(rps: u32, burst: u32) -> RateLimit {
    RateLimit {
        requests_per_second: rps,
        burst,
    }
}

fn policy(total: Option<RateLimit>, per_identity: Option<RateLimit>) -> RateLimitPolicy {
    RateLimitPolicy {
        id: ObjectRef::new("shop", "limits"),
        service: "api".into(),
        total,
        per_identity,
        overrides: vec![],
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How many of `n` requests at `now` pass.
fn passes(
    rl: &RateLimiter,
    p: &RateLimitPolicy,
    c: Option<&SpiffeId>,
    now: Instant,
    n: u32,
) -> u32 {
    (0..n).filter(|_| rl.check(p, c, now).is_ok()).count() as u32
}

#[test]
fn burst_then_refill() {
    let rl = RateLimiter::new();
    let p = policy(None, Some(limit(10, 20)));
    let web = id("web");
    let t0 = Instant::now();
    assert_eq!(
        passes(&rl, &p, Some(&web), t0, 25),
        20,
        "starts full: the burst"
    );
    let err = rl.check(&p, Some(&web), t0).unwrap_err();
    assert_eq!(err.scope, Scope::Identity);
    assert_eq!(err.retry_after, ms(100), "one token at 10/s");
    // half a token later: still none, and the wait says so
    let err = rl.check(&p, Some(&web), t0 + ms(50)).unwrap_err();
    assert_eq!(err.retry_after, ms(50));
    assert_eq!(passes(&rl, &p, Some(&web), t0 + ms(300), 10), 3);
    // refill stops at the burst
    assert_eq!(
        passes(&rl, &p, Some(&web), t0 + Duration::from_secs(60), 100),
        20
    );
}

#[test]
fn identities_are_isolated() {
    let rl = RateLimiter::new();
    let p = policy(None, Some(limit(1, 2)));
    let (web, api) = (id("web"), id("api"));
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, Some(&web), t0, 5), 2);
    assert_eq!(
        passes(&rl, &p, Some(&api), t0, 5),
        2,
        "web's empty bucket is not api's"
    );
}

#[test]
fn plaintext_clients_share_one_bucket() {
    let rl = RateLimiter::new();
    let p = policy(None, Some(limit(1, 3)));
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, None, t0, 2), 2);
    assert_eq!(
        passes(&rl, &p, None, t0, 2),
        1,
        "every plaintext client draws on the same 3"
    );
    assert_eq!(passes(&rl, &p, Some(&id("web")), t0, 1), 1);
}

#[test]
fn an_override_has_its_own_numbers_and_buckets() {
    let rl = RateLimiter::new();
    let mut p = policy(None, Some(limit(1, 1)));
    let (batch, batch2, web) = (id("batch"), id("batch2"), id("web"));
    p.overrides.push(RateLimitOverride {
        identities: vec![batch.clone(), batch2.clone()],
        limit: limit(100, 100),
    });
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, Some(&batch), t0, 150), 100);
    assert_eq!(
        rl.check(&p, Some(&batch), t0).unwrap_err().scope,
        Scope::Override
    );
    assert_eq!(
        passes(&rl, &p, Some(&batch2), t0, 150),
        100,
        "one bucket per identity"
    );
    assert_eq!(passes(&rl, &p, Some(&web), t0, 5), 1);
}

#[test]
fn total_and_identity_take_together_or_not_at_all() {
    let rl = RateLimiter::new();
    let p = policy(Some(limit(1, 5)), Some(limit(1, 2)));
    let (web, api) = (id("web"), id("api"));
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, Some(&web), t0, 10), 2);
    // web's 8 refusals by its own bucket took nothing from the total: 3 left
    assert_eq!(
        rl.state(&p, Some(&web), t0)
            .iter()
            .map(|b| (b.scope, b.tokens))
            .collect::<Vec<_>>(),
        [(Scope::Total, 3.0), (Scope::Identity, 0.0)]
    );
    assert_eq!(passes(&rl, &p, Some(&api), t0, 2), 2);
    let db = id("db");
    assert_eq!(
        passes(&rl, &p, Some(&db), t0, 1),
        1,
        "the last token of the total"
    );
    let err = rl.check(&p, Some(&db), t0).unwrap_err();
    assert_eq!(err.scope, Scope::Total);
    assert_eq!(err.retry_after, Duration::from_secs(1));
    // db's refusal by the total took nothing from db's bucket either
    assert_eq!(rl.state(&p, Some(&db), t0)[1].tokens, 1.0);
}

#[test]
fn the_longer_wait_is_reported() {
    let rl = RateLimiter::new();
    let p = policy(Some(limit(1, 1)), Some(limit(10, 10)));
    let web = id("web");
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, Some(&web), t0, 1), 1);
    let err = rl.check(&p, Some(&web), t0).unwrap_err();
    assert_eq!(
        (err.scope, err.retry_after),
        (Scope::Total, Duration::from_secs(1))
    );
}

#[test]
fn total_alone_and_no_bucket_for_plaintext() {
    let rl = RateLimiter::new();
    let p = policy(Some(limit(2, 2)), None);
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, None, t0, 1), 1);
    assert_eq!(passes(&rl, &p, Some(&id("web")), t0, 5), 1);
    assert_eq!(rl.state(&p, None, t0).len(), 1, "total only");
}

#[test]
fn new_numbers_start_full() {
    let rl = RateLimiter::new();
    let web = id("web");
    let t0 = Instant::now();
    let p = policy(None, Some(limit(1, 2)));
    assert_eq!(passes(&rl, &p, Some(&web), t0, 5), 2);
    assert_eq!(
        passes(&rl, &p, Some(&web), t0, 5),
        0,
        "same numbers: same bucket"
    );
    let p = policy(None, Some(limit(1, 3)));
    assert_eq!(passes(&rl, &p, Some(&web), t0, 5), 3);
    // moved into an override: a bucket of that scope, full
    let mut p = policy(None, Some(limit(1, 3)));
    p.overrides.push(RateLimitOverride {
        identities: vec![web.clone()],
        limit: limit(1, 3),
    });
    assert_eq!(passes(&rl, &p, Some(&web), t0, 5), 3);
}

#[test]
fn policies_do_not_share_buckets() {
    let rl = RateLimiter::new();
    let p = policy(Some(limit(1, 1)), None);
    let mut q = p.clone();
    q.id = ObjectRef::new("shop", "other");
    let t0 = Instant::now();
    assert_eq!(passes(&rl, &p, None, t0, 2), 1);
    assert_eq!(passes(&rl, &q, None, t0, 2), 1);
    rl.retain_policies(|id| id.name != "limits");
    assert_eq!(passes(&rl, &p, None, t0, 2), 1, "forgotten: full again");
    assert_eq!(passes(&rl, &q, None, t0, 2), 0);
}

#[test]
fn state_takes_nothing() {
    let rl = RateLimiter::new();
    let p = policy(None, Some(limit(4, 8)));
    let web = id("web");
    let t0 = Instant::now();
    assert_eq!(
        rl.state(&p, Some(&web), t0),
        [BucketState {
            scope: Scope::Identity,
            requests_per_second: 4,
            burst: 8,
            tokens: 8.0
        }]
    );
    assert_eq!(passes(&rl, &p, Some(&web), t0, 8), 8);
    assert_eq!(rl.state(&p, Some(&web), t0 + ms(500))[0].tokens, 2.0);
    assert_eq!(rl.state(&p, Some(&web), t0 + ms(500))[0].tokens, 2.0);
}

fn identity_buckets(rl: &RateLimiter, p: &RateLimitPolicy) -> usize {
    let state = rl.state.lock().unwrap();
    state.get(&p.id).map_or(0, |b| b.identities.len())
}

#[test]
fn bounded_idle_buckets_go_first() {
    let rl = RateLimiter::new();
    let p = policy(None, Some(limit(1, 1)));
    let t0 = Instant::now();
    let ids: Vec<SpiffeId> = (0..MAX_IDENTITY_BUCKETS)
        .map(|i| id(&format!("w{i}")))
        .collect();
    let half = MAX_IDENTITY_BUCKETS / 2;
    for (i, c) in ids.iter().enumerate() {
        let at = if i < half { t0 } else { t0 + ms(900) };
        assert!(rl.check(&p, Some(c), at).is_ok());
    }
    assert_eq!(identity_buckets(&rl, &p), MAX_IDENTITY_BUCKETS);
    // at 1.5 s the first half are full again (idle); the second half are not
    let now = t0 + ms(1500);
    assert!(rl.check(&p, Some(&id("new")), now).is_ok());
    assert_eq!(identity_buckets(&rl, &p), half + 1);
    assert!(
        rl.state(&p, Some(&ids[half]), now)[0].tokens < 1.0,
        "a busy bucket kept"
    );
}

#[test]
fn bounded_least_recently_used_go_next() {
    let rl = RateLimiter::new();
    let p = policy(None, Some(limit(1, 1)));
    let t0 = Instant::now();
    let ids: Vec<SpiffeId> = (0..MAX_IDENTITY_BUCKETS)
        .map(|i| id(&format!("w{i}")))
        .collect();
    for (i, c) in ids.iter().enumerate() {
        assert!(
            rl.check(&p, Some(c), t0 + Duration::from_micros(i as u64))
                .is_ok()
        );
    }
    let now = t0 + ms(500);
    assert!(rl.check(&p, Some(&id("new")), now).is_ok());
    let keep = MAX_IDENTITY_BUCKETS - MAX_IDENTITY_BUCKETS / 8;
    assert_eq!(identity_buckets(&rl, &p), keep + 1);
    let evicted = MAX_IDENTITY_BUCKETS / 8;
    assert_eq!(
        rl.state(&p, Some(&ids[evicted - 1]), now)[0].tokens,
        1.0,
        "oldest dropped"
    );
    assert!(
        rl.state(&p, Some(&ids[evicted]), now)[0].tokens < 1.0,
        "newer kept"
    );
    // the next new identities fit without another sweep
    for i in 0..10 {
        assert!(rl.check(&p, Some(&id(&format!("n{i}"))), now).is_ok());
    }
    assert_eq!(identity_buckets(&rl, &p), keep + 11);
}

#[test]
fn refused_new_identities_take_no_room() {
    let rl = RateLimiter::new();
    let p = policy(Some(limit(1, 1)), Some(limit(1, 1)));
    let t0 = Instant::now();
    assert!(rl.check(&p, Some(&id("web")), t0).is_ok());
    for i in 0..100 {
        assert!(rl.check(&p, Some(&id(&format!("x{i}"))), t0).is_err());
    }
    assert_eq!(identity_buckets(&rl, &p), 1);
}

#[test]
fn scope_names() {
    assert_eq!(Scope::Total.as_str(), "total");
    assert_eq!(Scope::Identity.as_str(), "identity");
    assert_eq!(Scope::Override.as_str(), "override");
}
