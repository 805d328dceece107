//! A gRPC client channel to the control plane over mTLS (used by weftctl, the proxy and the tests): TCP,
//! then rustls with the SPIFFE server verifier, then tonic over HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use crate::identity::v1::CertifyRequest;
use crate::identity::v1::identity_client::IdentityClient;
use hyper_util::rt::TokioIo;
use rustls::sign::CertifiedKey;
use tonic::transport::{Channel, Endpoint, Uri};
use weft_certs::{ExpectedPeer, SpiffeId, TrustBundle};

/// The identity the control plane serves with, which clients require of it.
pub fn control_plane_id(td: &weft_certs::TrustDomain) -> SpiffeId {
    td.workload("weft-system", "weft-control-plane")
        .unwrap_or_else(|_| td.id())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control plane address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("connect to the control plane at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Tls(#[from] weft_certs::tls::TlsError),
    #[error("Certify refused ({}): {}", .0.code(), .0.message())]
    Certify(tonic::Status),
    #[error("Certify response: {0}")]
    BadResponse(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Certify(s)
    }
}

/// Connects to `addr` (`host:port`), accepting only a server whose SVID is `expected` and
/// chains to `bundle`; presents `client_cert` if given.
pub async fn connect(
    addr: &str,
    bundle: Arc<TrustBundle>,
    expected: SpiffeId,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<Channel, ClientError> {
    let tls = Arc::new(weft_certs::tls::client_config(
        bundle,
        ExpectedPeer::One(expected),
        client_cert,
    )?);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let connector = tower::service_fn(move |uri: Uri| tls_connect(tls.clone(), uri));
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// An SVID obtained from the control plane, with the bundle it came with.
#[derive(Debug, Clone)]
pub struct Certified {
    pub svid: weft_certs::Svid,
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub bundle: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// Sends a CSR for `key` asking for `id` (`None`: whatever the token attests), attested by
/// `token` (empty: renew with the channel's client certificate).
pub async fn certify(
    channel: Channel,
    key: &weft_certs::WorkloadKey,
    id: Option<&SpiffeId>,
    token: &str,
    ttl: Option<Duration>,
) -> Result<Certified, ClientError> {
    let csr_der = key.csr_for(id)?;
    let requested_ttl = ttl.map(|d| prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    });
    let resp = IdentityClient::new(channel)
        .certify(CertifyRequest {
            token: token.to_owned(),
            csr_der,
            requested_ttl,
        })
        .await?
        .into_inner();
    let chain: Vec<_> = resp
        .cert_chain_der
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    let bundle: Vec<_> = resp
        .trust_bundle_der
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    let leaf = chain
        .first()
        .ok_or_else(|| ClientError::BadResponse("empty certificate chain".into()))?;
    let got = weft_certs::verify::spiffe_id_of(leaf)
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    if let Some(id) = id
        && &got != id
    {
        return Err(ClientError::BadResponse(format!(
            "issued for {got}, asked for {id}"
        )));
    }
    let not_after = resp
        .not_after
        .and_then(|t| u64::try_from(t.seconds).ok())
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
        .ok_or_else(|| ClientError::BadResponse("not_after missing".into()))?;
    let certified = key.certified(chain.clone())?;
    Ok(Certified {
        svid: weft_certs::Svid {
            id: got,
            certified,
            not_after,
        },
        chain,
        bundle,
    })
}

/// TCP (no delay) to `uri`'s host and port (`default_port` if it names none); with the host as
/// dialed (IPv6 brackets removed).
pub async fn tcp_connect(
    uri: &Uri,
    default_port: u16,
) -> std::io::Result<(tokio::net::TcpStream, String)> {
    let host = uri
        .host()
        .unwrap_or("localhost")
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(default_port);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    Ok((tcp, host))
}

/// TCP to `uri`'s host and port (443 if none), then TLS with `tls`, the host as the server
/// name: the connector of a tonic channel over our rustls (the control plane's, and the proxy's
/// OTLP exporter's).
pub async fn tls_connect(
    tls: Arc<rustls::ClientConfig>,
    uri: Uri,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let (tcp, host) = tcp_connect(&uri, 443).await?;
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(stream))
}
