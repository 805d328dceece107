#![allow(clippy::type_complexity)] // test tables
use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_certs::SpiffeId;
use weft_proto::model::{ParentRef, RouteMatch};

use super::*;
use crate::resources::{EndpointSet, Held};

fn svc(name: &str, port: u16, protocol: Protocol, routes: Vec<HttpRoute>) -> ServiceConfig {
    ServiceConfig {
        service: weft_proto::model::Service {
            id: ObjectRef::new("default", name),
            ports: vec![Port {
                name: None,
                port,
                protocol,
            }],
            selector: BTreeMap::new(),
            traffic: Default::default(),
            default_inbound: None,
        },
        routes,
        authorization: vec![],
        rate_limit: None,
        default_inbound: Default::default(),
    }
}

fn ep(service: &str, addr: &str, ready: bool) -> Endpoint {
    Endpoint {
        service: ObjectRef::new("default", service),
        address: addr.parse().unwrap(),
        identity: SpiffeId::parse(&format!("spiffe://mesh.test/ns/default/sa/{service}")).unwrap(),
        labels: BTreeMap::new(),
        zone: None,
        weight: 1,
        ready,
    }
}

fn config(services: Vec<ServiceConfig>, endpoints: Vec<Endpoint>) -> MeshConfig {
    let mut c = MeshConfig::default();
    for s in services {
        c.services.insert(
            s.service.id.to_string(),
            Held {
                version: "1".into(),
                value: Arc::new(s),
            },
        );
    }
    for e in endpoints {
        let key = e.service.to_string();
        let set = c.endpoints.entry(key).or_insert_with(|| Held {
            version: "1".into(),
            value: Arc::new(EndpointSet {
                service: e.service.clone(),
                endpoints: vec![],
            }),
        });
        Arc::make_mut(&mut set.value).endpoints.push(e);
    }
    c
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

fn path(p: PathMatch) -> RouteMatch {
    RouteMatch {
        path: p,
        headers: vec![],
        query_params: vec![],
        method: None,
    }
}

fn route(name: &str, rules: Vec<Rule>) -> HttpRoute {
    HttpRoute {
        id: ObjectRef::new("default", name),
        parents: vec![ParentRef {
            service: ObjectRef::new("default", "api"),
            port: None,
        }],
        rules,
        retry_policy: Default::default(),
    }
}

#[test]
fn authorities() {
    let table: &[(&str, Option<(&str, Option<u16>)>)] = &[
        ("api.default", Some(("default/api", None))),
        ("api.default:8080", Some(("default/api", Some(8080)))),
        ("API.Default.svc", Some(("default/api", None))),
        (
            "api.default.svc.cluster.local:80",
            Some(("default/api", Some(80))),
        ),
        ("api.default.example.com", None),
        ("api", None),
        ("api.default:http", None),
        ("[::1]:80", None),
        (".default", None),
    ];
    for (input, want) in table {
        let got = parse_authority(input).map(|(s, p)| (s.to_string(), p));
        assert_eq!(got, want.map(|(s, p)| (s.to_owned(), p)), "{input}");
    }
}

#[test]
fn target_port_defaults() {
    let c = config(vec![svc("api", 8080, Protocol::Http1, vec![])], vec![]);
    assert_eq!(target_for(&c, "api.default").unwrap().port.port, 8080);
    assert_eq!(target_for(&c, "api.default:8080").unwrap().port.port, 8080);
    // The metrics label names the service, whichever form the client used.
    assert_eq!(
        target_for(&c, "API.default.svc.").unwrap().authority(),
        "api.default:8080"
    );
    assert!(target_for(&c, "api.default:81").is_none());
    assert!(target_for(&c, "web.default").is_none());
}

#[test]
fn no_route_goes_to_the_service_and_skips_unready_endpoints() {
    let c = config(
        vec![svc("api", 80, Protocol::Http1, vec![])],
        vec![
            ep("api", "10.0.0.1:4143", false),
            ep("api", "10.0.0.2:4143", true),
        ],
    );
    let t = target_for(&c, "api.default").unwrap();
    let headers = http::HeaderMap::new();
    let facts = RequestFacts {
        method: "GET",
        path: "/",
        query: None,
        headers: &headers,
    };
    for d in [0.0, 0.5, 0.99] {
        let plan = plan_http(&c, &t, &facts, &mut || d).unwrap();
        assert_eq!(plan.backend, ObjectRef::new("default", "api"));
        // The balancer chooses among the ready ones (crate::balance).
        assert_eq!(plan.endpoints.endpoints.len(), 2);
        assert_eq!(plan.route, None);
        assert_eq!(plan.traffic, TrafficPolicy::default());
    }
    let empty = config(vec![svc("api", 80, Protocol::Http1, vec![])], vec![]);
    let err = plan_http(&empty, &t, &facts, &mut || 0.0).unwrap_err();
    assert_eq!(err.reason(), "no-endpoints");
    // Only unready endpoints: no endpoints either.
    let unready = config(
        vec![svc("api", 80, Protocol::Http1, vec![])],
        vec![ep("api", "10.0.0.1:4143", false)],
    );
    let err = plan_http(&unready, &t, &facts, &mut || 0.0).unwrap_err();
    assert_eq!(err.reason(), "no-endpoints");
}

#[test]
fn match_precedence() {
    let mut with_method = path(PathMatch::Prefix("/api".into()));
    with_method.method = Some("POST".into());
    let mut with_header = path(PathMatch::Prefix("/api".into()));
    with_header.headers = vec![("x-canary".into(), "1".into())];
    let mut with_query = path(PathMatch::Prefix("/api".into()));
    with_query.query_params = vec![("v".into(), "2".into())];
    let rules = vec![
        rule(vec![path(PathMatch::Prefix("/".into()))], &[("root", 1)]),
        rule(
            vec![path(PathMatch::Prefix("/api".into()))],
            &[("prefix", 1)],
        ),
        rule(
            vec![path(PathMatch::Exact("/api/v1".into()))],
            &[("exact", 1)],
        ),
        rule(vec![with_method], &[("method", 1)]),
        rule(vec![with_header], &[("header", 1)]),
        rule(vec![with_query], &[("query", 1)]),
        rule(
            vec![path(PathMatch::Prefix("/api".into()))],
            &[("later-tie", 1)],
        ),
    ];
    let services: Vec<ServiceConfig> = [
        "api",
        "root",
        "prefix",
        "exact",
        "method",
        "header",
        "query",
        "later-tie",
    ]
    .iter()
    .map(|n| {
        svc(
            n,
            80,
            Protocol::Http1,
            if *n == "api" {
                vec![route("r", rules.clone())]
            } else {
                vec![]
            },
        )
    })
    .collect();
    let endpoints = [
        "root",
        "prefix",
        "exact",
        "method",
        "header",
        "query",
        "later-tie",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| ep(n, &format!("10.0.0.{}:4143", i + 1), true))
    .collect();
    let c = config(services, endpoints);
    let t = target_for(&c, "api.default").unwrap();
    let table: &[(&str, &str, &[(&str, &str)], &str)] = &[
        ("GET", "/", &[], "root"),
        ("GET", "/apix", &[], "root"),
        ("GET", "/api", &[], "prefix"),
        ("GET", "/api/v2", &[], "prefix"),
        ("GET", "/api/v1", &[], "exact"),
        ("POST", "/api/v1", &[("x-canary", "1")], "exact"),
        ("POST", "/api/x", &[("x-canary", "1")], "method"),
        ("GET", "/api/x?v=2", &[("x-canary", "1")], "header"),
        ("GET", "/api/x?a=1&v=2", &[], "query"),
        ("GET", "/api/x?v=3", &[], "prefix"),
    ];
    for (method, uri, headers, want) in table {
        let (p, q) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (*uri, None),
        };
        let mut h = http::HeaderMap::new();
        for (k, v) in *headers {
            h.insert(*k, v.parse().unwrap());
        }
        let facts = RequestFacts {
            method,
            path: p,
            query: q,
            headers: &h,
        };
        let plan = plan_http(&c, &t, &facts, &mut || 0.0).unwrap();
        assert_eq!(plan.backend.name, *want, "{method} {uri} {headers:?}");
    }
}

