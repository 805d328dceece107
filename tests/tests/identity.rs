//! The certificate service end to end: real binaries for the main path, an in-process control
//! plane on 127.0.0.1:0 for each refusal.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use weft_certs::tls::{FixedCert, client_config, server_config};
use weft_certs::verify::peer_spiffe_id;
use weft_certs::{ExpectedPeer, SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use weft_control_plane::attest::{JoinClaims, K8sConfig, TokenKey};
use weft_control_plane::client::{self, ClientError};
use weft_control_plane::{Config, ControlPlane, control_plane_id};
use weft_proto::identity::v1::CertifyRequest;
use weft_proto::identity::v1::identity_client::IdentityClient;
use weft_tests::{ControlPlaneProcess, TestCa, certify, http_get, metric_value, weftctl};

const TD: &str = "mesh.test";
const WEB: &str = "spiffe://mesh.test/ns/default/sa/web";
const API: &str = "spiffe://mesh.test/ns/default/sa/api";
/// The audience of join tokens for TD: the control plane's identity.
const JOIN_AUD: &str = "spiffe://mesh.test/ns/weft-system/sa/weft-control-plane";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Control plane (real binary) + two workloads with join tokens minted by `weftctl` + an mTLS
/// echo between them where each side sees the other's SPIFFE ID.
#[tokio::test]
async fn two_workloads_get_svids_and_talk_mtls() {
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), &[]).await.unwrap();
    cp.wait_for_log("identity=spiffe://mesh.test/ns/weft-system/sa/weft-control-plane")
        .await
        .unwrap();

    let web = certify(
        &cp.grpc_addr,
        ca.bundle(),
        WEB,
        &ca.token(WEB, "10m").await.unwrap(),
    )
    .await
    .unwrap();
    let api = certify(
        &cp.grpc_addr,
        ca.bundle(),
        API,
        &ca.token(API, "10m").await.unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(web.bundle, ca.bundle().roots());

    let server_cfg = server_config(
        ca.bundle(),
        Arc::new(FixedCert(api.svid.certified.clone())),
        true,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg))
            .accept(tcp)
            .await
            .unwrap();
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates()).unwrap();
        let mut buf = vec![0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(peer.as_str().as_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
        peer
    });
    let client_cfg = client_config(
        ca.bundle(),
        ExpectedPeer::One(id(API)),
        Some(web.svid.certified.clone()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("api.default").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        peer_spiffe_id(tls.get_ref().1.peer_certificates()).unwrap(),
        id(API)
    );
    tls.write_all(b"hello").await.unwrap();
    let mut echoed = String::new();
    tls.read_to_string(&mut echoed).await.unwrap();
    assert_eq!(echoed, WEB, "the server saw the client's SPIFFE ID");
    assert_eq!(server.await.unwrap(), id(WEB));

    cp.wait_for_log(
        "issued SVID identity=spiffe://mesh.test/ns/default/sa/api attestation=join_token",
    )
    .await
    .unwrap();
    // A refusal (token for web, CSR for api) is logged with its reason, and still no token.
    let web_token = ca.token(WEB, "10m").await.unwrap();
    let err = certify(&cp.grpc_addr, ca.bundle(), API, &web_token)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("attested as {WEB}")), "{err}");
    cp.wait_for_log("refused Certify").await.unwrap();
    let payload = web_token.split('.').nth(1).unwrap();
    assert!(
        !cp.log().contains(payload),
        "tokens are never logged:\n{}",
        cp.log()
    );
}

