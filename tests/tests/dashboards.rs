//! The Grafana dashboards and the alerting rules of `deploy/`, checked by a real Prometheus
//! (Debian's `prometheus`, installed by `.ci/install-deps.sh`) scraping a running mesh: a
//! `weft-control-plane` process and six `weft-proxy` processes with traffic that makes every
//! metric the dashboards read exist (retries, a retry budget running out, ejections, denials,
//! rate-limit refusals, a NACK, refused certificate requests, an opaque tunnel).
//!
//! Every PromQL expression of every panel (template variables replaced by this mesh's values)
//! and of every alert rule is evaluated through `/api/v1/query` and must return data, and every
//! label a panel groups by must be on what comes back: a panel that names a metric or a label
//! the binaries do not export fails here. The alert conditions are made to happen for real
//! (certificates of 1 h, a NACK, a failing backend, the control plane and a proxy stopped),
//! except the few listed in `NOT_MADE_TO_FIRE`, whose expressions are evaluated without their
//! threshold. `promtool check rules` and `promtool check config` run on the files as shipped.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use weft_certs::{CertificateAuthority, SpiffeId, WorkloadKey};
use weft_proto::config::v1::ApplyRequest;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_tests::dataplane::{ProxyProcess, http_backend, proxy_get, proxy_request, tcp_echo};
use weft_tests::mesh::{DeltaClient, TD, workload};
use weft_tests::{ControlPlaneProcess, TestCa, certify, http_get};

/// Alert rules whose condition this test does not make happen, and why; their expression is
/// evaluated without its final comparison instead.
const NOT_MADE_TO_FIRE: &[(&str, &str)] = &[
    (
        "WeftCAExpiringSoon",
        "`weftctl ca init` makes a CA of years; the expression reads ca_expiration_timestamp_seconds",
    ),
    (
        "WeftProxyCertificateRenewalFailing",
        "a renewal is due at 70 % of a 1 h certificate, 42 min in",
    ),
    (
        "WeftStoreErrors",
        "the embedded store does not fail; store_errors_total starts at 0 for list and watch",
    ),
    (
        "WeftProxyFileDescriptorsNearLimit",
        "the test's proxies hold a few dozen of their thousands of files",
    ),
];

/// The mesh's configuration: `api` with a route that retries 503 on a tight budget, callers
/// allowed by identity (web, batch; `stranger` is denied) and a rate limit for batch.
const CONFIG: &str = r#"
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {namespace: default, name: api}
spec:
  ports: [{name: http, port: 80, protocol: http1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  namespace: default
  name: api-retry
  annotations:
    retry.weft.io/budget-percent: "5"
    retry.weft.io/budget-min-per-second: "0"
spec:
  parentRefs: [{kind: Service, name: api, port: 80}]
  rules:
  - backendRefs: [{name: api, port: 80}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {namespace: default, name: api-callers}
spec:
  targetRef: {kind: Service, name: api}
  action: Allow
  from:
  - identities: ["spiffe://mesh.test/ns/default/sa/web", "spiffe://mesh.test/ns/default/sa/batch"]
---
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {namespace: default, name: api-limits}
spec:
  targetRef: {kind: Service, name: api}
  overrides:
  - identities: ["spiffe://mesh.test/ns/default/sa/batch"]
    requestsPerSecond: 1
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An HTTP backend that answers 503 to 7 requests of every 10 (in a row: enough for an
/// ejection) and 200 to the others.
async fn failing_backend() -> SocketAddr {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from("api-2\n")));
                        if i % 10 < 7 {
                            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gRPC channel to the control plane at `addr` presenting a certificate for `id`.
async fn channel(ca: &TestCa, addr: &str, id: &str) -> tonic::transport::Channel {
    let id = SpiffeId::parse(id).unwrap();
    let authority = CertificateAuthority::load_dir(&ca.path(), None).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = authority
        .issue(key.key_pair(), &id, &[], Some(Duration::from_secs(3600)))
        .unwrap();
    let cert = key.certified(issued.chain).unwrap();
    let cp_id = weft_control_plane::control_plane_id(&ca.trust_domain);
    weft_control_plane::client::connect(addr, ca.bundle(), cp_id, Some(cert))
        .await
        .unwrap()
}

/// A `prometheus` process on a free loopback port with its storage in `dir`, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    async fn start(config: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-lifecycle")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn prometheus (Debian's `prometheus`; run .ci/install-deps.sh)")?;
        let p = Self { child, addr };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(&p.addr, "/-/ready").await, Ok((200, _))) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "prometheus not ready within 30 s; log:\n{}",
                    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(p)
    }

    /// Kills it and waits for it to exit (dropping it kills it too, if a test fails first).
    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }

    async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(&self.addr, path).await?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            bail!("{path}: {status} {body}");
        }
        Ok(v["data"].clone())
    }

    /// The instant vector `expr` evaluates to now.
    async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Percent-encodes a query parameter (everything but the unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The labels an expression groups by (`by (a, b)`), `le` aside (histogram_quantile takes it).
fn grouped_by(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        rest = &rest[at + 4..];
        let end = rest.find(')').unwrap_or(rest.len());
        for l in rest[..end].split(',').map(str::trim) {
            if !l.is_empty() && l != "le" && !out.iter().any(|o| o == l) {
                out.push(l.to_owned());
            }
        }
    }
    out
}

