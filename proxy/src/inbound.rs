//! The inbound side: connections to this workload, handed to the application on
//! `127.0.0.1:<port>` — the port a redirected connection was for (`SO_ORIGINAL_DST`, so a pod
//! with several ports works), else `--app-port`.
//!
//! mTLS from peer proxies is terminated here; the client's SPIFFE ID comes from its verified
//! certificate and reaches the application as `x-weft-client-id` (whatever the client sent
//! under that name is removed). ALPN says what follows: `h2` (HTTP, HTTP/1.1 requests marked
//! with `weft-orig-proto`), `http/1.1` (an upgrade), or `weft.opaque` (TCP). Plaintext from
//! clients outside the mesh is served in permissive mode and closed in strict mode (except
//! HTTP to `--probe-paths`, which kubelet sends without a certificate).
//!
//! Every HTTP request's path is normalized first (`authz::normalize`; what the application
//! receives is the normalized path, so a policy and the application agree on what was asked
//! for), then the workload's inbound policy decides (`authz`); an opaque connection is decided
//! before a byte is forwarded, and closed if a later policy no longer allows it.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, Version};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, info};
use weft_certs::SpiffeId;

use crate::authz::eval::HttpFacts;
use crate::authz::normalize::normalize_path;
use crate::authz::{Caller, InboundPolicy};
use crate::body::{Body, streamed};
use crate::detect::{Detected, detect};
use crate::error::ProxyError;
use crate::http::{
    CLIENT_ID, Http, ORIG_PROTO, Park, Served, authority_of, forward_upgrade, is_upgrade, serve,
    set_absolute_uri, set_origin_form, strip_hop_by_hop,
};
use crate::listen::{App, Ctx, MtlsMode};
use crate::metrics::ResponseLabels;
use crate::observe::{Exchange, TcpConn};
use crate::tls::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE};

const DIRECTION: &str = "inbound";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles one connection accepted on the inbound port.
pub async fn connection(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    // Redirected by `weft-proxy init`: to the port the client asked for. Dialed directly (a
    // peer proxy on the inbound port): to `--app-port`.
    let redirected = tcp
        .local_addr()
        .ok()
        .and_then(|local| crate::orig_dst::original_dst(&tcp, local));
    let app = match redirected {
        Some(dst) => ctx.apps.on_port(dst.port()),
        None => match ctx.apps.default_app() {
            Some(app) => app,
            None => {
                return debug!(%peer, "not redirected and no --app-port: nowhere to send it; closing");
            }
        },
    };
    let detected = match detect(&tcp, ctx.settings.detect_timeout).await {
        Ok(d) => d,
        Err(e) => return debug!(error = %e, "detection failed"),
    };
    let strict = ctx.settings.mtls == MtlsMode::Strict;
    let http = match detected {
        Detected::Http1 => Some(Http::Http1),
        Detected::Http2 => Some(Http::Http2),
        Detected::Tls | Detected::Opaque => None,
    };
    let probes = !ctx.probe_paths.is_empty();
    if detected != Detected::Tls && strict && !(http.is_some() && probes) {
        info!(%peer, ?detected, "plaintext connection refused (--mtls strict)");
        return;
    }
    let conn = Conn {
        ip: peer.ip(),
        client: None,
        probes_only: strict,
    };
    match (detected, http) {
        // Boxed: the TLS path's future is three times the plaintext one's, and a connection's
        // task is as large as its largest path for its whole life.
        (Detected::Tls, _) => Box::pin(mtls(ctx, app, tcp, peer.ip())).await,
        (_, Some(http)) => serve_http(ctx, app, tcp, http, conn).await,
        _ => to_app_tcp(&ctx, &app, tcp, None, peer.ip()).await,
    }
}

async fn mtls(ctx: Arc<Ctx>, app: Arc<App>, tcp: TcpStream, ip: IpAddr) {
    let config = match ctx.tls.server() {
        Ok(c) => c,
        Err(e) => return debug!(error = %e, "no TLS configuration"),
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return info!(error = %e, "mTLS handshake refused"),
        Err(_) => return debug!("mTLS handshake timed out"),
    };
    let (_, session) = tls.get_ref();
    // The handshake required a certificate that chains to the bundle; this reads its ID.
    let client = match weft_certs::verify::peer_spiffe_id(session.peer_certificates()) {
        Ok(id) => id,
        Err(e) => return info!(error = %e, "peer certificate without a SPIFFE ID"),
    };
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    // Boxed once here: each async fn it passes through below would otherwise hold its own
    // copy of the 1.2 KB stream for the connection's life (async fn arguments are not
    // overlapped with the futures they are moved into).
    let tls = Box::new(tls);
    let span = debug_span!("mtls", %client);
    async move {
        let conn = |id: SpiffeId| match HeaderValue::from_str(id.as_str()) {
            Ok(header) => Some(Conn {
                ip,
                client: Some(Arc::new(Client { id, header })),
                probes_only: false,
            }),
            Err(e) => {
                debug!(error = %e, "a SPIFFE ID that is no header value; closing");
                None
            }
        };
        match alpn.as_deref() {
            Some(ALPN_H2) => {
                if let Some(c) = conn(client) {
                    serve_http(ctx, app, tls, Http::Http2, c).await;
                }
            }
            Some(ALPN_HTTP1) => {
                if let Some(c) = conn(client) {
                    serve_http(ctx, app, tls, Http::Http1, c).await;
                }
            }
            Some(ALPN_OPAQUE) => to_app_tcp(&ctx, &app, tls, Some(&client), ip).await,
            other => debug!(?other, "no usable ALPN; closing"),
        }
    }
    .instrument(span)
    .await
}

