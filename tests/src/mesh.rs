//! An in-process control plane on 127.0.0.1:0 with a test CA, and clients that present SVIDs
//! minted straight from that CA (so a test can be any identity it needs).

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weft_certs::{CertificateAuthority, SpiffeId, WorkloadKey};
use weft_control_plane::{Config, ControlPlane, StoreConfig};
use weft_proto::discovery::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};

use crate::TestCa;

pub const TD: &str = "mesh.test";

#[derive(Debug)]
pub struct TestMesh {
    pub ca: TestCa,
    pub cp: ControlPlane,
}

impl TestMesh {
    /// A control plane with the embedded store.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(StoreConfig::Memory { snapshot: None }).await
    }

    pub async fn start_with(store: StoreConfig) -> anyhow::Result<Self> {
        let ca = TestCa::init(TD).await?;
        let cp = Self::control_plane(&ca, store).await?;
        Ok(Self { ca, cp })
    }

    /// Another control plane (replica) of the same CA, on `store`.
    pub async fn control_plane(ca: &TestCa, store: StoreConfig) -> anyhow::Result<ControlPlane> {
        Self::control_plane_with_ttl(ca, store, Duration::from_secs(20)).await
    }

    /// A control plane whose registration leases last `registration_ttl`.
    pub async fn control_plane_with_ttl(
        ca: &TestCa,
        store: StoreConfig,
        registration_ttl: Duration,
    ) -> anyhow::Result<ControlPlane> {
        let config = Config {
            ca_dir: ca.path(),
            trust_domain: None,
            listen: "127.0.0.1:0".parse()?,
            admin: "127.0.0.1:0".parse()?,
            svid_ttl: Duration::from_secs(3600),
            server_names: vec!["localhost".into()],
            k8s: None,
            store,
            admin_identities: vec![],
            registration_ttl,
            max_connections: weft_control_plane::transport::MAX_CONNECTIONS,
            admin_remote: Default::default(),
        };
        Ok(ControlPlane::start(config).await?)
    }

    /// A gRPC channel to `cp` presenting an SVID for `id` (None: no client certificate).
    pub async fn channel_to(&self, cp: &ControlPlane, id: Option<&str>) -> anyhow::Result<Channel> {
        self.channel_at(&cp.grpc_addr().to_string(), id).await
    }

    /// A gRPC channel to the control plane at `addr` (in-process or a process) presenting an
    /// SVID for `id`.
    pub async fn channel_at(&self, addr: &str, id: Option<&str>) -> anyhow::Result<Channel> {
        let cert = match id {
            None => None,
            Some(id) => {
                let id = SpiffeId::parse(id)?;
                let ca = CertificateAuthority::load_dir(&self.ca.path(), None)?;
                let key = WorkloadKey::generate()?;
                let issued = ca.issue(key.key_pair(), &id, &[], Some(Duration::from_secs(3600)))?;
                Some(key.certified(issued.chain)?)
            }
        };
        let cp_id = weft_control_plane::control_plane_id(&self.ca.trust_domain);
        weft_control_plane::client::connect(addr, self.ca.bundle(), cp_id, cert)
            .await
            .context("connect to the control plane")
    }

    pub async fn channel(&self, id: Option<&str>) -> anyhow::Result<Channel> {
        self.channel_to(&self.cp, id).await
    }

    /// A delta discovery client as the workload `default/<sa>` (node id `sa`).
    pub async fn proxy(&self, sa: &str) -> anyhow::Result<DeltaClient> {
        let channel = self.channel(Some(&workload("default", sa))).await?;
        Ok(DeltaClient::open(channel, sa).await?)
    }

    /// A channel to the control plane at `addr` as the default admin identity.
    pub async fn admin_at(&self, addr: &str) -> anyhow::Result<Channel> {
        let id = weft_control_plane::default_admin_id(&self.ca.trust_domain);
        self.channel_at(addr, Some(id.as_str())).await
    }

    /// A channel as the default admin identity (what `weftctl login` mints).
    pub async fn admin(&self) -> anyhow::Result<Channel> {
        let id = weft_control_plane::default_admin_id(&self.ca.trust_domain);
        self.channel(Some(id.as_str())).await
    }
}

/// The workload identity `spiffe://mesh.test/ns/<ns>/sa/<sa>`.
pub fn workload(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// A delta discovery stream driven by hand, as a proxy would.
#[derive(Debug)]
pub struct DeltaClient {
    node: String,
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn open(channel: Channel, node: &str) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryClient::new(channel);
        let rx = client
            .delta_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The node goes on the first request, which the caller sends with `subscribe`.
        Ok(Self {
            node: node.to_owned(),
            tx,
            rx,
        })
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) -> anyhow::Result<()> {
        self.tx.send(req).await.context("the stream is closed")
    }

    pub async fn subscribe(&self, type_url: &str, names: &[&str]) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: self.node.clone(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
    }

    /// The next response, within 10 s.
    pub async fn recv(&mut self) -> anyhow::Result<DeltaDiscoveryResponse> {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => anyhow::bail!("the server ended the stream"),
            Ok(Err(s)) => Err(anyhow::Error::new(s)),
            Err(_) => anyhow::bail!("no response within 10 s"),
        }
    }

    /// Whether a response arrives within `wait` (for asserting silence; keep `wait` short).
    pub async fn quiet_for(&mut self, wait: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(r) => anyhow::bail!("expected no response, got {r:?}"),
        }
    }

    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    pub async fn nack(&self, resp: &DeltaDiscoveryResponse, why: &str) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(Status {
                code: 3,
                message: why.into(),
            }),
            ..Default::default()
        })
        .await
    }

    /// The error the server ended the stream with.
    pub async fn status(&mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Err(s)) => s,
            other => tonic::Status::unknown(format!("expected an error status, got {other:?}")),
        }
    }
}
