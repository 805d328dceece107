//! `weftctl install`: its manifests pass `kubernetes-validate --strict` (1.29 and 1.37), with
//! and without `--ha`, with the CA from a directory or an external secret; the webhook's
//! `caBundle` verifies its serving certificate for the Service's DNS name; bad input prints
//! nothing and says what is wrong.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;

use base64::Engine as _;
use serde_json::Value;
use weft_tests::{TestCa, k8s};

async fn weftctl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(weft_tests::bin("weftctl"))
        .args(args)
        .output()
        .await
        .unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    let options = serde_saphyr::options! { with_snippet: false };
    let mut bytes = yaml.as_bytes();
    serde_saphyr::read_with_options::<_, Value>(&mut bytes, options)
        .map(Result::unwrap)
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// The control plane's pod is found the way deploy/prometheus finds it: the PodMonitor's port
/// name is a container port of the admin port's number, and the pod annotations name that port
/// and /metrics.
fn scrapeable_as_deploy_prometheus_says(deploy: &Value) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let monitors = documents(
        &std::fs::read_to_string(root.join("deploy/prometheus/podmonitor.yaml")).unwrap(),
    );
    let monitor = find(&monitors, "PodMonitor", "weft-control-plane");
    let port_name = &monitor["spec"]["podMetricsEndpoints"][0]["port"];
    let template = &deploy["spec"]["template"];
    let ports = template["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap();
    let port = ports
        .iter()
        .find(|p| &p["name"] == port_name)
        .unwrap_or_else(|| panic!("no container port named {port_name}: {ports:?}"));
    assert_eq!(port["containerPort"], 9191);
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9191");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let labels = &template["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "the PodMonitor selects by {k}");
    }
}

#[tokio::test]
async fn install_writes_valid_manifests_whose_webhook_trusts_its_certificate() {
    let ca = TestCa::init("prod.example").await.unwrap();
    let ca_dir = ca.path().display().to_string();
    for ha in [false, true] {
        let mut args = vec!["install", "--ca-dir", &ca_dir];
        if ha {
            args.push("--ha");
        }
        let out = weftctl(&args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout).unwrap();
        k8s::validate_strict(
            if ha {
                "install-ha.yaml"
            } else {
                "install.yaml"
            },
            &yaml,
        )
        .unwrap();
        let docs = documents(&yaml);

        let deploy = find(&docs, "Deployment", "weft-control-plane");
        assert_eq!(deploy["spec"]["replicas"], if ha { 3 } else { 1 });
        let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        for flag in [
            "--injector-listen=0.0.0.0:9443",
            "--jwks-url=https://kubernetes.default.svc/openid/v1/jwks",
            "--admin-identity=spiffe://prod.example/ns/weft-system/sa/weft-admin",
            "--admin=0.0.0.0:9191",
        ] {
            assert!(args.contains(flag), "{flag} missing: {args}");
        }
        scrapeable_as_deploy_prometheus_says(deploy);
        let hook = find(&docs, "MutatingWebhookConfiguration", "weft-injector");
        let entries = hook["webhooks"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        for e in entries {
            assert_eq!(e["failurePolicy"], if ha { "Fail" } else { "Ignore" });
            assert_eq!(e["sideEffects"], "None");
            assert_eq!(e["admissionReviewVersions"], serde_json::json!(["v1"]));
            assert_eq!(e["rules"][0]["operations"], serde_json::json!(["CREATE"]));
            let ns = e["namespaceSelector"]["matchExpressions"].to_string();
            assert!(
                ns.contains("kube-system") && ns.contains("weft-system"),
                "{ns}"
            );
        }
        if ha {
            assert_eq!(
                find(&docs, "StatefulSet", "weft-etcd")["spec"]["replicas"],
                3
            );
            for app in ["weft-control-plane", "weft-etcd"] {
                find(&docs, "PodDisruptionBudget", app);
            }
            assert!(
                args.contains("--etcd-endpoints=http://weft-etcd-0.weft-etcd"),
                "{args}"
            );
        } else {
            find(&docs, "PersistentVolumeClaim", "weft-store");
            assert!(args.contains("--store-snapshot="), "{args}");
        }

        // The caBundle verifies the injector's serving certificate for the Service's name.
        let ca_bundle = b64(&entries[0]["clientConfig"]["caBundle"]);
        let secret = find(&docs, "Secret", "weft-injector-tls");
        let leaf = b64(&secret["data"]["tls.crt"]);
        let mut roots = rustls::RootCertStore::empty();
        for c in weft_certs::pem::certs_from_pem(&ca_bundle, "caBundle").unwrap() {
            roots.add(c).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            weft_certs::tls::provider(),
        )
        .build()
        .unwrap();
        let leaf = weft_certs::pem::certs_from_pem(&leaf, "tls.crt").unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in [
            "weft-control-plane.weft-system.svc",
            "weft-control-plane.weft-system.svc.cluster.local",
        ] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf[0], &leaf[1..], &name, &[], now)
                .unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf[0], &[], &other, &[], now)
                .is_err()
        );

        // The trust bundle ConfigMap is the CA's bundle.
        let bundle = find(&docs, "ConfigMap", "weft-trust-bundle");
        assert_eq!(
            bundle["data"]["ca.crt"].as_str().unwrap().trim(),
            std::fs::read_to_string(ca.bundle_file()).unwrap().trim()
        );
    }
}

