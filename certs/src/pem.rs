//! PEM in and out, and a readable summary of a certificate (for `weftctl ... inspect`).

use std::path::Path;

use aws_lc_rs::digest;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::*;

use crate::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: no PEM {label} block found")]
    Empty { what: String, label: &'static str },
    #[error("{what}: invalid PEM: {source}")]
    Invalid { what: String, source: pem::Error },
    #[error("{what}: certificate {index} is not valid X.509: {reason}")]
    BadCertificate {
        what: String,
        index: usize,
        reason: String,
    },
}

/// Every `CERTIFICATE` block in `pem`, in order. `what` names the source in errors.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Invalid {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::Empty {
            what: what.to_owned(),
            label: "CERTIFICATE",
        });
    }
    for (index, cert) in certs.iter().enumerate() {
        X509Certificate::from_der(cert).map_err(|e| PemError::BadCertificate {
            what: what.to_owned(),
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

pub fn certs_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path)?;
    certs_from_pem(&bytes, &path.display().to_string())
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        pem::Error::NoItemsFound => PemError::Empty {
            what: what.to_owned(),
            label: "PRIVATE KEY",
        },
        source => PemError::Invalid {
            what: what.to_owned(),
            source,
        },
    })
}

pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs
        .into_iter()
        .map(|c| encode_pem("CERTIFICATE", c.as_ref()))
        .collect()
}

pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der), config)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Warns when a private key file can be read by group or others. Not an error: Kubernetes mounts
/// secrets 0644 unless told otherwise, and refusing would only push people to weaker setups.
pub fn warn_if_not_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "private key file is readable by group or others; chmod 600 it");
        }
    }
}

/// Colon-separated uppercase hex SHA-256 of a DER certificate, as `openssl x509 -fingerprint` prints.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What `weftctl cert inspect` and `ca inspect` print about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub spiffe_ids: Vec<String>,
    pub dns_names: Vec<String>,
    pub not_before: ::time::OffsetDateTime,
    pub not_after: ::time::OffsetDateTime,
    pub is_ca: bool,
    pub sha256: String,
}

impl CertSummary {
    pub fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let mut spiffe_ids = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => spiffe_ids.push(match SpiffeId::parse(uri) {
                        Ok(id) => id.to_string(),
                        Err(e) => format!("{uri} (not a SPIFFE ID: {e})"),
                    }),
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            spiffe_ids,
            dns_names,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            sha256: fingerprint_sha256(der),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pem_round_trips(der in prop::collection::vec(any::<u8>(), 0..600)) {
            let text = encode_pem("CERTIFICATE", &der);
            prop_assert!(text.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
            let back = ::pem::parse(text.as_bytes()).unwrap().into_contents();
            prop_assert_eq!(back, der);
        }
    }

    #[test]
    fn garbage_cert_is_named() {
        let err =
            certs_from_pem(encode_pem("CERTIFICATE", b"nope").as_bytes(), "ca.crt").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ca.crt: certificate 0 is not valid X.509"),
            "{err}"
        );
        let err = certs_from_pem(b"hello", "tls.crt").unwrap_err();
        assert_eq!(err.to_string(), "tls.crt: no PEM CERTIFICATE block found");
    }
}
