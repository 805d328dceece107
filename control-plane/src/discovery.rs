//! Delta discovery: `weft.discovery.v1.AggregatedDiscovery/DeltaResources`, the incremental-xDS
//! transport over the registry's published [`Snapshot`]s.
//!
//! Each stream is a state machine that tonic polls for the next response: it wakes on a request
//! or a new snapshot and queues only the difference. There is no task or channel per stream, and
//! a stream computes nothing while its client is not reading: snapshots come through a `watch`
//! channel, so a slow client skips intermediate snapshots and gets the latest state, and nothing
//! queues without bound. When a client is exactly one generation behind, only the snapshot's
//! `changed` set is examined, so a change costs each stream O(changed), not O(resources).
//!
//! What a client holds is not copied per stream. After every push a client holds exactly the
//! resources it wants from the map of the snapshot last pushed, so a subscription keeps that map
//! (an `Arc` shared with the snapshot and every other stream) plus the few exceptions a request
//! creates until the next push (versions reported at reconnect, names newly subscribed).
//! Responses are split at [`RESPONSE_BYTES`]: tonic keeps a stream's encode buffer at the size of
//! the largest response it sent, for the stream's life.
//!
//! NACK handling: a sent version is recorded as held whether or not the client accepts it, so a
//! rejected version is never resent; the client keeps its last good one and the next change to
//! the resource is pushed as usual.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, debug, info, info_span, warn};
use weft_proto::discovery::v1::aggregated_discovery_server::AggregatedDiscovery;
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use crate::metrics::{Metrics, TypeLabels};
use crate::registry::index::ResourceMap;
use crate::registry::{Published, Resource, ResourceType, Snapshot};
use crate::transport::PeerInfo;

/// Encoded resource bytes per response, past which the rest goes in further responses (a single
/// larger resource still goes whole). Bounds what each stream's encode buffer keeps.
pub const RESPONSE_BYTES: usize = 4 * 1024;

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
        let span = info_span!("discovery", %remote, %identity);
        let stream = DeltaStream::new(
            identity,
            request.into_inner(),
            self.snapshots.clone(),
            self.metrics.clone(),
            span,
        );
        Ok(Response::new(Box::pin(stream.into_responses())))
    }
}

/// What one client holds of one resource type.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The resource map of the snapshot last pushed: the client holds the entries it wants.
    synced: Arc<ResourceMap>,
    /// Until the next push: names whose held version differs from `synced` (`None`: not held).
    exceptions: HashMap<String, Option<String>>,
    /// Explicitly subscribed names the client must be told do not exist.
    announce_absent: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One response to send, as references into a snapshot until tonic asks for it.
struct Outgoing {
    ty: ResourceType,
    system_version: String,
    resources: Vec<Arc<Resource>>,
    removed: Vec<String>,
    /// Set on the last response of a push caused by a store change (push latency).
    observed_at: Option<Instant>,
}

struct DeltaStream {
    identity: String,
    node_id: String,
    span: Span,
    inbound: Streaming<DeltaDiscoveryRequest>,
    snapshots: watch::Receiver<Arc<Published>>,
    /// The snapshot every subscription is up to date with; `None` before the registry's first
    /// listing (answering from an empty index would tell proxies everything was removed).
    current: Option<Arc<Published>>,
    types: Vec<(ResourceType, Subscription)>,
    queue: VecDeque<Outgoing>,
    nonce: u64,
    /// The last nonce sent and when (ACK latency in the debug log).
    last_sent: Option<(u64, Instant)>,
    /// The stream has ended and said why.
    ended: bool,
    metrics: Arc<Metrics>,
}

/// Why a stream ended (for the log).
enum End {
    ClientClosed,
    Refused(Status),
    Transport(Status),
}

impl DeltaStream {
    fn new(
        identity: String,
        inbound: Streaming<DeltaDiscoveryRequest>,
        snapshots: watch::Receiver<Arc<Published>>,
        metrics: Arc<Metrics>,
        span: Span,
    ) -> Self {
        metrics.discovery_connected.inc();
        Self {
            identity,
            node_id: String::new(),
            span,
            inbound,
            snapshots,
            current: None,
            types: Vec::new(),
            queue: VecDeque::new(),
            nonce: 0,
            last_sent: None,
            ended: false,
            metrics,
        }
    }

