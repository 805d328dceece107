use proptest::prelude::*;

use super::*;

mod policy;
mod traffic;

const CANARY: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - name: http
    port: 8080
    protocol: http1
  selector:
    app: reviews
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  namespace: default
spec:
  parentRefs:
  - group: \"\"
    kind: Service
    name: reviews
    port: 8080
  rules:
  - name: canary
    matches:
    - path:
        type: PathPrefix
        value: /api
      headers:
      - name: x-canary
        value: \"true\"
      queryParams:
      - type: Exact
        name: debug
        value: \"1\"
      method: GET
    backendRefs:
    - name: reviews-v1
      port: 8080
      weight: 90
    - name: reviews-v2
      port: 8080
      weight: 10
    timeouts:
      request: 10s
      backendRequest: 2s500ms
    retry:
      codes: [502, 503]
      attempts: 3
      backoff: 100ms
";

fn route_of(d: &cfg::Document) -> &pb::HttpRoute {
    match d.kind.as_ref() {
        Some(DocKind::HttpRoute(r)) => r,
        other => panic!("not a route: {other:?}"),
    }
}

/// The problems of a refused text, as `field: message` strings.
fn problems(text: &str) -> Vec<String> {
    let e = parse_documents("t.yaml", text).unwrap_err();
    e.problems
        .iter()
        .map(|p| format!("{}: {}", p.field.as_deref().unwrap_or("-"), p.message))
        .collect()
}

/// The canary route with one line replaced.
fn canary_with(from: &str, to: &str) -> String {
    assert!(CANARY.contains(from), "{from}");
    CANARY.replacen(from, to, 1)
}

#[test]
fn the_canary_example_parses_into_wire_documents() {
    let docs = parse_documents("canary.yaml", CANARY).unwrap();
    assert_eq!(docs.len(), 2);
    let Some(DocKind::Service(s)) = docs[0].kind.as_ref() else {
        panic!("{docs:?}")
    };
    assert_eq!(
        (s.namespace.as_str(), s.name.as_str()),
        ("default", "reviews")
    );
    assert_eq!(s.ports[0].protocol, i32::from(pb::Protocol::Http1));
    assert_eq!(s.selector.get("app").map(String::as_str), Some("reviews"));
    let r = route_of(&docs[1]);
    let rule = &r.rules[0];
    assert_eq!(rule.backend_refs[1].weight, Some(10));
    assert_eq!(rule.backend_refs[1].port, 8080);
    let t = rule.timeouts.as_ref().unwrap();
    assert_eq!(t.backend_request.as_ref().unwrap().nanos, 500_000_000);
    assert_eq!(rule.retry.as_ref().unwrap().codes, [502, 503]);
    let m = &rule.matches[0];
    assert_eq!(
        m.path.as_ref().unwrap().r#type,
        i32::from(pb::path_match::Type::PathPrefix)
    );
    assert_eq!(m.method, "GET");
    assert_eq!(m.query_params[0].name, "debug");
}

#[test]
fn empty_documents_are_skipped_and_numbering_counts_the_others() {
    let text = format!("---\n# only a comment\n---\n{CANARY}---\n");
    assert_eq!(parse_documents("-", &text).unwrap().len(), 2);
    assert!(parse_documents("-", "").unwrap().is_empty());
    assert!(parse_documents("-", "# nothing\n---\n").unwrap().is_empty());
    let bad = text.replace("weight: 10", "weight: -5");
    let e = parse_documents("-", &bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        "-: document 2 (HTTPRoute default/reviews-canary): spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000, got -5"
    );
}

#[test]
fn every_violation_of_every_document_is_reported() {
    let bad = canary_with("value: /api", "value: api")
        .replace("method: GET", "method: FETCH")
        .replace("weight: 90", "weight: 1000001")
        .replace("port: 8080\n    protocol", "port: 0\n    protocol");
    let got = problems(&bad);
    assert_eq!(
        got,
        [
            "spec.ports[0].port: 0 is not a port (1 to 65535)",
            "spec.rules[0].matches[0].path.value: \"api\" must start with '/'",
            "spec.rules[0].matches[0].method: \"FETCH\" is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
            "spec.rules[0].backendRefs[0].weight: must be between 0 and 1000000, got 1000001",
        ],
        "{got:#?}"
    );
}

