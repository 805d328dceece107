//! The control plane's own traces (`--otlp-endpoint` on `weft-control-plane`): a SERVER span per
//! unary RPC and a PRODUCER span per discovery push, exported over OTLP/gRPC to a real receiver
//! that is not ours (`weft_tests::otlp`: opentelemetry-proto's TraceService on grpcio).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use weft_control_plane::model::DefaultInbound;
use weft_control_plane::{Config, ControlPlane, StoreConfig};
use weft_proto::config::v1::ApplyRequest;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::identity::v1::CertifyRequest;
use weft_proto::identity::v1::identity_client::IdentityClient;
use weft_proto::mesh::v1::{Protocol, SERVICE_TYPE_URL};
use weft_proto::trace::TraceConfig;
use weft_tests::ctl::Ctl;
use weft_tests::dataplane::{ProxyProcess, service};
use weft_tests::mesh::{TD, TestMesh, workload};
use weft_tests::otlp::Collector;
use weft_tests::{ControlPlaneProcess, TestCa};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

const CERTIFY: &str = "weft.identity.v1.Identity/Certify";
const APPLY: &str = "weft.config.v1.Config/Apply";
const PUSH: &str = "weft.discovery/push";

const API: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata:
  name: api
spec:
  ports:
  - name: http
    port: 80
    protocol: http1
";

/// Waits for a span `pick` chooses among those received.
async fn wait_span(
    collector: &Collector,
    what: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    match weft_tests::poll(Duration::from_secs(20), || {
        collector.spans().into_iter().find(|s| pick(s))
    })
    .await
    {
        Ok(s) => s,
        Err(_) => panic!("no {what} span; received: {:#?}", collector.spans()),
    }
}

/// The spans every control-plane span shares: the resource, scope and RPC system.
fn assert_ours(s: &serde_json::Value) {
    assert_eq!(s["resource"]["service.name"], "weft-control-plane", "{s}");
    assert_eq!(
        s["resource"]["telemetry.sdk.name"], "weft-control-plane",
        "{s}"
    );
    assert_eq!(s["scope"], "weft-control-plane", "{s}");
    assert_eq!(s["attributes"]["rpc.system.name"], "grpc", "{s}");
    assert_eq!(s["flags"].as_u64().unwrap() & 1, 1, "{s}");
    assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s}");
}

