//! AuthorizationPolicy and RateLimitPolicy through `weftctl apply`, `get` and `delete` against a
//! real control plane started with `--default-inbound-policy deny`, and what discovery then
//! serves for the target service.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use weft_certs::{CertificateAuthority, SpiffeId, WorkloadKey};
use weft_proto::mesh::v1::{self as pb, SERVICE_TYPE_URL};
use weft_tests::ctl::Ctl;
use weft_tests::mesh::DeltaClient;
use weft_tests::{ControlPlaneProcess, TestCa};

const TD: &str = "mesh.test";

async fn start(extra: &[&str]) -> (TestCa, ControlPlaneProcess, Ctl) {
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), extra).await.unwrap();
    let ctl = Ctl::login(&ca, &cp).await.unwrap();
    (ca, cp, ctl)
}

/// A discovery stream to `cp` as the workload `shop/web`.
async fn discovery(ca: &TestCa, cp: &ControlPlaneProcess) -> DeltaClient {
    let id = SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/sa/web")).unwrap();
    let authority = CertificateAuthority::load_dir(&ca.path(), None).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = authority
        .issue(key.key_pair(), &id, &[], Some(Duration::from_secs(3600)))
        .unwrap();
    let cert = key.certified(issued.chain).unwrap();
    let cp_id = weft_control_plane::control_plane_id(&ca.trust_domain);
    let channel =
        weft_control_plane::client::connect(&cp.grpc_addr, ca.bundle(), cp_id, Some(cert))
            .await
            .unwrap();
    DeltaClient::open(channel, "web").await.unwrap()
}

/// The `shop/api` Service resource, once it carries `ready`.
async fn api_resource(
    client: &mut DeltaClient,
    ready: impl Fn(&pb::Service) -> bool,
) -> pb::Service {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no such resource");
        let resp = client.recv().await.unwrap();
        client.ack(&resp).await.unwrap();
        let found = resp
            .resources
            .iter()
            .filter(|r| r.name == "shop/api")
            .filter_map(|r| r.resource.as_ref())
            .map(|any| pb::Service::decode(any.value.as_slice()).unwrap())
            .find(|s| ready(s));
        if let Some(s) = found {
            return s;
        }
    }
}

const POLICIES: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: http1}]
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: Allow
  from:
  - identities: [\"spiffe://mesh.test/ns/shop/sa/web\"]
  - unauthenticated: true
    networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  to:
  - ports: [8080]
    methods: [GET, HEAD]
    paths: [{type: Exact, value: /healthz}, {type: PathPrefix, value: /api/}]
    headers: [{name: x-tenant, value: blue}]
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec:
  targetRef: {kind: Namespace, name: shop}
  action: Deny
  mode: Audit
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: for-later, namespace: shop}
spec:
  targetRef: {kind: Service, name: later}
  action: Deny
