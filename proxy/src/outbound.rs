//! The outbound side: the application's connections out.
//!
//! One listener takes (a) connections redirected by iptables, whose original destination comes
//! from `SO_ORIGINAL_DST`, and (b) HTTP-proxy requests (`HTTP_PROXY=http://127.0.0.1:4140`),
//! routed by authority `service.namespace[:port]`. `--upstream` listeners (c) send everything to
//! one service. Mesh destinations go over mTLS to the chosen endpoint's proxy, which must
//! present the endpoint's registered identity; HTTP travels as HTTP/2 however it arrived.
//! Anything else passes through as plain TCP or HTTP, unless passthrough is off.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span};
use weft_certs::SpiffeId;
use weft_proto::model::Protocol;

use crate::backoff::random_fraction;
use crate::balance::Outcome as AttemptOutcome;
use crate::body::{Body, empty, streamed};
use crate::detect::{Detected, detect};
use crate::error::ProxyError;
use crate::forward;
use crate::http::{
    Http, ORIG_PROTO, Served, authority_of, forward_upgrade, is_upgrade, serve, set_absolute_uri,
    strip_hop_by_hop,
};
use crate::listen::Ctx;
use crate::metrics::ResponseLabels;
use crate::observe::{Exchange, TcpConn};
use crate::plan::{self, Plan, RequestFacts};
use crate::tls::{ALPN_HTTP1, ALPN_OPAQUE};

const DIRECTION: &str = "outbound";

/// How a connection's requests find their destination. Cloned per request: cheap.
#[derive(Debug, Clone)]
enum Mode {
    /// HTTP-proxy requests: by each request's authority.
    Proxy,
    /// A redirected connection to a mesh endpoint's address: by authority when it names a mesh
    /// service, else this plan to that endpoint (made once per connection).
    Direct(Arc<Plan>),
    /// An `--upstream` port: every request to this authority.
    Fixed(Arc<str>),
    /// A redirected connection to an address that is no mesh endpoint (in Kubernetes, a
    /// Service's cluster IP): by authority when it names a mesh service (a one-label host in
    /// this workload's namespace), else on to this original destination as it was.
    Original(SocketAddr),
}

/// Handles one connection accepted on the main outbound listener.
pub async fn connection(ctx: Arc<Ctx>, tcp: TcpStream, _peer: SocketAddr) {
    let Ok(local) = tcp.local_addr() else { return };
    match crate::orig_dst::original_dst(&tcp, local) {
        None => match detect(&tcp, ctx.settings.detect_timeout).await {
            Ok(Detected::Http1) => serve_http(ctx, tcp, Http::Http1, Mode::Proxy).await,
            Ok(Detected::Http2) => serve_http(ctx, tcp, Http::Http2, Mode::Proxy).await,
            Ok(other) => debug!(
                ?other,
                "not HTTP on the proxy port and not redirected; closing"
            ),
            Err(e) => debug!(error = %e, "detection failed"),
        },
        Some(dst) => transparent(ctx, tcp, dst).await,
    }
}

async fn transparent(ctx: Arc<Ctx>, tcp: TcpStream, dst: SocketAddr) {
    let config = ctx.snapshot();
    let Some((service, mut endpoint)) = plan::endpoint_by_ip(&config, dst.ip()) else {
        // HTTP is routed by its authority (the mesh's routes, splits and mTLS apply to
        // `http://api.shop` however it was resolved); anything else passes through.
        return match detect(&tcp, ctx.settings.detect_timeout).await {
            Ok(Detected::Http1) => serve_http(ctx, tcp, Http::Http1, Mode::Original(dst)).await,
            Ok(Detected::Http2) => serve_http(ctx, tcp, Http::Http2, Mode::Original(dst)).await,
            _ => passthrough_tcp(&ctx, tcp, &dst.to_string()).await,
        };
    };
    if dst.port() != endpoint.address.port()
        && endpoint
            .labels
            .get(crate::registration::REDIRECTED_LABEL)
            .is_some_and(|v| v == "true")
    {
        // The peer's pod redirects every port to its proxy, which reads the port back: dial
        // what the application dialed (mTLS, the same expected identity). Other peers serve
        // only their app port, on the registered address.
        endpoint.address = dst;
    }
    let declared = config
        .services
        .get(&service.to_string())
        .and_then(|s| s.value.service.port(dst.port()).map(|p| p.protocol));
    let http = match declared {
        Some(Protocol::Tcp) => None,
        Some(Protocol::Http1) => Some(Http::Http1),
        Some(Protocol::Http2 | Protocol::Grpc) => Some(Http::Http2),
        None => match detect(&tcp, ctx.settings.detect_timeout).await {
            Ok(Detected::Http1) => Some(Http::Http1),
            Ok(Detected::Http2) => Some(Http::Http2),
            _ => None,
        },
    };
    match http {
        Some(http) => {
            let plan = Plan::to_endpoint(service, endpoint, Protocol::Http1);
            serve_http(ctx, tcp, http, Mode::Direct(Arc::new(plan))).await
        }
        None => {
            let mut plan = Plan::to_endpoint(service, endpoint, Protocol::Tcp);
            plan.backend_port = dst.port();
            Box::pin(opaque_to_peer(&ctx, tcp, &plan)).await
        }
    }
}