/// Forwards an opaque connection once the inbound policy allows it, and closes it when a
/// later policy no longer does.
async fn to_app_tcp<S>(ctx: &Ctx, app: &App, stream: S, client: Option<&SpiffeId>, ip: IpAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let caller = Caller {
        id: client,
        ip,
        port: app.addr.port(),
    };
    let policy = ctx.snapshot().inbound.clone();
    if let Some(p) = &policy
        && !p.check_tcp(caller, &ctx.metrics)
    {
        return;
    }
    // Access logs on: the connection's line is written when it ends.
    let observed = ctx.observe.as_ref().map(|o| {
        let conn = TcpConn {
            direction: DIRECTION,
            client_id: client.map(ToString::to_string).unwrap_or_default(),
            server_id: o.own_id.clone(),
            peer: Some(ip),
            authority: app.addr.to_string(),
            endpoint: app.addr.to_string(),
            ..TcpConn::default()
        };
        (o, conn, (Instant::now(), std::time::SystemTime::now()))
    });
    match TcpStream::connect(app.addr).await {
        Ok(upstream) => {
            let _ = upstream.set_nodelay(true);
            let splice = crate::tcp::splice(
                stream,
                upstream,
                ctx.settings.tcp_idle_timeout,
                &ctx.metrics,
                DIRECTION,
            );
            tokio::select! {
                r = splice => {
                    debug!(result = ?r, "opaque connection closed");
                    if let Some((o, conn, start)) = observed {
                        o.log_tcp(conn, start, r.as_ref().ok().copied(), "");
                    }
                }
                service = revoked(ctx, caller) => {
                    info!(%service, client = %client.map_or_else(|| format!("plaintext {ip}"), ToString::to_string),
                        "opaque connection closed: the inbound policy no longer allows it");
                    ctx.metrics
                        .authz_terminated
                        .get_or_create(&crate::metrics::ServiceLabels { service })
                        .inc();
                }
            }
        }
        Err(e) => {
            debug!(app = %app.addr, error = %e, "the application refused an opaque connection");
            if let Some((o, conn, start)) = observed {
                o.log_tcp(conn, start, None, "connect-failed");
            }
        }
    }
}

/// Resolves (with the service's name) when a new configuration's inbound policy denies what
/// `caller` is doing; never while it allows it.
async fn revoked(ctx: &Ctx, caller: Caller<'_>) -> String {
    let mut config = ctx.config.clone();
    config.mark_unchanged();
    let mut last: Option<Arc<InboundPolicy>> = config.borrow().inbound.clone();
    loop {
        if config.changed().await.is_err() {
            // The proxy is stopping; the drain closes the connection.
            return std::future::pending().await;
        }
        let now = config.borrow_and_update().inbound.clone();
        if now == last {
            continue;
        }
        if let Some(p) = &now
            && !p.decide_tcp(caller).allowed
        {
            return p.service.clone();
        }
        last = now;
    }
}

/// What an HTTP connection knows of its client.
#[derive(Debug, Clone)]
struct Conn {
    ip: IpAddr,
    client: Option<Arc<Client>>,
    /// A plaintext connection let in under `--mtls strict` for `--probe-paths` only.
    probes_only: bool,
}

/// The verified client of an mTLS connection, and its ID as the header the application gets.
#[derive(Debug)]
struct Client {
    id: SpiffeId,
    header: HeaderValue,
}

async fn serve_http<S>(ctx: Arc<Ctx>, app: Arc<App>, stream: S, http: Http, conn: Conn)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Park + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let served = ctx.clone();
    serve(stream, http, Served::by(&served, DIRECTION), move |req| {
        request(ctx.clone(), app.clone(), conn.clone(), req)
    })
    .await;
}

