#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt as _;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::testing::eventually;

const CHUNK: usize = 64 * 1024;

/// An h2 server on loopback: each connection goes to `serve` with its number (1, 2, …).
async fn server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(h2::server::Connection<TcpStream, Bytes>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            n += 1;
            tcp.set_nodelay(true).unwrap();
            let conn = h2::server::handshake(tcp).await.unwrap();
            tokio::spawn(serve(conn, n));
        }
    });
    addr
}

/// Answers every request on the connection with `handle`, each in its own task.
async fn answer_all<H, Fut>(mut conn: h2::server::Connection<TcpStream, Bytes>, handle: H)
where
    H: Fn(http::Request<RecvStream>, SendResponse<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(handle(req, respond));
    }
}

/// Reads a request body whole: its data, and its trailers.
async fn read_all(mut body: RecvStream) -> Result<(Vec<u8>, Option<HeaderMap>), h2::Error> {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        data.extend_from_slice(&chunk);
    }
    Ok((data, body.trailers().await?))
}

fn respond_text(mut respond: SendResponse<Bytes>, text: String) {
    let resp = http::Response::new(());
    let mut tx = respond.send_response(resp, false).unwrap();
    tx.send_data(Bytes::from(text), true).unwrap();
}

/// A pool whose connections are plain TCP to `addr` (the TLS step is `Peers::connect`'s, not
/// this module's), counting the connections it makes.
type Dialed<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Conn, ProxyError>> + Send + 'a>>;

fn dialer<'a>(addr: SocketAddr, dials: &'a AtomicUsize) -> impl Fn() -> Dialed<'a> {
    move || {
        dials.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            Ok(conn::handshake(tcp, addr, conn::KEEP_ALIVE).await.unwrap())
        })
    }
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(format!("http://api.default{path}"))
        .body(crate::body::empty())
        .unwrap()
}

/// A POST whose body is the frames sent on the returned channel, ending when it is dropped.
fn upload(path: &str) -> (Request<Body>, mpsc::Sender<Frame<Bytes>>) {
    let (frames, rx) = mpsc::channel::<Frame<Bytes>>(1);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, crate::body::BodyError>);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://api.default{path}"))
        .body(BodyExt::boxed(StreamBody::new(body)))
        .unwrap();
    (req, frames)
}

