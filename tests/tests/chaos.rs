//! The chaos suite, short: each scenario of `weft-bench chaos` (tests/src/chaos/scenarios.rs)
//! at 100 requests per second with a 5 s outage (`Params::short`), asserting 0 failed
//! requests and the scenario's own checks. The full-size run is `weft-bench chaos`
//! (docs/reliability.md). The etcd scenarios need `/usr/bin/etcd` (`.ci/install-deps.sh`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weft_tests::chaos::{Params, scenarios};
use weft_tests::dataplane::http_backend;
use weft_tests::load::{Load, LoadConfig, Protocol};

async fn scenario(name: &str) {
    let outcome = scenarios::run(name, &Params::short()).await.unwrap();
    eprintln!("{}\n{}", outcome.scenario, outcome.details());
    outcome.assert_ok().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted_on_etcd() {
    scenario("cp-restart-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted_on_the_embedded_store() {
    scenario("cp-restart-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_killed_then_quorum_lost() {
    scenario("etcd-quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load() {
    scenario("cert-rotation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_rolling_restart() {
    scenario("cp-rolling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_killed_behind_retries() {
    scenario("endpoints-killed").await;
}

/// The generator counts what it is asked to: every request of a fixed-rate run is answered by
/// a live backend; against a closed port every one is a reset; the phases split the latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_counts_every_outcome() {
    let backend = http_backend("b", false).await.unwrap();
    let load = Load::start(LoadConfig::new(backend, Protocol::Http1, 200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = load.stop().await;
    assert!(r.sent >= 80, "{}", r.summary());
    assert_eq!((r.ok, r.failed()), (r.sent, 0), "{}", r.summary());

    let h2 = http_backend("b2", true).await.unwrap();
    let mut cfg = LoadConfig::new(h2, Protocol::Http2, 200);
    cfg.connections = 2;
    let load = Load::start(cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = load.stop().await;
    assert_eq!(
        (r.ok, r.failed(), r.connections_opened),
        (r.sent, 0, 2),
        "{}",
        r.summary()
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let load = Load::start_in_fault(LoadConfig::new(closed, Protocol::Tcp, 100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = load.stop().await;
    assert!(r.sent > 0 && r.reset == r.sent, "{}", r.summary());
    assert_eq!(r.ok, 0);
    assert!(
        r.worst_during_fault > Duration::ZERO && r.worst_before == Duration::ZERO,
        "{}",
        r.summary()
    );

    // Answers later than the timeout are timeouts.
    let mut cfg = LoadConfig::new(backend, Protocol::Http1, 100);
    cfg.path = "/slow/2000".into();
    cfg.timeout = Duration::from_millis(200);
    let load = Load::start(cfg);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = load.stop().await;
    assert!(r.timeout > 0 && r.timeout == r.sent, "{}", r.summary());
}
