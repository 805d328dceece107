//! The admin HTTP endpoint (127.0.0.1:4191 by default): `/live`, `/ready` (200 only with a valid
//! certificate and a first configuration), `/metrics`, `/config_dump` (the configuration held
//! and its versions, JSON), `/certs` (identity, expiry, bundle fingerprints: never a key) and
//! `POST /shutdown`.
//!
//! In a pod the admin port listens on the pod IP (kubelet probes `/live` and `/ready` there, and
//! Prometheus scrapes `/metrics`), so only those three answer a client that is not on loopback;
//! the rest (the configuration, `/explain`, `POST /shutdown`) answer loopback clients only —
//! `kubectl port-forward` arrives on loopback ([`weft_proto::admin`], the control plane's rule
//! too).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};
use weft_proto::admin;

use http_body_util::BodyExt;

use crate::balance::Balancers;
use crate::identity::Identity;
use crate::limits::ConnectionLimit;
use crate::metrics::{LimitLabels, Metrics};
use crate::resources::MeshConfig;

/// What the admin endpoint reads from.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    pub config: watch::Receiver<Arc<MeshConfig>>,
    /// Flipped by `POST /shutdown` (or SIGTERM): the proxy drains and `/ready` says so.
    pub shutdown: watch::Sender<bool>,
    /// The data path's endpoint state, for `/explain`.
    pub balancers: Arc<Balancers>,
    /// The inbound rate-limit buckets, for `/explain/inbound`.
    pub limiter: Arc<crate::authz::ratelimit::RateLimiter>,
    /// `--app-port`, the default port of `/explain/inbound`.
    pub app_port: Option<u16>,
    pub probe_paths: Vec<(u16, String)>,
}

/// Admin connections open at once (kubelet probes, a Prometheus scrape, an operator): far
/// more than these need; past it a connection is closed at once and counted.
const ADMIN_MAX_CONNECTIONS: usize = 128;
/// Largest admin request head.
const ADMIN_MAX_HEADER_BYTES: usize = 16 * 1024;

/// hyper's HTTP/1 server as every admin connection gets it: heads within 10 s and 16 KiB.
fn admin_http() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_header_size(ADMIN_MAX_HEADER_BYTES);
    http
}

/// Serves until `shutdown` flips.
pub async fn run(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let limit = ConnectionLimit::new(ADMIN_MAX_CONNECTIONS);
    let refused = state
        .metrics
        .tcp_refused
        .get_or_create(&LimitLabels {
            direction: "admin",
            reason: "limit",
        })
        .clone();
    loop {
        let (tcp, remote, slot) = tokio::select! {
            c = limit.accept(&listener, "admin", Some(&refused)) => c,
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        let remote_ip = remote.ip();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    if !admin::allowed(remote_ip, req.uri().path()) {
                        return Ok::<_, Infallible>(forbidden_remote());
                    }
                    if req.method() == Method::POST && req.uri().path() == "/explain" {
                        return Ok::<_, Infallible>(explain(req, &state).await);
                    }
                    if req.method() == Method::POST && req.uri().path() == "/explain/inbound" {
                        return Ok::<_, Infallible>(explain_inbound(req, &state).await);
                    }
                    Ok::<_, Infallible>(route(&req, &state))
                }
            });
            if let Err(e) = admin_http().serve_connection(TokioIo::new(tcp), svc).await {
                debug!(%remote, error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// The admin port while the proxy waits for its first certificate: `/live` is 200 (the
/// process is fine; restarting it would not help), `/ready` and everything else 503 with what
/// it is waiting for. Returns the listener when `done` fires, for [`run`] to take over.
pub async fn serve_starting(
    listener: TcpListener,
    waiting: watch::Receiver<String>,
    done: tokio::sync::oneshot::Receiver<()>,
) -> TcpListener {
    tokio::pin!(done);
    let limit = ConnectionLimit::new(ADMIN_MAX_CONNECTIONS);
    loop {
        let (tcp, remote, slot) = tokio::select! {
            c = limit.accept(&listener, "admin", None) => c,
            _ = &mut done => return listener,
        };
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let why = waiting.borrow().clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/live" => (StatusCode::OK, "ok\n".to_owned()),
                        _ => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut http = admin_http();
            http.keep_alive(false);
            if let Err(e) = http.serve_connection(TokioIo::new(tcp), svc).await {
                debug!(%remote, error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn forbidden_remote() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(admin::FORBIDDEN)));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain";
    const JSON: &str = "application/json";
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (&Method::GET, "/ready") => match not_ready(state) {
            None => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        (&Method::GET, "/config_dump") => {
            (StatusCode::OK, JSON, config_dump(&state.config.borrow()))
        }
        (&Method::GET, "/certs") => (StatusCode::OK, JSON, certs(&state.identity)),
        (&Method::POST, "/shutdown") => {
            info!("shutdown requested on the admin port");
            state.shutdown.send_replace(true);
            (StatusCode::OK, TEXT, "shutting down\n".to_owned())
        }
        (_, "/live" | "/ready" | "/metrics" | "/config_dump" | "/certs") => {
            (StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".into())
        }
        (_, "/shutdown" | "/explain" | "/explain/inbound") => {
            (StatusCode::METHOD_NOT_ALLOWED, TEXT, "use POST\n".into())
        }
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /live, /ready, /metrics, /config_dump, /certs, POST /explain, POST /explain/inbound or POST /shutdown\n"
                .into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn json_reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON request body of at most 64 KiB, or the 400 to answer.
async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    expected: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("reading the body: {e}")}).to_string(),
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("expected {expected}: {e}")}).to_string(),
        )
    })
}

