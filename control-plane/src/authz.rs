//! Who may do what. Identities come only from verified client certificates
//! ([`PeerInfo`]), never from request fields.
//!
//! - Changing config (`Apply`, `Delete`) and registering endpoints for other identities
//!   (`RegisterExternal`, `Deregister`) needs an admin identity (`--admin-identity`; by default
//!   the one `weftctl login` mints).
//! - Reading config, discovery, and registering one's own endpoints needs any valid SVID of the
//!   trust domain (the TLS layer has already verified the chain and the trust domain).

use std::collections::BTreeSet;

use tonic::Status;
use tracing::warn;
use weft_certs::SpiffeId;

use crate::transport::PeerInfo;

#[derive(Debug, Clone)]
pub struct Authz {
    admins: BTreeSet<SpiffeId>,
}

impl Authz {
    pub fn new(admins: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            admins: admins.into_iter().collect(),
        }
    }

    /// The caller's verified identity, or UNAUTHENTICATED.
    pub fn caller<T>(request: &tonic::Request<T>) -> Result<SpiffeId, Status> {
        request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.spiffe_id().cloned())
            .ok_or_else(|| {
                Status::unauthenticated("this API needs a client certificate (an X509-SVID)")
            })
    }

    pub fn is_admin(&self, id: &SpiffeId) -> bool {
        self.admins.contains(id)
    }

    /// The caller, if it is an admin; otherwise PERMISSION_DENIED, logged with its identity.
    pub fn admin<T>(&self, request: &tonic::Request<T>, action: &str) -> Result<SpiffeId, Status> {
        let caller = Self::caller(request)?;
        if self.is_admin(&caller) {
            Ok(caller)
        } else {
            warn!(%caller, action, "permission denied: not an admin identity");
            Err(Status::permission_denied(format!(
                "{caller} may not {action}: only the control plane's admin identities may \
                 (--admin-identity)"
            )))
        }
    }
}
