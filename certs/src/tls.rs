//! Mesh TLS: one explicit aws-lc-rs crypto provider (X25519MLKEM768 hybrid key exchange first),
//! TLS 1.3 only, and config builders that plug in the SPIFFE verifiers.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self as provider_impl, kx_group};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bundle::TrustBundle;
use crate::spiffe::SpiffeId;
use crate::verify::{ExpectedPeer, SpiffeClientVerifier, SpiffeServerVerifier};

/// ALPN for gRPC and HTTP/2 between mesh components.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("generate key: {0}")]
    KeyGen(String),
}

/// The crypto provider every Weft TLS config uses: aws-lc-rs, with the post-quantum hybrid
/// X25519MLKEM768 preferred and classical X25519 / P-256 as fallbacks.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                kx_groups: vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                ],
                ..provider_impl::default_provider()
            })
        })
        .clone()
}

/// A server config for mesh-internal TLS 1.3. `client_auth_mandatory = false` lets clients
/// without a certificate in (only the certificate service wants that).
pub fn server_config(
    bundle: Arc<TrustBundle>,
    cert: Arc<dyn ResolvesServerCert>,
    client_auth_mandatory: bool,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeClientVerifier::new(bundle, client_auth_mandatory, &provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client config for mesh-internal TLS 1.3 that accepts only `expected` servers, presenting
/// `client_cert` when given.
pub fn client_config(
    bundle: Arc<TrustBundle>,
    expected: ExpectedPeer,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(bundle, expected, &provider);
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // our verifier replaces webpki's DNS-name check with the SPIFFE ID check
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client_cert {
        Some(ck) => builder.with_client_cert_resolver(Arc::new(FixedCert(ck))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Always answers with one certificate; the server side of a fixed identity.
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A key pair made in this process, which never leaves it: only the CSR (public key and
/// requested identity) is sent anywhere. `Debug` does not print the key.
pub struct WorkloadKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(<redacted>)")
    }
}

impl WorkloadKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::KeyGen(e.to_string()))?;
        Ok(Self { key })
    }

    /// A DER CSR asking for `id` (the CA checks it against the attested identity).
    pub fn csr(&self, id: &SpiffeId) -> Result<Vec<u8>, TlsError> {
        self.csr_for(Some(id))
    }

    /// A CSR naming `id`, or no identity at all: the CA issues the attested identity either way,
    /// and an unnamed CSR is how a workload that does not know its identity yet asks for one.
    pub fn csr_for(&self, id: Option<&SpiffeId>) -> Result<Vec<u8>, TlsError> {
        let mut params = CertificateParams::default();
        if let Some(id) = id {
            let uri = id
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| TlsError::KeyGen(e.to_string()))?;
            params.subject_alt_names = vec![SanType::URI(uri)];
        }
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| TlsError::KeyGen(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    /// The rcgen key, for a CA that issues directly to a key it holds.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    /// Pairs the key with its issued chain for rustls.
    pub fn certified(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Ok(Arc::new(CertifiedKey::from_der(chain, der, &provider())?))
    }

    /// PKCS#8 PEM, for the one case where a key must be stored: an operator's admin credential
    /// written by `weftctl`. Workload keys never call this.
    pub fn to_pkcs8_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// An SVID with its key, ready for TLS, and when it should be renewed.
#[derive(Debug, Clone)]
pub struct Svid {
    pub id: SpiffeId,
    pub certified: Arc<CertifiedKey>,
    pub not_after: SystemTime,
}

impl Svid {
    /// The time at which `fraction` (e.g. 0.7) of the lifetime since `issued_at` has passed.
    pub fn renew_at(&self, issued_at: SystemTime, fraction: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(issued_at)
            .unwrap_or(Duration::ZERO);
        issued_at + life.mul_f64(fraction.clamp(0.0, 1.0))
    }
}