/// The README's main command: `weftctl cert request` writes an SVID that `cert inspect` reads.
#[tokio::test]
async fn weftctl_cert_request_and_inspect() {
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), &["--svid-ttl", "2h"])
        .await
        .unwrap();
    let token_file = ca.dir.path().join("web.token");
    std::fs::write(&token_file, ca.token(WEB, "5m").await.unwrap()).unwrap();
    let out = ca.dir.path().join("web");
    let (addr, token_path, out_path) = (cp.grpc_addr.clone(), token_file.clone(), out.clone());
    let request = move |bundle: std::path::PathBuf| {
        let (addr, token_path, out_path) = (addr.clone(), token_path.clone(), out_path.clone());
        async move {
            weftctl(&[
                "cert",
                "request",
                "--control-plane",
                &addr,
                "--trust-bundle",
                bundle.to_str().unwrap(),
                "--token-file",
                token_path.to_str().unwrap(),
                "--identity",
                WEB,
                "--out",
                out_path.to_str().unwrap(),
            ])
            .await
        }
    };
    let said = request(ca.bundle_file()).await.unwrap();
    assert!(said.starts_with(&format!("Issued {WEB}")), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("svid.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the key file is private");

    let inspected = weftctl(&["cert", "inspect", out.join("svid.crt").to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        inspected.contains(&format!("SPIFFE ID:   {WEB}")),
        "{inspected}"
    );
    assert!(
        inspected.contains("issuer:      O=Weft, CN=Weft root CA for mesh.test"),
        "{inspected}"
    );
    assert!(
        inspected.contains("(in 1h 59m") || inspected.contains("(in 2h"),
        "--svid-ttl caps the lifetime: {inspected}"
    );

    // A wrong trust bundle: the control plane cannot be verified, so nothing is sent.
    let other = TestCa::init(TD).await.unwrap();
    let err = request(other.bundle_file()).await.unwrap_err().to_string();
    assert!(
        err.contains("not issued by a root in the trust bundle"),
        "{err}"
    );
}

/// An in-process control plane over a fresh CA.
struct Mesh {
    ca: TestCa,
    cp: ControlPlane,
}

impl Mesh {
    async fn start(k8s: Option<K8sConfig>) -> Self {
        Self::start_in(TD, k8s).await
    }

    async fn start_in(trust_domain: &str, k8s: Option<K8sConfig>) -> Self {
        let ca = TestCa::init(trust_domain).await.unwrap();
        let cp = ControlPlane::start(Config {
            ca_dir: ca.path(),
            trust_domain: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            svid_ttl: Duration::from_secs(3600),
            server_names: vec!["localhost".into()],
            k8s,
            store: weft_control_plane::StoreConfig::Memory { snapshot: None },
            admin_identities: vec![],
            registration_ttl: Duration::from_secs(20),
            max_connections: weft_control_plane::transport::MAX_CONNECTIONS,
            admin_remote: Default::default(),
        })
        .await
        .unwrap();
        Self { ca, cp }
    }

    fn addr(&self) -> String {
        self.cp.grpc_addr().to_string()
    }

    fn token_key(&self) -> TokenKey {
        TokenKey::load(&self.ca.path().join("token.key")).unwrap()
    }

    async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        let ch = client::connect(
            &self.addr(),
            self.ca.bundle(),
            control_plane_id(&self.ca.trust_domain),
            None,
        )
        .await
        .unwrap();
        IdentityClient::new(ch)
    }

    /// Sends a raw Certify request and returns the status it was refused with.
    async fn refuse(&self, req: CertifyRequest) -> tonic::Status {
        self.client()
            .await
            .certify(req)
            .await
            .expect_err("request should be refused")
    }

    fn refused(&self, code: &str, reason: &str) -> f64 {
        let text = self.cp.metrics().encode();
        metric_value(
            &text,
            &format!("certify_refused_total{{code=\"{code}\",reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    }
}

/// A Certify request with the default TTL.
fn req(token: impl Into<String>, csr_der: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        token: token.into(),
        csr_der,
        requested_ttl: None,
    }
}

fn csr(who: &str) -> Vec<u8> {
    WorkloadKey::generate().unwrap().csr(&id(who)).unwrap()
}

fn claims(sub: &str, aud: &str, exp_from_now: i64) -> JoinClaims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    JoinClaims {
        iss: "weft".into(),
        sub: sub.into(),
        aud: aud.into(),
        exp: (now + exp_from_now) as u64,
        iat: now as u64,
        nbf: (now - 60) as u64,
        jti: "test".into(),
    }
}

fn assert_status(status: &tonic::Status, code: Code, text: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(text),
        "message {:?} should contain {text:?}",
        status.message()
    );
}

