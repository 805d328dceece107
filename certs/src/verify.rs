//! rustls verifiers for X509-SVIDs: the chain is validated to the trust bundle with webpki, then
//! the leaf must carry exactly one URI SAN holding a SPIFFE ID in the bundle's trust domain.
//! DNS names are ignored: in the mesh, a peer is who its SPIFFE ID says.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::*;

use crate::bundle::TrustBundle;
use crate::spiffe::SpiffeId;

/// Why a peer's certificate is not an acceptable SVID (beyond chain validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error(
        "peer certificate is a CA certificate (basicConstraints CA:TRUE); an SVID must be a leaf"
    )]
    CaLeaf,
    #[error("peer certificate has no URI SAN; an X509-SVID has exactly one")]
    NoUriSan,
    #[error("peer certificate has {0} URI SANs; an X509-SVID has exactly one")]
    ManyUriSans(usize),
    #[error("peer certificate URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(String),
    #[error("peer {id} is in trust domain {found}, expected {expected}")]
    ForeignTrustDomain {
        id: SpiffeId,
        found: String,
        expected: String,
    },
    #[error("peer is {found}, expected {expected}")]
    UnexpectedPeer { found: SpiffeId, expected: String },
    #[error("peer certificate chain: {0}")]
    Chain(String),
    #[error("{0}")]
    Other(String),
}

impl From<SvidError> for rustls::Error {
    fn from(e: SvidError) -> Self {
        // Keep our reason text: it names exactly what is wrong with the peer's SVID.
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// The SPIFFE ID of a leaf certificate: checks the SVID shape only, not the chain. Use it on a
/// certificate that a verifier of this module already accepted (e.g. after the handshake).
pub fn spiffe_id_of(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    svid_of(end_entity).map(|(id, _)| id)
}

/// The SPIFFE ID and expiry of a leaf certificate, from one parse (same checks as
/// [`spiffe_id_of`]).
pub fn svid_of(end_entity: &CertificateDer<'_>) -> Result<(SpiffeId, SystemTime), SvidError> {
    let (_, cert) =
        X509Certificate::from_der(end_entity).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
        .map_err(|_| SvidError::Malformed("notAfter is before 1970".into()))?;
    if cert.is_ca() {
        return Err(SvidError::CaLeaf);
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| {
                if let GeneralName::URI(u) = n {
                    Some(*u)
                } else {
                    None
                }
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(SvidError::Malformed(e.to_string())),
    };
    let id = match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|e| SvidError::BadSpiffeId(format!("{uri}: {e}"))),
        many => Err(SvidError::ManyUriSans(many.len())),
    }?;
    Ok((id, not_after))
}

/// The key identifier in a certificate's AuthorityKeyIdentifier extension: which CA key signed
/// it. Every SVID our CA issues carries one (the CA's SubjectKeyIdentifier); a root rotation
/// tells the generations apart by it. `None` when the extension or its key identifier is absent.
pub fn authority_key_id(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// The verified peer identity of an established connection.
pub fn peer_spiffe_id(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<SpiffeId, SvidError> {
    match peer_certificates.and_then(|c| c.first()) {
        Some(leaf) => spiffe_id_of(leaf),
        None => Err(SvidError::NoCertificate),
    }
}

/// Validates the chain of `end_entity` to `bundle` for `usage`, then the SVID shape and trust
/// domain. Returns the peer's SPIFFE ID.
pub fn verify_svid(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, SvidError> {
    // Shape first: a CA:TRUE or multi-SAN leaf gets its precise reason, not a generic one.
    let id = spiffe_id_of(end_entity)?;
    let cert =
        webpki::EndEntityCert::try_from(end_entity).map_err(|e| SvidError::Chain(e.to_string()))?;
    cert.verify_for_usage(
        algs.all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| SvidError::Chain(webpki_reason(&e)))?;
    if !id.is_member_of(bundle.trust_domain()) {
        return Err(SvidError::ForeignTrustDomain {
            found: id.trust_domain_name().to_owned(),
            expected: bundle.trust_domain().to_string(),
            id,
        });
    }
    Ok(id)
}

fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "not issued by a root in the trust bundle".into(),
        // A root with the issuer's name but another key: a foreign CA of the same trust domain.
        webpki::Error::InvalidSignatureForPublicKey => {
            "not issued by a root in the trust bundle (issuer name matches, signature does not)"
                .into()
        }
        webpki::Error::CertExpired { .. } => "certificate expired".into(),
        webpki::Error::CertNotValidYet { .. } => "certificate is not valid yet".into(),
        webpki::Error::CaUsedAsEndEntity => "a CA certificate is used as a leaf".into(),
        e => format!("{e:?}"),
    }
}

/// Which server identities a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// Any SVID of the bundle's trust domain.
    AnyInTrustDomain,
    /// Exactly this identity (an endpoint's registered identity, the control plane's).
    One(SpiffeId),
    /// Any one of these.
    AnyOf(Vec<SpiffeId>),
}

impl ExpectedPeer {
    fn check(&self, found: &SpiffeId) -> Result<(), SvidError> {
        let expected = match self {
            ExpectedPeer::AnyInTrustDomain => return Ok(()),
            ExpectedPeer::One(id) if id == found => return Ok(()),
            ExpectedPeer::AnyOf(ids) if ids.contains(found) => return Ok(()),
            ExpectedPeer::One(id) => id.to_string(),
            ExpectedPeer::AnyOf(ids) => {
                let ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
                format!("one of [{}]", ids.join(", "))
            }
        };
        Err(SvidError::UnexpectedPeer {
            found: found.clone(),
            expected,
        })
    }
}

/// Verifies servers' SVIDs for a TLS client.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: ExpectedPeer,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        bundle: Arc<TrustBundle>,
        expected: ExpectedPeer,
        provider: &CryptoProvider,
    ) -> Self {
        Self {
            bundle,
            expected,
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_svid(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &self.algs,
        )?;
        self.expected.check(&id)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies clients' SVIDs for a TLS server.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<TrustBundle>,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// `mandatory = false` lets a client without a certificate finish the handshake (the
    /// certificate service, where a workload has no SVID yet); a certificate that *is* presented
    /// must still verify.
    pub fn new(bundle: Arc<TrustBundle>, mandatory: bool, provider: &CryptoProvider) -> Self {
        Self {
            bundle,
            mandatory,
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_svid(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            &self.algs,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
