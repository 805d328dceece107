//! Traffic management end to end: canary splits, retries and their budget, per-try timeouts,
//! outlier ejection, and a reason in `x-weft-error` for every response the proxy makes itself.
//! A control plane (embedded store), a client proxy `web`, and a proxy per backend endpoint,
//! all on loopback; backends are scripted (`weft_tests::traffic::ScriptedBackend`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weft_proto::mesh::v1 as pb;
use weft_proto::registry::v1::RegisterExternalRequest;
use weft_proto::registry::v1::registration_client::RegistrationClient;
use weft_tests::dataplane::{ProxyOpts, ProxyProcess, apply, start_proxy, wait_endpoints};
use weft_tests::mesh::{TestMesh, workload};
use weft_tests::metric_value;
use weft_tests::traffic::{Client, ScriptedBackend, millis, retry, route, service_with};

/// A mesh with a client proxy `web`; endpoints are added per test.
struct Mesh {
    mesh: TestMesh,
    dir: tempfile::TempDir,
    cp: String,
    web: weft_proxy::Proxy,
    endpoints: Vec<weft_proxy::Proxy>,
}

impl Mesh {
    async fn start(web_opts: ProxyOpts) -> Self {
        let mesh = TestMesh::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cp = mesh.cp.grpc_addr().to_string();
        let web = start_proxy(&mesh, &cp, dir.path(), "web", web_opts)
            .await
            .unwrap();
        Self {
            mesh,
            dir,
            cp,
            web,
            endpoints: vec![],
        }
    }

    /// An endpoint of `default/<service>`: a proxy with identity `default/<sa>` in front of
    /// `backend`.
    async fn endpoint(&mut self, service: &str, sa: &str, backend: &ScriptedBackend) {
        let opts = ProxyOpts {
            app: Some((backend.addr.port(), service.into())),
            ..Default::default()
        };
        let p = start_proxy(&self.mesh, &self.cp, self.dir.path(), sa, opts)
            .await
            .unwrap();
        self.endpoints.push(p);
    }

    async fn apply(&self, docs: Vec<weft_proto::config::v1::Document>) {
        apply(&self.mesh, docs).await.unwrap();
    }

    /// Waits until `web` holds the route `default/<name>` with these backend weights.
    async fn wait_weights(&self, parent: &str, weights: &[u32]) {
        let key = format!("default/{parent}");
        weft_tests::poll(Duration::from_secs(10), || {
            let c = self.web.config.borrow();
            let svc = c.services.get(&key)?;
            let got: Vec<u32> = svc.value.routes.first()?.rules[0]
                .backends
                .iter()
                .map(|b| b.weight)
                .collect();
            (got == weights).then_some(())
        })
        .await
        .unwrap();
    }

    fn out(&self) -> std::net::SocketAddr {
        self.web.outbound_addr.unwrap()
    }

    fn metrics(&self) -> String {
        self.web.metrics.encode()
    }
}