#[test]
fn structural_errors_name_their_path() {
    for (from, to, want) in [
        (
            "kind: HTTPRoute",
            "kind: HTTPRoute\nstatus: {}",
            "status: unknown field `status`",
        ),
        (
            "  parentRefs:",
            "  hostnames: [a]\n  parentRefs:",
            "spec.hostnames: unknown field `hostnames`",
        ),
        (
            "      weight: 90",
            "      weight: 90\n      filters: []",
            "spec.rules[0].backendRefs[0].filters: unknown field `filters`",
        ),
        (
            "    port: 8080\n  rules",
            "    port: 70000\n  rules",
            "spec.parentRefs[0].port: invalid value: integer `70000`, expected u16",
        ),
        (
            "weight: 90",
            "weight: ninety",
            "spec.rules[0].backendRefs[0].weight: invalid type: string \"ninety\", expected i64",
        ),
        (
            "  name: reviews-canary\n",
            "  nam: reviews-canary\n",
            "metadata.nam: unknown field `nam`, expected one of `name`, `namespace`, `annotations`",
        ),
    ] {
        let got = problems(&canary_with(from, to));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn unsupported_and_unknown_values_are_refused_by_name() {
    for (from, to, want) in [
        (
            "type: PathPrefix",
            "type: RegularExpression",
            "spec.rules[0].matches[0].path.type: RegularExpression is not supported: use Exact or PathPrefix",
        ),
        (
            "type: PathPrefix",
            "type: Prefix",
            "spec.rules[0].matches[0].path.type: unknown path match type \"Prefix\"",
        ),
        (
            "- type: Exact\n        name: debug",
            "- type: RegularExpression\n        name: debug",
            "spec.rules[0].matches[0].queryParams[0].type: RegularExpression is not supported",
        ),
        (
            "protocol: http1",
            "protocol: HTTP",
            "spec.ports[0].protocol: \"HTTP\" is not a protocol",
        ),
        (
            "request: 10s",
            "request: 10sec",
            "spec.rules[0].timeouts.request: \"10sec\" is not a Gateway API duration",
        ),
        (
            "backoff: 100ms",
            "backoff: 1.5s",
            "spec.rules[0].retry.backoff: \"1.5s\" is not a Gateway API duration",
        ),
        (
            "backendRequest: 2s500ms",
            "backendRequest: 11s",
            "spec.rules[0].timeouts.backendRequest: 11s exceeds request timeout 10s",
        ),
        (
            "codes: [502, 503]",
            "codes: [404]",
            "spec.rules[0].retry.codes[0]: 404 is not a 5xx",
        ),
        (
            "      port: 8080\n      weight: 90",
            "      port: 0\n      weight: 90",
            "spec.rules[0].backendRefs[0].port: 0 is not a port",
        ),
        (
            "- name: x-canary",
            "- name: \"x canary\"",
            "spec.rules[0].matches[0].headers[0].name: \"x canary\" is not a valid HTTP header name",
        ),
        (
            "kind: Service\n    name: reviews",
            "kind: Gateway\n    name: reviews",
            "spec.parentRefs[0].kind: \"Gateway\" is not supported",
        ),
    ] {
        let got = problems(&canary_with(from, to));
        assert_eq!(got.len(), 1, "{to}: {got:?}");
        assert!(
            got[0].starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn weights_all_zero_is_refused_once() {
    let got = problems(&canary_with("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"));
    assert_eq!(
        got,
        ["spec.rules[0].backendRefs: every weight is 0: at least one backend must take traffic"]
    );
}

#[test]
fn kinds_and_api_versions_are_checked_first() {
    let svc = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: tcp}]}\n";
    assert!(parse_documents("s", svc).is_ok());
    for (text, want) in [
        (
            svc.replace("weft.io/v1alpha1", "v1"),
            "apiVersion: \"v1\" does not serve kind Service: use weft.io/v1alpha1",
        ),
        (
            svc.replace("apiVersion: weft.io/v1alpha1\n", ""),
            "apiVersion: required: weft.io/v1alpha1",
        ),
        (
            svc.replace("kind: Service", "kind: Deployment"),
            "kind: unknown kind \"Deployment\"",
        ),
        (svc.replace("kind: Service\n", ""), "kind: required"),
        (
            svc.replace("kind: Service", "kind: Endpoint"),
            "kind: Endpoint objects are registered",
        ),
        ("- a\n- b\n".to_owned(), "-: a document must be a mapping"),
        (
            "just a string\n".to_owned(),
            "-: a document must be a mapping",
        ),
    ] {
        let got = problems(&text);
        assert!(
            got.len() == 1 && got[0].starts_with(want),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn malformed_yaml_names_its_document_and_line() {
    let text = format!("{CANARY}---\napiVersion: weft.io/v1alpha1\nkind: [Service\n");
    let e = parse_documents("bad.yaml", &text).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    let line = e.to_string();
    assert!(
        line.starts_with("bad.yaml: document 3: invalid YAML: "),
        "{line}"
    );
    assert!(line.contains("line"), "{line}");
}

#[test]
fn namespace_defaults_and_parse_refs_is_lenient() {
    let text = canary_with("weight: 90", "weight: -1");
    assert!(parse_documents("d", &text).is_err());
    let refs = parse_refs("d", &text).unwrap();
    let got: Vec<_> = refs
        .iter()
        .map(|(o, r)| (o.number, r.kind, r.namespace.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, i32::from(cfg::Kind::Service), "default", "reviews"),
            (
                2,
                i32::from(cfg::Kind::HttpRoute),
                "default",
                "reviews-canary"
            ),
        ]
    );
    assert!(parse_refs("d", "kind: Service\napiVersion: weft.io/v1alpha1\n").is_err());
}

#[test]
fn output_yaml_reapplies_to_the_same_documents() {
    let docs = parse_documents("c", CANARY).unwrap();
    let manifests: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
    let yaml = to_yaml(&manifests).unwrap();
    assert_eq!(parse_documents("c", &yaml).unwrap(), docs, "{yaml}");
    assert!(yaml.contains("backendRequest: 2s500ms"), "{yaml}");
    assert!(
        yaml.contains("apiVersion: gateway.networking.k8s.io/v1"),
        "{yaml}"
    );
    let json = to_json(&manifests, false).unwrap();
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&back["apiVersion"], &back["kind"]),
        (&"v1".into(), &"List".into())
    );
    assert_eq!(
        back["items"][1]["spec"]["rules"][0]["backendRefs"][1]["weight"],
        10
    );
    // The List applies back to the same documents, each item its own origin.
    let parsed = parse_manifests("c.json", &json).unwrap();
    assert_eq!(
        parsed
            .iter()
            .map(|p| p.document.clone())
            .collect::<Vec<_>>(),
        docs
    );
    assert_eq!(
        parsed[1].origin.to_string(),
        "c.json: document 1, item 2 (HTTPRoute default/reviews-canary)"
    );
    // One named object is printed as itself.
    let one: serde_json::Value =
        serde_json::from_str(&to_json(&manifests[1..], true).unwrap()).unwrap();
    assert_eq!(one["kind"], "HTTPRoute");
    // No objects: an empty List.
    let none: serde_json::Value = serde_json::from_str(&to_json(&[], false).unwrap()).unwrap();
    assert_eq!(none["items"], serde_json::json!([]));
}

/// A `List` whose items are wrong says which item; a List that is not one says why; and
/// `delete -f` reads the items too.
#[test]
fn list_documents_name_the_item_at_fault() {
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "weft.io/v1alpha1", "kind": "Service",
         "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80, "protocol": "http1"}]}},
        {"apiVersion": "weft.io/v1alpha1", "kind": "Service", "metadata": {"name": "b"}}
    ]}"#;
    let e = parse_manifests("l.json", list).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        e.to_string()
            .starts_with("l.json: document 1, item 2 (Service default/b): "),
        "{e}"
    );
    let refs = parse_refs("l.json", list).unwrap();
    assert_eq!(
        refs.iter()
            .map(|(o, r)| (o.item, r.name.as_str()))
            .collect::<Vec<_>>(),
        [(Some(1), "a"), (Some(2), "b")]
    );

    let e = parse_manifests("l.yaml", "apiVersion: v2\nkind: List\nitems: []\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "l.yaml: document 1: apiVersion: a List is apiVersion v1, got \"v2\""
    );
    let e = parse_manifests("l.yaml", "apiVersion: v1\nkind: List\nitems: 3\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "l.yaml: document 1: items: must be a list of objects"
    );
    assert!(
        parse_manifests("l.yaml", "apiVersion: v1\nkind: List\n")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn stored_json_is_the_manifest_form() {
    let docs = parse_documents("c", CANARY).unwrap();
    let json = document_to_json(&docs[1]);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["kind"], "HTTPRoute");
    assert_eq!(v["spec"]["parentRefs"][0]["name"], "reviews");
    assert_eq!(
        document_from_json(cfg::Kind::HttpRoute, &json).unwrap(),
        docs[1]
    );
    let e = document_from_json(cfg::Kind::Service, &json).unwrap_err();
    assert!(e.to_string().contains("kind"), "{e}");
    let e = document_from_json(cfg::Kind::HttpRoute, b"{\"kind\":").unwrap_err();
    assert!(e.to_string().starts_with("stored HTTPRoute JSON"), "{e}");
}

