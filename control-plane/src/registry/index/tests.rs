use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::model::{
    AuthzAction, Backend, ParentRef, PathMatch, PolicyMode, Port, Protocol, RateLimit, RouteMatch,
    Rule, Timeouts,
};

const NAMESPACES: [&str; 2] = ["default", "shop"];
const NAMES: [&str; 3] = ["reviews", "reviews-v2", "ratings"];

fn bundle() -> pb::TrustBundle {
    pb::TrustBundle {
        trust_domain: "example.org".into(),
        roots: vec![vec![1, 2, 3]],
        ..Default::default()
    }
}

fn service(ns: &str, name: &str, selector: &[(&str, &str)]) -> Service {
    Service {
        id: ObjectRef::new(ns, name),
        ports: vec![Port {
            name: Some("http".into()),
            port: 9080,
            protocol: Protocol::Http1,
        }],
        selector: selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        traffic: Default::default(),
        default_inbound: None,
    }
}

fn authz(ns: &str, name: &str, target: PolicyTarget) -> AuthorizationPolicy {
    AuthorizationPolicy {
        id: ObjectRef::new(ns, name),
        target,
        action: AuthzAction::Deny,
        mode: PolicyMode::Enforce,
        from: vec![],
        to: vec![],
    }
}

fn rate_limit(ns: &str, name: &str, service: &str, rps: u32) -> RateLimitPolicy {
    RateLimitPolicy {
        id: ObjectRef::new(ns, name),
        service: service.into(),
        total: Some(RateLimit {
            requests_per_second: rps,
            burst: rps,
        }),
        per_identity: None,
        overrides: vec![],
    }
}

fn decode_service(s: &Snapshot, name: &str) -> pb::Service {
    pb::Service::decode(s.services[name].body.value.as_slice()).unwrap()
}

fn changed(s: &Snapshot) -> Vec<String> {
    s.changed.iter().map(|(_, n)| n.clone()).collect()
}

fn route(ns: &str, name: &str, parent: &str, backends: &[(&str, u32)]) -> HttpRoute {
    HttpRoute {
        id: ObjectRef::new(ns, name),
        parents: vec![ParentRef {
            service: ObjectRef::new(ns, parent),
            port: None,
        }],
        rules: vec![Rule {
            name: None,
            matches: vec![RouteMatch {
                path: PathMatch::Prefix("/".into()),
                headers: vec![],
                query_params: vec![],
                method: None,
            }],
            backends: backends
                .iter()
                .map(|(b, w)| Backend {
                    service: ObjectRef::new(ns, *b),
                    port: None,
                    weight: *w,
                })
                .collect(),
            timeouts: Timeouts::default(),
            retry: None,
        }],
        retry_policy: Default::default(),
    }
}

