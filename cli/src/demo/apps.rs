//! The demo's applications, plain HTTP/1.1 servers on loopback that know nothing of the mesh:
//! `web` calls `api` through its proxy's `--upstream` port; `api-v1` and `api-v2` answer after a
//! short think time, and `api-v2` fails a share of requests with 503. And the traffic generator,
//! which calls `web` through its own proxy at a steady rate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::view::Generated;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Who called, per the proxy in front of the app: the verified SPIFFE ID, or `(plaintext)`.
fn caller(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-weft-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(plaintext)")
        .to_owned()
}

/// What an app does with a request.
#[derive(Debug, Clone)]
pub(crate) enum App {
    /// Calls `api` at `upstream` (its proxy's `--upstream` port) and wraps the answer.
    Web { upstream: SocketAddr },
    /// Answers after `think` (± half), failing `failure_rate` of requests with 503.
    Api {
        version: &'static str,
        think: Duration,
        failure_rate: f64,
    },
}

impl App {
    async fn handle(&self, client: &HttpClient, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match self {
            App::Web { upstream } => {
                let from = caller(&req);
                let api = async {
                    let resp = client.get(format!("http://{upstream}/").parse()?).await?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await?.to_bytes();
                    anyhow::Ok((status, body))
                };
                match api.await {
                    Ok((status, body)) => text(
                        status,
                        format!(
                            "web: hello {from}; api said {status}: {}",
                            String::from_utf8_lossy(&body).trim_end()
                        ),
                    ),
                    Err(e) => text(StatusCode::BAD_GATEWAY, format!("web: calling api: {e}")),
                }
            }
            App::Api {
                version,
                think,
                failure_rate,
            } => {
                let from = caller(&req);
                tokio::time::sleep(think.mul_f64(0.5 + fastrand::f64())).await;
                if fastrand::f64() < *failure_rate {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("api {version}: injected failure (for {from})"),
                    )
                } else {
                    text(StatusCode::OK, format!("api {version}: hello {from}"))
                }
            }
        }
    }
}

/// Serves `app` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, app: App) {
    let app = Arc::new(app);
    let client = client();
    let mut conns = JoinSet::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of file descriptors, most likely: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, client) = (app.clone(), client.clone());
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (app, client) = (app.clone(), client.clone());
                async move { Ok::<_, Infallible>(app.handle(&client, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// The traffic generator's counters, shared with the view.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    pub(crate) fn get(&self) -> Generated {
        Generated {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// `http://ADDR/`.
pub(crate) fn root_uri(addr: SocketAddr) -> anyhow::Result<hyper::Uri> {
    format!("http://{addr}/")
        .parse()
        .with_context(|| format!("http://{addr}/ as a URI"))
}

/// Sends `GET uri` (the generator's proxy's upstream port for `web`) `rps` times a second,
/// each request on its own task so a slow one does not hold the rate back.
pub(crate) async fn generate(uri: hyper::Uri, rps: u32, counts: Arc<Counts>) {
    let client = client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = JoinSet::new();
    loop {
        tick.tick().await;
        while inflight.try_join_next().is_some() {}
        let (client, uri, counts) = (client.clone(), uri.clone(), counts.clone());
        counts.sent.fetch_add(1, Ordering::Relaxed);
        inflight.spawn(async move {
            let ok = match tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await {
                Ok(Ok(resp)) => {
                    let ok = resp.status().is_success();
                    ok && resp.into_body().collect().await.is_ok()
                }
                _ => false,
            };
            let counter = if ok { &counts.ok } else { &counts.failed };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(app: App) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, app));
        addr
    }

    async fn get(addr: SocketAddr) -> (StatusCode, String) {
        let resp = client()
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn web_wraps_what_api_answers_and_api_fails_its_share() {
        let always_fails = start(App::Api {
            version: "v2",
            think: Duration::from_millis(1),
            failure_rate: 1.0,
        })
        .await;
        let web = start(App::Web {
            upstream: always_fails,
        })
        .await;
        let (status, body) = get(web).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with(
                "web: hello (plaintext); api said 503 Service Unavailable: api v2: injected failure"
            ),
            "{body}"
        );
        let healthy = start(App::Api {
            version: "v1",
            think: Duration::from_millis(1),
            failure_rate: 0.0,
        })
        .await;
        assert_eq!(
            get(healthy).await,
            (StatusCode::OK, "api v1: hello (plaintext)".into())
        );
    }

    #[tokio::test]
    async fn the_generator_counts_what_it_sends() {
        let api = start(App::Api {
            version: "v1",
            think: Duration::from_millis(1),
            failure_rate: 0.0,
        })
        .await;
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(generate(root_uri(api).unwrap(), 200, counts.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while counts.get().ok < 20 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", counts.get());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let c = counts.get();
        assert_eq!(c.failed, 0);
        assert!(c.sent >= c.ok);
    }
}
