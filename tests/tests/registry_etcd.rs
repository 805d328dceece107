//! The control plane on a real etcd (Debian's etcd-server, started per test on loopback):
//! replicas agree on versions, foreign writers are picked up, leases expire, restarts are survived.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_control_plane::StoreConfig;
use weft_control_plane::store::EtcdConfig;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::config::v1::{ApplyRequest, Document, document};
use weft_proto::discovery::v1::DeltaDiscoveryResponse;
use weft_proto::mesh::v1::{self as pb, ENDPOINTS_TYPE_URL, SERVICE_TYPE_URL};
use weft_proto::registry::v1::RegisterRequest;
use weft_proto::registry::v1::registration_client::RegistrationClient;
use weft_tests::etcd::EtcdServer;
use weft_tests::mesh::{DeltaClient, TestMesh, workload};

fn etcd_store(etcd: &EtcdServer) -> StoreConfig {
    StoreConfig::Etcd(EtcdConfig {
        endpoints: vec![etcd.client_url()],
        ..EtcdConfig::default()
    })
}

fn service(name: &str, port: u32) -> Document {
    Document {
        kind: Some(document::Kind::Service(pb::Service {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port,
                protocol: pb::Protocol::Http1.into(),
            }],
            ..Default::default()
        })),
    }
}

async fn apply(mesh: &TestMesh, docs: Vec<Document>) {
    let mut client = ConfigClient::new(mesh.admin().await.unwrap());
    client
        .apply(ApplyRequest {
            documents: docs,
            dry_run: false,
        })
        .await
        .unwrap();
}

fn versions(r: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
    r.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

/// Receives until a response for `name` satisfies `ok`.
async fn recv_until(
    client: &mut DeltaClient,
    name: &str,
    ok: impl Fn(&pb::Endpoints) -> bool,
) -> pb::Endpoints {
    loop {
        let r = client.recv().await.unwrap();
        client.ack(&r).await.unwrap();
        if let Some(res) = r.resources.iter().find(|x| x.name == name) {
            let eps =
                pb::Endpoints::decode(res.resource.as_ref().unwrap().value.as_slice()).unwrap();
            if ok(&eps) {
                return eps;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_etcd_serve_identical_versions() {
    let etcd = EtcdServer::start().await.unwrap();
    let mesh = TestMesh::start_with(etcd_store(&etcd)).await.unwrap();
    let replica = TestMesh::control_plane(&mesh.ca, etcd_store(&etcd))
        .await
        .unwrap();
    apply(
        &mesh,
        vec![service("reviews", 9080), service("ratings", 9080)],
    )
    .await;
    mesh.cp.wait_synced().await.unwrap();
    replica.wait_synced().await.unwrap();

    let id = workload("default", "web");
    let mut a = DeltaClient::open(mesh.channel(Some(&id)).await.unwrap(), "a")
        .await
        .unwrap();
    let mut b = DeltaClient::open(mesh.channel_to(&replica, Some(&id)).await.unwrap(), "b")
        .await
        .unwrap();
    a.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    b.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    let (ra, rb) = (a.recv().await.unwrap(), b.recv().await.unwrap());
    assert_eq!(versions(&ra).len(), 2);
    assert_eq!(versions(&ra), versions(&rb));
    assert_eq!(ra.system_version_info, rb.system_version_info);

    // A proxy that held replica A's versions reconnects to replica B: nothing to send.
    let held = versions(&ra).into_iter().collect();
    let mut moved = DeltaClient::open(mesh.channel_to(&replica, Some(&id)).await.unwrap(), "moved")
        .await
        .unwrap();
    moved
        .send(weft_proto::discovery::v1::DeltaDiscoveryRequest {
            type_url: SERVICE_TYPE_URL.into(),
            initial_resource_versions: held,
            ..Default::default()
        })
        .await
        .unwrap();
    moved.quiet_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_written_with_etcdctl_is_picked_up() {
    let etcd = EtcdServer::start().await.unwrap();
    let mesh = TestMesh::start_with(etcd_store(&etcd)).await.unwrap();
    apply(&mesh, vec![service("db", 5432)]).await;
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .subscribe(ENDPOINTS_TYPE_URL, &["default/db"])
        .await
        .unwrap();

    let value = serde_json::json!({
        "apiVersion": "weft.io/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"namespace": "default"},
        "spec": {
            "service": "db",
            "address": "10.9.0.1:5432",
            "identity": "spiffe://mesh.test/ns/default/sa/db",
            "ready": true
        }
    });
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.client_url(),
            "put",
            "/weft/endpoints/default/db/10.9.0.1:5432",
            &value.to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eps = recv_until(&mut proxy, "default/db", |e| !e.endpoints.is_empty()).await;
    assert_eq!(eps.endpoints[0].address, "10.9.0.1:5432");
    assert_eq!(
        eps.endpoints[0].identity,
        "spiffe://mesh.test/ns/default/sa/db"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_registrant_disappears_when_its_lease_expires() {
    let etcd = EtcdServer::start().await.unwrap();
    let ca = weft_tests::TestCa::init(weft_tests::mesh::TD)
        .await
        .unwrap();
    let cp = TestMesh::control_plane_with_ttl(&ca, etcd_store(&etcd), Duration::from_secs(3))
        .await
        .unwrap();
    let mesh = TestMesh { ca, cp };
    apply(&mesh, vec![service("reviews", 9080)]).await;
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy
        .subscribe(ENDPOINTS_TYPE_URL, &["default/reviews"])
        .await
        .unwrap();

    let (tx, rx) = mpsc::channel(2);
    let mut client = RegistrationClient::new(
        mesh.channel(Some(&workload("default", "reviews")))
            .await
            .unwrap(),
    );
    let mut replies = client
        .register(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(RegisterRequest {
        endpoints: vec![pb::Endpoint {
            namespace: "default".into(),
            service: "reviews".into(),
            address: "10.1.0.7:9080".into(),
            ready: true,
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().registered, 1);
    recv_until(&mut proxy, "default/reviews", |e| e.endpoints.len() == 1).await;

    // The proxy dies: its stream is reset, not closed, and no heartbeat follows.
    drop(replies);
    drop(client);
    let started = std::time::Instant::now();
    recv_until(&mut proxy, "default/reviews", |e| e.endpoints.is_empty()).await;
    // Not revoked at once (a reset may be a network blip): gone by lease expiry.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_its_last_state_through_an_etcd_restart() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mesh = TestMesh::start_with(etcd_store(&etcd)).await.unwrap();
    apply(&mesh, vec![service("reviews", 9080)]).await;
    mesh.cp.wait_synced().await.unwrap();

    etcd.stop().await.unwrap();
    // While etcd is down, a new proxy still gets the last state.
    let mut proxy = mesh.proxy("web").await.unwrap();
    proxy.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    let first = proxy.recv().await.unwrap();
    assert_eq!(versions(&first).len(), 1);
    proxy.ack(&first).await.unwrap();

    etcd.start_again().unwrap();
    etcd.wait_healthy(Duration::from_secs(30)).await.unwrap();
    // After the restart, changes flow again on the same stream.
    apply(&mesh, vec![service("ratings", 9080)]).await;
    let next = proxy.recv().await.unwrap();
    assert_eq!(versions(&next).len(), 1);
    assert_eq!(next.resources[0].name, "default/ratings");
}
