//! Retry rules: which failures a route retries for which methods, the retry budget that keeps
//! retries from multiplying load on a failing backend, backoff, and request bodies kept for
//! replay. No I/O beyond reading a small request body; `crate::forward` runs the attempts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as _, Frame};
use weft_proto::model::{ObjectRef, Retry, RetryBudget, RetryOn, RetryPolicy};

use crate::body::{Body, BodyError};

/// Request bodies up to this size are kept so a retry can send them again; larger ones (or
/// ones of unknown length, such as streams) are sent once.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// The longest budget window the model accepts; the ring of per-second buckets is this long.
const MAX_WINDOW_SECS: usize = 60;

/// Why an attempt failed, as retry conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A response with this status (>= 500, or a code the route lists).
    Status(u16),
    /// A gRPC status other than OK.
    Grpc(u16),
    /// No connection (refused, unreachable, TLS failure): nothing was sent.
    ConnectFailure,
    /// The peer refused the HTTP/2 stream: nothing was processed.
    RefusedStream,
    /// The stream or connection broke after the request was sent.
    Reset,
    /// No response headers within the per-try timeout.
    Timeout,
}

/// Methods that are safe to send twice (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether `failure` is one the rule retries for this method. Failures before the request
/// reached the application (connect failure, refused stream) are safe for any method, and so
/// are the gRPC statuses the route lists; the rest only for idempotent methods unless the route
/// opts in.
pub fn retryable(failure: Failure, retry: &Retry, policy: &RetryPolicy, method: &Method) -> bool {
    let on = |r: RetryOn| policy.on.contains(&r);
    let method_ok = idempotent(method) || policy.non_idempotent;
    match failure {
        Failure::ConnectFailure => on(RetryOn::ConnectFailure),
        Failure::RefusedStream => on(RetryOn::RefusedStream),
        Failure::Reset => method_ok && on(RetryOn::Reset),
        // A per-try timeout exists to be retried.
        Failure::Timeout => method_ok,
        Failure::Status(s) => {
            method_ok
                && (retry.codes.contains(&s)
                    || (on(RetryOn::ServerError) && (500..=599).contains(&s))
                    || (on(RetryOn::GatewayError) && (502..=504).contains(&s)))
        }
        // Every gRPC call is a POST: listing a status in `grpc_on` is the route's statement that
        // its methods may be called again on it.
        Failure::Grpc(code) => policy.grpc_on.contains(&code),
    }
}

/// The delay before retry `n` (1-based): `base` doubled per retry, at most 10 × base, drawn
/// uniformly from [delay/2, delay].
pub fn backoff(base: Duration, n: u32, draw: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << (n.saturating_sub(1)).min(16));
    doubled
        .min(base.saturating_mul(10))
        .mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
}

/// The retry budgets of every route, by route.
#[derive(Debug)]
pub struct Budgets {
    start: Instant,
    routes: Mutex<HashMap<ObjectRef, Arc<Budget>>>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            routes: Mutex::new(HashMap::new()),
        }
    }
}

impl Budgets {
    /// Forgets routes the configuration no longer has.
    pub fn retain(&self, keep: impl Fn(&ObjectRef) -> bool) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| keep(id));
    }

    pub fn route(&self, id: &ObjectRef) -> Arc<Budget> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = routes.get(id) {
            return b.clone();
        }
        routes
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Budget {
                    start: self.start,
                    window: Mutex::new([Bucket::default(); MAX_WINDOW_SECS]),
                })
            })
            .clone()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the proxy started; a bucket of an older second is stale.
    second: u64,
    requests: u32,
    retries: u32,
}

/// One route's requests and retries over the last seconds, in one-second buckets.
#[derive(Debug)]
pub struct Budget {
    start: Instant,
    window: Mutex<[Bucket; MAX_WINDOW_SECS]>,
}

