//! Per-request observation: the spans ([`crate::trace`]) and access log lines
//! ([`crate::access_log`]) of one request, gathered as it goes and given off when its response
//! body ends. `Ctx::observe` is `None` when both are off: a request then pays one branch.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::access_log::{AccessLog, Record};
use crate::body::{Body, BodyError};
use crate::trace::{
    Kind, OpenSpan, Parent, SpanRecord, Tracer, Value, context::TRACEPARENT, error_type,
};

/// What is on: tracing, access logs, or both.
#[derive(Debug)]
pub struct Observe {
    pub tracer: Option<Arc<Tracer>>,
    pub log: Option<AccessLog>,
    /// This proxy's SPIFFE ID (fixed for its life).
    pub own_id: String,
}

/// One observed request, from its arrival to the end of its response.
#[derive(Debug)]
pub struct Exchange {
    pub observe: Arc<Observe>,
    pub direction: &'static str,
    start: Instant,
    wall: SystemTime,
    /// The trace this request belongs to, when it is traced.
    pub trace: Option<Parent>,
    /// Inbound: our SERVER span.
    server_span: Option<OpenSpan>,
    pub method: http::Method,
    pub authority: String,
    pub path: String,
    pub peer: Option<IpAddr>,
    pub client_id: String,
    pub server_id: String,
    pub route: String,
    pub backend: String,
    pub endpoint: String,
    pub attempts: u32,
    pub grpc: bool,
    bytes_in: Arc<AtomicU64>,
}

impl Exchange {
    /// Starts observing a request; `None` when there is nothing to observe (access logs off
    /// and the request not traced: tracing at a low sample rate costs the others only the
    /// `traceparent` lookup). Inbound, a traced request gets its SERVER span here and the
    /// `traceparent` it carries on names that span; outbound, spans are per attempt
    /// (`crate::forward`).
    pub fn begin<B>(
        observe: &Arc<Observe>,
        direction: &'static str,
        req: &mut Request<B>,
        peer: Option<IpAddr>,
    ) -> Option<Box<Self>> {
        let trace = observe
            .tracer
            .as_ref()
            .and_then(|t| t.incoming(req.headers()));
        if trace.is_none() && observe.log.is_none() {
            return None;
        }
        let server_span = match (&trace, direction) {
            (Some(p), "inbound") => {
                let (span, header) = p.child();
                req.headers_mut().insert(TRACEPARENT, header);
                Some(span)
            }
            _ => None,
        };
        Some(Box::new(Self {
            observe: observe.clone(),
            direction,
            start: Instant::now(),
            wall: SystemTime::now(),
            trace,
            server_span,
            method: req.method().clone(),
            authority: String::new(),
            path: req.uri().path().to_owned(),
            peer,
            client_id: String::new(),
            server_id: String::new(),
            route: String::new(),
            backend: String::new(),
            endpoint: String::new(),
            attempts: 0,
            grpc: crate::error::is_grpc(req.headers()),
            bytes_in: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// Counts the request body's bytes as it is sent on.
    pub fn count_request_body(&self, body: Body) -> Body {
        let bytes = self.bytes_in.clone();
        http_body_util::BodyExt::boxed(CountIn { inner: body, bytes })
    }

    /// Hands the response on with a body that ends the observation when it ends (or is
    /// dropped): the access log line and the SERVER span are made then.
    pub fn finish(self: Box<Self>, resp: Response<Body>, error: &'static str) -> Response<Body> {
        let status = resp.status().as_u16();
        let grpc_status = grpc_status(resp.headers());
        let (parts, body) = resp.into_parts();
        let body = Observed {
            inner: body,
            bytes: 0,
            grpc_status,
            end: Some(End {
                exchange: self,
                status,
                error,
            }),
        };
        Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }
}

/// The gRPC status in a header map (response headers, or trailers).
pub fn grpc_status(h: &HeaderMap) -> Option<u16> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `host` and `port` of an authority (`port` 80 when it names none: plain HTTP).
pub fn host_port(authority: &str) -> (&str, i64) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, i64::from(p)),
            Err(_) => (authority, 80),
        },
        _ => (authority, 80),
    }
}

/// The HTTP (and, for gRPC, RPC) attributes both span kinds share.
pub fn http_attributes(
    method: &http::Method,
    authority: &str,
    path: &str,
    status: Option<u16>,
    grpc: bool,
    grpc_status: Option<u16>,
) -> Vec<(&'static str, Value)> {
    let (host, port) = host_port(authority);
    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(16);
    a.push(("http.request.method", method.as_str().into()));
    a.push(("url.path", path.into()));
    a.push(("url.scheme", "http".into()));
    a.push(("server.address", host.into()));
    a.push(("server.port", port.into()));
    if let Some(s) = status {
        a.push(("http.response.status_code", i64::from(s).into()));
    }
    if grpc {
        a.push(("rpc.system.name", "grpc".into()));
        a.push(("rpc.method", path.trim_start_matches('/').into()));
        if let Some(code) = grpc_status {
            a.push(("rpc.status_code", i64::from(code).into()));
        }
    }
    a
}

struct End {
    exchange: Box<Exchange>,
    status: u16,
    error: &'static str,
}

