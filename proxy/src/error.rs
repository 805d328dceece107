//! Why the proxy could not carry a request, and the one place that turns that into a response:
//! a status code, an `x-weft-error: <reason>` header, and the reason as the `error` label of
//! `response_total`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, full};

/// The header naming why the proxy answered itself.
pub const ERROR_HEADER: &str = "x-weft-error";

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
            ProxyError::Denied(_) => "denied",
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
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
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
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        resp
    }

    /// The response the proxy sends in place of the upstream's.
    pub fn into_response(self) -> Response<Body> {
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