fn endpoint(ns: &str, svc: &str, addr: &str, version: &str) -> Endpoint {
    Endpoint {
        service: ObjectRef::new(ns, svc),
        address: addr.parse().unwrap(),
        identity: format!("spiffe://example.org/ns/{ns}/sa/{svc}")
            .parse()
            .unwrap(),
        labels: [("app", svc), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        zone: None,
        weight: 1,
        ready: true,
    }
}

fn decode_endpoints(r: &Resource) -> pb::Endpoints {
    pb::Endpoints::decode(r.body.value.as_slice()).unwrap()
}

#[test]
fn a_subset_service_selects_by_labels_and_updates_with_registrations() {
    let mut index = Index::new(bundle());
    index.apply(Change::Service(
        ObjectRef::new("default", "reviews"),
        Some(service("default", "reviews", &[])),
    ));
    index.apply(Change::Service(
        ObjectRef::new("default", "reviews-v2"),
        Some(service(
            "default",
            "reviews-v2",
            &[("app", "reviews"), ("version", "v2")],
        )),
    ));
    let first = index.flush();
    assert_eq!(first.generation, 1);
    assert_eq!(first.trust_bundles.len(), 1);
    assert_eq!(
        decode_endpoints(&first.endpoints["default/reviews-v2"])
            .endpoints
            .len(),
        0
    );

    let e = endpoint("default", "reviews", "10.0.0.2:9080", "v2");
    index.apply(Change::Endpoint(e.service.clone(), e.address, Some(e)));
    let second = index.flush();
    assert_eq!(second.generation, 2);
    let changed: Vec<_> = second.changed.iter().cloned().collect();
    assert_eq!(
        changed,
        [
            (ResourceType::Endpoints, "default/reviews".to_owned()),
            (ResourceType::Endpoints, "default/reviews-v2".to_owned()),
        ]
    );
    let eps = decode_endpoints(&second.endpoints["default/reviews-v2"]);
    assert_eq!(eps.endpoints[0].address, "10.0.0.2:9080");
    // Untouched resources are the very same allocation.
    assert!(Arc::ptr_eq(
        &first.services["default/reviews"],
        &second.services["default/reviews"]
    ));
}

#[test]
fn routes_land_in_their_parents_service_resource_only() {
    let mut index = Index::new(bundle());
    for name in NAMES {
        index.apply(Change::Service(
            ObjectRef::new("default", name),
            Some(service("default", name, &[])),
        ));
    }
    index.flush();
    let r = route(
        "default",
        "canary",
        "reviews",
        &[("reviews", 90), ("reviews-v2", 10)],
    );
    index.apply(Change::Route(r.id.clone(), Some((7, r.clone()))));
    let snap = index.flush();
    let changed: Vec<_> = snap.changed.iter().cloned().collect();
    assert_eq!(
        changed,
        [(ResourceType::Service, "default/reviews".to_owned())]
    );
    let svc = pb::Service::decode(snap.services["default/reviews"].body.value.as_slice()).unwrap();
    assert_eq!(svc.routes.len(), 1);
    assert_eq!(svc.routes[0].rules[0].backend_refs[1].weight, Some(10));

    // Re-applying the same route changes nothing: no new generation, no push.
    index.apply(Change::Route(r.id.clone(), Some((7, r))));
    assert_eq!(index.flush().generation, snap.generation);
}

#[test]
fn a_service_lists_its_routes_oldest_first() {
    // Gateway API breaks ties between routes by age, then by namespace/name: the proxy takes
    // the first of equally specific matches, so the order is the service resource's.
    let mut index = Index::new(bundle());
    index.apply(Change::Service(
        ObjectRef::new("default", "reviews"),
        Some(service("default", "reviews", &[])),
    ));
    for (name, created) in [("a-newer", 9), ("b-older", 3), ("c-newest", 12)] {
        let r = route("default", name, "reviews", &[("reviews", 1)]);
        index.apply(Change::Route(r.id.clone(), Some((created, r))));
    }
    let snap = index.flush();
    let svc = pb::Service::decode(snap.services["default/reviews"].body.value.as_slice()).unwrap();
    let names: Vec<_> = svc.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b-older", "a-newer", "c-newest"]);
}

#[test]
fn deleting_a_service_removes_both_its_resources() {
    let mut index = Index::new(bundle());
    let id = ObjectRef::new("default", "reviews");
    index.apply(Change::Service(
        id.clone(),
        Some(service("default", "reviews", &[])),
    ));
    index.flush();
    index.apply(Change::Service(id, None));
    let snap = index.flush();
    assert!(snap.services.is_empty() && snap.endpoints.is_empty());
    assert_eq!(snap.changed.len(), 2);
}

#[test]
fn policies_land_in_the_services_they_target_ordered_by_name() {
    let mut index = Index::new(bundle());
    for (ns, name) in [("shop", "api"), ("shop", "web"), ("default", "api")] {
        index.apply(Change::Service(
            ObjectRef::new(ns, name),
            Some(service(ns, name, &[])),
        ));
    }
    index.flush();
    for p in [
        authz("shop", "z-api-only", PolicyTarget::Service("api".into())),
        authz("shop", "a-whole-namespace", PolicyTarget::Namespace),
    ] {
        index.apply(Change::AuthorizationPolicy(p.id.clone(), Some(p)));
    }
    let r = rate_limit("shop", "limits", "api", 100);
    index.apply(Change::RateLimitPolicy(r.id.clone(), Some(r)));
    let snap = index.flush();
    // Only shop's services changed; default/api is another namespace's.
    assert_eq!(changed(&snap), ["shop/api", "shop/web"]);
    let api = decode_service(&snap, "shop/api");
    let names: Vec<_> = api
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["a-whole-namespace", "z-api-only"]);
    assert_eq!(
        api.rate_limit_policy.as_ref().map(|r| r.name.as_str()),
        Some("limits")
    );
    let web = decode_service(&snap, "shop/web");
    assert_eq!(web.authorization_policies.len(), 1);
    assert_eq!(web.rate_limit_policy, None);
    let other = decode_service(&snap, "default/api");
    assert!(other.authorization_policies.is_empty() && other.rate_limit_policy.is_none());

    // Retargeting a policy updates both the old and the new target.
    let moved = authz("shop", "z-api-only", PolicyTarget::Service("web".into()));
    index.apply(Change::AuthorizationPolicy(moved.id.clone(), Some(moved)));
    let snap = index.flush();
    assert_eq!(changed(&snap), ["shop/api", "shop/web"]);
    assert_eq!(
        decode_service(&snap, "shop/web")
            .authorization_policies
            .len(),
        2
    );

    // Deleting them takes them out again.
    index.apply(Change::AuthorizationPolicy(
        ObjectRef::new("shop", "a-whole-namespace"),
        None,
    ));
    index.apply(Change::RateLimitPolicy(
        ObjectRef::new("shop", "limits"),
        None,
    ));
    let snap = index.flush();
    let api = decode_service(&snap, "shop/api");
    assert!(api.authorization_policies.is_empty() && api.rate_limit_policy.is_none());
}