/// The metric names an expression reads (each is written with a selector, `name{…}`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (at, _) in expr.match_indices('{') {
        let start = expr[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let name = &expr[start..at];
        if !name.is_empty() && !out.iter().any(|o| o == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// An alert expression without its final comparison (`… > 0`, `… < 6 * 3600`, `… == 0`).
fn without_threshold(expr: &str) -> String {
    let expr = expr.trim();
    let at = [" > ", " < ", " == "]
        .iter()
        .filter_map(|op| expr.rfind(op))
        .max()
        .unwrap_or_else(|| panic!("no final comparison in {expr:?}"));
    expr[..at].to_owned()
}

/// Every panel's expressions of a dashboard file, with `vars` substituted: (panel title,
/// expression).
fn panel_queries(dashboard: &Value, vars: &BTreeMap<&str, &str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push((title.to_owned(), substitute(expr, vars)));
        }
        // Panels have no nested panels here (rows are not collapsed), but check.
        assert!(
            p["panels"].as_array().is_none_or(|v| v.is_empty()),
            "a collapsed row hides panels: {title}"
        );
    }
    out
}

fn substitute(expr: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut e = expr.replace("$__rate_interval", "30s");
    // Longest names first, so `$service` does not eat a `$services`.
    let mut names: Vec<_> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        e = e
            .replace(&format!("${{{n}}}"), vars[n])
            .replace(&format!("${n}"), vars[n]);
    }
    assert!(!e.contains('$'), "an unknown variable is left in {e}");
    e
}

/// What a dashboard must look like to import anywhere: schema 38 or later, a `datasource`
/// variable of type prometheus, and every datasource reference through it.
fn check_shape(name: &str, d: &Value) {
    assert!(d["schemaVersion"].as_u64().unwrap() >= 38, "{name}");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{name}: no datasource variable"
    );
    let text = d.to_string();
    let uids: Vec<&str> = text
        .match_indices("\"uid\":\"")
        .map(|(i, _)| &text[i + 7..])
        .collect();
    for u in uids {
        let u = &u[..u.find('"').unwrap()];
        assert!(
            u == "${datasource}" || u.starts_with("weft-"),
            "{name}: a hard-coded uid {u}"
        );
    }
}

