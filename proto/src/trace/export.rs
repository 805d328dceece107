//! The OTLP span exporter: a task on a thread and runtime of its own (so a slow or
//! unreachable collector never takes time from the data path's or the RPCs' runtime), started
//! only when `--otlp-endpoint` is given. It takes finished spans from a bounded queue, sends them in
//! batches (up to [`BATCH`] spans, once a second, or as soon as a batch is waiting).
//!
//! A batch the collector could not take for now (OTLP's retryable answers: gRPC `UNAVAILABLE`,
//! `DEADLINE_EXCEEDED` and the like, `RESOURCE_EXHAUSTED` with a `RetryInfo`; HTTP 429, 502,
//! 503, 504; no connection; no answer within [`EXPORT_TIMEOUT`]) is sent again after a backoff
//! (1 s doubling to 8 s, ±20 %, or the collector's `Retry-After` / `RetryInfo`), for up to
//! [`GIVE_UP_AFTER`]; any other refusal drops it at once. Each failed attempt counts in
//! `span_export_failures_total`, each span given up in
//! `spans_dropped_total{reason="export-failed"}`. While a batch waits, new spans wait in the
//! queue (and beyond its size are dropped, `reason="queue-full"`): a collector that restarts
//! loses nothing, one that is down for long costs a bounded amount of memory.
//!
//! Two transports (`--otlp-protocol`): OTLP/gRPC (`TraceService/Export` on tonic, the default)
//! and OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `application/x-protobuf`, over one
//! HTTP/1.1 connection kept open between batches): the same message either way.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use super::{
    EXPORT_FAILED, ExporterLink, Kind, Protocol, QUEUE_FULL, SpanRecord, TraceConfig, TraceMetrics,
    Tracer, Value,
};
use crate::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use crate::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use crate::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};

/// Spans the queue holds before it drops new ones.
pub const QUEUE: usize = 2048;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// How often the exporter empties the queue when no full batch wakes it sooner.
const FLUSH: Duration = Duration::from_secs(1);
/// An export the collector has not answered by then has failed (and may be retried).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before a batch's first retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A batch still not taken this long after its first attempt is dropped.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--otlp-endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("--otlp-ca {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("start the exporter thread: {0}")]
    Thread(std::io::Error),
}

/// Checks the configuration, starts the exporter thread and returns the tracer that feeds it.
/// `scope` names the binary: the spans' instrumentation scope and `telemetry.sdk.name`. The
/// thread ends when every sender (the tracer) is gone.
pub fn start(
    config: &TraceConfig,
    scope: &'static str,
    metrics: &TraceMetrics,
) -> Result<Arc<Tracer>, ExportError> {
    let bad = |reason: String| ExportError::Endpoint {
        endpoint: config.endpoint.clone(),
        reason,
    };
    let uri: Uri = config.endpoint.parse().map_err(|e| bad(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(tls_config(config)?),
        _ => return Err(bad("the scheme must be http:// or https://".into())),
    };
    if uri.host().is_none() {
        return Err(bad("no host".into()));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // It would be sent in the clear (a Host header, OTLP/HTTP) and logged.
        return Err(bad("credentials in the URL are not supported".into()));
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let batch_ready = Arc::new(Notify::new());
    let (handled, handled_rx) = watch::channel(0);
    let link = ExporterLink {
        batch_ready: batch_ready.clone(),
        handled: handled_rx,
    };
    let exporter = Exporter {
        rx,
        resource: resource(&config.service_name, scope),
        scope,
        exported: metrics.exported.clone(),
        failures: metrics.export_failures.clone(),
        given_up: metrics.dropped(EXPORT_FAILED),
        handled,
        endpoint: config.endpoint.clone(),
        warned: None,
    };
    let target = config.endpoint.clone();
    let protocol = config.protocol;
    let uri = match protocol {
        Protocol::Grpc => uri,
        Protocol::HttpProtobuf => http_traces_uri(uri).map_err(bad)?,
    };
    std::thread::Builder::new()
        .name("weft-otlp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "no runtime for the span exporter"),
            };
            rt.block_on(async move {
                // Lazy: the first batch connects; an absent collector costs nothing before.
                let transport = match protocol {
                    Protocol::Grpc => {
                        let endpoint = Endpoint::from(uri)
                            .connect_timeout(Duration::from_secs(5))
                            .timeout(EXPORT_TIMEOUT)
                            .tcp_nodelay(true);
                        Transport::Grpc(TraceServiceClient::new(match tls {
                            None => endpoint.connect_lazy(),
                            Some(tls) => endpoint.connect_with_connector_lazy(tls_connector(tls)),
                        }))
                    }
                    Protocol::HttpProtobuf => Transport::Http(HttpSender {
                        uri,
                        tls,
                        conn: None,
                    }),
                };
                info!(endpoint = %target, protocol = protocol.name(), "exporting spans over OTLP");
                exporter.run(transport, batch_ready).await;
            });
        })
        .map_err(ExportError::Thread)?;
    Ok(Arc::new(
        Tracer::new(config.sample_rate, tx, metrics.dropped(QUEUE_FULL)).exported_by(link),
    ))
}

