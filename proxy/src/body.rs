//! The one body type the proxy moves: a streaming body from hyper (a client's request, an
//! application's response) or from a peer proxy's HTTP/2 stream (`crate::peers`), never
//! collected, or a small body the proxy makes itself.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Why a body broke off. Boxed because bodies come from hyper and from `h2` directly, whose
/// errors do not convert into each other; hyper's servers and clients take any error that
/// converts into this.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub type Body = BoxBody<Bytes, BodyError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn streamed(body: hyper::body::Incoming) -> Body {
    body.map_err(BodyError::from).boxed()
}