/// Runs `promtool` with `args`; panics with its output unless it succeeds.
async fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .await
        .expect("run promtool (Debian's `prometheus`; run .ci/install-deps.sh)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until it returns `Ok(Some)`, or fails with its last error after `deadline`.
async fn until<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() > end => {
                panic!("{what}: not within {deadline:?}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_and_alerts_have_data_in_a_real_prometheus() {
    let deploy = repo().join("deploy");
    // The files as shipped.
    promtool(&[
        "check",
        "rules",
        deploy.join("prometheus/weft-rules.yml").to_str().unwrap(),
    ])
    .await;
    promtool(&[
        "check",
        "config",
        deploy
            .join("prometheus/prometheus-demo.yml")
            .to_str()
            .unwrap(),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    check_kubernetes_config(&deploy, tmp.path()).await;

    // The mesh: certificates of 1 h (the expiry alerts fire), api with a healthy endpoint and
    // two failing ones (outlier detection ejects at most half of them: one keeps failing),
    // endpoint, three callers.
    let ca = TestCa::init(TD).await.unwrap();
    let cp = ControlPlaneProcess::start(&ca.path(), &["--svid-ttl", "1h"])
        .await
        .unwrap();
    let admin = weft_control_plane::default_admin_id(&ca.trust_domain);
    let docs = weft_control_plane::manifest::parse_documents("dashboards.rs", CONFIG).unwrap();
    ConfigClient::new(channel(&ca, &cp.grpc_addr, admin.as_str()).await)
        .apply(ApplyRequest {
            documents: docs,
            dry_run: false,
        })
        .await
        .unwrap();
    let healthy = http_backend("api-1", false).await.unwrap();
    let failing = (failing_backend().await, failing_backend().await);
    let dir = tmp.path();
    let start = |sa: &'static str, app: Option<SocketAddr>| {
        let (ca, cp, dir) = (&ca, cp.grpc_addr.clone(), dir.to_owned());
        async move {
            let port = app.map(|a| a.port().to_string());
            let extra: Vec<&str> = match &port {
                Some(p) => vec!["--app-port", p, "--service", "default/api"],
                None => vec![],
            };
            ProxyProcess::start_with_ca(ca, &cp, &dir, sa, &extra)
                .await
                .unwrap()
        }
    };
    let api1 = start("api-1", Some(healthy)).await;
    let api2 = start("api-2", Some(failing.0)).await;
    let api3 = start("api-3", Some(failing.1)).await;
    let web = start("web", None).await;
    let batch = start("batch", None).await;
    let mut stranger = start("stranger", None).await;
    web.wait_endpoints("api", 3).await.unwrap();

    // Traffic until the end: web (retried 503s, some slow requests), batch (over its rate
    // limit), stranger (denied), and an opaque tunnel through web.
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = tokio::task::JoinSet::new();
    for (proxy, every_ms) in [
        (web.outbound, 20u64),
        (batch.outbound, 100),
        (stranger.outbound, 250),
    ] {
        let stop = stop.clone();
        traffic.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = if i.is_multiple_of(20) {
                    "/slow/1200"
                } else {
                    "/"
                };
                let url = format!("http://api.default:80{path}");
                tokio::spawn(async move { proxy_get(proxy, &url).await });
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
            }
        });
    }
    let echo = tcp_echo().await.unwrap();
    let tunnel = proxy_request(
        web.outbound,
        "CONNECT",
        &echo.to_string(),
        &[],
        weft_tests::dataplane::body(""),
    )
    .await
    .unwrap();
    assert_eq!(tunnel.status(), 200);
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(tunnel).await.unwrap());
    {
        let stop = stop.clone();
        traffic.spawn(async move {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if tunnel.write_all(b"ping").await.is_err() || tunnel.read(&mut buf).await.is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    // Prometheus, scraping the control plane and the proxies every second, with the rules.
    let rules = deploy.join("prometheus/weft-rules.yml");
    let target = |a: &str| format!("'{a}'");
    let proxies = [
        (&api1, "api-1"),
        (&api2, "api-2"),
        (&api3, "api-3"),
        (&web, "web"),
        (&batch, "batch"),
        (&stranger, "stranger"),
    ];
    let mut config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n\
         - job_name: weft-control-plane\n  static_configs:\n  - targets: [{}]\n\
         - job_name: weft-proxy\n  static_configs:\n",
        rules.display(),
        target(&cp.admin_addr)
    );
    for (p, name) in proxies {
        config.push_str(&format!(
            "  - targets: [{}]\n    labels: {{namespace: default, workload: {name}}}\n",
            target(&p.admin)
        ));
    }
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, &config).unwrap();
    promtool(&["check", "config", config_file.to_str().unwrap()]).await;
    let prom = Prometheus::start(&config_file, dir).await.unwrap();
    until(Duration::from_secs(30), "every target up", || async {
        let up = prom.query("up == 1").await?;
        if up.len() == 7 {
            Ok(())
        } else {
            bail!("{} of 7 targets up", up.len())
        }
    })
    .await;

    // Events the alerts and panels need, once Prometheus has seen the counters at 0.
    let mut nacker = DeltaClient::open(
        channel(&ca, &cp.grpc_addr, &workload("default", "probe")).await,
        "probe",
    )
    .await
    .unwrap();
    nacker
        .subscribe(weft_proto::mesh::v1::SERVICE_TYPE_URL, &["default/api"])
        .await
        .unwrap();
    let first = nacker.recv().await.unwrap();
    nacker
        .nack(&first, "dashboards test: refused on purpose")
        .await
        .unwrap();
    // Two refused certificate requests, the second once Prometheus has scraped the first (the
    // family appears with it, and an alert on its increase needs a sample before).
    let refuse = || async {
        let token = "not-a-token";
        let e = certify(
            &cp.grpc_addr,
            ca.bundle(),
            &workload("default", "web"),
            token,
        )
        .await;
        assert!(e.is_err());
    };
    refuse().await;
    until(
        Duration::from_secs(30),
        "the first refusal scraped",
        || async {
            match prom.query("certify_refused_total").await?.is_empty() {
                true => bail!("not yet"),
                false => Ok(()),
            }
        },
    )
    .await;
    refuse().await;
    // A TLS handshake that fails.
    let mut raw = tokio::net::TcpStream::connect(&cp.grpc_addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(raw);

    // Every panel of every dashboard.
    let mut vars = BTreeMap::from([
        ("datasource", "prometheus"),
        ("namespace", "default"),
        ("service", "api"),
    ]);
    let mut dashboards = Vec::new();
    for f in std::fs::read_dir(deploy.join("grafana")).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            dashboards.push((path.file_name().unwrap().to_string_lossy().into_owned(), d));
        }
    }
    dashboards.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = dashboards.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "weft-control-plane.json",
            "weft-mesh.json",
            "weft-proxy.json",
            "weft-service.json"
        ]
    );
    let mut evaluated = 0;
    for (name, d) in &dashboards {
        check_shape(name, d);
        // Instance variables: the web proxy, the control plane.
        let instance = if name == "weft-proxy.json" {
            web.admin.as_str()
        } else {
            cp.admin_addr.as_str()
        };
        vars.insert("instance", instance);
        // Each query variable's series exist, with the label it lists.
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let q = substitute(v["definition"].as_str().unwrap(), &vars);
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap();
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let label = label.trim();
            let expr = format!("count by ({label}) ({selector})");
            let value = vars[v["name"].as_str().unwrap()];
            until(
                Duration::from_secs(60),
                &format!("{name}: variable {}", v["name"]),
                || async {
                    let r = prom.query(&expr).await?;
                    if r.iter().any(|s| {
                        s["metric"][label]
                            .as_str()
                            .is_some_and(|l| l.contains(value))
                    }) {
                        Ok(())
                    } else {
                        bail!("{expr}: no {label} with {value}: {r:?}")
                    }
                },
            )
            .await;
        }
        for (title, expr) in panel_queries(d, &vars) {
            let by = grouped_by(&expr);
            let metrics = metric_names(&expr);
            assert!(!metrics.is_empty(), "{name}: {title}: no metric in {expr}");
            until(
                Duration::from_secs(60),
                &format!("{name}: panel {title:?}: {expr}"),
                || async {
                    let r = prom.query(&expr).await?;
                    if r.is_empty() {
                        bail!("no data");
                    }
                    // Every label grouped by is on one of the metrics read.
                    for l in &by {
                        let has = format!(
                            "count by ({l}) ({{__name__=~\"{}\", {l}!=\"\"}})",
                            metrics.join("|")
                        );
                        if prom.query(&has).await?.is_empty() {
                            bail!("none of {metrics:?} has the label {l}");
                        }
                    }
                    Ok(())
                },
            )
            .await;
            evaluated += 1;
        }
    }
    assert!(evaluated >= 80, "{evaluated} panel queries");

    // Every rule loaded and evaluated without error.
    let groups = prom.api("/api/v1/rules").await.unwrap();
    let mut alerts = Vec::new();
    for g in groups["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            alerts.push((
                r["name"].as_str().unwrap().to_owned(),
                r["query"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let shipped = std::fs::read_to_string(&rules).unwrap();
    assert_eq!(
        alerts.len(),
        shipped.matches("- alert:").count(),
        "{alerts:?}"
    );
    for (name, _) in NOT_MADE_TO_FIRE {
        assert!(alerts.iter().any(|a| &a.0 == name), "{name} is not a rule");
    }
    let after_stop = [
        "WeftProxyDisconnected",
        "WeftControlPlaneDown",
        "WeftProxyDown",
    ];
    for (name, query) in &alerts {
        if after_stop.contains(&name.as_str()) {
            continue;
        }
        let expr = match NOT_MADE_TO_FIRE.iter().any(|(n, _)| n == name) {
            true => without_threshold(query),
            false => query.clone(),
        };
        until(
            Duration::from_secs(60),
            &format!("alert {name}: {expr}"),
            || async {
                let r = prom.query(&expr).await?;
                if r.is_empty() {
                    let values = prom.query(&without_threshold(&expr)).await?;
                    bail!("the condition does not hold; without its threshold: {values:?}")
                }
                Ok(())
            },
        )
        .await;
    }
    let health = prom.api("/api/v1/rules").await.unwrap();
    for g in health["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{r}");
        }
    }

    // A proxy stopped, then the control plane: the proxies lose their discovery stream.
    stranger.child.kill().await.unwrap();
    drop(cp);
    for name in after_stop {
        let query = &alerts.iter().find(|a| a.0 == name).unwrap().1;
        until(
            Duration::from_secs(60),
            &format!("alert {name}: {query}"),
            || async {
                let r = prom.query(query).await?;
                if r.is_empty() {
                    bail!("the condition does not hold")
                } else {
                    Ok(())
                }
            },
        )
        .await;
    }

    stop.store(true, Ordering::Relaxed);
    traffic.abort_all();
    prom.stop().await;
    drop((api1, api2, api3, web, batch, stranger));
}

/// `prometheus-kubernetes.yml` through `promtool check config`. Debian builds Prometheus
/// without Kubernetes service discovery, so each job's `kubernetes_sd_configs` is swapped for
/// a static target first: everything else (relabelling, paths, rule files) is checked as
/// shipped.
async fn check_kubernetes_config(deploy: &Path, tmp: &Path) {
    let text =
        std::fs::read_to_string(deploy.join("prometheus/prometheus-kubernetes.yml")).unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    for job in config["scrape_configs"].as_array_mut().unwrap() {
        let job = job.as_object_mut().unwrap();
        assert!(job.remove("kubernetes_sd_configs").is_some(), "{job:?}");
        job.insert(
            "static_configs".into(),
            serde_json::json!([{"targets": ["127.0.0.1:4191"]}]),
        );
    }
    config["rule_files"] = serde_json::json!([deploy.join("prometheus/weft-rules.yml")]);
    // JSON is YAML.
    let file = tmp.join("kubernetes-static.yml");
    std::fs::write(&file, config.to_string()).unwrap();
    promtool(&["check", "config", file.to_str().unwrap()]).await;
}