impl End {
    fn emit(self, bytes_out: u64, grpc_status: Option<u16>) {
        let mut x = self.exchange;
        let o = &x.observe.clone();
        if let (Some(tracer), Some(span)) = (&o.tracer, x.server_span.take()) {
            let mut a = http_attributes(
                &x.method,
                &x.authority,
                &x.path,
                Some(self.status),
                x.grpc,
                grpc_status,
            );
            if let Some(p) = x.peer {
                a.push(("network.peer.address", p.to_string().into()));
            }
            let error = error_type(Kind::Server, self.status, self.error)
                .or_else(|| grpc_error(grpc_status));
            if let Some(e) = &error {
                a.push(("error.type", e.as_str().into()));
            }
            a.push(("weft.client_id", x.client_id.as_str().into()));
            a.push(("weft.server_id", x.server_id.as_str().into()));
            a.push(("weft.endpoint", x.endpoint.as_str().into()));
            if !self.error.is_empty() {
                a.push(("weft.error", self.error.into()));
            }
            let name = format!("{} {}", x.method, x.authority);
            tracer.submit(span.end(Kind::Server, name, a, error));
        }
        if let (Some(tracer), Some(parent), "outbound", 0, false) = (
            &o.tracer,
            x.trace,
            x.direction,
            x.attempts,
            self.error.is_empty(),
        ) {
            // Answered by this proxy before any attempt (no route, no endpoints, overloaded,
            // denied): one CLIENT span says so, or the trace would not show where it ended.
            tracer.submit(unsent_span(&x, parent, self.status, self.error));
        }
        if let Some(log) = &o.log {
            log.log(Record {
                time: crate::access_log::rfc3339(x.wall),
                direction: x.direction,
                protocol: "http",
                client_id: x.client_id,
                server_id: x.server_id,
                peer: x.peer.map(|p| p.to_string()).unwrap_or_default(),
                method: x.method.to_string(),
                authority: x.authority,
                path: x.path,
                status: self.status,
                grpc_status,
                duration_ms: x.start.elapsed().as_secs_f64() * 1000.0,
                bytes_in: x.bytes_in.load(Ordering::Relaxed),
                bytes_out,
                route: x.route,
                backend: x.backend,
                endpoint: x.endpoint,
                attempts: x.attempts,
                error: self.error,
                trace_id: x.trace.map(|t| t.trace_id.to_string()).unwrap_or_default(),
            });
        }
    }
}

/// An opaque TCP connection, for its access log line.
#[derive(Debug, Default)]
pub struct TcpConn {
    pub direction: &'static str,
    pub client_id: String,
    pub server_id: String,
    pub peer: Option<IpAddr>,
    /// The original destination or service authority.
    pub authority: String,
    pub backend: String,
    pub endpoint: String,
}

impl Observe {
    /// Logs a finished opaque connection (access logs on): `moved` is what `tcp::splice`
    /// returned, bytes from and to the client.
    pub fn log_tcp(
        &self,
        conn: TcpConn,
        start: (Instant, SystemTime),
        moved: Option<(u64, u64)>,
        error: &'static str,
    ) {
        let Some(log) = &self.log else { return };
        let (bytes_in, bytes_out) = moved.unwrap_or_default();
        log.log(Record {
            time: crate::access_log::rfc3339(start.1),
            direction: conn.direction,
            protocol: "tcp",
            client_id: conn.client_id,
            server_id: conn.server_id,
            peer: conn.peer.map(|p| p.to_string()).unwrap_or_default(),
            authority: conn.authority,
            duration_ms: start.0.elapsed().as_secs_f64() * 1000.0,
            bytes_in,
            bytes_out,
            backend: conn.backend,
            endpoint: conn.endpoint,
            attempts: 1,
            error,
            ..Record::default()
        });
    }
}

/// The CLIENT span of an outbound request the proxy answered itself before any attempt.
fn unsent_span(x: &Exchange, parent: Parent, status: u16, reason: &'static str) -> SpanRecord {
    let mut a = http_attributes(&x.method, &x.authority, &x.path, Some(status), x.grpc, None);
    a.push(("error.type", reason.into()));
    a.push(("weft.route", x.route.as_str().into()));
    a.push(("weft.backend", x.backend.as_str().into()));
    a.push(("weft.client_id", x.client_id.as_str().into()));
    a.push(("weft.error", reason.into()));
    let target = if x.backend.is_empty() {
        &x.authority
    } else {
        &x.backend
    };
    let span = OpenSpan {
        trace_id: parent.trace_id,
        span_id: crate::trace::SpanId::random(),
        parent: parent.parent,
        flags: parent.flags,
        start: x.wall,
    };
    let name = format!("{} {target}", x.method);
    span.end(Kind::Client, name, a, Some(reason.to_owned()))
}

/// A gRPC status other than OK, as `error.type` (gRPC answers errors with HTTP 200).
pub fn grpc_error(code: Option<u16>) -> Option<String> {
    code.filter(|c| *c != 0).map(|c| format!("grpc-status {c}"))
}

/// A response body that counts its bytes, reads a gRPC status from its trailers, and ends the
/// observation at its end or when dropped (a client that went away).
struct Observed {
    inner: Body,
    bytes: u64,
    grpc_status: Option<u16>,
    end: Option<End>,
}

impl Observed {
    fn done(&mut self) {
        if let Some(end) = self.end.take() {
            end.emit(self.bytes, self.grpc_status);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.done();
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref()
                    && let Some(code) = grpc_status(t)
                {
                    this.grpc_status = Some(code);
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.done(),
            Poll::Pending => {}
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

/// A request body that counts its bytes.
struct CountIn {
    inner: Body,
    bytes: Arc<AtomicU64>,
}

impl HttpBody for CountIn {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(host_port("api.default:8080"), ("api.default", 8080));
        assert_eq!(host_port("api.default"), ("api.default", 80));
        assert_eq!(host_port("[::1]:9"), ("[::1]", 9));
        assert_eq!(host_port("[::1]"), ("[::1]", 80));
        assert_eq!(host_port("x:notaport"), ("x:notaport", 80));
    }
}
