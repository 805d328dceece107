//! `weftctl apply`, `get` and `delete` against a real control plane.
//!
//! Golden refusals: each `tests/golden/apply/<case>.yaml` is applied (from that directory, so
//! errors name `<case>.yaml`) and must be refused with exactly `<case>.stderr`. With a
//! `<case>.args` file, `<case>.yaml` is applied first (and must succeed) and then `weftctl
//! <args>` must be refused instead. Cases named `server-*` are refused by the control plane; the
//! others never leave weftctl. Regenerate the expectations with `WEFT_UPDATE_GOLDEN=1`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use weft_tests::ctl::Ctl;
use weft_tests::{ControlPlaneProcess, TestCa};

const TD: &str = "mesh.test";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/apply")
}

/// Case names (file stems), sorted; `server` picks the server-side ones.
fn cases(server: bool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".yaml").map(str::to_owned)
        })
        .filter(|n| n.starts_with("server-") == server)
        .collect();
    names.sort();
    names
}

async fn start() -> (TestCa, ControlPlaneProcess, Ctl) {
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), &[]).await.unwrap();
    let ctl = Ctl::login(&ca, &cp).await.unwrap();
    (ca, cp, ctl)
}

/// Everything stored, as `get -o yaml` shows it.
async fn stored(ctl: &Ctl) -> String {
    let services = ctl
        .ok(&["get", "services", "-A", "-o", "yaml"])
        .await
        .unwrap();
    let routes = ctl
        .ok(&["get", "routes", "-A", "-o", "yaml"])
        .await
        .unwrap();
    format!("{services}{routes}")
}

