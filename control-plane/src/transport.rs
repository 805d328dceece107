//! The control plane's TLS transport: an accept loop that runs rustls handshakes (bounded in time
//! and in number), hands established connections to tonic with the peer's verified identity, and
//! a serving certificate that renews itself before it expires.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};
use weft_certs::verify::{authority_key_id, svid_of};
use weft_certs::{SpiffeId, WorkloadKey};
use weft_proto::limits::ConnectionLimit;

use crate::metrics::Metrics;
use crate::rotation::CaSource;

/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// By default, at most this many connections (handshaking or established) at once
/// (`--max-connections`); further ones are closed as they are accepted. Client certificates
/// are optional on this port, so without a cap anyone could hold connections until the process
/// runs out of file descriptors.
pub const MAX_CONNECTIONS: usize = 16_384;

/// What a request knows about its connection. The identity is the one verified in the TLS
/// handshake; there is no other way for a caller to claim one.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// The client certificate verified at handshake, if one was presented.
    pub svid: Option<PeerSvid>,
}

/// A client's verified SVID: who it is, and until when the certificate vouches for that.
#[derive(Debug, Clone)]
pub struct PeerSvid {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    /// The AuthorityKeyIdentifier of the certificate: which CA issued it (root rotation).
    pub issuer_key_id: Option<Vec<u8>>,
}

impl PeerInfo {
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.svid.as_ref().map(|s| &s.id)
    }

    /// The caller's identity if its certificate is still valid now: a long-lived connection must
    /// not keep vouching for an identity after its certificate is gone.
    pub fn current_identity(&self, now: SystemTime) -> Option<&SpiffeId> {
        self.svid
            .as_ref()
            .filter(|s| s.not_after > now)
            .map(|s| &s.id)
    }
}

/// An established TLS connection. Holds its slot under [`MAX_CONNECTIONS`] until dropped.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections, runs TLS handshakes, and yields established connections until
/// `shutdown` flips. A failed handshake is logged and counted, never yielded.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    metrics: Arc<Metrics>,
    max_connections: usize,
    shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    // A receiver keeps the last value after its sender is gone: this one never changes.
    let (_, acceptors) = watch::channel(acceptor);
    tls_incoming_with(listener, acceptors, metrics, max_connections, shutdown)
}

/// [`tls_incoming`] with the acceptor taken from `acceptors` at each connection: a new trust
/// bundle (a root rotation) applies to the next handshake; established connections keep theirs.
pub fn tls_incoming_with(
    listener: TcpListener,
    acceptors: watch::Receiver<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let limit = ConnectionLimit::new(max_connections);
    let refused = metrics.refused_on("grpc");
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr, permit) = tokio::select! {
                c = limit.accept(&listener, "grpc", Some(&refused)) => c,
                _ = shutdown.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptors.borrow().clone();
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let svid = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| {
                                let (id, not_after) = svid_of(leaf).ok()?;
                                Some(PeerSvid {
                                    id,
                                    not_after,
                                    issuer_key_id: authority_key_id(leaf),
                                })
                            });
                        debug!(%remote_addr, peer = ?svid.as_ref().map(|s| &s.id), "TLS connection established");
                        let info = PeerInfo { remote_addr, svid };
                        let _ = tx
                            .send(Ok(TlsConn {
                                stream,
                                info,
                                _slot: permit,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake_failures.inc();
                        info!(%remote_addr, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.tls_handshake_failures.inc();
                        info!(%remote_addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The control plane's own serving SVID, swapped in place on renewal: new handshakes get the new
/// certificate at once; established connections are untouched.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// Everything needed to (re)issue the serving certificate.
#[derive(Debug, Clone)]
pub struct ServingIdentity {
    /// The CA directory being served: the certificate is reissued at once when another CA
    /// starts signing (a root rotation's `switch`).
    pub ca: Arc<CaSource>,
    pub id: SpiffeId,
    pub dns_names: Vec<String>,
    pub ttl: Duration,
}

impl ServingIdentity {
    /// A new certificate, the time it expires, and the key id of the CA that issued it.
    fn issue(&self) -> Result<(Arc<CertifiedKey>, SystemTime, Vec<u8>), String> {
        let active = self.ca.current();
        let signing = &active.ca.signing;
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let svid = signing
            .issue(key.key_pair(), &self.id, &self.dns_names, Some(self.ttl))
            .map_err(|e| e.to_string())?;
        let certified = key.certified(svid.chain).map_err(|e| e.to_string())?;
        Ok((certified, svid.not_after, signing.key_id().to_vec()))
    }
}

impl ServingCert {
    /// Issues the first certificate and spawns the renewal task (renews at 70 % of the
    /// lifetime, and at once when the signing CA changes).
    pub fn start(
        identity: ServingIdentity,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, String> {
        let (first, not_after, mut issuer) = identity.issue()?;
        set_expiry_gauge(&metrics, not_after);
        let this = Arc::new(Self {
            current: RwLock::new(first),
        });
        let weak = Arc::downgrade(&this);
        let mut wait = renew_delay(SystemTime::now(), not_after);
        let mut cas = identity.ca.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    Ok(()) = cas.changed() => {
                        if cas.borrow_and_update().ca.signing.key_id() == issuer.as_slice() {
                            continue;
                        }
                        info!("another CA signs now; reissuing the serving certificate");
                    }
                    _ = shutdown.changed() => return,
                }
                let Some(this) = weak.upgrade() else { return };
                match identity.issue() {
                    Ok((cert, not_after, by)) => {
                        if let Ok(mut cur) = this.current.write() {
                            *cur = cert;
                        }
                        issuer = by;
                        set_expiry_gauge(&metrics, not_after);
                        wait = renew_delay(SystemTime::now(), not_after);
                        info!(identity = %identity.id, "renewed serving certificate");
                    }
                    Err(e) => {
                        warn!(error = %e, "renewing the serving certificate failed; retrying in 10s");
                        wait = Duration::from_secs(10);
                    }
                }
            }
        });
        Ok(this)
    }
}

/// Renew at 70 % of the remaining lifetime.
fn renew_delay(now: SystemTime, not_after: SystemTime) -> Duration {
    not_after
        .duration_since(now)
        .unwrap_or_default()
        .mul_f64(0.7)
}

fn set_expiry_gauge(metrics: &Metrics, not_after: SystemTime) {
    let secs = not_after
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    metrics.serving_cert_expiration.set(secs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_identity_expires_with_the_certificate() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let now = SystemTime::now();
        let info = |svid| PeerInfo {
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            svid,
        };
        let valid = info(Some(PeerSvid {
            id: id.clone(),
            not_after: now + Duration::from_secs(60),
            issuer_key_id: None,
        }));
        assert_eq!(valid.current_identity(now), Some(&id));
        assert_eq!(valid.current_identity(now + Duration::from_secs(61)), None);
        assert_eq!(info(None).current_identity(now), None);
    }
}