#[test]
fn endpoint_json_round_trips() {
    let e = pb::Endpoint {
        namespace: "default".into(),
        service: "reviews".into(),
        address: "[fd00::1]:8080".into(),
        identity: "spiffe://mesh.test/ns/default/sa/reviews".into(),
        labels: [("version".to_owned(), "v2".to_owned())].into(),
        zone: "z1".into(),
        weight: 3,
        ready: true,
    };
    let json = endpoint_to_json(&e);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["spec"]["address"], "[fd00::1]:8080");
    assert_eq!(endpoint_from_json(&json).unwrap(), e);
    assert!(
        endpoint_from_json(&document_to_json(&parse_documents("c", CANARY).unwrap()[0])).is_err()
    );
}

// ---- property tests ---------------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}[a-z0-9]"
}

fn duration_ms(max_ms: i64) -> impl Strategy<Value = prost_types::Duration> {
    (0..=max_ms).prop_map(|ms| prost_types::Duration {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    })
}

fn duration_ms_between(min_ms: i64, max_ms: i64) -> impl Strategy<Value = prost_types::Duration> {
    (min_ms..=max_ms).prop_map(|ms| prost_types::Duration {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    })
}

/// Valid traffic policies, every field present or absent (0 and Unspecified are "absent").
fn traffic_policy() -> impl Strategy<Value = pb::TrafficPolicy> {
    let outlier = (
        prop::option::of(0u32..=1000),
        prop::option::of(duration_ms_between(100, 3_600_000)),
        prop::option::of(0u32..=100),
    )
        .prop_map(
            |(consecutive_failures, base_ejection_time, max_ejection_percent)| {
                pb::OutlierDetection {
                    consecutive_failures,
                    base_ejection_time,
                    max_ejection_percent,
                }
            },
        );
    (
        0i32..=3,
        prop::option::of(outlier),
        prop_oneof![Just(0u32), 1u32..=1_000_000],
    )
        .prop_map(|(load_balancer, outlier_detection, max_pending_requests)| {
            pb::TrafficPolicy {
                load_balancer,
                outlier_detection,
                max_pending_requests,
            }
        })
}

