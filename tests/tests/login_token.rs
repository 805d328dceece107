//! Administering the mesh without the CA key: `weftctl login --token-file` with a join token
//! or a Kubernetes service-account token, certified by the control plane like a proxy. The
//! admin identity gets config changes; another identity logs in but is refused them, clearly.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use weft_tests::ctl::Ctl;
use weft_tests::k8s::ServiceAccountKey;
use weft_tests::{ControlPlaneProcess, TestCa};

const TD: &str = "mesh.test";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SERVICE: &str = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {namespace: default, name: api}\nspec:\n  ports: [{name: http, port: 80, protocol: http1}]\n";

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
    let cluster = ServiceAccountKey::new("sa-key");
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = jwks_dir.path().join("jwks.json");
    std::fs::write(&jwks, ServiceAccountKey::jwks(&[&cluster])).unwrap();
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
    let said = login(
        &ctl,
        &cp,
        &ca,
        &cluster.token(ISSUER, "weft-system", "weft-admin"),
    )
    .await;
    assert!(
        said.contains(&format!("as {admin}")) && !said.contains("warning"),
        "{said}"
    );
    let file = ctl.file("svc.yaml", SERVICE).unwrap();
    ctl.ok(&["apply", "-f", &file]).await.unwrap();

    // Another service account logs in (it is a mesh identity), is told it is no admin, and
    // its config changes are refused with a message that says why.
    let ctl = Ctl::logged_out().unwrap();
    let said = login(&ctl, &cp, &ca, &cluster.token(ISSUER, "default", "web")).await;
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
