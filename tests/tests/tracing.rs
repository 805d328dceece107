//! Traces and access logs end to end: client → proxy `web` → proxy `api` → application, with
//! spans exported over OTLP/gRPC to a real receiver that is not ours (`weft_tests::otlp`:
//! opentelemetry-proto's TraceService on grpcio), and access log lines read from the proxies'
//! files.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use weft_proto::mesh::v1::Protocol;
use weft_proxy::access_log::{AccessLogConfig, Format};
use weft_proxy::trace::TraceConfig;
use weft_tests::dataplane::{
    ProxyOpts, ProxyProcess, apply, body, proxy_get, proxy_request, service, start_proxy,
    wait_endpoints,
};
use weft_tests::mesh::TestMesh;
use weft_tests::otlp::Collector;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
/// Odd spacing and order on purpose: it must arrive exactly as sent.
const TRACESTATE: &str = "rojo=00f067aa0ba902b7 ,congo=t61rcWkgMzE,  x@y=z";

/// An application that answers with the trace headers it received, as JSON.
async fn header_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    };
                    let seen = serde_json::json!({
                        "traceparent": h("traceparent"),
                        "tracestate": h("tracestate"),
                    });
                    Ok::<_, Infallible>(Response::new(weft_proxy::body::full(seen.to_string())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

struct Chain {
    _mesh: TestMesh,
    dir: tempfile::TempDir,
    api: weft_proxy::Proxy,
    web: weft_proxy::Proxy,
}

/// `web` (client only) and `api` (with `header_app`), both tracing to `endpoint` and writing
/// access logs to files in the chain's directory (`web.log` JSON, `api.log` text).
async fn chain(endpoint: &str) -> Chain {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    // `ghost` has no endpoints: a request to it is answered by the client proxy.
    apply(
        &mesh,
        vec![
            service("api", 80, Protocol::Http1),
            service("ghost", 80, Protocol::Http1),
        ],
    )
    .await
    .unwrap();
    let app = header_app().await;
    let trace = |name: &str| {
        Some(TraceConfig {
            endpoint: endpoint.to_owned(),
            ca: None,
            sample_rate: 0.0,
            service_name: name.to_owned(),
            ..Default::default()
        })
    };
    let log = |file: &str, format| {
        Some(AccessLogConfig {
            format,
            file: Some(dir.path().join(file)),
        })
    };
    let api_opts = ProxyOpts {
        app: Some((app.port(), "api".into())),
        trace: trace("default/api"),
        access_log: log("api.log", Format::Text),
        ..Default::default()
    };
    let api = start_proxy(&mesh, &cp, dir.path(), "api", api_opts)
        .await
        .unwrap();
    let web_opts = ProxyOpts {
        trace: trace("default/web"),
        access_log: log("web.log", Format::Json),
        ..Default::default()
    };
    let web = start_proxy(&mesh, &cp, dir.path(), "web", web_opts)
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    Chain {
        _mesh: mesh,
        dir,
        api,
        web,
    }
}

/// Sends GET `path` through `web` with `headers`; returns the status and what the application
/// saw.
async fn get(
    web: &weft_proxy::Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let resp = proxy_request(
        web.outbound_addr.unwrap(),
        "GET",
        &format!("http://api.default{path}"),
        headers,
        body(""),
    )
    .await
    .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn span_of<'a>(spans: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:?}"))
}

#[tokio::test]
async fn a_sampled_request_makes_a_client_and_a_server_span_in_one_chain() {
    let collector = Collector::start().await.unwrap();
    let c = chain(&collector.endpoint()).await;
    // First what must not be traced: no header, an unsampled one, an invalid one.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, seen) = get(&c.web, "/plain", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen["traceparent"],
        serde_json::Value::Null,
        "no trace is started"
    );
    let unsampled = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    let (status, seen) = get(&c.web, "/unsampled", &[("traceparent", &unsampled)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen["traceparent"],
        unsampled.as_str(),
        "an unsampled header passes untouched"
    );
    for bad in [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "zz-not-a-header",
    ] {
        let (status, _) = get(&c.web, "/invalid", &[("traceparent", bad)]).await;
        assert_eq!(
            status, 200,
            "{bad}: an invalid header is no reason to refuse"
        );
    }

    // Then a sampled one.
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let (status, seen) = get(
        &c.web,
        "/items/1",
        &[("traceparent", &incoming), ("tracestate", TRACESTATE)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen["tracestate"], TRACESTATE, "tracestate byte for byte");
    let spans = collector.wait_trace(TRACE, 2).await.unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let client = span_of(&spans, "SPAN_KIND_CLIENT");
    let server = span_of(&spans, "SPAN_KIND_SERVER");
    // The chain: caller's span → web's CLIENT span → api's SERVER span → the application.
    assert_eq!(client["parent_span_id"], PARENT);
    assert_eq!(server["parent_span_id"], client["span_id"]);
    let app_saw = seen["traceparent"].as_str().unwrap();
    assert_eq!(
        app_saw,
        format!("00-{TRACE}-{}-01", server["span_id"].as_str().unwrap()),
        "the application's parent is api's SERVER span, flags kept"
    );
    for s in [client, server] {
        assert_eq!(s["flags"].as_u64().unwrap() & 1, 1);
        assert_eq!(s["status"], "STATUS_CODE_UNSET");
        assert_eq!(s["scope"], "weft-proxy");
        let a = &s["attributes"];
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["url.path"], "/items/1");
        assert_eq!(a["url.scheme"], "http");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(a["weft.client_id"], "spiffe://mesh.test/ns/default/sa/web");
        assert_eq!(a["weft.server_id"], "spiffe://mesh.test/ns/default/sa/api");
        assert!(s["end"].as_u64() >= s["start"].as_u64());
    }
    assert_eq!(client["name"], "GET default/api");
    assert_eq!(client["resource"]["service.name"], "default/web");
    let a = &client["attributes"];
    assert_eq!(a["server.address"], "api.default");
    assert_eq!(a["server.port"], 80);
    assert_eq!(a["weft.backend"], "default/api");
    assert_eq!(a["weft.retry"], 1);
    assert_eq!(a["weft.endpoint"], c.api.inbound_addr.unwrap().to_string());
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    assert_eq!(server["resource"]["service.name"], "default/api");
    assert_eq!(server["attributes"]["network.peer.address"], "127.0.0.1");

    // Both exporters send in order: with the sampled request's spans in, anything the earlier
    // requests had made would be in too. They made nothing.
    let all = collector.spans();
    assert_eq!(all.len(), 2, "only the sampled request is traced: {all:?}");

    // The access logs: one line per request at each proxy, with the trace ID of the traced one.
    let web_log = c.dir.path().join("web.log");
    let lines = weft_tests::poll(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&web_log).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() >= 6).then_some(lines)
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 6);
    let traced = lines.last().unwrap();
    assert_eq!(traced["direction"], "outbound");
    assert_eq!(traced["protocol"], "http");
    assert_eq!(traced["method"], "GET");
    assert_eq!(traced["authority"], "api.default:80");
    assert_eq!(traced["path"], "/items/1");
    assert_eq!(traced["status"], 200);
    assert_eq!(traced["grpc_status"], serde_json::Value::Null);
    assert_eq!(traced["client_id"], "spiffe://mesh.test/ns/default/sa/web");
    assert_eq!(traced["server_id"], "spiffe://mesh.test/ns/default/sa/api");
    assert_eq!(traced["route"], "");
    assert_eq!(traced["backend"], "default/api");
    assert_eq!(traced["endpoint"], c.api.inbound_addr.unwrap().to_string());
    assert_eq!(traced["attempts"], 1);
    assert_eq!(traced["error"], "");
    assert_eq!(traced["trace_id"], TRACE);
    assert_eq!(traced["bytes_in"], 0);
    assert_eq!(
        traced["bytes_out"].as_u64().unwrap(),
        serde_json::to_string(&seen).unwrap().len() as u64
    );
    assert!(traced["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        lines[0]["trace_id"], "",
        "an untraced request has no trace ID"
    );
    let api_log = c.dir.path().join("api.log");
    let text = weft_tests::poll(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&api_log).ok()?;
        (text.lines().count() >= 6).then_some(text)
    })
    .await
    .unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.contains(" direction=inbound protocol=http "), "{last}");
    assert!(
        last.contains(" client_id=spiffe://mesh.test/ns/default/sa/web "),
        "{last}"
    );
    assert!(last.contains(" path=/items/1 status=200 "), "{last}");
    assert!(last.contains(&format!(" trace_id={TRACE}")), "{last}");

    // Answered by web itself (no endpoints): one CLIENT span with the reason, as an error.
    let ghost_trace = "33333333333333333333333333333333";
    let ghost = format!("00-{ghost_trace}-{PARENT}-01");
    let resp = proxy_request(
        c.web.outbound_addr.unwrap(),
        "GET",
        "http://ghost.default/x",
        &[("traceparent", &ghost)],
        body(""),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 503);
    let spans = collector.wait_trace(ghost_trace, 1).await.unwrap();
    let s = &spans[0];
    assert_eq!(s["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(s["name"], "GET ghost.default:80");
    assert_eq!(s["parent_span_id"], PARENT);
    assert_eq!(s["status"], "STATUS_CODE_ERROR");
    assert_eq!(s["attributes"]["error.type"], "no-endpoints");
    assert_eq!(s["attributes"]["weft.error"], "no-endpoints");
    assert_eq!(s["attributes"]["http.response.status_code"], 503);
}

/// A stopping proxy exports what its queue holds before it exits: the spans of a request
/// answered just before `shutdown` are at the collector when `shutdown` returns (they would
/// otherwise wait up to a second for the exporter's next batch, and die with the process).
#[tokio::test]
async fn a_stopping_proxy_exports_its_last_spans() {
    let collector = Collector::start().await.unwrap();
    let c = chain(&collector.endpoint()).await;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let (status, _) = get(&c.web, "/last", &[("traceparent", &incoming)]).await;
    assert_eq!(status, 200);
    // web is a client only: no deregistration grace, its shutdown takes milliseconds.
    c.web.shutdown().await;
    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| s["trace_id"] == TRACE && s["kind"] == "SPAN_KIND_CLIENT")
        .collect();
    assert_eq!(spans.len(), 1, "web's CLIENT span, exported before exit");
}

