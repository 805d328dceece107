//! `--jwks-url` (from the k8s-install branch, adapted): the control plane fetches the cluster's service-account keys over HTTPS (as
//! from `https://kubernetes.default.svc/openid/v1/jwks`, verified with `--jwks-ca`, with the
//! pod's own token as bearer), then a proxy-style Certify with a token signed by that key
//! succeeds; a rotated key is picked up when a token names it; a failing server leaves the
//! last good keys in place.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use weft_tests::k8s::ServiceAccountKey;
use weft_tests::{ControlPlaneProcess, TestCa, certify, poll};

const TD: &str = "mesh.test";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const BEARER: &str = "the-control-planes-own-sa-token";

/// What the fake API server serves: a JWKS body (or a 500 when `None`), and every
/// Authorization header it saw.
#[derive(Default)]
struct ApiState {
    jwks: Option<String>,
    seen_auth: Vec<String>,
}

/// An HTTPS server on 127.0.0.1:0 with an rcgen certificate for `localhost`; returns its
/// port and the CA file that verifies it.
async fn api_server(state: Arc<Mutex<ApiState>>, dir: &std::path::Path) -> u16 {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("api-ca.crt"), cert.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(weft_certs::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let state = state.clone();
                    async move {
                        let mut s = state.lock().unwrap();
                        if let Some(a) = req.headers().get("authorization") {
                            s.seen_auth.push(a.to_str().unwrap().to_owned());
                        }
                        let (status, body) = match (&s.jwks, req.uri().path()) {
                            (Some(j), "/openid/v1/jwks") => (200, j.clone()),
                            (None, _) => (500, "down".into()),
                            _ => (404, "not found".into()),
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_fetched_jwks_attests_service_account_tokens_and_follows_rotation() {
    let ca = TestCa::init(TD).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = ServiceAccountKey::new("k1");
    let state = Arc::new(Mutex::new(ApiState {
        jwks: Some(ServiceAccountKey::jwks(&[&first])),
        ..ApiState::default()
    }));
    let port = api_server(state.clone(), dir.path()).await;
    std::fs::write(dir.path().join("token"), format!("{BEARER}\n")).unwrap();
    let url = format!("https://localhost:{port}/openid/v1/jwks");
    let cp = ControlPlaneProcess::start(
        &ca.path(),
        &[
            "--jwks-url",
            &url,
            "--jwks-ca",
            dir.path().join("api-ca.crt").to_str().unwrap(),
            "--jwks-token-file",
            dir.path().join("token").to_str().unwrap(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            "weft",
        ],
    )
    .await
    .unwrap();
    cp.wait_for_log("Kubernetes JWKS loaded").await.unwrap();
    assert_eq!(
        state.lock().unwrap().seen_auth,
        vec![format!("Bearer {BEARER}")]
    );

    // A proxy-style Certify with a token signed by the served key.
    let web = "spiffe://mesh.test/ns/default/sa/web";
    let got = certify(
        &cp.grpc_addr,
        ca.bundle(),
        web,
        &first.token(ISSUER, "default", "web"),
    )
    .await
    .unwrap();
    assert_eq!(got.svid.id.as_str(), web);

    // The API server rotates its key: a token naming the new key id triggers a fetch, and a
    // retry (as a proxy's backoff would) succeeds.
    let second = ServiceAccountKey::new("k2");
    state.lock().unwrap().jwks = Some(ServiceAccountKey::jwks(&[&first, &second]));
    let token = second.token(ISSUER, "default", "web");
    let err = certify(&cp.grpc_addr, ca.bundle(), web, &token)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key \"k2\""), "{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match certify(&cp.grpc_addr, ca.bundle(), web, &token).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("rotated key never accepted: {e}\n{}", cp.log()),
        }
    }

    // The server fails: the last good keys stay, with a warning.
    state.lock().unwrap().jwks = None;
    let third = ServiceAccountKey::new("k3");
    let _ = certify(
        &cp.grpc_addr,
        ca.bundle(),
        web,
        &third.token(ISSUER, "default", "web"),
    )
    .await;
    poll(Duration::from_secs(20), || {
        cp.log()
            .contains("keeping the last good keys")
            .then_some(())
    })
    .await
    .unwrap();
    certify(
        &cp.grpc_addr,
        ca.bundle(),
        web,
        &first.token(ISSUER, "default", "web"),
    )
    .await
    .unwrap();
    // Every fetch carried the bearer token read from the file.
    assert!(
        state
            .lock()
            .unwrap()
            .seen_auth
            .iter()
            .all(|a| a == &format!("Bearer {BEARER}"))
    );
}
