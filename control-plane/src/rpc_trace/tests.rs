use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};
use weft_proto::trace::{SpanId, TraceId};

use super::*;
use crate::transport::PeerSvid;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[test]
fn which_paths_get_a_span() {
    for (path, want) in [
        (
            "/weft.identity.v1.Identity/Certify",
            Some("weft.identity.v1.Identity/Certify"),
        ),
        (
            "/weft.config.v1.Config/Apply",
            Some("weft.config.v1.Config/Apply"),
        ),
        (
            "/weft.registry.v1.Registration/Deregister",
            Some("weft.registry.v1.Registration/Deregister"),
        ),
        // The streams and health checks: none.
        (
            "/weft.discovery.v1.AggregatedDiscovery/DeltaResources",
            None,
        ),
        ("/weft.registry.v1.Registration/Register", None),
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", None),
        // Not a gRPC method path.
        ("/", None),
        ("", None),
        ("/Config/Apply", None),
        ("/weft.config.v1.Config/", None),
        ("/weft.config.v1.Config/Apply/x", None),
        ("weft.config.v1.Config/Apply", None),
    ] {
        assert_eq!(traced_method(path), want, "{path:?}");
    }
}

/// Every streaming RPC in our .proto files is untraced, and every unary one traced: a new
/// stream added to a service must be listed (or it would get a span for its whole life).
#[test]
fn the_untraced_list_is_exactly_the_streams_of_our_protos() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/weft");
    let mut protos = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let v1 = dir.unwrap().path().join("v1");
        for f in std::fs::read_dir(&v1).unwrap() {
            protos.push(f.unwrap().path());
        }
    }
    let mut streams = Vec::new();
    let mut unary = 0;
    for path in protos {
        let text = std::fs::read_to_string(&path).unwrap();
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .unwrap()
            .trim_end_matches(';')
            .to_owned();
        let mut service = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap().to_owned();
            }
            if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                let path = format!("/{package}.{service}/{name}");
                if rest.contains("stream ") {
                    streams.push(path[1..].to_owned());
                    assert_eq!(traced_method(&path), None, "{path}");
                } else {
                    unary += 1;
                    assert_eq!(traced_method(&path), Some(&path[1..]), "{path}");
                }
            }
        }
    }
    streams.sort();
    let mut listed = UNTRACED.to_vec();
    listed.sort();
    assert_eq!(streams, listed);
    assert!(unary >= 6, "{unary} unary RPCs found");
}

#[test]
fn statuses_are_read_from_headers_or_trailers() {
    let mut h = HeaderMap::new();
    assert_eq!(grpc_status(&h), None);
    h.insert("grpc-status", "16".parse().unwrap());
    h.insert("grpc-message", "token%20expired".parse().unwrap());
    assert_eq!(grpc_status(&h), Some((16, "token expired".to_owned())));
    h.insert("grpc-status", "0".parse().unwrap());
    assert_eq!(grpc_status(&h).map(|s| s.0), Some(0));
}

fn open() -> OpenSpan {
    Parent {
        trace_id: TraceId([1; 16]),
        parent: Some(SpanId([2; 8])),
        flags: 1,
    }
    .child()
    .0
}

fn attr<'a>(s: &'a SpanRecord, key: &str) -> Option<&'a Value> {
    s.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[test]
fn an_rpc_span_has_the_rpc_attributes_and_errors_for_any_status_but_ok() {
    let rpc = RpcFacts {
        method: "weft.config.v1.Config/Apply".into(),
        peer: Some("10.0.0.7:4312".parse().unwrap()),
        client_id: Some("spiffe://mesh.test/ns/weft-system/sa/weft-admin".into()),
    };
    let ok = rpc_span(open(), &rpc, Some((0, String::new())));
    assert_eq!(ok.name, "weft.config.v1.Config/Apply");
    assert_eq!(ok.kind, Kind::Server);
    assert_eq!(ok.error, None);
    assert_eq!(attr(&ok, "rpc.system.name"), Some(&"grpc".into()));
    assert_eq!(
        attr(&ok, "rpc.method"),
        Some(&"weft.config.v1.Config/Apply".into())
    );
    assert_eq!(attr(&ok, "rpc.status_code"), Some(&Value::Int(0)));
    assert_eq!(attr(&ok, "network.peer.address"), Some(&"10.0.0.7".into()));
    assert_eq!(attr(&ok, "network.peer.port"), Some(&Value::Int(4312)));
    assert_eq!(
        attr(&ok, "weft.client_id"),
        Some(&"spiffe://mesh.test/ns/weft-system/sa/weft-admin".into())
    );
    assert_eq!(attr(&ok, "error.type"), None);

    let anonymous = RpcFacts {
        client_id: None,
        ..rpc.clone()
    };
    let bad = rpc_span(open(), &anonymous, Some((3, "documents: empty".into())));
    assert_eq!(bad.error.as_deref(), Some("documents: empty"));
    assert_eq!(attr(&bad, "rpc.status_code"), Some(&Value::Int(3)));
    assert_eq!(attr(&bad, "error.type"), Some(&"grpc-status 3".into()));
    assert_eq!(attr(&bad, "weft.client_id"), None, "no certificate, no ID");

    let cut = rpc_span(open(), &rpc, None);
    assert!(cut.error.is_some());
    assert_eq!(attr(&cut, "rpc.status_code"), None);
    assert_eq!(attr(&cut, "error.type"), Some(&"no-status".into()));
}

