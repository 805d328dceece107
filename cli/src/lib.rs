//! The library behind `weftctl`. CLI wiring, so command errors are `anyhow` with context for a
//! person to read; the types other code uses ([`Context`], [`ContextError`]) have their own.
//!
//! - [`pki`]: commands on local files or one Certify call: the CA, tokens, certificates.
//! - [`context`]: `weftctl login` and the context file every control-plane command reads.
//! - [`config`]: `apply`, `get`, `delete` over the config API (documents from [`weft_control_plane::manifest`]).
//! - [`registry`]: `register` / `deregister` of endpoints outside the mesh.
//! - [`explain`]: `explain`, asking a proxy's admin port what it would do with a request.
//! - [`rotate`]: `ca rotate`, a live root rotation of the CA directory.
//! - [`install`]: `install`, the manifests of a control plane for Kubernetes.
//! - [`inject`]: `inject` and `uninject`, the sidecar injector offline.
//! - [`demo`]: `demo`, a whole mesh on one machine with a live view of it.
//! - [`dashboard`]: `dashboard`, the mesh at a glance in a browser (from `/metrics` or Prometheus).
//! - [`scrape`]: reading a proxy's Prometheus `/metrics`.
//!
//! Depends on the control plane's library for its document parsing and clients; the control
//! plane's binary does not carry the CLI.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod context;
pub mod dashboard;
pub mod demo;
pub mod explain;
pub mod inject;
pub mod install;
pub mod pki;
pub mod registry;
pub mod rotate;
pub mod scrape;
mod table;

pub use config::{ApplyArgs, GetArgs, GetKind, Output, apply, delete_files, delete_objects, get};
pub use context::{Context, ContextError, ContextFile, Login, TokenLogin, login, login_with_token};
pub use pki::{CertRequest, ca_init, ca_inspect, cert_inspect, cert_request, token_create};
pub use registry::{Deregister, Register, deregister, register};

/// A gRPC status as one line: `FAILED_PRECONDITION: service default/reviews is referenced by …`.
pub fn status_line(s: &tonic::Status) -> String {
    use tonic::Code;
    let code = match s.code() {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    };
    if s.message().is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {}", s.message())
    }
}

/// A refused RPC, for `anyhow`: `apply: PERMISSION_DENIED: …`.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", status_line(.status))]
pub struct RpcError {
    /// The command or RPC.
    pub what: &'static str,
    /// The status the control plane answered.
    pub status: tonic::Status,
}

/// Reads a manifest file, or stdin for `-`.
fn read_source(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    use anyhow::Context as _;
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read stdin")?;
        Ok(("-".into(), text))
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Ok((path.display().to_string(), text))
    }
}
