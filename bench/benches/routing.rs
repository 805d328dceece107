//! Micro-benchmarks of the proxy's per-request routing work: route matching (Gateway API
//! precedence over a realistic route), split selection, the whole plan, and the balancer's
//! pick + finish. Run: `cargo bench -p weft-bench --bench routing`. Figures in
//! docs/benchmarks.md. (`cargo test -p weft-bench --benches` runs each once, as CI does.)
#![allow(clippy::unwrap_used)] // fixed inputs

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_certs::SpiffeId;
use weft_proto::model::{
    Backend, Endpoint, HttpRoute, ObjectRef, OutlierDetection, ParentRef, PathMatch, Port,
    Protocol, RetryPolicy, RouteMatch, Rule, Service, Timeouts, TrafficPolicy,
};
use weft_proxy::balance::{Balancers, Outcome};
use weft_proxy::plan::{self, RequestFacts};
use weft_proxy::resources::{EndpointSet, Held, MeshConfig, ServiceConfig};

fn matcher(path: PathMatch, method: Option<&str>, headers: &[(&str, &str)]) -> RouteMatch {
    RouteMatch {
        path,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        query_params: vec![],
        method: method.map(str::to_owned),
    }
}

fn rule(matches: Vec<RouteMatch>, backends: &[(&str, u32)]) -> Rule {
    Rule {
        name: None,
        matches,
        backends: backends
            .iter()
            .map(|(s, w)| Backend {
                service: ObjectRef::new("default", *s),
                port: None,
                weight: *w,
            })
            .collect(),
        timeouts: Timeouts::default(),
        retry: None,
    }
}

fn endpoint(service: &str, i: u8) -> Endpoint {
    Endpoint {
        service: ObjectRef::new("default", service),
        address: format!("10.0.{}.{i}:4143", service.len()).parse().unwrap(),
        identity: SpiffeId::parse(&format!("spiffe://bench.test/ns/default/sa/{service}")).unwrap(),
        labels: BTreeMap::new(),
        zone: None,
        weight: 1,
        ready: true,
    }
}

fn service(name: &str, routes: Vec<HttpRoute>) -> Held<ServiceConfig> {
    Held {
        version: "1".into(),
        value: Arc::new(ServiceConfig {
            service: Service {
                id: ObjectRef::new("default", name),
                ports: vec![Port {
                    name: None,
                    port: 80,
                    protocol: Protocol::Http1,
                }],
                selector: BTreeMap::new(),
                traffic: TrafficPolicy::default(),
                default_inbound: None,
            },
            routes,
            authorization: vec![],
            rate_limit: None,
            default_inbound: Default::default(),
        }),
    }
}

/// `api` with an 8-rule route (exact paths, prefixes, a method, header matches) whose catch-all
/// splits 90/10 between `api-v1` and `api-v2`, three endpoints each.
fn mesh() -> MeshConfig {
    let rules = vec![
        rule(
            vec![matcher(PathMatch::Exact("/healthz".into()), None, &[])],
            &[("api-v1", 1)],
        ),
        rule(
            vec![matcher(
                PathMatch::Prefix("/admin".into()),
                Some("POST"),
                &[],
            )],
            &[("api-v1", 1)],
        ),
        rule(
            vec![matcher(
                PathMatch::Prefix("/v2".into()),
                None,
                &[("x-canary", "1")],
            )],
            &[("api-v2", 1)],
        ),
        rule(
            vec![matcher(PathMatch::Prefix("/v1/users".into()), None, &[])],
            &[("api-v1", 1)],
        ),
        rule(
            vec![matcher(PathMatch::Prefix("/v1/orders".into()), None, &[])],
            &[("api-v1", 1)],
        ),
        rule(
            vec![matcher(
                PathMatch::Prefix("/v1".into()),
                None,
                &[("x-user", "tester"), ("x-env", "staging")],
            )],
            &[("api-v2", 1)],
        ),
        rule(
            vec![matcher(
                PathMatch::Exact("/login".into()),
                Some("POST"),
                &[],
            )],
            &[("api-v1", 1)],
        ),
        rule(
            vec![matcher(PathMatch::Prefix("/".into()), None, &[])],
            &[("api-v1", 90), ("api-v2", 10)],
        ),
    ];
    let route = HttpRoute {
        id: ObjectRef::new("default", "api-split"),
        parents: vec![ParentRef {
            service: ObjectRef::new("default", "api"),
            port: None,
        }],
        rules,
        retry_policy: RetryPolicy::default(),
    };
    let mut c = MeshConfig::default();
    for (name, routes) in [("api", vec![route]), ("api-v1", vec![]), ("api-v2", vec![])] {
        c.services
            .insert(format!("default/{name}"), service(name, routes));
    }
    for name in ["api-v1", "api-v2"] {
        c.endpoints.insert(
            format!("default/{name}"),
            Held {
                version: "1".into(),
                value: Arc::new(EndpointSet {
                    service: ObjectRef::new("default", name),
                    endpoints: (1..=3).map(|i| endpoint(name, i)).collect(),
                }),
            },
        );
    }
    c
}

fn routing(c: &mut Criterion) {
    let config = mesh();
    let target = plan::target_for(&config, "api.default").unwrap();
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "tester".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        h
    };
    let facts = RequestFacts {
        method: "GET",
        path: "/v1/catalog/items/42",
        query: Some("page=2"),
        headers: &headers,
    };
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut draw = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };

    c.bench_function("target_for (authority → service port)", |b| {
        b.iter(|| plan::target_for(black_box(&config), black_box("api.default:80")))
    });
    c.bench_function("match_rule (8 rules, catch-all wins)", |b| {
        b.iter(|| plan::match_rule(black_box(&target), black_box(&facts)))
    });
    let split = &target.service.routes[0].rules[7].backends;
    c.bench_function("pick_backend (90/10 split)", |b| {
        b.iter(|| plan::pick_backend(black_box(split), &mut draw).map(|b| b.weight))
    });
    c.bench_function("plan_http (match + split + endpoints)", |b| {
        b.iter(|| {
            plan::plan_http(black_box(&config), &target, &facts, &mut draw).map(|p| p.backend_port)
        })
    });

    let balancers = Balancers::default();
    let eps = &config.endpoints["default/api-v1"].value.endpoints;
    let state = balancers.service(&ObjectRef::new("default", "api-v1"));
    let policy = TrafficPolicy::default();
    let outlier = OutlierDetection::default();
    c.bench_function("balancer pick + finish (P2C peak-EWMA, 3 endpoints)", |b| {
        b.iter(|| {
            let now = Instant::now();
            let lease = state.pick(&policy, eps, &[], now, &mut draw).unwrap();
            lease.finish(Outcome::Success, &outlier, now)
        })
    });
}

criterion_group!(benches, routing);
criterion_main!(benches);