/// Valid retry policies. A budget whose every field is absent is generated as no budget: the
/// annotations cannot tell the two apart, and they mean the same.
fn retry_policy() -> impl Strategy<Value = pb::RetryPolicy> {
    let on = prop::collection::vec(
        prop::sample::select(model::RetryOn::ALL.map(model::RetryOn::as_str).to_vec()),
        0..4,
    );
    let grpc_on = prop::collection::vec(
        prop::sample::select(model::GRPC_CODES.map(|(name, _)| name).to_vec()),
        0..3,
    );
    let budget = (
        prop::option::of(0u32..=1000),
        prop::option::of(0u32..=100_000),
        prop::option::of((1i64..=60).prop_map(|s| prost_types::Duration {
            seconds: s,
            nanos: 0,
        })),
    );
    (on, grpc_on, any::<bool>(), budget).prop_map(
        |(on, grpc_on, non_idempotent, (percent, min_per_second, window))| pb::RetryPolicy {
            on: on.into_iter().map(str::to_owned).collect(),
            grpc_on: grpc_on.into_iter().map(str::to_owned).collect(),
            non_idempotent,
            budget: (percent.is_some() || min_per_second.is_some() || window.is_some()).then_some(
                pb::RetryBudget {
                    percent,
                    min_per_second,
                    window,
                },
            ),
        },
    )
}

fn service() -> impl Strategy<Value = pb::Service> {
    (
        label(),
        label(),
        prop::collection::btree_map(1u32..=65535, (0usize..4, any::<bool>()), 1..4),
        prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..3),
        prop::option::of(traffic_policy()),
        0i32..=3,
    )
        .prop_map(
            |(namespace, name, ports, selector, traffic_policy, default_inbound_policy)| {
                pb::Service {
                    namespace,
                    name,
                    ports: ports
                        .into_iter()
                        .enumerate()
                        .map(|(i, (port, (proto, named)))| pb::Port {
                            name: if named {
                                format!("p{i}")
                            } else {
                                String::new()
                            },
                            port,
                            protocol: PROTOCOL_VALUES[proto],
                        })
                        .collect(),
                    selector,
                    routes: vec![],
                    traffic_policy,
                    default_inbound_policy,
                    authorization_policies: vec![],
                    rate_limit_policy: None,
                }
            },
        )
}

