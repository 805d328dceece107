//! Opaque TCP: copies both ways until both sides are done, passing each side's end of stream on
//! as a half-close (`shutdown(SHUT_WR)`), and gives up after an idle timeout with no bytes
//! either way. Bytes are counted on the accepted side.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Metrics, TcpLabels};

/// Copies between `accepted` (the side that connected to us) and `upstream`. Returns the bytes
/// moved each way, or an error; `Err(TimedOut)` after `idle` with no traffic.
pub async fn splice<A, U>(
    accepted: A,
    mut upstream: U,
    idle: Duration,
    metrics: &Metrics,
    direction: &'static str,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let labels = TcpLabels { direction };
    let activity = Arc::new(AtomicU64::new(0));
    let mut accepted = Counted {
        inner: accepted,
        activity: activity.clone(),
        read: metrics.tcp_read.get_or_create(&labels).clone(),
        written: metrics.tcp_write.get_or_create(&labels).clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut accepted, &mut upstream);
    tokio::pin!(copy);
    let mut seen = 0;
    let mut tick = tokio::time::interval(idle.max(Duration::from_millis(4)) / 4);
    tick.reset();
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            r = &mut copy => return r,
            _ = tick.tick() => {
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    quiet += tick.period();
                    if quiet >= idle {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("idle for {}", humantime::format_duration(idle)),
                        ));
                    }
                } else {
                    seen = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

/// A stream that counts what passes through it.
struct Counted<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    read: Counter,
    written: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.inc_by(n);
            self.activity.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.inc_by(*n as u64);
            self.activity.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_passes_through_and_bytes_are_counted() {
        let metrics = Metrics::new();
        let (client, accepted) = tokio::io::duplex(64);
        let (upstream, server) = tokio::io::duplex(64);
        let copy = tokio::spawn(async move {
            let m = Metrics::new();
            let r = splice(accepted, upstream, Duration::from_secs(5), &m, "outbound").await;
            (r, m.encode())
        });
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        cw.write_all(b"ping").await.unwrap();
        cw.shutdown().await.unwrap();
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        // The server still answers after the client's half-close.
        sw.write_all(b"pong!").await.unwrap();
        sw.shutdown().await.unwrap();
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let (r, text) = copy.await.unwrap();
        assert_eq!(r.unwrap(), (4, 5));
        assert!(
            text.contains("tcp_read_bytes_total{direction=\"outbound\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("tcp_write_bytes_total{direction=\"outbound\"} 5"),
            "{text}"
        );
        drop(metrics);
    }

    #[tokio::test]
    async fn idle_connections_end() {
        let m = Metrics::new();
        let (_client, accepted) = tokio::io::duplex(64);
        let (upstream, _server) = tokio::io::duplex(64);
        let err = splice(accepted, upstream, Duration::from_millis(80), &m, "inbound")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
