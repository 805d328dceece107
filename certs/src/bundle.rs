//! Trust bundles: the set of root certificates a trust domain's SVIDs chain to. During a root
//! rotation the bundle holds the old and the new root, so both generations verify.

use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::prelude::*;

use crate::pem::{PemError, certs_from_pem, certs_to_pem, fingerprint_sha256};
use crate::spiffe::TrustDomain;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("trust bundle is empty")]
    Empty,
    #[error(
        "trust bundle root {index} ({subject}) is not a CA certificate (basicConstraints CA:TRUE missing)"
    )]
    NotCa { index: usize, subject: String },
    #[error("trust bundle root {index} cannot be used as a trust anchor: {reason}")]
    BadAnchor { index: usize, reason: String },
}

/// The roots of one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, der) in roots.iter().enumerate() {
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| BundleError::BadAnchor {
                index,
                reason: e.to_string(),
            })?;
            if !cert.is_ca() {
                return Err(BundleError::NotCa {
                    index,
                    subject: cert.subject().to_string(),
                });
            }
            let anchor =
                webpki::anchor_from_trusted_cert(der).map_err(|e| BundleError::BadAnchor {
                    index,
                    reason: format!("{e:?}"),
                })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    pub fn from_pem(
        trust_domain: TrustDomain,
        pem: &[u8],
        what: &str,
    ) -> Result<Self, BundleError> {
        Self::new(trust_domain, certs_from_pem(pem, what)?)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }

    /// SHA-256 fingerprints of the roots, for `/certs` and `weftctl` output.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| fingerprint_sha256(r)).collect()
    }

    /// This bundle plus `other`'s roots (deduplicated): what proxies trust while a root rotates.
    pub fn merged_with(&self, other: &TrustBundle) -> Result<Self, BundleError> {
        let mut roots = self.roots.clone();
        for r in &other.roots {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
        Self::new(self.trust_domain.clone(), roots)
    }
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.fingerprints())
            .finish()
    }
}
