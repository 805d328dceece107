//! Keep-alive HTTP/1.1 connections to one address: the local application, from the inbound
//! side.
//!
//! A request takes the most recently used idle connection (or makes one) and drives it from its
//! own task: the connection has no task of its own. Its request is written in the same poll that
//! sends it, and the application's answer wakes the request's task directly, instead of waking
//! a connection task that then wakes the request's. The response body keeps driving the
//! connection until it ends; then the connection goes back to the pool, and only then, since
//! HTTP/1.1 carries one exchange at a time. A request the connection closed under before it was
//! written (the application closed an idle keep-alive connection) goes out on another.
//!
//! An idle connection is not polled: a close by the application is noticed when the next
//! request on it reads before it writes, and that request goes out on another connection. A
//! request whose body is still being sent when the response arrives (the application answered
//! early, or streams both ways) hands its connection to a task for the rest of the exchange,
//! so the upload goes on whether or not the response is read, and no request waits behind it.
//!
//! This replaces hyper-util's pooling client for this one hot path: it spawned a task for every
//! request to wait for the connection to become idle again, and checked connections out through
//! several layers of futures (docs/benchmarks.md, "Instructions per request").
//!
//! Idle connections close after the idle timeout: checked whenever connections come and go, and
//! by a sweep task that runs only while the pool holds any. At most [`MAX_IDLE`] are kept.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Connection, SendRequest};
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

#[derive(Default)]
struct Idle {
    /// Oldest first, with when each went idle; requests take from the back.
    conns: VecDeque<(Box<AppConn>, Instant)>,
    /// A sweep task is running.
    sweeping: bool,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("conns", &self.conns.len())
            .field("sweeping", &self.sweeping)
            .finish()
    }
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

/// One connection to the application: the handle requests go through, and the connection
/// itself, driven by whoever holds it. Boxed, so checking it in and out moves a pointer.
struct AppConn {
    sender: SendRequest<Body>,
    /// `None` once the connection has ended (closed by either side, or failed). Dropping it
    /// also hands an unsent request back to its sender.
    io: Option<Connection<TokioIo<TcpStream>, Body>>,
    addr: SocketAddr,
}

