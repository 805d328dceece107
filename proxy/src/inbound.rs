//! The inbound side: connections to this workload, handed to the application on
//! `127.0.0.1:<app-port>`.
//!
//! mTLS from peer proxies is terminated here; the client's SPIFFE ID comes from its verified
//! certificate and reaches the application as `x-weft-client-id` (whatever the client sent
//! under that name is removed). ALPN says what follows: `h2` (HTTP, HTTP/1.1 requests marked
//! with `weft-orig-proto`), `http/1.1` (an upgrade), or `weft.opaque` (TCP). Plaintext from
//! clients outside the mesh is served in permissive mode and closed in strict mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Version};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, info};
use weft_certs::SpiffeId;

use crate::body::{Body, streamed};
use crate::detect::{Detected, detect};
use crate::error::ProxyError;
use crate::http::{
    CLIENT_ID, Http, ORIG_PROTO, authority_of, forward_upgrade, is_upgrade, serve,
    set_absolute_uri, set_origin_form, strip_hop_by_hop,
};
use crate::listen::{App, Ctx, MtlsMode};
use crate::metrics::ResponseLabels;
use crate::tls::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE};

const DIRECTION: &str = "inbound";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles one connection accepted on the inbound port.
pub async fn connection(ctx: Arc<Ctx>, tcp: TcpStream, peer: std::net::SocketAddr) {
    let Some(app) = ctx.app.clone() else { return };
    let detected = match detect(&tcp, ctx.settings.detect_timeout).await {
        Ok(d) => d,
        Err(e) => return debug!(error = %e, "detection failed"),
    };
    if detected != Detected::Tls && ctx.settings.mtls == MtlsMode::Strict {
        info!(%peer, ?detected, "plaintext connection refused (--mtls strict)");
        return;
    }
    match detected {
        Detected::Tls => mtls(ctx, app, tcp).await,
        Detected::Http1 => serve_http(ctx, app, tcp, Http::Http1, None).await,
        Detected::Http2 => serve_http(ctx, app, tcp, Http::Http2, None).await,
        Detected::Opaque => to_app_tcp(&ctx, &app, tcp).await,
    }
}

async fn mtls(ctx: Arc<Ctx>, app: Arc<App>, tcp: TcpStream) {
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
    let span = debug_span!("mtls", %client);
    async move {
        match alpn.as_deref() {
            Some(ALPN_H2) => serve_http(ctx, app, tls, Http::Http2, Some(client)).await,
            Some(ALPN_HTTP1) => serve_http(ctx, app, tls, Http::Http1, Some(client)).await,
            Some(ALPN_OPAQUE) => to_app_tcp(&ctx, &app, tls).await,
            other => debug!(?other, "no usable ALPN; closing"),
        }
    }
    .instrument(span)
    .await
}

async fn to_app_tcp<S>(ctx: &Ctx, app: &App, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match TcpStream::connect(app.addr).await {
        Ok(upstream) => {
            let _ = upstream.set_nodelay(true);
            let r = crate::tcp::splice(
                stream,
                upstream,
                ctx.settings.tcp_idle_timeout,
                &ctx.metrics,
                DIRECTION,
            )
            .await;
            debug!(result = ?r, "opaque connection closed");
        }
        Err(e) => {
            debug!(app = %app.addr, error = %e, "the application refused an opaque connection")
        }
    }
}

/// The verified client of an mTLS connection, and its ID as the header the application gets.
#[derive(Debug)]
struct Client {
    id: SpiffeId,
    header: HeaderValue,
}

async fn serve_http<S>(
    ctx: Arc<Ctx>,
    app: Arc<App>,
    stream: S,
    http: Http,
    client: Option<SpiffeId>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = match client.map(|id| HeaderValue::from_str(id.as_str()).map(|h| (id, h))) {
        None => None,
        Some(Ok((id, header))) => Some(Arc::new(Client { id, header })),
        Some(Err(e)) => return debug!(error = %e, "a SPIFFE ID that is no header value; closing"),
    };
    let drain = ctx.drain.clone();
    let idle = ctx.settings.http_idle_timeout;
    serve(stream, http, &drain, idle, move |req| {
        request(ctx.clone(), app.clone(), client.clone(), req)
    })
    .await;
}

async fn request(
    ctx: Arc<Ctx>,
    app: Arc<App>,
    client: Option<Arc<Client>>,
    req: Request<Body>,
) -> Response<Body> {
    let start = Instant::now();
    let authority = authority_of(&req).unwrap_or_else(|| app.addr.to_string());
    let tls = client.is_some();
    ctx.count_request(DIRECTION, &authority, tls);
    let span = debug_span!("req", method = %req.method(), %authority, path = req.uri().path());
    let grpc = crate::error::is_grpc(req.headers());
    let result = to_app(&ctx, &app, client.as_deref(), &authority, req)
        .instrument(span)
        .await;
    let (resp, error) = match result {
        Ok(r) => (r, ""),
        Err(e) => {
            debug!(error = %e, "request to the application failed");
            let reason = e.reason();
            (e.into_response_for(grpc), reason)
        }
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