---
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-limits, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  total: {requestsPerSecond: 1000, burst: 2000}
  perIdentity: {requestsPerSecond: 50}
  overrides: [{identities: [\"spiffe://mesh.test/ns/batch/sa/loader\"], requestsPerSecond: 500, burst: 1000}]
";

/// The operator's loop for policies: apply, list (with STATUS), read back and re-apply
/// unchanged, see them in discovery, delete the target (allowed), delete them.
#[tokio::test]
async fn apply_get_reapply_delete_policies() {
    let (ca, cp, ctl) = start(&["--default-inbound-policy", "deny"]).await;
    let file = ctl.file("policies.yaml", POLICIES).unwrap();
    let out = ctl.ok(&["apply", "-f", &file]).await.unwrap();
    assert_eq!(
        out,
        "service/shop/api created\n\
         authorizationpolicy/shop/api-from-web created\n\
         authorizationpolicy/shop/audit-all created\n\
         authorizationpolicy/shop/for-later created\n\
         ratelimitpolicy/shop/api-limits created\n"
    );

    let table = ctl.ok(&["get", "authz", "-n", "shop"]).await.unwrap();
    assert_eq!(
        table,
        "\
NAMESPACE   NAME           TARGET           ACTION   MODE      STATUS
shop        api-from-web   Service/api      Allow    Enforce   attached
shop        audit-all      Namespace/shop   Deny     Audit     attached
shop        for-later      Service/later    Deny     Enforce   not attached
"
    );
    let table = ctl.ok(&["get", "ratelimits", "-A"]).await.unwrap();
    assert_eq!(
        table,
        "\
NAMESPACE   NAME         TARGET        TOTAL               PER-IDENTITY   STATUS
shop        api-limits   Service/api   1000/s,burst=2000   50/s           attached
"
    );

    // Read back as YAML and JSON: both apply back unchanged.
    let authz = ctl
        .ok(&["get", "authorizationpolicies", "-n", "shop", "-o", "yaml"])
        .await
        .unwrap();
    let limits = ctl
        .ok(&["get", "ratelimitpolicy", "-n", "shop", "-o", "yaml"])
        .await
        .unwrap();
    assert!(authz.contains("mode: Audit"), "{authz}");
    assert!(limits.contains("requestsPerSecond: 50"), "{limits}");
    let exported = ctl
        .file("exported.yaml", &format!("{authz}---\n{limits}"))
        .unwrap();
    let again = ctl.ok(&["apply", "-f", &exported]).await.unwrap();
    assert_eq!(
        again.lines().filter(|l| l.ends_with(" unchanged")).count(),
        4,
        "{again}"
    );
    let json = ctl
        .ok(&["get", "authz", "api-from-web", "-n", "shop", "-o", "json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "AuthorizationPolicy", "{json}");
    assert_eq!(v["spec"]["to"][0]["methods"][1], "HEAD");
    let exported = ctl.file("one.json", &json).unwrap();
    let again = ctl.ok(&["apply", "-f", &exported]).await.unwrap();
    assert_eq!(again, "authorizationpolicy/shop/api-from-web unchanged\n");

    // Discovery: the service carries its policies and the control plane's default.
    let mut client = discovery(&ca, &cp).await;
    client
        .subscribe(SERVICE_TYPE_URL, &["shop/api"])
        .await
        .unwrap();
    let api = api_resource(&mut client, |s| s.rate_limit_policy.is_some()).await;
    assert_eq!(
        api.default_inbound_policy,
        i32::from(pb::DefaultInboundPolicy::Deny)
    );
    let names: Vec<_> = api
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["api-from-web", "audit-all"]);
    let limit = api.rate_limit_policy.as_ref().unwrap();
    assert_eq!(limit.per_identity.unwrap().burst, 50);

    // A Service's own default wins over the control plane's.
    let own = POLICIES
        .split("---\n")
        .next()
        .unwrap()
        .replace("spec:\n", "spec:\n  defaultInboundPolicy: authenticated\n");
    let own = ctl.file("own.yaml", &own).unwrap();
    ctl.ok(&["apply", "-f", &own]).await.unwrap();
    let api = api_resource(&mut client, |s| {
        s.default_inbound_policy == i32::from(pb::DefaultInboundPolicy::Authenticated)
    })
    .await;
    assert_eq!(api.authorization_policies.len(), 2);

    // Deleting the target is not blocked by its policies; they stay, not attached.
    let out = ctl.ok(&["delete", "service", "shop/api"]).await.unwrap();
    assert_eq!(out, "service/shop/api deleted\n");
    let table = ctl.ok(&["get", "ratelimits", "-n", "shop"]).await.unwrap();
    assert!(
        table.lines().nth(1).unwrap().ends_with("   not attached"),
        "{table}"
    );

    let out = ctl
        .ok(&["delete", "authz", "shop/api-from-web"])
        .await
        .unwrap();
    assert_eq!(out, "authorizationpolicy/shop/api-from-web deleted\n");
    let out = ctl
        .ok(&["delete", "ratelimitpolicy", "shop/api-limits"])
        .await
        .unwrap();
    assert_eq!(out, "ratelimitpolicy/shop/api-limits deleted\n");
    let rest = ctl
        .file(
            "rest.yaml",
            &POLICIES
                .split("---\n")
                .skip(2)
                .take(2)
                .collect::<Vec<_>>()
                .join("---\n"),
        )
        .unwrap();
    let out = ctl.ok(&["delete", "-f", &rest]).await.unwrap();
    assert_eq!(
        out,
        "authorizationpolicy/shop/audit-all deleted\nauthorizationpolicy/shop/for-later deleted\n"
    );
    let out = ctl
        .run_in(None, &["get", "authz", "-n", "shop"], None)
        .await
        .unwrap();
    assert!(out.success && out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        out.stderr,
        "No authorizationpolicies found in namespace shop.\n"
    );
}

/// Refusals that need the control plane (trust domain, the target's ports, the other
/// RateLimitPolicies) name file, document and field, and store nothing.
#[tokio::test]
async fn server_side_policy_refusals_name_file_document_and_field() {
    let (_ca, _cp, ctl) = start(&[]).await;
    let services = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: first, namespace: shop}
spec: {targetRef: {name: db}, total: {requestsPerSecond: 10}}
";
    let file = ctl.file("services.yaml", services).unwrap();
    ctl.ok(&["apply", "-f", &file]).await.unwrap();
    let bad = "\
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {kind: Service, name: db}
  action: Allow
  from: [{identities: [\"spiffe://other.test/ns/shop/sa/web\"]}]
  to: [{ports: [5432], methods: [GET]}, {ports: [80]}]
---
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: second, namespace: shop}
spec: {targetRef: {name: db}, total: {requestsPerSecond: 10}}
";
    let before = ctl.ok(&["get", "authz", "-A", "-o", "yaml"]).await.unwrap();
    let file = ctl.file("bad.yaml", bad).unwrap();
    let stderr = ctl.refused(&["apply", "-f", &file]).await.unwrap();
    let a = format!("weftctl: {file}: document 1 (AuthorizationPolicy shop/p)");
    let r = format!("weftctl: {file}: document 2 (RateLimitPolicy shop/second)");
    assert_eq!(
        stderr,
        format!(
            "{a}: spec.from[0].identities[0]: spiffe://other.test/ns/shop/sa/web is not in the mesh's trust domain mesh.test: no client could present it\n\
             {a}: spec.to[0].methods: could never match: port 5432 of Service shop/db is tcp, where requests have no methods (name http1, http2 or grpc ports in `ports`)\n\
             {a}: spec.to[1].ports[0]: Service shop/db has no port 80 (it has 5432)\n\
             {r}: spec.targetRef.name: Service shop/db is already the target of RateLimitPolicy shop/first: at most one RateLimitPolicy may target a service (change that one, or delete it first)\n"
        )
    );
    assert_eq!(
        ctl.ok(&["get", "authz", "-A", "-o", "yaml"]).await.unwrap(),
        before
    );
}

/// A client-side refusal never reaches the control plane, and says where.
#[tokio::test]
async fn client_side_policy_refusals_name_file_document_and_field() {
    let (_ca, _cp, ctl) = start(&[]).await;
    let bad = POLICIES.replace("methods: [GET, HEAD]", "methods: [get]");
    let file = ctl.file("bad.yaml", &bad).unwrap();
    let stderr = ctl.refused(&["apply", "-f", &file]).await.unwrap();
    assert_eq!(
        stderr,
        format!(
            "weftctl: {file}: document 2 (AuthorizationPolicy shop/api-from-web): spec.to[0].methods[0]: \"get\": methods are case-sensitive; did you mean \"GET\"?\n"
        )
    );
}
