//! Traces of the control plane's own work (`--otlp-endpoint`), on the tracer the proxy uses
//! (`weft_proto::trace`):
//!
//! - [`RpcTraceLayer`]: one tower layer around the tonic router makes a SERVER span per unary
//!   RPC of every Weft service (Certify, Apply, Get, Delete, RegisterExternal, Deregister),
//!   named `{package.Service}/{Method}`. A valid, sampled `traceparent` in the metadata is
//!   continued; otherwise a trace starts at `--trace-sample-rate`. The span ends when the
//!   response body ends, with the gRPC status from the headers (trailers-only) or trailers.
//!   The streams (discovery, registration) and the health service get no RPC span.
//! - Discovery pushes: one PRODUCER span per response sent on a discovery stream
//!   ([`push_span`]; made in `crate::discovery`), ended by the proxy's ACK or NACK.
//! - [`TraceLinks`]: which store revision a traced Apply or Delete committed, so that a push
//!   the change causes is a child of that RPC's span (in this process only).
//!
//! Nothing here runs without `--otlp-endpoint`: the layer then passes requests and responses
//! through untouched, and the services hold no [`Tracing`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use weft_proto::trace::{Kind, OpenSpan, Parent, SpanRecord, Tracer, Value};

use crate::store::Revision;
use crate::transport::PeerInfo;

/// The control plane's tracer and what its spans share.
#[derive(Debug)]
pub struct Tracing {
    pub tracer: Arc<Tracer>,
    pub links: TraceLinks,
}

impl Tracing {
    pub fn new(tracer: Arc<Tracer>) -> Arc<Self> {
        Arc::new(Self {
            tracer,
            links: TraceLinks::default(),
        })
    }
}

/// The span of the RPC being served, in the request's extensions when it is traced: what a
/// handler names as the parent of work it causes.
#[derive(Debug, Clone, Copy)]
pub struct RpcSpan(pub Parent);

/// RPCs that get no SERVER span: the long-lived streams (a span would last as long as the
/// proxy; the discovery stream's pushes are spans of their own) and the health service.
const UNTRACED: &[&str] = &[
    "weft.discovery.v1.AggregatedDiscovery/DeltaResources",
    "weft.registry.v1.Registration/Register",
];
const UNTRACED_SERVICES: &[&str] = &["grpc.health.v1.Health/"];

/// `package.Service/Method` of a gRPC request path (`/package.Service/Method`), if it is one
/// this layer makes a span for.
pub fn traced_method(path: &str) -> Option<&str> {
    let method = path.strip_prefix('/')?;
    let (service, name) = method.split_once('/')?;
    if service.is_empty() || name.is_empty() || name.contains('/') || !service.contains('.') {
        return None;
    }
    if UNTRACED.contains(&method) || UNTRACED_SERVICES.iter().any(|s| method.starts_with(s)) {
        return None;
    }
    Some(method)
}

/// The gRPC status in response headers or trailers: its code and message.
pub fn grpc_status(h: &HeaderMap) -> Option<(i32, String)> {
    tonic::Status::from_header_map(h).map(|s| (s.code() as i32, s.message().to_owned()))
}

/// A finished RPC's span: attributes per the OpenTelemetry RPC conventions, and ERROR for any
/// status but OK (a refused Certify or Apply is what an operator looks for; see
/// docs/observability.md). No status at all (cancelled, or the response cut short) is an error
/// too.
pub fn rpc_span(open: OpenSpan, rpc: &RpcFacts, status: Option<(i32, String)>) -> SpanRecord {
    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(8);
    a.push(("rpc.system.name", "grpc".into()));
    a.push(("rpc.method", rpc.method.as_str().into()));
    if let Some(peer) = rpc.peer {
        a.push(("network.peer.address", peer.ip().to_string().into()));
        a.push(("network.peer.port", i64::from(peer.port()).into()));
    }
    if let Some(id) = &rpc.client_id {
        a.push(("weft.client_id", id.as_str().into()));
    }
    let error = match status {
        Some((0, _)) => None,
        Some((code, message)) => {
            a.push(("rpc.status_code", i64::from(code).into()));
            a.push(("error.type", format!("grpc-status {code}").into()));
            Some(message)
        }
        None => {
            a.push(("error.type", "no-status".into()));
            Some("no gRPC status: the call was cancelled or its response cut short".to_owned())
        }
    };
    if error.is_none() {
        a.push(("rpc.status_code", 0i64.into()));
    }
    open.end(Kind::Server, rpc.method.clone(), a, error)
}

/// What the layer knows of an RPC when it starts.
#[derive(Debug, Clone)]
pub struct RpcFacts {
    /// `package.Service/Method`.
    pub method: String,
    pub peer: Option<SocketAddr>,
    /// The SPIFFE ID of the caller's verified client certificate.
    pub client_id: Option<String>,
}

/// Makes a SERVER span per traced unary RPC (see the module doc). With no tracer, nothing.
#[derive(Debug, Clone)]
pub struct RpcTraceLayer {
    tracer: Option<Arc<Tracer>>,
}

