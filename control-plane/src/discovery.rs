//! Delta discovery: `weft.discovery.v1.AggregatedDiscovery/DeltaResources`, the incremental-xDS
//! transport over the registry's published [`Snapshot`]s.
//!
//! Each stream is one task holding, per resource type, what the client subscribed to and which
//! version of each resource it holds. It wakes on a request or a new snapshot and sends only the
//! difference. Snapshots come through a `watch` channel: a slow client skips intermediate
//! snapshots and gets the latest state, and nothing queues without bound. When a client is
//! exactly one generation behind, only the snapshot's `changed` set is examined, so a change
//! costs each stream O(changed), not O(resources).
//!
//! NACK handling: a sent version is recorded as held whether or not the client accepts it, so a
//! rejected version is never resent; the client keeps its last good one and the next change to
//! the resource is pushed as usual.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use weft_proto::discovery::v1::aggregated_discovery_server::AggregatedDiscovery;
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use crate::metrics::{Metrics, TypeLabels};
use crate::registry::{Published, ResourceType, Snapshot};
use crate::transport::PeerInfo;

/// Responses queued per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 4;

#[derive(Debug, Clone)]
pub struct DiscoveryService {
    snapshots: watch::Receiver<Arc<Published>>,
    metrics: Arc<Metrics>,
}

