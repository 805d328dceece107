//! Serving HTTP/2 (from peer proxies, or h2c from an application) with the `h2` crate: every
//! stream of a connection runs inside the connection's own task.
//!
//! hyper's HTTP/2 server spawned a task for every stream and moved the request's future into
//! it; here a stream is a future in the connection's `FuturesUnordered`, polled when woken, and
//! its response goes out through the same connection without a task hand-off
//! (docs/benchmarks.md, "Instructions per request"). What hyper's server also did is done here:
//! a stream the client resets stops its work, response bodies are sent within the client's
//! flow-control window, PINGs find dead peers, a drain or the idle timeout closes the
//! connection gracefully (GOAWAY, then in-flight streams finish), and a panic while handling
//! one request resets that stream only.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use h2::server::SendResponse;
use h2::{PingPong, Reason, RecvStream};
use http::{Request, Response};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tracing::{debug, error};

use crate::body::Body;
use crate::drain;
use crate::peers::stream::{Pipe, ResponseBody};

/// Streams a client may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Receive windows: request bodies a connection can make us buffer are bounded by these (the
/// same reasoning and sizes as for peer connections, `crate::peers`).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Request headers larger than this are refused (hyper's limit).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// A PING this often, and the connection closed when one goes unanswered this long.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves HTTP/2 on `io` with `handler` until the connection ends; on drain, or after `idle`
/// with no stream open, sends GOAWAY, lets the open streams finish and closes.
pub async fn serve<IO, F, Fut>(io: IO, drain: &drain::Watch, idle: Duration, handler: F)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(io);
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => return debug!(error = %e, "HTTP/2 handshake failed"),
    };
    let mut pinger = Pinger::new(conn.ping_pong());
    let mut streams = FuturesUnordered::new();
    let mut drained = pin!(drain.signaled());
    let mut idle_timer = pin!(tokio::time::sleep(idle));
    let mut closing = false;
    let ended = std::future::poll_fn(|cx| {
        loop {
            if !closing && drained.as_mut().poll(cx).is_ready() {
                debug!("draining: GOAWAY, then the open streams finish");
                conn.graceful_shutdown();
                closing = true;
            }
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                if streams.is_empty() {
                    idle_timer.as_mut().reset(Instant::now() + idle);
                }
            }
            // Reads and writes frames, including what the streams above just queued.
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams.push(stream(&handler, req, respond));
                    continue; // its first poll, then accept again
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            if !closing && streams.is_empty() && idle_timer.as_mut().poll(cx).is_ready() {
                debug!(?idle, "closing an idle HTTP/2 connection");
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
            if pinger.poll_unanswered(cx).is_ready() {
                debug!(timeout = ?PING_TIMEOUT, "the client did not answer a PING; closing");
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
    })
    .await;
    if let Err(e) = ended {
        debug!(error = %e, "HTTP/2 connection ended with an error");
    }
    // Whatever is still open fails with the connection.
}

/// One stream: the handler's response, sent with its body; a panic in the handler resets the
/// stream instead of ending the connection.
fn stream<F, Fut>(
    handler: &F,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> impl Future<Output = ()> + use<F, Fut>
where
    F: Fn(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let (parts, rx) = req.into_parts();
    let body = http_body_util::BodyExt::boxed(ResponseBody::new(rx, &parts.headers));
    let handled = handler(Request::from_parts(parts, body));
    AssertUnwindSafe(respond_with(handled, respond))
        .catch_unwind()
        .map(|r| {
            if r.is_err() {
                error!("a request handler panicked; its stream was reset");
            }
        })
}

async fn respond_with<Fut>(handled: Fut, mut respond: SendResponse<Bytes>)
where
    Fut: Future<Output = Response<Body>>,
{
    let mut handled = pin!(handled);
    // A client that resets the stream no longer wants the response: stop making it (dropping
    // the handler cancels the request to the application or the next proxy).
    let resp = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(resp) = resp else {
        return debug!("the client reset the stream before the response");
    };
    let (mut parts, body) = resp.into_parts();
    // HTTP/2 forbids connection-specific headers (RFC 9113 §8.2.2).
    crate::http::strip_hop_by_hop(&mut parts.headers);
    // A known length is declared (as hyper did); an empty body needs none, END_STREAM says it.
    if let Some(len) = body.size_hint().exact()
        && len != 0
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, len.into());
    }
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(tx) if !end => Pipe::new(body, tx).await,
        Ok(_) => {}
        Err(e) => {
            debug!(error = %e, "the response could not be sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
    }
}

/// Keep-alive PINGs: one every [`PING_INTERVAL`]; ready when one goes unanswered for
/// [`PING_TIMEOUT`].
struct Pinger {
    pings: Option<PingPong>,
    timer: Pin<Box<Sleep>>,
    /// A PING is out, and the timer is its deadline.
    waiting: bool,
}

impl Pinger {
    fn new(pings: Option<PingPong>) -> Self {
        Self {
            pings,
            timer: Box::pin(tokio::time::sleep(PING_INTERVAL)),
            waiting: false,
        }
    }

    fn poll_unanswered(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(pings) = &mut self.pings else {
            return Poll::Pending;
        };
        loop {
            if self.waiting {
                match pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer.as_mut().reset(Instant::now() + PING_INTERVAL);
                    }
                    // The connection is going away; its own poll says how.
                    Poll::Ready(Err(_)) => {
                        self.pings = None;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.waiting {
                return Poll::Ready(());
            }
            if pings.send_ping(h2::Ping::opaque()).is_err() {
                self.pings = None;
                return Poll::Pending;
            }
            self.waiting = true;
            self.timer.as_mut().reset(Instant::now() + PING_TIMEOUT);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::HeaderMap;
    use http_body_util::BodyExt;

    use super::*;

    /// A server on one end of an in-memory pipe, a raw h2 client on the other. The handler
    /// echoes the request body with its trailers; `/hang` never answers (and records that it
    /// was dropped); `/panic` panics.
    async fn connect(
        idle: Duration,
    ) -> (
        h2::client::SendRequest<Bytes>,
        drain::Drain,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let (drain, watch) = drain::Drain::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let server = tokio::spawn(async move {
            serve(server_io, &watch, idle, move |req: Request<Body>| {
                let flag = flag.clone();
                async move {
                    match req.uri().path() {
                        "/hang" => {
                            let _guard = DropFlag(flag);
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                        "/panic" => panic!("a bug in one request"),
                        _ => {
                            let collected = req.into_body().collect().await.unwrap();
                            let trailers = collected.trailers().cloned();
                            let data = collected.to_bytes();
                            if trailers.is_none() {
                                return Response::new(crate::body::full(data));
                            }
                            let frames = [Ok(hyper::body::Frame::data(data))]
                                .into_iter()
                                .chain(trailers.map(|t| Ok(hyper::body::Frame::trailers(t))));
                            let body =
                                http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                            Response::new(BodyExt::boxed(body))
                        }
                    }
                }
            })
            .await;
        });
        let (tx, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (tx, drain, dropped, server)
    }

    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::builder()
            .uri(format!("http://api.demo{path}"))
            .body(())
            .unwrap()
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_streamed_body_with_trailers_goes_both_ways() {
        let (mut tx, _drain, _, _) = connect(Duration::from_secs(60)).await;
        let (resp, mut body) = tx.send_request(get("/echo"), false).unwrap();
        // More than one window's worth, so flow control is exercised both ways.
        let chunk = Bytes::from(vec![b'x'; 256 << 10]);
        for _ in 0..8 {
            body.reserve_capacity(chunk.len());
            body.send_data(chunk.clone(), false).unwrap();
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        body.send_trailers(trailers).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut rx = resp.into_body();
        let mut n = 0;
        while let Some(data) = rx.data().await {
            let data = data.unwrap();
            n += data.len();
            rx.flow_control().release_capacity(data.len()).unwrap();
        }
        assert_eq!(n, 8 * (256 << 10));
        let trailers = rx.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_reset_from_the_client_stops_the_handler() {
        let (mut tx, _drain, dropped, _) = connect(Duration::from_secs(60)).await;
        let (_resp, mut body) = tx.send_request(get("/hang"), false).unwrap();
        // Let the handler start, then reset the stream.
        body.send_data(Bytes::from_static(b"x"), false).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!dropped.load(Ordering::SeqCst));
        body.send_reset(Reason::CANCEL);
        eventually("the handler was dropped", || dropped.load(Ordering::SeqCst)).await;
    }

    #[tokio::test]
    async fn a_panicking_handler_resets_its_stream_only() {
        let (mut tx, _drain, _, _) = connect(Duration::from_secs(60)).await;
        let (resp, _) = tx.send_request(get("/panic"), true).unwrap();
        let err = resp.await.unwrap_err();
        assert!(err.reason().is_some(), "{err}");
        let (resp, mut body) = tx.send_request(get("/echo"), false).unwrap();
        body.send_data(Bytes::from_static(b"still here"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        // A body of known length declares it.
        assert_eq!(resp.headers()["content-length"], "10");
        let mut rx = resp.into_body();
        assert_eq!(rx.data().await.unwrap().unwrap(), "still here");
    }

    #[tokio::test]
    async fn a_drain_lets_the_open_stream_finish_then_closes() {
        let (mut tx, drain, _, server) = connect(Duration::from_secs(60)).await;
        let (resp, mut body) = tx.send_request(get("/echo"), false).unwrap();
        body.send_data(Bytes::from_static(b"begun"), false).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drain.start();
        // The open stream is still served after the GOAWAY...
        body.send_data(Bytes::from_static(b" and ended"), true)
            .unwrap();
        let mut rx = resp.await.unwrap().into_body();
        assert_eq!(rx.data().await.unwrap().unwrap(), "begun and ended");
        // ...and then the connection ends.
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the connection closed after the drain")
            .unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (mut tx, _drain, _, server) = connect(Duration::from_millis(100)).await;
        let (resp, mut body) = tx.send_request(get("/echo"), false).unwrap();
        // Busy for three idle timeouts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!server.is_finished());
        body.send_data(Bytes::from_static(b"slow"), true).unwrap();
        let mut rx = resp.await.unwrap().into_body();
        assert_eq!(rx.data().await.unwrap().unwrap(), "slow");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the idle connection closed")
            .unwrap();
    }
}