    fn into_responses(self) -> impl Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send {
        futures_util::stream::unfold(self, |mut stream| async move {
            let span = stream.span.clone();
            let item = stream.next_response().instrument(span).await?;
            Some((item, stream))
        })
    }

    async fn next_response(&mut self) -> Option<Result<DeltaDiscoveryResponse, Status>> {
        loop {
            if let Some(out) = self.queue.pop_front() {
                return Some(Ok(self.send(out)));
            }
            if self.ended {
                return None;
            }
            let Err(end) = self.step().await else {
                continue;
            };
            self.ended = true;
            let node = &self.node_id;
            match end {
                End::ClientClosed => info!(%node, "proxy disconnected"),
                End::Transport(s) => info!(%node, error = %s.message(), "stream broken"),
                End::Refused(s) => {
                    warn!(%node, code = ?s.code(), error = %s.message(), "stream refused");
                    return Some(Err(s));
                }
            }
        }
    }

    /// Waits for one request or snapshot and queues what it calls for.
    async fn step(&mut self) -> Result<(), End> {
        let Some(current) = self.current.clone() else {
            let first = self.snapshots.wait_for(|p| p.synced).await.map_err(|_| shutting_down())?;
            self.current = Some(first.clone());
            return Ok(());
        };
        tokio::select! {
            msg = self.inbound.message() => match msg {
                Ok(Some(req)) => self.on_request(req, &current.snapshot),
                Ok(None) => Err(End::ClientClosed),
                Err(status) => Err(End::Transport(status)),
            },
            changed = self.snapshots.changed() => {
                changed.map_err(|_| shutting_down())?;
                let next = self.snapshots.borrow_and_update().clone();
                let fast = next.snapshot.generation == current.snapshot.generation + 1;
                for i in 0..self.types.len() {
                    let changed = fast.then_some(&*next.snapshot.changed);
                    self.push(i, &next.snapshot, changed, next.observed_at);
                }
                self.current = Some(next);
                Ok(())
            }
        }
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> Result<(), End> {
        if self.node_id.is_empty()
            && let Some(node) = &req.node
        {
            if !node.identity.is_empty() && node.identity != self.identity {
                return Err(End::Refused(Status::invalid_argument(format!(
                    "node.identity {} contradicts the client certificate's {}",
                    node.identity, self.identity
                ))));
            }
            self.node_id = node.id.clone();
            info!(node = %self.node_id, "proxy connected");
        }
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
                    if let Some((nonce, at)) = self.last_sent
                        && req.response_nonce == nonce.to_string()
                    {
                        debug!(r#type = ty.as_str(), after = ?at.elapsed(), "ACK");
                    }
                }
            }
        }

