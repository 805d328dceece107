//! Apply, Get and Delete of the policy kinds against the embedded store: the cross-object
//! checks (trust domain, the target's ports and protocols, one RateLimitPolicy per service),
//! each refusal naming its document and field.

use std::time::{Duration, SystemTime};

use super::*;
use crate::manifest::parse_documents;
use crate::store::MemoryStore;
use crate::transport::{PeerInfo, PeerSvid};

const ADMIN: &str = "spiffe://mesh.test/ns/weft-system/sa/weft-admin";

fn service() -> ConfigService {
    ConfigService::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Authz::new([admin()])),
        TrustDomain::parse("mesh.test").unwrap(),
        Arc::default(),
    )
}

fn admin() -> weft_certs::SpiffeId {
    weft_certs::SpiffeId::parse(ADMIN).unwrap()
}

fn request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(PeerInfo {
        remote_addr: "127.0.0.1:1".parse().unwrap(),
        svid: Some(PeerSvid {
            id: admin(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
            issuer_key_id: None,
        }),
    });
    r
}

/// Applies `yaml`; the outcomes as `Kind namespace/name Action` lines, or the violations as
/// `document N: field: description` lines.
async fn apply(cs: &ConfigService, yaml: &str) -> Result<Vec<String>, Vec<String>> {
    let documents = parse_documents("t.yaml", yaml).unwrap();
    match cs
        .apply(request(ApplyRequest {
            documents,
            dry_run: false,
        }))
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .outcomes
            .iter()
            .map(|o| {
                format!(
                    "{:?} {}/{} {:?}",
                    Kind::try_from(o.kind).unwrap(),
                    o.namespace,
                    o.name,
                    Action::try_from(o.action).unwrap()
                )
            })
            .collect()),
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status}");
            let v = Violations::decode(status.details()).unwrap();
            Err(v
                .violations
                .iter()
                .map(|v| format!("document {}: {}: {}", v.document, v.field, v.description))
                .collect())
        }
    }
}

const SERVICES: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: http1}, {name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec: {ports: [{port: 5432, protocol: tcp}]}
";

fn authz(target: &str, spec: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\n\
         spec:\n  targetRef: {target}\n  action: Allow\n{spec}"
    )
}

fn limits(name: &str, service: &str, extra: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  targetRef: {{kind: Service, name: {service}}}\n  total: {{requestsPerSecond: 100}}\n{extra}"
    )
}

#[tokio::test]
async fn identities_must_be_in_the_trust_domain() {
    let cs = service();
    let policy = authz(
        "{kind: Namespace, name: shop}",
        "  from:\n  - identities: [\"spiffe://mesh.test/ns/shop/sa/web\", \"spiffe://other.test/ns/shop/sa/web\"]\n",
    );
    let limit = limits(
        "l",
        "api",
        "  overrides: [{identities: [\"spiffe://other.test/ns/batch/sa/loader\"], requestsPerSecond: 5}]\n",
    );
    let got = apply(&cs, &format!("{policy}---\n{limit}"))
        .await
        .unwrap_err();
    assert_eq!(
        got,
        [
            "document 0: spec.from[0].identities[1]: spiffe://other.test/ns/shop/sa/web is not in the mesh's trust domain mesh.test: no client could present it",
            "document 1: spec.overrides[0].identities[0]: spiffe://other.test/ns/batch/sa/loader is not in the mesh's trust domain mesh.test: no client could present it",
        ]
    );
}