/// A collector that takes connections and never answers (worse than one that is not there,
/// which refuses at once): traced requests go through as fast as ever; the export attempt
/// times out and is counted (and is retried, off the data path).
#[tokio::test]
async fn a_collector_that_is_down_costs_no_request() {
    let endpoint = weft_tests::otlp::silent_collector().await;
    let c = chain(&endpoint).await;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let started = Instant::now();
    for i in 0..20 {
        let (status, seen) = get(&c.web, &format!("/r/{i}"), &[("traceparent", &incoming)]).await;
        assert_eq!(status, 200);
        assert!(
            seen["traceparent"]
                .as_str()
                .unwrap()
                .starts_with(&format!("00-{TRACE}-"))
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "20 traced requests took {took:?}"
    );
    // The attempt timed out and is counted; nothing waited for it.
    weft_tests::otlp::export_failed(c.web.admin_addr)
        .await
        .unwrap();
}

/// An opaque TCP connection is one line at each proxy when it closes, with the bytes each way.
#[tokio::test]
async fn an_opaque_connection_is_one_access_log_line_at_each_proxy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("db", 5432, Protocol::Tcp)])
        .await
        .unwrap();
    let backend = weft_tests::dataplane::tcp_echo().await.unwrap();
    let log = |file: &str| {
        Some(AccessLogConfig {
            format: Format::Json,
            file: Some(dir.path().join(file)),
        })
    };
    let db_opts = ProxyOpts {
        app: Some((backend.port(), "db".into())),
        access_log: log("db.log"),
        ..Default::default()
    };
    let db = start_proxy(&mesh, &cp, dir.path(), "db", db_opts)
        .await
        .unwrap();
    let web_opts = ProxyOpts {
        upstreams: vec!["db.default:5432".into()],
        access_log: log("web.log"),
        ..Default::default()
    };
    let web = start_proxy(&mesh, &cp, dir.path(), "web", web_opts)
        .await
        .unwrap();
    wait_endpoints(&web, "db", 1).await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(web.upstream_addrs[0])
        .await
        .unwrap();
    tcp.write_all(&[7u8; 1000]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    tcp.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), 1000);
    drop(tcp);
    let line = |file: &str| {
        let path = dir.path().join(file);
        weft_tests::poll(Duration::from_secs(10), move || {
            let text = std::fs::read_to_string(&path).ok()?;
            let first = text.lines().next()?;
            Some(serde_json::from_str::<serde_json::Value>(first).unwrap())
        })
    };
    let out = line("web.log").await.unwrap();
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["protocol"], "tcp");
    assert_eq!(out["status"], 0);
    assert_eq!(out["bytes_in"], 1000);
    assert_eq!(out["bytes_out"], 1000);
    assert_eq!(out["backend"], "default/db");
    assert_eq!(out["authority"], "db.default:5432");
    assert_eq!(out["endpoint"], db.inbound_addr.unwrap().to_string());
    assert_eq!(out["client_id"], "spiffe://mesh.test/ns/default/sa/web");
    assert_eq!(out["server_id"], "spiffe://mesh.test/ns/default/sa/db");
    let inb = line("db.log").await.unwrap();
    assert_eq!(inb["direction"], "inbound");
    assert_eq!(inb["protocol"], "tcp");
    assert_eq!(inb["bytes_in"], 1000);
    assert_eq!(inb["bytes_out"], 1000);
    assert_eq!(inb["client_id"], "spiffe://mesh.test/ns/default/sa/web");
    assert_eq!(inb["endpoint"], backend.to_string());
}