impl RpcTraceLayer {
    pub fn new(tracer: Option<Arc<Tracer>>) -> Self {
        Self { tracer }
    }
}

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;
    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace {
            inner,
            tracer: self.tracer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
    tracer: Option<Arc<Tracer>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for RpcTrace<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = Response<TracedBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let pending = self.tracer.as_ref().and_then(|tracer| {
            let method = traced_method(req.uri().path())?;
            let parent = tracer.incoming(req.headers())?;
            let peer = req.extensions().get::<PeerInfo>();
            let rpc = RpcFacts {
                method: method.to_owned(),
                peer: peer.map(|p| p.remote_addr),
                client_id: peer.and_then(|p| p.spiffe_id()).map(|id| id.to_string()),
            };
            let (open, _) = parent.child();
            req.extensions_mut().insert(RpcSpan(open.as_parent()));
            Some(Box::new(Pending {
                tracer: tracer.clone(),
                open: Some(open),
                rpc,
                status: None,
            }))
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, inner) = resp.into_parts();
            let mut pending = pending;
            if let Some(p) = pending.as_mut() {
                p.status = grpc_status(&parts.headers);
            }
            Ok(Response::from_parts(parts, TracedBody { inner, pending }))
        })
    }
}

/// A traced RPC waiting for its status. Its span is submitted when it drops: at the end of the
/// response body, or earlier if the call is cancelled (then with no status, an error).
#[derive(Debug)]
struct Pending {
    tracer: Arc<Tracer>,
    open: Option<OpenSpan>,
    rpc: RpcFacts,
    status: Option<(i32, String)>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            self.tracer
                .submit(rpc_span(open, &self.rpc, self.status.take()));
        }
    }
}

/// The response body: passed through; a traced RPC's span ends with it (or when it is dropped:
/// a trailers-only answer is never polled).
#[derive(Debug)]
pub struct TracedBody<B> {
    inner: B,
    pending: Option<Box<Pending>>,
}

impl<B> TracedBody<B> {
    /// Ends the span (dropping it submits it).
    fn end(&mut self) {
        self.pending = None;
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TracedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(p) = this.pending.as_mut() {
            match &r {
                Poll::Ready(Some(Ok(f))) => {
                    if let Some(status) = f.trailers_ref().and_then(grpc_status) {
                        p.status = Some(status);
                    }
                    if this.inner.is_end_stream() {
                        this.end();
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.end(),
                Poll::Pending => {}
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Store revisions committed by traced Apply and Delete calls, with their RPC's span: the
/// discovery streams look up the latest one among the revisions a snapshot brings, and make
/// their pushes its children. Bounded (the oldest go first); in memory, so a push by another
/// replica of a change applied here starts its own trace.
#[derive(Debug, Default)]
pub struct TraceLinks {
    recent: Mutex<VecDeque<(Revision, Parent)>>,
}

/// Links kept at most.
const LINKS: usize = 64;

impl TraceLinks {
    pub fn record(&self, revision: Revision, span: Parent) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == LINKS {
            recent.pop_front();
        }
        recent.push_back((revision, span));
    }

    /// The span of the latest traced change in `(after, upto]`.
    pub fn latest_in(&self, after: Revision, upto: Revision) -> Option<Parent> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .filter(|(r, _)| *r > after && *r <= upto)
            .max_by_key(|(r, _)| *r)
            .map(|(_, p)| *p)
    }
}

/// The name of a discovery push span.
pub const PUSH_SPAN: &str = "weft.discovery/push";

/// What a discovery push span says about the response it stands for.
#[derive(Debug, Clone)]
pub struct PushFacts<'a> {
    pub node_id: &'a str,
    pub client_id: &'a str,
    pub peer: SocketAddr,
    /// `service`, `endpoints` or `trust_bundle`.
    pub r#type: &'static str,
    pub nonce: &'a str,
    pub version: &'a str,
    pub resources: usize,
    pub removed: usize,
}

/// How the proxy answered a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAnswer {
    Ack,
    Nack(String),
    /// The stream ended (or too many pushes were outstanding) before an answer.
    None,
}

/// A push's attributes, fixed when it is sent.
pub fn push_attributes(p: &PushFacts<'_>) -> Vec<(&'static str, Value)> {
    vec![
        ("rpc.system.name", "grpc".into()),
        (
            "rpc.method",
            "weft.discovery.v1.AggregatedDiscovery/DeltaResources".into(),
        ),
        ("network.peer.address", p.peer.ip().to_string().into()),
        ("weft.client_id", p.client_id.into()),
        ("weft.node_id", p.node_id.into()),
        ("weft.discovery.type", p.r#type.into()),
        ("weft.discovery.nonce", p.nonce.into()),
        ("weft.discovery.version", p.version.into()),
        ("weft.discovery.resources", (p.resources as i64).into()),
        ("weft.discovery.removed", (p.removed as i64).into()),
    ]
}

/// A push span, ended by the proxy's answer: a NACK makes it an error with the proxy's reason.
pub fn push_span(
    open: OpenSpan,
    mut attributes: Vec<(&'static str, Value)>,
    answer: PushAnswer,
) -> SpanRecord {
    let (word, error) = match answer {
        PushAnswer::Ack => ("ack", None),
        PushAnswer::Nack(why) => ("nack", Some(why)),
        PushAnswer::None => ("none", None),
    };
    attributes.push(("weft.discovery.response", word.into()));
    if error.is_some() {
        attributes.push(("error.type", "nack".into()));
    }
    open.end(Kind::Producer, PUSH_SPAN.to_owned(), attributes, error)
}

#[cfg(test)]
mod tests;