#[test]
fn a_service_created_after_its_policies_picks_them_up() {
    let mut index = Index::new(bundle());
    let p = authz("shop", "ns-wide", PolicyTarget::Namespace);
    index.apply(Change::AuthorizationPolicy(p.id.clone(), Some(p)));
    let r = rate_limit("shop", "limits", "api", 5);
    index.apply(Change::RateLimitPolicy(r.id.clone(), Some(r)));
    // Dangling: no service resource appears for a policy alone.
    let snap = index.flush();
    assert!(snap.services.is_empty(), "{:?}", snap.services.keys());
    index.apply(Change::Service(
        ObjectRef::new("shop", "api"),
        Some(service("shop", "api", &[])),
    ));
    let snap = index.flush();
    let api = decode_service(&snap, "shop/api");
    assert_eq!(api.authorization_policies[0].name, "ns-wide");
    assert_eq!(
        api.rate_limit_policy
            .unwrap()
            .total
            .unwrap()
            .requests_per_second,
        5
    );
}

#[test]
fn the_default_inbound_policy_is_the_services_own_or_the_control_planes() {
    use crate::model::DefaultInbound;
    let effective = |s: &Snapshot, name: &str| {
        pb::DefaultInboundPolicy::try_from(decode_service(s, name).default_inbound_policy).unwrap()
    };
    let mut index = Index::new(bundle());
    let mut own = service("shop", "own", &[]);
    own.default_inbound = Some(DefaultInbound::Authenticated);
    index.apply(Change::Service(own.id.clone(), Some(own)));
    index.apply(Change::Service(
        ObjectRef::new("shop", "plain"),
        Some(service("shop", "plain", &[])),
    ));
    let snap = index.flush();
    // Never UNSPECIFIED in discovery: the control plane's default is allow.
    assert_eq!(
        effective(&snap, "shop/plain"),
        pb::DefaultInboundPolicy::Allow
    );
    assert_eq!(
        effective(&snap, "shop/own"),
        pb::DefaultInboundPolicy::Authenticated
    );
    // Changing the control plane's default changes only the services without their own.
    index.set_default_inbound(DefaultInbound::Deny);
    let snap = index.flush();
    assert_eq!(changed(&snap), ["shop/plain"]);
    assert_eq!(
        effective(&snap, "shop/plain"),
        pb::DefaultInboundPolicy::Deny
    );
    assert_eq!(index.default_inbound(), DefaultInbound::Deny);
    // Setting it to what it is publishes nothing.
    index.set_default_inbound(DefaultInbound::Deny);
    assert_eq!(index.flush().generation, snap.generation);
}