/// The operator's view, all real processes: `weft-control-plane --otlp-endpoint …
/// --trace-sample-rate 1`, a `weft-proxy` that certifies (and renews) and takes discovery, and
/// `weftctl apply`. The collector gets the Certify calls (the renewal names the proxy by its
/// certificate), the Apply, and the pushes to the proxy, the one the Apply caused as its child;
/// a Certify with a bad token is an error span with its gRPC status.
#[tokio::test]
async fn rpcs_and_discovery_pushes_of_a_running_control_plane_are_traced() {
    let collector = Collector::start().await.unwrap();
    let ca = TestCa::init(TD).await.unwrap();
    let endpoint = collector.endpoint();
    let cp = ControlPlaneProcess::start(
        &ca.path(),
        &["--otlp-endpoint", &endpoint, "--trace-sample-rate", "1"],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A short certificate: the proxy renews it (Certify with its certificate) within ~9 s.
    let web = ProxyProcess::start_with_ca(
        &ca,
        &cp.grpc_addr,
        dir.path(),
        "web",
        &["--cert-ttl", "12s"],
    )
    .await
    .unwrap();
    let web_id = workload("default", "web");

    // The proxy's first Certify: it has no certificate yet, so no weft.client_id (never taken
    // from the request).
    let first = wait_span(&collector, "first Certify", |s| s["name"] == CERTIFY).await;
    assert_ours(&first);
    assert_eq!(first["kind"], "SPAN_KIND_SERVER");
    assert_eq!(first["parent_span_id"], "", "a new trace at rate 1");
    assert_eq!(first["status"], "STATUS_CODE_UNSET");
    let a = &first["attributes"];
    assert_eq!(a["rpc.method"], CERTIFY);
    assert_eq!(a["rpc.status_code"], 0);
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    assert!(a["network.peer.port"].as_i64().unwrap() > 0);
    assert_eq!(a["weft.client_id"], serde_json::Value::Null, "{first}");

    // weftctl apply, as an operator runs it.
    let ctl = Ctl::login(&ca, &cp).await.unwrap();
    let file = ctl.file("api.yaml", API).unwrap();
    let out = ctl.ok(&["apply", "-f", &file]).await.unwrap();
    assert_eq!(out, "service/default/api created\n");
    let apply = wait_span(&collector, "Apply", |s| s["name"] == APPLY).await;
    assert_ours(&apply);
    assert_eq!(apply["kind"], "SPAN_KIND_SERVER");
    assert_eq!(apply["status"], "STATUS_CODE_UNSET");
    assert_eq!(apply["attributes"]["rpc.method"], APPLY);
    assert_eq!(apply["attributes"]["rpc.status_code"], 0);
    assert_eq!(
        apply["attributes"]["weft.client_id"],
        "spiffe://mesh.test/ns/weft-system/sa/weft-admin"
    );

    // The push of the new service to the proxy: a child of the Apply's span, ACKed.
    let caused = wait_span(&collector, "push caused by the Apply", |s| {
        s["name"] == PUSH && s["parent_span_id"] == apply["span_id"]
    })
    .await;
    assert_ours(&caused);
    assert_eq!(caused["trace_id"], apply["trace_id"]);
    assert_eq!(caused["kind"], "SPAN_KIND_PRODUCER");
    assert_eq!(caused["status"], "STATUS_CODE_UNSET");
    let a = &caused["attributes"];
    assert_eq!(
        a["rpc.method"],
        "weft.discovery.v1.AggregatedDiscovery/DeltaResources"
    );
    assert_eq!(a["weft.node_id"], "web");
    assert_eq!(a["weft.client_id"], web_id);
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    assert_eq!(a["weft.discovery.type"], "service");
    assert_eq!(a["weft.discovery.resources"], 1);
    assert_eq!(a["weft.discovery.removed"], 0);
    assert_eq!(a["weft.discovery.response"], "ack");
    assert!(
        a["weft.discovery.nonce"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(!a["weft.discovery.version"].as_str().unwrap().is_empty());

    // The pushes of the proxy's first sync (the trust bundle at least) are traces of their own.
    let bundle = wait_span(&collector, "trust bundle push", |s| {
        s["name"] == PUSH && s["attributes"]["weft.discovery.type"] == "trust_bundle"
    })
    .await;
    assert_eq!(bundle["parent_span_id"], "");
    assert_eq!(bundle["attributes"]["weft.node_id"], "web");
    assert!(
        bundle["attributes"]["weft.discovery.resources"]
            .as_i64()
            .unwrap()
            >= 1
    );

    // The renewal: the caller is known by its verified certificate.
    let renewal = wait_span(&collector, "renewal Certify", |s| {
        s["name"] == CERTIFY && s["attributes"]["weft.client_id"] == web_id.as_str()
    })
    .await;
    assert_eq!(renewal["attributes"]["rpc.status_code"], 0);
    assert_eq!(renewal["status"], "STATUS_CODE_UNSET");

    // A refused Certify (a token that is no token): an error with its gRPC status.
    let refused = weft_tests::certify(
        &cp.grpc_addr,
        ca.bundle(),
        &workload("default", "intruder"),
        "not-a-token",
    )
    .await;
    assert!(refused.is_err());
    let bad = wait_span(&collector, "refused Certify", |s| {
        s["name"] == CERTIFY && s["attributes"]["rpc.status_code"] == 16
    })
    .await;
    assert_eq!(bad["status"], "STATUS_CODE_ERROR");
    assert_eq!(bad["attributes"]["error.type"], "grpc-status 16");
    assert!(!bad["status_message"].as_str().unwrap().is_empty(), "{bad}");
    drop(web);
}

/// A control plane in this process, tracing to `endpoint` at `rate`.
async fn traced_mesh(endpoint: &str, rate: f64) -> TestMesh {
    let ca = TestCa::init(TD).await.unwrap();
    let config = Config {
        ca_dir: ca.path(),
        trust_domain: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        svid_ttl: Duration::from_secs(3600),
        server_names: vec!["localhost".into()],
        k8s: None,
        store: StoreConfig::Memory { snapshot: None },
        admin_identities: vec![],
        registration_ttl: Duration::from_secs(20),
        max_connections: weft_control_plane::transport::MAX_CONNECTIONS,
        admin_remote: Default::default(),
    };
    let trace = TraceConfig {
        endpoint: endpoint.to_owned(),
        ca: None,
        sample_rate: rate,
        service_name: "weft-control-plane".into(),
        ..Default::default()
    };
    let cp = ControlPlane::start_traced(config, DefaultInbound::default(), Some(trace))
        .await
        .unwrap();
    TestMesh { ca, cp }
}

fn with_traceparent<T>(msg: T, traceparent: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(tp) = traceparent {
        req.metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    req
}

/// At rate 0 only RPCs with a sampled `traceparent` are traced, as a continuation of it (the
/// parent span ID exact), and the push an Apply causes is its child even so; a NACK makes the
/// push span an error; refused RPCs are errors with their status.
#[tokio::test]
async fn a_traceparent_is_continued_and_its_pushes_and_failures_follow() {
    let collector = Collector::start().await.unwrap();
    let mesh = traced_mesh(&collector.endpoint(), 0.0).await;
    let mut proxy = mesh.proxy("nacker").await.unwrap();
    proxy.subscribe(SERVICE_TYPE_URL, &[]).await.unwrap();
    let mut config = ConfigClient::new(mesh.admin().await.unwrap());
    let apply = |name: &str| ApplyRequest {
        documents: vec![service(name, 80, Protocol::Http1)],
        dry_run: false,
    };

    // Not traced: no header, an unsampled one, an invalid one.
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    for (name, tp) in [
        ("plain", None),
        ("unsampled", Some(unsampled.as_str())),
        ("invalid", Some("00-zz")),
    ] {
        config
            .apply(with_traceparent(apply(name), tp))
            .await
            .unwrap();
        let push = proxy.recv().await.unwrap();
        assert_eq!(push.resources[0].name, format!("default/{name}"));
        proxy.ack(&push).await.unwrap();
    }

    // Traced: the Apply continues the caller's trace; the push it causes is its child.
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    config
        .apply(with_traceparent(apply("api"), Some(&sampled)))
        .await
        .unwrap();
    let push = proxy.recv().await.unwrap();
    assert_eq!(push.resources[0].name, "default/api");
    proxy.nack(&push, "refused on purpose").await.unwrap();
    let spans = collector.wait_trace(TRACE, 2).await.unwrap();
    let server = spans.iter().find(|s| s["name"] == APPLY).unwrap();
    assert_ours(server);
    assert_eq!(server["kind"], "SPAN_KIND_SERVER");
    assert_eq!(server["parent_span_id"], PARENT, "the caller's span, exact");
    assert_eq!(server["attributes"]["rpc.status_code"], 0);
    let pushed = spans.iter().find(|s| s["name"] == PUSH).unwrap();
    assert_ours(pushed);
    assert_eq!(pushed["parent_span_id"], server["span_id"]);
    assert_eq!(pushed["kind"], "SPAN_KIND_PRODUCER");
    let a = &pushed["attributes"];
    assert_eq!(a["weft.node_id"], "nacker");
    assert_eq!(a["weft.client_id"], workload("default", "nacker"));
    assert_eq!(a["weft.discovery.type"], "service");
    assert_eq!(a["weft.discovery.nonce"], push.nonce.as_str());
    assert_eq!(
        a["weft.discovery.version"],
        push.system_version_info.as_str()
    );
    assert_eq!(a["weft.discovery.resources"], 1);
    // The NACK: an error with the proxy's reason.
    assert_eq!(a["weft.discovery.response"], "nack");
    assert_eq!(a["error.type"], "nack");
    assert_eq!(pushed["status"], "STATUS_CODE_ERROR");
    assert_eq!(pushed["status_message"], "refused on purpose");

    // Refused RPCs: an Apply with nothing in it, a Certify with a bad token.
    let bad_apply = "11111111111111111111111111111111";
    let status = config
        .apply(with_traceparent(
            ApplyRequest::default(),
            Some(&format!("00-{bad_apply}-{PARENT}-01")),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let s = &collector.wait_trace(bad_apply, 1).await.unwrap()[0];
    assert_eq!(s["name"], APPLY);
    assert_eq!(s["status"], "STATUS_CODE_ERROR");
    assert_eq!(s["status_message"], "documents: nothing to apply");
    assert_eq!(s["attributes"]["rpc.status_code"], 3);
    assert_eq!(s["attributes"]["error.type"], "grpc-status 3");

    let bad_certify = "22222222222222222222222222222222";
    let key = weft_certs::WorkloadKey::generate().unwrap();
    let id = weft_certs::SpiffeId::parse(&workload("default", "intruder")).unwrap();
    let request = CertifyRequest {
        token: "not-a-token".into(),
        csr_der: key.csr_for(Some(&id)).unwrap(),
        requested_ttl: None,
    };
    let status = IdentityClient::new(mesh.channel(None).await.unwrap())
        .certify(with_traceparent(
            request,
            Some(&format!("00-{bad_certify}-{PARENT}-01")),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let s = &collector.wait_trace(bad_certify, 1).await.unwrap()[0];
    assert_eq!(s["name"], CERTIFY);
    assert_eq!(s["status"], "STATUS_CODE_ERROR");
    assert_eq!(s["attributes"]["rpc.status_code"], 16);
    assert_eq!(s["attributes"]["weft.client_id"], serde_json::Value::Null);

    // The exporter sends in order: with these in, anything the untraced calls (and their
    // pushes) had made would be in too. They made nothing.
    let all = collector.spans();
    assert_eq!(all.len(), 4, "{all:#?}");
    drop(proxy);
}

/// A collector that takes connections and never answers: Apply calls go through as fast as
/// ever; the export is given up and counted in the control plane's metrics.
#[tokio::test]
async fn a_collector_that_is_down_costs_no_rpc() {
    let endpoint = weft_tests::otlp::silent_collector().await;
    let mesh = traced_mesh(&endpoint, 1.0).await;
    let mut config = ConfigClient::new(mesh.admin().await.unwrap());
    let started = Instant::now();
    for i in 0..20 {
        config
            .apply(ApplyRequest {
                documents: vec![service(&format!("s{i}"), 80, Protocol::Http1)],
                dry_run: false,
            })
            .await
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "20 traced Applies took {took:?}"
    );
    let text = weft_tests::otlp::export_failed(mesh.cp.admin_addr())
        .await
        .unwrap();
    assert_eq!(
        weft_tests::metric_value(&text, "spans_exported_total"),
        Some(0.0)
    );
    for reason in ["queue-full", "export-failed"] {
        let series = format!("\nspans_dropped_total{{reason=\"{reason}\"}} ");
        assert!(text.contains(&series), "{text}");
    }
}

/// A bad `--otlp-endpoint` or `--trace-sample-rate` fails start, naming the flag.
#[tokio::test]
async fn bad_trace_flags_fail_start() {
    let ca = TestCa::init(TD).await.unwrap();
    for (args, want) in [
        (
            &["--otlp-endpoint", "ftp://collector:4317"][..],
            "--otlp-endpoint \"ftp://collector:4317\": the scheme must be http:// or https://",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://127.0.0.1:4317",
                "--trace-sample-rate",
                "1.5",
            ][..],
            "\"1.5\" is not a number from 0 to 1",
        ),
        (
            &["--otlp-endpoint", "https://127.0.0.1:4317"][..],
            "an https:// endpoint needs --otlp-ca",
        ),
    ] {
        let err = ControlPlaneProcess::start(&ca.path(), args)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