async fn text(resp: Response<ResponseBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_streamed_request_body_with_trailers_arrives_whole_and_so_does_the_response() {
    // The server echoes the body's length and its trailer, as a body and a trailer.
    let addr = server(|conn, _| {
        answer_all(conn, |req, mut respond| async move {
            let (data, trailers) = read_all(req.into_body()).await.unwrap();
            let resp = http::Response::new(());
            let mut tx = respond.send_response(resp, false).unwrap();
            tx.send_data(Bytes::from(data.len().to_string()), false)
                .unwrap();
            let mut out = HeaderMap::new();
            let sum = trailers.unwrap()["x-sum"].clone();
            out.insert("x-sum", sum);
            out.insert("grpc-status", HeaderValue::from_static("0"));
            tx.send_trailers(out).unwrap();
        })
    })
    .await;
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();

    // More than the server's 64 KiB windows, from a channel: the pipe must wait for capacity
    // and for the body.
    let (req, frames) = upload("/upload");
    tokio::spawn(async move {
        for i in 0..40u8 {
            let chunk = Bytes::from(vec![i; CHUNK]);
            frames.send(Frame::data(chunk)).await.unwrap();
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("780"));
        frames.send(Frame::trailers(trailers)).await.unwrap();
    });

    let resp = pool.send(addr, req, dialer(addr, &dials)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(
        &collected.to_bytes()[..],
        (40 * CHUNK).to_string().as_bytes()
    );
    assert_eq!(trailers["x-sum"], "780");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn content_length_comes_from_an_exact_body_and_an_empty_body_ends_with_the_headers() {
    let addr = server(|conn, _| {
        answer_all(conn, |req, respond| async move {
            let cl = req.headers().get(http::header::CONTENT_LENGTH).cloned();
            let ended = req.body().is_end_stream();
            let (data, _) = read_all(req.into_body()).await.unwrap();
            respond_text(respond, format!("{cl:?} {ended} {}", data.len()));
        })
    })
    .await;
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    let post = Request::builder()
        .method(Method::POST)
        .uri("http://api.default/")
        .body(crate::body::full("hello"))
        .unwrap();
    let resp = pool.send(addr, post, dialer(addr, &dials)).await.unwrap();
    assert_eq!(text(resp).await, "Some(\"5\") false 5");
    let resp = pool
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "None true 0");
    assert_eq!(dials.load(Ordering::SeqCst), 1, "one shared connection");
}

#[tokio::test]
async fn a_refused_stream_is_reported_as_refused_with_the_peer_address() {
    let addr = server(|conn, _| {
        answer_all(conn, |_req, mut respond| async move {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        })
    })
    .await;
    let dials = AtomicUsize::new(0);
    let err = Pool::default()
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap_err();
    let ProxyError::Upstream { refused, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(refused, "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // Any other reset is not a refusal: the peer may have acted on the request.
    let addr = server(|conn, _| {
        answer_all(conn, |_req, mut respond| async move {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        })
    })
    .await;
    let err = Pool::default()
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProxyError::Upstream { refused: false, .. }),
        "{err:?}"
    );
}

/// A request HTTP/2 cannot carry (a connection-specific header, which the proxy strips before
/// it gets here) is the request's fault: a bad request, not the peer's failure.
#[tokio::test]
async fn a_request_http2_forbids_is_a_bad_request() {
    let addr = server(|conn, _| {
        answer_all(conn, |_req, respond| async move {
            respond_text(respond, "ok".into());
        })
    })
    .await;
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    let mut req = get("/");
    req.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    match pool.send(addr, req, dialer(addr, &dials)).await {
        Err(ProxyError::BadRequest(reason)) => assert!(reason.contains("HTTP/2"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The connection is still good.
    let resp = pool
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "ok");
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_peer_closed_is_replaced_by_the_next_request() {
    // One request per connection, then the server closes it.
    let addr = server(|mut conn, n| async move {
        if let Some(Ok((_req, respond))) = conn.accept().await {
            respond_text(respond, n.to_string());
        }
        conn.graceful_shutdown();
        while conn.accept().await.is_some() {}
    })
    .await;
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    let resp = pool
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "1");
    eventually("the client sees the connection close", async || {
        pool.is_closed()
    })
    .await;
    let resp = pool
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "2");
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_the_closing_connection_refuses_goes_on_a_new_one() {
    // Connection 1 takes one request, holds its answer and says GOAWAY; connection 2 answers.
    let (release, held) = oneshot::channel::<()>();
    let held = Arc::new(Mutex::new(Some(held)));
    let addr = server(move |mut conn, n| {
        let held = held.lock().unwrap().take();
        async move {
            if n > 1 {
                return answer_all(conn, move |_req, respond| async move {
                    respond_text(respond, n.to_string());
                })
                .await;
            }
            let Some(Ok((_req, respond))) = conn.accept().await else {
                return;
            };
            tokio::spawn(async move {
                held.unwrap().await.unwrap();
                respond_text(respond, "1 (in flight before the GOAWAY)".into());
            });
            conn.graceful_shutdown();
            while conn.accept().await.is_some() {}
        }
    })
    .await;
    let dials = Arc::new(AtomicUsize::new(0));
    let pool = Arc::new(Pool::default());
    let first = {
        let (pool, dials) = (pool.clone(), dials.clone());
        tokio::spawn(async move {
            let resp = pool.send(addr, get("/a"), dialer(addr, &dials)).await;
            text(resp.unwrap()).await
        })
    };
    let closing = async || {
        let conn = pool.conn.lock().unwrap().clone();
        match conn {
            Some(c) => !c.takes_streams().await,
            None => false,
        }
    };
    eventually("the client sees the GOAWAY", closing).await;
    assert!(!pool.is_closed(), "the first connection still has a stream");

    let resp = pool
        .send(addr, get("/b"), dialer(addr, &dials))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "2");
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    // The stream that was in flight on the closing connection still completes.
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap(), "1 (in flight before the GOAWAY)");
}

#[tokio::test]
async fn a_failing_request_body_resets_the_stream() {
    let (seen, mut reason) = mpsc::channel(1);
    let addr = server(move |conn, _| {
        let seen = seen.clone();
        answer_all(conn, move |req, _respond| {
            let seen = seen.clone();
            async move {
                let err = read_all(req.into_body()).await.unwrap_err();
                seen.send(err.reason()).await.unwrap();
            }
        })
    })
    .await;
    let frames: Vec<Result<Frame<Bytes>, crate::body::BodyError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err("the client went away".into()),
    ];
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://api.default/")
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .unwrap();
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    let sent = pool.send(addr, req, dialer(addr, &dials));
    // Reset before any response: the request fails (the stream is gone) rather than waits.
    let sent = tokio::time::timeout(Duration::from_secs(5), sent).await;
    assert!(
        matches!(sent, Ok(Err(ProxyError::Upstream { .. }))),
        "{sent:?}"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), reason.recv())
        .await
        .unwrap();
    assert_eq!(got.flatten(), Some(h2::Reason::CANCEL));
}