#[tokio::test]
async fn refuses_expired_join_token() {
    let mesh = Mesh::start(None).await;
    let token = mesh
        .token_key()
        .sign(&claims(WEB, JOIN_AUD, -3600))
        .unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "token has expired");
    assert_eq!(mesh.refused("unauthenticated", "token_expired"), 1.0);
}

/// A join token (signed by our key) naming an identity in another trust domain is refused at
/// attestation, before the CA's own trust-domain check.
#[tokio::test]
async fn refuses_join_token_for_a_foreign_trust_domain() {
    let mesh = Mesh::start(None).await;
    let foreign = "spiffe://other.test/ns/default/sa/web";
    let token = mesh
        .token_key()
        .sign(&claims(foreign, JOIN_AUD, 600))
        .unwrap();
    let status = mesh.refuse(req(token, csr(foreign))).await;
    assert_status(
        &status,
        Code::Unauthenticated,
        "is not in trust domain mesh.test",
    );
    assert_eq!(mesh.refused("unauthenticated", "token_claims"), 1.0);
}

/// The control plane's own identity is never issued through Certify (whoever held it could pose
/// as the control plane), and weftctl will not mint a token for it.
#[tokio::test]
async fn refuses_the_reserved_control_plane_identity() {
    let mesh = Mesh::start(None).await;
    let cp_id = "spiffe://mesh.test/ns/weft-system/sa/weft-control-plane";
    let token = mesh
        .token_key()
        .sign(&claims(cp_id, JOIN_AUD, 600))
        .unwrap();
    let status = mesh.refuse(req(token, csr(cp_id))).await;
    assert_status(
        &status,
        Code::PermissionDenied,
        "reserved for the control plane",
    );
    assert_eq!(mesh.refused("permission_denied", "reserved_identity"), 1.0);
    let err = mesh.ca.token(cp_id, "5m").await.unwrap_err().to_string();
    assert!(err.contains("reserved for the control plane"), "{err}");
}

#[tokio::test]
async fn refuses_join_token_not_yet_valid() {
    let mesh = Mesh::start(None).await;
    let mut c = claims(WEB, JOIN_AUD, 7200);
    c.nbf += 3600;
    let token = mesh.token_key().sign(&c).unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "not valid yet");
    assert_eq!(mesh.refused("unauthenticated", "token_not_yet_valid"), 1.0);
}

#[tokio::test]
async fn refuses_join_token_for_another_audience() {
    let mesh = Mesh::start(None).await;
    let token = mesh
        .token_key()
        .sign(&claims(
            WEB,
            "spiffe://other.test/ns/weft-system/sa/weft-control-plane",
            600,
        ))
        .unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "audience");
    assert_eq!(mesh.refused("unauthenticated", "token_audience"), 1.0);
}

#[tokio::test]
async fn refuses_join_token_with_a_forged_signature() {
    let mesh = Mesh::start(None).await;
    // Right key id, wrong key: what an attacker who saw a token would try.
    let real = mesh.token_key();
    let forger = TokenKey::generate().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(real.kid().to_owned());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(forger.to_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims(WEB, JOIN_AUD, 600), &key).unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "signature does not verify");
    assert_eq!(mesh.refused("unauthenticated", "token_signature"), 1.0);

    // Algorithm confusion: HS256 "signed" with the public key as the HMAC secret, or alg none.
    let public = TokenKey::load(&mesh.ca.path().join("token.key")).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(public.kid().to_owned());
    let secret = jsonwebtoken::EncodingKey::from_secret(public.kid().as_bytes());
    let token = jsonwebtoken::encode(&hs, &claims(WEB, JOIN_AUD, 600), &secret).unwrap();
    let status = mesh.refuse(req(token.clone(), csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "token is malformed");
    let mut parts: Vec<&str> = token.split('.').collect();
    let none = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, public.kid()));
    parts[0] = &none;
    parts[2] = "";
    let status = mesh.refuse(req(parts.join("."), csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "token is malformed");
}

