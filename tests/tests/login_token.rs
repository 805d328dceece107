//! Administering the mesh without the CA key: `weftctl login --token-file` with a join token
//! or a Kubernetes service-account token, certified by the control plane like a proxy. The
//! admin identity gets config changes; another identity logs in but is refused them, clearly.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use weft_tests::ctl::Ctl;
use weft_tests::{ControlPlaneProcess, TestCa};

const TD: &str = "mesh.test";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SERVICE: &str = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {namespace: default, name: api}\nspec:\n  ports: [{name: http, port: 80, protocol: http1}]\n";

/// A cluster's service-account token signer and its JWKS file.
struct Cluster {
    key: jsonwebtoken::EncodingKey,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "sa-key",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        Self { key, dir }
    }

    /// What `kubectl create token SA -n NS --audience weft` prints.
    fn token(&self, ns: &str, sa: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "aud": ["weft"], "iss": ISSUER, "exp": now + 600, "iat": now, "nbf": now,
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u"}},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("sa-key".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

async fn login(ctl: &Ctl, cp: &ControlPlaneProcess, ca: &TestCa, token: &str) -> String {
    let token_file = ctl.file("token", token).unwrap();
    ctl.ok(&[
        "login",
        "--control-plane",
        &cp.grpc_addr,
        "--trust-bundle",
        ca.bundle_file().to_str().unwrap(),
        "--token-file",
        &token_file,
    ])
    .await
    .unwrap()
}

#[tokio::test]
async fn a_token_logs_in_without_the_ca_key_and_only_admins_change_config() {
    let ca = TestCa::init(TD).await.unwrap();
    let cluster = Cluster::new();
    let jwks = cluster.dir.path().join("jwks.json");
    let cp = ControlPlaneProcess::start(
        &ca.path(),
        &[
            "--jwks",
            jwks.to_str().unwrap(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            "weft",
        ],
    )
    .await
    .unwrap();
    let admin = format!("spiffe://{TD}/ns/weft-system/sa/weft-admin");

    // A join token for the admin identity (minted by whoever holds the CA, once).
    let join = ca.token(&admin, "10m").await.unwrap();
    let ctl = Ctl::logged_out().unwrap();
    let said = login(&ctl, &cp, &ca, &join).await;
    assert!(said.contains(&format!("as {admin}")), "{said}");
    assert!(!said.contains("warning"), "{said}");
    let file = ctl.file("svc.yaml", SERVICE).unwrap();
    ctl.ok(&["apply", "-f", &file]).await.unwrap();
    // The key lives only in the context file, which only its owner may read.
    let mode = std::fs::metadata(ctl.config())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let context = std::fs::read_to_string(ctl.config()).unwrap();
    let key_line = context.lines().find(|l| l.contains("PRIVATE KEY")).unwrap();
    assert!(!said.contains("PRIVATE KEY") && !cp.log().contains("PRIVATE KEY"));
    assert!(!key_line.is_empty());

    // `kubectl create token weft-admin -n weft-system --audience weft`: the same.
    let ctl = Ctl::logged_out().unwrap();
    let said = login(&ctl, &cp, &ca, &cluster.token("weft-system", "weft-admin")).await;
    assert!(
        said.contains(&format!("as {admin}")) && !said.contains("warning"),
        "{said}"
    );
    let file = ctl.file("svc.yaml", SERVICE).unwrap();
    ctl.ok(&["apply", "-f", &file]).await.unwrap();

    // Another service account logs in (it is a mesh identity), is told it is no admin, and
    // its config changes are refused with a message that says why.
    let ctl = Ctl::logged_out().unwrap();
    let said = login(&ctl, &cp, &ca, &cluster.token("default", "web")).await;
    let web = format!("spiffe://{TD}/ns/default/sa/web");
    assert!(said.contains(&format!("as {web}")), "{said}");
    assert!(
        said.contains("is not one of the control plane's admin identities"),
        "{said}"
    );
    let file = ctl.file("svc.yaml", SERVICE).unwrap();
    let refused = ctl.refused(&["apply", "-f", &file]).await.unwrap();
    assert!(
        refused.contains("PERMISSION_DENIED") && refused.contains(&web),
        "{refused}"
    );
    // Reading is any mesh identity's.
    ctl.ok(&["get", "services"]).await.unwrap();

    // A token the control plane does not accept: no context, and the reason.
    let ctl = Ctl::logged_out().unwrap();
    let bad = ctl.file("token", "not-a-token").unwrap();
    let err = ctl
        .refused(&[
            "login",
            "--control-plane",
            &cp.grpc_addr,
            "--trust-bundle",
            ca.bundle_file().to_str().unwrap(),
            "--token-file",
            &bad,
        ])
        .await
        .unwrap();
    assert!(err.contains("refused the token"), "{err}");
    assert!(!ctl.config().exists());
}