/// gRPC: the RPC attributes on both spans; a failing call's status (trailers-only) makes both
/// spans errors, a successful call's (in the trailers) is read at the server's end of the body.
#[tokio::test]
async fn grpc_calls_carry_rpc_attributes_and_statuses() {
    use weft_tests::dataplane::echo::{Msg, echo_client::EchoClient};
    let collector = Collector::start().await.unwrap();
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("grpc", 50051, Protocol::Grpc)])
        .await
        .unwrap();
    let backend = weft_tests::dataplane::grpc_echo().await.unwrap();
    let trace = |name: &str| {
        Some(TraceConfig {
            endpoint: collector.endpoint(),
            ca: None,
            sample_rate: 0.0,
            service_name: name.to_owned(),
            ..Default::default()
        })
    };
    let server_opts = ProxyOpts {
        app: Some((backend.port(), "grpc".into())),
        trace: trace("default/grpc"),
        ..Default::default()
    };
    let _server = start_proxy(&mesh, &cp, dir.path(), "grpc", server_opts)
        .await
        .unwrap();
    let web_opts = ProxyOpts {
        upstreams: vec!["grpc.default:50051".into()],
        trace: trace("default/web"),
        ..Default::default()
    };
    let web = start_proxy(&mesh, &cp, dir.path(), "web", web_opts)
        .await
        .unwrap();
    wait_endpoints(&web, "grpc", 1).await.unwrap();
    let mut client = EchoClient::connect(format!("http://{}", web.upstream_addrs[0]))
        .await
        .unwrap();
    let call = |trace_id: &str, text: &str| {
        let mut req = tonic::Request::new(Msg { text: text.into() });
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{PARENT}-01").parse().unwrap(),
        );
        req
    };
    let ok_trace = "11111111111111111111111111111111";
    let bad_trace = "22222222222222222222222222222222";
    client.unary(call(ok_trace, "hi")).await.unwrap();
    let status = client
        .unary(call(bad_trace, "exhausted-once:x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);

    let ok = collector.wait_trace(ok_trace, 2).await.unwrap();
    for s in &ok {
        let a = &s["attributes"];
        assert_eq!(a["rpc.system.name"], "grpc", "{s}");
        assert_eq!(a["rpc.method"], "weft.test.v1.Echo/Unary", "{s}");
        assert_eq!(a["url.path"], "/weft.test.v1.Echo/Unary", "{s}");
        assert_eq!(s["status"], "STATUS_CODE_UNSET", "{s}");
    }
    // The server's span ends with the body: the OK status from the trailers.
    assert_eq!(
        span_of(&ok, "SPAN_KIND_SERVER")["attributes"]["rpc.status_code"],
        0
    );
    let bad = collector.wait_trace(bad_trace, 2).await.unwrap();
    for s in &bad {
        let a = &s["attributes"];
        assert_eq!(a["rpc.status_code"], 8, "{s}");
        assert_eq!(a["error.type"], "grpc-status 8", "{s}");
        assert_eq!(a["http.response.status_code"], 200, "{s}");
        assert_eq!(s["status"], "STATUS_CODE_ERROR", "{s}");
    }
}

/// What [`one_traced_hop`] keeps running: the mesh, `web`, their directory.
type Hop = (TestMesh, weft_proxy::Proxy, tempfile::TempDir);

/// A test CA and a `localhost` leaf it signed: `(CA PEM, leaf PEM, leaf key PEM)`.
fn collector_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "otlp test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// One hop: `web` (not tracing) → `api` (tracing with `trace`) → the application, for one
/// request under a sampled `traceparent` to `path`. Returns `api` (its metrics tell how the
/// export went) and what it keeps alive.
async fn one_traced_hop(trace: TraceConfig, path: &str) -> (weft_proxy::Proxy, Hop) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = TestMesh::start().await.unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let app = header_app().await;
    let api_opts = ProxyOpts {
        app: Some((app.port(), "api".into())),
        trace: Some(trace),
        ..Default::default()
    };
    let api = start_proxy(&mesh, &cp, dir.path(), "api", api_opts)
        .await
        .unwrap();
    let web = start_proxy(&mesh, &cp, dir.path(), "web", ProxyOpts::default())
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let (status, _) = get(&web, path, &[("traceparent", &incoming)]).await;
    assert_eq!(status, 200);
    (api, (mesh, web, dir))
}

