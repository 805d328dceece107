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
    #[error(
        "no trust domain: the bundle's roots carry no spiffe:// URI SAN, so it must be given explicitly"
    )]
    NoTrustDomain,
    #[error("the bundle's roots disagree on the trust domain: {first} and {second}")]
    MixedTrustDomains {
        first: TrustDomain,
        second: TrustDomain,
    },
    #[error("trust domain {given} was given, but the bundle's roots are for {found}")]
    TrustDomainMismatch {
        given: TrustDomain,
        found: TrustDomain,
    },
}

/// The one trust domain the roots' `spiffe://` URI SANs name, if any does.
fn roots_trust_domain(roots: &[CertificateDer<'_>]) -> Result<Option<TrustDomain>, BundleError> {
    let mut found: Option<TrustDomain> = None;
    for (index, der) in roots.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| BundleError::BadAnchor {
            index,
            reason: e.to_string(),
        })?;
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            continue;
        };
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Ok(id) = crate::SpiffeId::parse(uri)
            {
                let td = id.trust_domain();
                match &found {
                    Some(first) if first != &td => {
                        return Err(BundleError::MixedTrustDomains {
                            first: first.clone(),
                            second: td,
                        });
                    }
                    _ => found = Some(td),
                }
            }
        }
    }
    Ok(found)
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

    /// A bundle whose trust domain comes from its roots' `spiffe://<td>` URI SANs (our CA puts
    /// one in its root, as the control plane reads it). `given`, when present, must agree; it is
    /// only required when no root names a trust domain.
    pub fn from_pem_deriving(
        given: Option<&TrustDomain>,
        pem: &[u8],
        what: &str,
    ) -> Result<Self, BundleError> {
        let roots = certs_from_pem(pem, what)?;
        let trust_domain = match (roots_trust_domain(&roots)?, given) {
            (Some(found), Some(given)) if &found != given => {
                return Err(BundleError::TrustDomainMismatch {
                    given: given.clone(),
                    found,
                });
            }
            (Some(found), _) => found,
            (None, Some(given)) => given.clone(),
            (None, None) => return Err(BundleError::NoTrustDomain),
        };
        Self::new(trust_domain, roots)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::CertificateAuthority;

    fn root_pem(td: &str) -> String {
        let td = TrustDomain::parse(td).unwrap();
        CertificateAuthority::generate_root(&td, Duration::from_secs(3600))
            .unwrap()
            .cert_pem
    }

    #[test]
    fn the_trust_domain_comes_from_the_roots() {
        let pem = root_pem("prod.example");
        let b = TrustBundle::from_pem_deriving(None, pem.as_bytes(), "b").unwrap();
        assert_eq!(b.trust_domain().as_str(), "prod.example");
        let same = TrustDomain::parse("prod.example").unwrap();
        TrustBundle::from_pem_deriving(Some(&same), pem.as_bytes(), "b").unwrap();
    }

    #[test]
    fn a_contradicting_trust_domain_is_refused_by_name() {
        let pem = root_pem("prod.example");
        let other = TrustDomain::parse("dev.example").unwrap();
        let e = TrustBundle::from_pem_deriving(Some(&other), pem.as_bytes(), "b")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("dev.example") && e.contains("prod.example"),
            "{e}"
        );
    }

    #[test]
    fn roots_of_two_trust_domains_are_refused() {
        let pem = root_pem("a.example") + &root_pem("b.example");
        let e = TrustBundle::from_pem_deriving(None, pem.as_bytes(), "b")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("disagree"), "{e}");
    }
}