#[tokio::test]
async fn refuses_garbage_unknown_and_missing_tokens() {
    let mesh = Mesh::start(None).await;
    let status = mesh.refuse(req("not-a-jwt", csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "token is malformed");
    // A token from another mesh's CA: unknown key id.
    let other = TestCa::init(TD).await.unwrap();
    let token = other.token(WEB, "5m").await.unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "signed by unknown key");
    let status = mesh.refuse(req("", csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "no token was presented");
    assert_eq!(mesh.refused("unauthenticated", "token_malformed"), 1.0);
    assert_eq!(mesh.refused("unauthenticated", "token_unknown_key"), 1.0);
    assert_eq!(mesh.refused("unauthenticated", "token_missing"), 1.0);
}

#[tokio::test]
async fn refuses_csr_for_another_identity() {
    let mesh = Mesh::start(None).await;
    let token = mesh.ca.token(WEB, "5m").await.unwrap();
    let status = mesh.refuse(req(token, csr(API))).await;
    assert_status(
        &status,
        Code::PermissionDenied,
        &format!("CSR asks for {API}, but the caller is attested as {WEB}"),
    );
    assert_eq!(mesh.refused("permission_denied", "identity_mismatch"), 1.0);
}

#[tokio::test]
async fn refuses_malformed_and_badly_signed_csrs() {
    let mesh = Mesh::start(None).await;
    let token = mesh.ca.token(WEB, "5m").await.unwrap();
    let status = mesh
        .refuse(req(token.clone(), b"\x30\x03\x02\x01".to_vec()))
        .await;
    assert_status(&status, Code::InvalidArgument, "CSR is not valid DER");
    let status = mesh.refuse(req(token.clone(), vec![])).await;
    assert_status(&status, Code::InvalidArgument, "csr_der is empty");

    let mut bad_sig = csr(WEB);
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 1;
    let status = mesh.refuse(req(token, bad_sig)).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "CSR self-signature does not verify",
    );
    assert_eq!(mesh.refused("invalid_argument", "csr_malformed"), 2.0);
    assert_eq!(mesh.refused("invalid_argument", "csr_signature"), 1.0);
}

