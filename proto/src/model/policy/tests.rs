use super::*;

fn id(s: &str) -> String {
    format!("spiffe://mesh.test/{s}")
}

fn policy() -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        namespace: "shop".into(),
        name: "api-from-web".into(),
        target_ref: Some(pb::PolicyTargetRef {
            kind: "Service".into(),
            name: "api".into(),
        }),
        action: pb::AuthorizationAction::Allow.into(),
        mode: pb::PolicyMode::Unspecified.into(),
        from: vec![pb::AuthorizationFrom {
            identities: vec![id("ns/shop/sa/web")],
            ..Default::default()
        }],
        to: vec![pb::AuthorizationTo {
            ports: vec![8080],
            methods: vec!["GET".into()],
            paths: vec![pb::PathMatch {
                r#type: pb::path_match::Type::PathPrefix.into(),
                value: "/api/".into(),
            }],
            headers: vec![pb::HeaderMatch {
                name: "X-Tenant".into(),
                value: "blue".into(),
            }],
        }],
    }
}

fn errors(p: pb::AuthorizationPolicy) -> String {
    AuthorizationPolicy::try_from(p).unwrap_err().to_string()
}

#[test]
fn a_valid_policy_converts_and_round_trips() {
    let p = AuthorizationPolicy::try_from(policy()).unwrap();
    assert_eq!(p.target, PolicyTarget::Service("api".into()));
    assert_eq!(p.mode, PolicyMode::Enforce);
    assert_eq!(p.to[0].paths, vec![PathMatch::Prefix("/api".into())]);
    assert_eq!(p.to[0].headers, vec![("x-tenant".into(), "blue".into())]);
    let back = AuthorizationPolicy::try_from(pb::AuthorizationPolicy::from(&p)).unwrap();
    assert_eq!(back, p);
}

type Edit = Box<dyn Fn(&mut pb::AuthorizationPolicy)>;

#[test]
fn refusals_name_their_field() {
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|p| p.from[0] = pb::AuthorizationFrom::default()),
            "spec.from[0]",
            "at least one field",
        ),
        (
            Box::new(|p| p.to[0] = pb::AuthorizationTo::default()),
            "spec.to[0]",
            "at least one field",
        ),
        (
            Box::new(|p| p.from[0].identities = vec!["web".into()]),
            "spec.from[0].identities[0]",
            "web",
        ),
        (
            Box::new(|p| p.to[0].methods = vec!["get".into()]),
            "spec.to[0].methods[0]",
            "did you mean \"GET\"",
        ),
        (
            Box::new(|p| p.to[0].ports = vec![0]),
            "spec.to[0].ports[0]",
            "not a port",
        ),
        (Box::new(|p| p.action = 0), "spec.action", "Allow or Deny"),
        (
            Box::new(|p| p.target_ref = None),
            "spec.targetRef",
            "required",
        ),
        (
            Box::new(|p| {
                p.target_ref = Some(pb::PolicyTargetRef {
                    kind: "Namespace".into(),
                    name: "other".into(),
                })
            }),
            "spec.targetRef.name",
            "own namespace",
        ),
        (
            Box::new(|p| {
                p.target_ref = Some(pb::PolicyTargetRef {
                    kind: "Pod".into(),
                    name: "x".into(),
                })
            }),
            "spec.targetRef.kind",
            "Service or Namespace",
        ),
        (
            Box::new(|p| p.from[0].unauthenticated = true),
            "spec.from[0].unauthenticated",
            "could never match",
        ),
        (
            Box::new(|p| {
                p.from[0].networks = vec![pb::NetworkMatch {
                    cidr: "10.0.0.1/8".into(),
                    except: vec![],
                }]
            }),
            "spec.from[0].networks[0].cidr",
            "network address",
        ),
        (
            Box::new(|p| {
                p.from[0].networks = vec![pb::NetworkMatch {
                    cidr: "10.0.0.0/8".into(),
                    except: vec!["11.0.0.0/16".into()],
                }]
            }),
            "spec.from[0].networks[0].except[0]",
            "not inside",
        ),
        (
            Box::new(|p| p.to[0].paths[0].value = "/a/../b".into()),
            "spec.to[0].paths[0].value",
            "segments",
        ),
    ];
    for (edit, field, words) in cases {
        let mut p = policy();
        edit(&mut p);
        let e = errors(p);
        assert!(
            e.contains(field) && e.contains(words),
            "want {field}: …{words}…, got {e}"
        );
    }
}

#[test]
fn cidrs_contain_what_they_should() {
    let n = Network {
        cidr: Cidr::parse("10.0.0.0/8").unwrap(),
        except: vec![Cidr::parse("10.1.0.0/16").unwrap()],
    };
    assert!(n.contains("10.2.3.4".parse().unwrap()));
    assert!(!n.contains("10.1.3.4".parse().unwrap()));
    assert!(!n.contains("11.0.0.1".parse().unwrap()));
    assert!(
        n.contains("::ffff:10.2.3.4".parse().unwrap()),
        "IPv4-mapped IPv6"
    );
    let all = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all.contains("192.0.2.1".parse().unwrap()));
    assert!(!all.contains("fd00::1".parse().unwrap()));
    let v6 = Cidr::parse("fd00::/8").unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert_eq!(Cidr::parse("127.0.0.1").unwrap().prefix, 32);
}

#[test]
fn rate_limits_are_checked() {
    let limit = |rps, burst| pb::RateLimit {
        requests_per_second: rps,
        burst,
    };
    let p = |total| pb::RateLimitPolicy {
        namespace: "shop".into(),
        name: "limits".into(),
        target_ref: Some(pb::PolicyTargetRef {
            kind: "Service".into(),
            name: "api".into(),
        }),
        total: Some(total),
        ..Default::default()
    };
    let ok = RateLimitPolicy::try_from(p(limit(10, 0))).unwrap();
    assert_eq!(
        ok.total.unwrap().burst,
        10,
        "burst defaults to requestsPerSecond"
    );
    for (l, words) in [
        (limit(0, 0), "spec.total.requestsPerSecond"),
        (limit(1_000_001, 0), "spec.total.requestsPerSecond"),
        (limit(10, 5), "spec.total.burst"),
    ] {
        let e = RateLimitPolicy::try_from(p(l)).unwrap_err().to_string();
        assert!(e.contains(words), "{e}");
    }
    let mut empty = p(limit(1, 1));
    empty.total = None;
    let e = RateLimitPolicy::try_from(empty).unwrap_err().to_string();
    assert!(e.contains("at least one of"), "{e}");
    let mut ns = p(limit(1, 1));
    ns.target_ref = Some(pb::PolicyTargetRef {
        kind: "Namespace".into(),
        name: "shop".into(),
    });
    let e = RateLimitPolicy::try_from(ns).unwrap_err().to_string();
    assert!(e.contains("spec.targetRef.kind"), "{e}");
}
