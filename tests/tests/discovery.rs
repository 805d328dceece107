//! Delta discovery, registration and the config API over real mTLS gRPC, against an in-process
//! control plane with the embedded store (the etcd variants live in tests/store.rs).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::config::v1::{ApplyRequest, DeleteRequest, Document, Kind, ObjectRef, document};
use weft_proto::discovery::v1::DeltaDiscoveryRequest;
use weft_proto::mesh::v1::{
    self as pb, ENDPOINTS_TYPE_URL, SERVICE_TYPE_URL, TRUST_BUNDLE_TYPE_URL,
};
use weft_proto::registry::v1::registration_client::RegistrationClient;
use weft_proto::registry::v1::{RegisterRequest, RegisterResponse};
use weft_tests::mesh::{DeltaClient, TD, TestMesh, workload};
use weft_tests::{http_get, metric_value, poll};

fn service(name: &str, selector: &[(&str, &str)]) -> Document {
    Document {
        kind: Some(document::Kind::Service(pb::Service {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 9080,
                protocol: pb::Protocol::Http1.into(),
            }],
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            routes: vec![],
            traffic_policy: None,
            ..Default::default()
        })),
    }
}

fn split(name: &str, parent: &str, backends: &[(&str, i64)]) -> Document {
    weft_tests::traffic::route(name, parent, backends, Default::default(), None)
}

async fn apply(mesh: &TestMesh, docs: Vec<Document>) -> Result<(), tonic::Status> {
    let mut client = ConfigClient::new(mesh.admin().await.unwrap());
    client
        .apply(ApplyRequest {
            documents: docs,
            dry_run: false,
        })
        .await?;
    mesh.cp.wait_synced().await.unwrap();
    Ok(())
}

fn endpoint(ns: &str, svc: &str, addr: &str, version: &str) -> pb::Endpoint {
    pb::Endpoint {
        namespace: ns.into(),
        service: svc.into(),
        address: addr.into(),
        labels: [("app", "reviews"), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ready: true,
        ..Default::default()
    }
}

/// A registration stream held open by the test (as the proxy would).
struct Registration {
    tx: mpsc::Sender<RegisterRequest>,
    rx: tonic::Streaming<RegisterResponse>,
}

impl Registration {
    async fn open(mesh: &TestMesh, identity: &str) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        let mut client = RegistrationClient::new(mesh.channel(Some(identity)).await?);
        let rx = client.register(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    async fn send(
        &mut self,
        endpoints: Vec<pb::Endpoint>,
    ) -> Result<RegisterResponse, tonic::Status> {
        self.tx.send(RegisterRequest { endpoints }).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::unknown("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no reply in 10 s")),
        }
    }
}