fn fixture_csr(name: &str) -> Vec<u8> {
    let path = format!("{}/../certs/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    CertificateSigningRequestDer::from_pem_file(&path)
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn refuses_weak_rsa_and_unsupported_algorithms() {
    // The OpenSSL fixtures ask for spiffe://td/ns/a/sa/b, so the token is for that identity in a
    // CA of trust domain "td".
    let mesh = Mesh::start_in("td", None).await;
    let token = mesh.ca.token("spiffe://td/ns/a/sa/b", "5m").await.unwrap();
    let status = mesh
        .refuse(req(token.clone(), fixture_csr("rsa1024.csr.pem")))
        .await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "RSA key is 1024 bits; at least 2048",
    );
    let status = mesh
        .refuse(req(token.clone(), fixture_csr("rsa2048-sha1.csr.pem")))
        .await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "signature algorithm 1.2.840.113549.1.1.5 is not supported",
    );
    assert_eq!(mesh.refused("invalid_argument", "csr_weak_key"), 1.0);
    assert_eq!(mesh.refused("invalid_argument", "csr_algorithm"), 1.0);
    // And an ordinary OpenSSL RSA-2048 CSR is signed.
    let ok = mesh
        .client()
        .await
        .certify(req(token, fixture_csr("rsa2048-sha256.csr.pem")))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn refuses_negative_ttl_and_honours_a_short_one() {
    let mesh = Mesh::start(None).await;
    let token = mesh.ca.token(WEB, "5m").await.unwrap();
    let neg = prost_types::Duration {
        seconds: -5,
        nanos: 0,
    };
    let status = mesh
        .refuse(CertifyRequest {
            token: token.clone(),
            csr_der: csr(WEB),
            requested_ttl: Some(neg),
        })
        .await;
    assert_status(&status, Code::InvalidArgument, "requested_ttl is negative");
    let huge = prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    };
    let ok = mesh
        .client()
        .await
        .certify(CertifyRequest {
            token: token.clone(),
            csr_der: csr(WEB),
            requested_ttl: Some(huge),
        })
        .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let not_after = ok
        .expect("a huge TTL is capped, not an error")
        .into_inner()
        .not_after
        .unwrap()
        .seconds;
    assert!(
        not_after <= now + 3601,
        "capped by --svid-ttl (1h): {} s",
        not_after - now
    );
    let bad = prost_types::Duration {
        seconds: 60,
        nanos: 1_000_000_000,
    };
    let status = mesh
        .refuse(CertifyRequest {
            token: token.clone(),
            csr_der: csr(WEB),
            requested_ttl: Some(bad),
        })
        .await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "nanos 1000000000 is out of range",
    );

    let resp = mesh
        .client()
        .await
        .certify(CertifyRequest {
            token,
            csr_der: csr(WEB),
            requested_ttl: Some(prost_types::Duration {
                seconds: 120,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let left = resp.not_after.unwrap().seconds - now;
    assert!((100..=121).contains(&left), "requested 120 s, got {left} s");
}

/// Renewal: no token, but the caller's current SVID on the connection. It renews only itself.
#[tokio::test]
async fn renews_with_the_current_svid_and_only_for_itself() {
    let mesh = Mesh::start(None).await;
    let first = certify(
        &mesh.addr(),
        mesh.ca.bundle(),
        WEB,
        &mesh.ca.token(WEB, "5m").await.unwrap(),
    )
    .await
    .unwrap();
    let cp_id = control_plane_id(&mesh.ca.trust_domain);
    let ch = client::connect(
        &mesh.addr(),
        mesh.ca.bundle(),
        cp_id.clone(),
        Some(first.svid.certified.clone()),
    )
    .await
    .unwrap();
    let renewed = client::certify(
        ch,
        &WorkloadKey::generate().unwrap(),
        Some(&id(WEB)),
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(renewed.svid.id, id(WEB));
    assert_ne!(renewed.chain[0], first.chain[0]);

    let ch = client::connect(
        &mesh.addr(),
        mesh.ca.bundle(),
        cp_id,
        Some(first.svid.certified.clone()),
    )
    .await
    .unwrap();
    let err = client::certify(
        ch,
        &WorkloadKey::generate().unwrap(),
        Some(&id(API)),
        "",
        None,
    )
    .await
    .unwrap_err();
    match err {
        ClientError::Certify(s) => assert_status(
            &s,
            Code::PermissionDenied,
            "attested as spiffe://mesh.test/ns/default/sa/web",
        ),
        other => panic!("{other}"),
    }
    let text = mesh.cp.metrics().encode();
    assert_eq!(
        metric_value(&text, "certify_issued_total{attestation=\"renewal\"}"),
        Some(1.0),
        "{text}"
    );
}

/// The serving certificate is an SVID for the control plane identity, and carries DNS SANs so
/// that any standard gRPC client can verify it by name.
#[tokio::test]
async fn serving_certificate_verifies_by_spiffe_id_and_by_dns_name() {
    let mesh = Mesh::start(None).await;
    // By SPIFFE ID: a client expecting another identity is refused.
    let err = client::connect(&mesh.addr(), mesh.ca.bundle(), id(WEB), None).await;
    // The channel connects eagerly, so the handshake failure is the connect error; its source
    // chain holds the verifier's reason.
    let err = format!(
        "{:?}",
        err.expect_err("must not connect to an unexpected server")
    );
    assert!(
        err.contains("UnexpectedPeer") && err.contains("weft-control-plane"),
        "{err}"
    );

    // By DNS name, with rustls's stock WebPKI verifier and the bundle as roots.
    let mut roots = rustls::RootCertStore::empty();
    for r in mesh.ca.bundle().roots() {
        roots.add(r.clone()).unwrap();
    }
    let stock = rustls::ClientConfig::builder_with_provider(weft_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stock = Arc::new(stock);
    let tcp = tokio::net::TcpStream::connect(mesh.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(stock.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(
        weft_certs::verify::spiffe_id_of(leaf).unwrap().as_str(),
        "spiffe://mesh.test/ns/weft-system/sa/weft-control-plane"
    );
    let tcp = tokio::net::TcpStream::connect(mesh.addr()).await.unwrap();
    let wrong = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
    assert!(
        tokio_rustls::TlsConnector::from(stock)
            .connect(wrong, tcp)
            .await
            .is_err()
    );
}

/// Admin endpoint: metrics and health over HTTP, on the address it was given.
#[tokio::test]
async fn admin_serves_metrics_and_health() {
    let mesh = Mesh::start(None).await;
    let _ = certify(
        &mesh.addr(),
        mesh.ca.bundle(),
        WEB,
        &mesh.ca.token(WEB, "5m").await.unwrap(),
    )
    .await
    .unwrap();
    let _ = certify(&mesh.addr(), mesh.ca.bundle(), WEB, "garbage")
        .await
        .unwrap_err();
    let admin = mesh.cp.admin_addr();
    assert!(admin.ip().is_loopback());
    let (status, body) = http_get(&admin.to_string(), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(&body, "certify_issued_total{attestation=\"join_token\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "certify_refused_total{code=\"unauthenticated\",reason=\"token_malformed\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        metric_value(&body, "serving_cert_expiration_timestamp_seconds").unwrap() > 0.0,
        "{body}"
    );
    assert_eq!(http_get(&admin.to_string(), "/ready").await.unwrap().0, 200);
    assert_eq!(http_get(&admin.to_string(), "/nope").await.unwrap().0, 404);
}

/// Kubernetes projected service-account tokens, verified offline against a JWKS.
struct K8sIssuer {
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    jwks_dir: tempfile::TempDir,
}

impl K8sIssuer {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw(); // 0x04 || x || y
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "cluster-key-1",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        let jwks_dir = tempfile::tempdir().unwrap();
        std::fs::write(jwks_dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        Self {
            key,
            alg: jsonwebtoken::Algorithm::ES256,
            jwks_dir,
        }
    }

    /// RS256 with a 2048-bit key: what kube-apiserver uses by default.
    fn new_rsa() -> Self {
        use x509_parser::prelude::FromDer;
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).unwrap();
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            panic!("not RSA")
        };
        let trim = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "cluster-key-1",
            "n": URL_SAFE_NO_PAD.encode(trim(rsa.modulus)), "e": URL_SAFE_NO_PAD.encode(trim(rsa.exponent)),
        }]});
        let jwks_dir = tempfile::tempdir().unwrap();
        std::fs::write(jwks_dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap();
        Self {
            key,
            alg: jsonwebtoken::Algorithm::RS256,
            jwks_dir,
        }
    }

    fn config(&self) -> K8sConfig {
        K8sConfig {
            jwks: weft_control_plane::attest::JwksSource::File(
                self.jwks_dir.path().join("jwks.json"),
            ),
            issuer: "https://kubernetes.default.svc".into(),
            audience: "weft".into(),
        }
    }

    fn token(
        &self,
        ns: &str,
        sa: &str,
        aud: &str,
        iss: &str,
        exp_from_now: i64,
        sub: Option<&str>,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "aud": [aud], "iss": iss, "exp": now + exp_from_now, "iat": now, "nbf": now,
            "sub": sub.map(str::to_owned).unwrap_or_else(|| format!("system:serviceaccount:{ns}:{sa}")),
            "kubernetes.io": {"namespace": ns, "pod": {"name": "web-7d4", "uid": "u1"}, "serviceaccount": {"name": sa, "uid": "u2"}},
        });
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some("cluster-key-1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

#[tokio::test]
async fn kubernetes_service_account_tokens() {
    let k8s = K8sIssuer::new();
    let mesh = Mesh::start(Some(k8s.config())).await;
    let iss = "https://kubernetes.default.svc";

    let ok = certify(
        &mesh.addr(),
        mesh.ca.bundle(),
        WEB,
        &k8s.token("default", "web", "weft", iss, 600, None),
    )
    .await
    .unwrap();
    assert_eq!(ok.svid.id, id(WEB));
    let text = mesh.cp.metrics().encode();
    assert_eq!(
        metric_value(&text, "certify_issued_total{attestation=\"kubernetes\"}"),
        Some(1.0),
        "{text}"
    );

    // The identity comes from the token, so asking for another service account is refused.
    let status = mesh
        .refuse(CertifyRequest {
            token: k8s.token("default", "web", "weft", iss, 600, None),
            csr_der: csr(API),
            requested_ttl: None,
        })
        .await;
    assert_status(
        &status,
        Code::PermissionDenied,
        "attested as spiffe://mesh.test/ns/default/sa/web",
    );

    let cases = [
        (
            k8s.token("default", "web", "weft", iss, -3600, None),
            "token has expired",
            "token_expired",
        ),
        (
            k8s.token("default", "web", "kube-apiserver", iss, 600, None),
            "audience",
            "token_audience",
        ),
        (
            k8s.token("default", "web", "weft", "https://evil.example", 600, None),
            "issuer is not trusted",
            "token_issuer",
        ),
        (
            k8s.token(
                "default",
                "web",
                "weft",
                iss,
                600,
                Some("system:serviceaccount:default:admin"),
            ),
            "does not match",
            "token_claims",
        ),
    ];
    for (token, text, reason) in cases {
        let status = mesh.refuse(req(token, csr(WEB))).await;
        assert_status(&status, Code::Unauthenticated, text);
        assert_eq!(mesh.refused("unauthenticated", reason), 1.0, "{reason}");
    }
    // A token signed by a key not in the JWKS.
    let stranger = K8sIssuer::new();
    let status = mesh
        .refuse(CertifyRequest {
            token: stranger.token("default", "web", "weft", iss, 600, None),
            csr_der: csr(WEB),
            requested_ttl: None,
        })
        .await;
    assert_status(&status, Code::Unauthenticated, "signature does not verify");

    // An unknown key id, and a token without the kubernetes.io claims (e.g. an OIDC ID token
    // from the same issuer).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bare = serde_json::json!({"aud": ["weft"], "iss": iss, "exp": now + 600, "sub": "system:serviceaccount:default:web"});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("rotated-away".into());
    let token = jsonwebtoken::encode(&header, &bare, &k8s.key).unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(
        &status,
        Code::Unauthenticated,
        "signed by unknown key \"rotated-away\"",
    );
    header.kid = Some("cluster-key-1".into());
    let token = jsonwebtoken::encode(&header, &bare, &k8s.key).unwrap();
    let status = mesh.refuse(req(token, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "kubernetes.io");
}

/// RS256 service-account tokens (the Kubernetes default) end to end.
/// Serves `jwks` at `GET /openid/v1/jwks` over HTTPS (a certificate for `localhost` from a CA
/// it returns), only to the bearer `token`; counts the requests it answered.
async fn api_server_jwks(
    jwks: String,
    token: &'static str,
) -> (u16, String, Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::new(ca, &ca_key))
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(weft_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, jwks, count) = (acceptor.clone(), jwks.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let ok = req.uri().path() == "/openid/v1/jwks"
                            && req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                == Some(&format!("Bearer {token}"));
                        let (status, body) = if ok {
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            (200, jwks.clone())
                        } else {
                            (401, "Unauthorized".to_owned())
                        };
                        async move {
                            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_pem, served)
}

/// In a cluster the JWKS comes from the API server: fetched over HTTPS verified by the
/// service-account CA, with the pod's own token as the bearer.
#[tokio::test]
async fn kubernetes_tokens_verified_against_a_jwks_fetched_from_the_api_server() {
    let k8s = K8sIssuer::new();
    let jwks = std::fs::read_to_string(k8s.jwks_dir.path().join("jwks.json")).unwrap();
    let (port, ca_pem, served) = api_server_jwks(jwks, "pod-token").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
    std::fs::write(dir.path().join("token"), "pod-token\n").unwrap();
    let mut config = k8s.config();
    config.jwks = weft_control_plane::attest::JwksSource::Url {
        url: format!("https://localhost:{port}/openid/v1/jwks"),
        ca: dir.path().join("ca.crt"),
        token_file: Some(dir.path().join("token")),
    };
    let mesh = Mesh::start(Some(config)).await;
    let iss = "https://kubernetes.default.svc";
    let token = k8s.token("default", "web", "weft", iss, 600, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ok = loop {
        match certify(&mesh.addr(), mesh.ca.bundle(), WEB, &token).await {
            Ok(ok) => break ok,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "never verified with the fetched JWKS: {e:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ok.svid.id, id(WEB));
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // Without the bearer the API server refuses, and so no key is ever known.
    let (port, ca_pem, served) = api_server_jwks(
        std::fs::read_to_string(k8s.jwks_dir.path().join("jwks.json")).unwrap(),
        "another-token",
    )
    .await;
    std::fs::write(dir.path().join("ca2.crt"), &ca_pem).unwrap();
    let mut config = k8s.config();
    config.jwks = weft_control_plane::attest::JwksSource::Url {
        url: format!("https://localhost:{port}/openid/v1/jwks"),
        ca: dir.path().join("ca2.crt"),
        token_file: Some(dir.path().join("token")),
    };
    let refused = Mesh::start(Some(config)).await;
    let status = refused.refuse(req(token.clone(), csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "cluster-key-1");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn kubernetes_rs256_tokens() {
    let k8s = K8sIssuer::new_rsa();
    let mesh = Mesh::start(Some(k8s.config())).await;
    let iss = "https://kubernetes.default.svc";
    let token = k8s.token("default", "web", "weft", iss, 600, None);
    let ok = certify(&mesh.addr(), mesh.ca.bundle(), WEB, &token)
        .await
        .unwrap();
    assert_eq!(ok.svid.id, id(WEB));
    let expired = k8s.token("default", "web", "weft", iss, -3600, None);
    let status = mesh.refuse(req(expired, csr(WEB))).await;
    assert_status(&status, Code::Unauthenticated, "token has expired");
}

/// An intermediate made outside Weft (here with rcgen) serves as the control plane's CA: SVIDs
/// come back as leaf + intermediate and verify against the root alone.
#[tokio::test]
async fn external_intermediate_as_the_ca() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.distinguished_name
        .push(DnType::CommonName, "Corp Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut int = CertificateParams::default();
    int.distinguished_name
        .push(DnType::CommonName, "Weft intermediate");
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let int_cert = int
        .signed_by(&int_key, &Issuer::new(root, &root_key))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), int_cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), root_cert.pem()).unwrap();
    let token_key = TokenKey::generate().unwrap();
    std::fs::write(dir.path().join("token.key"), token_key.to_pem()).unwrap();

    // No spiffe:// SAN on this intermediate: the trust domain must be given.
    let cp = ControlPlaneProcess::start(dir.path(), &["--trust-domain", "corp.test"])
        .await
        .unwrap();
    let bundle = Arc::new(
        TrustBundle::new(
            TrustDomain::parse("corp.test").unwrap(),
            vec![root_cert.der().clone()],
        )
        .unwrap(),
    );
    let web = "spiffe://corp.test/ns/default/sa/web";
    let token = token_key.mint(&id(web), Duration::from_secs(300)).unwrap();
    let got = certify(&cp.grpc_addr, bundle, web, &token).await.unwrap();
    assert_eq!(got.chain.len(), 2);
    assert_eq!(got.chain[1], CertificateDer::from(int_cert.der().to_vec()));
    assert_eq!(got.bundle, vec![root_cert.der().clone()]);

    // Without --trust-domain the control plane refuses to start, and says why.
    let err = ControlPlaneProcess::start(dir.path(), &[])
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("has no spiffe:// URI SAN; pass the trust domain explicitly"),
        "{err}"
    );
}

/// SIGHUP (a closed terminal, an operator expecting a reload) does not end the control plane.
#[tokio::test]
async fn sighup_is_logged_and_the_control_plane_keeps_serving() {
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), &[]).await.unwrap();
    let pid = cp.pid().unwrap().to_string();
    for _ in 0..2 {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
    cp.wait_for_log("SIGHUP").await.unwrap();
    assert_eq!(http_get(&cp.admin_addr, "/ready").await.unwrap().0, 200);
    let token = ca.token(WEB, "10m").await.unwrap();
    let got = certify(&cp.grpc_addr, ca.bundle(), WEB, &token)
        .await
        .unwrap();
    assert_eq!(got.svid.id, id(WEB));
}