async fn request(
    ctx: Arc<Ctx>,
    app: Arc<App>,
    conn: Arc<Conn>,
    mut req: Request<Body>,
) -> Response<Body> {
    let start = Instant::now();
    // Traced, or access logs on: the request is observed (boxed: the off path's future
    // stays the size it was).
    let mut observed = ctx
        .observe
        .as_ref()
        .and_then(|o| Exchange::begin(o, DIRECTION, &mut req, Some(conn.ip)));
    let authority = authority_of(&req).unwrap_or_else(|| app.addr.to_string());
    let client = conn.client.as_deref();
    let tls = client.is_some();
    ctx.count_request(DIRECTION, &authority, tls);
    let grpc = crate::error::is_grpc(req.headers());
    let result = match authorize(&ctx, &app, &conn, &mut req) {
        Ok(()) => {
            if let Some(x) = &mut observed {
                x.path = req.uri().path().to_owned();
                let body = std::mem::replace(req.body_mut(), crate::body::empty());
                *req.body_mut() = x.count_request_body(body);
            }
            let span =
                debug_span!("req", method = %req.method(), %authority, path = req.uri().path());
            to_app(&ctx, &app, client, &authority, req)
                .instrument(span)
                .await
        }
        Err(e) => Err(e),
    };
    let (resp, error) = match result {
        Ok(r) => (r, ""),
        Err(e) => {
            debug!(error = %e, "request to the application failed");
            let reason = e.reason();
            (e.into_response_for(grpc), reason)
        }
    };
    let resp = match observed {
        Some(mut x) => {
            x.authority.clone_from(&authority);
            x.client_id = client.map(|c| c.id.to_string()).unwrap_or_default();
            x.server_id.clone_from(&x.observe.own_id);
            x.endpoint = app.addr.to_string();
            x.attempts = 1;
            x.finish(resp, error)
        }
        None => resp,
    };
    ctx.count_response(
        ResponseLabels {
            direction: DIRECTION,
            authority,
            status_code: resp.status().as_u16(),
            tls: crate::listen::tls_label(tls),
            client_id: client.map(|c| c.id.to_string()).unwrap_or_default(),
            server_id: String::new(),
            error,
        },
        start,
    );
    resp
}

/// Normalizes the request's path in place, then asks the inbound policy. `Err` is the answer.
fn authorize(ctx: &Ctx, app: &App, conn: &Conn, req: &mut Request<Body>) -> Result<(), ProxyError> {
    if req.method() != Method::CONNECT {
        let normalized = match normalize_path(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => return Err(ProxyError::BadRequest(format!("path: {e}"))),
        };
        if let Some(path) = normalized {
            set_path(req, &path)?;
        }
    }
    let snapshot = ctx.snapshot();
    let policy = snapshot.inbound.as_deref();
    let port = app.addr.port();
    if conn.probes_only {
        // Plaintext under --mtls strict: nothing but the probe paths.
        let path = req.uri().path();
        let probe = matches!(*req.method(), Method::GET | Method::HEAD)
            && ctx.probe_paths.iter().any(|(p, q)| *p == port && q == path);
        return if probe {
            Ok(())
        } else {
            Err(ProxyError::Forbidden {
                policy: "mtls-strict".into(),
                describe: false,
            })
        };
    }
    let Some(policy) = policy else { return Ok(()) };
    let caller = Caller {
        id: conn.client.as_deref().map(|c| &c.id),
        ip: conn.ip,
        port,
    };
    let http = HttpFacts {
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
    };
    policy.check_http(caller, http, &ctx.limiter, &ctx.metrics)
}

/// Replaces the request's path, keeping its query (and scheme and authority if absolute).
fn set_path(req: &mut Request<Body>, path: &str) -> Result<(), ProxyError> {
    let mut parts = req.uri().clone().into_parts();
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| ProxyError::BadRequest(format!("normalized path {path:?}: {e}")))?,
    );
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("normalized path {path:?}: {e}")))?;
    Ok(())
}

async fn to_app(
    ctx: &Ctx,
    app: &App,
    client: Option<&Client>,
    authority: &str,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let headers = req.headers_mut();
    headers.remove(CLIENT_ID);
    if let Some(c) = client {
        headers.insert(CLIENT_ID, c.header.clone());
    }
    let from_http1 = headers.remove(ORIG_PROTO).is_some_and(|v| v == "HTTP/1.1")
        || req.version() < Version::HTTP_2;
    if is_upgrade(&req) {
        // Boxed: rare, and its future would otherwise grow every request's.
        return Box::pin(upgrade(ctx, app, req)).await;
    }
    strip_hop_by_hop(req.headers_mut());
    let mut resp = if from_http1 {
        set_origin_form(&mut req, authority)?;
        *req.version_mut() = Version::HTTP_11;
        app.http1.send(req).await?
    } else {
        set_absolute_uri(&mut req, authority)?;
        req.headers_mut().remove(http::header::HOST);
        *req.version_mut() = Version::HTTP_2;
        app.http2
            .request(req)
            .await
            .map_err(|e| ProxyError::client(&app.addr.to_string(), &e))?
            .map(streamed)
    };
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

/// An `Upgrade` request, on a connection of its own to the application.
async fn upgrade(ctx: &Ctx, app: &App, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let tcp = TcpStream::connect(app.addr)
        .await
        .map_err(|e| ProxyError::ConnectFailed {
            addr: app.addr.to_string(),
            reason: e.to_string(),
        })?;
    forward_upgrade(
        req,
        tcp,
        ctx.metrics.clone(),
        DIRECTION,
        ctx.settings.tcp_idle_timeout,
    )
    .await
}