impl DiscoveryService {
    pub fn new(snapshots: watch::Receiver<Arc<Published>>, metrics: Arc<Metrics>) -> Self {
        Self { snapshots, metrics }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscovery for DiscoveryService {
    type DeltaResourcesStream = ResponseStream;

    async fn delta_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaResourcesStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let Some((remote, identity)) = peer.and_then(|p| {
            let id = p.spiffe_id()?.to_string();
            Some((p.remote_addr, id))
        }) else {
            return Err(Status::unauthenticated(
                "delta discovery needs a client certificate (an X509-SVID)",
            ));
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = DeltaStream {
            identity: identity.clone(),
            types: HashMap::new(),
            nonce: 0,
            pending: HashMap::new(),
            tx,
            metrics: self.metrics.clone(),
        };
        let span = info_span!("discovery", %remote, %identity);
        tokio::spawn(
            stream
                .run(request.into_inner(), self.snapshots.clone())
                .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What one client holds of one resource type.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → the version last sent (or reported held at reconnect).
    held: HashMap<String, String>,
    /// Explicitly subscribed names the client must be told do not exist.
    announce_absent: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct DeltaStream {
    identity: String,
    types: HashMap<ResourceType, Subscription>,
    nonce: u64,
    /// nonce → (type, when sent), until the ACK or NACK.
    pending: HashMap<String, (ResourceType, Instant)>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    metrics: Arc<Metrics>,
}

/// Why a stream ended (for the log).
enum End {
    ClientClosed,
    ReceiverGone,
    Refused(Status),
    Transport(Status),
}

impl DeltaStream {
    async fn run(
        mut self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        mut snapshots: watch::Receiver<Arc<Published>>,
    ) {
        self.metrics.discovery_connected.inc();
        // Before the registry's first listing the index is empty; answering from it would tell
        // proxies that everything they hold was removed.
        let mut current = match snapshots.wait_for(|p| p.synced).await {
            Ok(p) => p.clone(),
            Err(_) => {
                self.metrics.discovery_connected.dec();
                return;
            }
        };
        let mut node_id = String::new();
        let end = loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if node_id.is_empty() {
                            if let Some(node) = &req.node {
                                if !node.identity.is_empty() && node.identity != self.identity {
                                    break End::Refused(Status::invalid_argument(format!(
                                        "node.identity {} contradicts the client certificate's {}",
                                        node.identity, self.identity
                                    )));
                                }
                                node_id = node.id.clone();
                                info!(node = %node_id, "proxy connected");
                            }
                        }
                        match self.on_request(req, &current.snapshot).await {
                            Ok(()) => {}
                            Err(end) => break end,
                        }
                    }
                    Ok(None) => break End::ClientClosed,
                    Err(status) => break End::Transport(status),
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break End::Refused(Status::unavailable("control plane shutting down"));
                    }
                    let next = snapshots.borrow_and_update().clone();
                    let fast = next.snapshot.generation == current.snapshot.generation + 1;
                    current = next;
                    if let Err(end) = self.push_all(&current, fast).await {
                        break end;
                    }
                }
                () = self.tx.closed() => break End::ReceiverGone,
            }
        };
        self.metrics.discovery_connected.dec();
        match end {
            End::ClientClosed | End::ReceiverGone => info!(node = %node_id, "proxy disconnected"),
            End::Transport(s) => info!(node = %node_id, error = %s.message(), "stream broken"),
            End::Refused(s) => {
                warn!(node = %node_id, code = ?s.code(), error = %s.message(), "stream refused");
                let _ = self.tx.send(Err(s)).await;
            }
        }
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> Result<(), End> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            return Err(End::Refused(Status::invalid_argument(format!(
                "unknown type_url {:?}; known: {}",
                req.type_url,
                ResourceType::ALL.map(ResourceType::type_url).join(", ")
            ))));
        };
        let labels = TypeLabels {
            r#type: ty.as_str(),
        };
        if !req.response_nonce.is_empty() {
            let sent = self.pending.remove(&req.response_nonce);
            match &req.error_detail {
                Some(err) => {
                    self.metrics.discovery_nacks.get_or_create(&labels).inc();
                    warn!(
                        r#type = ty.as_str(),
                        nonce = %req.response_nonce,
                        error = %err.message,
                        "proxy rejected a response (NACK); it keeps its previous version"
                    );
                }
                None => {
                    self.metrics.discovery_acks.get_or_create(&labels).inc();
                    if let Some((_, at)) = sent {
                        debug!(r#type = ty.as_str(), after = ?at.elapsed(), "ACK");
                    }
                }
            }
        }

        let first = !self.types.contains_key(&ty);
        let sub = self.types.entry(ty).or_default();
        if first {
            // Legacy wildcard: a first request that names nothing subscribes to everything.
            sub.wildcard = req.resource_names_subscribe.is_empty();
            sub.held = req.initial_resource_versions.into_iter().collect();
        }
        let changed_subscription = first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty();
        for name in req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else if sub.names.insert(name.clone()) {
                sub.announce_absent.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
                sub.announce_absent.remove(&name);
            }
        }
        if !sub.wildcard {
            // Forget what the client no longer wants; it drops those itself.
            let names = &sub.names;
            sub.held.retain(|n, _| names.contains(n));
        }
        if changed_subscription {
            self.push(ty, snap, None, None).await?;
        }
        Ok(())
    }

    async fn push_all(&mut self, published: &Published, fast: bool) -> Result<(), End> {
        for ty in ResourceType::ALL {
            if self.types.contains_key(&ty) {
                let changed = fast.then_some(&*published.snapshot.changed);
                self.push(ty, &published.snapshot, changed, published.observed_at)
                    .await?;
            }
        }
        Ok(())
    }

    /// Sends what the client lacks of `ty`: everything (re)computed when `changed` is `None`,
    /// else only among the names in `changed`.
    async fn push(
        &mut self,
        ty: ResourceType,
        snap: &Snapshot,
        changed: Option<&BTreeSet<(ResourceType, String)>>,
        observed_at: Option<Instant>,
    ) -> Result<(), End> {
        let Some(sub) = self.types.get_mut(&ty) else {
            return Ok(());
        };
        let resources = snap.resources(ty);
        let candidates: BTreeSet<String> = match changed {
            Some(changed) => changed
                .iter()
                .filter(|(t, _)| *t == ty)
                .map(|(_, n)| n.clone())
                .chain(std::mem::take(&mut sub.announce_absent))
                .collect(),
            None => {
                let listed: Box<dyn Iterator<Item = &String>> = if sub.wildcard {
                    Box::new(resources.keys())
                } else {
                    Box::new(sub.names.iter())
                };
                listed
                    .chain(sub.held.keys())
                    .cloned()
                    .chain(std::mem::take(&mut sub.announce_absent))
                    .collect()
            }
        };
        let mut out = Vec::new();
        let mut removed = Vec::new();
        for name in candidates {
            match resources.get(&name).filter(|_| sub.wants(&name)) {
                Some(r) => {
                    if sub.held.get(&name) != Some(&r.version) {
                        sub.held.insert(name, r.version.clone());
                        out.push(Resource {
                            name: r.name.clone(),
                            version: r.version.clone(),
                            resource: Some(r.body.clone()),
                        });
                    }
                }
                None => {
                    let held = sub.held.remove(&name).is_some();
                    // Tell the client: it held the resource, or asked for it by name.
                    if held || sub.names.contains(&name) {
                        removed.push(name);
                    }
                }
            }
        }
        if out.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        self.pending.insert(nonce.clone(), (ty, Instant::now()));
        if self.pending.len() > 1024 {
            // A client that never answers: forget the oldest instead of growing.
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(n, _)| n.clone())
            {
                self.pending.remove(&oldest);
            }
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: snap.system_version.clone(),
            resources: out,
            type_url: ty.type_url().to_owned(),
            removed_resources: removed,
            nonce,
        };
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| End::ReceiverGone)?;
        self.metrics
            .discovery_pushes
            .get_or_create(&TypeLabels {
                r#type: ty.as_str(),
            })
            .inc();
        if let Some(at) = observed_at {
            self.metrics
                .discovery_push_latency
                .observe(at.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