#[test]
fn links_find_the_latest_traced_change_in_a_range() {
    let links = TraceLinks::default();
    let span = |b: u8| Parent {
        trace_id: TraceId([b; 16]),
        parent: Some(SpanId([b; 8])),
        flags: 1,
    };
    links.record(5, span(5));
    links.record(9, span(9));
    assert_eq!(links.latest_in(0, 4).map(|p| p.trace_id), None);
    assert_eq!(
        links.latest_in(4, 5).map(|p| p.trace_id),
        Some(span(5).trace_id)
    );
    assert_eq!(links.latest_in(5, 8).map(|p| p.trace_id), None);
    assert_eq!(
        links.latest_in(0, 20).map(|p| p.trace_id),
        Some(span(9).trace_id)
    );
    assert_eq!(links.latest_in(9, 20).map(|p| p.trace_id), None);
    // Bounded: the oldest go.
    for r in 100..100 + LINKS as i64 {
        links.record(r, span(1));
    }
    assert_eq!(links.latest_in(0, 99).map(|p| p.trace_id), None);
    assert_eq!(links.recent.lock().unwrap().len(), LINKS);
}

#[test]
fn a_push_span_ends_with_the_proxys_answer() {
    let facts = PushFacts {
        node_id: "web-1",
        client_id: "spiffe://mesh.test/ns/default/sa/web",
        peer: "127.0.0.1:5000".parse().unwrap(),
        r#type: "service",
        nonce: "3",
        version: "abc",
        resources: 2,
        removed: 1,
    };
    let a = push_attributes(&facts);
    let ack = push_span(open(), a.clone(), PushAnswer::Ack);
    assert_eq!(ack.name, "weft.discovery/push");
    assert_eq!(ack.kind, Kind::Producer);
    assert_eq!(ack.error, None);
    assert_eq!(attr(&ack, "weft.discovery.response"), Some(&"ack".into()));
    assert_eq!(attr(&ack, "weft.discovery.resources"), Some(&Value::Int(2)));
    assert_eq!(attr(&ack, "weft.discovery.removed"), Some(&Value::Int(1)));
    assert_eq!(attr(&ack, "weft.node_id"), Some(&"web-1".into()));
    let nack = push_span(open(), a.clone(), PushAnswer::Nack("bad route".into()));
    assert_eq!(nack.error.as_deref(), Some("bad route"));
    assert_eq!(attr(&nack, "error.type"), Some(&"nack".into()));
    let none = push_span(open(), a, PushAnswer::None);
    assert_eq!(none.error, None);
    assert_eq!(attr(&none, "weft.discovery.response"), Some(&"none".into()));
}

type TestBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A handler's answer: OK in the trailers after a message, or an error in the headers
/// (trailers-only).
fn answer(code: Option<u8>) -> Response<TestBody> {
    let mut frames = Vec::new();
    let mut resp = Response::builder().header("content-type", "application/grpc");
    match code {
        None => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            frames.push(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))));
            frames.push(Ok(Frame::trailers(trailers)));
        }
        Some(c) => {
            resp = resp
                .header("grpc-status", c.to_string())
                .header("grpc-message", "refused");
        }
    }
    resp.body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

/// Runs one request through the layer around a handler answering `code`; returns the span the
/// tracer got, if any, and the context the handler saw.
async fn through_layer(
    tracer: Option<(f64, &mut mpsc::Receiver<SpanRecord>)>,
    path: &str,
    traceparent: Option<&str>,
    code: Option<u8>,
) -> (Option<SpanRecord>, Option<RpcSpan>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let handler = tower::service_fn(move |req: Request<()>| {
        let seen = req.extensions().get::<RpcSpan>().copied();
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(seen);
        }
        async move { Ok::<_, Infallible>(answer(code)) }
    });
    let (t, queue) = match tracer {
        Some((rate, rx)) => {
            let (q, r) = mpsc::channel(8);
            *rx = r;
            (
                Some(Arc::new(Tracer::new(rate, q, Default::default()))),
                Some(rx),
            )
        }
        None => (None, None),
    };
    let mut svc = RpcTraceLayer::new(t).layer(handler);
    let mut req = Request::post(path).body(()).unwrap();
    if let Some(tp) = traceparent {
        req.headers_mut().insert("traceparent", tp.parse().unwrap());
    }
    req.extensions_mut().insert(PeerInfo {
        remote_addr: "127.0.0.1:40000".parse().unwrap(),
        svid: Some(PeerSvid {
            id: weft_certs::SpiffeId::parse("spiffe://mesh.test/ns/default/sa/web").unwrap(),
            not_after: SystemTime::now() + Duration::from_secs(60),
            issuer_key_id: None,
        }),
    });
    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.unwrap();
    // What passed through is what the handler answered.
    match code {
        None => {
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes().len(), 5);
        }
        Some(c) => assert_eq!(status.unwrap(), c.to_string().as_str()),
    }
    let seen = rx.await.unwrap();
    let span = queue.and_then(|q| q.try_recv().ok());
    (span, seen)
}

