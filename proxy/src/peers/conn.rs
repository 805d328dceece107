//! One HTTP/2 connection to a peer proxy, on the `h2` crate directly: a handle that requests
//! open streams with, from their own tasks, and one driver task per connection (frames in and
//! out, keep-alive PINGs). Nothing is spawned per request except the pipe of a request body
//! that is not empty.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use http::{Method, Request, Response};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, debug, info_span};

use super::stream::{Pipe, ResponseBody};
use crate::body::Body;

/// Receive windows, fixed. hyper's client grew them from 64 KiB by measuring the
/// bandwidth-delay product (up to 16 MiB), at the cost of bookkeeping on every DATA frame. One
/// stream's throughput is at most its window per round trip: 1 MiB within a zone (RTT ≤ 1 ms)
/// is ≥ 1 GB/s, more than a proxy core moves. The connection's window, which all its streams
/// share, is four times that, so a few clients that stop reading cannot stall the others; and
/// it bounds the response data a peer connection can make us buffer to 4 MiB.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Request-body data h2 may hold per stream beyond what the peer's window lets out (hyper's).
const SEND_BUFFER: usize = 1 << 20;
/// Response headers larger than this are refused (hyper's limit).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Streams open at once before the peer's SETTINGS say how many it takes (hyper's).
const INITIAL_MAX_STREAMS: usize = 100;

/// PINGs on an idle or busy connection alike, so a dead peer or path (no FIN, no RST) is
/// noticed and idle connections are not dropped by middleboxes.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeepAlive {
    /// A PING this often.
    pub(super) interval: Duration,
    /// A PING not answered within this closes the connection.
    pub(super) timeout: Duration,
}

/// hyper's settings, which the proxy used before: every 30 s, 20 s to answer.
pub(super) const KEEP_ALIVE: KeepAlive = KeepAlive {
    interval: Duration::from_secs(30),
    timeout: Duration::from_secs(20),
};

/// A handle to one peer connection; clones share it.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    tx: SendRequest<Bytes>,
    /// Set when the connection takes no more requests: its driver ended, or it refused one.
    closed: Arc<AtomicBool>,
}

/// Why a request failed on a connection.
#[derive(Debug)]
pub(super) enum SendError {
    /// The connection is closing or closed and took no part of the request; it comes back to
    /// be sent on a new connection.
    Closed(Box<Request<Body>>, h2::Error),
    /// No stream was opened (nothing reached the peer).
    NotSent(h2::Error),
    /// The stream failed after the request went out (reset, or the connection broke).
    Failed(h2::Error),
}

/// An HTTP/2 connection to `addr` over `io` (TLS with ALPN `h2` already agreed), its driver
/// spawned.
pub(super) async fn handshake<IO>(
    io: IO,
    addr: SocketAddr,
    keep_alive: KeepAlive,
) -> Result<Conn, h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_max_send_streams(INITIAL_MAX_STREAMS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let driver = drive(conn, closed.clone(), keep_alive);
    tokio::spawn(driver.instrument(info_span!("peer", %addr)));
    Ok(Conn { tx, closed })
}

/// Runs the connection until it ends, sending PINGs and closing it when one goes unanswered.
/// Dropping the connection fails its open streams, so no request waits on a dead peer.
async fn drive<IO>(mut conn: Connection<IO, Bytes>, closed: Arc<AtomicBool>, keep_alive: KeepAlive)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = conn.ping_pong();
    loop {
        let ping = async {
            tokio::time::sleep(keep_alive.interval).await;
            let Some(pings) = pings.as_mut() else {
                return std::future::pending().await;
            };
            // An error means the connection is going away; its own future says how.
            if pings.send_ping(h2::Ping::opaque()).is_err() {
                return std::future::pending().await;
            }
            // A failed pong is a connection going away, as above.
            let pong = std::future::poll_fn(|cx| pings.poll_pong(cx));
            tokio::time::timeout(keep_alive.timeout, pong).await.is_ok()
        };
        tokio::select! {
            biased;
            ended = &mut conn => {
                if let Err(e) = ended {
                    debug!(error = %e, "peer connection ended with an error");
                }
                break;
            }
            answered = ping => {
                if !answered {
                    let timeout = keep_alive.timeout;
                    debug!(?timeout, "peer did not answer a PING; closing the connection");
                    break;
                }
            }
        }
    }
    closed.store(true, Ordering::Release);
}

impl Conn {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` on a new stream and waits for the response head. A request body that is
    /// not empty is piped in by a task of its own; the response is read by the caller's.
    pub(super) async fn send(
        mut self,
        req: Request<Body>,
    ) -> Result<Response<ResponseBody>, SendError> {
        // For a clone (ours always is) this does not wait: it says whether the connection can
        // open a stream at all (not closing, stream IDs left). Streams beyond the peer's limit
        // wait inside h2 for one to close.
        if let Err(e) = std::future::poll_fn(|cx| self.tx.poll_ready(cx)).await {
            self.closed.store(true, Ordering::Release);
            return Err(SendError::Closed(Box::new(req), e));
        }
        let (parts, body) = req.into_parts();
        let mut head = Request::from_parts(parts, ());
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(head.method()))
        {
            head.headers_mut()
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| len.into());
        }
        let end = body.is_end_stream();
        let (response, stream) = self.tx.send_request(head, end).map_err(|e| {
            if !is_user_error(&e) {
                // The connection failed since `poll_ready` a moment ago.
                self.closed.store(true, Ordering::Release);
            }
            SendError::NotSent(e)
        })?;
        // Held while the response is awaited, then by its body: dropped on the way (a per-try
        // timeout, the client gone), it stops the upload.
        let upload = (!end).then(|| {
            let (pipe, upload) = Pipe::new(body, stream);
            tokio::spawn(pipe.in_current_span());
            upload
        });
        let resp = response.await.map_err(SendError::Failed)?;
        let (parts, rx) = resp.into_parts();
        let body = ResponseBody::new(rx, &parts.headers, upload);
        Ok(Response::from_parts(parts, body))
    }
}

/// An error in what we asked of h2 (a header HTTP/2 forbids, say), not in the connection: it
/// carries neither an HTTP/2 error code nor an I/O error.
pub(super) fn is_user_error(e: &h2::Error) -> bool {
    e.reason().is_none() && !e.is_io()
}

/// Whether a request with this method and no body still says `content-length: 0` (as hyper
/// does): not for GET, HEAD, DELETE and CONNECT, whose bodies have no defined meaning.
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

#[cfg(test)]
impl Conn {
    /// Whether the connection would open a stream now (it has not seen a GOAWAY or failed).
    pub(super) async fn takes_streams(&self) -> bool {
        let mut tx = self.tx.clone();
        std::future::poll_fn(|cx| tx.poll_ready(cx)).await.is_ok()
    }
}