/// Small universes so random sequences collide on the same objects often.
fn arb_change() -> impl Strategy<Value = Change> {
    let ns = prop::sample::select(&NAMESPACES[..]);
    let name = prop::sample::select(&NAMES[..]);
    let svc = (ns.clone(), name.clone(), prop::bool::ANY, prop::bool::ANY).prop_map(
        |(ns, name, selector, present)| {
            let s = if selector {
                service(ns, name, &[("app", "reviews"), ("version", "v2")])
            } else {
                service(ns, name, &[])
            };
            Change::Service(ObjectRef::new(ns, name), present.then_some(s))
        },
    );
    let rt = (
        ns.clone(),
        prop::sample::select(&["canary", "split"][..]),
        name.clone(),
        name.clone(),
        0u32..3,
        prop::bool::ANY,
        1i64..4,
    )
        .prop_map(|(ns, rname, parent, backend, w, present, created)| {
            let r = route(ns, rname, parent, &[(backend, w + 1)]);
            Change::Route(ObjectRef::new(ns, rname), present.then_some((created, r)))
        });
    let ep = (
        ns.clone(),
        name.clone(),
        prop::sample::select(&["10.0.0.1:80", "10.0.0.2:80", "[fd00::1]:80"][..]),
        prop::sample::select(&["v1", "v2"][..]),
        prop::bool::ANY,
    )
        .prop_map(|(ns, svc, addr, version, present)| {
            let e = endpoint(ns, svc, addr, version);
            Change::Endpoint(e.service.clone(), e.address, present.then_some(e))
        });
    let ap = (
        ns.clone(),
        prop::sample::select(&["deny-all", "allow-web"][..]),
        prop::option::of(name.clone()),
        prop::bool::ANY,
    )
        .prop_map(|(ns, pname, target, present)| {
            let target =
                target.map_or(PolicyTarget::Namespace, |t| PolicyTarget::Service(t.into()));
            let p = authz(ns, pname, target);
            Change::AuthorizationPolicy(p.id.clone(), present.then_some(p))
        });
    let rl = (
        ns,
        prop::sample::select(&["limits", "more-limits"][..]),
        name,
        1u32..3,
        prop::bool::ANY,
    )
        .prop_map(|(ns, pname, target, rps, present)| {
            let r = rate_limit(ns, pname, target, rps);
            Change::RateLimitPolicy(r.id.clone(), present.then_some(r))
        });
    prop_oneof![svc, rt, ep, ap, rl]
}

fn versions(s: &Snapshot) -> BTreeMap<(ResourceType, String), String> {
    ResourceType::ALL
        .into_iter()
        .flat_map(|ty| {
            s.resources(ty)
                .iter()
                .map(move |(n, r)| ((ty, n.clone()), r.version.clone()))
        })
        .collect()
}

/// The final state of a change sequence, as the set of changes that rebuilds it.
fn final_state(changes: &[Change]) -> Vec<Change> {
    let mut last: BTreeMap<String, Change> = BTreeMap::new();
    for c in changes {
        let key = match c {
            Change::Service(id, _) => format!("s/{id}"),
            Change::Route(id, _) => format!("r/{id}"),
            Change::Endpoint(svc, addr, _) => format!("e/{svc}/{addr}"),
            Change::AuthorizationPolicy(id, _) => format!("a/{id}"),
            Change::RateLimitPolicy(id, _) => format!("l/{id}"),
        };
        last.insert(key, c.clone());
    }
    last.into_values()
        .filter(|c| match c {
            Change::Service(_, s) => s.is_some(),
            Change::Route(_, r) => r.is_some(),
            Change::Endpoint(_, _, e) => e.is_some(),
            Change::AuthorizationPolicy(_, p) => p.is_some(),
            Change::RateLimitPolicy(_, p) => p.is_some(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Incremental maintenance equals recomputation from scratch, whatever the order of events
    /// and wherever the flushes fall; and `changed` lists exactly the resources that differ.
    #[test]
    fn incremental_equals_from_scratch(
        changes in prop::collection::vec((arb_change(), prop::bool::weighted(0.3)), 0..60),
    ) {
        let mut index = Index::new(bundle());
        let mut prev = versions(&index.flush());
        for (c, flush) in &changes {
            index.apply(c.clone());
            if *flush {
                let snap = index.flush();
                let now = versions(&snap);
                let keys: BTreeSet<_> = prev.keys().chain(now.keys()).cloned().collect();
                let differ: BTreeSet<_> = keys.into_iter().filter(|k| prev.get(k) != now.get(k)).collect();
                if !differ.is_empty() {
                    prop_assert_eq!(&differ, &*snap.changed);
                }
                prev = now;
            }
        }
        let incremental = index.flush();

        let all: Vec<Change> = changes.iter().map(|(c, _)| c.clone()).collect();
        let mut scratch = Index::new(bundle());
        for c in final_state(&all) {
            scratch.apply(c);
        }
        let fresh = scratch.flush();
        prop_assert_eq!(versions(&incremental), versions(&fresh));
        prop_assert_eq!(&incremental.system_version, &fresh.system_version);

        // A reset to the same state publishes nothing new.
        let generation = incremental.generation;
        index.reset(final_state(&all));
        let again = index.flush();
        prop_assert_eq!(again.generation, generation, "{:?}", again.changed);

        // A reset to an empty store leaves only the trust bundle.
        index.reset([]);
        let emptied = index.flush();
        prop_assert_eq!(versions(&emptied).len(), 1);
    }
}