#[tokio::test]
async fn the_layer_continues_a_sampled_traceparent_and_reads_the_trailers() {
    let (_, mut rx) = mpsc::channel(1);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (span, seen) = through_layer(
        Some((0.0, &mut rx)),
        "/weft.config.v1.Config/Apply",
        Some(&tp),
        None,
    )
    .await;
    let span = span.expect("a span");
    assert_eq!(span.trace_id.to_string(), TRACE);
    assert_eq!(span.parent.unwrap().to_string(), PARENT);
    assert_eq!(span.name, "weft.config.v1.Config/Apply");
    assert_eq!(span.kind, Kind::Server);
    assert_eq!(span.error, None);
    assert_eq!(attr(&span, "rpc.status_code"), Some(&Value::Int(0)));
    assert_eq!(
        attr(&span, "weft.client_id"),
        Some(&"spiffe://mesh.test/ns/default/sa/web".into())
    );
    assert_eq!(
        attr(&span, "network.peer.address"),
        Some(&"127.0.0.1".into())
    );
    // The handler saw the RPC's span as the parent of what it causes.
    let seen = seen.expect("the RPC's span in the extensions").0;
    assert_eq!(seen.trace_id, span.trace_id);
    assert_eq!(seen.parent, Some(span.span_id));
}

#[tokio::test]
async fn a_trailers_only_error_ends_the_span_as_an_error() {
    let (_, mut rx) = mpsc::channel(1);
    let (span, _) = through_layer(
        Some((1.0, &mut rx)),
        "/weft.identity.v1.Identity/Certify",
        None,
        Some(16),
    )
    .await;
    let span = span.expect("a span (a new trace at rate 1)");
    assert_eq!(span.parent, None);
    assert_eq!(span.error.as_deref(), Some("refused"));
    assert_eq!(attr(&span, "rpc.status_code"), Some(&Value::Int(16)));
}

#[tokio::test]
async fn untraced_rpcs_and_no_tracer_pass_through_untouched() {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    // Sampled, but a stream: no span.
    let (_, mut rx) = mpsc::channel(1);
    let (span, seen) = through_layer(
        Some((1.0, &mut rx)),
        "/weft.discovery.v1.AggregatedDiscovery/DeltaResources",
        Some(&tp),
        None,
    )
    .await;
    assert!(span.is_none() && seen.is_none());
    // Unsampled at rate 0: no span.
    let (span, seen) = through_layer(
        Some((0.0, &mut rx)),
        "/weft.config.v1.Config/Get",
        None,
        None,
    )
    .await;
    assert!(span.is_none() && seen.is_none());
    // No tracer at all.
    let (span, seen) = through_layer(None, "/weft.config.v1.Config/Get", Some(&tp), Some(5)).await;
    assert!(span.is_none() && seen.is_none());
}

/// A call cancelled before its answer (the client went away) still ends its span: an error
/// with no status.
#[tokio::test]
async fn a_cancelled_call_ends_its_span_as_an_error() {
    let (q, mut rx) = mpsc::channel(8);
    let tracer = Arc::new(Tracer::new(1.0, q, Default::default()));
    let handler = tower::service_fn(|_: Request<()>| {
        std::future::pending::<Result<Response<TestBody>, Infallible>>()
    });
    let mut svc = RpcTraceLayer::new(Some(tracer)).layer(handler);
    let req = Request::post("/weft.config.v1.Config/Apply")
        .body(())
        .unwrap();
    let call = svc.ready().await.unwrap().call(req);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), call)
            .await
            .is_err()
    );
    let span = rx.try_recv().expect("a span when the call is dropped");
    assert_eq!(span.name, "weft.config.v1.Config/Apply");
    assert!(span.error.is_some());
    assert_eq!(attr(&span, "error.type"), Some(&"no-status".into()));
    assert_eq!(attr(&span, "weft.client_id"), None, "no peer, no ID");
}
