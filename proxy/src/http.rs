//! HTTP plumbing shared by both directions: serving a connection (HTTP/1.1 with upgrades or
//! HTTP/2) until it ends or a drain asks it to close, hop-by-hop headers (RFC 9110 §7.6.1),
//! carrying HTTP/1.1 over HTTP/2 between proxies, and passing `Upgrade` exchanges through.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::body::{Body, streamed};
use crate::drain;
use crate::error::ProxyError;
use crate::limits::{self, IdleBody};
use crate::listen::{Ctx, DataPathConfig};
use crate::metrics::{LimitLabels, Metrics, TcpLabels};

mod park;
pub use park::{Counted, PARK_AFTER, Park};

/// Set by the client proxy on a request that arrived as HTTP/1.1 and travels as HTTP/2, so
/// the server proxy gives it to the application as HTTP/1.1 again.
pub const ORIG_PROTO: &str = "weft-orig-proto";
/// The verified SPIFFE ID of the client, set by the server proxy for the application (and
/// removed from whatever the client sent).
pub const CLIENT_ID: &str = "x-weft-client-id";

/// Which HTTP a plaintext or TLS connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    Http1,
    Http2,
}

/// Requests in flight on one connection, when the last one ended (for the idle timeout), and
/// how many its client cancelled lately (for the rapid-reset limit).
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
    /// Requests cancelled by the client before their answer in the current window. Touched
    /// only when a request is cancelled.
    resets: std::sync::Mutex<Resets>,
    max_resets: u32,
    /// Woken when the client has cancelled too many requests (see [`Activity::cancelled`]).
    too_many_resets: tokio::sync::Notify,
    /// Requests answered on this connection (for the rapid-reset limit's share).
    answered: AtomicUsize,
    /// Requests started (counted only where HTTP/1 parks: see `park`).
    requests: AtomicUsize,
    /// Request bodies not yet read to their end and response bodies not yet written (HTTP/1
    /// parking only; see `park::Counted`).
    open_bodies: AtomicUsize,
}

impl Activity {
    fn new(max_resets: u32) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            in_flight: AtomicUsize::new(0),
            last: std::sync::Mutex::new(now),
            resets: std::sync::Mutex::new(Resets {
                since: now,
                count: 0,
                total: 0,
                tripped: false,
            }),
            max_resets,
            too_many_resets: tokio::sync::Notify::new(),
            answered: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            open_bodies: AtomicUsize::new(0),
        }
    }

    /// When the connection will have been idle for `idle`, if it is idle now.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|e| e.into_inner()) + idle)
    }

    /// A request's handler was dropped before it answered: the client reset the stream (or
    /// closed the connection). Past `max_resets` in the window the connection is told to close
    /// once the client has cancelled more requests than it had answered over the connection's
    /// life (Envoy's premature-reset rule), and past [`HARD_LIMIT_FACTOR`] times it in any case.
    /// The share spares a connection from another proxy: it carries many clients' requests and
    /// so more cancels than one client makes (deadlines, closed pages; a burst when a backend
    /// stalls), but rarely half. The hard limit bounds a client that earns its credit with
    /// cheap requests.
    fn cancelled(&self) {
        let now = tokio::time::Instant::now();
        let answered = self.answered.load(Ordering::Relaxed);
        let mut resets = self.resets.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(resets.since) > limits::RESET_WINDOW {
            resets.since = now;
            resets.count = 0;
        }
        resets.count += 1;
        resets.total += 1;
        let over = resets.count > self.max_resets
            && (resets.total > answered
                || resets.count > self.max_resets.saturating_mul(HARD_LIMIT_FACTOR));
        if over && !resets.tripped {
            resets.tripped = true;
            self.too_many_resets.notify_one();
        }
    }
}

/// Past this many times `--h2-max-resets` in a window a connection is closed whatever it
/// answered.
const HARD_LIMIT_FACTOR: u32 = 10;

/// The client's cancels: in the current [`limits::RESET_WINDOW`], and over the connection's
/// life.
#[derive(Debug)]
struct Resets {
    since: tokio::time::Instant,
    count: u32,
    total: usize,
    /// The connection has been told to close.
    tripped: bool,
}