/// Handles one connection on an `--upstream` listener for `authority`.
pub async fn upstream_connection(ctx: Arc<Ctx>, tcp: TcpStream, authority: Arc<str>) {
    let config = ctx.snapshot();
    let target = plan::target_for(&config, &authority);
    let http = match target.as_ref().map(|t| t.port.protocol) {
        Some(Protocol::Tcp) => None,
        Some(Protocol::Http1) => Some(Http::Http1),
        Some(Protocol::Http2 | Protocol::Grpc) => Some(Http::Http2),
        None => match detect(&tcp, ctx.settings.detect_timeout).await {
            Ok(Detected::Http1) => Some(Http::Http1),
            Ok(Detected::Http2) => Some(Http::Http2),
            _ => None,
        },
    };
    match (http, target) {
        (Some(http), _) => serve_http(ctx, tcp, http, Mode::Fixed(authority)).await,
        (None, Some(target)) => match plan::plan_tcp(&config, &target, &mut random_fraction) {
            Ok(plan) => Box::pin(opaque_to_peer(&ctx, tcp, &plan)).await,
            Err(e) => debug!(error = %e, "no destination for an opaque connection; closing"),
        },
        (None, None) => debug!(%authority, "{authority} is not a mesh service (yet); closing"),
    }
}

/// Connects to an endpoint of the plan's backend that the balancer picks, for an opaque
/// stream or an upgrade; the connection's outcome feeds outlier detection.
async fn connect_planned(
    ctx: &Ctx,
    plan: &Plan,
    alpn: &'static [u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
    let lease = forward::pick(&ctx.balancers.service(&plan.backend), plan, &[])?;
    let result = ctx
        .peers
        .connect(lease.endpoint.address, &lease.endpoint.identity, alpn)
        .await;
    let outcome = if result.is_ok() {
        AttemptOutcome::Success
    } else {
        AttemptOutcome::Failure
    };
    forward::finish(ctx, plan, lease, outcome);
    result
}

/// Callers box this future (5 KB with its TLS stream): a connection's task is as large as its
/// largest path for its whole life, and most connections take the HTTP one.
async fn opaque_to_peer(ctx: &Ctx, tcp: TcpStream, plan: &Plan) {
    // Access logs on: the connection's line is written when it ends.
    let observed = ctx.observe.as_ref().map(|o| {
        let conn = TcpConn {
            direction: DIRECTION,
            client_id: o.own_id.clone(),
            peer: tcp.peer_addr().ok().map(|a| a.ip()),
            authority: format!(
                "{}.{}:{}",
                plan.backend.name, plan.backend.namespace, plan.backend_port
            ),
            backend: plan.backend.to_string(),
            ..TcpConn::default()
        };
        (o, conn, (Instant::now(), SystemTime::now()))
    });
    match connect_planned(ctx, plan, ALPN_OPAQUE).await {
        Ok(upstream) => {
            let observed = observed.map(|(o, mut conn, start)| {
                conn.server_id = crate::tls::peer_id(&upstream)
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                conn.endpoint = upstream
                    .get_ref()
                    .0
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                (o, conn, start)
            });
            let r = crate::tcp::splice(
                tcp,
                upstream,
                ctx.settings.tcp_idle_timeout,
                &ctx.metrics,
                DIRECTION,
            )
            .await;
            debug!(result = ?r, backend = %plan.backend, "opaque connection closed");
            if let Some((o, conn, start)) = observed {
                o.log_tcp(conn, start, r.as_ref().ok().copied(), "");
            }
        }
        Err(e) => {
            debug!(error = %e, reason = e.reason(), "opaque connection refused");
            if let Some((o, conn, start)) = observed {
                o.log_tcp(conn, start, None, e.reason());
            }
        }
    }
}

async fn passthrough_tcp(ctx: &Ctx, tcp: TcpStream, dst: &str) {
    if !ctx.settings.passthrough {
        debug!(%dst, "outside the mesh and passthrough is off; closing");
        return;
    }
    match TcpStream::connect(dst).await {
        Ok(upstream) => {
            let r = crate::tcp::splice(
                tcp,
                upstream,
                ctx.settings.tcp_idle_timeout,
                &ctx.metrics,
                DIRECTION,
            )
            .await;
            debug!(result = ?r, %dst, "passthrough connection closed");
        }
        Err(e) => debug!(%dst, error = %e, "passthrough connect failed"),
    }
}

