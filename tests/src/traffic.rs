//! Traffic-management harness: a scripted backend that records every request it sees and fails
//! on cue, documents for canary splits and retry/traffic policies, and a keep-alive client that
//! sends through a proxy's outbound port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use weft_proto::config::v1::{Document, document};
use weft_proto::mesh::v1 as pb;

/// One request as a scripted backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The client's `x-request-id`.
    pub id: Option<String>,
}

/// A backend whose behaviour is in the path:
/// - `/flaky/<percent>`: 503 for that share of requests, drawn from a seeded generator, so a
///   run is reproducible; 200 otherwise;
/// - `/fail/<status>`: always that status;
/// - `/hang-first`: never answers the first request of each `x-request-id`, answers the rest;
/// - `/hang` and `/hang/...`: never answers;
/// - `/slow/<ms>`: answers after a delay;
/// - anything else: 200 `<name> <path>`.
///
/// Every answer carries `x-backend: <name>`. Every request is recorded in `seen`.
#[derive(Debug, Clone)]
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl ScriptedBackend {
    pub async fn start(name: &str, seed: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            name: name.into(),
            seen: seen.clone(),
            rng: Mutex::new(seed.max(1)),
            ids: Mutex::new(HashMap::new()),
        });
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen })
    }

    /// Requests seen so far with this `x-request-id`.
    pub fn attempts(&self, id: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.id.as_deref() == Some(id))
            .count()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

struct State {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    rng: Mutex<u64>,
    ids: Mutex<HashMap<String, usize>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl State {
    fn draw(&self) -> f64 {
        let mut x = self.rng.lock().unwrap();
        // xorshift64*
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            path: path.clone(),
            id: id.clone(),
        });
        // Read the whole body so the client's send completes.
        let _ = req.into_body().collect().await;
        let status = if let Some(pct) = path.strip_prefix("/flaky/") {
            let pct: f64 = pct.parse().unwrap_or(0.0);
            if self.draw() * 100.0 < pct { 503 } else { 200 }
        } else if let Some(code) = path.strip_prefix("/fail/") {
            code.parse().unwrap_or(500)
        } else if path == "/hang-first" {
            let first = {
                let mut ids = self.ids.lock().unwrap();
                let n = ids.entry(id.unwrap_or_default()).or_insert(0);
                *n += 1;
                *n == 1
            };
            if first {
                std::future::pending::<()>().await;
            }
            200
        } else if path == "/hang" || path.starts_with("/hang/") {
            std::future::pending::<()>().await;
            200
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            200
        } else {
            200
        };
        let mut resp = Response::new(
            Full::new(Bytes::from(format!("{} {path}", self.name)))
                .map_err(|e| match e {})
                .boxed(),
        );
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        resp.headers_mut()
            .insert("x-backend", self.name.parse().unwrap());
        resp
    }
}

/// A Service document with one HTTP/1.1 port 80 and a traffic policy.
pub fn service_with(name: &str, traffic: Option<pb::TrafficPolicy>) -> Document {
    Document {
        kind: Some(document::Kind::Service(pb::Service {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![pb::Port {
                name: String::new(),
                port: 80,
                protocol: pb::Protocol::Http1.into(),
            }],
            traffic_policy: traffic,
            ..Default::default()
        })),
    }
}

/// An HTTPRoute on `default/<parent>` with one rule: the weighted backends, and whatever
/// `rule` adds (timeouts, retry) and `policy` says of retries.
pub fn route(
    name: &str,
    parent: &str,
    backends: &[(&str, i64)],
    rule: pb::HttpRouteRule,
    policy: Option<pb::RetryPolicy>,
) -> Document {
    Document {
        kind: Some(document::Kind::HttpRoute(pb::HttpRoute {
            namespace: "default".into(),
            name: name.into(),
            parent_refs: vec![pb::ParentRef {
                kind: "Service".into(),
                name: parent.into(),
                ..Default::default()
            }],
            rules: vec![pb::HttpRouteRule {
                backend_refs: backends
                    .iter()
                    .map(|(b, w)| pb::BackendRef {
                        name: (*b).into(),
                        weight: Some(*w),
                        ..Default::default()
                    })
                    .collect(),
                ..rule
            }],
            retry_policy: policy,
        })),
    }
}

pub fn millis(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A retry block (Gateway API) of `attempts` retries with a 5 ms backoff.
pub fn retry(attempts: u32, codes: &[u32]) -> Option<pb::Retry> {
    Some(pb::Retry {
        codes: codes.to_vec(),
        attempts,
        backoff: Some(millis(5)),
    })
}

/// A keep-alive HTTP/1.1 connection to a proxy's outbound port, sending absolute-form requests
/// (HTTP-proxy style). Reconnects when the proxy closed the connection.
#[derive(Debug)]
pub struct Client {
    proxy: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A response as a test reads it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub backend: Option<String>,
    pub error: Option<String>,
    pub body: String,
}

impl Client {
    pub fn new(proxy: SocketAddr) -> Self {
        Self {
            proxy,
            sender: None,
        }
    }

    pub async fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> anyhow::Result<Answer> {
        let sender = match self.sender.as_mut().filter(|s| !s.is_closed()) {
            Some(s) => s,
            None => {
                let tcp = TcpStream::connect(self.proxy).await?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                self.sender.insert(sender)
            }
        };
        sender.ready().await?;
        let body = Full::new(Bytes::from_static(body.as_bytes()));
        let resp = sender
            .send_request(crate::dataplane::proxy_form(method, url, headers, body)?)
            .await?;
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (backend, error) = (header("x-backend"), header("x-weft-error"));
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            backend,
            error,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, url: &str) -> anyhow::Result<Answer> {
        self.send("GET", url, &[], "").await
    }
}
