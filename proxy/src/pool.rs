//! Keep-alive HTTP/1.1 connections to one address: the local application, from the inbound
//! side.
//!
//! A request takes the most recently used idle connection (or makes one) and is sent from its
//! own task; the connection goes back to the pool when its response body has ended, and only
//! then, since HTTP/1.1 carries one exchange at a time. A request the connection closed under
//! before writing it (the application closed an idle keep-alive connection) goes out on another.
//!
//! This replaces hyper-util's pooling client for this one hot path: it spawned a task for every
//! request to wait for the connection to become idle again, and checked connections out through
//! several layers of futures (docs/benchmarks.md, "Instructions per request").
//!
//! Idle connections close after the idle timeout: checked whenever connections come and go, and
//! by a sweep task that runs only while the pool holds any. At most [`MAX_IDLE`] are kept.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::body::{Body, BodyError};
use crate::error::ProxyError;

/// Idle connections kept per pool; one more is closed instead.
pub const MAX_IDLE: usize = 512;

#[derive(Debug)]
pub struct Http1Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Oldest first, with when each went idle; requests take from the back.
    conns: VecDeque<(SendRequest<Body>, Instant)>,
    /// A sweep task is running.
    sweeping: bool,
}

impl Idle {
    /// Closes (drops) the connections idle for `timeout` or more.
    fn evict(&mut self, now: Instant, timeout: Duration) {
        while self
            .conns
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= timeout)
        {
            self.conns.pop_front();
        }
    }
}

impl Http1Pool {
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout,
            idle_timeout,
            idle: Mutex::default(),
        })
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.lock().conns.len()
    }

    /// Sends `req` (already in HTTP/1.1 form: origin-form target, `Host`) and returns the
    /// response; its body holds the connection until it ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        debug!(addr = %self.addr, error = %e.error(), "idle connection closed before the request was written; trying another");
                        req = unsent;
                    }
                    None => return Err(self.upstream(e.error())),
                },
            }
        }
        // Boxed: connecting is rare, and its future would otherwise grow every request's.
        let mut sender = Box::pin(self.connect()).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.upstream(&e))?;
        Ok(self.pooled(resp, sender))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that can take a request now. One that is open
    /// but not ready yet (still writing the previous request's body because the application
    /// answered before reading all of it, or, on a multi-thread runtime, a moment before its
    /// task has finished the exchange) stays in the pool for a later request instead of being
    /// waited for, so no request queues behind a slow upload.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.evict(now, self.idle_timeout);
        let mut i = idle.conns.len();
        while i > 0 {
            i -= 1;
            let (sender, _) = &idle.conns[i];
            if sender.is_ready() {
                return idle.conns.remove(i).map(|(s, _)| s);
            }
            if sender.is_closed() {
                idle.conns.remove(i);
            }
        }
        None
    }

    /// A connection whose exchange has ended comes back.
    fn checkin(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let sweep = {
            let mut idle = self.lock();
            idle.evict(now, self.idle_timeout);
            if idle.conns.len() >= MAX_IDLE {
                return; // dropping the sender closes the connection
            }
            idle.conns.push_back((sender, now));
            !std::mem::replace(&mut idle.sweeping, true)
        };
        if sweep {
            self.sweep();
        }
    }

    /// Closes idle connections as they time out, until none is left.
    fn sweep(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.lock().sweeping = false;
            return;
        };
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.lock();
                idle.evict(Instant::now(), pool.idle_timeout);
                if idle.conns.is_empty() {
                    idle.sweeping = false;
                    return;
                }
            }
        });
    }

    async fn connect(&self) -> Result<SendRequest<Body>, ProxyError> {
        let addr = self.addr;
        let failed = |reason: String| ProxyError::ConnectFailed {
            addr: addr.to_string(),
            reason,
        };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.connect_timeout)))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "application connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn pooled(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<Body> {
        let pool = self.clone();
        resp.map(|body| {
            http_body_util::BodyExt::boxed(Pooled {
                body,
                checkin: Some((pool, sender)),
            })
        })
    }

    fn upstream(&self, e: &hyper::Error) -> ProxyError {
        let reason = match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        };
        ProxyError::Upstream {
            addr: self.addr.to_string(),
            reason,
            refused: false,
        }
    }
}

/// A response body that gives its connection back to the pool once it has ended.
struct Pooled {
    body: Incoming,
    checkin: Option<(Arc<Http1Pool>, SendRequest<Body>)>,
}

impl Pooled {
    fn ended(&mut self) {
        if let Some((pool, sender)) = self.checkin.take() {
            pool.checkin(sender);
        }
    }
}