fn tls_config(config: &TraceConfig) -> Result<Arc<rustls::ClientConfig>, ExportError> {
    let Some(path) = &config.ca else {
        return Err(ExportError::Ca {
            path: String::new(),
            reason: "an https:// endpoint needs --otlp-ca (the PEM roots to verify it with)".into(),
        });
    };
    let ca = |reason: String| ExportError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls_pki_types::CertificateDer<'static> =
            cert.map_err(|e| ca(e.to_string()))?;
        roots.add(cert).map_err(|e| ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca("no certificates in the file".into()));
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(weft_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = match config.protocol {
        Protocol::Grpc => vec![b"h2".to_vec()],
        Protocol::HttpProtobuf => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(tls))
}

type TlsConnector = tower::util::BoxService<
    Uri,
    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    std::io::Error,
>;

fn tls_connector(tls: Arc<rustls::ClientConfig>) -> TlsConnector {
    tower::util::BoxService::new(tower::service_fn(move |uri: Uri| {
        crate::client::tls_connect(tls.clone(), uri)
    }))
}

struct Exporter {
    rx: mpsc::Receiver<SpanRecord>,
    resource: Resource,
    scope: &'static str,
    exported: Counter,
    failures: Counter,
    /// Spans whose batch was refused for good or not taken within the retries.
    given_up: Counter,
    /// Spans taken from the queue and dealt with so far ([`Tracer::flush`] waits on it).
    handled: watch::Sender<u64>,
    /// The collector, for the log.
    endpoint: String,
    /// When a failure was last logged as a warning ([`WARN_EVERY`]).
    warned: Option<tokio::time::Instant>,
}

/// Export failures are logged as a warning at most this often (each one at debug).
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Exporter {
    /// Every [`FLUSH`], or sooner when the tracer says a batch is waiting, sends what the queue
    /// holds in batches of up to [`BATCH`]. The task sleeps between: it is not woken per span
    /// (a wake-up per span was a context switch per span on the data path's CPUs). Ends, after
    /// sending what is left, when every sender is gone.
    async fn run(mut self, mut transport: Transport, batch_ready: Arc<Notify>) {
        let mut batch: Vec<SpanRecord> = Vec::new();
        loop {
            let _ = tokio::time::timeout(FLUSH, batch_ready.notified()).await;
            // Everything queued now, a batch at a time.
            loop {
                let closed = self.fill(&mut batch);
                let full = batch.len() == BATCH;
                if !batch.is_empty() {
                    self.send(&mut transport, &mut batch).await;
                }
                if closed {
                    return;
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Moves queued spans into `batch` until it is full or the queue empty; true when the
    /// queue is empty for good (every sender gone).
    fn fill(&mut self, batch: &mut Vec<SpanRecord>) -> bool {
        while batch.len() < BATCH {
            match self.rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Sends one batch (emptying it), again after a backoff while the collector's answer says
    /// it may take it later, for up to [`GIVE_UP_AFTER`]; then, or on any other failure, drops
    /// it. Every failed attempt is counted.
    async fn send(&mut self, transport: &mut Transport, batch: &mut Vec<SpanRecord>) {
        let n = batch.len() as u64;
        let request = self.request(std::mem::take(batch));
        let first = tokio::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failure = match tokio::time::timeout(EXPORT_TIMEOUT, transport.export(&request))
                .await
            {
                Ok(Ok(partial)) => {
                    // OTLP's partial success: the collector took the request but not every
                    // span (and they are not to be sent again).
                    let rejected = partial
                        .as_ref()
                        .map_or(0, |p| p.rejected_spans.max(0) as u64);
                    if let Some(p) =
                        partial.filter(|p| p.rejected_spans > 0 || !p.error_message.is_empty())
                    {
                        debug!(rejected = p.rejected_spans, message = %p.error_message, "the collector rejected spans");
                    }
                    self.exported.inc_by(n.saturating_sub(rejected));
                    break;
                }
                Ok(Err(failure)) => failure,
                Err(_) => Failure::retry(format!("no answer within {EXPORT_TIMEOUT:?}"), None),
            };
            self.failures.inc();
            let wait = next_wait(failure.after, backoff);
            let give_up = !failure.retryable || first.elapsed() + wait > GIVE_UP_AFTER;
            self.warn(&failure, !give_up);
            if give_up {
                self.given_up.inc_by(n);
                debug!(error = %failure.message, spans = n, retryable = failure.retryable, "span export failed; dropped");
                break;
            }
            debug!(error = %failure.message, spans = n, ?wait, "span export failed; sending again");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // Dealt with, either way.
        self.handled.send_modify(|h| *h += n);
    }

    /// A failure, as a warning if none was logged in the last [`WARN_EVERY`]: an operator
    /// reading the log learns that traces are incomplete, and why, without a line per batch.
    fn warn(&mut self, failure: &Failure, sent_again: bool) {
        let now = tokio::time::Instant::now();
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        self.warned = Some(now);
        warn!(
            endpoint = %self.endpoint,
            // Debug-quoted: the collector's answer is not ours to print raw.
            error = ?failure.message,
            sent_again,
            "span export failing (span_export_failures_total, spans_dropped_total count it; this is logged at most once a minute)"
        );
    }

    fn request(&self, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: self.scope.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_otlp).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// Where a batch goes: a tonic client, or an HTTP/1.1 connection.
enum Transport {
    Grpc(TraceServiceClient<Channel>),
    Http(HttpSender),
}

impl Transport {
    /// Sends one request; `Ok` with the collector's partial-success answer (spans it rejected,
    /// and why), if any.
    async fn export(
        &mut self,
        request: &ExportTraceServiceRequest,
    ) -> Result<Option<ExportTracePartialSuccess>, Failure> {
        let response = match self {
            Self::Grpc(client) => client
                .export(request.clone())
                .await
                .map(tonic::Response::into_inner)
                .map_err(grpc_failure)?,
            Self::Http(sender) => {
                let body = sender.send(request.encode_to_vec()).await?;
                // A 2xx body that is not the message is still a 2xx: the spans were taken.
                ExportTraceServiceResponse::decode(body).unwrap_or_default()
            }
        };
        Ok(response.partial_success)
    }
}

/// Why an export failed, and whether OTLP says to send it again (and when).
#[derive(Debug, PartialEq)]
struct Failure {
    message: String,
    retryable: bool,
    /// The collector's own wait (`Retry-After`, `RetryInfo`), if it gave one.
    after: Option<Duration>,
}

impl Failure {
    fn retry(message: String, after: Option<Duration>) -> Self {
        Self {
            message,
            retryable: true,
            after,
        }
    }

    fn fatal(message: String) -> Self {
        Self {
            message,
            retryable: false,
            after: None,
        }
    }
}

/// The wait before the next attempt: the collector's when it asks for longer than the backoff
/// (so a `Retry-After: 0` is no hot loop), capped at [`GIVE_UP_AFTER`] (so no answer can
/// overflow the arithmetic: a longer wait gives up).
fn next_wait(asked: Option<Duration>, backoff: Duration) -> Duration {
    asked
        .map_or(Duration::ZERO, |a| a.min(GIVE_UP_AFTER))
        .max(jitter(backoff))
}

/// A backoff of `d` ± 20 %, so that proxies that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// OTLP/gRPC's rule: these codes are transient; `RESOURCE_EXHAUSTED` only when the collector
/// says when to come back (a `RetryInfo` in the status details); the rest are final.
fn grpc_failure(status: tonic::Status) -> Failure {
    use tonic::Code;
    let after = retry_info(status.details());
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => after.is_some(),
        _ => false,
    };
    Failure {
        message: status.to_string(),
        retryable,
        after,
    }
}

/// `google.rpc.Status`, as a gRPC status's details carry it (`grpc-status-details-bin`).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`: how long the server asks the client to wait.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The wait a gRPC status's `RetryInfo` asks for, if it has one.
fn retry_info(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|a| a.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        u64::try_from(delay.seconds).ok()?,
        u32::try_from(delay.nanos).ok()?,
    ))
}

/// OTLP/HTTP's rule: 429, 502, 503 and 504 are transient (with the wait `Retry-After` asks
/// for, if any); any other status is final.
fn http_failure(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Failure {
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
    let message = format!("the collector answered {status}: {}", text.trim());
    if is_transient(status) {
        let after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        Failure::retry(message, after)
    } else {
        Failure::fatal(message)
    }
}

fn is_transient(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// `Retry-After`'s wait (RFC 9110 §10.2.3): seconds, or an HTTP date (a date past is no wait).
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        }
    }
}

/// The OTLP/HTTP URL: an endpoint with no path (or `/`) gets the signal's path, `/v1/traces`
/// (as `OTEL_EXPORTER_OTLP_ENDPOINT` does); one with a path is used as it is (as
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is).
fn http_traces_uri(uri: Uri) -> Result<Uri, String> {
    if !matches!(uri.path(), "" | "/") {
        return Ok(uri);
    }
    let path = match uri.query() {
        Some(q) => format!("/v1/traces?{q}"),
        None => "/v1/traces".to_owned(),
    };
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(
        path.parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?,
    );
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// The most of a collector's response body read (its `ExportTraceServiceResponse`, or an
/// error's text).
const RESPONSE_LIMIT: usize = 64 * 1024;

/// OTLP/HTTP over one HTTP/1.1 connection, made when a batch needs it and kept while it lasts.
struct HttpSender {
    /// The full URL: scheme, authority and path.
    uri: Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl HttpSender {
    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let failed = |e: &dyn std::fmt::Display| format!("connect to {}: {e}", self.uri);
        let connecting = async {
            match &self.tls {
                Some(tls) => {
                    let io = crate::client::tls_connect(tls.clone(), self.uri.clone())
                        .await
                        .map_err(|e| failed(&e))?;
                    http1_handshake(io).await.map_err(|e| failed(&e))
                }
                None => {
                    let (tcp, _) = crate::client::tcp_connect(&self.uri, 80)
                        .await
                        .map_err(|e| failed(&e))?;
                    http1_handshake(TokioIo::new(tcp))
                        .await
                        .map_err(|e| failed(&e))
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| failed(&"timed out"))?
    }

    /// POSTs one encoded `ExportTraceServiceRequest`; any status but 2xx is a failure
    /// ([`http_failure`] says which may be sent again later). A kept connection the collector
    /// closed before the request went out (an idle keep-alive timing out) is remade at once.
    async fn send(&mut self, body: Vec<u8>) -> Result<Bytes, Failure> {
        let body = Bytes::from(body);
        let reused = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        match self.post(body.clone()).await {
            Err(Post::NotSent(_)) if reused => self.post(body).await.map_err(Post::into_failure),
            result => result.map_err(Post::into_failure),
        }
    }

    async fn post(&mut self, body: Bytes) -> Result<Bytes, Post> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            // No connection: transient, as far as OTLP is concerned.
            _ => self
                .connect()
                .await
                .map_err(|e| Post::Failed(Failure::retry(e, None)))?,
        };
        conn.ready()
            .await
            .map_err(|e| Post::NotSent(e.to_string()))?;
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|e| Post::Failed(Failure::fatal(e.to_string())))?;
        if let Some(authority) = self.uri.authority() {
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|e| Post::Failed(Failure::fatal(e.to_string())))?;
            request.headers_mut().insert(http::header::HOST, host);
        }
        let response = conn.send_request(request).await.map_err(|e| {
            if e.is_canceled() {
                Post::NotSent(e.to_string())
            } else {
                // The connection broke under the request.
                Post::Failed(Failure::retry(e.to_string(), None))
            }
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        // Read to the end, so the connection can carry the next batch.
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map_err(|e| {
                let message = format!(
                    "the collector's {status} response could not be read (over {RESPONSE_LIMIT} bytes, or cut short): {e}"
                );
                // A 2xx was taken, whatever its body; a transient refusal is still one.
                Post::Failed(if is_transient(status) {
                    Failure::retry(message, None)
                } else {
                    Failure::fatal(message)
                })
            })?
            .to_bytes();
        self.conn = Some(conn);
        if status.is_success() {
            Ok(body)
        } else {
            Err(Post::Failed(http_failure(status, &headers, &body)))
        }
    }
}

/// An HTTP/1.1 client connection on `io`, driven by a task of its own.
async fn http1_handshake<I>(
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// Why a POST failed: before the request went out (safe to send again at once), or after.
enum Post {
    NotSent(String),
    Failed(Failure),
}

impl Post {
    fn into_failure(self) -> Failure {
        match self {
            Self::NotSent(m) => Failure::retry(m, None),
            Self::Failed(f) => f,
        }
    }
}

fn resource(service_name: &str, scope: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", Value::Str(service_name.to_owned())),
            kv("telemetry.sdk.name", Value::Str(scope.into())),
        ],
        ..Default::default()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One span as OTLP has it.
pub fn to_otlp(s: SpanRecord) -> Span {
    Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: u32::from(s.flags),
        name: s.name,
        kind: match s.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
            Kind::Producer => span::SpanKind::Producer,
        } as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(match s.error {
            Some(message) => Status {
                message,
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gRPC status with `RetryInfo` (and another detail before it) in its details.
    fn with_retry_info(code: tonic::Code, delay: prost_types::Duration) -> tonic::Status {
        let info = RetryInfo {
            retry_delay: Some(delay),
        };
        let details = RpcStatus {
            code: code as i32,
            message: "busy".into(),
            details: vec![
                prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![1, 2, 3],
                },
                prost_types::Any {
                    type_url: RETRY_INFO_TYPE.into(),
                    value: info.encode_to_vec(),
                },
            ],
        };
        tonic::Status::with_details(code, "busy", details.encode_to_vec().into())
    }

    #[test]
    fn grpc_codes_are_retried_as_otlp_says() {
        use tonic::Code;
        for (code, retryable) in [
            (Code::Cancelled, true),
            (Code::DeadlineExceeded, true),
            (Code::Aborted, true),
            (Code::OutOfRange, true),
            (Code::Unavailable, true),
            (Code::DataLoss, true),
            (Code::ResourceExhausted, false),
            (Code::InvalidArgument, false),
            (Code::Unauthenticated, false),
            (Code::PermissionDenied, false),
            (Code::Unimplemented, false),
            (Code::Internal, false),
            (Code::Unknown, false),
        ] {
            let f = grpc_failure(tonic::Status::new(code, "no"));
            assert_eq!(f.retryable, retryable, "{code:?}");
            assert_eq!(f.after, None, "{code:?}");
        }
        // RESOURCE_EXHAUSTED is retried when the collector says when, and its wait is kept.
        let delay = prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000,
        };
        let f = grpc_failure(with_retry_info(Code::ResourceExhausted, delay));
        assert!(f.retryable);
        assert_eq!(f.after, Some(Duration::from_millis(2500)));
        let f = grpc_failure(with_retry_info(Code::Unavailable, delay));
        assert_eq!(f.after, Some(Duration::from_millis(2500)));
        // A negative delay or details that are not a status: no wait given.
        let bad = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(
            retry_info(with_retry_info(Code::Unavailable, bad).details()),
            None
        );
        assert_eq!(retry_info(b"\xff\xff not a status"), None);
        assert!(!grpc_failure(with_retry_info(Code::InvalidArgument, delay)).retryable);
    }

    #[test]
    fn http_statuses_are_retried_as_otlp_says_with_retry_after() {
        let none = http::HeaderMap::new();
        for (status, retryable) in [
            (429, true),
            (502, true),
            (503, true),
            (504, true),
            (400, false),
            (401, false),
            (404, false),
            (413, false),
            (415, false),
            (500, false),
            (501, false),
        ] {
            let status = http::StatusCode::from_u16(status).unwrap();
            let f = http_failure(status, &none, b" overloaded \n");
            assert_eq!(f.retryable, retryable, "{status}");
            assert_eq!(
                f.message,
                format!("the collector answered {status}: overloaded")
            );
        }
        let after = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            http_failure(http::StatusCode::SERVICE_UNAVAILABLE, &h, b"").after
        };
        assert_eq!(after("3"), Some(Duration::from_secs(3)));
        assert_eq!(after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            after("18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
        // A date in the past: no wait; nonsense: the exporter's own backoff.
        assert_eq!(after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(after("-1"), None);
        assert_eq!(after("soon"), None);
        // A date: the time until it.
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn the_collectors_wait_is_kept_when_longer_and_capped() {
        let second = Duration::from_secs(1);
        assert_eq!(
            next_wait(Some(Duration::from_secs(3)), second),
            Duration::from_secs(3)
        );
        // Asked for no wait: the backoff still applies.
        assert!(next_wait(Some(Duration::ZERO), second) >= Duration::from_millis(800));
        assert!(next_wait(None, second) >= Duration::from_millis(800));
        // Asked for longer than the give-up time: capped, and so given up.
        assert_eq!(next_wait(Some(Duration::MAX), second), GIVE_UP_AFTER);
    }

    #[test]
    fn the_backoff_is_jittered_within_20_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(1));
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
    }

    fn config(endpoint: &str, ca: Option<std::path::PathBuf>) -> TraceConfig {
        TraceConfig {
            endpoint: endpoint.into(),
            ca,
            service_name: "default/web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_http_endpoint_without_a_path_gets_v1_traces() {
        for (endpoint, want) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp/v1/traces", "https://c/otlp/v1/traces"),
            ("http://[::1]:4318", "http://[::1]:4318/v1/traces"),
            (
                "http://c:4318/?tenant=a",
                "http://c:4318/v1/traces?tenant=a",
            ),
        ] {
            let uri = http_traces_uri(endpoint.parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), want, "{endpoint}");
        }
    }

    /// A bad endpoint or CA fails start with a message naming the flag and the problem.
    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let m = TraceMetrics::default();
        for (endpoint, ca, want) in [
            (
                "ftp://collector:4317",
                None,
                "--otlp-endpoint \"ftp://collector:4317\": the scheme must be http:// or https://",
            ),
            ("collector:4317", None, "the scheme must be"),
            (
                "http://user:secret@collector:4318",
                None,
                "credentials in the URL are not supported",
            ),
            (
                "https://collector:4317",
                None,
                "an https:// endpoint needs --otlp-ca",
            ),
            (
                "https://collector:4317",
                Some("/nonexistent/ca.pem".into()),
                "--otlp-ca /nonexistent/ca.pem:",
            ),
        ] {
            let err = start(&config(endpoint, ca), "weft-test", &m)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{endpoint}: {err}");
        }
        let dir = std::env::temp_dir().join(format!("weft-otlp-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let err = start(
            &config("https://collector:4317", Some(dir.clone())),
            "weft-test",
            &m,
        )
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_file(&dir);
        assert!(err.contains("no certificates in the file"), "{err}");
    }

    #[test]
    fn a_span_in_otlp_keeps_ids_kind_times_attributes_and_status() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_000);
        let s = SpanRecord {
            trace_id: super::super::TraceId([1; 16]),
            span_id: super::super::SpanId([2; 8]),
            parent: Some(super::super::SpanId([3; 8])),
            flags: 1,
            kind: Kind::Client,
            name: "GET default/api".into(),
            start,
            end: start + Duration::from_nanos(500),
            attributes: vec![("server.port", Value::Int(80)), ("url.path", "/x".into())],
            error: Some("503".into()),
        };
        let o = to_otlp(s);
        assert_eq!(o.trace_id, vec![1; 16]);
        assert_eq!(o.span_id, vec![2; 8]);
        assert_eq!(o.parent_span_id, vec![3; 8]);
        assert_eq!(o.kind, span::SpanKind::Client as i32);
        assert_eq!(
            (o.start_time_unix_nano, o.end_time_unix_nano),
            (1_000, 1_500)
        );
        assert_eq!(o.attributes.len(), 2);
        assert_eq!(o.attributes[0].key, "server.port");
        let status = o.status.unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "503");
    }

    #[test]
    fn every_kind_has_its_otlp_kind() {
        for (kind, want) in [
            (Kind::Server, span::SpanKind::Server),
            (Kind::Client, span::SpanKind::Client),
            (Kind::Producer, span::SpanKind::Producer),
        ] {
            let s = SpanRecord {
                trace_id: super::super::TraceId([1; 16]),
                span_id: super::super::SpanId([2; 8]),
                parent: None,
                flags: 1,
                kind,
                name: "x".into(),
                start: UNIX_EPOCH,
                end: UNIX_EPOCH,
                attributes: Vec::new(),
                error: None,
            };
            assert_eq!(to_otlp(s).kind, want as i32, "{kind:?}");
        }
    }
}