impl Budget {
    fn bucket<'a>(&self, w: &'a mut [Bucket; MAX_WINDOW_SECS], now: Instant) -> &'a mut Bucket {
        let second = now.saturating_duration_since(self.start).as_secs();
        let b = &mut w[(second % MAX_WINDOW_SECS as u64) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                ..Bucket::default()
            };
        }
        b
    }

    /// Counts an original request.
    pub fn deposit(&self, now: Instant) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let b = self.bucket(&mut w, now);
        b.requests = b.requests.saturating_add(1);
    }

    /// Takes one retry from the budget if it allows: retries in the window stay within
    /// `percent` of requests plus `min_per_second` per second of the window.
    pub fn try_withdraw(&self, config: &RetryBudget, now: Instant) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let second = now.saturating_duration_since(self.start).as_secs();
        let span = config.window.as_secs().clamp(1, MAX_WINDOW_SECS as u64);
        let (requests, retries) = w
            .iter()
            .filter(|b| b.second + span > second && b.second <= second)
            .fold((0u64, 0u64), |(q, r), b| {
                (q + u64::from(b.requests), r + u64::from(b.retries))
            });
        let allowed =
            requests * u64::from(config.percent) / 100 + u64::from(config.min_per_second) * span;
        if retries >= allowed {
            return false;
        }
        let b = self.bucket(&mut w, now);
        b.retries = b.retries.saturating_add(1);
        true
    }
}

/// A request body as the attempts see it: the first attempt streams the original through
/// (never waiting for it, so streams and large uploads are not delayed) while keeping a copy of
/// up to [`REPLAY_LIMIT`] bytes; a retry replays the copy if the original ended within the
/// limit before the retry was decided.
#[derive(Debug)]
pub struct RequestBody {
    original: Option<Body>,
    copy: Arc<Mutex<Copy>>,
}

#[derive(Debug, Default)]
struct Copy {
    chunks: Vec<Bytes>,
    len: u64,
    trailers: Option<HeaderMap>,
    /// The original has ended: the copy is whole.
    complete: bool,
    /// The original outgrew the limit: no copy.
    overflow: bool,
}

impl RequestBody {
    pub fn new(body: Body) -> Self {
        let copy = Copy {
            complete: body.is_end_stream(),
            overflow: body.size_hint().lower().gt(&REPLAY_LIMIT),
            ..Copy::default()
        };
        Self {
            original: Some(body),
            copy: Arc::new(Mutex::new(copy)),
        }
    }

    /// The body for the next attempt: the original (teed) the first time, then the copy; `None`
    /// when the copy is incomplete or was too large.
    pub fn take(&mut self) -> Option<Body> {
        if let Some(inner) = self.original.take() {
            return Some(BodyExt::boxed(Tee {
                inner,
                copy: self.copy.clone(),
            }));
        }
        let copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        if !copy.complete || copy.overflow {
            return None;
        }
        let mut frames: Vec<Result<Frame<Bytes>, BodyError>> = copy
            .chunks
            .iter()
            .map(|c| Ok(Frame::data(c.clone())))
            .collect();
        if let Some(t) = &copy.trailers {
            frames.push(Ok(Frame::trailers(t.clone())));
        }
        if frames.is_empty() {
            return Some(crate::body::empty());
        }
        Some(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    }

    /// Whether another attempt can get the body.
    pub fn replayable(&self) -> bool {
        if self.original.is_some() {
            return true;
        }
        let copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        copy.complete && !copy.overflow
    }
}

/// The original body on its way to the first attempt, copied as it passes.
struct Tee {
    inner: Body,
    copy: Arc<Mutex<Copy>>,
}

impl hyper::body::Body for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(frame) = &polled {
            let ended = self.inner.is_end_stream();
            let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
            match frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        copy.len += data.len() as u64;
                        if copy.len > REPLAY_LIMIT {
                            copy.overflow = true;
                            copy.chunks = Vec::new();
                        } else if !copy.overflow {
                            copy.chunks.push(data.clone());
                        }
                    } else if let Some(t) = f.trailers_ref() {
                        copy.trailers = Some(t.clone());
                    }
                    copy.complete = ended;
                }
                Some(Err(_)) => copy.overflow = true,
                None => copy.complete = true,
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