#[tokio::test]
async fn to_entries_must_fit_the_target_services_ports() {
    let cs = service();
    apply(&cs, SERVICES).await.unwrap();
    // A port the service does not have.
    let got = apply(
        &cs,
        &authz(
            "{kind: Service, name: api}",
            "  to: [{ports: [8080, 7000]}]\n",
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        got,
        ["document 0: spec.to[0].ports[1]: Service shop/api has no port 7000 (it has 8080, 9090)"]
    );
    // HTTP fields where every port the entry applies to is tcp: named ports, or all of them.
    let got = apply(
        &cs,
        &authz(
            "{kind: Service, name: db}",
            "  to:\n  - {methods: [GET], paths: [{type: Exact, value: /x}]}\n  - {ports: [5432], headers: [{name: a, value: b}]}\n  - {ports: [5432]}\n",
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        got,
        [
            "document 0: spec.to[0].methods: could never match: port 5432 of Service shop/db is tcp, where requests have no methods (name http1, http2 or grpc ports in `ports`)",
            "document 0: spec.to[0].paths: could never match: port 5432 of Service shop/db is tcp, where requests have no paths (name http1, http2 or grpc ports in `ports`)",
            "document 0: spec.to[1].headers: could never match: port 5432 of Service shop/db is tcp, where requests have no headers (name http1, http2 or grpc ports in `ports`)",
        ]
    );
    // HTTP fields on HTTP ports, and a mixed service, are fine.
    let ok = apply(
        &cs,
        &authz(
            "{kind: Service, name: api}",
            "  to: [{ports: [8080], methods: [GET]}, {methods: [POST]}]\n",
        ),
    )
    .await
    .unwrap();
    assert_eq!(ok, ["AuthorizationPolicy shop/p Created"]);
}

#[tokio::test]
async fn the_target_is_checked_as_the_same_apply_leaves_it() {
    let cs = service();
    apply(&cs, SERVICES).await.unwrap();
    // The batch changes db's port to http1: the HTTP fields are fine.
    let db_http = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {ports: [{port: 5432, protocol: http1}]}\n";
    let policy = authz("{kind: Service, name: db}", "  to: [{methods: [GET]}]\n");
    assert!(apply(&cs, &format!("{db_http}---\n{policy}")).await.is_ok());
    // A service of the batch with no port 8080.
    let fresh = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {name: fresh, namespace: shop}\nspec: {ports: [{port: 80, protocol: http1}]}\n";
    let policy = authz("{kind: Service, name: fresh}", "  to: [{ports: [8080]}]\n");
    let got = apply(&cs, &format!("{fresh}---\n{policy}"))
        .await
        .unwrap_err();
    assert_eq!(
        got,
        ["document 1: spec.to[0].ports[0]: Service shop/fresh has no port 8080 (it has 80)"]
    );
}

#[tokio::test]
async fn dangling_targets_and_namespace_targets_are_allowed() {
    let cs = service();
    // No service yet: nothing to check the ports against.
    let got = apply(
        &cs,
        &authz(
            "{kind: Service, name: later}",
            "  to: [{ports: [1234], methods: [GET]}]\n",
        ),
    )
    .await
    .unwrap();
    assert_eq!(got, ["AuthorizationPolicy shop/p Created"]);
    apply(&cs, SERVICES).await.unwrap();
    // A namespace's services differ in ports: a namespace policy is not held to any one's.
    let got = apply(
        &cs,
        &authz(
            "{kind: Namespace, name: shop}",
            "  to: [{ports: [1234], methods: [GET]}]\n",
        ),
    )
    .await
    .unwrap();
    assert_eq!(got, ["AuthorizationPolicy shop/p Configured"]);
}

#[tokio::test]
async fn one_rate_limit_policy_per_service() {
    let cs = service();
    apply(&cs, SERVICES).await.unwrap();
    assert_eq!(
        apply(&cs, &limits("first", "api", "")).await.unwrap(),
        ["RateLimitPolicy shop/first Created"]
    );
    // Re-applying the same one is not a second one.
    assert_eq!(
        apply(&cs, &limits("first", "api", "")).await.unwrap(),
        ["RateLimitPolicy shop/first Unchanged"]
    );
    let got = apply(&cs, &limits("second", "api", "")).await.unwrap_err();
    assert_eq!(
        got,
        [
            "document 0: spec.targetRef.name: Service shop/api is already the target of RateLimitPolicy shop/first: at most one RateLimitPolicy may target a service (change that one, or delete it first)"
        ]
    );
    // Moving the first away in the same apply frees the service.
    let moved = format!(
        "{}---\n{}",
        limits("first", "db", ""),
        limits("second", "api", "")
    );
    assert_eq!(
        apply(&cs, &moved).await.unwrap(),
        [
            "RateLimitPolicy shop/first Configured",
            "RateLimitPolicy shop/second Created"
        ]
    );
    // Two new ones for one service in one apply: each names the other.
    let both = format!(
        "{}---\n{}",
        limits("one", "web", ""),
        limits("two", "web", "")
    );
    let got = apply(&cs, &both).await.unwrap_err();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].contains("RateLimitPolicy shop/two") && got[1].contains("RateLimitPolicy shop/one")
    );
}

#[tokio::test]
async fn policies_are_read_and_deleted_and_never_block_a_service_delete() {
    let cs = service();
    apply(&cs, SERVICES).await.unwrap();
    apply(
        &cs,
        &format!(
            "{}---\n{}",
            authz("{kind: Service, name: api}", ""),
            limits("l", "api", "")
        ),
    )
    .await
    .unwrap();
    for (kind, want) in [
        (Kind::AuthorizationPolicy, "p"),
        (Kind::RateLimitPolicy, "l"),
    ] {
        let got = cs
            .get(request(GetRequest {
                kind: kind.into(),
                namespace: "shop".into(),
                name: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<String> = got
            .documents
            .iter()
            .map(|d| match d.kind.as_ref().unwrap() {
                document::Kind::AuthorizationPolicy(p) => p.name.clone(),
                document::Kind::RateLimitPolicy(p) => p.name.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, [want]);
    }
    // The target service goes; its policies stay (dangling).
    let delete = |kind: Kind, name: &str| {
        request(DeleteRequest {
            objects: vec![weft_proto::config::v1::ObjectRef {
                kind: kind.into(),
                namespace: "shop".into(),
                name: name.into(),
            }],
        })
    };
    cs.delete(delete(Kind::Service, "api")).await.unwrap();
    cs.delete(delete(Kind::AuthorizationPolicy, "p"))
        .await
        .unwrap();
    cs.delete(delete(Kind::RateLimitPolicy, "l")).await.unwrap();
    let gone = cs
        .delete(delete(Kind::RateLimitPolicy, "l"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone}");
}