/// One request in flight on a connection; dropping it, answered or not, ends it there.
struct InFlight {
    activity: Arc<Activity>,
    answered: bool,
}

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            activity,
            answered: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        *a.last.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.answered {
            a.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            a.cancelled();
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's handler, counted in and out of its connection's activity. A future of its
    /// own rather than an `async move` block: a block would hold the handler's future twice
    /// (as its captured value and as the value it awaits), doubling what is copied into the
    /// box per request (12.9 instead of 6.5 KB outbound; docs/benchmarks.md).
    struct Tracked<F> {
        #[pin]
        handled: F,
        in_flight: Option<InFlight>,
        // Whether the response body is counted until written (HTTP/1 parking).
        count_body: bool,
    }
}

impl<F: Future<Output = Response<Body>>> Future for Tracked<F> {
    type Output = Result<Response<Counted<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.handled.poll(cx));
        let mut counted = None;
        if let Some(mut in_flight) = this.in_flight.take() {
            in_flight.answered = true;
            if *this.count_body {
                counted = Some(in_flight.activity.clone());
            }
        }
        Poll::Ready(Ok(resp.map(|b| Counted::response(b, counted))))
    }
}

/// Why an HTTP connection ended badly, as `http_connection_errors_total`'s `reason`, or `None`
/// for an ordinary end (the peer closed, a broken pipe).
fn error_reason(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        Some("header-timeout")
    } else if e.is_parse_too_large() {
        Some("header-too-large")
    } else if e.is_parse() {
        Some("malformed")
    } else {
        None
    }
}

/// What [`serve`] needs of the listener it serves for.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub drain: &'a drain::Watch,
    pub settings: &'a DataPathConfig,
    pub metrics: &'a Metrics,
    /// `inbound` or `outbound`, for metrics and logs.
    pub direction: &'static str,
}

impl<'a> Served<'a> {
    pub fn by(ctx: &'a Ctx, direction: &'static str) -> Self {
        Self {
            drain: &ctx.drain,
            settings: &ctx.settings,
            metrics: &ctx.metrics,
            direction,
        }
    }
}

