use proptest::prelude::*;

use super::*;

fn service(ports: Vec<pb::Port>) -> pb::Service {
    pb::Service {
        namespace: "default".into(),
        name: "reviews".into(),
        ports,
        ..Default::default()
    }
}

fn http_port(n: u32) -> pb::Port {
    pb::Port {
        name: "http".into(),
        port: n,
        protocol: pb::Protocol::Http1.into(),
    }
}

fn backend(name: &str, weight: Option<i64>) -> pb::BackendRef {
    pb::BackendRef {
        name: name.into(),
        weight,
        ..Default::default()
    }
}

fn route(rules: Vec<pb::HttpRouteRule>) -> pb::HttpRoute {
    pb::HttpRoute {
        namespace: "default".into(),
        name: "reviews".into(),
        parent_refs: vec![pb::ParentRef {
            kind: "Service".into(),
            name: "reviews".into(),
            ..Default::default()
        }],
        rules,
        retry_policy: None,
    }
}

fn rule(backends: Vec<pb::BackendRef>) -> pb::HttpRouteRule {
    pb::HttpRouteRule {
        backend_refs: backends,
        ..Default::default()
    }
}

fn fields(e: Invalid) -> Vec<String> {
    e.0.into_iter().map(|e| e.field).collect()
}

#[test]
fn a_canary_route_converts() {
    let r = HttpRoute::try_from(route(vec![rule(vec![
        backend("reviews-v1", Some(90)),
        backend("reviews-v2", Some(10)),
    ])]))
    .unwrap();
    assert_eq!(r.parents[0].service, ObjectRef::new("default", "reviews"));
    let weights: Vec<u32> = r.rules[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
    assert_eq!(r.rules[0].matches[0].path, PathMatch::Prefix("/".into()));
}

#[test]
fn weights_are_refused_with_their_path() {
    let cases: [(Vec<pb::BackendRef>, &str); 4] = [
        (
            vec![backend("a", Some(-5))],
            "spec.rules[0].backendRefs[0].weight",
        ),
        (
            vec![backend("a", Some(1)), backend("b", Some(1_000_001))],
            "spec.rules[0].backendRefs[1].weight",
        ),
        (
            vec![backend("a", Some(0)), backend("b", Some(0))],
            "spec.rules[0].backendRefs",
        ),
        (vec![], "spec.rules[0].backendRefs"),
    ];
    for (backends, field) in cases {
        let err = HttpRoute::try_from(route(vec![rule(backends.clone())])).unwrap_err();
        assert_eq!(fields(err), [field], "{backends:?}");
    }
    // Absent weights default to 1, and one zero among others is fine.
    HttpRoute::try_from(route(vec![rule(vec![
        backend("a", None),
        backend("b", Some(0)),
    ])]))
    .unwrap();
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let mut r = route(vec![rule(vec![backend("Bad_Name", Some(-1))])]);
    r.name = "UPPER".into();
    r.rules[0].matches = vec![pb::HttpRouteMatch {
        path: Some(pb::PathMatch {
            r#type: pb::path_match::Type::PathPrefix.into(),
            value: "no-slash".into(),
        }),
        method: "FETCH".into(),
        headers: vec![pb::HeaderMatch {
            name: "bad header".into(),
            value: "x".into(),
        }],
        ..Default::default()
    }];
    r.rules[0].timeouts = Some(pb::Timeouts {
        request: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        backend_request: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
    });
    r.rules[0].retry = Some(pb::Retry {
        codes: vec![503, 404],
        attempts: 11,
        backoff: None,
    });
    let got = fields(HttpRoute::try_from(r).unwrap_err());
    assert_eq!(
        got,
        [
            "metadata.name",
            "spec.rules[0].matches[0].path.value",
            "spec.rules[0].matches[0].headers[0].name",
            "spec.rules[0].matches[0].method",
            "spec.rules[0].backendRefs[0].name",
            "spec.rules[0].backendRefs[0].weight",
            "spec.rules[0].timeouts.backendRequest",
            "spec.rules[0].retry.codes[1]",
            "spec.rules[0].retry.attempts",
        ]
    );
}

#[test]
fn parent_and_backend_kinds_must_be_services_in_reach() {
    let mut r = route(vec![rule(vec![pb::BackendRef {
        namespace: "other".into(),
        kind: "ServiceImport".into(),
        ..backend("a", None)
    }])]);
    r.parent_refs[0].group = "gateway.networking.k8s.io".into();
    r.parent_refs[0].kind = "Gateway".into();
    let got = fields(HttpRoute::try_from(r).unwrap_err());
    assert_eq!(
        got,
        [
            "spec.parentRefs[0].group",
            "spec.parentRefs[0].kind",
            "spec.rules[0].backendRefs[0].kind",
            "spec.rules[0].backendRefs[0].namespace",
        ]
    );
}

#[test]
fn durations_are_whole_milliseconds_and_in_range() {
    // Found by the `config_document` fuzz target: a backoff of 24.911989ms was accepted, then
    // stored as the manifest's `24ms` and read back as another route.
    let with_backoff = |seconds, nanos| {
        let mut r = route(vec![rule(vec![backend("reviews", Some(1))])]);
        r.rules[0].retry = Some(pb::Retry {
            codes: vec![503],
            attempts: 2,
            backoff: Some(prost_types::Duration { seconds, nanos }),
        });
        HttpRoute::try_from(r)
    };
    let err = with_backoff(0, 24_911_989).unwrap_err().to_string();
    assert!(err.contains("spec.rules[0].retry.backoff"), "{err}");
    assert!(err.contains("whole number of milliseconds"), "{err}");
    let err = with_backoff(1, 1_000_000_000).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    let ok = with_backoff(0, 25_000_000).unwrap();
    assert_eq!(
        ok.rules[0].retry.as_ref().map(|r| r.backoff),
        Some(std::time::Duration::from_millis(25))
    );
}

#[test]
fn paths_are_checked() {
    for bad in [
        "", "foo", "/a//b", "/a/../b", "/a/./b", "/a?x=1", "/a#f", "/a b",
    ] {
        assert!(path_value(bad).is_err(), "{bad:?}");
    }
    for good in ["/", "/api", "/api/v1/", "/a-b_c.d~e"] {
        path_value(good).unwrap();
    }
}

#[test]
fn services_need_valid_unique_ports_and_a_protocol() {
    let mut dup = http_port(80);
    dup.name = "web".into();
    let cases: [(Vec<pb::Port>, &[&str]); 4] = [
        (vec![], &["spec.ports"]),
        (vec![http_port(0)], &["spec.ports[0].port"]),
        (vec![http_port(70000)], &["spec.ports[0].port"]),
        (vec![http_port(80), dup], &["spec.ports[1].port"]),
    ];
    for (ports, want) in cases {
        let got = fields(Service::try_from(service(ports.clone())).unwrap_err());
        assert_eq!(got, want, "{ports:?}");
    }
    let mut p = http_port(80);
    p.protocol = 0;
    assert_eq!(
        fields(Service::try_from(service(vec![p])).unwrap_err()),
        ["spec.ports[0].protocol"]
    );
    let mut s = service(vec![http_port(80)]);
    s.selector.insert("version".into(), "v2!".into());
    assert_eq!(
        fields(Service::try_from(s).unwrap_err()),
        ["spec.selector[\"version\"]"]
    );
}

#[test]
fn selectors_pick_endpoints_of_the_namespace() {
    let mut s = Service::try_from(service(vec![http_port(80)])).unwrap();
    s.id.name = "reviews-v2".into();
    s.selector = [("app", "reviews"), ("version", "v2")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let ep = |ns: &str, svc: &str, version: &str| Endpoint {
        service: ObjectRef::new(ns, svc),
        address: "10.0.0.1:80".parse().unwrap(),
        identity: "spiffe://td/ns/default/sa/reviews".parse().unwrap(),
        labels: [("app", "reviews"), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        zone: None,
        weight: 1,
        ready: true,
    };
    assert!(s.selects(&ep("default", "reviews", "v2")));
    assert!(!s.selects(&ep("default", "reviews", "v1")));
    assert!(!s.selects(&ep("other", "reviews", "v2")));
    // Registered under its own name: selected whatever the labels.
    assert!(s.selects(&ep("default", "reviews-v2", "v1")));
}

#[test]
fn endpoints_are_checked() {
    let ok = pb::Endpoint {
        namespace: "default".into(),
        service: "reviews".into(),
        address: "[fd00::1]:9080".into(),
        identity: "spiffe://td/ns/default/sa/reviews".into(),
        ready: true,
        ..Default::default()
    };
    let e = Endpoint::try_from(ok.clone()).unwrap();
    assert_eq!(e.weight, 1);
    for (field, bad) in [
        (
            "address",
            pb::Endpoint {
                address: "10.0.0.1".into(),
                ..ok.clone()
            },
        ),
        (
            "address",
            pb::Endpoint {
                address: "0.0.0.0:80".into(),
                ..ok.clone()
            },
        ),
        (
            "address",
            pb::Endpoint {
                address: "10.0.0.1:0".into(),
                ..ok.clone()
            },
        ),
        (
            "identity",
            pb::Endpoint {
                identity: "https://x".into(),
                ..ok.clone()
            },
        ),
        (
            "weight",
            pb::Endpoint {
                weight: 10_001,
                ..ok.clone()
            },
        ),
        (
            "service",
            pb::Endpoint {
                service: "".into(),
                ..ok.clone()
            },
        ),
    ] {
        assert_eq!(
            fields(Endpoint::try_from(bad.clone()).unwrap_err()),
            [field],
            "{bad:?}"
        );
    }
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}[a-z0-9]"
}

fn arb_route() -> impl Strategy<Value = pb::HttpRoute> {
    let arb_backend = (
        arb_name(),
        0u32..3,
        proptest::option::of(0i64..=MAX_BACKEND_WEIGHT),
    )
        .prop_map(|(name, port, weight)| pb::BackendRef {
            name,
            port: port * 8080,
            weight,
            ..Default::default()
        });
    let arb_match = (
        prop_oneof![Just(1), Just(2)],
        "(/[a-z0-9]{1,5}){0,3}",
        proptest::collection::vec(("x-[a-z]{1,6}", "[a-z0-9]{0,6}"), 0..2),
        prop_oneof![Just(""), Just("GET"), Just("POST")],
    )
        .prop_map(|(ty, path, headers, method)| pb::HttpRouteMatch {
            path: Some(pb::PathMatch {
                r#type: ty,
                value: if path.is_empty() { "/".into() } else { path },
            }),
            headers: headers
                .into_iter()
                .enumerate()
                .map(|(i, (n, v))| pb::HeaderMatch {
                    name: format!("{n}{i}"),
                    value: v,
                })
                .collect(),
            query_params: vec![],
            method: method.into(),
        });
    let arb_rule = (
        proptest::collection::vec(arb_match, 1..3),
        proptest::collection::vec(arb_backend, 1..4),
        proptest::option::of((
            0i64..100,
            0u32..11,
            proptest::collection::btree_set(500u32..600, 0..3),
        )),
    )
        .prop_map(|(matches, mut backend_refs, retry)| {
            backend_refs[0].weight = Some(1);
            pb::HttpRouteRule {
                matches,
                backend_refs,
                retry: retry.map(|(ms, attempts, codes)| pb::Retry {
                    codes: codes.into_iter().collect(),
                    attempts,
                    backoff: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: i32::try_from(ms * 1_000_000).unwrap(),
                    }),
                }),
                ..Default::default()
            }
        });
    (arb_name(), proptest::collection::vec(arb_rule, 1..4)).prop_map(|(name, rules)| {
        let mut r = route(rules);
        r.name = name;
        r
    })
}