/// A streamed request body whose response nobody waits for any more (a per-try timeout, a
/// client gone) stops going, and the peer sees the stream reset.
#[tokio::test]
async fn an_upload_stops_when_its_response_is_given_up() {
    let (seen, mut reason) = mpsc::channel(1);
    let addr = server(move |conn, _| {
        let seen = seen.clone();
        // Reads the body and never answers.
        answer_all(conn, move |req, _respond| {
            let seen = seen.clone();
            async move {
                let err = read_all(req.into_body()).await.unwrap_err();
                seen.send(err.reason()).await.unwrap();
            }
        })
    })
    .await;
    // A body that never ends: one chunk, then nothing; the pipe waits on it.
    let endless = futures_util::stream::iter([Ok::<_, crate::body::BodyError>(Frame::data(
        Bytes::from_static(b"part"),
    ))])
    .chain(futures_util::stream::pending());
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://api.default/")
        .body(BodyExt::boxed(StreamBody::new(endless)))
        .unwrap();
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    let given_up = tokio::time::timeout(
        Duration::from_millis(50),
        pool.send(addr, req, dialer(addr, &dials)),
    )
    .await;
    assert!(given_up.is_err(), "the server never answers");
    let got = tokio::time::timeout(Duration::from_secs(5), reason.recv())
        .await
        .expect("the upload went on after its response was given up");
    assert_eq!(got.flatten(), Some(h2::Reason::CANCEL));
}