/// Serves HTTP on `io` with `handler` until the connection ends, within the listener's
/// [`Limits`](crate::limits::Limits); on drain, after `--http-idle-timeout` with no request in
/// flight, or when the client cancels too many requests (HTTP/2 rapid reset), finishes
/// in-flight requests and closes (HTTP/2: GOAWAY).
pub async fn serve<IO, F, Fut>(io: IO, http: Http, on: Served<'_>, handler: F)
where
    IO: AsyncRead + AsyncWrite + Park + Unpin + Send + 'static,
    F: Fn(Request<Body>) -> Fut + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let Served {
        drain,
        settings,
        metrics,
        direction,
    } = on;
    let limits = &settings.limits;
    let idle = settings.http_idle_timeout;
    let activity = Arc::new(Activity::new(limits.h2_max_resets_per_conn));
    let seen = activity.clone();
    let parking = activity.clone();
    // HTTP/1 on a plain socket parks between requests: it counts its bodies to know when.
    let count_bodies = http == Http::Http1 && park::parks::<IO>(limits.http1_park_after);
    let body_idle = limits.body_idle_timeout;
    // The handler's future, counted in and out of the connection's activity.
    let track = move |req: Request<Incoming>| {
        // Counted from the moment hyper hands the request over: a stream reset before its
        // handler first runs is a cancelled request too.
        let in_flight = InFlight::start(seen.clone());
        if count_bodies {
            seen.requests.fetch_add(1, Ordering::Relaxed);
        }
        let counted = count_bodies.then_some(&seen);
        Tracked {
            handled: handler(
                req.map(|b| IdleBody::new(Counted::request(b, counted), body_idle).boxed()),
            ),
            in_flight: Some(in_flight),
            count_body: count_bodies,
        }
    };
    // Resolves once the connection has had no request in flight for `idle`, or its client
    // cancelled too many requests.
    let idle_out = async move {
        loop {
            let now = tokio::time::Instant::now();
            let wake = match activity.idle_deadline(idle) {
                Some(at) if at <= now => return "idle",
                Some(at) => at,
                None => now + idle.min(Duration::from_secs(1)),
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = activity.too_many_resets.notified() => return "rapid-reset",
            }
        }
    };
    tokio::pin!(idle_out);
    let closing = |why: &'static str| {
        if why == "rapid-reset" {
            warn!(
                direction,
                max = limits.h2_max_resets_per_conn,
                "client cancelled too many requests (HTTP/2 rapid reset?): closing the connection"
            );
            metrics
                .http_conn_errors
                .get_or_create(&LimitLabels {
                    direction,
                    reason: "rapid-reset",
                })
                .inc();
        } else {
            debug!(?idle, "closing an idle HTTP connection");
        }
    };
    let result = match http {
        Http::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_header_bytes as usize);
            if limits.max_headers != limits::DEFAULT_MAX_HEADERS {
                builder.max_headers(limits.max_headers);
            }
            // Boxed as for HTTP/2: hyper keeps a slot the size of the handler's future for
            // each connection's whole life (~12 KiB of an idle keep-alive connection's memory);
            // boxed, the slot is a pointer and the future lives only while a request does.
            let svc = hyper::service::service_fn(move |req| Box::pin(track(req)));
            let ended = park::serve_h1(
                io,
                &builder,
                svc,
                &parking,
                drain,
                idle_out.as_mut(),
                &closing,
                &|d| {
                    metrics
                        .http_parked
                        .get_or_create(&TcpLabels { direction })
                        .inc_by(d);
                },
                limits.header_read_timeout,
                limits.http1_park_after,
            )
            .await;
            match ended {
                park::H1End::Hyper(r) => r,
                park::H1End::Idle => {
                    debug!(timeout = ?limits.header_read_timeout, "closing an HTTP/1 connection that sent no request within the header timeout");
                    Ok(())
                }
            }
        }
        Http::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .max_concurrent_streams(limits.h2_max_concurrent_streams)
                .max_header_list_size(limits.max_header_bytes);
            // hyper spawns a task per stream and moves the request's future several times
            // on the way; boxed, each move is a pointer's (docs/benchmarks.md).
            let svc = hyper::service::service_fn(move |req| Box::pin(track(req)));
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                why = &mut idle_out => {
                    closing(why);
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection ended with an error");
        if let Some(reason) = error_reason(&e) {
            metrics
                .http_conn_errors
                .get_or_create(&LimitLabels { direction, reason })
                .inc();
        }
    }
}

/// Removes hop-by-hop headers: `Connection` and every header it names, plus the fixed list.
/// `TE: trailers` is kept (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one look at each name instead of a dozen removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if n != header::TE {
            headers.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A header that is only for the hop it arrives on (RFC 9110 §7.6.1), or names others that are
/// (`Connection`).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::TE
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
        || *n == header::PROXY_AUTHORIZATION
        || *n == header::PROXY_AUTHENTICATE
        || n == "keep-alive"
        || n == "proxy-connection"
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with `Upgrade:`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The request's authority: the URI's (absolute-form, HTTP/2), else the `Host` header.
pub fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// Rewrites the URI to `http://authority/path?query`, keeping the path (moved, not parsed
/// again: this runs on every request).
pub fn set_absolute_uri<B>(req: &mut Request<B>, authority: &str) -> Result<(), ProxyError> {
    let bad =
        |e: &dyn std::fmt::Display| ProxyError::BadRequest(format!("authority {authority:?}: {e}"));
    let parsed: http::uri::Authority = authority.parse().map_err(|e| bad(&e))?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(parsed);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|e| bad(&e))?;
    Ok(())
}

