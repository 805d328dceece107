//! The sidecar injector's admission webhook (`--injector-listen`): HTTPS (TLS 1.3) with the
//! serving certificate from `--injector-tls-dir` (`tls.crt`, `tls.key`, as a Kubernetes TLS
//! secret mounts them; re-read when they change), `POST /inject` answering `AdmissionReview`s
//! with [`weft_inject::review`], and `GET /live` / `GET /ready` for kubelet (the admin port
//! stays on localhost). The webhook never denies a pod; a body it cannot read gets a 400 that
//! says why, and the API server's `failurePolicy` decides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use weft_inject::{InjectConfig, Outcome, Skip};

use crate::metrics::{Metrics, ReviewLabels};
use weft_proto::limits::ConnectionLimit;

/// Webhook connections open at once (API servers call in parallel); past it, closed and counted.
const INJECTOR_MAX_CONNECTIONS: usize = 1024;

/// How often a handshake may look at the certificate files' modification times.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct InjectorConfig {
    pub listen: SocketAddr,
    /// `tls.crt` (the serving certificate, then its chain) and `tls.key`.
    pub tls_dir: PathBuf,
    pub inject: InjectConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error("injector TLS: {0}")]
    Tls(String),
    #[error("listen on {addr} (injector): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The serving certificate, re-read when `tls.crt` or `tls.key` changes.
#[derive(Debug)]
struct ReloadingCert {
    dir: PathBuf,
    state: Mutex<CertState>,
    failures: Counter,
}

#[derive(Debug)]
struct CertState {
    key: Arc<CertifiedKey>,
    mtimes: (SystemTime, SystemTime),
    checked: Instant,
    /// The files' times when they last failed to load: not tried again until they change.
    failed: Option<(SystemTime, SystemTime)>,
}

fn mtimes(dir: &Path) -> std::io::Result<(SystemTime, SystemTime)> {
    let m = |f: &str| std::fs::metadata(dir.join(f))?.modified();
    Ok((m("tls.crt")?, m("tls.key")?))
}

fn load(dir: &Path) -> Result<Arc<CertifiedKey>, String> {
    let read = |f: &str| {
        let path = dir.join(f);
        std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))
    };
    let certs =
        weft_certs::pem::certs_from_pem(&read("tls.crt")?, "tls.crt").map_err(|e| e.to_string())?;
    let key =
        weft_certs::pem::key_from_pem(&read("tls.key")?, "tls.key").map_err(|e| e.to_string())?;
    let provider = weft_certs::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("tls.key does not match tls.crt: {e}"))?;
    Ok(Arc::new(ck))
}

