//! The Weft control plane: the certificate service that signs proxies' CSRs into X509-SVIDs
//! (this crate's first service), and the webhook; the `weftctl` CLI is the `cli/` crate.
//!
//! Request path of a Certify call: [`transport`] (TLS accept, peer identity) → tonic →
//! [`rpc_trace`] (a span, with `--otlp-endpoint`) → [`identity`] (attest with [`attest`], sign
//! with `weft_certs::CertificateAuthority`).
//! Depends on `weft-proto` and `weft-certs`; never on the proxy.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod attest;
pub mod authz;
pub mod ca_dir;
pub use weft_proto::client;
pub mod config_api;
pub mod discovery;
pub mod identity;
pub mod injector;
pub mod manifest;
pub mod metrics;
pub use weft_proto::model;
pub mod registration;
pub mod registry;
pub mod rotation;
pub mod rpc_trace;
pub mod server;
pub mod store;
pub mod transport;

pub use server::{
    Config, ControlPlane, StartError, StoreConfig, control_plane_id, default_admin_id,
};