async fn serve_http(ctx: Arc<Ctx>, tcp: TcpStream, http: Http, mode: Mode) {
    let served = ctx.clone();
    serve(tcp, http, Served::by(&served, DIRECTION), move |req| {
        // `request`'s own future, not one that awaits it: a wrapper would add its captures.
        request(ctx.clone(), mode.clone(), req)
    })
    .await;
}

/// Where one request went, for its metrics.
struct Outcome {
    authority: String,
    tls: bool,
    server_id: Option<SpiffeId>,
    /// The route's retry budget withheld a retry.
    budget_exhausted: bool,
}

async fn request(ctx: Arc<Ctx>, mode: Mode, mut req: Request<Body>) -> Response<Body> {
    let start = Instant::now();
    let authority = match &mode {
        Mode::Fixed(a) => a.to_string(),
        _ => authority_of(&req).unwrap_or_default(),
    };
    // Traced, or access logs on: the request is observed (boxed: the off path's future
    // stays the size it was).
    let mut observed = ctx
        .observe
        .as_ref()
        .and_then(|o| Exchange::begin(o, DIRECTION, &mut req, None));
    if let Some(x) = &mut observed {
        x.client_id.clone_from(&x.observe.own_id);
        x.authority.clone_from(&authority);
        let body = std::mem::replace(req.body_mut(), empty());
        *req.body_mut() = x.count_request_body(body);
    }
    let span = debug_span!("req", method = %req.method(), %authority, path = req.uri().path());
    let grpc = crate::error::is_grpc(req.headers());
    let mut outcome = Outcome {
        authority: authority.clone(),
        tls: false,
        server_id: None,
        budget_exhausted: false,
    };
    let result = route(
        &ctx,
        &mode,
        &authority,
        req,
        &mut outcome,
        observed.as_deref_mut(),
    )
    .instrument(span)
    .await;
    let (resp, error) = match result {
        Ok(resp) if outcome.budget_exhausted => (resp, "retry-budget-exhausted"),
        Ok(resp) => (resp, ""),
        Err(e) => {
            debug!(error = %e, reason = e.reason(), "request failed in the proxy");
            let reason = e.reason();
            (e.into_response_for(grpc), reason)
        }
    };
    let resp = match observed {
        Some(mut x) => {
            x.authority.clone_from(&outcome.authority);
            if let Some(id) = &outcome.server_id {
                x.server_id = id.to_string();
            }
            x.finish(resp, error)
        }
        None => resp,
    };
    ctx.count_response(
        ResponseLabels {
            direction: DIRECTION,
            authority: outcome.authority,
            status_code: resp.status().as_u16(),
            tls: crate::listen::tls_label(outcome.tls),
            client_id: String::new(),
            server_id: outcome.server_id.map(|i| i.to_string()).unwrap_or_default(),
            error,
        },
        start,
    );
    resp
}

async fn route(
    ctx: &Ctx,
    mode: &Mode,
    authority: &str,
    req: Request<Body>,
    outcome: &mut Outcome,
    observed: Option<&mut Exchange>,
) -> Result<Response<Body>, ProxyError> {
    let config = ctx.snapshot();
    if req.method() == Method::CONNECT {
        ctx.count_request(DIRECTION, authority, false);
        // Boxed, like every rare path here: the request's future is moved whole as the
        // request goes, so its size is paid on every request (docs/benchmarks.md).
        return Box::pin(connect_tunnel(ctx, &config, authority, req, outcome)).await;
    }
    let target = plan::target_for(&config, authority).or_else(|| match (mode, &ctx.namespace) {
        (Mode::Original(_), Some(ns)) => short_name_target(&config, authority, ns),
        _ => None,
    });
    let facts = RequestFacts {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let plan: Option<Result<Cow<'_, Plan>, ProxyError>> = match (&target, mode) {
        (Some(t), _) => {
            outcome.authority = t.authority();
            Some(plan::plan_http(&config, t, &facts, &mut random_fraction).map(Cow::Owned))
        }
        (None, Mode::Direct(plan)) => Some(Ok(Cow::Borrowed(&**plan))),
        (None, Mode::Fixed(_)) => Some(Err(ProxyError::NoRoute(authority.to_owned()))),
        (None, Mode::Proxy | Mode::Original(_)) => None,
    };
    match plan {
        Some(plan) => {
            ctx.count_request(DIRECTION, &outcome.authority, true);
            let plan = plan?;
            outcome.tls = true;
            to_peer(ctx, &plan, authority, req, outcome, observed).await
        }
        None => {
            ctx.count_request(DIRECTION, authority, false);
            match mode {
                // Where the application was going, whatever its Host says.
                Mode::Original(dst) => Box::pin(outside(ctx, &dst.to_string(), req)).await,
                _ => Box::pin(outside(ctx, authority, req)).await,
            }
        }
    }
}

