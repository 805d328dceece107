//! An invalid resource reaching a proxy: it is refused with a NACK naming the field, the last
//! good configuration stays, and traffic is unaffected.
//!
//! Our control plane validates with the same model as the proxy, so it never sends an invalid
//! resource. The client proxy therefore talks to a relay that presents the control plane's
//! identity, forwards Certify and the discovery stream to the real control plane, and lets the
//! test inject a response of its own.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weft_certs::{CertificateAuthority, SpiffeId, WorkloadKey};
use weft_proto::discovery::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use weft_proto::discovery::v1::aggregated_discovery_server::{
    AggregatedDiscovery, AggregatedDiscoveryServer,
};
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use weft_proto::identity::v1::identity_client::IdentityClient;
use weft_proto::identity::v1::identity_server::{Identity, IdentityServer};
use weft_proto::identity::v1::{CertifyRequest, CertifyResponse};
use weft_proto::mesh::v1 as pb;
use weft_proto::mesh::v1::Protocol;
use weft_tests::dataplane::{
    ProxyOpts, apply, http_backend, proxy_get, service, start_proxy, wait_endpoints,
};
use weft_tests::mesh::{TestMesh, workload};
use weft_tests::{metric_value, poll};

const INJECTED: &str = "injected-";

#[derive(Clone)]
struct Relay {
    /// The real control plane, as the client proxy's identity.
    upstream: tonic::transport::Channel,
    /// The real control plane, without a client certificate (Certify with a token).
    anonymous: tonic::transport::Channel,
    inject: Arc<Mutex<Option<mpsc::Receiver<DeltaDiscoveryResponse>>>>,
    nacks: mpsc::Sender<DeltaDiscoveryRequest>,
}

#[tonic::async_trait]
impl Identity for Relay {
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        IdentityClient::new(self.anonymous.clone())
            .certify(req.into_inner())
            .await
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscovery for Relay {
    type DeltaResourcesStream = Responses;

    async fn delta_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut from_proxy = req.into_inner();
        let (to_cp, rx) = mpsc::channel(16);
        let nacks = self.nacks.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = from_proxy.next().await {
                // Answers to injected responses stop here; the real control plane never sent them.
                if r.response_nonce.starts_with(INJECTED) {
                    let _ = nacks.send(r).await;
                } else if to_cp.send(r).await.is_err() {
                    return;
                }
            }
        });
        let from_cp = AggregatedDiscoveryClient::new(self.upstream.clone())
            .delta_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let injected = self.inject.lock().await.take().map(ReceiverStream::new);
        let merged: Responses = match injected {
            Some(inj) => Box::pin(from_cp.merge(inj.map(Ok))),
            None => Box::pin(from_cp),
        };
        Ok(Response::new(merged))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_nacked_and_traffic_is_unaffected() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "api".into())),
        ..Default::default()
    };
    let _api = start_proxy(&mesh, &cp, dir.path(), "api", opts)
        .await
        .unwrap();

    // The relay, serving as the control plane's identity.
    let (inject_tx, inject_rx) = mpsc::channel(1);
    let (nacks_tx, mut nacks) = mpsc::channel(4);
    let relay = Relay {
        upstream: mesh
            .channel(Some(&workload("default", "web")))
            .await
            .unwrap(),
        anonymous: mesh.channel(None).await.unwrap(),
        inject: Arc::new(Mutex::new(Some(inject_rx))),
        nacks: nacks_tx,
    };
    let ca = CertificateAuthority::load_dir(&mesh.ca.path(), None).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let cp_id: SpiffeId = weft_control_plane::control_plane_id(&mesh.ca.trust_domain);
    let issued = ca
        .issue(key.key_pair(), &cp_id, &[], Some(Duration::from_secs(600)))
        .unwrap();
    let server_tls = weft_certs::tls::server_config(
        mesh.ca.bundle(),
        Arc::new(weft_certs::tls::FixedCert(
            key.certified(issued.chain).unwrap(),
        )),
        false,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap().to_string();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let incoming = weft_control_plane::transport::tls_incoming(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(server_tls)),
        Arc::new(weft_control_plane::metrics::Metrics::default()),
        weft_control_plane::transport::MAX_CONNECTIONS,
        stop_rx,
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(relay.clone()))
            .add_service(AggregatedDiscoveryServer::new(relay))
            .serve_with_incoming(incoming),
    );

    let web = start_proxy(&mesh, &relay_addr, dir.path(), "web", ProxyOpts::default())
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    let good = web.config.borrow().services["default/api"].version.clone();
    let (status, _, _) = proxy_get(web.outbound_addr.unwrap(), "http://api.default/")
        .await
        .unwrap();
    assert_eq!(status, 200);

    // A Service whose only port is 0.
    let bad = pb::Service {
        namespace: "default".into(),
        name: "api".into(),
        ports: vec![pb::Port {
            name: "http".into(),
            port: 0,
            protocol: pb::Protocol::Http1.into(),
        }],
        ..Default::default()
    };
    inject_tx
        .send(DeltaDiscoveryResponse {
            system_version_info: "injected".into(),
            type_url: pb::SERVICE_TYPE_URL.into(),
            nonce: format!("{INJECTED}1"),
            resources: vec![Resource {
                name: "default/api".into(),
                version: "bad".into(),
                resource: Some(prost_types::Any {
                    type_url: pb::SERVICE_TYPE_URL.into(),
                    value: bad.encode_to_vec(),
                }),
            }],
            removed_resources: vec![],
        })
        .await
        .unwrap();
    let nack = tokio::time::timeout(Duration::from_secs(10), nacks.recv())
        .await
        .unwrap()
        .unwrap();
    let detail = nack.error_detail.expect("a NACK carries error_detail");
    assert!(
        detail.message.contains("default/api") && detail.message.contains("port"),
        "{}",
        detail.message
    );

    // The last good configuration stays, and traffic flows on it.
    poll(Duration::from_secs(5), || {
        let m = web.metrics.encode();
        (metric_value(&m, "discovery_nacks_total{type=\"service\"}") == Some(1.0)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(web.config.borrow().services["default/api"].version, good);
    for _ in 0..20 {
        let (status, _, _) = proxy_get(web.outbound_addr.unwrap(), "http://api.default/")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
}
