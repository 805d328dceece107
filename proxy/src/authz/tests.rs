use std::sync::Arc;

use weft_proto::model::{
    AuthzAction, DefaultInbound, ObjectRef, PolicyMode, PolicyTarget, Port, Protocol, RateLimit,
    RateLimitPolicy, Service, TrafficPolicy,
};

use super::*;
use crate::resources::{Held, MeshConfig, ServiceConfig};

fn svc(name: &str, selector: &[(&str, &str)], default: DefaultInbound) -> ServiceConfig {
    ServiceConfig {
        service: Service {
            id: ObjectRef::new("shop", name),
            ports: vec![Port {
                name: None,
                port: 8080,
                protocol: Protocol::Http1,
            }],
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            traffic: TrafficPolicy::default(),
            default_inbound: Some(default),
        },
        routes: vec![],
        authorization: vec![],
        rate_limit: None,
        default_inbound: default,
    }
}

fn policy(name: &str, target: PolicyTarget) -> Arc<AuthorizationPolicy> {
    Arc::new(AuthorizationPolicy {
        id: ObjectRef::new("shop", name),
        target,
        action: AuthzAction::Allow,
        mode: PolicyMode::Enforce,
        from: vec![],
        to: vec![],
    })
}

fn config(services: Vec<ServiceConfig>) -> MeshConfig {
    let mut c = MeshConfig::default();
    for s in services {
        c.services.insert(
            s.service.id.key(),
            Held {
                version: "1".into(),
                value: Arc::new(s),
            },
        );
    }
    c
}

fn served(labels: &[(&str, &str)]) -> Served {
    Served {
        service: Some(ObjectRef::new("shop", "api-v1")),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        probes: vec![],
        default: None,
    }
}

#[test]
fn the_workload_default_only_tightens() {
    let allow = config(vec![svc("api-v1", &[], DefaultInbound::Allow)]);
    let deny = config(vec![svc("api-v1", &[], DefaultInbound::Deny)]);
    let with = |d| Served {
        default: Some(d),
        ..served(&[])
    };
    let compiled = |s: &Served, c: &MeshConfig| compile(s, c).map(|p| p.rules.default);
    assert_eq!(
        compiled(&with(DefaultInbound::Authenticated), &allow),
        Some(DefaultInbound::Authenticated)
    );
    assert_eq!(
        compiled(&with(DefaultInbound::Allow), &deny),
        Some(DefaultInbound::Deny),
        "a pod cannot loosen its service's default"
    );
    assert_eq!(compiled(&with(DefaultInbound::Allow), &allow), None);
    // Not registered under a service: the workload's own default still applies.
    let unregistered = Served {
        service: None,
        default: Some(DefaultInbound::Deny),
        ..Served::default()
    };
    assert_eq!(compiled(&unregistered, &allow), Some(DefaultInbound::Deny));
}

#[test]
fn nothing_to_enforce_compiles_to_none() {
    let c = config(vec![svc("api-v1", &[], DefaultInbound::Allow)]);
    assert_eq!(compile(&served(&[]), &c), None);
    assert_eq!(
        compile(&Served::default(), &c),
        None,
        "no --service: nothing targets it"
    );
}

#[test]
fn the_services_a_workload_serves_pool_their_policies() {
    let ns_wide = policy("ns-wide", PolicyTarget::Namespace);
    let mut own = svc("api-v1", &[], DefaultInbound::Allow);
    own.authorization = vec![
        ns_wide.clone(),
        policy("v1-only", PolicyTarget::Service("api-v1".into())),
    ];
    // `api` selects this workload by label and is stricter; `web` does not select it.
    let mut api = svc("api", &[("app", "api")], DefaultInbound::Authenticated);
    api.authorization = vec![
        ns_wide,
        policy("api-only", PolicyTarget::Service("api".into())),
    ];
    api.rate_limit = Some(Arc::new(RateLimitPolicy {
        id: ObjectRef::new("shop", "limits"),
        service: "api".into(),
        total: Some(RateLimit {
            requests_per_second: 10,
            burst: 10,
        }),
        per_identity: None,
        overrides: vec![],
    }));
    let mut web = svc("web", &[("app", "web")], DefaultInbound::Deny);
    web.authorization = vec![policy("web-only", PolicyTarget::Service("web".into()))];
    let c = config(vec![own, api, web]);

    let p = compile(&served(&[("app", "api"), ("version", "v1")]), &c).unwrap();
    let names: Vec<String> = p.rules.policies.iter().map(|p| p.id.name.clone()).collect();
    assert_eq!(
        names,
        ["api-only", "ns-wide", "v1-only"],
        "deduplicated, by name"
    );
    assert_eq!(
        p.rules.default,
        DefaultInbound::Authenticated,
        "the strictest default"
    );
    assert_eq!(
        p.rules.services[0],
        ObjectRef::new("shop", "api-v1"),
        "registered first"
    );
    assert!(p.rules.rate_limit.is_some());
    assert_eq!(p.service, "shop/api-v1");

    // Without the label, only its own service's policies apply.
    let p = compile(&served(&[]), &c).unwrap();
    let names: Vec<String> = p.rules.policies.iter().map(|p| p.id.name.clone()).collect();
    assert_eq!(names, ["ns-wide", "v1-only"]);
    assert_eq!(p.rules.default, DefaultInbound::Allow);
}