proptest! {
    /// The boundary is stable: a valid message → domain → wire → domain changes nothing.
    #[test]
    fn route_round_trips(r in arb_route()) {
        let domain = HttpRoute::try_from(r).unwrap();
        let again = HttpRoute::try_from(pb::HttpRoute::from(&domain)).unwrap();
        prop_assert_eq!(domain, again);
    }

    /// Arbitrary weights: accepted exactly when each is in range and not all are zero.
    #[test]
    fn weight_rule(weights in proptest::collection::vec(-3i64..=MAX_BACKEND_WEIGHT + 3, 1..5)) {
        let backends = weights.iter().enumerate().map(|(i, w)| backend(&format!("b{i}"), Some(*w))).collect();
        let ok = weights.iter().all(|w| (0..=MAX_BACKEND_WEIGHT).contains(w)) && weights.iter().any(|w| *w > 0);
        prop_assert_eq!(HttpRoute::try_from(route(vec![rule(backends)])).is_ok(), ok);
    }

    #[test]
    fn dns_label_never_panics(s in ".{0,80}") {
        let _ = dns_label(&s);
        let _ = label_key(&s);
        let _ = path_value(&s);
    }
}

#[test]
fn an_object_refs_key_is_its_display_form() {
    let r = ObjectRef::new("default", "reviews-v2");
    assert_eq!(r.key(), r.to_string());
    assert_eq!(r.key(), "default/reviews-v2");
}