/// Runs each case; returns one description per mismatch (all of them, not just the first).
async fn run_cases(ctl: &Ctl, names: &[String], check_store: bool) -> Vec<String> {
    let dir = golden_dir();
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for name in names {
        let yaml = format!("{name}.yaml");
        let args: Vec<String> = match std::fs::read_to_string(dir.join(format!("{name}.args"))) {
            Ok(line) => {
                let setup = ctl
                    .run_in(Some(&dir), &["apply", "-f", &yaml], None)
                    .await
                    .unwrap();
                if !setup.success {
                    mismatches.push(format!("{name}: setup apply failed:\n{}", setup.stderr));
                    continue;
                }
                line.split_whitespace().map(str::to_owned).collect()
            }
            Err(_) => vec!["apply".into(), "-f".into(), yaml],
        };
        let before = if check_store {
            Some(stored(ctl).await)
        } else {
            None
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctl.run_in(Some(&dir), &args, None).await.unwrap();
        if out.success {
            mismatches.push(format!("{name}: weftctl succeeded:\n{}", out.stdout));
            continue;
        }
        if !out.stdout.is_empty() {
            mismatches.push(format!(
                "{name}: a refusal printed to stdout:\n{}",
                out.stdout
            ));
        }
        if let Some(before) = before {
            let after = stored(ctl).await;
            if after != before {
                mismatches.push(format!(
                    "{name}: a refused command changed the store:\nbefore:\n{before}\nafter:\n{after}"
                ));
            }
        }
        let expected_path = dir.join(format!("{name}.stderr"));
        if update {
            std::fs::write(&expected_path, &out.stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if out.stderr != expected {
            mismatches.push(format!(
                "{name}: stderr differs\n--- expected ({})\n{expected}--- got\n{}",
                expected_path.display(),
                out.stderr
            ));
        }
    }
    mismatches
}

/// Refusals that weftctl finds itself: each names the file, document and field, and nothing
/// reaches the control plane.
#[tokio::test]
async fn client_side_refusals_match_golden_stderr() {
    let (_ca, _cp, ctl) = start().await;
    let names = cases(false);
    assert!(names.len() >= 20, "{names:?}");
    let mismatches = run_cases(&ctl, &names, false).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

/// Refusals that need the store (references to other objects): the control plane's
/// violations are mapped back to file and document, and nothing is stored.
#[tokio::test]
async fn server_side_refusals_match_golden_stderr() {
    let (_ca, _cp, ctl) = start().await;
    let names = cases(true);
    assert!(names.len() >= 3, "{names:?}");
    let mismatches = run_cases(&ctl, &names, true).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

/// A file whose first document is valid and second is not stores neither.
#[tokio::test]
async fn an_invalid_second_document_stores_nothing() {
    let (_ca, _cp, ctl) = start().await;
    let file = golden_dir().join("second-document-invalid.yaml");
    let stderr = ctl
        .refused(&["apply", "-f", file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        stderr.contains("document 2 (Service default/reviews-v2)"),
        "{stderr}"
    );
    let services = ctl.ok(&["get", "services", "-A"]).await.unwrap();
    assert!(!services.contains("reviews"), "{services}");
    // The same first document alone is accepted: the refusal was about document 2.
    let text = std::fs::read_to_string(&file).unwrap();
    let first = text.split("---").next().unwrap();
    let out = ctl
        .run_in(None, &["apply", "-f", "-"], Some(first))
        .await
        .unwrap();
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "service/default/reviews created\n");
}

const CANARY: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - name: http
    port: 8080
    protocol: http1
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata:
  name: reviews-v1
spec:
  ports:
  - name: http
    port: 8080
    protocol: http1
  selector:
    app: reviews
    version: v1
  trafficPolicy:
    loadBalancer: round-robin
    outlierDetection:
      baseEjectionTime: 10s
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata:
  name: reviews-v2
spec:
  ports:
  - name: http
    port: 8080
    protocol: http1
  selector:
    app: reviews
    version: v2
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  annotations:
    retry.weft.io/on: 5xx,reset
    retry.weft.io/budget-percent: \"50\"
spec:
  parentRefs:
  - kind: Service
    name: reviews
    port: 8080
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 8080
      weight: 90
    - name: reviews-v2
      port: 8080
      weight: 10
    timeouts:
      request: 10s
    retry:
      codes: [503]
      attempts: 2
      backoff: 50ms
";

/// The operator's loop: login, apply a canary split, read it back as YAML, re-apply that
/// (unchanged), show it as a table, delete it.
#[tokio::test]
async fn apply_get_reapply_delete() {
    let (_ca, _cp, ctl) = start().await;
    let file = ctl.file("canary.yaml", CANARY).unwrap();

    let dry = ctl.ok(&["apply", "-f", &file, "--dry-run"]).await.unwrap();
    assert!(
        dry.contains("service/default/reviews created (dry run)"),
        "{dry}"
    );
    assert_eq!(ctl.ok(&["get", "services"]).await.unwrap(), "");

    let out = ctl.ok(&["apply", "-f", &file]).await.unwrap();
    assert_eq!(
        out,
        "service/default/reviews created\nservice/default/reviews-v1 created\n\
         service/default/reviews-v2 created\nhttproute/default/reviews-canary created\n"
    );

    let services = ctl.ok(&["get", "services", "-o", "yaml"]).await.unwrap();
    let routes = ctl.ok(&["get", "routes", "-o", "yaml"]).await.unwrap();
    assert!(routes.contains("weight: 10"), "{routes}");
    assert!(routes.contains("request: 10s"), "{routes}");
    // Policies come back with every default written out, and still re-apply unchanged.
    assert!(services.contains("loadBalancer: round-robin"), "{services}");
    assert!(services.contains("maxEjectionPercent: 50"), "{services}");
    assert!(
        routes.contains("retry.weft.io/budget-window: 10s"),
        "{routes}"
    );
    let exported = ctl
        .file("exported.yaml", &format!("{services}---\n{routes}"))
        .unwrap();
    let again = ctl.ok(&["apply", "-f", &exported]).await.unwrap();
    assert_eq!(
        again.lines().filter(|l| l.ends_with(" unchanged")).count(),
        4,
        "{again}"
    );

    // As kubectl prints JSON: one named object as itself, several as a List, which applies
    // back unchanged.
    let json = ctl
        .ok(&["get", "routes", "reviews-canary", "-o", "json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "HTTPRoute", "{json}");
    assert_eq!(v["spec"]["rules"][0]["backendRefs"][0]["weight"], 90);
    let list = ctl.ok(&["get", "services", "-o", "json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        (&v["kind"], v["items"].as_array().map(Vec::len)),
        (&"List".into(), Some(3))
    );
    let exported = ctl.file("services.json", &list).unwrap();
    let again = ctl.ok(&["apply", "-f", &exported]).await.unwrap();
    assert_eq!(
        again.lines().filter(|l| l.ends_with(" unchanged")).count(),
        3,
        "{again}"
    );

    let table = ctl.ok(&["get", "routes"]).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAMESPACE   NAME"), "{table}");
    assert!(
        lines[1].contains("reviews:8080") && lines[1].contains("reviews-v1=90,reviews-v2=10"),
        "{table}"
    );
    let table = ctl.ok(&["get", "svc", "-A"]).await.unwrap();
    assert!(table.contains("app=reviews,version=v2"), "{table}");

    let canary = ctl
        .file(
            "canary-10-to-50.yaml",
            &CANARY
                .replace("weight: 90", "weight: 50")
                .replace("weight: 10", "weight: 50"),
        )
        .unwrap();
    let changed = ctl.ok(&["apply", "-f", &canary]).await.unwrap();
    assert!(
        changed.contains("httproute/default/reviews-canary configured"),
        "{changed}"
    );

    let deleted = ctl.ok(&["delete", "-f", &file]).await.unwrap();
    assert_eq!(
        deleted.lines().filter(|l| l.ends_with(" deleted")).count(),
        4,
        "{deleted}"
    );
    assert_eq!(
        ctl.ok(&["get", "services", "-A", "-o", "yaml"])
            .await
            .unwrap(),
        ""
    );
    let stderr = ctl
        .refused(&["delete", "route", "default/reviews-canary"])
        .await
        .unwrap();
    assert!(stderr.starts_with("weftctl: delete: NOT_FOUND"), "{stderr}");
}

/// Commands that need a context say how to get one.
#[tokio::test]
async fn without_login_commands_say_to_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(weft_tests::bin("weftctl"))
        .args(["get", "services"])
        .env("WEFT_CONFIG", dir.path().join("none.yaml"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("run `weftctl login` first"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// An endpoint outside the mesh: registered, listed (table and re-readable YAML), deregistered.
#[tokio::test]
async fn register_get_deregister_an_external_endpoint() {
    let (_ca, _cp, ctl) = start().await;
    let db = "spiffe://mesh.test/ns/data/sa/postgres";
    let out = ctl
        .ok(&[
            "register",
            "--service",
            "data/db",
            "--address",
            "10.1.2.3:5432",
            "--identity",
            db,
            "--labels",
            "app=db,role=primary",
            "--zone",
            "z1",
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        format!("endpoint data/db 10.1.2.3:5432 ({db}) registered until deregistered\n")
    );
    let table = ctl.ok(&["get", "endpoints", "-n", "data"]).await.unwrap();
    assert_eq!(
        table,
        format!(
            "NAMESPACE   SERVICE   ADDRESS         IDENTITY{}   LABELS                READY\n\
             data        db        10.1.2.3:5432   {db}   app=db,role=primary   true\n",
            " ".repeat(db.len() - "IDENTITY".len())
        )
    );
    let yaml = ctl
        .ok(&["get", "ep", "db", "-n", "data", "-o", "yaml"])
        .await
        .unwrap();
    assert!(
        yaml.contains("kind: Endpoint") && yaml.contains("zone: z1"),
        "{yaml}"
    );
    // Endpoints are registered, not applied: the YAML says so when someone tries.
    let file = ctl.file("ep.yaml", &yaml).unwrap();
    let stderr = ctl.refused(&["apply", "-f", &file]).await.unwrap();
    assert!(
        stderr.contains("kind: Endpoint objects are registered"),
        "{stderr}"
    );

    let stderr = ctl
        .refused(&[
            "register",
            "--service",
            "data/db",
            "--address",
            "10.1.2.3",
            "--identity",
            "db",
        ])
        .await
        .unwrap();
    assert!(
        stderr.contains("weftctl: --address: \"10.1.2.3\" is not IP:PORT"),
        "{stderr}"
    );
    assert!(stderr.contains("weftctl: --identity: "), "{stderr}");

    let out = ctl
        .ok(&[
            "deregister",
            "--service",
            "data/db",
            "--address",
            "10.1.2.3:5432",
        ])
        .await
        .unwrap();
    assert_eq!(out, "endpoint data/db 10.1.2.3:5432 deregistered\n");
    let none = ctl
        .ok(&["get", "endpoints", "-A", "-o", "json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&none).unwrap();
    assert_eq!(v["items"], serde_json::json!([]), "{none}");
    let stderr = ctl
        .refused(&[
            "deregister",
            "--service",
            "data/db",
            "--address",
            "10.1.2.3:5432",
        ])
        .await
        .unwrap();
    assert!(
        stderr.starts_with("weftctl: deregister: NOT_FOUND: "),
        "{stderr}"
    );
}

/// A login as an identity the control plane does not list as admin may read but not change.
#[tokio::test]
async fn a_non_admin_identity_is_refused_with_its_code() {
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), &[]).await.unwrap();
    let ctl = Ctl::login(&ca, &cp).await.unwrap();
    ctl.ok(&[
        "login",
        "--control-plane",
        &cp.grpc_addr,
        "--ca-dir",
        ca.path().to_str().unwrap(),
        "--identity",
        "spiffe://mesh.test/ns/ops/sa/mallory",
    ])
    .await
    .unwrap();
    let file = ctl.file("canary.yaml", CANARY).unwrap();
    let stderr = ctl.refused(&["apply", "-f", &file]).await.unwrap();
    assert!(
        stderr.starts_with("weftctl: apply: PERMISSION_DENIED: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(ctl.ok(&["get", "services"]).await.unwrap(), "");
}