fn decode_endpoints(resp: &weft_proto::discovery::v1::DeltaDiscoveryResponse) -> pb::Endpoints {
    pb::Endpoints::decode(
        resp.resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap()
}

fn names(resp: &weft_proto::discovery::v1::DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn wildcard_subscription_gets_services_and_only_what_changes() {
    let mesh = TestMesh::start().await.unwrap();
    apply(
        &mesh,
        vec![
            service("reviews", &[]),
            service("reviews-v2", &[("version", "v2")]),
        ],
    )
    .await
    .unwrap();
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    let first = proxy.recv().await.unwrap();
    assert_eq!(names(&first), ["default/reviews", "default/reviews-v2"]);
    assert!(!first.system_version_info.is_empty() && !first.nonce.is_empty());
    proxy.ack(&first).await.unwrap();

    // A canary split changes only the parent's Service resource.
    apply(
        &mesh,
        vec![split(
            "canary",
            "reviews",
            &[("reviews", 90), ("reviews-v2", 10)],
        )],
    )
    .await
    .unwrap();
    let update = proxy.recv().await.unwrap();
    assert_eq!(names(&update), ["default/reviews"]);
    let svc = pb::Service::decode(
        update.resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(svc.routes[0].rules[0].backend_refs[1].weight, Some(10));
    assert_ne!(update.resources[0].version, first.resources[0].version);
    proxy.ack(&update).await.unwrap();

    // Deleting the route and then the subset service arrives as removals.
    let mut config = ConfigClient::new(mesh.admin().await.unwrap());
    config
        .delete(DeleteRequest {
            objects: vec![
                ObjectRef {
                    kind: Kind::HttpRoute.into(),
                    namespace: "default".into(),
                    name: "canary".into(),
                },
                ObjectRef {
                    kind: Kind::Service.into(),
                    namespace: "default".into(),
                    name: "reviews-v2".into(),
                },
            ],
        })
        .await
        .unwrap();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    while removed.is_empty() || changed.is_empty() {
        let r = proxy.recv().await.unwrap();
        removed.extend(r.removed_resources.clone());
        changed.extend(names(&r));
        proxy.ack(&r).await.unwrap();
    }
    assert_eq!(removed, ["default/reviews-v2"]);
    assert_eq!(changed, ["default/reviews"]);
}

#[tokio::test]
async fn registrations_reach_on_demand_subscribers_and_leave_with_the_stream() {
    let mesh = TestMesh::start().await.unwrap();
    apply(
        &mesh,
        vec![
            service("reviews", &[]),
            service("reviews-v2", &[("app", "reviews"), ("version", "v2")]),
        ],
    )
    .await
    .unwrap();
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .subscribe(ENDPOINTS_TYPE_URL, &["default/reviews-v2", "default/nope"])
        .await
        .unwrap();
    let first = proxy.recv().await.unwrap();
    assert_eq!(names(&first), ["default/reviews-v2"]);
    assert!(decode_endpoints(&first).endpoints.is_empty());
    // A name that does not exist is announced as removed, so the proxy stops waiting for it.
    assert_eq!(first.removed_resources, ["default/nope"]);
    proxy.ack(&first).await.unwrap();

    let mut reg = Registration::open(&mesh, &workload("default", "reviews"))
        .await
        .unwrap();
    let reply = reg
        .send(vec![endpoint("default", "reviews", "10.1.0.7:9080", "v2")])
        .await
        .unwrap();
    assert_eq!(reply.registered, 1);
    assert_eq!(reply.ttl.unwrap().seconds, 20);
    let pushed = proxy.recv().await.unwrap();
    let eps = decode_endpoints(&pushed);
    assert_eq!(eps.endpoints.len(), 1);
    assert_eq!(eps.endpoints[0].address, "10.1.0.7:9080");
    // The identity comes from the registrant's certificate.
    assert_eq!(eps.endpoints[0].identity, workload("default", "reviews"));
    proxy.ack(&pushed).await.unwrap();

    // A heartbeat changes nothing.
    reg.send(vec![]).await.unwrap();

    // Closing the stream deregisters at once.
    drop(reg.tx);
    let gone = proxy.recv().await.unwrap();
    assert!(decode_endpoints(&gone).endpoints.is_empty());
}

#[tokio::test]
async fn registrations_for_another_identity_or_namespace_are_refused() {
    let mesh = TestMesh::start().await.unwrap();
    apply(&mesh, vec![service("reviews", &[])]).await.unwrap();
    let mut reg = Registration::open(&mesh, &workload("default", "reviews"))
        .await
        .unwrap();
    let mut other = endpoint("default", "reviews", "10.1.0.7:9080", "v1");
    other.identity = workload("default", "admin");
    let err = reg.send(vec![other]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("only for itself"), "{err:?}");

    let mut reg = Registration::open(&mesh, &workload("shop", "reviews"))
        .await
        .unwrap();
    let err = reg
        .send(vec![endpoint("default", "reviews", "10.1.0.8:9080", "v1")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("own namespace"), "{err:?}");

    let mut reg = Registration::open(&mesh, &workload("default", "reviews"))
        .await
        .unwrap();
    let err = reg
        .send(vec![endpoint("default", "reviews", "not-an-address", "v1")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("endpoints[0]: address"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_counted_and_not_resent_and_the_next_change_still_arrives() {
    let mesh = TestMesh::start().await.unwrap();
    apply(
        &mesh,
        vec![service("reviews", &[]), service("reviews-v2", &[])],
    )
    .await
    .unwrap();
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .subscribe(SERVICE_TYPE_URL, &["default/reviews"])
        .await
        .unwrap();
    let first = proxy.recv().await.unwrap();
    proxy
        .nack(&first, "route table rejected: test")
        .await
        .unwrap();

    let admin = mesh.cp.admin_addr().to_string();
    let nacks = poll(Duration::from_secs(10), || {
        let text = futures_block(http_get(&admin, "/metrics"))?;
        metric_value(&text, "discovery_nacks_total{type=\"service\"}").filter(|v| *v >= 1.0)
    })
    .await
    .unwrap();
    assert_eq!(nacks, 1.0);
    // No resend loop: the rejected version is not sent again.
    proxy.quiet_for(Duration::from_millis(300)).await.unwrap();

    apply(
        &mesh,
        vec![split(
            "canary",
            "reviews",
            &[("reviews", 1), ("reviews-v2", 1)],
        )],
    )
    .await
    .unwrap();
    let next = proxy.recv().await.unwrap();
    assert_eq!(names(&next), ["default/reviews"]);
    assert_ne!(next.resources[0].version, first.resources[0].version);
}

/// Runs an admin HTTP GET to completion from a sync poll closure.
fn futures_block<F: std::future::Future<Output = anyhow::Result<(u16, String)>>>(
    f: F,
) -> Option<String> {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
        .ok()
        .map(|(_, body)| body)
}

#[tokio::test]
async fn unsubscribing_stops_updates_for_that_name() {
    let mesh = TestMesh::start().await.unwrap();
    apply(
        &mesh,
        vec![service("reviews", &[]), service("ratings", &[])],
    )
    .await
    .unwrap();
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .subscribe(SERVICE_TYPE_URL, &["default/reviews", "default/ratings"])
        .await
        .unwrap();
    let first = proxy.recv().await.unwrap();
    assert_eq!(names(&first), ["default/ratings", "default/reviews"]);
    proxy.ack(&first).await.unwrap();
    proxy
        .send(DeltaDiscoveryRequest {
            type_url: SERVICE_TYPE_URL.into(),
            resource_names_unsubscribe: vec!["default/reviews".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // Changing both: only ratings arrives.
    apply(
        &mesh,
        vec![
            service("reviews", &[("v", "2")]),
            service("ratings", &[("v", "2")]),
        ],
    )
    .await
    .unwrap();
    let next = proxy.recv().await.unwrap();
    assert_eq!(names(&next), ["default/ratings"]);
}

#[tokio::test]
async fn a_reconnecting_proxy_gets_only_what_changed() {
    let mesh = TestMesh::start().await.unwrap();
    apply(
        &mesh,
        vec![
            service("reviews", &[]),
            service("ratings", &[]),
            service("details", &[]),
        ],
    )
    .await
    .unwrap();
    let channel = mesh
        .channel(Some(&workload("default", "web")))
        .await
        .unwrap();
    let mut proxy = DeltaClient::open(channel.clone(), "web").await.unwrap();
    proxy.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    let first = proxy.recv().await.unwrap();
    assert_eq!(first.resources.len(), 3);
    let held: std::collections::BTreeMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(proxy);

    // While away: one service changes, one goes.
    apply(&mesh, vec![service("ratings", &[("v", "2")])])
        .await
        .unwrap();
    let mut config = ConfigClient::new(mesh.admin().await.unwrap());
    config
        .delete(DeleteRequest {
            objects: vec![ObjectRef {
                kind: Kind::Service.into(),
                namespace: "default".into(),
                name: "details".into(),
            }],
        })
        .await
        .unwrap();
    mesh.cp.wait_synced().await.unwrap();

    let mut proxy = DeltaClient::open(channel, "web").await.unwrap();
    proxy
        .send(DeltaDiscoveryRequest {
            type_url: SERVICE_TYPE_URL.into(),
            initial_resource_versions: held.into_iter().collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let resync = proxy.recv().await.unwrap();
    assert_eq!(names(&resync), ["default/ratings"]);
    assert_eq!(resync.removed_resources, ["default/details"]);
}

#[tokio::test]
async fn the_trust_bundle_is_a_resource() {
    let mesh = TestMesh::start().await.unwrap();
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy.subscribe(TRUST_BUNDLE_TYPE_URL, &[TD]).await.unwrap();
    let resp = proxy.recv().await.unwrap();
    let bundle = pb::TrustBundle::decode(
        resp.resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(bundle.trust_domain, TD);
    assert_eq!(bundle.roots.len(), 1);
    assert_eq!(bundle.roots[0], mesh.cp.trust_bundle().roots()[0].to_vec());
}

#[tokio::test]
async fn streams_without_a_certificate_or_with_bad_requests_are_refused() {
    let mesh = TestMesh::start().await.unwrap();
    match DeltaClient::open(mesh.channel(None).await.unwrap(), "anon").await {
        Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        Ok(mut c) => {
            c.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
            assert_eq!(c.status().await.code(), Code::Unauthenticated);
        }
    }

    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .subscribe("type.googleapis.com/envoy.config.cluster.v3.Cluster", &[])
        .await
        .unwrap();
    let s = proxy.status().await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("unknown type_url"), "{s:?}");

    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .send(DeltaDiscoveryRequest {
            node: Some(weft_proto::discovery::v1::Node {
                id: "web-1".into(),
                identity: workload("default", "admin"),
                ..Default::default()
            }),
            type_url: SERVICE_TYPE_URL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = proxy.status().await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("contradicts"), "{s:?}");
}

#[tokio::test]
async fn only_admins_change_config() {
    let mesh = TestMesh::start().await.unwrap();
    let mut config = ConfigClient::new(
        mesh.channel(Some(&workload("default", "web")))
            .await
            .unwrap(),
    );
    let err = config
        .apply(ApplyRequest {
            documents: vec![service("reviews", &[])],
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(&workload("default", "web")),
        "{err:?}"
    );
    // Reads are open to any mesh identity; nothing was stored.
    let got = config
        .get(weft_proto::config::v1::GetRequest {
            kind: Kind::Service.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.documents.is_empty());
}

/// A wildcard sync larger than one response arrives split, each part within the bound, and
/// together complete; acknowledging them all leaves the stream quiet.
#[tokio::test]
async fn a_large_initial_sync_arrives_in_bounded_responses() {
    use weft_control_plane::discovery::RESPONSE_BYTES;

    let mesh = TestMesh::start().await.unwrap();
    let all: Vec<String> = (0..120).map(|i| format!("svc-{i:03}")).collect();
    let docs = all
        .iter()
        .map(|n| service(n, &[("app.kubernetes.io/name", n), ("version", "v1")]))
        .collect();
    apply(&mesh, docs).await.unwrap();

    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    let mut held = std::collections::BTreeSet::new();
    let mut responses = 0;
    while held.len() < all.len() {
        let resp = proxy.recv().await.unwrap();
        responses += 1;
        let bytes: usize = resp
            .resources
            .iter()
            .map(|r| {
                r.name.len()
                    + r.version.len()
                    + r.resource
                        .as_ref()
                        .map_or(0, |a| a.type_url.len() + a.value.len())
            })
            .sum();
        assert!(
            bytes <= RESPONSE_BYTES,
            "response {responses}: {bytes} bytes"
        );
        for name in names(&resp) {
            assert!(held.insert(name.clone()), "{name} sent twice");
        }
        proxy.ack(&resp).await.unwrap();
    }
    let expected: std::collections::BTreeSet<String> =
        all.iter().map(|n| format!("default/{n}")).collect();
    assert_eq!(held, expected);
    assert!(
        responses > 1,
        "120 services fit one response: the test proves nothing"
    );
    proxy.quiet_for(Duration::from_millis(300)).await.unwrap();
}
