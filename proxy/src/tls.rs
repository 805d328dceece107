//! TLS between proxies, built from the current [`Identity`]. The certificate is resolved at each
//! handshake, so a renewal is used by the next connection at once and never touches an
//! established one. Configs hold the trust bundle's verifier, so they are cached per bundle and
//! rebuilt when discovery swaps the roots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use weft_certs::tls::TlsError;
use weft_certs::{ExpectedPeer, SpiffeId, TrustBundle};

use crate::identity::Identity;

/// ALPN between proxies: multiplexed HTTP (requests from HTTP/1.1 and HTTP/2 clients alike).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN between proxies: one HTTP/1.1 exchange that may upgrade (WebSocket, `Upgrade:`).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN between proxies: an opaque TCP stream to the server's application port.
pub const ALPN_OPAQUE: &[u8] = b"weft.opaque";

/// Makes client and server TLS configs for the proxy's current identity.
#[derive(Debug)]
pub struct MeshTls {
    identity: Arc<Identity>,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The bundle the configs below were built with.
    bundle: Option<Arc<TrustBundle>>,
    server: Option<Arc<ServerConfig>>,
    clients: HashMap<(SpiffeId, &'static [u8]), Arc<ClientConfig>>,
}

/// Answers every handshake with the identity's certificate at that moment.
#[derive(Debug)]
struct CurrentCert(Arc<Identity>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.svid().certified)
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.svid().certified)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl MeshTls {
    pub fn new(identity: Arc<Identity>) -> Self {
        Self {
            identity,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Runs `f` on the cache, emptied first if the bundle changed since it was filled.
    fn with_cache<T>(&self, f: impl FnOnce(&mut Cache, Arc<TrustBundle>) -> T) -> T {
        let bundle = self.identity.bundle();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache
            .bundle
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, &bundle))
        {
            *cache = Cache {
                bundle: Some(bundle.clone()),
                ..Cache::default()
            };
        }
        f(&mut cache, bundle)
    }

    /// The inbound server config: a client certificate is required, and it must chain to the
    /// bundle; its SPIFFE ID is the client's identity.
    pub fn server(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.with_cache(|cache, bundle| {
            if let Some(c) = &cache.server {
                return Ok(c.clone());
            }
            let mut config = weft_certs::tls::server_config(
                bundle,
                Arc::new(CurrentCert(self.identity.clone())),
                true,
            )?;
            config.alpn_protocols =
                vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_OPAQUE.to_vec()];
            let config = Arc::new(config);
            cache.server = Some(config.clone());
            Ok(config)
        })
    }

    /// A client config that accepts only `peer` as the server and offers `alpn`.
    pub fn client(
        &self,
        peer: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        self.with_cache(|cache, bundle| {
            let key = (peer.clone(), alpn);
            if let Some(c) = cache.clients.get(&key) {
                return Ok(c.clone());
            }
            let mut config =
                weft_certs::tls::client_config(bundle, ExpectedPeer::One(peer.clone()), None)?;
            config.client_auth_cert_resolver = Arc::new(CurrentCert(self.identity.clone()));
            config.alpn_protocols = vec![alpn.to_vec()];
            let config = Arc::new(config);
            cache.clients.insert(key, config.clone());
            Ok(config)
        })
    }
}

/// The verified SPIFFE ID of the server at the other end of a mesh connection.
pub fn peer_id<T>(tls: &tokio_rustls::client::TlsStream<T>) -> Option<SpiffeId> {
    weft_certs::verify::peer_spiffe_id(tls.get_ref().1.peer_certificates()).ok()
}