impl AppConn {
    /// Reads and writes what the connection can now. Returns whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(io) = &mut self.io else {
            return false;
        };
        match Pin::new(io).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(done) => {
                if let Err(e) = done {
                    debug!(addr = %self.addr, error = %e, "application connection ended with an error");
                }
                self.io = None;
                false
            }
        }
    }

    /// Open, and able to take a request now. Usually known without polling the connection:
    /// it went idle in the same poll that read the end of its last response. Otherwise it is
    /// polled once with no waker: whoever uses it next polls it with theirs.
    fn ready(&mut self) -> bool {
        self.io.is_some()
            && (self.sender.is_ready()
                || (self.drive(&mut Context::from_waker(Waker::noop())) && self.sender.is_ready()))
    }

    /// Sends `req` and drives the connection until the response's head has arrived.
    async fn exchange(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        let mut response = pin!(self.sender.try_send_request(req));
        poll_fn(|cx| {
            // The connection first: it writes the request, or reads the answer that completes
            // `response`.
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
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
        // A body that is not empty says when it has been sent whole.
        let sent = (!req.body().is_end_stream()).then(|| {
            let sent = Arc::new(AtomicBool::new(false));
            let tracked = Tracked {
                body: std::mem::replace(req.body_mut(), crate::body::empty()),
                sent: sent.clone(),
            };
            *req.body_mut() = http_body_util::BodyExt::boxed(tracked);
            sent
        });
        while let Some(mut conn) = self.checkout() {
            match conn.exchange(req).await {
                Ok(resp) => return Ok(self.pooled(resp, conn, sent.as_deref())),
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
        let mut conn = Box::pin(self.connect()).await?;
        match conn.exchange(req).await {
            Ok(resp) => Ok(self.pooled(resp, conn, sent.as_deref())),
            Err(e) => Err(self.upstream(e.error())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that can take a request. Only ready
    /// connections are checked in, so one that is not has ended (the application closed it):
    /// it is dropped.
    fn checkout(&self) -> Option<Box<AppConn>> {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.evict(now, self.idle_timeout);
        while let Some((mut conn, _)) = idle.conns.pop_back() {
            if conn.ready() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose response has ended comes back: into the pool when it can take a
    /// request; to a task of its own first when its exchange is not quite over.
    fn checkin(self: &Arc<Self>, mut conn: Box<AppConn>) {
        if !conn.ready() {
            if conn.io.is_some() {
                self.drive_in_task(conn);
            }
            return;
        }
        let now = Instant::now();
        let sweep = {
            let mut idle = self.lock();
            idle.evict(now, self.idle_timeout);
            if idle.conns.len() >= MAX_IDLE {
                return; // dropping it closes the connection
            }
            idle.conns.push_back((conn, now));
            !std::mem::replace(&mut idle.sweeping, true)
        };
        if sweep {
            self.sweep();
        }
    }

    /// Drives a connection from a task of its own until its exchange is over (the request's
    /// body sent, the response read), then checks it in. For a request body still being sent
    /// when the response arrived: it must keep going whether or not the response is read.
    fn drive_in_task(self: &Arc<Self>, mut conn: Box<AppConn>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            let open = poll_fn(|cx| {
                if !conn.drive(cx) {
                    Poll::Ready(false)
                } else if conn.sender.is_ready() {
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if let (true, Some(pool)) = (open, pool.upgrade()) {
                pool.checkin(conn);
            }
        });
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

    async fn connect(&self) -> Result<Box<AppConn>, ProxyError> {
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
        let (sender, io) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Box::new(AppConn {
            sender,
            io: Some(io),
            addr,
        }))
    }

    /// The response, its body driving the connection; or, while the request's body is still
    /// being sent (`sent` not yet set), with a task driving it.
    fn pooled(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        conn: Box<AppConn>,
        sent: Option<&AtomicBool>,
    ) -> Response<Body> {
        let conn = if sent.is_some_and(|s| !s.load(Ordering::Acquire)) {
            self.drive_in_task(conn);
            None
        } else {
            Some((self.clone(), conn))
        };
        resp.map(|body| http_body_util::BodyExt::boxed(Pooled { body, conn }))
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

/// A request body that says when it has been sent whole (or has failed).
struct Tracked {
    body: Body,
    sent: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let over = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || self.body.is_end_stream(),
            Poll::Pending => false,
        };
        if over {
            self.sent.store(true, Ordering::Release);
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

/// A response body that drives its connection while it is read (unless a task does), and gives
/// the connection back to the pool once it has ended.
struct Pooled {
    body: Incoming,
    conn: Option<(Arc<Http1Pool>, Box<AppConn>)>,
}

impl Pooled {
    fn ended(&mut self) {
        if let Some((pool, conn)) = self.conn.take() {
            pool.checkin(conn);
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
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        // A small body usually arrived with the response's head; otherwise the connection
        // must read more of it.
        if polled.is_pending()
            && let Some((_, conn)) = &mut this.conn
        {
            conn.drive(cx);
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.ended(),
            // The exchange broke: so did the connection.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled.map_err(BodyError::from)
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
    /// one dropped midway does not (dropping it closes the connection).
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
        /// The request bodies `/early-read` read, once each ended.
        read: Arc<Mutex<Vec<Bytes>>>,
    }

    async fn app() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let read = Arc::new(Mutex::new(Vec::new()));
        let (a, c, r) = (accepted.clone(), closed.clone(), read.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, r) = (c.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let r = r.clone();
                        async move {
                            let resp = match req.uri().path() {
                                "/empty" => Response::new(crate::body::empty()),
                                // Answers without reading the request's body.
                                "/early" => Response::new(crate::body::full("early")),
                                // Answers at once, and reads the request's body afterwards.
                                "/early-read" => {
                                    let body = req.into_body();
                                    tokio::spawn(async move {
                                        if let Ok(body) = body.collect().await {
                                            r.lock().unwrap().push(body.to_bytes());
                                        }
                                    });
                                    Response::new(crate::body::full("early"))
                                }
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
                        }
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
            read,
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

    /// The application closes an idle keep-alive connection without a word (as servers with a
    /// short keep-alive timeout do). Nothing polls an idle connection, so the next request
    /// finds out when it takes it, and goes out on a new one.
    #[tokio::test]
    async fn an_idle_connection_closed_without_notice_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(crate::body::full("ok")))
                });
                let conn = tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
                served_tx.send(conn).unwrap();
            }
        });
        let pool = Http1Pool::new(addr, Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(text(pool.send(get("/x", "")).await.unwrap()).await, "ok");
        assert_eq!(pool.idle(), 1);
        // The application drops the connection: its socket closes.
        let first = served.recv().await.unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(text(pool.send(get("/x", "")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle(), 1);
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
        // A body that never ends: one chunk, and the sender kept.
        let (req, frames) = upload("/early");
        frames.send(Bytes::from_static(b"part")).await.unwrap();
        assert_eq!(text(pool.send(req).await.unwrap()).await, "early");
        let next = tokio::time::timeout(Duration::from_secs(5), pool.send(get("/x", "n")))
            .await
            .expect("the next request waited behind the unfinished upload")
            .unwrap();
        assert_eq!(text(next).await, "api.demo:80 n");
    }

    /// A POST whose body comes from `frames`.
    fn upload(path: &str) -> (Request<Body>, tokio::sync::mpsc::Sender<Bytes>) {
        let (frames, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let body = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, BodyError>(hyper::body::Frame::data(b)));
        let req = Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .header("host", "api.demo")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(body)))
            .unwrap();
        (req, frames)
    }

    /// The application answers before the request's body has been sent, and reads the rest
    /// afterwards. The upload goes on, even though nobody reads the response yet; meanwhile
    /// another request gets a connection of its own; afterwards the connection is reused.
    #[tokio::test]
    async fn an_upload_goes_on_after_an_early_answer_whether_or_not_it_is_read() {
        let app = app().await;
        let pool = pool(&app);
        let (req, frames) = upload("/early-read");
        frames.send(Bytes::from_static(b"first ")).await.unwrap();
        let resp = pool.send(req).await.unwrap();
        // The response is held unread while the rest of the body goes out.
        frames.send(Bytes::from_static(b"second")).await.unwrap();
        assert_eq!(
            text(pool.send(get("/x", "n")).await.unwrap()).await,
            "api.demo:80 n"
        );
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
        drop(frames);
        eventually("the application read the whole upload", async || {
            app.read.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(app.read.lock().unwrap()[0], "first second");
        assert_eq!(text(resp).await, "early");
        eventually("both connections idle", async || pool.idle() == 2).await;
        text(pool.send(get("/x", "")).await.unwrap()).await;
        text(pool.send(get("/x", "")).await.unwrap()).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
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
