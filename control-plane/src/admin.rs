//! The admin HTTP endpoint (localhost by default): `/live`, `/ready` (503 until the registry has
//! listed the store once), `/metrics`, and for a root rotation `GET /ca` (the CA directory
//! being served and the connected proxies per issuing CA, as JSON) and `POST /ca/reload`
//! (re-read the CA directory now, as SIGHUP does).
//!
//! In a cluster it listens on the pod IP so Prometheus can scrape it (`weftctl install`): then
//! only `/live`, `/ready` and `/metrics` answer clients that are not on loopback, and `/ca`
//! answers `kubectl port-forward` ([`weft_proto::admin`], the proxy's rule too), unless
//! `--admin-remote all` opens it to the network (a root rotation driven from another host).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::metrics::Metrics;
use weft_proto::admin;
use weft_proto::limits::ConnectionLimit;

/// Admin connections open at once (probes, scrapes, an operator); past it, closed and counted.
const ADMIN_MAX_CONNECTIONS: usize = 128;
use crate::registry::Published;
use crate::rotation::CaSource;

/// What the admin port answers clients that are not on loopback (`--admin-remote`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Remote {
    /// Only `/live`, `/ready` and `/metrics` (kubelet, Prometheus); 403 for the rest.
    #[default]
    Public,
    /// Everything, `/ca` and `POST /ca/reload` included (`weftctl ca rotate` from another host).
    All,
}

/// The 403's body for a remote client asking for more than `Remote::Public` gives it.
const FORBIDDEN: &[u8] = b"forbidden: only /live, /ready and /metrics answer clients outside this host; use kubectl port-forward, the host's loopback, or start the control plane with --admin-remote all\n";

/// Serves until `shutdown` flips.
pub async fn run(
    listener: TcpListener,
    remote_access: Remote,
    metrics: Arc<Metrics>,
    registry: watch::Receiver<Arc<Published>>,
    ca: Option<Arc<CaSource>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = ConnectionLimit::new(ADMIN_MAX_CONNECTIONS);
    let refused = metrics.refused_on("admin");
    loop {
        let (tcp, remote, slot) = tokio::select! {
            c = limit.accept(&listener, "admin", Some(&refused)) => c,
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        let registry = registry.clone();
        let ca = ca.clone();
        let remote_ip = remote.ip();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let synced = registry.borrow().synced;
                let ca = ca.clone();
                async move {
                    if let Some(forbidden) = refuse(remote_access, remote_ip, req.uri().path()) {
                        return Ok::<_, Infallible>(forbidden);
                    }
                    let resp = match (req.method(), req.uri().path(), ca) {
                        (&Method::POST, "/ca/reload", Some(ca)) => {
                            let result =
                                tokio::task::spawn_blocking(move || (ca.reload(true), ca)).await;
                            match result {
                                Ok((Ok(_), ca)) => json(StatusCode::OK, &ca.status_json()),
                                Ok((Err(e), ca)) => {
                                    let mut status = ca.status_json();
                                    status["error"] = e.into();
                                    json(StatusCode::UNPROCESSABLE_ENTITY, &status)
                                }
                                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                            }
                        }
                        (&Method::GET, "/ca", Some(ca)) => json(StatusCode::OK, &ca.status_json()),
                        (_, "/ca" | "/ca/reload", Some(_)) => text(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "GET /ca, POST /ca/reload\n".into(),
                        ),
                        _ => route(&req, &metrics, synced),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            // A client that never finishes its request headers does not hold a task forever.
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .max_header_size(16 * 1024);
            if let Err(e) = http.serve_connection(TokioIo::new(tcp), svc).await {
                debug!(%remote, error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// The 403 for a client the admin port does not answer at `path`, or `None`.
fn refuse(access: Remote, ip: std::net::IpAddr, path: &str) -> Option<Response<Full<Bytes>>> {
    if access == Remote::All || admin::allowed(ip, path) {
        return None;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(FORBIDDEN)));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    Some(resp)
}

fn route(req: &Request<Incoming>, metrics: &Metrics, synced: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/ready") if synced => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/ready") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the registry has not listed the store yet\n".to_owned(),
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (_, "/live" | "/ready" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /metrics or /ca\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{v:#}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_clients_get_health_and_metrics_only_unless_all() {
        let remote: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        for (access, ip, path, refused) in [
            (Remote::Public, remote, "/ca", true),
            (Remote::Public, remote, "/ca/reload", true),
            (Remote::Public, remote, "/metrics", false),
            (Remote::Public, remote, "/ready", false),
            (Remote::Public, local, "/ca", false),
            (Remote::Public, local, "/ca/reload", false),
            (Remote::All, remote, "/ca", false),
            (Remote::All, remote, "/ca/reload", false),
        ] {
            let r = refuse(access, ip, path);
            assert_eq!(r.is_some(), refused, "{access:?} {ip} {path}");
            if let Some(r) = r {
                assert_eq!(r.status(), StatusCode::FORBIDDEN);
            }
        }
    }
}
