//! Connections to peer proxies: mTLS that requires the peer to present the endpoint's registered
//! SPIFFE ID, and one multiplexed HTTP/2 connection per (address, identity), shared by every
//! request to that endpoint and replaced when it closes.
//!
//! A request finds its connection with one short lock and no allocation; only connecting takes
//! the endpoint's async lock (so concurrent requests wait for one new connection instead of
//! each opening their own) and sweeps out endpoints whose connections have closed. More than
//! one connection per endpoint was measured and dropped: with 32 concurrent requests, four
//! connections gave 2–5 % less throughput than one (docs/benchmarks.md).
//!
//! HTTP/2 is the `h2` crate's client, used directly (`conn`): the request's own task opens its
//! stream and waits for the response, and only the connection's driver is a task of its own.
//! hyper's client, used before, handed each request to its connection task over a channel and
//! spawned a task per request to wait for the response; dropping both cut the client proxy's
//! instructions per request by 13 % (docs/benchmarks.md). The bodies' plumbing, which hyper
//! provided, is in `stream`: a request body is piped into its stream by a task (only if it is
//! not empty), and the response body reads the stream.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::debug;
use weft_certs::SpiffeId;

use crate::body::Body;
use crate::error::ProxyError;
use crate::tls::{ALPN_H2, MeshTls};

mod conn;
mod stream;

use conn::{Conn, SendError};
pub use stream::ResponseBody;

/// The connection to one endpoint (address and identity).
#[derive(Debug, Default)]
struct Pool {
    conn: Mutex<Option<Conn>>,
    /// Held while connecting.
    connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// The open connection, if it can take a request.
    fn ready(&self) -> Option<Conn> {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        c.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    fn set(&self, c: Conn) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    fn is_closed(&self) -> bool {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        c.as_ref().is_none_or(Conn::is_closed)
    }

    /// Sends `req` on the pool's connection, made by `dial` when there is none or it has
    /// closed. A request the connection refused before sending any of it (it was closing) is
    /// sent once more on a new connection.
    async fn send<F>(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
        dial: impl Fn() -> F,
    ) -> Result<Response<ResponseBody>, ProxyError>
    where
        F: Future<Output = Result<Conn, ProxyError>>,
    {
        let conn = match self.ready() {
            Some(c) => c,
            None => self.reconnect(&dial).await?,
        };
        match conn.send(req).await {
            Ok(resp) => Ok(resp),
            Err(SendError::Closed(req, e)) => {
                debug!(%addr, error = %e, "connection closed before the request was sent; reconnecting");
                // Boxed, as rare as connecting.
                Box::pin(async {
                    let conn = self.reconnect(&dial).await?;
                    conn.send(*req).await.map_err(|e| upstream(addr, &e))
                })
                .await
            }
            Err(e) => Err(upstream(addr, &e)),
        }
    }

    /// A new connection, unless another request made one while this one waited for its turn.
    /// (A connection that refused a request is marked closed, so it is never the one found.)
    async fn reconnect<F>(&self, dial: impl Fn() -> F) -> Result<Conn, ProxyError>
    where
        F: Future<Output = Result<Conn, ProxyError>>,
    {
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.ready() {
            return Ok(c);
        }
        let c = dial().await?;
        self.set(c.clone());
        Ok(c)
    }
}

/// Pools by address, then identity (usually one per address), so a lookup clones nothing.
type Pools = HashMap<SocketAddr, Vec<(SpiffeId, Arc<Pool>)>>;

#[derive(Debug)]
pub struct Peers {
    tls: Arc<MeshTls>,
    connect_timeout: Duration,
    pools: Mutex<Pools>,
}

impl Peers {
    pub fn new(tls: Arc<MeshTls>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// A TLS connection to `addr` that has proven to be `identity`, speaking `alpn`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let failed = |reason: String| ProxyError::ConnectFailed {
            addr: addr.to_string(),
            reason,
        };
        let config = self
            .tls
            .client(identity, alpn)
            .map_err(|e| failed(e.to_string()))?;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ProxyError::Timeout(format!(
                    "connect to {addr}: no answer within {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        // The name is not checked (the SPIFFE ID is); rustls needs one for SNI.
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio::time::timeout(
            self.connect_timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| ProxyError::Timeout(format!("TLS handshake with {addr}")))?
        .map_err(|e| handshake_error(addr, identity, e))?;
        if tls.get_ref().1.alpn_protocol() != Some(alpn) {
            return Err(failed(format!(
                "the peer did not agree to {}",
                String::from_utf8_lossy(alpn)
            )));
        }
        Ok(tls)
    }

    /// Sends `req` on the shared HTTP/2 connection to the endpoint and returns the response
    /// head; the body streams from the peer as it is read. A request the connection refused
    /// before sending (it was closing) is sent once more on a new connection.
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        req: Request<Body>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let pool = self.pool(addr, identity);
        // Boxed: connecting is rare, and its future (TLS and HTTP/2 handshakes) would otherwise
        // be part of every request's, which is moved whole as the request goes (benchmarks.md).
        pool.send(addr, req, || Box::pin(self.handshake(addr, identity)))
            .await
    }

