//! Micro-benchmarks of the server proxy's per-request authorization work: the policy decision
//! against 100 policies (the request matched only by the last Allow, so every policy is looked
//! at), path normalization on a clean and a dirty path, and a rate-limit check. Run: `cargo
//! bench -p weft-bench --bench authz`. (`cargo test -p weft-bench --benches` runs each once, as
//! CI does.)
#![allow(clippy::unwrap_used)] // fixed inputs

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_certs::SpiffeId;
use weft_proto::model::{
    AuthorizationPolicy, AuthzAction, DefaultInbound, FromMatch, ObjectRef, PathMatch, PolicyMode,
    PolicyTarget, RateLimit, RateLimitPolicy, ToMatch,
};
use weft_proxy::authz::eval::{self, Facts, HttpFacts, Inbound};
use weft_proxy::authz::normalize::normalize_path;
use weft_proxy::authz::ratelimit::RateLimiter;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://bench.test/ns/{ns}/sa/{sa}")).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Policy `i` of 100: a mix of Allow and Deny over identities, namespaces, service accounts,
/// methods, paths and headers, none of which matches the benchmark's request except the last.
fn policy(i: usize) -> AuthorizationPolicy {
    let (action, from, to) = match i % 5 {
        0 => (
            AuthzAction::Deny,
            vec![FromMatch {
                namespaces: strings(&["blog", "legacy"]),
                ..Default::default()
            }],
            vec![],
        ),
        1 => (
            AuthzAction::Allow,
            vec![FromMatch {
                identities: vec![id("shop", &format!("svc{i}")), id("ops", "admin")],
                ..Default::default()
            }],
            vec![],
        ),
        2 => (
            AuthzAction::Deny,
            vec![],
            vec![ToMatch {
                methods: strings(&["DELETE", "PUT"]),
                paths: vec![PathMatch::Prefix(format!("/admin/{i}"))],
                ..Default::default()
            }],
        ),
        3 => (
            AuthzAction::Allow,
            vec![FromMatch {
                service_accounts: vec![("shop".into(), format!("worker{i}"))],
                ..Default::default()
            }],
            vec![ToMatch {
                ports: vec![8080],
                methods: strings(&["GET", "HEAD"]),
                ..Default::default()
            }],
        ),
        _ => (
            AuthzAction::Allow,
            vec![FromMatch {
                namespaces: strings(&["shop"]),
                ..Default::default()
            }],
            vec![ToMatch {
                methods: strings(&["POST"]),
                paths: vec![
                    PathMatch::Exact(format!("/v1/orders/{i}")),
                    PathMatch::Prefix(format!("/v2/items/{i}")),
                ],
                headers: vec![("x-tenant".into(), format!("tenant{i}"))],
                ..Default::default()
            }],
        ),
    };
    AuthorizationPolicy {
        id: ObjectRef::new("shop", format!("p{i:03}")),
        target: PolicyTarget::Service("api".into()),
        action,
        mode: PolicyMode::Enforce,
        from,
        to,
    }
}

/// 99 policies that do not match, then the one Allow that does.
fn inbound() -> Inbound {
    let mut policies: Vec<_> = (0..99).map(policy).collect();
    policies.push(AuthorizationPolicy {
        id: ObjectRef::new("shop", "p099"),
        target: PolicyTarget::Service("api".into()),
        action: AuthzAction::Allow,
        mode: PolicyMode::Enforce,
        from: vec![FromMatch {
            namespaces: strings(&["shop"]),
            ..Default::default()
        }],
        to: vec![ToMatch {
            ports: vec![8080],
            methods: strings(&["GET"]),
            paths: vec![PathMatch::Prefix("/v1/catalog".into())],
            headers: vec![("x-tenant".into(), "acme".into())],
        }],
    });
    Inbound {
        services: vec![ObjectRef::new("shop", "api")],
        policies: policies.into_iter().map(Arc::new).collect(),
        default: DefaultInbound::Deny,
        rate_limit: None,
        probes: vec![(8080, "/healthz".into())],
    }
}

fn authz(c: &mut Criterion) {
    let inbound = inbound();
    let client = id("shop", "web");
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        h.insert("user-agent", "bench/1".parse().unwrap());
        h
    };
    let facts = Facts {
        client: Some(&client),
        ip: [10, 0, 0, 7].into(),
        port: 8080,
        http: Some(HttpFacts {
            method: "GET",
            path: "/v1/catalog/items/42",
            headers: &headers,
        }),
    };
    let d = eval::decide(&inbound, &facts, None);
    assert!(d.allowed && d.by.to_string() == "shop/p099", "{d:?}");

    c.bench_function("decide (100 policies, the last Allow matches)", |b| {
        b.iter(|| eval::decide(black_box(&inbound), black_box(&facts), None).allowed)
    });

    let clean = "/v1/catalog/items/42";
    let dirty = "//v1/./catalog/%69tems/../items/%34%32/%c3%a9";
    assert!(matches!(
        normalize_path(clean),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
    assert_eq!(
        normalize_path(dirty).unwrap(),
        "/v1/catalog/items/42/%C3%A9"
    );
    c.bench_function("normalize_path (clean, borrowed)", |b| {
        b.iter(|| normalize_path(black_box(clean)).map(|p| p.len()))
    });
    c.bench_function("normalize_path (dirty: //, ., .., escapes)", |b| {
        b.iter(|| normalize_path(black_box(dirty)).map(|p| p.len()))
    });

    let limiter = RateLimiter::new();
    let limits = RateLimitPolicy {
        id: ObjectRef::new("shop", "api-limits"),
        service: "api".into(),
        total: Some(RateLimit {
            requests_per_second: 1_000_000,
            burst: 1_000_000,
        }),
        per_identity: Some(RateLimit {
            requests_per_second: 1_000_000,
            burst: 1_000_000,
        }),
        overrides: vec![],
    };
    c.bench_function("RateLimiter::check (total + identity)", |b| {
        b.iter(|| {
            limiter
                .check(black_box(&limits), Some(&client), Instant::now())
                .is_ok()
        })
    });
}

criterion_group!(benches, authz);
criterion_main!(benches);
