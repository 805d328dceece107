//! The bodies of one HTTP/2 stream to a peer proxy: the request body piped into the stream
//! with its flow control, and the response body read out of it. Touches nothing but the stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;
use tracing::debug;

use crate::body::{Body, BodyError};

/// Sends `body` on `tx` until it ends (data, then trailers or an empty end-of-stream frame),
/// taking only the capacity the peer grants, so a large upload holds no more than the peer's
/// windows in memory. A body that fails resets the stream (`CANCEL`); a peer that resets the
/// stream stops it; so does the response side giving up (its [`Upload`] dropped before the
/// response ended: a per-try timeout, a client gone). The future of the task each streamed
/// request body gets.
pub(super) struct Pipe {
    body: Body,
    tx: SendStream<Bytes>,
    /// A chunk taken from the body that waits for send capacity.
    waiting: Option<Bytes>,
    /// Until the response has ended: closed if nobody waits for it any more.
    wanted: Option<oneshot::Receiver<()>>,
}

/// The response side's hold on a streamed request body: dropped before the response has
/// ended, it stops the upload and resets the stream.
#[derive(Debug)]
pub(super) struct Upload(oneshot::Sender<()>);

impl Upload {
    /// The response ended: the rest of the request body may still go (the peer decides).
    fn done(self) {
        let _ = self.0.send(());
    }
}

impl Pipe {
    pub(super) fn new(body: Body, tx: SendStream<Bytes>) -> (Self, Upload) {
        let (hold, wanted) = oneshot::channel();
        let pipe = Self {
            body,
            tx,
            waiting: None,
            wanted: Some(wanted),
        };
        (pipe, Upload(hold))
    }

    fn pump(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        let this = &mut *self;
        loop {
            // Registered whenever this waits (for the body or for capacity), so a reset from
            // the peer wakes it and ends it.
            if let Poll::Ready(reason) = this.tx.poll_reset(cx) {
                let reason = reason?;
                return Poll::Ready(Err(format!("the peer reset the stream ({reason})").into()));
            }
            if let Some(wanted) = &mut this.wanted
                && let Poll::Ready(done) = Pin::new(wanted).poll(cx)
            {
                this.wanted = None;
                if done.is_err() {
                    this.tx.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err("nobody waits for the response any more".into()));
                }
            }
            if let Some(chunk) = this.waiting.take() {
                while this.tx.capacity() == 0 {
                    match this.tx.poll_capacity(cx) {
                        Poll::Pending => {
                            this.waiting = Some(chunk);
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(
                                "the stream closed before the body was sent".into()
                            ));
                        }
                    }
                }
                // The whole chunk goes, even if larger than the capacity: h2 holds the excess
                // and reports no capacity until it has gone out, so at most one chunk waits
                // beyond the peer's window.
                let end = this.body.is_end_stream();
                this.tx.send_data(chunk, end)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next frame is polled before any capacity is reserved: capacity claimed for
            // a body that has nothing to send would be withheld from the connection's other
            // streams (hyper#4003).
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) if chunk.is_empty() => {
                        let end = this.body.is_end_stream();
                        // An empty DATA frame needs no capacity.
                        this.tx.send_data(chunk, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Ok(chunk) => {
                        // A claim of one byte, not the chunk's length: h2 raises the claim to
                        // what is buffered when the chunk is sent, and a small claim keeps
                        // streams that wait from holding the connection's window (hyper
                        // does the same).
                        this.tx.reserve_capacity(1);
                        this.waiting = Some(chunk);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.tx.reserve_capacity(0);
                            this.tx.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    this.tx.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(e));
                }
                None => {
                    // Ended without trailers and without an end-of-stream DATA frame.
                    this.tx.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl Future for Pipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.as_mut().pump(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "request body not sent whole");
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body from a peer proxy: the stream's DATA frames, each one's flow-control
/// capacity given back as it is handed on (so the peer sends more only as fast as our client
/// reads), then the trailers. Dropping it early makes `h2` reset the stream (`CANCEL`) once
/// no other handle to it is left, and stops the request body's upload if one is still going.
#[derive(Debug)]
pub struct ResponseBody {
    rx: RecvStream,
    data_done: bool,
    /// From `content-length`, less what has arrived.
    remaining: Option<u64>,
    upload: Option<Upload>,
}

impl ResponseBody {
    pub(super) fn new(rx: RecvStream, headers: &HeaderMap, upload: Option<Upload>) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Self {
            rx,
            data_done: false,
            remaining,
            upload,
        }
    }

    /// All of the response has arrived: the end of the stream, or (a reader may stop there,
    /// before the end-of-stream flag comes) all the bytes its `content-length` announced.
    fn complete(&self) -> bool {
        self.rx.is_end_stream() || self.remaining == Some(0)
    }

    /// Once the response is complete, the upload, if any, is no longer tied to it.
    fn release_upload(&mut self) {
        if self.upload.is_some()
            && self.complete()
            && let Some(upload) = self.upload.take()
        {
            upload.done();
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An empty response that was never polled is complete all the same.
        self.release_upload();
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = self.as_mut().poll_stream(cx);
        self.release_upload();
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl ResponseBody {
    fn poll_stream(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if !self.data_done {
            match ready!(self.rx.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let n = chunk.len();
                    // Fails only if the stream is gone, and then there is nothing to give back.
                    let _ = self.rx.flow_control().release_capacity(n);
                    if let Some(r) = &mut self.remaining {
                        *r = r.saturating_sub(n as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // RST_STREAM(NO_ERROR): the peer needs no more of the request; the response
                // has ended (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => {
                    self.data_done = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.rx.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }
}