/// A response that has ended does not stop the upload: the peer gets the rest of the body.
#[tokio::test]
async fn an_upload_goes_on_after_its_response_has_ended() {
    let (seen, mut got) = mpsc::channel(1);
    let addr = server(move |conn, _| {
        let seen = seen.clone();
        // Answers at once (empty, end of stream), then reads the whole body.
        answer_all(conn, move |req, mut respond| {
            let seen = seen.clone();
            async move {
                respond
                    .send_response(http::Response::new(()), true)
                    .unwrap();
                let read = read_all(req.into_body()).await.map(|(data, _)| data.len());
                seen.send(read.map_err(|e| e.to_string())).await.unwrap();
            }
        })
    })
    .await;
    let (req, frames) = upload("/");
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    frames
        .send(Frame::data(Bytes::from_static(b"first")))
        .await
        .unwrap();
    let resp = pool.send(addr, req, dialer(addr, &dials)).await.unwrap();
    assert_eq!(text(resp).await, "");
    // The response is read and dropped; the rest of the body follows.
    frames
        .send(Frame::data(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(frames);
    let read = tokio::time::timeout(Duration::from_secs(5), got.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, Ok(11));
}

/// A reader that stops after the bytes `content-length` announced (hyper's HTTP/1.1 server
/// does), before the end-of-stream flag arrives, has read the whole response: the upload goes on.
#[tokio::test]
async fn an_upload_goes_on_after_its_response_was_read_to_its_length() {
    let (seen, mut got) = mpsc::channel(8);
    let addr = server(move |conn, _| {
        let seen = seen.clone();
        // Answers "ok" (content-length 2, no end of stream yet), reads the whole body, then
        // ends the stream.
        answer_all(conn, move |req, mut respond| {
            let seen = seen.clone();
            async move {
                let resp = http::Response::builder()
                    .header("content-length", "2")
                    .body(())
                    .unwrap();
                let mut tx = respond.send_response(resp, false).unwrap();
                tx.send_data(Bytes::from_static(b"ok"), false).unwrap();
                // Says how many bytes of the body have arrived, as they arrive.
                let mut body = req.into_body();
                let mut n = 0;
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    n += chunk.len();
                    let _ = seen.send(n).await;
                }
                let _ = tx.send_data(Bytes::new(), true);
            }
        })
    })
    .await;
    let (req, frames) = upload("/");
    let dials = AtomicUsize::new(0);
    let pool = Pool::default();
    frames
        .send(Frame::data(Bytes::from_static(b"first")))
        .await
        .unwrap();
    let resp = pool.send(addr, req, dialer(addr, &dials)).await.unwrap();
    let mut body = resp.into_body();
    let ok = body.frame().await.unwrap().unwrap();
    assert_eq!(ok.data_ref().unwrap().as_ref(), b"ok");
    drop(body);
    frames
        .send(Frame::data(Bytes::from_static(b"second")))
        .await
        .unwrap();
    let whole = async {
        while let Some(n) = got.recv().await {
            if n == "firstsecond".len() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), whole)
        .await
        .expect("the rest of the upload did not arrive");
    drop(frames);
}

#[tokio::test]
async fn a_response_body_dropped_early_resets_the_stream() {
    let (seen, mut reason) = mpsc::channel(1);
    let addr = server(move |conn, _| {
        let seen = seen.clone();
        answer_all(conn, move |_req, mut respond| {
            let seen = seen.clone();
            async move {
                let mut tx = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                tx.send_data(Bytes::from_static(b"first"), false).unwrap();
                // An endless body: only a reset from the client ends it.
                let r = std::future::poll_fn(|cx| tx.poll_reset(cx)).await;
                seen.send(r.ok()).await.unwrap();
            }
        })
    })
    .await;
    let dials = AtomicUsize::new(0);
    let resp = Pool::default()
        .send(addr, get("/"), dialer(addr, &dials))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"first");
    drop(body);
    let got = tokio::time::timeout(Duration::from_secs(5), reason.recv())
        .await
        .unwrap();
    assert_eq!(got.flatten(), Some(h2::Reason::CANCEL));
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_one_that_answers_is_kept() {
    let keep_alive = conn::KeepAlive {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(100),
    };
    let dial = async |addr| {
        let tcp = TcpStream::connect(addr).await.unwrap();
        conn::handshake(tcp, addr, keep_alive).await.unwrap()
    };
    // A peer that completes the handshake and then reads nothing more (hung, or gone without
    // a FIN): nothing answers the PINGs.
    let (hold, mut held) = mpsc::channel(1);
    let hung = server(move |conn, _| {
        let hold = hold.clone();
        async move { hold.send(conn).await.unwrap() }
    })
    .await;
    let silent = dial(hung).await;
    let _conn = held.recv().await.unwrap();
    eventually("the silent peer's connection closes", async || {
        silent.is_closed()
    })
    .await;

    // A peer that answers keeps its connection through many PINGs.
    let live = server(|conn, _| {
        answer_all(conn, |_req, respond| async move {
            respond_text(respond, "ok".into());
        })
    })
    .await;
    let answered = dial(live).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!answered.is_closed());
    assert!(answered.takes_streams().await);
}

