//! AuthorizationPolicy, RateLimitPolicy and a Service's `spec.defaultInboundPolicy`: parsing,
//! refusals named by file, document and field, the way back, and the generators the round-trip
//! properties use.

use super::*;

const POLICIES: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: http1}, {name: db, port: 5432, protocol: tcp}]
  defaultInboundPolicy: authenticated
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: Allow
  mode: Enforce
  from:
  - identities: [\"spiffe://mesh.test/ns/shop/sa/web\"]
    namespaces: [shop]
    serviceAccounts: [{namespace: shop, name: web}]
    authenticated: true
    networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  - unauthenticated: true
  to:
  - ports: [8080]
    methods: [GET, HEAD]
    paths: [{type: Exact, value: /healthz}, {type: PathPrefix, value: /api/}]
    headers: [{name: x-tenant, value: blue}]
---
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-limits, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  total: {requestsPerSecond: 1000, burst: 2000}
  perIdentity: {requestsPerSecond: 50, burst: 100}
  overrides: [{identities: [\"spiffe://mesh.test/ns/batch/sa/loader\"], requestsPerSecond: 500, burst: 1000}]
";

/// The example with one piece replaced.
fn policies_with(from: &str, to: &str) -> String {
    assert!(POLICIES.contains(from), "{from}");
    POLICIES.replacen(from, to, 1)
}

/// The whole refusal of a text, as weftctl prints it (file, document, field, message).
fn refusal(text: &str) -> String {
    parse_documents("policy.yaml", text)
        .unwrap_err()
        .to_string()
}

const AUTHZ: &str = "policy.yaml: document 2 (AuthorizationPolicy shop/api-from-web)";
const LIMITS: &str = "policy.yaml: document 3 (RateLimitPolicy shop/api-limits)";

#[test]
fn the_examples_parse_into_wire_documents() {
    let docs = parse_documents("p", POLICIES).unwrap();
    let Some(DocKind::Service(s)) = &docs[0].kind else {
        panic!("{docs:?}")
    };
    assert_eq!(
        s.default_inbound_policy,
        i32::from(pb::DefaultInboundPolicy::Authenticated)
    );
    let Some(DocKind::AuthorizationPolicy(p)) = &docs[1].kind else {
        panic!("{docs:?}")
    };
    assert_eq!(
        p.target_ref,
        Some(pb::PolicyTargetRef {
            kind: "Service".into(),
            name: "api".into()
        })
    );
    assert_eq!(p.action, i32::from(pb::AuthorizationAction::Allow));
    assert_eq!(p.mode, i32::from(pb::PolicyMode::Enforce));
    assert!(p.from[0].authenticated && !p.from[0].unauthenticated);
    assert!(p.from[1].unauthenticated);
    assert_eq!(p.from[0].service_accounts[0].name, "web");
    assert_eq!(p.from[0].networks[0].except, ["10.1.0.0/16"]);
    assert_eq!(p.to[0].ports, [8080]);
    assert_eq!(
        p.to[0].paths[1].r#type,
        i32::from(pb::path_match::Type::PathPrefix)
    );
    assert_eq!(p.to[0].headers[0].name, "x-tenant");
    let Some(DocKind::RateLimitPolicy(r)) = &docs[2].kind else {
        panic!("{docs:?}")
    };
    assert_eq!(
        r.total,
        Some(pb::RateLimit {
            requests_per_second: 1000,
            burst: 2000
        })
    );
    assert_eq!(r.overrides[0].requests_per_second, 500);

    // Absent fields: no default inbound policy, Enforce, any client, every request, and a burst
    // of one second's requests.
    let minimal = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: api}
spec: {ports: [{port: 80, protocol: http1}]}
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {targetRef: {kind: Namespace, name: default}, action: Deny}
---
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: l}
spec: {targetRef: {name: api}, total: {requestsPerSecond: 10}}
";
    let docs = parse_documents("m", minimal).unwrap();
    let Some(DocKind::Service(s)) = &docs[0].kind else {
        panic!()
    };
    assert_eq!(s.default_inbound_policy, 0);
    let Some(DocKind::AuthorizationPolicy(p)) = &docs[1].kind else {
        panic!()
    };
    assert_eq!((p.mode, p.from.len(), p.to.len()), (0, 0, 0));
    let Some(DocKind::RateLimitPolicy(r)) = &docs[2].kind else {
        panic!()
    };
    assert_eq!(r.total.unwrap().burst, 0);
}

#[test]
fn policies_print_and_reapply() {
    let docs = parse_documents("p", POLICIES).unwrap();
    let manifests: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
    let yaml = to_yaml(&manifests).unwrap();
    assert_eq!(parse_documents("p", &yaml).unwrap(), docs, "{yaml}");
    assert!(
        yaml.contains("defaultInboundPolicy: authenticated"),
        "{yaml}"
    );
    assert!(yaml.contains("kind: AuthorizationPolicy"), "{yaml}");
    let json = to_json(&manifests, false).unwrap();
    assert_eq!(parse_documents("p.json", &json).unwrap(), docs, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["items"][2]["spec"]["perIdentity"]["burst"], 100);
    assert_eq!(v["items"][1]["spec"]["from"][1]["unauthenticated"], true);
    // Stored JSON is the manifest form too.
    for (d, kind) in docs[1..]
        .iter()
        .zip([cfg::Kind::AuthorizationPolicy, cfg::Kind::RateLimitPolicy])
    {
        assert_eq!(document_from_json(kind, &document_to_json(d)).unwrap(), *d);
    }
    let e =
        document_from_json(cfg::Kind::RateLimitPolicy, &document_to_json(&docs[1])).unwrap_err();
    assert!(e.to_string().contains("expected RateLimitPolicy"), "{e}");
    // delete -f reads their kinds.
    let refs = parse_refs("p", POLICIES).unwrap();
    assert_eq!(
        refs.iter().map(|(_, r)| r.kind).collect::<Vec<_>>(),
        [
            i32::from(cfg::Kind::Service),
            i32::from(cfg::Kind::AuthorizationPolicy),
            i32::from(cfg::Kind::RateLimitPolicy)
        ]
    );
}

/// Each refusal exactly as weftctl prints it: file, document (kind and name), field, message.
#[test]
fn refusals_name_file_document_and_field() {
    for (from, to, want) in [
        (
            "methods: [GET, HEAD]",
            "methods: [get, HEAD]",
            format!(
                "{AUTHZ}: spec.to[0].methods[0]: \"get\": methods are case-sensitive; did you mean \"GET\"?"
            ),
        ),
        (
            "  - unauthenticated: true\n",
            "  - {}\n",
            format!(
                "{AUTHZ}: spec.from[1]: an entry needs at least one field (identities, namespaces, serviceAccounts, authenticated, unauthenticated or networks); leave `from` out to match any client"
            ),
        ),
        (
            "    namespaces: [shop]\n",
            "    namespaces: [shop]\n    principals: [web]\n",
            format!(
                "{AUTHZ}: spec.from[0].principals: unknown field `principals`, expected one of `identities`, `namespaces`, `serviceAccounts`, `authenticated`, `unauthenticated`, `networks`"
            ),
        ),
        (
            "    authenticated: true\n",
            "    authenticated: false\n",
            format!("{AUTHZ}: spec.from[0].authenticated: only true is meaningful; leave it out"),
        ),
        (
            "  - unauthenticated: true\n",
            "  - unauthenticated: false\n    networks: [{cidr: 10.0.0.0/8}]\n",
            format!("{AUTHZ}: spec.from[1].unauthenticated: only true is meaningful; leave it out"),
        ),
        (
            "  - unauthenticated: true\n",
            "  - unauthenticated: true\n    namespaces: [shop]\n",
            format!(
                "{AUTHZ}: spec.from[1].unauthenticated: a plaintext client has no identity, so this entry could never match: put unauthenticated in an entry of its own"
            ),
        ),
        (
            "  action: Allow\n",
            "  action: allow\n",
            format!("{AUTHZ}: spec.action: \"allow\" is not one of Allow, Deny"),
        ),
        (
            "  action: Allow\n",
            "",
            format!("{AUTHZ}: spec.action: required: Allow or Deny"),
        ),
        (
            "  mode: Enforce\n",
            "  mode: DryRun\n",
            format!("{AUTHZ}: spec.mode: \"DryRun\" is not one of Enforce, Audit"),
        ),
        (
            "  targetRef: {kind: Service, name: api}\n  action",
            "  targetRef: {kind: Namespace, name: other}\n  action",
            format!(
                "{AUTHZ}: spec.targetRef.name: \"other\": a policy may target only its own namespace \"shop\""
            ),
        ),
        (
            "  targetRef: {kind: Service, name: api}\n  action",
            "  targetRef: {kind: Deployment, name: api}\n  action",
            format!(
                "{AUTHZ}: spec.targetRef.kind: \"Deployment\" is not supported: use Service or Namespace"
            ),
        ),
        (
            "  targetRef: {kind: Service, name: api}\n  action",
            "  action",
            format!("{AUTHZ}: spec.targetRef: required: {{kind: Service, name: NAME}}"),
        ),
        (
            "cidr: 10.0.0.0/8, except: [10.1.0.0/16]",
            "cidr: 10.0.0.1/8, except: [10.1.0.0/16]",
            format!(
                "{AUTHZ}: spec.from[0].networks[0].cidr: \"10.0.0.1/8\" has bits set past its /8 prefix: write the network address"
            ),
        ),
        (
            "except: [10.1.0.0/16]",
            "except: [192.168.0.0/16]",
            format!(
                "{AUTHZ}: spec.from[0].networks[0].except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8"
            ),
        ),
        (
            "{type: Exact, value: /healthz}",
            "{type: RegularExpression, value: /healthz}",
            format!(
                "{AUTHZ}: spec.to[0].paths[0].type: RegularExpression is not supported: use Exact or PathPrefix"
            ),
        ),
        (
            "ports: [8080]",
            "ports: [0]",
            format!("{AUTHZ}: spec.to[0].ports[0]: 0 is not a port (1 to 65535)"),
        ),
        (
            "  - identities: [\"spiffe://mesh.test/ns/shop/sa/web\"]",
            "  - identities: [web]",
            format!("{AUTHZ}: spec.from[0].identities[0]: \"web\": "),
        ),
        (
            "metadata: {name: api-from-web, namespace: shop}",
            "metadata: {name: api-from-web, namespace: shop, annotations: {a: b}}",
            format!("{AUTHZ}: metadata.annotations: an AuthorizationPolicy takes no annotations"),
        ),
        (
            "  defaultInboundPolicy: authenticated",
            "  defaultInboundPolicy: Deny",
            "policy.yaml: document 1 (Service shop/api): spec.defaultInboundPolicy: \"Deny\" is not a default inbound policy: use allow, authenticated or deny".to_owned(),
        ),
        (
            "total: {requestsPerSecond: 1000, burst: 2000}",
            "total: {requestsPerSecond: 0}",
            format!("{LIMITS}: spec.total.requestsPerSecond: must be between 1 and 1000000, got 0"),
        ),
        (
            "total: {requestsPerSecond: 1000, burst: 2000}",
            "total: {requestsPerSecond: 1000001}",
            // The model reads an absent burst as the rate, and finds it too large as well.
            format!(
                "{LIMITS}: spec.total.requestsPerSecond: must be between 1 and 1000000, got 1000001\n\
                 {LIMITS}: spec.total.burst: must be at most 1000000, got 1000001"
            ),
        ),
        (
            "perIdentity: {requestsPerSecond: 50, burst: 100}",
            "perIdentity: {requestsPerSecond: 50, burst: 10}",
            format!(
                "{LIMITS}: spec.perIdentity.burst: 10 is less than requestsPerSecond 50: a bucket must hold at least one second of requests"
            ),
        ),
        (
            "perIdentity: {requestsPerSecond: 50, burst: 100}",
            "perIdentity: {requestsPerSecond: 50, burst: 0}",
            format!(
                "{LIMITS}: spec.perIdentity.burst: 0 is not a burst: leave the field out for a burst equal to requestsPerSecond"
            ),
        ),
        (
            "requestsPerSecond: 500, burst: 1000}]",
            "requestsPerSecond: 500, burst: 100}]",
            format!(
                "{LIMITS}: spec.overrides[0].burst: 100 is less than requestsPerSecond 500: a bucket must hold at least one second of requests"
            ),
        ),
        (
            "overrides: [{identities: [\"spiffe://mesh.test/ns/batch/sa/loader\"],",
            "overrides: [{identities: [],",
            format!("{LIMITS}: spec.overrides[0].identities: at least one identity is required"),
        ),
        (
            "  perIdentity: {requestsPerSecond: 50, burst: 100}\n",
            "  perIdentity: {requestsPerSecond: 50, burst: 100}\n  window: 1s\n",
            format!(
                "{LIMITS}: spec.window: unknown field `window`, expected one of `targetRef`, `total`, `perIdentity`, `overrides`"
            ),
        ),
    ] {
        let got = refusal(&policies_with(from, to));
        assert!(
            got.starts_with(&want) && got.lines().count() == want.lines().count(),
            "replacing {from:?} with {to:?}:\n got: {got}\nwant: {want}"
        );
    }
}

/// `from: []` and `to: []` would read as "nobody" / "nothing" but mean "any" on the wire.
#[test]
fn explicitly_empty_lists_are_refused_and_absent_ones_are_not() {
    let text = "\
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p}
spec: {targetRef: {name: api}, action: Allow, from: [], to: []}
";
    assert_eq!(
        refusal(text),
        "policy.yaml: document 1 (AuthorizationPolicy default/p): spec.from: an empty list matches nothing: leave `from` out to match any client\n\
         policy.yaml: document 1 (AuthorizationPolicy default/p): spec.to: an empty list matches nothing: leave `to` out to match every request"
    );
    let absent = text.replace(", from: [], to: []", "");
    assert!(parse_documents("p", &absent).is_ok());
    // A RateLimitPolicy needs some limit.
    let text = "\
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: l}
spec: {targetRef: {name: api}}
";
    assert_eq!(
        refusal(text),
        "policy.yaml: document 1 (RateLimitPolicy default/l): spec: a rate limit needs at least one of total, perIdentity or overrides"
    );
}

#[test]
fn policy_kinds_are_weft_kinds() {
    let text = POLICIES.split("---\n").nth(1).unwrap();
    let got = refusal(&text.replace("weft.io/v1alpha1", "gateway.networking.k8s.io/v1"));
    assert!(
        got.ends_with(
            "apiVersion: \"gateway.networking.k8s.io/v1\" does not serve kind AuthorizationPolicy: use weft.io/v1alpha1"
        ),
        "{got}"
    );
    let got = refusal(&text.replace("kind: AuthorizationPolicy", "kind: PeerAuthentication"));
    assert!(
        got.ends_with(
            "kind: unknown kind \"PeerAuthentication\": weftctl applies Service, AuthorizationPolicy and RateLimitPolicy (weft.io/v1alpha1) and HTTPRoute (gateway.networking.k8s.io/v1)"
        ),
        "{got}"
    );
}

/// A stored value this version cannot name is shown as-is, and refused when applied back.
#[test]
fn unknown_stored_enums_are_shown_and_refused_on_reapply() {
    let docs = parse_documents("p", POLICIES).unwrap();
    let (Some(DocKind::Service(mut s)), Some(DocKind::AuthorizationPolicy(mut p))) =
        (docs[0].kind.clone(), docs[1].kind.clone())
    else {
        panic!()
    };
    s.default_inbound_policy = 9;
    p.mode = 7;
    let m = [
        Manifest::of_document(&cfg::Document {
            kind: Some(DocKind::Service(s)),
        })
        .unwrap(),
        Manifest::of_document(&cfg::Document {
            kind: Some(DocKind::AuthorizationPolicy(p)),
        })
        .unwrap(),
    ];
    let yaml = to_yaml(&m).unwrap();
    assert!(yaml.contains("defaultInboundPolicy: unknown (9)"), "{yaml}");
    assert!(yaml.contains("mode: unknown (7)"), "{yaml}");
    let e = refusal(&yaml);
    assert!(
        e.contains("spec.defaultInboundPolicy") && e.contains("spec.mode"),
        "{e}"
    );
}

// ---- generators for the round-trip properties ------------------------------------------------

fn identity() -> impl Strategy<Value = String> {
    (label(), label()).prop_map(|(ns, sa)| format!("spiffe://mesh.test/ns/{ns}/sa/{sa}"))
}

fn network() -> impl Strategy<Value = pb::NetworkMatch> {
    prop::sample::select(vec![
        ("10.0.0.0/8", vec!["10.1.0.0/16"]),
        ("192.168.1.0/24", vec![]),
        ("fd00::/8", vec!["fd00::/16", "fd01::1/128"]),
        ("0.0.0.0/0", vec![]),
    ])
    .prop_map(|(cidr, except)| pb::NetworkMatch {
        cidr: cidr.into(),
        except: except.into_iter().map(str::to_owned).collect(),
    })
}

/// Valid `from` entries: identity fields (at least one), or plaintext clients, with networks.
fn from_entry() -> impl Strategy<Value = pb::AuthorizationFrom> {
    let identified = (
        prop::collection::vec(identity(), 0..3),
        prop::collection::vec(label(), 0..3),
        prop::collection::vec((label(), label()), 0..2),
        any::<bool>(),
    );
    (
        prop::option::of(identified),
        prop::collection::vec(network(), 0..2),
    )
        .prop_map(|(identified, networks)| match identified {
            Some((identities, namespaces, sas, authenticated)) => pb::AuthorizationFrom {
                authenticated: authenticated
                    || (identities.is_empty() && namespaces.is_empty() && sas.is_empty()),
                identities,
                namespaces,
                service_accounts: sas
                    .into_iter()
                    .map(|(namespace, name)| pb::ServiceAccountRef { namespace, name })
                    .collect(),
                unauthenticated: false,
                networks,
            },
            None => pb::AuthorizationFrom {
                unauthenticated: true,
                networks,
                ..Default::default()
            },
        })
}

/// Valid `to` entries: at least one field.
fn to_entry() -> impl Strategy<Value = pb::AuthorizationTo> {
    (
        prop::collection::vec(1u32..=65535, 0..3),
        prop::sample::subsequence(vec!["GET", "HEAD", "POST", "PURGE"], 0..3),
        prop::collection::vec((1i32..=2, "(/[a-z0-9]{1,5}){0,3}/?"), 0..3),
        0usize..3,
    )
        .prop_map(|(ports, methods, paths, nh)| {
            let mut to = pb::AuthorizationTo {
                ports,
                methods: methods.into_iter().map(str::to_owned).collect(),
                paths: paths
                    .into_iter()
                    .map(|(ty, v)| pb::PathMatch {
                        r#type: ty,
                        value: if v.is_empty() || v == "/" {
                            "/".into()
                        } else {
                            v
                        },
                    })
                    .collect(),
                headers: (0..nh)
                    .map(|i| pb::HeaderMatch {
                        name: format!("x-h{i}"),
                        value: format!("v{i}"),
                    })
                    .collect(),
            };
            if to.ports.is_empty() && to.methods.is_empty() && to.paths.is_empty() && nh == 0 {
                to.ports.push(8080);
            }
            to
        })
}

pub(super) fn authorization_policy() -> impl Strategy<Value = pb::AuthorizationPolicy> {
    (
        label(),
        label(),
        prop::option::of((prop::sample::select(vec!["", "Service"]), label())),
        1i32..=2,
        0i32..=2,
        prop::collection::vec(from_entry(), 0..3),
        prop::collection::vec(to_entry(), 0..3),
    )
        .prop_map(|(namespace, name, target, action, mode, from, to)| {
            pb::AuthorizationPolicy {
                target_ref: Some(match target {
                    Some((kind, name)) => pb::PolicyTargetRef {
                        kind: kind.into(),
                        name,
                    },
                    None => pb::PolicyTargetRef {
                        kind: "Namespace".into(),
                        name: namespace.clone(),
                    },
                }),
                namespace,
                name,
                action,
                mode,
                from,
                to,
            }
        })
}

/// A valid bucket: burst 0 (absent) or at least the rate.
fn limit() -> impl Strategy<Value = (u32, u32)> {
    (1u32..=1_000_000, any::<bool>(), 0u32..=1_000_000).prop_map(|(rps, explicit, extra)| {
        let burst = if explicit {
            rps.saturating_add(extra).min(1_000_000).max(rps)
        } else {
            0
        };
        (rps, burst)
    })
}

pub(super) fn rate_limit_policy() -> impl Strategy<Value = pb::RateLimitPolicy> {
    let bucket = || {
        limit().prop_map(|(requests_per_second, burst)| pb::RateLimit {
            requests_per_second,
            burst,
        })
    };
    (
        label(),
        label(),
        (prop::sample::select(vec!["", "Service"]), label()),
        prop::option::of(bucket()),
        prop::option::of(bucket()),
        prop::collection::btree_set(identity(), 0..4),
        limit(),
    )
        .prop_map(
            |(namespace, name, (kind, service), total, per_identity, ids, (rps, burst))| {
                // Distinct identities, split into overrides of one or two.
                let ids: Vec<String> = ids.into_iter().collect();
                let overrides: Vec<pb::RateLimitOverride> = ids
                    .chunks(2)
                    .map(|c| pb::RateLimitOverride {
                        identities: c.to_vec(),
                        requests_per_second: rps,
                        burst,
                    })
                    .collect();
                let total = if total.is_none() && per_identity.is_none() && overrides.is_empty() {
                    Some(pb::RateLimit {
                        requests_per_second: rps,
                        burst,
                    })
                } else {
                    total
                };
                pb::RateLimitPolicy {
                    namespace,
                    name,
                    target_ref: Some(pb::PolicyTargetRef {
                        kind: kind.into(),
                        name: service,
                    }),
                    total,
                    per_identity,
                    overrides,
                }
            },
        )
}