/// `https://` with `--otlp-ca`: the spans reach a TLS collector whose certificate chains to the
/// given roots and names the endpoint's host.
#[tokio::test]
async fn spans_go_to_an_https_collector_verified_with_the_given_roots() {
    let (ca_pem, leaf, key) = collector_pki();
    let collector = Collector::start_tls(&leaf, &key).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let trace = TraceConfig {
        endpoint: format!("https://localhost:{}", collector.port),
        ca: Some(ca),
        service_name: "default/api".into(),
        ..Default::default()
    };
    let _hop = one_traced_hop(trace, "/tls").await;
    // web does not trace: api's SERVER span has the caller's span as its parent.
    let spans = collector.wait_trace(TRACE, 1).await.unwrap();
    assert_eq!(spans[0]["kind"], "SPAN_KIND_SERVER");
    assert_eq!(spans[0]["parent_span_id"], PARENT);
    assert_eq!(spans[0]["protocol"], "grpc");
}

/// `api`'s tracing over OTLP/HTTP to `endpoint`.
fn otlp_http(endpoint: String) -> TraceConfig {
    TraceConfig {
        endpoint,
        protocol: weft_proxy::trace::Protocol::HttpProtobuf,
        service_name: "default/api".into(),
        ..Default::default()
    }
}

