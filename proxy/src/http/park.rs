//! HTTP/1 connections that give their buffers back while they wait for the next request.
//!
//! hyper's HTTP/1 server allocates an 8 KiB write buffer when a connection starts and an 8 KiB
//! read buffer at its first read, and keeps both for the connection's whole life; a keep-alive
//! connection spends most of that life waiting. Between two requests on a plain TCP connection,
//! [`serve_h1`] takes hyper's connection apart (`into_parts`), keeps only the socket, waits
//! for the client to send again, and builds a new one. An idle keep-alive connection then holds
//! its socket and a small task instead of ~18 KiB (docs/reliability.md).
//!
//! It parks once the connection has been quiet for one to two `--http1-park-after` ([`PARK_AFTER`]) (a client in a
//! request loop never waits that long, so it does not pay for taking apart and rebuilding; the
//! timer is re-armed once a tick, not once a request), and only at a request boundary it can
//! prove: no handler running, every response body
//! written (hyper drops it when it is) and flushed to the socket, every request body read to
//! its end, hyper waiting for bytes, and — checked on the parts — none it has not parsed. Bytes
//! of a pipelined request that hyper read but did not parse go to the next connection first,
//! and the connection does not park again before a request starts (so a slow client cannot
//! reset hyper's header timer by being taken apart). A TLS stream is never parked: it may hold
//! decrypted bytes its socket no longer shows.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Activity;
use crate::drain;

/// The default `--http1-park-after`: a connection at a request boundary parks after one to
/// two of this with no new request.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Whether HTTP/1 connections on `IO` park with `--http1-park-after` at `park_after`.
pub(super) fn parks<IO: Park>(park_after: Duration) -> bool {
    IO::PARKS && !park_after.is_zero()
}

