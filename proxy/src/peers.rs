//! Connections to peer proxies: mTLS that requires the peer to present the endpoint's registered
//! SPIFFE ID, and one multiplexed HTTP/2 connection per (address, identity), shared by every
//! request to that endpoint and replaced when it closes.
//!
//! A request finds its connection with one short lock and no allocation; only connecting takes
//! the endpoint's async lock (so concurrent requests wait for one new connection instead of
//! each opening their own) and sweeps out endpoints whose connections have closed. More than
//! one connection per endpoint was measured and dropped: with 32 concurrent requests, four
//! connections gave 2–5 % less throughput than one (docs/benchmarks.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::{Instrument, debug, info_span};
use weft_certs::SpiffeId;

use crate::body::Body;
use crate::error::ProxyError;
use crate::tls::{ALPN_H2, MeshTls};

/// The connection to one endpoint (address and identity).
#[derive(Debug, Default)]
struct Pool {
    conn: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting.
    connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// The open connection, if it can take a request.
    fn ready(&self) -> Option<SendRequest<Body>> {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        c.as_ref().filter(|s| s.is_ready()).cloned()
    }

    fn set(&self, s: SendRequest<Body>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    fn is_closed(&self) -> bool {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        c.as_ref().is_none_or(SendRequest::is_closed)
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

    /// Sends `req` on the shared HTTP/2 connection to the endpoint. A request the connection
    /// refused before sending (it was closing) is sent once more on a new connection.
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let pool = self.pool(addr, identity);
        let mut sender = match pool.ready() {
            Some(s) => s,
            None => self.reconnect(&pool, addr, identity, false).await?,
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    debug!(%addr, error = %e.error(), "connection closed before the request was sent; reconnecting");
                    let mut sender = self.reconnect(&pool, addr, identity, true).await?;
                    sender
                        .send_request(req)
                        .await
                        .map_err(|e| upstream(addr, &e))
                }
                None => Err(upstream(addr, e.error())),
            },
        }
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

    /// A new connection for `pool`, unless another request made one while this one waited
    /// for its turn (`fresh`: a new one regardless).
    async fn reconnect(
        &self,
        pool: &Pool,
        addr: SocketAddr,
        identity: &SpiffeId,
        fresh: bool,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let _connecting = pool.connecting.lock().await;
        if !fresh && let Some(s) = pool.ready() {
            return Ok(s);
        }
        self.forget_closed();
        let s = self.handshake(addr, identity).await?;
        pool.set(s.clone());
        Ok(s)
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

    async fn handshake(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let tls = self.connect(addr, identity, ALPN_H2).await?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .adaptive_window(true);
        let (sender, conn) = builder
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| upstream(addr, &e))?;
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "peer connection ended with an error");
                }
            }
            .instrument(info_span!("peer", %addr)),
        );
        Ok(sender)
    }
}

fn upstream(addr: SocketAddr, e: &hyper::Error) -> ProxyError {
    // REFUSED_STREAM guarantees the peer processed nothing (RFC 9113 §8.7): safe to retry.
    let mut source = std::error::Error::source(e);
    let mut refused = false;
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            break;
        }
        source = s.source();
    }
    ProxyError::Upstream {
        addr: addr.to_string(),
        reason: e.to_string(),
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
