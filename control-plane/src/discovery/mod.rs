//! Delta discovery: `weft.discovery.v1.AggregatedDiscovery/DeltaResources`, the incremental-xDS
//! transport over the registry's published [`Snapshot`](crate::registry::Snapshot)s.
//!
//! Each stream is a state machine that tonic polls for its next response: it wakes on a request
//! or a new snapshot and queues only the difference ([`subscriptions`]). There is no task or
//! channel per stream, and a stream computes nothing while its client is not reading: snapshots
//! come through a `watch` channel, so a slow client skips intermediate snapshots and gets the
//! latest state, and nothing queues without bound. When a client is exactly one generation
//! behind, only the snapshot's `changed` set is examined, so a change costs each stream
//! O(changed), not O(resources).
//!
//! Traced (`--otlp-endpoint`), each response sent is a PRODUCER span (`weft.discovery/push`,
//! [`crate::rpc_trace::push_span`]) from its sending to the proxy's ACK or NACK (a NACK is an
//! error); a push a traced Apply or Delete caused is a child of that RPC's span, any other
//! starts a trace at `--trace-sample-rate`.
//!
//! NACK handling: a sent version is recorded as held whether or not the client accepts it, so a
//! rejected version is never resent; the client keeps its last good one and the next change to
//! the resource is pushed as usual.

mod subscriptions;

pub use subscriptions::RESPONSE_BYTES;
use subscriptions::{Outgoing, Subscriptions};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, debug, info, info_span, warn};
use weft_proto::discovery::v1::aggregated_discovery_server::AggregatedDiscovery;
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use weft_proto::mesh::v1 as pb;

use crate::metrics::{Metrics, TypeLabels};
use crate::registry::{Published, ResourceType, Snapshot};
use crate::rotation::{self, BundleGuard, CaSource, IssuerGuard};
use crate::rpc_trace::{PushAnswer, PushFacts, Tracing, push_attributes, push_span};
use crate::transport::PeerInfo;
use weft_proto::trace::{OpenSpan, Value};

#[derive(Debug, Clone)]
pub struct DiscoveryService {
    snapshots: watch::Receiver<Arc<Published>>,
    metrics: Arc<Metrics>,
    /// Counts open streams by the CA that issued the client certificate (root rotation).
    issuers: Option<Arc<CaSource>>,
    /// `--otlp-endpoint`: a span per push.
    tracing: Option<Arc<Tracing>>,
}

impl DiscoveryService {
    pub fn new(snapshots: watch::Receiver<Arc<Published>>, metrics: Arc<Metrics>) -> Self {
        Self {
            snapshots,
            metrics,
            issuers: None,
            tracing: None,
        }
    }

    /// Makes a span of each push (see the module doc).
    pub fn traced(mut self, tracing: Arc<Tracing>) -> Self {
        self.tracing = Some(tracing);
        self
    }

    /// Counts each stream under the CA that issued its client certificate while it is open.
    pub fn counting_issuers(mut self, ca: Arc<CaSource>) -> Self {
        self.issuers = Some(ca);
        self
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
        let Some((remote, identity, issuer)) = peer.and_then(|p| {
            let svid = p.svid?;
            Some((p.remote_addr, svid.id.to_string(), svid.issuer_key_id))
        }) else {
            return Err(Status::unauthenticated(
                "delta discovery needs a client certificate (an X509-SVID)",
            ));
        };
        let span = info_span!("discovery", %remote, %identity);
        let issuer = self.issuers.as_ref().map(|ca| ca.connected(issuer));
        let mut stream = DeltaStream::new(
            identity,
            request.into_inner(),
            self.snapshots.clone(),
            self.metrics.clone(),
            span,
        );
        stream.issuer = issuer;
        if let Some(t) = &self.tracing {
            stream.traced = Some(Traced {
                tracing: t.clone(),
                peer: remote,
                pushes: VecDeque::new(),
            });
        }
        Ok(Response::new(Box::pin(stream.into_responses())))
    }
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
    subscriptions: Subscriptions,
    /// The last nonce sent (nonces count up from 1) and when (ACK latency in the debug log).
    last_sent: Option<(u64, Instant)>,
    /// The stream has ended and said why.
    ended: bool,
    metrics: Arc<Metrics>,
    /// This stream in the per-issuer count, until it drops; its CA also counts the stream by
    /// the trust bundle its proxy holds (`weftctl ca rotate switch` waits until every proxy
    /// holds the bundle with both roots).
    issuer: Option<IssuerGuard>,
    /// This stream in that count, once it asked for the trust bundle.
    bundle: Option<BundleGuard>,
    /// Trust bundles sent and not yet answered: (nonce, [`rotation::roots_key`]), oldest first.
    bundle_pushes: VecDeque<(u64, String)>,
    /// `--otlp-endpoint`: the pushes' spans.
    traced: Option<Traced>,
}

/// A traced stream's pushes awaiting the proxy's answer.
struct Traced {
    tracing: Arc<Tracing>,
    peer: SocketAddr,
    /// (nonce, span, its attributes), oldest first.
    pushes: VecDeque<(u64, OpenSpan, Attributes)>,
}