/// Rewrites the request for HTTP/1.1 on the wire: the origin-form target (`/path?query`, or
/// `*`) and `authority` in `Host`.
pub fn set_origin_form<B>(req: &mut Request<B>, authority: &str) -> Result<(), ProxyError> {
    let host = HeaderValue::from_str(authority)
        .map_err(|e| ProxyError::BadRequest(format!("authority {authority:?}: {e}")))?;
    let path = std::mem::take(req.uri_mut())
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path);
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
    req.headers_mut().insert(header::HOST, host);
    Ok(())
}

/// Sends an `Upgrade` request over a fresh HTTP/1.1 connection on `io` and, when the server
/// switches protocols, splices the two upgraded connections. Returns the server's response.
pub async fn forward_upgrade<IO>(
    mut req: Request<Body>,
    io: IO,
    metrics: std::sync::Arc<Metrics>,
    direction: &'static str,
    idle: Duration,
) -> Result<Response<Body>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client_side = hyper::upgrade::on(&mut req);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| upstream("handshake", e))?;
    // The connection's own future, mapped (an `async move` block awaiting it would hold it
    // twice for the connection's life).
    tokio::spawn(futures_util::FutureExt::map(conn.with_upgrades(), |r| {
        if let Err(e) = r {
            debug!(error = %e, "upgrade connection ended with an error");
        }
    }));
    // HTTP/1 on the wire: origin-form request target, the authority in Host (one the
    // client sent wins).
    if let Some(authority) = req.uri().authority().cloned() {
        let host = req.headers_mut().remove(header::HOST);
        set_origin_form(&mut req, authority.as_str())?;
        if let Some(host) = host {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| upstream("upgrade request", e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let server_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, server_side) {
                Ok((client, server)) => {
                    let r = crate::tcp::splice(
                        TokioIo::new(client),
                        TokioIo::new(server),
                        idle,
                        &metrics,
                        direction,
                    )
                    .await;
                    debug!(result = ?r, "upgraded connection closed");
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        });
    }
    Ok(resp.map(streamed))
}