#[test]
fn unmatched_request_is_no_route() {
    let rules = vec![rule(
        vec![path(PathMatch::Exact("/only".into()))],
        &[("api", 1)],
    )];
    let c = config(
        vec![svc("api", 80, Protocol::Http1, vec![route("r", rules)])],
        vec![ep("api", "10.0.0.1:1", true)],
    );
    let t = target_for(&c, "api.default").unwrap();
    let h = http::HeaderMap::new();
    let facts = RequestFacts {
        method: "GET",
        path: "/other",
        query: None,
        headers: &h,
    };
    assert_eq!(
        plan_http(&c, &t, &facts, &mut || 0.0).unwrap_err().reason(),
        "no-route"
    );
}

#[test]
fn tcp_uses_the_catch_all_rule() {
    let rules = vec![rule(
        vec![path(PathMatch::Prefix("/".into()))],
        &[("v1", 0), ("v2", 5)],
    )];
    let c = config(
        vec![
            svc("api", 9000, Protocol::Tcp, vec![route("r", rules)]),
            svc("v2", 9000, Protocol::Tcp, vec![]),
        ],
        vec![ep("v2", "10.0.0.2:4143", true)],
    );
    let t = target_for(&c, "api.default").unwrap();
    let plan = plan_tcp(&c, &t, &mut || 0.0).unwrap();
    assert_eq!(plan.backend.name, "v2");
    assert_eq!(plan.protocol, Protocol::Tcp);
}

#[test]
fn weights_split_draws_proportionally() {
    let backends: Vec<Backend> = [("a", 90), ("b", 10)]
        .iter()
        .map(|(s, w)| Backend {
            service: ObjectRef::new("default", *s),
            port: None,
            weight: *w,
        })
        .collect();
    let mut b = 0;
    for i in 0..1000 {
        let d = i as f64 / 1000.0;
        if pick_backend(&backends, &mut || d).unwrap().service.name == "b" {
            b += 1;
        }
    }
    assert_eq!(b, 100);
}

proptest! {
    #[test]
    fn zero_weight_is_never_chosen(
        weights in proptest::collection::vec(0u32..5, 1..8),
        draw in 0.0f64..1.0,
    ) {
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend { service: ObjectRef::new("default", format!("b{i}")), port: None, weight: *w })
            .collect();
        match pick_backend(&backends, &mut || draw) {
            Some(b) => prop_assert!(b.weight > 0),
            None => prop_assert!(weights.iter().all(|w| *w == 0)),
        }
    }
}