type Attributes = Vec<(&'static str, Value)>;

/// Pushes awaiting an answer at most; past it the oldest ends unanswered.
const OUTSTANDING_PUSHES: usize = 32;

impl Traced {
    /// Ends the span of the push `nonce` with the proxy's answer.
    fn answered(&mut self, nonce: &str, answer: PushAnswer) {
        let Ok(nonce) = nonce.parse::<u64>() else {
            return;
        };
        if let Some(i) = self.pushes.iter().position(|(n, _, _)| *n == nonce)
            && let Some((_, span, a)) = self.pushes.remove(i)
        {
            self.tracing.tracer.submit(push_span(span, a, answer));
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        for (_, span, a) in self.pushes.drain(..) {
            self.tracing
                .tracer
                .submit(push_span(span, a, PushAnswer::None));
        }
    }
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
            subscriptions: Subscriptions::default(),
            last_sent: None,
            ended: false,
            metrics,
            issuer: None,
            bundle: None,
            bundle_pushes: VecDeque::new(),
            traced: None,
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
            if let Some(out) = self.subscriptions.pop() {
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
            let first = self
                .snapshots
                .wait_for(|p| p.synced)
                .await
                .map_err(|_| shutting_down())?;
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
                // A traced Apply or Delete among the changes this snapshot brings.
                let cause = self
                    .traced
                    .as_ref()
                    .and_then(|t| t.tracing.links.latest_in(current.revision, next.revision));
                self.subscriptions
                    .on_snapshot(&next.snapshot, fast, next.observed_at, cause);
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
        if ty == ResourceType::TrustBundle {
            self.follow_bundle(&req, snap);
        }
        if !req.response_nonce.is_empty() {
            if let Some(t) = self.traced.as_mut() {
                let answer = match &req.error_detail {
                    Some(err) => PushAnswer::Nack(err.message.clone()),
                    None => PushAnswer::Ack,
                };
                t.answered(&req.response_nonce, answer);
            }
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
                        && req.response_nonce.parse() == Ok(nonce)
                    {
                        debug!(r#type = ty.as_str(), after = ?at.elapsed(), "ACK");
                    }
                }
            }
        }

        self.subscriptions.on_request(
            ty,
            req.resource_names_subscribe,
            req.resource_names_unsubscribe,
            req.initial_resource_versions,
            snap,
        );
        Ok(())
    }

    /// Keeps this stream's place in the count of proxies by the trust bundle they hold: the
    /// one its proxy acknowledged (a NACK keeps the previous), or, on a reconnect, the one it
    /// says it holds when that is the one served (it is then not sent again).
    fn follow_bundle(&mut self, req: &DeltaDiscoveryRequest, snap: &Snapshot) {
        let Some(issuer) = &self.issuer else {
            return;
        };
        let guard = self
            .bundle
            .get_or_insert_with(|| issuer.source().bundle_follower());
        if let Ok(nonce) = req.response_nonce.parse::<u64>() {
            if req.error_detail.is_none()
                && let Some((_, key)) = self.bundle_pushes.iter().find(|(n, _)| *n == nonce)
            {
                guard.acked(key.clone());
            }
            self.bundle_pushes.retain(|(n, _)| *n > nonce);
        }
        for (name, version) in &req.initial_resource_versions {
            if let Some(r) = snap.trust_bundles.get(name)
                && r.version == *version
                && let Some(key) = bundle_key(&r.body)
            {
                guard.acked(key);
            }
        }
    }

    /// Turns a queued response into the message tonic sends now.
    fn send(&mut self, out: Outgoing) -> DeltaDiscoveryResponse {
        let nonce = self.last_sent.map_or(1, |(n, _)| n + 1);
        self.last_sent = Some((nonce, Instant::now()));
        if out.ty == ResourceType::TrustBundle && self.issuer.is_some() {
            for key in out.resources.iter().filter_map(|r| bundle_key(&r.body)) {
                if self.bundle_pushes.len() == OUTSTANDING_PUSHES {
                    self.bundle_pushes.pop_front();
                }
                self.bundle_pushes.push_back((nonce, key));
            }
        }
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
        if let Some(t) = self.traced.as_mut() {
            let parent = out.cause.or_else(|| t.tracing.tracer.new_trace());
            if let Some(parent) = parent {
                let (span, _) = parent.child();
                let a = push_attributes(&PushFacts {
                    node_id: &self.node_id,
                    client_id: &self.identity,
                    peer: t.peer,
                    r#type: out.ty.as_str(),
                    nonce: &nonce.to_string(),
                    version: &out.system_version,
                    resources: out.resources.len(),
                    removed: out.removed.len(),
                });
                if t.pushes.len() == OUTSTANDING_PUSHES
                    && let Some((_, old, a)) = t.pushes.pop_front()
                {
                    t.tracing.tracer.submit(push_span(old, a, PushAnswer::None));
                }
                t.pushes.push_back((nonce, span, a));
            }
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
            nonce: nonce.to_string(),
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

/// The [`rotation::roots_key`] of an encoded TrustBundle resource.
fn bundle_key(body: &prost_types::Any) -> Option<String> {
    let bundle = <pb::TrustBundle as prost::Message>::decode(body.value.as_slice()).ok()?;
    Some(rotation::roots_key(&bundle.roots))
}

fn shutting_down() -> End {
    End::Refused(Status::unavailable("control plane shutting down"))
}