fn upstream(what: &str, e: hyper::Error) -> ProxyError {
    ProxyError::Upstream {
        addr: what.to_owned(),
        reason: e.to_string(),
        refused: false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Answers `ok`, after 600 ms for `/slow`. (A named function: a closure returning an
    /// `async` block trips rustc's higher-ranked `Send` check in `tokio::spawn` here.)
    async fn slow_or_ok(req: Request<Body>) -> Response<Body> {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        Response::new(crate::body::full("ok"))
    }

    /// Whether the rapid-reset guard has told the connection to close.
    fn tripped(a: &Activity) -> bool {
        a.resets.lock().unwrap().tripped
    }

    /// Ends `n` requests on `a`, answered or cancelled.
    fn end(a: &Arc<Activity>, n: usize, answered: bool) {
        for _ in 0..n {
            let mut r = InFlight::start(a.clone());
            r.answered = answered;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rapid_reset_guard_counts_cancels_per_window_and_spares_a_mostly_answered_connection()
     {
        // One client cancelling everything: the 11th cancel in the window trips it, once.
        let a = Arc::new(Activity::new(10));
        end(&a, 10, false);
        assert!(!tripped(&a));
        end(&a, 1, false);
        assert!(tripped(&a));
        // A connection carrying other clients' answered requests as well: 30 cancels among 90
        // answered, so it is kept...
        let a = Arc::new(Activity::new(10));
        for _ in 0..30 {
            end(&a, 3, true);
            end(&a, 1, false);
        }
        assert!(!tripped(&a));
        // ...until the cancels outnumber the answered: 90 do not, 91 do.
        end(&a, 60, false);
        assert!(!tripped(&a));
        end(&a, 1, false);
        assert!(tripped(&a));
        // Cancels spread over windows never add up: 10 per window, for ever.
        let a = Arc::new(Activity::new(10));
        for _ in 0..5 {
            end(&a, 10, false);
            tokio::time::advance(limits::RESET_WINDOW + Duration::from_millis(1)).await;
        }
        assert!(!tripped(&a));
        // What the connection answered before counts: a burst of cancels after a long quiet
        // (a backend stall expiring many deadlines at once) is spared...
        let a = Arc::new(Activity::new(10));
        end(&a, 1000, true);
        tokio::time::advance(limits::RESET_WINDOW * 6).await;
        end(&a, 100, false);
        assert!(!tripped(&a));
        // ...up to ten times the limit in one window, whatever it answered.
        end(&a, 1, false);
        assert!(tripped(&a));
        // The hard limit is per window too.
        let a = Arc::new(Activity::new(10));
        end(&a, 10_000, true);
        for _ in 0..3 {
            end(&a, 100, false);
            tokio::time::advance(limits::RESET_WINDOW + Duration::from_millis(1)).await;
        }
        assert!(!tripped(&a));
    }

    #[tokio::test]
    async fn an_idle_http_connection_is_closed_and_a_busy_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let settings = DataPathConfig {
            http_idle_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let (addr, _metrics, _drain) = test_server(settings, slow_or_ok).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A request longer than the idle timeout is not cut off...
        tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        // ...and once idle, the connection is closed by the server (EOF), well before 5 s.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the idle connection stayed open");
    }

    /// The routes of the parking tests: `GET /` answers `ok`, `/second` `second`, `/stream` sends
    /// `a`, pauses past [`PARKS_BY`], then `b`, `/ignore` answers without reading the
    /// request's body, and `/early` answers at once while a task of its own reads the body.
    async fn routes(req: Request<Body>) -> Response<Body> {
        match req.uri().path() {
            "/early" => {
                tokio::spawn(req.into_body().collect());
                Response::new(crate::body::full("early"))
            }
            "/second" => Response::new(crate::body::full("second")),
            "/ignore" => Response::new(crate::body::full("ignored")),
            "/stream" => {
                let frames = futures_util::stream::unfold(0, |n| async move {
                    match n {
                        0 => Some((Ok(hyper::body::Frame::data(bytes::Bytes::from("a"))), 1)),
                        1 => {
                            tokio::time::sleep(PARKS_BY).await;
                            Some((Ok(hyper::body::Frame::data(bytes::Bytes::from("b"))), 2))
                        }
                        _ => None,
                    }
                });
                Response::new(http_body_util::StreamBody::new(frames).boxed())
            }
            // (A request line misread from the middle of a body has some other method.)
            _ if req.method() != http::Method::GET => Response::new(crate::body::full("not GET")),
            _ => Response::new(crate::body::full("ok")),
        }
    }

    /// `--http1-park-after` of the parking tests (the default, 1 s, would only make them slow).
    const PARK: Duration = Duration::from_millis(200);
    /// Longer than a connection can stay at a boundary without parking (two ticks).
    const PARKS_BY: Duration = PARK
        .saturating_mul(2)
        .saturating_add(Duration::from_millis(300));

    /// An HTTP/1 server on loopback serving [`routes`] as the inbound direction.
    async fn parking_server() -> (std::net::SocketAddr, Arc<Metrics>, drain::Drain) {
        let mut settings = DataPathConfig::default();
        settings.limits.http1_park_after = PARK;
        test_server(settings, routes).await
    }

    /// An HTTP/1 server on loopback serving `handler` as the inbound direction, with `settings`.
    async fn test_server<F, Fut>(
        settings: DataPathConfig,
        handler: F,
    ) -> (std::net::SocketAddr, Arc<Metrics>, drain::Drain)
    where
        F: Fn(Request<Body>) -> Fut + Copy + Send + Sync + Unpin + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, watch) = drain::Drain::new();
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (watch, settings, metrics) = (watch.clone(), settings.clone(), m.clone());
                tokio::spawn(async move {
                    let on = Served {
                        drain: &watch,
                        settings: &settings,
                        metrics: &metrics,
                        direction: "inbound",
                    };
                    serve(tcp, Http::Http1, on, handler).await;
                });
            }
        });
        (addr, metrics, drain)
    }

    fn parked(m: &Metrics) -> i64 {
        m.http_parked
            .get_or_create(&TcpLabels {
                direction: "inbound",
            })
            .get()
    }

    /// Reads until what came ends with `end` (within 10 s); returns all of it.
    async fn read_until(tcp: &mut tokio::net::TcpStream, end: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(10), async {
            while !got.ends_with(end) {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {end:?} in {:?}", String::from_utf8_lossy(&got)));
        got
    }

    fn assert_ok(response: &[u8]) {
        assert!(
            response.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(response)
        );
    }

    async fn until_parked(m: &Metrics, want: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while parked(m) != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "parked {} != {want}",
                parked(m)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_quiet_keep_alive_connection_parks_and_serves_its_next_request() {
        use tokio::io::AsyncWriteExt;
        let (addr, metrics, _drain) = parking_server().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let got = read_until(&mut tcp, b"ok").await;
            assert_ok(&got);
            // Quiet for one to two PARKs: hyper's connection is taken apart...
            until_parked(&metrics, 1).await;
        }
        // ...and a client that goes away is seen while parked.
        drop(tcp);
        until_parked(&metrics, 0).await;
    }

    fn header_timeouts(m: &Metrics) -> u64 {
        m.http_conn_errors
            .get_or_create(&LimitLabels {
                direction: "inbound",
                reason: "header-timeout",
            })
            .get()
    }

    /// Reads until the server closes (within 10 s).
    async fn until_closed(tcp: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(10), async {
            while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await
        .expect("still open after 10 s");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_quietly_and_a_slow_head_is_an_error() {
        use tokio::io::AsyncWriteExt;
        let mut settings = DataPathConfig::default();
        settings.limits.http1_park_after = PARK;
        // Well past the park (at 1–2 PARK), so the idle connection parks first even on a
        // busy machine.
        settings.limits.header_read_timeout = Duration::from_secs(2);
        let (addr, metrics, _drain) = test_server(settings, routes).await;
        // Idle after its request: parked, then closed at the header timeout; not an error.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert_ok(&read_until(&mut idle, b"ok").await);
        until_parked(&metrics, 1).await;
        until_closed(&mut idle).await;
        assert_eq!(header_timeouts(&metrics), 0);
        // A head begun and never finished: cut off, and counted.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        until_closed(&mut slow).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while header_timeouts(&metrics) != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no header timeout counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn with_http1_park_after_zero_a_quiet_connection_keeps_its_buffers() {
        use tokio::io::AsyncWriteExt;
        let mut settings = DataPathConfig::default();
        settings.limits.http1_park_after = Duration::ZERO;
        let (addr, metrics, _drain) = test_server(settings, routes).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut tcp, b"ok").await;
        tokio::time::sleep(PARKS_BY).await;
        assert_eq!(parked(&metrics), 0);
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut tcp, b"ok").await;
    }

    #[tokio::test]
    async fn a_pipelined_request_cut_off_by_a_quiet_second_is_answered_whole() {
        use tokio::io::AsyncWriteExt;
        let (addr, metrics, _drain) = parking_server().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nho")
            .await
            .unwrap();
        read_until(&mut tcp, b"ok").await;
        // The half-read second request is in hyper's buffer when the connection goes quiet.
        tokio::time::sleep(PARKS_BY).await;
        assert_eq!(parked(&metrics), 0, "parked with a request half read");
        tcp.write_all(b"st: x\r\n\r\n").await.unwrap();
        let got = read_until(&mut tcp, b"second").await;
        assert_ok(&got);
    }

    #[tokio::test]
    async fn a_response_body_that_pauses_is_sent_whole() {
        use tokio::io::AsyncWriteExt;
        let (addr, metrics, _drain) = parking_server().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut tcp, b"0\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("1\r\na\r\n1\r\nb\r\n"), "{text}");
        until_parked(&metrics, 1).await;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut tcp, b"ok").await;
    }

    /// POSTs half of a 10-byte body to `path`, reads its answer (ending with `answer`), stays
    /// quiet past [`PARKS_BY`] (a park would have happened), then sends the other half
    /// and a `GET /` right after it.
    async fn half_a_body_then_quiet(
        path: &str,
        answer: &[u8],
    ) -> (tokio::net::TcpStream, drain::Drain) {
        use tokio::io::AsyncWriteExt;
        let (addr, _metrics, drain) = parking_server().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345");
        tcp.write_all(head.as_bytes()).await.unwrap();
        read_until(&mut tcp, answer).await;
        tokio::time::sleep(PARKS_BY).await;
        // (The server may have closed the connection: the caller reads what came.)
        let _ = tcp
            .write_all(b"67890GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        (tcp, drain)
    }

    /// A request body still being read after its response was sent (an upstream that answers
    /// before the upload ends): the connection waits for its end before it may park.
    #[tokio::test]
    async fn a_request_body_read_after_the_response_is_read_to_its_end() {
        let (mut tcp, _drain) = half_a_body_then_quiet("/early", b"early").await;
        let got = read_until(&mut tcp, b"ok").await;
        assert_ok(&got);
    }

    /// A request body its handler never read: hyper may still be reading (draining) it, so the
    /// connection must not be taken apart in the middle of it.
    #[tokio::test]
    async fn a_request_body_left_unread_is_never_taken_for_the_next_request() {
        use tokio::io::AsyncReadExt;
        let (mut tcp, _drain) = half_a_body_then_quiet("/ignore", b"ignored").await;
        // Either hyper drained the body and answers the GET, or it closed the connection;
        // never a 400 for `67890GET` read as a request line.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        let text = String::from_utf8_lossy(&rest);
        assert!(!text.contains(" 400 "), "{text}");
        assert!(rest.is_empty() || text.ends_with("ok"), "{text}");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip, trailers".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        h.insert(header::TRAILER, "grpc-status".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["te", "trailer", "x-end-to-end"]);
        assert_eq!(h[header::TE], "trailers");
    }

    /// The fast path (nothing hop-by-hop: nothing touched) must not skip a message that has
    /// any one of them.
    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "keep-alive",
            "proxy-connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), "gzip".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            strip_hop_by_hop(&mut h);
            let names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
            assert_eq!(names, ["x-end-to-end"], "{name}");
        }
        let mut untouched = HeaderMap::new();
        untouched.insert(header::HOST, "api.default".parse().unwrap());
        untouched.insert(header::TRAILER, "grpc-status".parse().unwrap());
        let before = untouched.clone();
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched, before);
    }

    #[test]
    fn the_absolute_uri_keeps_path_and_query() {
        for (uri, want) in [
            ("/a/b?c=d", "http://api.default:8080/a/b?c=d"),
            ("http://old:1/x?y", "http://api.default:8080/x?y"),
            // OPTIONS * keeps its asterisk-form target (HTTP/2 :path "*").
            ("*", "http://api.default:8080*"),
        ] {
            let mut req = Request::builder().uri(uri).body(()).unwrap();
            set_absolute_uri(&mut req, "api.default:8080").unwrap();
            assert_eq!(req.uri().to_string(), want, "{uri}");
        }
        let mut req = Request::builder().uri("/").body(()).unwrap();
        let err = set_absolute_uri(&mut req, "bad host")
            .unwrap_err()
            .to_string();
        assert!(err.contains("authority \"bad host\""), "{err}");
    }

    #[test]
    fn the_origin_form_keeps_path_and_query_and_sets_host() {
        for (uri, want) in [
            ("http://old:1/a/b?c=d", "/a/b?c=d"),
            ("/x", "/x"),
            ("http://old:1", "/"),
            ("*", "*"),
        ] {
            let mut req = Request::builder()
                .uri(uri)
                .header(header::HOST, "stale")
                .body(())
                .unwrap();
            set_origin_form(&mut req, "api.default:8080").unwrap();
            assert_eq!(req.uri().to_string(), want, "{uri}");
            assert_eq!(req.headers()[header::HOST], "api.default:8080");
            assert_eq!(req.headers().get_all(header::HOST).iter().count(), 1);
        }
        let mut req = Request::builder().uri("/").body(()).unwrap();
        let err = set_origin_form(&mut req, "bad\nhost")
            .unwrap_err()
            .to_string();
        assert!(err.contains("authority"), "{err}");
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        let req = Request::builder()
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let plain = Request::builder()
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&plain));
    }
}