const PROTOCOL_VALUES: [i32; 4] = [1, 2, 3, 4];

fn route_match() -> impl Strategy<Value = pb::HttpRouteMatch> {
    (
        prop::option::of((1i32..=2, "(/[a-z0-9]{1,5}){0,3}")),
        0usize..3,
        0usize..3,
        prop::sample::select(vec!["", "GET", "POST", "PATCH"]),
    )
        .prop_map(|(path, nh, nq, method)| pb::HttpRouteMatch {
            path: path.map(|(ty, v)| pb::PathMatch {
                r#type: ty,
                value: if v.is_empty() { "/".into() } else { v },
            }),
            headers: (0..nh)
                .map(|i| pb::HeaderMatch {
                    name: format!("x-h{i}"),
                    value: format!("v{i}"),
                })
                .collect(),
            query_params: (0..nq)
                .map(|i| pb::QueryParamMatch {
                    name: format!("q{i}"),
                    value: String::new(),
                })
                .collect(),
            method: method.into(),
        })
}

fn rule(ns: String) -> impl Strategy<Value = pb::HttpRouteRule> {
    let backend = (
        label(),
        prop::option::of(0u32..=65535),
        prop::option::of(1i64..=1_000_000),
        any::<bool>(),
    );
    (
        prop::option::of(label()),
        prop::collection::vec(route_match(), 0..3),
        prop::collection::vec(backend, 1..4),
        prop::option::of((prop::option::of(duration_ms(86_400_000)), any::<bool>())),
        prop::option::of((
            prop::collection::btree_set(500u32..600, 0..3),
            0u32..=10,
            prop::option::of(duration_ms(60_000)),
        )),
    )
        .prop_map(
            move |(name, matches, backends, timeouts, retry)| pb::HttpRouteRule {
                name: name.unwrap_or_default(),
                matches,
                backend_refs: backends
                    .into_iter()
                    .map(|(name, port, weight, explicit_ns)| pb::BackendRef {
                        group: String::new(),
                        kind: if explicit_ns {
                            "Service".into()
                        } else {
                            String::new()
                        },
                        namespace: if explicit_ns {
                            ns.clone()
                        } else {
                            String::new()
                        },
                        name,
                        port: port.unwrap_or(0),
                        weight,
                    })
                    .collect(),
                // backendRequest is at most request: half of it, rounded to whole ms.
                timeouts: timeouts.map(|(request, with_backend)| pb::Timeouts {
                    backend_request: request.filter(|_| with_backend).map(|r| {
                        let ms = (r.seconds * 1000 + i64::from(r.nanos / 1_000_000)) / 2;
                        prost_types::Duration {
                            seconds: ms / 1000,
                            nanos: (ms % 1000) as i32 * 1_000_000,
                        }
                    }),
                    request,
                }),
                retry: retry.map(|(codes, attempts, backoff)| pb::Retry {
                    codes: codes.into_iter().collect(),
                    attempts,
                    backoff,
                }),
            },
        )
}

fn route() -> impl Strategy<Value = pb::HttpRoute> {
    (label(), label()).prop_flat_map(|(namespace, name)| {
        let parents = prop::collection::vec((label(), prop::option::of(1u32..=65535)), 1..3);
        let rules = prop::collection::vec(rule(namespace.clone()), 1..4);
        let retry_policy = prop::option::of(retry_policy());
        (parents, rules, retry_policy).prop_map(move |(parents, rules, retry_policy)| {
            pb::HttpRoute {
                namespace: namespace.clone(),
                name: name.clone(),
                parent_refs: parents
                    .into_iter()
                    .map(|(name, port)| pb::ParentRef {
                        group: String::new(),
                        kind: "Service".into(),
                        namespace: String::new(),
                        name,
                        port: port.unwrap_or(0),
                    })
                    .collect(),
                rules,
                retry_policy,
            }
        })
    })
}

fn document() -> impl Strategy<Value = cfg::Document> {
    prop_oneof![
        service().prop_map(|s| cfg::Document {
            kind: Some(DocKind::Service(s))
        }),
        route().prop_map(|r| cfg::Document {
            kind: Some(DocKind::HttpRoute(r))
        }),
        policy::authorization_policy().prop_map(|p| cfg::Document {
            kind: Some(DocKind::AuthorizationPolicy(p))
        }),
        policy::rate_limit_policy().prop_map(|p| cfg::Document {
            kind: Some(DocKind::RateLimitPolicy(p))
        }),
    ]
}