    /// The endpoint's pool, made on first use.
    fn pool(&self, addr: SocketAddr, identity: &SpiffeId) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let by_id = pools.entry(addr).or_default();
        if let Some((_, p)) = by_id.iter().find(|(id, _)| id == identity) {
            return p.clone();
        }
        let p = Arc::new(Pool::default());
        by_id.push((identity.clone(), p.clone()));
        p
    }

    /// Drops the pools whose connection has closed (their endpoints may be gone for
    /// good). Runs when connecting, not per request.
    fn forget_closed(&self) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|_, by_id| {
            // A pool another request holds may be about to connect: keep it.
            by_id.retain(|(_, p)| Arc::strong_count(p) > 1 || !p.is_closed());
            !by_id.is_empty()
        });
    }

    /// A new HTTP/2 connection to the endpoint. Runs under the pool's connecting lock.
    async fn handshake(&self, addr: SocketAddr, identity: &SpiffeId) -> Result<Conn, ProxyError> {
        self.forget_closed();
        let tls = self.connect(addr, identity, ALPN_H2).await?;
        conn::handshake(tls, addr, conn::KEEP_ALIVE)
            .await
            .map_err(|e| ProxyError::ConnectFailed {
                addr: addr.to_string(),
                reason: format!("HTTP/2 handshake: {e}"),
            })
    }
}

/// A failed request as the proxy reports it. `refused` (safe to send again, whatever the
/// method) when the peer saw none of it.
fn upstream(addr: SocketAddr, e: &SendError) -> ProxyError {
    let (reason, refused) = match e {
        // The request's own fault (h2 found a header HTTP/2 forbids), not the peer's: sending
        // it again would fail again, and the endpoint is not to blame.
        SendError::NotSent(e) if conn::is_user_error(e) => {
            return ProxyError::BadRequest(format!("the request cannot go over HTTP/2: {e}"));
        }
        SendError::Closed(_, e) => (
            format!("the connection closed before the request was sent: {e}"),
            true,
        ),
        SendError::NotSent(e) => (format!("the request was not sent: {e}"), true),
        // REFUSED_STREAM guarantees the peer processed nothing (RFC 9113 §8.7), and so does a
        // GOAWAY whose last stream ID is below this stream's (§6.8: the peer did not and will
        // not act on it): safe to send again, whatever the method. h2 fails a stream with the
        // peer's GOAWAY only in that case; a stream the peer took and the connection later
        // lost fails with a broken pipe instead.
        SendError::Failed(e) => (
            format!("HTTP/2: {e}"),
            e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote()),
        ),
    };
    ProxyError::Upstream {
        addr: addr.to_string(),
        reason,
        refused,
    }
}

/// A handshake failure the certificate caused is an identity mismatch; anything else, a failed
/// connection.
fn handshake_error(addr: SocketAddr, expected: &SpiffeId, e: std::io::Error) -> ProxyError {
    let tls = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(reason)) => ProxyError::TlsIdentityMismatch {
            addr: addr.to_string(),
            expected: expected.to_string(),
            reason: format!("{reason:?}"),
        },
        _ => ProxyError::ConnectFailed {
            addr: addr.to_string(),
            reason: format!("TLS handshake: {e}"),
        },
    }
}

#[cfg(test)]
mod tests;
