//! The sidecar injector end to end, without an API server: real `AdmissionReview` documents
//! over HTTPS (TLS 1.3) to the real control plane's webhook, the returned patch applied twice
//! (the `json-patch` crate, and this file's own RFC 6902 applier) and compared with
//! `weftctl inject`'s output for the same object, which must pass `kubernetes-validate
//! --strict`; and `weftctl inject`/`uninject` on a multi-document stream.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use weft_tests::{ControlPlaneProcess, TestCa, k8s};

const SERVICE_DNS: &str = "weft-control-plane.weft-system.svc";

/// A webhook CA and its serving certificate for the Service's DNS name, written as a TLS
/// secret mounts them; returns the CA's PEM (the webhook configuration's caBundle).
fn webhook_tls(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    write_serving(dir, &ca, &ca_key);
    ca_cert.pem()
}

fn write_serving(dir: &Path, ca: &CertificateParams, ca_key: &KeyPair) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec![SERVICE_DNS.to_owned()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::new(ca.clone(), ca_key))
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

/// The control plane with its injector; returns it and the injector's address.
async fn start(ca: &TestCa, tls_dir: &Path) -> (ControlPlaneProcess, String) {
    let cp = ControlPlaneProcess::start(
        &ca.path(),
        &[
            "--injector-listen",
            "127.0.0.1:0",
            "--injector-tls-dir",
            tls_dir.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let line = cp.wait_for_log("injector started").await.unwrap();
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    (cp, addr)
}

/// One HTTPS request to the injector, verifying its certificate against `ca_pem` for the
/// Service's DNS name, as the API server does. Returns the status, body and the served leaf.
async fn https(
    addr: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in weft_certs::pem::certs_from_pem(ca_pem.as_bytes(), "ca").unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(weft_certs::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVICE_DNS).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", SERVICE_DNS)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), leaf)
}

fn review(uid: &str, namespace: &str, object: &Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

/// An RFC 6902 applier of our own (add, remove, replace; what a diff of two objects needs), so
/// the patch is checked by something other than the crate that made it.
fn apply_rfc6902(doc: &mut Value, ops: &[Value]) {
    fn parent<'a>(doc: &'a mut Value, path: &str) -> (&'a mut Value, String) {
        let (head, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        (doc.pointer_mut(head).unwrap(), last)
    }
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let (target, key) = parent(doc, path);
        match op["op"].as_str().unwrap() {
            "add" => match target {
                Value::Array(a) if key == "-" => a.push(op["value"].clone()),
                Value::Array(a) => a.insert(key.parse().unwrap(), op["value"].clone()),
                Value::Object(m) => {
                    m.insert(key, op["value"].clone());
                }
                other => panic!("add into {other}"),
            },
            "replace" => match target {
                Value::Array(a) => a[key.parse::<usize>().unwrap()] = op["value"].clone(),
                Value::Object(m) => {
                    assert!(m.contains_key(&key), "replace of a missing {path}");
                    m.insert(key, op["value"].clone());
                }
                other => panic!("replace in {other}"),
            },
            "remove" => match target {
                Value::Array(a) => {
                    a.remove(key.parse().unwrap());
                }
                Value::Object(m) => {
                    m.shift_remove(&key).unwrap();
                }
                other => panic!("remove from {other}"),
            },
            other => panic!("unexpected op {other} in {op}"),
        }
    }
}

/// `weftctl inject -o json` of one object, with the mesh's trust bundle.
async fn weftctl_inject(ca: &TestCa, object: &Value) -> (Value, String) {
    let mut child = tokio::process::Command::new(weft_tests::bin("weftctl"))
        .args(["inject", "-o", "json", "--trust-bundle"])
        .arg(ca.bundle_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(object.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A pod as a ReplicaSet creates it: generateName, no name, its own init containers.
fn replicaset_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8c-",
            "labels": {"app": "web", "pod-template-hash": "7d9f8c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c",
                                 "uid": "6f1b2c3d-0000-4000-8000-000000000001", "controller": true}]
        },
        "spec": {
            "initContainers": [
                {"name": "migrate", "image": "registry.example/db-migrate:3"},
                {"name": "warm-cache", "image": "registry.example/warm:1"}
            ],
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1.4",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}
            }],
            "serviceAccountName": "web"
        }
    })
}