/// A TCP relay whose peer → client direction can be held shut, so a test decides when the
/// client sees what the peer sent. Reports each batch of client → peer bytes.
struct Relay {
    addr: SocketAddr,
    /// While `false`, bytes from the peer wait in the relay.
    open: tokio::sync::watch::Sender<bool>,
    /// A message per client → peer write.
    upstream_writes: mpsc::UnboundedReceiver<usize>,
}

impl Relay {
    async fn to(peer: SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, gate) = tokio::sync::watch::channel(true);
        let (writes, upstream_writes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(peer).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = writes.send(n);
                }
            });
            let mut gate = gate;
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                if gate.wait_for(|open| *open).await.is_err()
                    || cw.write_all(&buf[..n]).await.is_err()
                {
                    return;
                }
            }
        });
        Self {
            addr,
            open,
            upstream_writes,
        }
    }
}

#[tokio::test]
async fn a_stream_above_the_goaway_last_stream_is_refused_and_one_the_peer_took_is_not() {
    // The peer takes the first request, then closes with a GOAWAY (last stream = the first's)
    // while the client, not yet aware of it, sends a second: the peer never processed the
    // second (safe to send again, any method); the first it may have acted on.
    let (accepted_tx, accepted) = oneshot::channel::<()>();
    let (go_tx, go) = oneshot::channel::<()>();
    let slot = std::sync::Mutex::new(Some((accepted_tx, go)));
    let peer = server(move |mut conn, _| {
        let (accepted_tx, go) = slot.lock().unwrap().take().unwrap();
        async move {
            let (_req, _respond) = conn.accept().await.unwrap().unwrap();
            accepted_tx.send(()).unwrap();
            go.await.unwrap();
            conn.abrupt_shutdown(h2::Reason::NO_ERROR);
            while conn.accept().await.is_some() {}
        }
    })
    .await;
    let mut relay = Relay::to(peer).await;
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let conn = conn::handshake(tcp, peer, conn::KEEP_ALIVE).await.unwrap();
    let first = tokio::spawn({
        let conn = conn.clone();
        async move { conn.send(get("/first")).await }
    });
    accepted.await.unwrap();
    // Hold the GOAWAY in the relay until the second request is on its way to the peer.
    relay.open.send(false).unwrap();
    while relay.upstream_writes.try_recv().is_ok() {}
    go_tx.send(()).unwrap();
    let second = tokio::spawn({
        let conn = conn.clone();
        async move { conn.send(get("/second")).await }
    });
    relay.upstream_writes.recv().await.unwrap();
    relay.open.send(true).unwrap();

    let err = match second.await.unwrap() {
        Ok(resp) => panic!("the second request was answered: {resp:?}"),
        Err(conn::SendError::Failed(e)) => upstream(peer, &conn::SendError::Failed(e)),
        Err(other) => panic!("expected a failed stream, got {other:?}"),
    };
    assert!(
        matches!(err, ProxyError::Upstream { refused: true, .. }),
        "a stream above the GOAWAY's last stream ID must be refused (retryable): {err:?}"
    );
    // The first was taken, then the connection went: not a refusal.
    let err = match first.await.unwrap() {
        Ok(resp) => panic!("the first request was answered: {resp:?}"),
        Err(e) => upstream(peer, &e),
    };
    assert!(
        matches!(err, ProxyError::Upstream { refused: false, .. }),
        "a stream the peer took must not be sent again blindly: {err:?}"
    );
}
