//! What every data-path listener bounds, so that a broken or hostile client costs a known amount
//! and cannot starve the others: connections per listener, the time and size of a request's
//! head, how long a request body may stall, HTTP/2 streams, and the HTTP/2 rapid-reset pattern
//! (CVE-2023-44487). The defaults and flags are in docs/configuration.md ("Limits").
//!
//! Where each is enforced:
//! - connections: [`ConnectionLimit`], taken in the accept loop (`listen::accept`) before a task
//!   is spawned; over the limit the connection is closed at once, counted in
//!   `tcp_refused_connections_total{reason="limit"}` and logged (at most once per 10 s);
//! - request heads: hyper's HTTP/1 parser (`header_read_timeout`, `max_header_size`,
//!   `max_headers`) and HTTP/2 settings (`max_header_list_size`), in `http::serve`;
//! - request bodies: [`IdleBody`], wrapping each request body that actually waits for data;
//! - streams: `max_concurrent_streams` and `max_pending_accept_reset_streams` in `http::serve`,
//!   plus a count of requests the client cancelled before their answer: past
//!   `h2_max_resets_per_conn` in a window, and more than were answered over the connection's
//!   life (or ten times the limit in the window), the connection gets a GOAWAY and closes.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub use weft_proto::limits::ConnectionLimit;

use crate::body::BodyError;

/// The limits of one proxy's data-path listeners (`weft-proxy run` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections one listener (inbound, outbound, each `--upstream`) keeps open at once.
    pub max_connections: usize,
    /// From the moment an HTTP/1 connection waits for a request head until the head is complete
    /// (covers a slow first byte and slowloris headers alike).
    pub header_read_timeout: Duration,
    /// Bytes of one request head (HTTP/1 start line and headers; HTTP/2 header list).
    pub max_header_bytes: u32,
    /// Header fields of one HTTP/1 request.
    pub max_headers: usize,
    /// A request body that sends nothing for this long is cut off.
    pub body_idle_timeout: Duration,
    /// An HTTP/1 keep-alive connection on a plain socket quiet for one to two of this at a
    /// request boundary gives its buffers back until its next request (`http::park`); zero:
    /// never.
    pub http1_park_after: Duration,
    /// Streams one HTTP/2 client may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Requests one HTTP/2 client may cancel (RST_STREAM) before their answer, per
    /// [`RESET_WINDOW`]; past it, once they outnumber the requests answered over the
    /// connection's life (or past ten times it), the connection is closed with a GOAWAY.
    pub h2_max_resets_per_conn: u32,
}

/// The window [`Limits::h2_max_resets_per_conn`] counts in.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

/// HTTP/1's default header count (hyper's): the parser keeps them on the stack up to this
/// many; any other value costs an allocation per request, so it is only set when changed.
pub const DEFAULT_MAX_HEADERS: usize = 100;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: DEFAULT_MAX_HEADERS,
            body_idle_timeout: Duration::from_secs(60),
            http1_park_after: crate::http::PARK_AFTER,
            h2_max_concurrent_streams: 1024,
            h2_max_resets_per_conn: 1000,
        }
    }
}

/// A request body that fails once it has waited `idle` for its next frame. The timer is made
/// only when the body first waits, so bodies that are complete when they arrive (most GETs)
/// never have one.
#[derive(Debug)]
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer counts from the current wait (false once a frame came).
    armed: bool,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            armed: false,
        }
    }
}

/// What an idle request body ends with.
#[derive(Debug)]
pub struct BodyIdle(pub Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request body sent nothing for {} (--body-idle-timeout)",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for BodyIdle {}

impl<B> HttpBody for IdleBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = Instant::now() + this.idle;
        let timer = match &mut this.timer {
            Some(t) => {
                if !this.armed {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => this
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.armed = true;
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_timeout_and_a_flowing_one_does_not() {
        // A body that sends a frame every 6 s (never idle 10 s) goes through whole.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(1);
        let flowing = IdleBody::new(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Duration::from_secs(10),
        );
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
        });
        let got = flowing.collect().await.expect("no idle error").to_bytes();
        assert_eq!(&got[..], b"xxxx");

        // One that stops after a frame fails 10 s after that frame, naming the flag.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(1);
        let mut stalled = IdleBody::new(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Duration::from_secs(10),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"y"))))
            .await
            .unwrap();
        assert!(stalled.frame().await.unwrap().is_ok());
        let start = Instant::now();
        let err = stalled.frame().await.unwrap().expect_err("idle");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(err.to_string().contains("--body-idle-timeout"), "{err}");
        drop(tx);
    }
}