fn is_valid(d: &cfg::Document) -> bool {
    match d.kind.clone() {
        Some(DocKind::Service(s)) => model::Service::try_from(s).is_ok(),
        Some(DocKind::HttpRoute(r)) => model::HttpRoute::try_from(r).is_ok(),
        Some(DocKind::AuthorizationPolicy(p)) => model::AuthorizationPolicy::try_from(p).is_ok(),
        Some(DocKind::RateLimitPolicy(p)) => model::RateLimitPolicy::try_from(p).is_ok(),
        None => false,
    }
}

fn kind_of(d: &cfg::Document) -> cfg::Kind {
    match d.kind {
        Some(DocKind::Service(_)) => cfg::Kind::Service,
        Some(DocKind::HttpRoute(_)) => cfg::Kind::HttpRoute,
        Some(DocKind::AuthorizationPolicy(_)) => cfg::Kind::AuthorizationPolicy,
        Some(DocKind::RateLimitPolicy(_)) => cfg::Kind::RateLimitPolicy,
        None => cfg::Kind::Unspecified,
    }
}

/// What the store serves for a valid document: the model's own wire form.
fn served(d: cfg::Document) -> cfg::Document {
    let kind = match d.kind {
        Some(DocKind::Service(s)) => {
            DocKind::Service(pb::Service::from(&model::Service::try_from(s).unwrap()))
        }
        Some(DocKind::HttpRoute(r)) => {
            DocKind::HttpRoute(pb::HttpRoute::from(&model::HttpRoute::try_from(r).unwrap()))
        }
        Some(DocKind::AuthorizationPolicy(p)) => DocKind::AuthorizationPolicy(
            pb::AuthorizationPolicy::from(&model::AuthorizationPolicy::try_from(p).unwrap()),
        ),
        Some(DocKind::RateLimitPolicy(p)) => DocKind::RateLimitPolicy(pb::RateLimitPolicy::from(
            &model::RateLimitPolicy::try_from(p).unwrap(),
        )),
        None => unreachable!(),
    };
    cfg::Document { kind: Some(kind) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// pb → manifest → JSON → pb is the identity for valid documents (the store's round trip).
    #[test]
    fn json_round_trip_is_identity(d in document()) {
        prop_assert!(is_valid(&d), "the generator made an invalid document: {d:?}");
        prop_assert_eq!(document_from_json(kind_of(&d), &document_to_json(&d)).unwrap(), d);
    }

    /// `get -o yaml` and `get -o json` (a List) output apply back to the same documents.
    #[test]
    fn yaml_output_reapplies(docs in prop::collection::vec(document(), 1..4)) {
        let manifests: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
        let yaml = to_yaml(&manifests).unwrap();
        prop_assert_eq!(parse_documents("-", &yaml).unwrap(), docs.clone());
        let json = to_json(&manifests, false).unwrap();
        prop_assert_eq!(parse_documents("-", &json).unwrap(), docs);
    }

    /// What the store serves (the model's own wire form: defaults omitted, the rest explicit)
    /// prints as YAML that applies back to the same objects, so re-applying `get -o yaml` is
    /// `unchanged`.
    #[test]
    fn served_documents_reapply_unchanged(d in document()) {
        let served = served(d);
        let yaml = to_yaml(&[Manifest::of_document(&served).unwrap()]).unwrap();
        prop_assert_eq!(parse_documents("-", &yaml).unwrap(), vec![served], "{}", yaml);
    }

    #[test]
    fn the_parser_never_panics(text in any::<String>()) {
        let _ = parse_documents("-", &text);
        let _ = parse_refs("-", &text);
    }

    /// Mutations of a valid file: YAML-ish noise spliced in anywhere.
    #[test]
    fn the_parser_never_panics_on_near_misses(
        at in 0usize..CANARY.len(),
        noise in prop::sample::select(vec!["- ", ": ", "\n---\n", "&a ", "*a", "{", "]", "!!int ", "\t", "'", "\"", "? ", "|\n", "%YAML 1.2\n", "-1", "99999999999999999999"]),
    ) {
        let mut text = CANARY.to_owned();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, noise);
        let _ = parse_documents("-", &text);
    }
}
