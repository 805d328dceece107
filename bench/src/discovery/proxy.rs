//! One simulated proxy: its own mTLS connection (TCP + TLS + HTTP/2) with one DeltaResources
//! stream, ACKing every response. It decodes only what the bench needs (type, nonce, names and
//! versions; the resource bodies are skipped by the decoder), so that on a 2-core machine the
//! load generator takes as little CPU from the control plane as it can.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use weft_certs::{SpiffeId, Svid, TrustBundle};
use weft_control_plane::client;
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, Node};

const DELTA_RESOURCES: &str = "/weft.discovery.v1.AggregatedDiscovery/DeltaResources";

/// `DeltaDiscoveryResponse` without the resource bodies (the `Any`, field 2 of `Resource`, is
/// an unknown field here and skipped) and without `system_version_info`.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LiteResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteResource {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(string, tag = "3")]
    name: String,
}

/// What one proxy subscribes to.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) type_url: &'static str,
    /// Empty: wildcard.
    pub(crate) names: Vec<String>,
    /// Names the proxy must have heard of (as a resource or as removed) to count as synced.
    pub(crate) expected: usize,
}

/// The resource whose change is being timed.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) type_url: &'static str,
    pub(crate) name: String,
    pub(crate) start: Instant,
    pub(crate) reports: mpsc::Sender<Report>,
}

/// A proxy received a new version of the target and queued its ACK.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) version: String,
    pub(crate) latency: Duration,
}

/// A proxy holds every resource it subscribed to and has ACKed it.
#[derive(Debug)]
pub(crate) struct Synced {
    /// From just before its TCP connect to the ACK of the response that completed its state.
    pub(crate) took: Duration,
}

/// What every proxy shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) addr: String,
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) server_id: SpiffeId,
    /// A handful of identities; proxy `i` uses `svids[i % len]`.
    pub(crate) svids: Vec<Svid>,
    pub(crate) target: RwLock<Option<Arc<Target>>>,
    pub(crate) synced: mpsc::Sender<Synced>,
}

/// Runs proxy `idx` until its stream fails (it never ends on its own). `permit` bounds how many
/// proxies connect and sync at once; it is released once this one is synced.
pub(crate) async fn run(
    idx: usize,
    subs: Vec<Subscription>,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let begin = Instant::now();
    let svid = &shared.svids[idx % shared.svids.len()];
    let channel = client::connect(
        &shared.addr,
        shared.bundle.clone(),
        shared.server_id.clone(),
        Some(svid.certified.clone()),
    )
    .await
    .with_context(|| format!("proxy {idx}: connect"))?;

    // Room for the subscriptions and a few ACKs; the reader waits when it is full.
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(subs.len() + 4);
    for (i, sub) in subs.iter().enumerate() {
        tx.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| Node {
                id: format!("bench-proxy-{idx}"),
                identity: svid.id.to_string(),
                ..Default::default()
            }),
            type_url: sub.type_url.to_owned(),
            resource_names_subscribe: sub.names.clone(),
            ..Default::default()
        })
        .await?;
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .with_context(|| format!("proxy {idx}: channel"))?;
    let mut stream = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(DELTA_RESOURCES),
            tonic_prost::ProstCodec::<DeltaDiscoveryRequest, LiteResponse>::default(),
        )
        .await
        .with_context(|| format!("proxy {idx}: DeltaResources"))?
        .into_inner();

    // Per subscribed type: name -> version ("" once removed).
    let mut held: Vec<HashMap<String, String>> = vec![HashMap::new(); subs.len()];
    let mut permit = Some(permit);
    loop {
        let resp = stream
            .message()
            .await
            .with_context(|| format!("proxy {idx}: stream"))?
            .with_context(|| format!("proxy {idx}: the server ended the stream"))?;
        let Some(t) = subs.iter().position(|s| s.type_url == resp.type_url) else {
            anyhow::bail!("proxy {idx}: response for unsubscribed {}", resp.type_url);
        };
        let target = shared
            .target
            .read()
            .ok()
            .and_then(|g| g.as_ref().filter(|g| g.type_url == resp.type_url).cloned());
        let mut hit = None;
        let versions = &mut held[t];
        for r in resp.resources {
            if target.as_ref().is_some_and(|g| g.name == r.name)
                && versions.get(&r.name) != Some(&r.version)
            {
                hit = Some(r.version.clone());
            }
            versions.insert(r.name, r.version);
        }
        for name in resp.removed_resources {
            versions.insert(name, String::new());
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await
        .with_context(|| format!("proxy {idx}: ACK"))?;

        if let (Some(version), Some(g)) = (hit, target) {
            let latency = g.start.elapsed();
            // Capacity is the number of proxies, so this never waits.
            let _ = g.reports.send(Report { version, latency }).await;
        }
        if permit.is_some() && held.iter().zip(&subs).all(|(h, s)| h.len() >= s.expected) {
            let took = begin.elapsed();
            permit = None;
            let _ = shared.synced.send(Synced { took }).await;
        }
    }
}