impl hyper::body::Body for Pooled {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(BodyError::from);
        match &polled {
            Poll::Ready(None) => self.ended(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.ended(),
            // The exchange broke: so did the connection.
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    /// A body dropped at its end (an empty one is never polled) leaves a reusable connection;
    /// one dropped midway does not (hyper closes it).
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt as _;
    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::testing::eventually;

    /// An HTTP/1.1 server counting the connections it accepted and saw closed. `/empty` answers
    /// with no body, `/big` with 1 MiB, `/close` with `Connection: close`, anything else with
    /// the request's target and `Host`.
    struct App {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn app() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let resp = match req.uri().path() {
                            "/empty" => Response::new(crate::body::empty()),
                            // Answers without reading the request's body.
                            "/early" => Response::new(crate::body::full("early")),
                            "/big" => Response::new(crate::body::full(vec![7u8; 1 << 20])),
                            "/close" => Response::builder()
                                .header("connection", "close")
                                .body(crate::body::full("bye"))
                                .unwrap(),
                            _ => {
                                let host = req.headers()["host"].to_str().unwrap().to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                Response::new(crate::body::full(format!(
                                    "{host} {}",
                                    String::from_utf8_lossy(&body)
                                )))
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        App {
            addr,
            accepted,
            closed,
        }
    }

    fn get(path: &str, body: &'static str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header("host", "api.demo:80")
            .body(crate::body::full(body))
            .unwrap()
    }

    async fn text(resp: Response<Body>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn pool(app: &App) -> Arc<Http1Pool> {
        Http1Pool::new(app.addr, Duration::from_secs(5), Duration::from_secs(60))
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let app = app().await;
        let pool = pool(&app);
        for i in 0..5 {
            let path = if i % 2 == 0 { "/x" } else { "/empty" };
            let resp = pool.send(get(path, "hi")).await.unwrap();
            let body = text(resp).await;
            if i % 2 == 0 {
                assert_eq!(body, "api.demo:80 hi");
            }
            assert_eq!(pool.idle(), 1, "request {i}");
        }
        let resp = pool.send(get("/big", "")).await.unwrap();
        assert_eq!(text(resp).await.len(), 1 << 20);
        assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_empty_body_dropped_unread_returns_the_connection() {
        let app = app().await;
        let pool = pool(&app);
        let resp = pool.send(get("/empty", "")).await.unwrap();
        assert!(resp.body().is_end_stream());
        drop(resp);
        assert_eq!(pool.idle(), 1);
        text(pool.send(get("/x", "")).await.unwrap()).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections_then_reuse_them() {
        let app = app().await;
        let pool = pool(&app);
        // Three responses held open at once: three connections.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(pool.send(get("/big", "")).await.unwrap());
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle(), 0);
        for resp in held {
            text(resp).await;
        }
        assert_eq!(pool.idle(), 3);
        for _ in 0..6 {
            text(pool.send(get("/x", "")).await.unwrap()).await;
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_midway_does_not_return_its_connection() {
        let app = app().await;
        let pool = pool(&app);
        let resp = pool.send(get("/big", "")).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(pool.idle(), 0);
        assert_eq!(
            text(pool.send(get("/x", "a")).await.unwrap()).await,
            "api.demo:80 a"
        );
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_application_closed_is_replaced() {
        let app = app().await;
        let pool = pool(&app);
        assert_eq!(
            text(pool.send(get("/close", "")).await.unwrap()).await,
            "bye"
        );
        eventually("the application closed the connection", async || {
            app.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(
            text(pool.send(get("/x", "b")).await.unwrap()).await,
            "api.demo:80 b"
        );
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let app = app().await;
        let pool = Http1Pool::new(app.addr, Duration::from_secs(5), Duration::from_millis(100));
        text(pool.send(get("/x", "")).await.unwrap()).await;
        assert_eq!(pool.idle(), 1);
        eventually("the idle connection was closed", async || {
            app.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(pool.idle(), 0);
        // And the pool still works afterwards.
        text(pool.send(get("/x", "")).await.unwrap()).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    /// The application answered before reading the request's body, which never ends: the
    /// next request must not wait behind that upload (hyper gives the connection up or
    /// makes it ready again; either way the request goes through at once).
    #[tokio::test]
    async fn a_connection_still_sending_a_body_is_not_waited_for() {
        let app = app().await;
        let pool = pool(&app);
        let endless =
            futures_util::stream::iter([Ok(hyper::body::Frame::data(Bytes::from_static(b"part")))])
                .chain(futures_util::stream::pending());
        let req = Request::builder()
            .uri("/early")
            .header("host", "api.demo")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(endless)))
            .unwrap();
        assert_eq!(text(pool.send(req).await.unwrap()).await, "early");
        let next = tokio::time::timeout(Duration::from_secs(5), pool.send(get("/x", "n")))
            .await
            .expect("the next request waited behind the unfinished upload")
            .unwrap();
        assert_eq!(text(next).await, "api.demo:80 n");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Http1Pool::new(addr, Duration::from_secs(5), Duration::from_secs(60));
        match pool.send(get("/x", "")).await {
            Err(ProxyError::ConnectFailed { addr: a, .. }) => assert_eq!(a, addr.to_string()),
            other => panic!("{other:?}"),
        }
    }
}
