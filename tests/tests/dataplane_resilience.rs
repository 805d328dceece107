//! The data path under stress and change: a 1 GB body each way through `weft-proxy` processes
//! with bounded memory, the control plane killed mid-traffic, certificates rotating under
//! traffic, and a drain on SIGTERM with requests in flight.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use weft_proto::config::v1::ApplyRequest;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::mesh::v1::Protocol;
use weft_tests::dataplane::{
    ProxyOpts, ProxyProcess, apply, body, generated, http_backend, proxy_get, proxy_request,
    service, start_proxy, wait_endpoints,
};
use weft_tests::mesh::TestMesh;
use weft_tests::{ControlPlaneProcess, metric_value, poll};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_each_way_streams_with_bounded_proxy_memory() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let port = backend.port().to_string();
    let api = ProxyProcess::start(
        &mesh,
        &cp,
        dir.path(),
        "api",
        &["--app-port", &port, "--service", "default/api"],
    )
    .await
    .unwrap();
    let web = ProxyProcess::start(&mesh, &cp, dir.path(), "web", &[])
        .await
        .unwrap();
    web.wait_endpoints("api", 1).await.unwrap();
    let before = (api.peak_rss_kib().unwrap(), web.peak_rss_kib().unwrap());

    let resp = proxy_request(
        web.outbound,
        "POST",
        "http://api.default/count",
        &[],
        generated(GIB),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let count = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(count, GIB.to_string());

    let resp = proxy_request(
        web.outbound,
        "GET",
        &format!("http://api.default/bytes/{GIB}"),
        &[],
        body(""),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = stream.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, GIB);

    // Peak resident memory of each proxy over the whole transfer: flow control keeps it to a
    // few windows, never near the body's size.
    for (name, p, start) in [("api", &api, before.0), ("web", &web, before.1)] {
        let peak = p.peak_rss_kib().unwrap();
        eprintln!("{name}: peak RSS {start} KiB before, {peak} KiB after 2 GiB");
        assert!(
            peak < 64 * 1024,
            "{name} proxy peaked at {peak} KiB while streaming 1 GiB bodies"
        );
    }
}

/// Sends GETs through `web` until `stop`, counting successes and failures (with the last
/// failure's text).
fn traffic(
    outbound: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<Vec<String>>) {
    let ok = Arc::new(AtomicU64::new(0));
    let counted = ok.clone();
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match proxy_get(outbound, "http://api.default/ping").await {
                Ok((200, _, _)) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, headers, text)) => {
                    failures.push(format!("{status} {headers:?} {text}"))
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        failures
    });
    (ok, task)
}

/// Waits until `ok` has grown by `n` from now.
async fn more_successes(ok: &AtomicU64, n: u64) {
    let start = ok.load(Ordering::Relaxed);
    poll(Duration::from_secs(30), || {
        (ok.load(Ordering::Relaxed) >= start + n).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_when_the_control_plane_is_killed() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlaneProcess::start(&mesh.ca.path(), &[])
        .await
        .unwrap();
    ConfigClient::new(mesh.admin_at(&cp.grpc_addr).await.unwrap())
        .apply(ApplyRequest {
            documents: vec![service("api", 80, Protocol::Http1)],
            dry_run: false,
        })
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "api".into())),
        ..Default::default()
    };
    let api = start_proxy(&mesh, &cp.grpc_addr, dir.path(), "api", opts)
        .await
        .unwrap();
    let web = start_proxy(
        &mesh,
        &cp.grpc_addr,
        dir.path(),
        "web",
        ProxyOpts::default(),
    )
    .await
    .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, task) = traffic(web.outbound_addr.unwrap(), stop.clone());
    more_successes(&ok, 50).await;
    let pid = cp.pid().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // Both proxies notice, and keep serving on the last configuration.
    for p in [&api, &web] {
        poll(Duration::from_secs(10), || {
            (metric_value(&p.metrics.encode(), "discovery_connected ") == Some(0.0)).then_some(())
        })
        .await
        .unwrap();
    }
    more_successes(&ok, 200).await;
    stop.store(true, Ordering::Relaxed);
    let failures = task.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_a_failed_request() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let ttl = Some(Duration::from_secs(30));
    let opts = ProxyOpts {
        app: Some((backend.port(), "api".into())),
        cert_ttl: ttl,
        ..Default::default()
    };
    let api = start_proxy(&mesh, &cp, dir.path(), "api", opts)
        .await
        .unwrap();
    let web = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "web",
        ProxyOpts {
            cert_ttl: ttl,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    let first = api.identity.svid().not_after;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, task) = traffic(web.outbound_addr.unwrap(), stop.clone());
    // Upgrades open a new mTLS connection each time, so new handshakes use the renewed
    // certificates while the pooled HTTP/2 connection lives on.
    let out = web.outbound_addr.unwrap();
    let handshakes = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = proxy_request(
                    out,
                    "GET",
                    "http://api.default/upgrade",
                    &[("connection", "upgrade"), ("upgrade", "echo")],
                    body(""),
                )
                .await;
                match r {
                    Ok(r) if r.status() == 101 => {}
                    Ok(r) => failures.push(format!("upgrade answered {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failures
        }
    });
    // Renewal at ~70 % of 30 s: two renewals each take about 45 s.
    for p in [&api, &web] {
        let renewals =
            || metric_value(&p.metrics.encode(), "identity_cert_renewals_total").unwrap_or(0.0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while renewals() < 2.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than 2 renewals in 90 s"
            );
            more_successes(&ok, 1).await;
        }
    }
    assert!(api.identity.svid().not_after > first);
    more_successes(&ok, 20).await;
    stop.store(true, Ordering::Relaxed);
    let failures = task.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let failures = handshakes.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} upgrades failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_then_lets_in_flight_requests_finish() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let port = backend.port().to_string();
    let mut api = ProxyProcess::start(
        &mesh,
        &cp,
        dir.path(),
        "api",
        &[
            "--app-port",
            &port,
            "--service",
            "default/api",
            "--drain-timeout",
            "20s",
        ],
    )
    .await
    .unwrap();
    let web = start_proxy(&mesh, &cp, dir.path(), "web", ProxyOpts::default())
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    let out = web.outbound_addr.unwrap();

    let in_flight: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { proxy_get(out, "http://api.default/slow/2500").await }))
        .collect();
    // All five have reached the server proxy.
    let admin = api.admin.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = weft_tests::http_get(&admin, "/metrics").await.unwrap();
        let seen: f64 = m
            .lines()
            .filter(|l| l.starts_with("request_total{direction=\"inbound\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if seen >= 5.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never arrived: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = api.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    // The endpoint is deregistered first: the client proxy drops it.
    poll(Duration::from_secs(10), || {
        let c = web.config.borrow();
        c.endpoints
            .get("default/api")
            .is_none_or(|e| e.value.endpoints.is_empty())
            .then_some(())
    })
    .await
    .unwrap();
    for r in in_flight {
        let (status, _, text) = r.await.unwrap().unwrap();
        assert_eq!((status, text.as_str()), (200, "slow done"));
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), api.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{}", api.log());
    assert!(api.log().contains("draining"), "{}", api.log());
}