        let index = match self.types.iter().position(|(t, _)| *t == ty) {
            Some(i) => i,
            None => {
                // Legacy wildcard: a first request that names nothing subscribes to everything.
                let sub = Subscription {
                    wildcard: req.resource_names_subscribe.is_empty(),
                    exceptions: req
                        .initial_resource_versions
                        .into_iter()
                        .map(|(name, version)| (name, Some(version)))
                        .collect(),
                    ..Subscription::default()
                };
                self.types.push((ty, sub));
                let i = self.types.len() - 1;
                self.subscribe(i, req.resource_names_subscribe, req.resource_names_unsubscribe);
                self.push(i, snap, None, None);
                return Ok(());
            }
        };
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty()
        {
            self.subscribe(index, req.resource_names_subscribe, req.resource_names_unsubscribe);
            self.push(index, snap, None, None);
        }
        Ok(())
    }

    /// Applies a request's subscription changes, recording what the client does not hold yet.
    fn subscribe(&mut self, index: usize, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        let sub = &mut self.types[index].1;
        for name in subscribe {
            if name == "*" {
                if !sub.wildcard {
                    for n in sub.synced.keys() {
                        if !sub.names.contains(n) {
                            sub.exceptions.entry(n.clone()).or_insert(None);
                        }
                    }
                }
                sub.wildcard = true;
            } else if sub.names.insert(name.clone()) {
                if !sub.wildcard {
                    sub.exceptions.entry(name.clone()).or_insert(None);
                }
                sub.announce_absent.insert(name);
            }
        }
        // The client drops what it unsubscribes from by itself; nothing to send.
        for name in unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
                sub.announce_absent.remove(&name);
            }
        }
    }

    /// Queues what the client lacks of subscription `index`: among all it may hold when `changed`
    /// is `None`, else only among the names in `changed`. Afterwards the client holds exactly what
    /// it wants of `snap`.
    fn push(
        &mut self,
        index: usize,
        snap: &Snapshot,
        changed: Option<&BTreeSet<(ResourceType, String)>>,
        observed_at: Option<Instant>,
    ) {
        let (ty, sub) = &mut self.types[index];
        let ty = *ty;
        let resources = snap.resources(ty);
        let synced = std::mem::replace(&mut sub.synced, resources.clone());
        let exceptions = std::mem::take(&mut sub.exceptions);
        let absent = std::mem::take(&mut sub.announce_absent);
        let sub = &*sub;
        let held = |name: &str| -> Option<&str> {
            if !sub.wants(name) {
                return None;
            }
            match exceptions.get(name) {
                Some(version) => version.as_deref(),
                None => synced.get(name).map(|r| r.version.as_str()),
            }
        };

        let mut candidates: BTreeSet<&str> = absent
            .iter()
            .chain(exceptions.keys())
            .map(String::as_str)
            .collect();
        match changed {
            Some(changed) => candidates.extend(
                changed
                    .iter()
                    .filter(|(t, _)| *t == ty)
                    .map(|(_, n)| n.as_str()),
            ),
            None if sub.wildcard => {
                candidates.extend(resources.keys().map(String::as_str));
                candidates.extend(synced.keys().map(String::as_str));
            }
            None => candidates.extend(sub.names.iter().map(String::as_str)),
        }

        let mut out = Vec::new();
        let mut removed = Vec::new();
        for name in candidates {
            match resources.get(name).filter(|_| sub.wants(name)) {
                Some(r) if held(name) != Some(r.version.as_str()) => out.push(r.clone()),
                Some(_) => {}
                // Tell the client: it held the resource, or asked for it by name.
                None if held(name).is_some() || sub.names.contains(name) => {
                    removed.push(name.to_owned());
                }
                None => {}
            }
        }
        self.enqueue(ty, &snap.system_version, out, removed, observed_at);
    }

    /// Queues `resources` and `removed` as one or more responses of at most [`RESPONSE_BYTES`].
    fn enqueue(
        &mut self,
        ty: ResourceType,
        system_version: &str,
        resources: Vec<Arc<Resource>>,
        removed: Vec<String>,
        observed_at: Option<Instant>,
    ) {
        if resources.is_empty() && removed.is_empty() {
            return;
        }
        let empty = || Outgoing {
            ty,
            system_version: system_version.to_owned(),
            resources: Vec::new(),
            removed: Vec::new(),
            observed_at: None,
        };
        let mut bytes: usize = removed.iter().map(|n| n.len() + 2).sum();
        let mut chunk = Outgoing {
            removed,
            ..empty()
        };
        for r in resources {
            let len = r.name.len() + r.version.len() + r.body.type_url.len() + r.body.value.len();
            if bytes + len > RESPONSE_BYTES && !chunk.resources.is_empty() {
                self.queue.push_back(std::mem::replace(&mut chunk, empty()));
                bytes = 0;
            }
            bytes += len;
            chunk.resources.push(r);
        }
        chunk.observed_at = observed_at;
        self.queue.push_back(chunk);
    }

    /// Turns a queued response into the message tonic sends now.
    fn send(&mut self, out: Outgoing) -> DeltaDiscoveryResponse {
        self.nonce += 1;
        self.last_sent = Some((self.nonce, Instant::now()));
        self.metrics
            .discovery_pushes
            .get_or_create(&TypeLabels {
                r#type: out.ty.as_str(),
            })
            .inc();
        if let Some(at) = out.observed_at {
            self.metrics
                .discovery_push_latency
                .observe(at.elapsed().as_secs_f64());
        }
        DeltaDiscoveryResponse {
            system_version_info: out.system_version,
            resources: out
                .resources
                .iter()
                .map(|r| weft_proto::discovery::v1::Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                })
                .collect(),
            type_url: out.ty.type_url().to_owned(),
            removed_resources: out.removed,
            nonce: self.nonce.to_string(),
        }
    }
}

impl Drop for DeltaStream {
    fn drop(&mut self) {
        self.metrics.discovery_connected.dec();
        if !self.ended {
            // The connection went away (or the client reset the stream) mid-stream.
            let _entered = self.span.enter();
            info!(node = %self.node_id, "proxy disconnected");
        }
    }
}

fn shutting_down() -> End {
    End::Refused(Status::unavailable("control plane shutting down"))
}
