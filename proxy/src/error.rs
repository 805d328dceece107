//! Why the proxy could not carry a request, and the one place that turns that into a response:
//! a status code, an `x-weft-error: <reason>` header, and the reason as the `error` label of
//! `response_total`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, full};

/// The header naming why the proxy answered itself.
pub const ERROR_HEADER: &str = "x-weft-error";
/// The header naming the policy that denied a request (to mesh clients only).
pub const POLICY_HEADER: &str = "x-weft-policy";

/// Whether a peer proxy's response is a policy's refusal (denied or rate limited): the
/// client's proxy neither retries it nor counts it against the endpoint.
pub fn is_policy_refusal(resp_headers: &http::HeaderMap) -> bool {
    resp_headers
        .get(ERROR_HEADER)
        .is_some_and(|v| v == "denied" || v == "rate-limited")
}

/// Whether a request is a gRPC call (its answers must be gRPC statuses).
pub fn is_grpc(request_headers: &http::HeaderMap) -> bool {
    request_headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service or route for {0}")]
    NoRoute(String),
    #[error("{0} has no ready endpoints")]
    NoEndpoints(String),
    #[error("connect to {addr}: {reason}")]
    ConnectFailed { addr: String, reason: String },
    #[error("{addr} is not {expected}: {reason}")]
    TlsIdentityMismatch {
        addr: String,
        expected: String,
        reason: String,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("upstream {addr}: {reason}")]
    Upstream {
        addr: String,
        reason: String,
        /// The peer refused the stream (nothing was processed).
        refused: bool,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0} is outside the mesh and passthrough is off")]
    Denied(String),
    /// Inbound authorization refused the request. `describe`: the client is a verified mesh
    /// identity, and may be told which policy (plaintext strangers are not).
    #[error("denied by {policy}")]
    Forbidden { policy: String, describe: bool },
    /// A RateLimitPolicy's bucket is empty.
    #[error("rate limited ({scope}): retry after {retry_after} s")]
    RateLimited {
        scope: &'static str,
        retry_after: u64,
        describe: bool,
    },
    #[error("{0}")]
    AllEndpointsEjected(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A retry was due and the route's budget refused it: the original failure goes back
    /// with its own status.
    #[error("{original} (not retried: the route's retry budget is exhausted)")]
    RetryBudgetExhausted { original: Box<ProxyError> },
}

impl ProxyError {
    /// A failed request through hyper-util's pooling client (to an application speaking
    /// HTTP/2, or to a destination outside the mesh) at `addr`.
    pub fn client(addr: &str, e: &hyper_util::client::legacy::Error) -> Self {
        let (addr, reason) = (addr.to_owned(), format!("{e:#}"));
        if e.is_connect() {
            ProxyError::ConnectFailed { addr, reason }
        } else {
            ProxyError::Upstream {
                addr,
                reason,
                refused: false,
            }
        }
    }

    /// The `x-weft-error` reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::ConnectFailed { .. } => "connect-failed",
            ProxyError::TlsIdentityMismatch { .. } => "tls-identity-mismatch",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Upstream { .. } => "upstream-failed",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::Denied(_) | ProxyError::Forbidden { .. } => "denied",
            ProxyError::RateLimited { .. } => "rate-limited",
            ProxyError::AllEndpointsEjected(_) => "all-endpoints-ejected",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::RetryBudgetExhausted { .. } => "retry-budget-exhausted",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints(_)
            | ProxyError::AllEndpointsEjected(_)
            | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RetryBudgetExhausted { original } => original.status(),
            ProxyError::ConnectFailed { .. }
            | ProxyError::TlsIdentityMismatch { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Denied(_) | ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether this is a policy's answer (403 or 429 from authorization or a rate limit): its
    /// own headers, and an `x-weft-error` only for clients that may be told.
    fn policy_headers(&self, h: &mut http::HeaderMap) -> Option<bool> {
        match self {
            ProxyError::Forbidden { policy, describe } => {
                if *describe && let Ok(v) = HeaderValue::from_str(policy) {
                    h.insert(POLICY_HEADER, v);
                }
                Some(*describe)
            }
            ProxyError::RateLimited {
                retry_after,
                describe,
                ..
            } => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
                Some(*describe)
            }
            _ => None,
        }
    }

    /// The response the proxy sends in place of the upstream's: for a gRPC request (its
    /// `content-type` is `application/grpc…`), a trailers-only gRPC response whose status maps
    /// the HTTP one as the gRPC spec does, so gRPC clients see a status and not a broken call.
    pub fn into_response_for(self, grpc: bool) -> Response<Body> {
        if grpc {
            self.into_grpc_response()
        } else {
            self.into_response()
        }
    }

    fn into_grpc_response(self) -> Response<Body> {
        // HTTP → gRPC status as in gRPC's "HTTP to gRPC Status Code Mapping".
        let code: u16 = match self.status().as_u16() {
            400 => 13, // INTERNAL
            403 => 7,  // PERMISSION_DENIED
            429 => 8,  // RESOURCE_EXHAUSTED
            404 => 12, // UNIMPLEMENTED
            504 => 4,  // DEADLINE_EXCEEDED: our own timeout ran out
            _ => 14,   // UNAVAILABLE: 502, 503
        };
        // grpc-message is percent-encoded text; keep it to visible ASCII.
        let message: String = self
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .map(|c| if c == '%' { '?' } else { c })
            .collect();
        let mut resp = Response::new(crate::body::empty());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        match self.policy_headers(h) {
            Some(false) => {}
            Some(true) => {
                h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
            }
            None => {
                if let Ok(v) = HeaderValue::from_str(&message) {
                    h.insert("grpc-message", v);
                }
                h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
            }
        }
        resp
    }

    /// The response the proxy sends in place of the upstream's.
    pub fn into_response(self) -> Response<Body> {
        let mut policy = http::HeaderMap::new();
        if let Some(describe) = self.policy_headers(&mut policy) {
            // A policy's answer has no body: it says nothing a header does not.
            let mut resp = Response::new(crate::body::empty());
            *resp.status_mut() = self.status();
            if describe {
                policy.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
            }
            *resp.headers_mut() = policy;
            return resp;
        }
        let mut body = self.to_string();
        body.push('\n');
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = self.status();
        resp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}