impl ReloadingCert {
    fn new(dir: &Path, failures: Counter) -> Result<Self, InjectorError> {
        let key = load(dir).map_err(InjectorError::Tls)?;
        let mtimes = mtimes(dir).map_err(|e| InjectorError::Tls(e.to_string()))?;
        Ok(Self {
            dir: dir.to_owned(),
            state: Mutex::new(CertState {
                key,
                mtimes,
                checked: Instant::now(),
                failed: None,
            }),
            failures,
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        // The state stays consistent across a panic (each field is replaced whole).
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            match mtimes(&self.dir) {
                Ok(m) if m != s.mtimes && Some(m) != s.failed => match load(&self.dir) {
                    Ok(key) => {
                        info!(dir = %self.dir.display(), "injector serving certificate reloaded");
                        s.key = key;
                        s.mtimes = m;
                    }
                    Err(e) => {
                        // A secret update writes both files; the next change is tried again.
                        s.failed = Some(m);
                        self.failures.inc();
                        warn!(error = %e, "injector serving certificate changed but does not load; keeping the last good one");
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "injector serving certificate files unreadable; keeping the last good one")
                }
            }
        }
        s.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The running webhook.
#[derive(Debug)]
pub struct Injector {
    pub addr: SocketAddr,
}

impl Injector {
    /// Loads the serving certificate (a missing or bad one fails the start, naming the file),
    /// binds, and serves until `shutdown` flips.
    pub async fn start(
        config: InjectorConfig,
        metrics: &Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, InjectorError> {
        let resolver = Arc::new(ReloadingCert::new(
            &config.tls_dir,
            metrics.injector_tls_reload_failures.clone(),
        )?);
        let mut tls = rustls::ServerConfig::builder_with_provider(weft_certs::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| InjectorError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| InjectorError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| InjectorError::Listen {
                addr: config.listen,
                source,
            })?;
        info!(%addr, "sidecar injector listening (POST /inject)");
        let state = Arc::new(State {
            inject: config.inject,
            reviews: metrics.injector_reviews.clone(),
            refused: metrics.refused_on("injector"),
        });
        tokio::spawn(serve(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            state,
            shutdown,
        ));
        Ok(Self { addr })
    }
}

#[derive(Debug)]
struct State {
    inject: InjectConfig,
    reviews: Family<ReviewLabels, Counter>,
    /// `connections_refused_total{listener="injector"}`.
    refused: Counter,
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = ConnectionLimit::new(INJECTOR_MAX_CONNECTIONS);
    loop {
        let (tcp, remote, slot) = tokio::select! {
            c = limit.accept(&listener, "injector", Some(&state.refused)) => c,
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%remote, error = %e, "injector TLS handshake failed"),
                Err(_) => return debug!(%remote, "injector TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_header_size(16 * 1024);
            if let Err(e) = http.serve_connection(TokioIo::new(tls), svc).await {
                debug!(%remote, error = %e, "injector connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn skip_reason(s: &Skip) -> &'static str {
    match s {
        Skip::NotAWorkload => "not-a-workload",
        Skip::Disabled => "disabled",
        Skip::InvalidLabel(_) => "invalid-label",
        Skip::HostNetwork => "host-network",
        Skip::OtherProxy { .. } => "other-proxy",
        Skip::ControlPlaneNamespace(_) => "control-plane-namespace",
        Skip::NameTaken(_) => "name-taken",
        Skip::Malformed(_) => "malformed",
    }
}

async fn handle(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live" | "/ready") => return reply(StatusCode::OK, TEXT, b"ok\n".to_vec()),
        (&Method::POST, weft_inject::names::INJECTOR_PATH) => {}
        (_, weft_inject::names::INJECTOR_PATH) => {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, b"use POST\n".to_vec());
        }
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                TEXT,
                b"not found: POST /inject, GET /live, GET /ready\n".to_vec(),
            );
        }
    }
    let invalid = |why: String| {
        state
            .reviews
            .get_or_create(&ReviewLabels {
                outcome: "invalid",
                reason: "",
            })
            .inc();
        warn!(error = %why, "injector: a review it cannot answer");
        reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!("{why}\n").into_bytes(),
        )
    };
    let body = match Limited::new(req.into_body(), weft_inject::review::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return invalid(format!(
                "the request body could not be read (at most {} bytes): {e}",
                weft_inject::review::MAX_BODY
            ));
        }
    };
    let reviewed = match weft_inject::review::review(&body, &state.inject) {
        Ok(r) => r,
        Err(e) => return invalid(format!("not an AdmissionReview this injector answers: {e}")),
    };
    let (outcome, reason) = match &reviewed.report.outcome {
        Outcome::Injected => ("injected", ""),
        Outcome::Skipped(s) => ("skipped", skip_reason(s)),
        _ => ("unchanged", ""),
    };
    state
        .reviews
        .get_or_create(&ReviewLabels { outcome, reason })
        .inc();
    info!(report = %reviewed.report, "admission review");
    match serde_json::to_vec(&reviewed.response) {
        Ok(json) => reply(StatusCode::OK, "application/json", json),
        Err(e) => invalid(format!("encode the response: {e}")),
    }
}