fn decode_patch(resp: &Value) -> Vec<Value> {
    let b64 = resp["response"]["patch"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn admission_reviews_over_https_patch_pods_to_exactly_what_weftctl_inject_writes() {
    let ca = TestCa::init("mesh.test").await.unwrap();
    let tls = tempfile::tempdir().unwrap();
    let webhook_ca = webhook_tls(tls.path());
    let (cp, addr) = start(&ca, tls.path()).await;

    // kubelet's probes reach the webhook's health paths over HTTPS.
    for path in ["/live", "/ready"] {
        assert_eq!(https(&addr, &webhook_ca, "GET", path, vec![]).await.0, 200);
    }

    let pod = replicaset_pod();
    let (status, body, _) = https(
        &addr,
        &webhook_ca,
        "POST",
        "/inject",
        review("0df28fbd-5f5f-11e8-bc74-36e6bb280816", "shop", &pod),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let resp: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(
        resp["response"]["uid"],
        "0df28fbd-5f5f-11e8-bc74-36e6bb280816"
    );
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    let ops = decode_patch(&resp);

    // The patch, applied by the crate and by our own applier, gives weftctl inject's output.
    let (expected, summary) = weftctl_inject(&ca, &pod).await;
    assert_eq!(summary.trim(), "pod/web-7d9f8c- injected");
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
    let mut by_crate = pod.clone();
    json_patch::patch(&mut by_crate, &patch).unwrap();
    assert_eq!(by_crate, expected);
    let mut by_hand = pod.clone();
    apply_rfc6902(&mut by_hand, &ops);
    assert_eq!(by_hand, expected);

    // Ours first, theirs after in their order; the proxy a native sidecar.
    let inits: Vec<&str> = expected["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["weft-init", "weft-proxy", "migrate", "warm-cache"]);
    // The trust root the control plane serves is recorded on the pod.
    let fingerprint = ca.bundle().fingerprints()[0].clone();
    assert_eq!(
        expected["metadata"]["annotations"]["weft.io/trust-root-sha256"],
        fingerprint
    );
    k8s::validate_strict("injected-pod.json", &expected.to_string()).unwrap();

    // Already injected: allowed, no patch.
    let (_, body, _) = https(
        &addr,
        &webhook_ca,
        "POST",
        "/inject",
        review("u2", "shop", &expected),
    )
    .await;
    let resp: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none(), "{resp}");

    // Opted out, hostNetwork, the control plane's namespace: allowed, no patch, the reason
    // in the warnings.
    let mut disabled = pod.clone();
    disabled["metadata"]["labels"]["weft.io/inject"] = "disabled".into();
    let mut host = pod.clone();
    host["spec"]["hostNetwork"] = true.into();
    for (object, namespace, says) in [
        (
            &disabled,
            "shop",
            "weft: not injected: weft.io/inject: disabled",
        ),
        (&host, "shop", "weft: not injected: hostNetwork"),
        (
            &pod,
            "weft-system",
            "weft: not injected: in the control plane's namespace weft-system",
        ),
    ] {
        let (status, body, _) = https(
            &addr,
            &webhook_ca,
            "POST",
            "/inject",
            review("u3", namespace, object),
        )
        .await;
        assert_eq!(status, 200);
        let resp: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(resp["response"]["uid"], "u3");
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none(), "{resp}");
        let warnings = resp["response"]["warnings"].to_string();
        assert!(warnings.contains(says), "{warnings}");
    }

    // A Job and a CronJob, if they are ever sent: patched in their pod templates.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "backfill"},
        "spec": {"template": {"metadata": {"labels": {"app": "backfill"}}, "spec": {
            "restartPolicy": "Never", "containers": [{"name": "run", "image": "registry.example/backfill:2"}]}}}});
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "run", "image": "registry.example/nightly:2"}]}}}}}});
    for object in [&job, &cron] {
        let (_, body, _) = https(
            &addr,
            &webhook_ca,
            "POST",
            "/inject",
            review("u4", "batch", object),
        )
        .await;
        let resp: Value = serde_json::from_str(&body).unwrap();
        let mut patched = object.clone();
        apply_rfc6902(&mut patched, &decode_patch(&resp));
        let (expected, _) = weftctl_inject(&ca, object).await;
        assert_eq!(patched, expected);
        k8s::validate_strict("injected-job.json", &expected.to_string()).unwrap();
    }

    // Bodies it cannot answer: a 400 that says why (the API server applies failurePolicy);
    // never a review with allowed: false.
    for (body, says) in [
        (b"{not json".to_vec(), "not JSON"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(), "v1beta1"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(), "request.object"),
        (vec![b' '; 4 * 1024 * 1024], "at most 3145728 bytes"),
    ] {
        let (status, text, _) = https(&addr, &webhook_ca, "POST", "/inject", body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("\"allowed\":false"));
    }
    let (_, metrics) = weft_tests::http_get(&cp.admin_addr, "/metrics")
        .await
        .unwrap();
    for series in [
        "injector_reviews_total{outcome=\"injected\",reason=\"\"} 3",
        "injector_reviews_total{outcome=\"skipped\",reason=\"host-network\"} 1",
        "injector_reviews_total{outcome=\"unchanged\",reason=\"\"} 1",
        "injector_reviews_total{outcome=\"invalid\",reason=\"\"} 4",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_rotated_serving_certificate_is_served_without_a_restart() {
    let ca = TestCa::init("mesh.test").await.unwrap();
    let tls = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let webhook_ca = ca_params.self_signed(&ca_key).unwrap().pem();
    write_serving(tls.path(), &ca_params, &ca_key);
    let (cp, addr) = start(&ca, tls.path()).await;
    let (_, _, first) = https(&addr, &webhook_ca, "GET", "/ready", vec![]).await;

    // A broken update is noticed, counted, and the last good certificate is kept.
    std::fs::write(tls.path().join("tls.crt"), "not a certificate").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = weft_tests::http_get(&cp.admin_addr, "/metrics")
            .await
            .unwrap();
        if weft_tests::metric_value(&metrics, "injector_tls_reload_failures_total") == Some(1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        // Handshakes are what look at the files.
        let _ = https(&addr, &webhook_ca, "GET", "/ready", vec![]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, leaf) = https(&addr, &webhook_ca, "GET", "/ready", vec![]).await;
    assert_eq!((status, leaf == first), (200, true));

    // The secret is updated (as the kubelet does: new files in place).
    write_serving(tls.path(), &ca_params, &ca_key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, leaf) = https(&addr, &webhook_ca, "GET", "/ready", vec![]).await;
        assert_eq!(status, 200);
        if leaf != first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const STREAM: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-settings, namespace: shop}
data: {mode: fast}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers:
      - name: web
        image: registry.example/web:1.4
        ports: [{name: http, containerPort: 8080}]
        livenessProbe: {httpGet: {path: /healthz, port: http}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.example/db:16, ports: [{containerPort: 5432}]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      hostNetwork: true
      containers: [{name: agent, image: registry.example/agent:1}]
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata: {name: legacy, namespace: shop}
  spec:
    selector: {matchLabels: {app: legacy}}
    template:
      metadata: {labels: {app: legacy, weft.io/inject: disabled}}
      spec:
        containers: [{name: legacy, image: registry.example/legacy:1}]
- apiVersion: batch/v1
  kind: Job
  metadata: {name: backfill, namespace: shop}
  spec:
    template:
      metadata: {labels: {app: backfill}}
      spec:
        restartPolicy: Never
        containers: [{name: run, image: registry.example/backfill:2}]
- apiVersion: batch/v1
  kind: CronJob
  metadata: {name: nightly, namespace: shop}
  spec:
    schedule: "0 3 * * *"
    jobTemplate:
      spec:
        template:
          spec:
            restartPolicy: OnFailure
            containers: [{name: run, image: registry.example/nightly:2}]
- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: shop, labels: {app: debug}}
  spec:
    containers: [{name: sh, image: registry.example/toolbox:1}]
"#;

async fn weftctl_stdin(args: &[&str], input: &str) -> (String, String) {
    let mut child = tokio::process::Command::new(weft_tests::bin("weftctl"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "weftctl {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[tokio::test]
async fn weftctl_inject_rewrites_only_pod_templates_of_a_stream_in_order() {
    let (out, summary) = weftctl_stdin(&["inject", "-f", "-"], STREAM).await;
    assert_eq!(
        summary,
        "service/web skipped: not a workload\n\
         configmap/web-settings skipped: not a workload\n\
         deployment/web injected\n\
         statefulset/db injected\n\
         daemonset/agent skipped: hostNetwork\n\
         replicaset/legacy skipped: weft.io/inject: disabled\n\
         job/backfill injected\n\
         cronjob/nightly injected\n  \
         warning: no weft.io/service annotation, app.kubernetes.io/name or app label: the endpoint is not registered under a service\n\
         pod/debug injected\n"
    );
    k8s::validate_strict("injected.yaml", &out).unwrap();
    // Injecting the output again changes nothing; uninjecting it gives the input's objects.
    let (again, summary) = weftctl_stdin(&["inject"], &out).await;
    assert_eq!(again, out);
    assert!(
        summary.contains("deployment/web unchanged: already injected"),
        "{summary}"
    );
    let (back, _) = weftctl_stdin(&["uninject", "-o", "json"], &out).await;
    let (original, _) = weftctl_stdin(&["uninject", "-o", "json"], STREAM).await;
    assert_eq!(back, original);
    // Kinds in the order given: the empty document dropped, the List kept whole.
    let docs: Vec<Value> = serde_json::Deserializer::from_str(&back)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Service",
            "ConfigMap",
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "List"
        ]
    );
    assert_eq!(docs[5]["items"].as_array().unwrap().len(), 4);
}