/// `POST /explain` with a JSON [`crate::explain::Query`]: what the data path would do with such
/// a request now.
async fn explain(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let query: crate::explain::Query =
        match json_body(req, "{\"authority\", \"path\", \"method\", \"headers\"}").await {
            Ok(q) => q,
            Err(resp) => return resp,
        };
    let config = state.config.borrow().clone();
    let out = crate::explain::explain(&config, &state.balancers, &query);
    json_reply(StatusCode::OK, format!("{out:#}\n"))
}

/// `POST /explain/inbound` with a JSON [`crate::authz::explain::InboundQuery`]: what this
/// proxy's inbound policy would do with such a request now, and why.
async fn explain_inbound(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let query: crate::authz::explain::InboundQuery = match json_body(
        req,
        "{\"from\", \"ip\", \"port\", \"method\", \"path\", \"headers\"}",
    )
    .await
    {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    let config = state.config.borrow().clone();
    let out = crate::authz::explain::explain(
        &config,
        &state.limiter,
        state.app_port,
        &state.probe_paths,
        &query,
    );
    json_reply(StatusCode::OK, format!("{out:#}\n"))
}

fn not_ready(state: &AdminState) -> Option<&'static str> {
    if *state.shutdown.borrow() {
        return Some("draining");
    }
    if !state.identity.is_valid() {
        return Some("the certificate has expired");
    }
    if state.config.borrow().generation == 0 {
        return Some("no configuration from the control plane yet");
    }
    None
}

fn config_dump(config: &MeshConfig) -> String {
    let services: serde_json::Map<String, serde_json::Value> = config
        .services
        .iter()
        .map(|(name, held)| {
            let s = &held.value.service;
            let ports: Vec<_> = s
                .ports
                .iter()
                .map(|p| json!({"port": p.port, "name": p.name, "protocol": format!("{:?}", p.protocol).to_lowercase()}))
                .collect();
            let routes: Vec<_> = held
                .value
                .routes
                .iter()
                .map(|r| {
                    let rules: Vec<_> = r
                        .rules
                        .iter()
                        .map(|rule| {
                            let backends: Vec<_> = rule
                                .backends
                                .iter()
                                .map(|b| json!({"service": b.service.to_string(), "port": b.port, "weight": b.weight}))
                                .collect();
                            json!({"name": rule.name, "backends": backends})
                        })
                        .collect();
                    json!({"name": r.id.to_string(), "rules": rules})
                })
                .collect();
            (
                name.clone(),
                json!({"version": held.version, "ports": ports, "routes": routes}),
            )
        })
        .collect();
    let endpoints: serde_json::Map<String, serde_json::Value> = config
        .endpoints
        .iter()
        .map(|(name, held)| {
            let eps: Vec<_> = held
                .value
                .endpoints
                .iter()
                .map(|e| json!({"address": e.address.to_string(), "identity": e.identity.as_str(), "labels": e.labels, "zone": e.zone, "weight": e.weight, "ready": e.ready}))
                .collect();
            (name.clone(), json!({"version": held.version, "endpoints": eps}))
        })
        .collect();
    let bundle = config.trust_bundle.as_ref().map(|b| {
        json!({"version": b.version, "trust_domain": b.value.trust_domain().as_str(), "fingerprints": b.value.fingerprints()})
    });
    let dump = json!({
        "generation": config.generation,
        "system_version": config.system_version,
        "services": services,
        "endpoints": endpoints,
        "trust_bundle": bundle,
    });
    format!("{dump:#}\n")
}

fn certs(identity: &Identity) -> String {
    let svid = identity.svid();
    let bundle = identity.bundle();
    let not_after = svid
        .not_after
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let leaf = svid
        .certified
        .cert
        .first()
        .map(|c| weft_certs::pem::fingerprint_sha256(c.as_ref()));
    let body = json!({
        "identity": svid.id.as_str(),
        "not_after_unix": not_after,
        "not_after": humantime::format_rfc3339_seconds(svid.not_after).to_string(),
        "certificate_sha256": leaf,
        "trust_domain": bundle.trust_domain().as_str(),
        "bundle_sha256": bundle.fingerprints(),
        // Which CA issued it (the AuthorityKeyIdentifier): `weftctl ca rotate status` and the
        // control plane's `GET /ca` name CAs by the same key id.
        "issuer_key_id": identity.issuer_key_id().map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    });
    format!("{body:#}\n")
}