/// One traced hop whose `api` proxy exports to `collector` (OTLP/HTTP when `http`, else
/// OTLP/gRPC), having sent one request to `path`.
async fn hop_exporting_to(
    collector: &Collector,
    http: bool,
    path: &str,
) -> (weft_proxy::Proxy, Hop) {
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let trace = match http {
        true => otlp_http(endpoint),
        false => TraceConfig {
            endpoint,
            service_name: "default/api".into(),
            ..Default::default()
        },
    };
    one_traced_hop(trace, path).await
}

/// `api`'s span counters: (exported, failed attempts, dropped for the export).
async fn export_counts(api: &weft_proxy::Proxy) -> (Option<f64>, Option<f64>, Option<f64>) {
    let (_, text) = weft_tests::http_get(&api.admin_addr.to_string(), "/metrics")
        .await
        .unwrap();
    let value = |name| weft_tests::metric_value(&text, name);
    (
        value("spans_exported_total"),
        value("span_export_failures_total"),
        value("spans_dropped_total{reason=\"export-failed\"}"),
    )
}

/// OTLP's retry rule with real receivers: a batch the collector cannot take yet (gRPC
/// `UNAVAILABLE`; HTTP 503 with `Retry-After`, 429 without) is sent again after a backoff and
/// nothing is lost; each refusal is a counted failure.
#[tokio::test]
async fn a_batch_the_collector_cannot_take_yet_is_sent_again() {
    let cases = [
        Collector::start_refusing(2, "UNAVAILABLE").await.unwrap(),
        Collector::start_http_refusing(2, 503, Some(1))
            .await
            .unwrap(),
        Collector::start_http_refusing(1, 429, None).await.unwrap(),
    ];
    for (i, collector) in cases.iter().enumerate() {
        let (api, _hop) = hop_exporting_to(collector, i > 0, "/retried").await;
        let spans = collector.wait_trace(TRACE, 1).await.unwrap();
        assert_eq!(spans[0]["attributes"]["url.path"], "/retried");
        let refused = collector.refusals();
        assert_eq!(refused, if i == 2 { 1 } else { 2 }, "case {i}");
        let admin = api.admin_addr.to_string();
        weft_tests::metric_reaches(&admin, "spans_exported_total", 1.0, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            export_counts(&api).await,
            (Some(1.0), Some(refused as f64), Some(0.0)),
            "case {i}"
        );
    }
}

