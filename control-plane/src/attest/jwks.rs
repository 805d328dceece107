//! Fetching the cluster's JWKS from the API server (`--jwks-url`), so service-account tokens
//! can be verified without copying keys around: over HTTPS verified by the pod's
//! service-account CA, with the pod's own token as the bearer (the install binds the control
//! plane's account to `system:service-account-issuer-discovery`). Fetched at start, again every
//! [`REFRESH`], and soon after a token names a key it does not know (the cluster rotated its
//! signing key), at most once per [`MIN_GAP`]. A failed fetch keeps the last good keys.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::{info, warn};

use super::k8s::{JwksSource, K8sVerifier};

/// How often a good JWKS is fetched again.
pub const REFRESH: Duration = Duration::from_secs(600);
/// The least time between two fetches.
pub const MIN_GAP: Duration = Duration::from_secs(15);
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 1024 * 1024;

/// One GET of `url`; the body.
pub async fn fetch(url: &str, ca: &Path, token_file: Option<&Path>) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?}: only https URLs"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?}: no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in weft_certs::pem::certs_from_pem(&pem, &ca.display().to_string())
        .map_err(|e| e.to_string())?
    {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(weft_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let token = match token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("read {}: {e}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, host.as_str())
            .header(
                hyper::header::ACCEPT,
                "application/jwk-set+json, application/json",
            );
        if let Some(t) = &token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no answer within {TIMEOUT:?}")))
}

/// Keeps `verifier`'s keys fetched from its URL until `shutdown` flips (returns at once for a
/// file source).
pub async fn refresh(verifier: Arc<K8sVerifier>, mut shutdown: watch::Receiver<bool>) {
    let JwksSource::Url {
        url,
        ca,
        token_file,
    } = verifier.config().jwks.clone()
    else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let fetched_at = tokio::time::Instant::now();
        let wait = match fetch(&url, &ca, token_file.as_deref()).await {
            Ok(body) => match verifier.replace_keys(&body) {
                Ok(n) => {
                    if failures > 0 || n > 0 {
                        info!(%url, keys = n, "Kubernetes JWKS loaded");
                    }
                    failures = 0;
                    REFRESH
                }
                Err(e) => {
                    failures += 1;
                    warn!(%url, error = %e, "Kubernetes JWKS not usable; keeping the last good keys");
                    MIN_GAP
                }
            },
            Err(e) => {
                failures += 1;
                warn!(error = %e, "Kubernetes JWKS fetch failed; keeping the last good keys");
                MIN_GAP
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = verifier.unknown_key.notified() => {
                // A token named a key we lack: fetch now, but not more often than MIN_GAP.
                tokio::select! {
                    () = tokio::time::sleep_until(fetched_at + MIN_GAP) => {}
                    _ = shutdown.changed() => return,
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