/// `api` or `api:8080` (no dot): the service `api` in `namespace`.
fn short_name_target(
    config: &crate::resources::MeshConfig,
    authority: &str,
    namespace: &str,
) -> Option<plan::Target> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() || host.contains('.') || host.contains('[') {
        return None;
    }
    let qualified = match port {
        Some(p) => format!("{host}.{namespace}:{p}"),
        None => format!("{host}.{namespace}"),
    };
    plan::target_for(config, &qualified)
}

/// Sends a request as the plan says: upgrades on their own HTTP/1.1 connection, everything
/// else on the endpoint's shared HTTP/2 connection, with the route's retries and timeouts
/// (`crate::forward`).
async fn to_peer(
    ctx: &Ctx,
    plan: &Plan,
    authority: &str,
    mut req: Request<Body>,
    outcome: &mut Outcome,
    mut observed: Option<&mut Exchange>,
) -> Result<Response<Body>, ProxyError> {
    if let Some(x) = observed.as_deref_mut() {
        x.route = plan.route_label();
        x.backend = plan.backend.to_string();
    }
    if is_upgrade(&req) {
        return Box::pin(async {
            let tls = connect_planned(ctx, plan, ALPN_HTTP1).await?;
            outcome.server_id = crate::tls::peer_id(&tls);
            set_absolute_uri(&mut req, authority)?;
            forward_upgrade(
                req,
                tls,
                ctx.metrics.clone(),
                DIRECTION,
                ctx.settings.tcp_idle_timeout,
            )
            .await
        })
        .await;
    }
    let from_http1 = req.version() < Version::HTTP_2;
    set_absolute_uri(&mut req, authority)?;
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    parts.headers.remove(ORIG_PROTO);
    if from_http1 {
        parts
            .headers
            .insert(ORIG_PROTO, http::HeaderValue::from_static("HTTP/1.1"));
    }
    parts.version = Version::HTTP_2;
    let head = Request::from_parts(parts, ());
    let forwarded = forward::forward(ctx, plan, head, body, observed).await;
    outcome.server_id = forwarded.server_id;
    outcome.budget_exhausted = forwarded.budget_exhausted;
    let resp = forwarded.result?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// A request for a destination outside the mesh (HTTP-proxy mode).
async fn outside(
    ctx: &Ctx,
    authority: &str,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    if !ctx.settings.passthrough {
        return Err(ProxyError::Denied(authority.to_owned()));
    }
    if authority.is_empty() {
        return Err(ProxyError::BadRequest(
            "no authority (Host header or absolute URI)".into(),
        ));
    }
    if is_upgrade(&req) {
        let tcp = connect_outside(authority).await?;
        return forward_upgrade(
            req,
            tcp,
            ctx.metrics.clone(),
            DIRECTION,
            ctx.settings.tcp_idle_timeout,
        )
        .await;
    }
    set_absolute_uri(&mut req, authority)?;
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let resp = ctx
        .outside
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ProxyError::client(authority, &e))?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, streamed(body)))
}

async fn connect_outside(authority: &str) -> Result<TcpStream, ProxyError> {
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    TcpStream::connect(&with_port)
        .await
        .map_err(|e| ProxyError::ConnectFailed {
            addr: with_port,
            reason: e.to_string(),
        })
}

/// `CONNECT host:port`: a tunnel, over mTLS when the authority is a mesh service.
async fn connect_tunnel(
    ctx: &Ctx,
    config: &crate::resources::MeshConfig,
    authority: &str,
    req: Request<Body>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let idle = ctx.settings.tcp_idle_timeout;
    let metrics = ctx.metrics.clone();
    let upgraded = hyper::upgrade::on(req);
    let spawn_splice = |upstream: Box<dyn Stream>| {
        tokio::spawn(async move {
            match upgraded.await {
                Ok(client) => {
                    let r = crate::tcp::splice(
                        TokioIo::new(client),
                        upstream,
                        idle,
                        &metrics,
                        DIRECTION,
                    )
                    .await;
                    debug!(result = ?r, "tunnel closed");
                }
                Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
    };
    match plan::target_for(config, authority) {
        Some(target) => {
            outcome.authority = target.authority();
            let plan = plan::plan_tcp(config, &target, &mut random_fraction)?;
            outcome.tls = true;
            let tls = connect_planned(ctx, &plan, ALPN_OPAQUE).await?;
            outcome.server_id = crate::tls::peer_id(&tls);
            spawn_splice(Box::new(tls));
        }
        None if ctx.settings.passthrough => {
            spawn_splice(Box::new(connect_outside(authority).await?))
        }
        None => return Err(ProxyError::Denied(authority.to_owned())),
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