#[tokio::test]
async fn an_external_ca_is_referenced_and_no_ca_key_is_written() {
    let ca = TestCa::init("prod.example").await.unwrap();
    let bundle = ca.bundle_file().display().to_string();
    let out = weftctl(&[
        "install",
        "--external-ca",
        "weft-ca-from-cert-manager",
        "--trust-bundle",
        &bundle,
        "--trust-domain",
        "prod.example",
        "--etcd-endpoints",
        "https://etcd-0.infra:2379,https://etcd-1.infra:2379",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    k8s::validate_strict("install-external.yaml", &yaml).unwrap();
    let docs = documents(&yaml);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "weft-ca"),
        "the CA secret is the operator's"
    );
    let deploy = find(&docs, "Deployment", "weft-control-plane");
    let spec = deploy["spec"]["template"]["spec"].to_string();
    assert!(spec.contains("weft-ca-from-cert-manager"), "{spec}");
    assert!(spec.contains("--etcd-endpoints=https://etcd-0.infra:2379,https://etcd-1.infra:2379"));
    assert!(!docs.iter().any(|d| d["kind"] == "StatefulSet"));
}

#[tokio::test]
async fn bad_input_prints_nothing_and_names_the_problem() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().display().to_string();
    let other = TestCa::init("prod.example").await.unwrap();
    let bundle = other.bundle_file().display().to_string();
    for (args, says) in [
        (vec!["install", "--ca-dir", dir.as_str()], "tls.crt"),
        (vec!["install"], "--ca-dir"),
        (
            vec![
                "install",
                "--external-ca",
                "x",
                "--trust-bundle",
                bundle.as_str(),
                "--trust-domain",
                "other.example",
            ],
            "other.example",
        ),
    ] {
        let out = weftctl(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed manifests");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The control plane starts with exactly the arguments the Deployment gives it (paths mapped
/// to this machine's files, ports to free ones): no flag is misspelt or missing.
#[tokio::test]
async fn the_deployments_arguments_start_a_control_plane_with_its_injector() {
    let ca = TestCa::init("prod.example").await.unwrap();
    let out = weftctl(&["install", "--ca-dir", &ca.path().display().to_string()]).await;
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let deploy = find(&docs, "Deployment", "weft-control-plane");
    let args: Vec<String> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // The secrets as the kubelet would mount them.
    let tls = tempfile::tempdir().unwrap();
    let secret = find(&docs, "Secret", "weft-injector-tls");
    for f in ["tls.crt", "tls.key"] {
        std::fs::write(tls.path().join(f), b64(&secret["data"][f])).unwrap();
    }
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(
        sa.path().join("ca.crt"),
        std::fs::read(ca.bundle_file()).unwrap(),
    )
    .unwrap();
    std::fs::write(sa.path().join("token"), "t").unwrap();
    let store = tempfile::tempdir().unwrap();
    let mapped: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("/var/run/weft/ca", &ca.path().display().to_string())
                .replace("/var/run/weft/injector", &tls.path().display().to_string())
                .replace(
                    "/var/run/secrets/kubernetes.io/serviceaccount",
                    &sa.path().display().to_string(),
                )
                .replace("/var/lib/weft", &store.path().display().to_string())
                .replace("0.0.0.0:8443", "127.0.0.1:0")
                .replace("0.0.0.0:9191", "0.0.0.0:0")
                .replace("0.0.0.0:9443", "127.0.0.1:0")
                .replace("https://kubernetes.default.svc", "https://127.0.0.1:1")
        })
        .collect();
    let mut child = tokio::process::Command::new(weft_tests::bin("weft-control-plane"))
        .args(&mapped)
        .env("WEFT_LOG", "info")
        .env("WEFT_NAMESPACE", "weft-system")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    let found = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("injector started");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "the control plane did not start with {mapped:?}:\n{}",
        seen.join("\n")
    );
    // Its admin port, on every address as installed: health and metrics for anyone, the CA
    // status for loopback only.
    // (--log-format=json, as installed.)
    let port = seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| {
            let addr: std::net::SocketAddr = l["fields"]["admin_addr"].as_str()?.parse().ok()?;
            addr.ip().is_unspecified().then_some(addr.port())
        })
        .unwrap_or_else(|| panic!("no admin_addr on 0.0.0.0 in {seen:?}"));
    let local = format!("127.0.0.1:{port}");
    assert_eq!(weft_tests::http_get(&local, "/ca").await.unwrap().0, 200);
    // A client on another address of this host is not on loopback (the kernel sends from the
    // address it connects to).
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("no non-loopback IPv4 address here: the remote half is not checked");
        return;
    };
    let remote = format!("{ip}:{port}");
    for (path, want) in [
        ("/metrics", 200),
        ("/ready", 200),
        ("/ca", 403),
        ("/ca/reload", 403),
    ] {
        let (status, body) = weft_tests::http_get(&remote, path).await.unwrap();
        assert_eq!(status, want, "{path} from {ip}: {body}");
    }
}

/// An IPv4 address of this host's that is not loopback (the one a default route would use).
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.200:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
