//! Mesh identity for Weft: SPIFFE IDs, the certificate authority that signs X509-SVIDs, trust
//! bundles, and the rustls verifiers that turn a peer's certificate into a verified [`SpiffeId`].
//!
//! This crate does no I/O beyond reading and writing PEM files it is pointed at. Both the proxy
//! and the control plane depend on it; it depends on neither.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bundle;
pub mod ca;
pub mod csr;
pub mod pem;
pub mod spiffe;
pub mod tls;
pub mod verify;

pub use bundle::TrustBundle;
pub use ca::{CertificateAuthority, IssuedSvid, SignError};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{Svid, WorkloadKey};
pub use verify::{ExpectedPeer, SvidError};
