//! Certificate signing requests: parse, check the algorithm and key, verify the self-signature.
//!
//! This is the CA's input boundary: a [`VerifiedCsr`] exists only for a CSR whose signature
//! verifies with an algorithm we accept and whose key is strong enough.

use x509_parser::oid_registry::{
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::SpiffeId;

/// The smallest RSA modulus we sign for.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not valid DER: {0}")]
    Malformed(String),
    #[error("CSR has {0} trailing bytes after the DER structure")]
    TrailingBytes(usize),
    #[error(
        "CSR signature algorithm {0} is not supported (use ECDSA P-256/P-384, Ed25519, or RSA ≥ 2048 bits with SHA-256/384/512)"
    )]
    UnsupportedAlgorithm(String),
    #[error("CSR public key type is not supported: {0}")]
    UnsupportedKey(String),
    #[error("CSR RSA key is {bits} bits; at least {MIN_RSA_BITS} are required")]
    WeakRsaKey { bits: usize },
    #[error("CSR self-signature does not verify")]
    BadSignature,
    #[error("CSR requests URI SAN {0:?}, which is not a SPIFFE ID")]
    BadUriSan(String),
}

/// A CSR whose self-signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub spki_der: Vec<u8>,
    /// URI SANs the CSR asks for (the CA never copies them; it only compares).
    pub requested_ids: Vec<SpiffeId>,
}

impl VerifiedCsr {
    pub fn parse(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingBytes(rest.len()));
        }

        let sig_oid = &csr.signature_algorithm.algorithm;
        let accepted = [
            OID_SIG_ECDSA_WITH_SHA256,
            OID_SIG_ECDSA_WITH_SHA384,
            OID_SIG_ED25519,
            OID_PKCS1_SHA256WITHRSA,
            OID_PKCS1_SHA384WITHRSA,
            OID_PKCS1_SHA512WITHRSA,
            OID_PKCS1_RSASSAPSS,
        ];
        if !accepted.contains(sig_oid) {
            return Err(CsrError::UnsupportedAlgorithm(sig_oid.to_id_string()));
        }

        let spki = &csr.certification_request_info.subject_pki;
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if bits < MIN_RSA_BITS {
                    return Err(CsrError::WeakRsaKey { bits });
                }
            }
            Ok(PublicKey::EC(_)) => {}
            Ok(PublicKey::Unknown(_)) if spki.algorithm.algorithm == OID_SIG_ED25519 => {}
            Ok(_) => {
                return Err(CsrError::UnsupportedKey(
                    spki.algorithm.algorithm.to_id_string(),
                ));
            }
            Err(e) => return Err(CsrError::UnsupportedKey(e.to_string())),
        }

        // Curve/hash combinations aws-lc-rs does not know come back as errors here too.
        csr.verify_signature().map_err(|e| match e {
            X509Error::SignatureUnsupportedAlgorithm => {
                CsrError::UnsupportedAlgorithm(sig_oid.to_id_string())
            }
            _ => CsrError::BadSignature,
        })?;

        let mut requested_ids = Vec::new();
        if let Some(exts) = csr.requested_extensions() {
            for ext in exts {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            let id = SpiffeId::parse(uri)
                                .map_err(|_| CsrError::BadUriSan((*uri).to_owned()))?;
                            requested_ids.push(id);
                        }
                    }
                }
            }
        }

        Ok(Self {
            spki_der: spki.raw.to_vec(),
            requested_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};

    fn csr_for(key: &KeyPair, uri: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn accepts_p256_and_reads_requested_id() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = VerifiedCsr::parse(&csr_for(&key, Some("spiffe://td/ns/a/sa/b"))).unwrap();
        assert_eq!(
            csr.requested_ids,
            vec![SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap()]
        );
        assert_eq!(csr.spki_der, key.subject_public_key_info());
    }

    #[test]
    fn accepts_ed25519_and_p384() {
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = KeyPair::generate_for(alg).unwrap();
            VerifiedCsr::parse(&csr_for(&key, None)).unwrap();
        }
    }

    #[test]
    fn refuses_a_tampered_signature() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_for(&key, Some("spiffe://td/ns/a/sa/b"));
        // The signature BIT STRING ends the structure; flipping its last byte breaks it.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(
            VerifiedCsr::parse(&der).unwrap_err(),
            CsrError::BadSignature
        );
    }

    #[test]
    fn refuses_a_csr_signed_by_another_key() {
        // Same request info, signature from a different key: the self-signature must fail.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let good = csr_for(&key, None);
        let forged = csr_for(&other, None);
        let spki_good = key.subject_public_key_info();
        let spki_other = other.subject_public_key_info();
        let pos = forged
            .windows(spki_other.len())
            .position(|w| w == spki_other)
            .unwrap();
        let mut swapped = forged.clone();
        swapped[pos..pos + spki_good.len()].copy_from_slice(&spki_good);
        assert_ne!(swapped, good);
        assert_eq!(
            VerifiedCsr::parse(&swapped).unwrap_err(),
            CsrError::BadSignature
        );
    }

    #[test]
    fn refuses_garbage_and_trailing_bytes() {
        assert!(matches!(
            VerifiedCsr::parse(b"not a csr"),
            Err(CsrError::Malformed(_))
        ));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_for(&key, None);
        der.extend_from_slice(&[0, 0]);
        assert_eq!(
            VerifiedCsr::parse(&der).unwrap_err(),
            CsrError::TrailingBytes(2)
        );
    }

    #[test]
    fn refuses_a_non_spiffe_uri_san() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = csr_for(&key, Some("https://example.com/x"));
        assert!(matches!(
            VerifiedCsr::parse(&der),
            Err(CsrError::BadUriSan(_))
        ));
    }

    fn fixture(name: &str) -> Vec<u8> {
        use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        CertificateSigningRequestDer::from_pem_file(&path)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn openssl_fixtures() {
        assert_eq!(
            VerifiedCsr::parse(&fixture("rsa1024.csr.pem")).unwrap_err(),
            CsrError::WeakRsaKey { bits: 1024 }
        );
        let sha1 = VerifiedCsr::parse(&fixture("rsa2048-sha1.csr.pem")).unwrap_err();
        assert_eq!(
            sha1,
            CsrError::UnsupportedAlgorithm("1.2.840.113549.1.1.5".into())
        );
        let p521 = VerifiedCsr::parse(&fixture("p521-sha512.csr.pem")).unwrap_err();
        assert_eq!(
            p521,
            CsrError::UnsupportedAlgorithm("1.2.840.10045.4.3.4".into())
        );
        let ok = VerifiedCsr::parse(&fixture("rsa2048-sha256.csr.pem")).unwrap();
        assert_eq!(ok.requested_ids[0].as_str(), "spiffe://td/ns/a/sa/b");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = VerifiedCsr::parse(&bytes);
        }

        /// A CSR with one byte changed is either refused or, if the change missed everything the
        /// signature covers and still parses, carries the original key.
        #[test]
        fn a_corrupted_csr_is_refused_or_unchanged(at in 0usize..10_000, xor in 1u8..=255) {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut der = csr_for(&key, Some("spiffe://td/ns/a/sa/b"));
            let at = at % der.len();
            der[at] ^= xor;
            if let Ok(csr) = VerifiedCsr::parse(&der) {
                proptest::prop_assert_eq!(csr.spki_der, key.subject_public_key_info());
            }
        }
    }

    #[test]
    fn never_panics_on_truncated_input() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = csr_for(&key, Some("spiffe://td/ns/a/sa/b"));
        for len in 0..der.len() {
            assert!(VerifiedCsr::parse(&der[..len]).is_err());
        }
    }
}