/// Sends `n` GETs over `clients` keep-alive connections; returns the answers.
async fn get_many(
    mesh: &Mesh,
    url: &str,
    n: usize,
    clients: usize,
) -> Vec<weft_tests::traffic::Answer> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let out = mesh.out();
        let url = url.to_owned();
        let count = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(out);
            let mut answers = Vec::with_capacity(count);
            for _ in 0..count {
                answers.push(client.get(&url).await.unwrap());
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn share(answers: &[weft_tests::traffic::Answer], backend: &str) -> f64 {
    let n = answers
        .iter()
        .filter(|a| a.backend.as_deref() == Some(backend))
        .count();
    n as f64 / answers.len() as f64
}

async fn canary() -> (Mesh, ScriptedBackend, ScriptedBackend) {
    let mut m = Mesh::start(ProxyOpts::default()).await;
    m.apply(vec![
        service_with("api", None),
        service_with("api-v1", None),
        service_with("api-v2", None),
        route(
            "api-split",
            "api",
            &[("api-v1", 90), ("api-v2", 10)],
            Default::default(),
            None,
        ),
    ])
    .await;
    let v1 = ScriptedBackend::start("v1", 1).await.unwrap();
    let v2 = ScriptedBackend::start("v2", 2).await.unwrap();
    m.endpoint("api-v1", "api-v1", &v1).await;
    m.endpoint("api-v2", "api-v2", &v2).await;
    wait_endpoints(&m.web, "api-v1", 1).await.unwrap();
    wait_endpoints(&m.web, "api-v2", 1).await.unwrap();
    m.wait_weights("api", &[90, 10]).await;
    (m, v1, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_90_10_split_lands_within_3_percent() {
    let (m, _v1, _v2) = canary().await;
    let answers = get_many(&m, "http://api.default/split", 2000, 4).await;
    assert!(answers.iter().all(|a| a.status == 200), "a request failed");
    let v2 = share(&answers, "v2");
    assert!((v2 - 0.10).abs() <= 0.03, "v2 got {:.1} %", v2 * 100.0);
    assert!((share(&answers, "v1") + v2 - 1.0).abs() < 1e-9);

    // `weftctl explain` shows the route, the split and the endpoints the proxy has used.
    let admin = m.web.admin_addr.to_string();
    let text = weft_tests::weftctl(&["explain", "--admin", &admin, "http://api.default/split"])
        .await
        .unwrap();
    for want in [
        "route:     default/api-split rule 0",
        "backend:   default/api-v1 weight 90 (90.0 %), peak-ewma",
        "backend:   default/api-v2 weight 10 (10.0 %)",
        "spiffe://mesh.test/ns/default/sa/api-v2 [active] ewma",
        "retries:   none",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_split_moves_under_traffic_without_a_failed_request() {
    let (m, _v1, _v2) = canary().await;
    let m = Arc::new(m);
    let stop = Arc::new(AtomicBool::new(false));
    // Continuous traffic on two connections while the split changes twice.
    let mut background = Vec::new();
    for _ in 0..2 {
        let (out, stop) = (m.out(), stop.clone());
        background.push(tokio::spawn(async move {
            let mut client = Client::new(out);
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                statuses.push(client.get("http://api.default/bg").await.unwrap().status);
            }
            statuses
        }));
    }
    for (weights, v2_share) in [([50, 50], 0.5), ([0, 100], 1.0)] {
        let applied = Instant::now();
        m.apply(vec![route(
            "api-split",
            "api",
            &[("api-v1", weights[0]), ("api-v2", weights[1])],
            Default::default(),
            None,
        )])
        .await;
        m.wait_weights("api", &weights.map(|w| w as u32)).await;
        eprintln!(
            "{weights:?} reached the client proxy {:?} after apply",
            applied.elapsed()
        );
        let answers = get_many(&m, "http://api.default/after", 400, 2).await;
        let got = share(&answers, "v2");
        assert!(
            // 400 draws: ±10 % is 4 standard deviations at 50/50.
            (got - v2_share).abs() <= 0.10,
            "{weights:?}: v2 got {:.1} %",
            got * 100.0
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in background {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        total += statuses.len();
    }
    assert!(total > 0);
}

/// `api` with one endpoint in front of `backend`, and a route with `rule` and `policy`.
async fn one_endpoint(
    rule: pb::HttpRouteRule,
    policy: Option<pb::RetryPolicy>,
    traffic: Option<pb::TrafficPolicy>,
) -> (Mesh, ScriptedBackend) {
    let mut m = Mesh::start(ProxyOpts::default()).await;
    m.apply(vec![
        service_with("api", traffic),
        route("api-route", "api", &[("api", 1)], rule, policy),
    ])
    .await;
    let backend = ScriptedBackend::start("api", 7).await.unwrap();
    m.endpoint("api", "api", &backend).await;
    wait_endpoints(&m.web, "api", 1).await.unwrap();
    m.wait_weights("api", &[1]).await;
    (m, backend)
}

fn budget(percent: u32, min_per_second: u32) -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy {
        budget: Some(pb::RetryBudget {
            percent: Some(percent),
            min_per_second: Some(min_per_second),
            window: None,
        }),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_hide_a_backend_failing_30_percent_of_gets() {
    let rule = pb::HttpRouteRule {
        retry: retry(5, &[503]),
        ..Default::default()
    };
    // A budget that lets ~43 % retries through (0.3 / 0.7): the default 20 % would refuse some.
    let (m, backend) = one_endpoint(rule, budget(100, 10), None).await;
    let mut client = Client::new(m.out());
    let mut ok = 0;
    for _ in 0..1000 {
        if client
            .get("http://api.default/flaky/30")
            .await
            .unwrap()
            .status
            == 200
        {
            ok += 1;
        }
    }
    assert!(ok >= 999, "{ok} of 1000 succeeded");
    // The backend did fail about 30 % of what it saw, and the retries were counted.
    let seen = backend.count();
    assert!(seen > 1200, "the backend saw {seen} requests");
    let retries = metric_value(
        &m.metrics(),
        "retries_total{backend=\"default/api\",route=\"default/api-route\"}",
    )
    .unwrap();
    assert_eq!(retries as usize, seen - 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_post_is_not_retried_without_the_opt_in() {
    let rule = pb::HttpRouteRule {
        retry: retry(3, &[503]),
        ..Default::default()
    };
    let (m, backend) = one_endpoint(rule, None, None).await;
    let mut client = Client::new(m.out());
    let a = client
        .send(
            "POST",
            "http://api.default/fail/503",
            &[("x-request-id", "post-1")],
            "payload",
        )
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(
        a.error, None,
        "the application's own 503 goes back as it is"
    );
    assert_eq!(backend.attempts("post-1"), 1);
    // The same failure on a GET is retried: 1 + 3 attempts.
    let a = client
        .send(
            "GET",
            "http://api.default/fail/503",
            &[("x-request-id", "get-1")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(backend.attempts("get-1"), 4);

    // With the opt-in, a POST is retried too, its body replayed.
    m.apply(vec![route(
        "api-route",
        "api",
        &[("api", 1)],
        pb::HttpRouteRule {
            retry: retry(3, &[503]),
            ..Default::default()
        },
        Some(pb::RetryPolicy {
            non_idempotent: true,
            ..Default::default()
        }),
    )])
    .await;
    weft_tests::poll(Duration::from_secs(10), || {
        let c = m.web.config.borrow();
        c.services["default/api"].value.routes[0]
            .retry_policy
            .non_idempotent
            .then_some(())
    })
    .await
    .unwrap();
    client
        .send(
            "POST",
            "http://api.default/fail/503",
            &[("x-request-id", "post-2")],
            "payload",
        )
        .await
        .unwrap();
    assert_eq!(backend.attempts("post-2"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_caps_retries_when_every_request_fails() {
    let rule = pb::HttpRouteRule {
        retry: retry(3, &[503]),
        ..Default::default()
    };
    // 20 % of requests, no per-second floor.
    let (m, backend) = one_endpoint(rule, budget(20, 0), Some(no_ejection())).await;
    let mut client = Client::new(m.out());
    let mut exhausted = 0;
    for _ in 0..100 {
        let a = client.get("http://api.default/fail/503").await.unwrap();
        assert_eq!(a.status, 503, "the original failure goes back");
        if a.error.as_deref() == Some("retry-budget-exhausted") {
            exhausted += 1;
        }
    }
    let retries = backend.count() - 100;
    // Without the budget this would be 300.
    assert!(retries <= 20, "{retries} retries");
    assert!(
        retries >= 15,
        "{retries} retries: the budget should allow about 20"
    );
    assert!(
        exhausted >= 75,
        "{exhausted} answers said the budget was exhausted"
    );
    let counted = metric_value(
        &m.metrics(),
        "retry_budget_exhausted_total{backend=\"default/api\",route=\"default/api-route\"}",
    )
    .unwrap();
    assert_eq!(counted as usize, exhausted);
}

fn no_ejection() -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_failures: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_a_failure_ejects_the_last_endpoint_the_failure_is_the_answer() {
    let rule = pb::HttpRouteRule {
        retry: retry(2, &[503]),
        ..Default::default()
    };
    // One failure ejects, and every endpoint may go.
    let eager = pb::TrafficPolicy {
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_failures: Some(1),
            base_ejection_time: Some(millis(60_000)),
            max_ejection_percent: Some(100),
        }),
        ..Default::default()
    };
    let (m, backend) = one_endpoint(rule, None, Some(eager)).await;
    let mut client = Client::new(m.out());
    let a = client
        .send(
            "GET",
            "http://api.default/fail/503",
            &[("x-request-id", "last")],
            "",
        )
        .await
        .unwrap();
    // The retry has nowhere to go: the application's 503 goes back, not the balancer's.
    assert_eq!((a.status, a.error.as_deref()), (503, None), "{a:?}");
    assert_eq!(a.body, "api /fail/503");
    assert_eq!(backend.attempts("last"), 1);
    let retries = metric_value(
        &m.metrics(),
        "retries_total{backend=\"default/api\",route=\"default/api-route\"}",
    );
    assert_eq!(retries, None, "no retry was sent, so none is counted");
    // The next request finds the endpoint ejected.
    let a = client.get("http://api.default/").await.unwrap();
    assert_eq!(a.error.as_deref(), Some("all-endpoints-ejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_try_timeout_retries_a_hung_backend() {
    let rule = pb::HttpRouteRule {
        retry: retry(2, &[]),
        timeouts: Some(pb::Timeouts {
            request: Some(millis(10_000)),
            backend_request: Some(millis(300)),
        }),
        ..Default::default()
    };
    let (m, backend) = one_endpoint(rule, None, Some(no_ejection())).await;
    let mut client = Client::new(m.out());
    for i in 0..5 {
        let id = format!("hung-{i}");
        let a = client
            .send(
                "GET",
                "http://api.default/hang-first",
                &[("x-request-id", &id)],
                "",
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            backend.attempts(&id),
            2,
            "the first attempt hung, the second answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_endpoint_is_ejected_and_then_no_request_fails() {
    let rule = pb::HttpRouteRule {
        retry: retry(2, &[]),
        ..Default::default()
    };
    let mut m = Mesh::start(ProxyOpts::default()).await;
    // Round robin keeps sending the dead endpoint its turn, so ejection is what stops it. (P2C
    // over peak-EWMA would stop choosing it at once: a failure counts as 1 s of latency.)
    let round_robin = pb::TrafficPolicy {
        load_balancer: pb::LoadBalancer::RoundRobin.into(),
        ..Default::default()
    };
    // A GET caught on the dead proxy's connection as it closes is reset, not refused: a route
    // fronting instances that may die retries resets of idempotent requests too.
    let on_reset = pb::RetryPolicy {
        on: vec![
            "connect-failure".into(),
            "refused-stream".into(),
            "reset".into(),
        ],
        ..Default::default()
    };
    m.apply(vec![
        service_with("api", Some(round_robin)),
        route("api-route", "api", &[("api", 1)], rule, Some(on_reset)),
    ])
    .await;
    let alive = ScriptedBackend::start("alive", 1).await.unwrap();
    let doomed = ScriptedBackend::start("doomed", 2).await.unwrap();
    m.endpoint("api", "api", &alive).await;
    // The endpoint to kill runs as its own process.
    let port = doomed.addr.port().to_string();
    let mut victim = ProxyProcess::start(
        &m.mesh,
        &m.cp,
        m.dir.path(),
        "api-doomed",
        &["--app-port", &port, "--service", "default/api"],
    )
    .await
    .unwrap();
    wait_endpoints(&m.web, "api", 2).await.unwrap();
    let mut client = Client::new(m.out());
    // Both take traffic.
    let mut seen = HashMap::new();
    for _ in 0..40 {
        let a = client.get("http://api.default/").await.unwrap();
        *seen.entry(a.backend.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    victim.child.kill().await.unwrap();
    // Its registration outlives it (until the lease expires): the proxy must cope.
    for i in 0..200 {
        let a = client.get("http://api.default/").await.unwrap();
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        assert_eq!(a.backend.as_deref(), Some("alive"));
    }
    let metrics = m.metrics();
    assert_eq!(
        metric_value(&metrics, "outlier_ejections_total{backend=\"default/api\"}"),
        Some(1.0),
        "{metrics}"
    );
    let admin = m.web.admin_addr.to_string();
    let text = weft_tests::weftctl(&["explain", "--admin", &admin, "api.default/"])
        .await
        .unwrap();
    assert!(
        text.contains("spiffe://mesh.test/ns/default/sa/api-doomed [ejected for"),
        "{text}"
    );
    assert!(text.contains("sa/api [active]"), "{text}");
    // Once ejected, it is not tried again: no more retries while it is out.
    let retries = |m: &Mesh| {
        metric_value(
            &m.metrics(),
            "retries_total{backend=\"default/api\",route=\"default/api-route\"}",
        )
        .unwrap_or(0.0)
    };
    let before = retries(&m);
    for _ in 0..100 {
        assert_eq!(client.get("http://api.default/").await.unwrap().status, 200);
    }
    assert_eq!(retries(&m), before);
    assert!(before <= 6.0, "{before} retries before the ejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_reason_the_proxy_answers_itself() {
    let mut m = Mesh::start(ProxyOpts {
        refuse_outside: true,
        ..Default::default()
    })
    .await;
    let tight = pb::TrafficPolicy {
        max_pending_requests: 1,
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_failures: Some(2),
            base_ejection_time: Some(millis(60_000)),
            // A lone endpoint is only ejected when every endpoint may be.
            max_ejection_percent: Some(100),
        }),
        ..Default::default()
    };
    let api_only = pb::HttpRouteRule {
        matches: vec![pb::HttpRouteMatch {
            path: Some(pb::PathMatch {
                r#type: pb::path_match::Type::PathPrefix.into(),
                value: "/hang".into(),
            }),
            ..Default::default()
        }],
        timeouts: Some(pb::Timeouts {
            request: Some(millis(300)),
            backend_request: None,
        }),
        ..Default::default()
    };
    m.apply(vec![
        service_with("api", None),
        route("api-route", "api", &[("api", 1)], api_only, None),
        service_with("solo", Some(tight)),
        service_with("busy", Some(tight)),
        service_with("empty", None),
        service_with("impostor", None),
    ])
    .await;
    let backend = ScriptedBackend::start("api", 1).await.unwrap();
    m.endpoint("api", "api", &backend).await;
    m.endpoint("solo", "solo", &backend).await;
    m.endpoint("busy", "busy", &backend).await;
    // An endpoint registered with an identity its proxy does not have.
    let api_inbound = m.endpoints[0].inbound_addr.unwrap();
    RegistrationClient::new(m.mesh.admin().await.unwrap())
        .register_external(RegisterExternalRequest {
            endpoint: Some(pb::Endpoint {
                namespace: "default".into(),
                service: "impostor".into(),
                address: api_inbound.to_string(),
                identity: workload("default", "impostor"),
                ready: true,
                ..Default::default()
            }),
            ttl: None,
        })
        .await
        .unwrap();
    for s in ["api", "solo", "busy", "impostor"] {
        wait_endpoints(&m.web, s, 1).await.unwrap();
    }
    m.wait_weights("api", &[1]).await;
    weft_tests::poll(Duration::from_secs(10), || {
        m.web
            .config
            .borrow()
            .services
            .contains_key("default/empty")
            .then_some(())
    })
    .await
    .unwrap();

    let mut client = Client::new(m.out());
    let mut reason = async |url: &str| {
        let a = client.get(url).await.unwrap();
        (a.status, a.error.unwrap_or_default())
    };
    assert_eq!(
        reason("http://api.default/elsewhere").await,
        (404, "no-route".into())
    );
    assert_eq!(
        reason("http://empty.default/").await,
        (503, "no-endpoints".into())
    );
    assert_eq!(
        reason("http://api.default/hang").await,
        (504, "timeout".into())
    );
    assert_eq!(
        reason("http://impostor.default/").await,
        (502, "tls-identity-mismatch".into())
    );
    assert_eq!(
        reason("http://example.invalid/").await,
        (403, "denied".into())
    );
    // Two 500s in a row eject solo's only endpoint.
    assert_eq!(
        reason("http://solo.default/fail/500").await,
        (500, String::new())
    );
    assert_eq!(
        reason("http://solo.default/fail/500").await,
        (500, String::new())
    );
    assert_eq!(
        reason("http://solo.default/").await,
        (503, "all-endpoints-ejected".into())
    );
    // busy takes one request at a time: the second, while the first hangs, is refused at once.
    let out = m.out();
    let hung = tokio::spawn(async move {
        let _ = Client::new(out).get("http://busy.default/hang/busy").await;
    });
    weft_tests::poll(Duration::from_secs(10), || {
        backend
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.path == "/hang/busy")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        reason("http://busy.default/").await,
        (503, "overloaded".into())
    );
    hung.abort();
    // connect-failed and retry-budget-exhausted: see dataplane.rs and the budget test above.
    let metrics = m.metrics();
    for r in [
        "no-route",
        "no-endpoints",
        "timeout",
        "tls-identity-mismatch",
        "denied",
        "all-endpoints-ejected",
        "overloaded",
    ] {
        assert!(
            metrics.contains(&format!("error=\"{r}\"")),
            "{r} not counted:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_routes_match_methods_and_retry_on_status_in_trailers() {
    use weft_tests::dataplane::{echo, grpc_echo};
    let mut m = Mesh::start(ProxyOpts {
        upstreams: vec!["grpc.default:50051".into()],
        ..Default::default()
    })
    .await;
    let grpc_service = |name: &str| weft_proto::config::v1::Document {
        kind: Some(weft_proto::config::v1::document::Kind::Service(
            pb::Service {
                namespace: "default".into(),
                name: name.into(),
                ports: vec![pb::Port {
                    name: String::new(),
                    port: 50051,
                    protocol: pb::Protocol::Grpc.into(),
                }],
                ..Default::default()
            },
        )),
    };
    // Unary calls retry UNAVAILABLE; the route matches the method's path.
    let unary = pb::HttpRouteRule {
        matches: vec![pb::HttpRouteMatch {
            path: Some(pb::PathMatch {
                r#type: pb::path_match::Type::Exact.into(),
                value: "/weft.test.v1.Echo/Unary".into(),
            }),
            ..Default::default()
        }],
        retry: retry(2, &[]),
        ..Default::default()
    };
    m.apply(vec![
        grpc_service("grpc"),
        route(
            "grpc-route",
            "grpc",
            &[("grpc", 1)],
            unary,
            Some(pb::RetryPolicy {
                grpc_on: vec!["unavailable".into()],
                ..Default::default()
            }),
        ),
    ])
    .await;
    let backend = grpc_echo().await.unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "grpc".into())),
        ..Default::default()
    };
    let p = start_proxy(&m.mesh, &m.cp, m.dir.path(), "grpc", opts)
        .await
        .unwrap();
    m.endpoints.push(p);
    wait_endpoints(&m.web, "grpc", 1).await.unwrap();
    m.wait_weights("grpc", &[1]).await;

    let upstream = format!("http://{}", m.web.upstream_addrs[0]);
    let mut client = echo::echo_client::EchoClient::connect(upstream)
        .await
        .unwrap();
    // The first try fails UNAVAILABLE (a trailers-only response); the retry succeeds.
    let r = client
        .unary(echo::Msg {
            text: "unavailable-once:a".into(),
        })
        .await
        .unwrap();
    assert!(r.into_inner().text.starts_with("unavailable-once:a from"));
    let retries = metric_value(
        &m.metrics(),
        "retries_total{backend=\"default/grpc\",route=\"default/grpc-route\"}",
    );
    assert_eq!(retries, Some(1.0));
    // Streaming calls match no rule of this route: the proxy answers no-route.
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    // As a gRPC status: HTTP 404 maps to UNIMPLEMENTED.
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok()),
        Some("no-route")
    );

    // A route for the stream that retries gRPC statuses too: the response headers still reach
    // the client at once (nothing waits for the first message), and messages flow both ways.
    let chat = pb::HttpRouteRule {
        matches: vec![pb::HttpRouteMatch {
            path: Some(pb::PathMatch {
                r#type: pb::path_match::Type::Exact.into(),
                value: "/weft.test.v1.Echo/Chat".into(),
            }),
            ..Default::default()
        }],
        retry: retry(2, &[]),
        ..Default::default()
    };
    m.apply(vec![route(
        "grpc-chat",
        "grpc",
        &[("grpc", 1)],
        chat,
        Some(pb::RetryPolicy {
            grpc_on: vec!["unavailable".into()],
            ..Default::default()
        }),
    )])
    .await;
    weft_tests::poll(Duration::from_secs(10), || {
        (m.web.config.borrow().services["default/grpc"]
            .value
            .routes
            .len()
            == 2)
            .then_some(())
    })
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        client.chat(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the stream's headers were held back")
    .unwrap()
    .into_inner();
    for i in 0..3 {
        tx.send(echo::Msg {
            text: format!("m{i}"),
        })
        .await
        .unwrap();
        assert_eq!(
            stream.message().await.unwrap().unwrap().text,
            format!("echo m{i}")
        );
    }
    drop(tx);
    // Its final status (in the trailers, after messages) goes back as it is: not retried.
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}