/// A batch refused for good (gRPC `INVALID_ARGUMENT`, HTTP 400) is sent once and dropped,
/// counted in `spans_dropped_total{reason="export-failed"}`.
#[tokio::test]
async fn a_batch_refused_for_good_is_dropped_at_once() {
    let cases = [
        Collector::start_refusing(1, "INVALID_ARGUMENT")
            .await
            .unwrap(),
        Collector::start_http_refusing(1, 400, None).await.unwrap(),
    ];
    for (i, collector) in cases.iter().enumerate() {
        let (api, _hop) = hop_exporting_to(collector, i > 0, "/refused").await;
        let admin = api.admin_addr.to_string();
        weft_tests::metric_reaches(
            &admin,
            "spans_dropped_total{reason=\"export-failed\"}",
            1.0,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        // Given up after the one attempt: dropping is what follows the last attempt.
        assert_eq!(
            export_counts(&api).await,
            (Some(0.0), Some(1.0), Some(1.0)),
            "case {i}"
        );
        assert_eq!(collector.refusals(), 1, "case {i}");
        assert_eq!(collector.spans().len(), 1, "case {i}: only the refusal");
    }
}

/// `--otlp-protocol http/protobuf`: the same spans as `POST /v1/traces` to an OTLP/HTTP
/// receiver (`http://` and `https://` with `--otlp-ca`; an endpoint with no path gets
/// `/v1/traces`), over a connection kept for the next batch; a collector answering other than
/// 2xx (here 404 for a wrong path) is an export failure, counted.
#[tokio::test]
async fn otlp_http_carries_the_spans_in_plain_and_over_tls() {
    let (ca_pem, leaf, key) = collector_pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    for tls in [false, true] {
        let collector = Collector::start_http(tls.then_some((leaf.as_str(), key.as_str())))
            .await
            .unwrap();
        let trace = TraceConfig {
            ca: tls.then(|| ca.clone()),
            ..otlp_http(match tls {
                false => format!("http://127.0.0.1:{}", collector.port),
                true => format!("https://localhost:{}/", collector.port),
            })
        };
        let (api, hop) = one_traced_hop(trace, "/over-http").await;
        let spans = collector.wait_trace(TRACE, 1).await.unwrap();
        let s = &spans[0];
        // A second batch goes over the connection the first one left open.
        let second = "0af7651916cd43dd8448eb211c80319c";
        let incoming = format!("00-{second}-{PARENT}-01");
        let (status, _) = get(&hop.1, "/again", &[("traceparent", &incoming)]).await;
        assert_eq!(status, 200);
        let again = collector.wait_trace(second, 1).await.unwrap();
        assert_eq!(again[0]["peer_port"], s["peer_port"], "one kept connection");
        assert_eq!(s["protocol"], "http/protobuf", "tls {tls}");
        assert_eq!(s["kind"], "SPAN_KIND_SERVER");
        assert_eq!(s["parent_span_id"], PARENT);
        assert!(s["name"].as_str().unwrap().starts_with("GET "), "{s}");
        assert_eq!(s["attributes"]["url.path"], "/over-http");
        assert_eq!(s["attributes"]["http.response.status_code"], 200);
        assert_eq!(s["resource"]["service.name"], "default/api");
        let admin = api.admin_addr.to_string();
        weft_tests::metric_reaches(&admin, "spans_exported_total", 2.0, Duration::from_secs(20))
            .await
            .unwrap();
    }
    let collector = Collector::start_http(None).await.unwrap();
    let trace = otlp_http(format!("http://127.0.0.1:{}/wrong/path", collector.port));
    let (api, _hop) = one_traced_hop(trace, "/lost").await;
    weft_tests::otlp::export_failed(api.admin_addr)
        .await
        .unwrap();
    // Failed for the 404 (the request reached the collector at the path as given), not for
    // anything before it.
    assert_eq!(
        collector.spans(),
        vec![serde_json::json!({"rejected_path": "/wrong/path"})]
    );

    // A collector that closes each connection after its answer: every batch connects again.
    let collector = Collector::start_http_closing().await.unwrap();
    let trace = otlp_http(format!("http://127.0.0.1:{}", collector.port));
    let (api, hop) = one_traced_hop(trace, "/closing/1").await;
    let first = collector.wait_trace(TRACE, 1).await.unwrap();
    let second = "0af7651916cd43dd8448eb211c80319c";
    let incoming = format!("00-{second}-{PARENT}-01");
    let (status, _) = get(&hop.1, "/closing/2", &[("traceparent", &incoming)]).await;
    assert_eq!(status, 200);
    let again = collector.wait_trace(second, 1).await.unwrap();
    assert_ne!(
        again[0]["peer_port"], first[0]["peer_port"],
        "a new connection"
    );
    let text = weft_tests::metric_reaches(
        &api.admin_addr.to_string(),
        "spans_exported_total",
        2.0,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(
        weft_tests::metric_value(&text, "span_export_failures_total"),
        Some(0.0)
    );
}

/// A failing export is a warning in the proxy's log, naming the collector and its answer, at
/// most once a minute however many batches fail (each is counted).
#[tokio::test]
async fn a_failing_export_is_logged_once_a_minute_not_per_batch() {
    let collector = Collector::start_http_refusing(100, 400, None)
        .await
        .unwrap();
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let web = ProxyProcess::start(
        &mesh,
        &mesh.cp.grpc_addr().to_string(),
        dir.path(),
        "web",
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/protobuf",
            "--trace-sample-rate",
            "1",
        ],
    )
    .await
    .unwrap();
    let admin = web.admin.clone();
    // Each request is a traced answer of the proxy's own (no such service): a span, a batch.
    for want in [1.0, 2.0, 3.0] {
        let (status, _, _) = proxy_get(web.outbound, "http://nowhere.default/")
            .await
            .unwrap();
        assert!(status >= 400, "{status}");
        weft_tests::metric_reaches(
            &admin,
            "span_export_failures_total",
            want,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    }
    let log = web.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("span export failing"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains(&endpoint) && warned[0].contains("400 Bad Request"),
        "{}",
        warned[0]
    );
    assert_eq!(collector.refusals(), 3);
}
