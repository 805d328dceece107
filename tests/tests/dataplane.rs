//! The data path end to end: a control plane (embedded store), a client proxy (`web`) and a
//! server proxy per backend, all on loopback. Each test reads as the traffic it sends.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proto::mesh::v1::Protocol;
use weft_tests::dataplane::{
    ProxyOpts, apply, body, echo, grpc_echo, http_backend, proxy_get, proxy_request, service,
    start_proxy, tcp_echo, wait_endpoints,
};
use weft_tests::mesh::{TestMesh, workload};
use weft_tests::metric_value;

/// A mesh with `api` (HTTP/1.1 backend behind its proxy) and a client proxy `web`.
async fn api_and_web(
    strict: bool,
) -> (
    TestMesh,
    tempfile::TempDir,
    weft_proxy::Proxy,
    weft_proxy::Proxy,
) {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let backend = http_backend("api-v1", false).await.unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "api".into())),
        strict,
        ..Default::default()
    };
    let api = start_proxy(&mesh, &cp, dir.path(), "api", opts)
        .await
        .unwrap();
    let web = start_proxy(&mesh, &cp, dir.path(), "web", ProxyOpts::default())
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    (mesh, dir, api, web)
}

#[tokio::test]
async fn http1_through_two_proxies_carries_the_verified_client_identity() {
    let (_mesh, _dir, api, web) = api_and_web(false).await;
    let out = web.outbound_addr.unwrap();
    let resp = proxy_request(
        out,
        "GET",
        "http://api.default/hello",
        // A forged identity header must not reach the backend.
        &[("x-weft-client-id", "spiffe://mesh.test/ns/default/sa/admin")],
        body(""),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-backend"], "api-v1");
    assert_eq!(h["x-seen-client-id"], workload("default", "web").as_str());
    assert_eq!(h["x-seen-host"], "api.default");
    // Carried as HTTP/2 between the proxies, given back as HTTP/1.1.
    assert_eq!(h["x-seen-version"], "HTTP/1.1");
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"api-v1 /hello");

    // A POST body streams both ways.
    let resp = proxy_request(
        out,
        "POST",
        "http://api.default:80/echo",
        &[],
        body("ping-pong"),
    )
    .await
    .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "ping-pong"
    );

    // Both proxies counted it, with the identities on each side.
    let metrics = web.metrics.encode();
    let server = workload("default", "api");
    let line = format!(
        "response_total{{direction=\"outbound\",authority=\"api.default:80\",status_code=\"200\",tls=\"true\",client_id=\"\",server_id=\"{server}\",error=\"\"}}"
    );
    assert_eq!(metric_value(&metrics, &line), Some(2.0), "{metrics}");
    let metrics = api.metrics.encode();
    assert!(
        metrics.contains(&format!("client_id=\"{}\"", workload("default", "web"))),
        "{metrics}"
    );
    assert!(
        metrics.contains("response_latency_ms_count{direction=\"inbound\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn proxy_generated_errors_say_why() {
    let (mesh, _dir, _api, web) = api_and_web(false).await;
    let out = web.outbound_addr.unwrap();
    // A mesh service with no endpoints.
    apply(&mesh, vec![service("empty", 80, Protocol::Http1)])
        .await
        .unwrap();
    weft_tests::poll(Duration::from_secs(10), || {
        web.config
            .borrow()
            .services
            .contains_key("default/empty")
            .then_some(())
    })
    .await
    .unwrap();
    let (status, headers, text) = proxy_get(out, "http://empty.default/").await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert_eq!(headers["x-weft-error"], "no-endpoints");
    // A port the service does not have is not a mesh destination: with passthrough on it is
    // forwarded as plain HTTP, and the connection is refused.
    let (status, headers, _) = proxy_get(out, "http://127.0.0.1:1/").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(headers["x-weft-error"], "connect-failed");
}

#[tokio::test]
async fn http2_and_grpc_streaming_with_trailers() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(
        &mesh,
        vec![
            service("h2", 80, Protocol::Http2),
            service("grpc", 50051, Protocol::Grpc),
        ],
    )
    .await
    .unwrap();
    let h2_backend = http_backend("h2", true).await.unwrap();
    let grpc_backend = grpc_echo().await.unwrap();
    let _h2 = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "h2",
        ProxyOpts {
            app: Some((h2_backend.port(), "h2".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _grpc = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "grpc",
        ProxyOpts {
            app: Some((grpc_backend.port(), "grpc".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let web = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "web",
        ProxyOpts {
            upstreams: vec!["grpc.default:50051".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_endpoints(&web, "h2", 1).await.unwrap();
    wait_endpoints(&web, "grpc", 1).await.unwrap();

    // HTTP/2 prior knowledge from the app to the outbound port.
    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("http://h2.default/x")
        .body(body(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
    assert_eq!(resp.headers()["x-seen-host"], "h2.default");

    // gRPC through an --upstream port: unary, then a bidirectional stream whose status
    // arrives in the trailers.
    let upstream = format!("http://{}", web.upstream_addrs[0]);
    let mut client = echo::echo_client::EchoClient::connect(upstream)
        .await
        .unwrap();
    let r = client.unary(echo::Msg { text: "hi".into() }).await.unwrap();
    assert_eq!(
        r.into_inner().text,
        format!("hi from {}", workload("default", "web"))
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        tx.send(echo::Msg {
            text: format!("m{i}"),
        })
        .await
        .unwrap();
        let got = stream.message().await.unwrap().unwrap();
        assert_eq!(got.text, format!("echo m{i}"));
    }
    drop(tx);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "done after 3");
}

#[tokio::test]
async fn tcp_echo_with_half_close() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("db", 5432, Protocol::Tcp)])
        .await
        .unwrap();
    let backend = tcp_echo().await.unwrap();
    let db = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "db",
        ProxyOpts {
            app: Some((backend.port(), "db".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let web = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "web",
        ProxyOpts {
            upstreams: vec!["db.default:5432".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_endpoints(&web, "db", 1).await.unwrap();
    let mut tcp = TcpStream::connect(web.upstream_addrs[0]).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tcp.write_all(&payload).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    tcp.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload);
    let m = db.metrics.encode();
    assert!(
        metric_value(&m, "tcp_read_bytes_total{direction=\"inbound\"}").unwrap()
            >= payload.len() as f64,
        "{m}"
    );
}

#[tokio::test]
async fn upgrade_and_connect_pass_through() {
    let (_mesh, _dir, _api, web) = api_and_web(false).await;
    let out = web.outbound_addr.unwrap();
    // Upgrade: a 101 from the backend, then raw bytes both ways.
    let tcp = TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = hyper::Request::get("http://api.default/upgrade")
        .header("host", "api.default")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(body(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"over the upgrade").await.unwrap();
    let mut buf = [0u8; 16];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over the upgrade");

    // CONNECT to a mesh service: a tunnel over mTLS to its backend (plain HTTP inside).
    let mut tcp = TcpStream::connect(out).await.unwrap();
    tcp.write_all(b"CONNECT api.default:80 HTTP/1.1\r\nhost: api.default:80\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 19];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[..12], b"HTTP/1.1 200");
    let mut rest = Vec::new();
    while !rest.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        rest.push(b[0]);
    }
    tcp.write_all(b"GET /tunnelled HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.ends_with("api-v1 /tunnelled"), "{answer}");
}

#[tokio::test]
async fn strict_mode_refuses_plaintext_and_permissive_serves_it_without_identity() {
    let (_mesh, _dir, api, _web) = api_and_web(false).await;
    let (status, headers, _) = proxy_get(api.inbound_addr.unwrap(), "http://api.default/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-seen-client-id"], "none");

    let (_mesh, _dir, api, web) = api_and_web(true).await;
    let err = proxy_get(api.inbound_addr.unwrap(), "http://api.default/").await;
    assert!(err.is_err(), "plaintext was served in strict mode: {err:?}");
    // mTLS from the mesh still works.
    let (status, _, _) = proxy_get(web.outbound_addr.unwrap(), "http://api.default/")
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (mesh, _dir, api, _web) = api_and_web(false).await;
    // Same trust domain, another CA: the name matches, the signature does not.
    let foreign = weft_tests::TestCa::init(weft_tests::mesh::TD)
        .await
        .unwrap();
    let ca = weft_certs::CertificateAuthority::load_dir(&foreign.path(), None).unwrap();
    let key = weft_certs::WorkloadKey::generate().unwrap();
    let id = weft_certs::SpiffeId::parse(&workload("default", "web")).unwrap();
    let issued = ca
        .issue(key.key_pair(), &id, &[], Some(Duration::from_secs(600)))
        .unwrap();
    let cert = key.certified(issued.chain).unwrap();
    let config = weft_certs::tls::client_config(
        mesh.ca.bundle(),
        weft_certs::ExpectedPeer::AnyInTrustDomain,
        Some(cert),
    )
    .unwrap();
    let tcp = TcpStream::connect(api.inbound_addr.unwrap()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("api").unwrap();
    let refused = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Err(_) => true,
        // TLS 1.3: the server's verdict on the client certificate arrives after the client
        // finished; it shows as an alert or a closed connection on the first read.
        Ok(mut tls) => {
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            matches!(tls.read(&mut buf).await, Err(_) | Ok(0))
        }
    };
    assert!(refused, "a foreign client certificate was accepted");
}