/// A connection's IO that can be waited on without reading from it.
pub trait Park {
    /// Whether a connection on it may park at all.
    const PARKS: bool;
    /// Ready when there is something to read (or the peer closed).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Park for TcpStream {
    const PARKS: bool = true;
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl<IO> Park for Box<tokio_rustls::server::TlsStream<IO>> {
    const PARKS: bool = false;
    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What hyper last did with a connection's IO.
#[derive(Debug, Default)]
struct IoFlags {
    /// Its last read found nothing to read.
    read_pending: AtomicBool,
    /// It wrote since its last completed flush.
    dirty: AtomicBool,
}

/// The IO hyper gets: the socket, bytes read by the connection before (given first), and
/// flags for the park decision.
struct ParkIo<IO> {
    io: IO,
    prefix: Bytes,
    flags: Arc<IoFlags>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for ParkIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.flags.read_pending.store(false, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.flags
            .read_pending
            .store(r.is_pending(), Ordering::Relaxed);
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ParkIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.flags.dirty.store(true, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.flags.dirty.store(true, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.flags.dirty.store(false, Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A message body a parked connection must see the end of: counted in the connection's
/// [`Activity::open_bodies`] until then. A response body ends when hyper has read it to its
/// end or dropped it (it drops it once written); a request body only when it was read to its
/// end — one dropped earlier is one hyper may still be draining, and keeps the connection from
/// parking for the rest of its life.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    open: Option<Arc<Activity>>,
    ends_on_drop: bool,
}

impl<B: HttpBody> Counted<B> {
    /// A response body, counted when `activity` is given (HTTP/1).
    pub(super) fn response(inner: B, activity: Option<Arc<Activity>>) -> Self {
        if let Some(a) = &activity {
            a.open_bodies.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            inner,
            open: activity,
            ends_on_drop: true,
        }
    }

    /// A request body, counted when `activity` is given and it is not already at its end.
    pub(super) fn request(inner: B, activity: Option<&Arc<Activity>>) -> Self {
        let open = activity.filter(|_| !inner.is_end_stream()).cloned();
        if let Some(a) = &open {
            a.open_bodies.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            inner,
            open,
            ends_on_drop: false,
        }
    }

    fn end(&mut self) {
        if let Some(a) = self.open.take() {
            a.open_bodies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if self.ends_on_drop
            && let Some(a) = self.open.take()
        {
            a.open_bodies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if this.open.is_some() {
            match &r {
                Poll::Ready(None) => this.end(),
                Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.end(),
                _ => {}
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a parked connection in `http_parked_connections` while it lives.
struct Counting<'a>(&'a (dyn Fn(i64) + Sync));

impl<'a> Counting<'a> {
    fn new(count: &'a (dyn Fn(i64) + Sync)) -> Self {
        count(1);
        Self(count)
    }
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        (self.0)(-1);
    }
}

/// How an HTTP/1 connection ended.
pub(super) enum H1End {
    /// hyper's connection ended (closed, failed, or finished after a drain or the idle limit).
    Hyper(Result<(), hyper::Error>),
    /// Parked, the client sent no byte of a next request for the header timeout: an idle
    /// keep-alive connection (or one opened ahead and never used), closed as hyper would, but
    /// not an error: a head that was begun is with hyper, whose timeout is one.
    Idle,
}

/// Serves HTTP/1 (with upgrades) on `io` until the connection ends, parking it between
/// requests when `IO` can be ([`Park`]). On drain, or when `idle_out` resolves (the idle limit,
/// the rapid-reset guard: its value goes to `closing`), in-flight requests finish and the
/// connection closes; a parked one just closes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_h1<IO, S, B>(
    io: IO,
    builder: &hyper::server::conn::http1::Builder,
    svc: S,
    activity: &Activity,
    drain: &drain::Watch,
    mut idle_out: Pin<&mut impl Future<Output = &'static str>>,
    closing: &(dyn Fn(&'static str) + Sync),
    parked: &(dyn Fn(i64) + Sync),
    header_timeout: Duration,
    park_after: Duration,
) -> H1End
where
    IO: AsyncRead + AsyncWrite + Park + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let flags = Arc::new(IoFlags::default());
    let mut io = ParkIo {
        io,
        prefix: Bytes::new(),
        flags: flags.clone(),
    };
    let mut svc = svc;
    // After handing unparsed bytes over, no park until a request has started.
    let mut parks_after: Option<usize> = None;
    let drained = drain.signaled();
    tokio::pin!(drained);
    // Ticks every PARK_AFTER while the connection is busy; at a request boundary, it parks at
    // a tick when no request started since the tick before (quiet for one to two PARK_AFTER).
    // Re-armed once a tick, not once a request.
    let parks = parks::<IO>(park_after);
    let tick = tokio::time::sleep(park_after);
    tokio::pin!(tick);
    let mut requests_at_tick = activity.requests.load(Ordering::Relaxed);
    loop {
        // Boxed: a parked connection's task keeps no slot for hyper's connection state.
        let mut conn = Box::new(
            builder
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        let mut draining = false;
        // Runs the connection until it ends (`Some`) or may park (`None`).
        let ended = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Some(Ok(r)));
            }
            if draining {
                return Poll::Pending;
            }
            if drained.as_mut().poll(cx).is_ready() {
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
                return Pin::new(&mut *conn).poll(cx).map(|r| Some(Ok(r)));
            }
            if let Poll::Ready(why) = idle_out.as_mut().poll(cx) {
                return Poll::Ready(Some(Err(why)));
            }
            let boundary = parks
                && parks_after.is_none_or(|n| activity.requests.load(Ordering::Relaxed) > n)
                && flags.read_pending.load(Ordering::Relaxed)
                && !flags.dirty.load(Ordering::Relaxed)
                && activity.in_flight.load(Ordering::Acquire) == 0
                && activity.open_bodies.load(Ordering::Relaxed) == 0;
            if !boundary {
                return Poll::Pending;
            }
            loop {
                std::task::ready!(tick.as_mut().poll(cx));
                let requests = activity.requests.load(Ordering::Relaxed);
                if requests == requests_at_tick {
                    return Poll::Ready(None);
                }
                requests_at_tick = requests;
                tick.as_mut()
                    .reset(tokio::time::Instant::now() + park_after);
            }
        })
        .await;
        match ended {
            Some(Ok(result)) => return H1End::Hyper(result),
            Some(Err(why)) => {
                closing(why);
                Pin::new(&mut *conn).graceful_shutdown();
                return H1End::Hyper(poll_fn(|cx| Pin::new(&mut *conn).poll(cx)).await);
            }
            None => {}
        }
        let parts = (*conn)
            .into_parts()
            .expect("an upgraded connection has ended, not parked");
        svc = parts.service;
        io = parts.io.into_inner();
        // (Empty, it still holds hyper's whole read buffer: it must not live through the park.)
        let unparsed = parts.read_buf;
        if !unparsed.is_empty() {
            // A request hyper had begun to read: the next connection reads it first.
            io.prefix = unparsed;
            parks_after = Some(activity.requests.load(Ordering::Relaxed));
            continue;
        }
        drop(unparsed);
        parks_after = None;
        crate::trim::connection_freed();
        // Parked: the socket and this task are all the connection holds.
        let _parked = Counting::new(parked);
        let woke = poll_fn(|cx| {
            if let Poll::Ready(r) = io.io.poll_readable(cx) {
                return Poll::Ready(r.map(|()| None));
            }
            if drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Some(None)));
            }
            if let Poll::Ready(why) = idle_out.as_mut().poll(cx) {
                return Poll::Ready(Ok(Some(Some(why))));
            }
            Poll::Pending
        });
        let deadline = tokio::time::Instant::now() + header_timeout;
        match tokio::time::timeout_at(deadline, woke).await {
            // Something to read (or the peer closed: the next connection sees that and ends).
            Ok(Ok(None)) => {
                tick.as_mut()
                    .reset(tokio::time::Instant::now() + park_after);
                requests_at_tick = activity.requests.load(Ordering::Relaxed);
            }
            // Drained (`None`) or at the idle limit: nothing is in flight, so just close.
            Ok(Ok(Some(why))) => {
                if let Some(why) = why {
                    closing(why);
                }
                return H1End::Hyper(Ok(()));
            }
            Ok(Err(_)) => return H1End::Hyper(Ok(())),
            Err(_) => return H1End::Idle,
        }
    }
}
