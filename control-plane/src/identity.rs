//! The certificate service (`weft.identity.v1.Identity`): attest the caller, sign its CSR.
//!
//! The identity in an SVID comes from the token (or the caller's verified certificate on
//! renewal), never from a request field or the CSR.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use weft_certs::csr::CsrError;
use weft_certs::{SignError, SpiffeId};
use weft_proto::identity::v1::identity_server::Identity;
use weft_proto::identity::v1::{CertifyRequest, CertifyResponse};

use crate::attest::{AttestError, Attestation, Attestor};
use crate::metrics::{IssuedLabels, Metrics, RefusedLabels};
use crate::rotation::CaSource;
use crate::transport::PeerInfo;

#[derive(Debug, Clone)]
pub struct IdentityService {
    ca: Arc<CaSource>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
}

/// A refusal: the status to return and the metric reason.
#[derive(Debug)]
struct Refusal {
    code: Code,
    reason: &'static str,
    message: String,
}

impl From<AttestError> for Refusal {
    fn from(e: AttestError) -> Self {
        let code = if matches!(e, AttestError::Internal(_)) {
            Code::Internal
        } else {
            Code::Unauthenticated
        };
        Refusal {
            code,
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

impl From<SignError> for Refusal {
    fn from(e: SignError) -> Self {
        let (code, reason) = match &e {
            SignError::Csr(c) => (
                Code::InvalidArgument,
                match c {
                    CsrError::Malformed(_)
                    | CsrError::TrailingBytes(_)
                    | CsrError::BadUriSan(_) => "csr_malformed",
                    CsrError::UnsupportedAlgorithm(_) | CsrError::UnsupportedKey(_) => {
                        "csr_algorithm"
                    }
                    CsrError::WeakRsaKey { .. } => "csr_weak_key",
                    CsrError::BadSignature => "csr_signature",
                },
            ),
            SignError::IdentityMismatch { .. } => (Code::PermissionDenied, "identity_mismatch"),
            SignError::ForeignTrustDomain { .. } => {
                (Code::PermissionDenied, "foreign_trust_domain")
            }
            SignError::IssuerExpired(_) => (Code::FailedPrecondition, "ca_expired"),
            SignError::Sign(_) => (Code::Internal, "sign_failed"),
        };
        Refusal {
            code,
            reason,
            message: e.to_string(),
        }
    }
}

impl IdentityService {
    pub fn new(ca: Arc<CaSource>, attestor: Arc<Attestor>, metrics: Arc<Metrics>) -> Self {
        Self {
            ca,
            attestor,
            metrics,
        }
    }

    fn certify_inner(
        &self,
        peer: Option<&PeerInfo>,
        req: CertifyRequest,
    ) -> Result<(CertifyResponse, SpiffeId, Attestation), Refusal> {
        let input = CertifyInput::try_from(req)?;
        let (identity, attestation) = match &input.token {
            Some(token) => self.attestor.attest(token)?,
            None => (self.renewing_identity(peer)?, Attestation::Renewal),
        };
        // The control plane issues its own serving certificate in-process. Anyone who could get
        // this identity through Certify could pose as the control plane to every workload.
        if identity == crate::control_plane_id(self.ca.trust_domain()) {
            return Err(Refusal {
                code: Code::PermissionDenied,
                reason: "reserved_identity",
                message: format!(
                    "{identity} is reserved for the control plane and is never issued through Certify"
                ),
            });
        }

        // One CA state for the whole call: a reload between signing and the bundle must not
        // pair a certificate with roots that do not verify it.
        let active = self.ca.current();
        let svid = active
            .ca
            .signing
            .sign_csr(&input.csr_der, &identity, input.ttl)?;
        let not_after = svid
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let resp = CertifyResponse {
            cert_chain_der: svid.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            trust_bundle_der: active
                .ca
                .trust
                .roots()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
            not_after: Some(prost_types::Timestamp {
                seconds: not_after.as_secs() as i64,
                nanos: 0,
            }),
        };
        Ok((resp, identity, attestation))
    }

    /// Renewal without a token: the identity of the certificate the client presented on this
    /// connection, as long as that certificate has not expired since the handshake.
    fn renewing_identity(&self, peer: Option<&PeerInfo>) -> Result<SpiffeId, Refusal> {
        let Some(peer) = peer.filter(|p| p.svid.is_some()) else {
            return Err(Refusal {
                code: Code::Unauthenticated,
                reason: "token_missing",
                message: "no token was presented and the connection carries no client certificate to renew".into(),
            });
        };
        peer.current_identity(SystemTime::now()).cloned().ok_or_else(|| Refusal {
            code: Code::Unauthenticated,
            reason: "renewal_cert_expired",
            message: "the client certificate on this connection has expired; reconnect with a valid one or present a token".into(),
        })
    }
}

/// The shortest SVID lifetime a client may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// A `CertifyRequest` past the validation boundary: the token (if any) is non-empty, the CSR is
/// present, and the TTL is a sane duration. The token and CSR contents are checked by the
/// attestor and the CA.
struct CertifyInput {
    token: Option<String>,
    csr_der: Vec<u8>,
    ttl: Option<Duration>,
}

impl TryFrom<CertifyRequest> for CertifyInput {
    type Error = Refusal;

    fn try_from(req: CertifyRequest) -> Result<Self, Refusal> {
        let ttl_invalid = |message: String| Refusal {
            code: Code::InvalidArgument,
            reason: "ttl_invalid",
            message,
        };
        let ttl = match req.requested_ttl {
            None => None,
            Some(d) if d.seconds == 0 && d.nanos == 0 => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(ttl_invalid(format!("requested_ttl is negative: {d:?}")));
            }
            // google.protobuf.Duration keeps |nanos| below one second.
            Some(d) if d.nanos >= 1_000_000_000 => {
                return Err(ttl_invalid(format!(
                    "requested_ttl.nanos {} is out of range (0..1e9)",
                    d.nanos
                )));
            }
            Some(d) => {
                let ttl = Duration::new(d.seconds as u64, d.nanos as u32);
                if ttl < MIN_TTL {
                    return Err(ttl_invalid(format!(
                        "requested_ttl {ttl:?} is below the minimum of {MIN_TTL:?}"
                    )));
                }
                Some(ttl)
            }
        };
        if req.csr_der.is_empty() {
            return Err(Refusal {
                code: Code::InvalidArgument,
                reason: "csr_malformed",
                message: "csr_der is empty".into(),
            });
        }
        let token = Some(req.token).filter(|t| !t.is_empty());
        Ok(Self {
            token,
            csr_der: req.csr_der,
            ttl,
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let remote = peer
            .as_ref()
            .map(|p| p.remote_addr.to_string())
            .unwrap_or_default();
        match self.certify_inner(peer.as_ref(), request.into_inner()) {
            Ok((resp, identity, attestation)) => {
                self.metrics
                    .certify_issued
                    .get_or_create(&IssuedLabels {
                        attestation: attestation.as_str(),
                    })
                    .inc();
                info!(%identity, attestation = %attestation.as_str(), %remote, "issued SVID");
                Ok(Response::new(resp))
            }
            Err(r) => {
                self.metrics
                    .certify_refused
                    .get_or_create(&RefusedLabels {
                        code: code_name(r.code),
                        reason: r.reason,
                    })
                    .inc();
                let caller = peer
                    .as_ref()
                    .and_then(|p| p.spiffe_id())
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                warn!(code = %code_name(r.code), reason = %r.reason, %remote, %caller, "refused Certify: {}", r.message);
                Err(Status::new(r.code, r.message))
            }
        }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::InvalidArgument => "invalid_argument",
        Code::FailedPrecondition => "failed_precondition",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ttl: Option<(i64, i32)>) -> CertifyRequest {
        CertifyRequest {
            token: "t".into(),
            csr_der: vec![1],
            requested_ttl: ttl.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        }
    }

    fn refusal(r: CertifyRequest) -> (&'static str, String) {
        match CertifyInput::try_from(r) {
            Err(e) => (e.reason, e.message),
            Ok(_) => panic!("should be refused"),
        }
    }

    #[test]
    fn ttl_boundary() {
        assert_eq!(
            CertifyInput::try_from(req(None)).ok().and_then(|i| i.ttl),
            None
        );
        assert_eq!(
            CertifyInput::try_from(req(Some((0, 0))))
                .ok()
                .and_then(|i| i.ttl),
            None,
            "zero means default"
        );
        assert_eq!(
            CertifyInput::try_from(req(Some((10, 0))))
                .ok()
                .and_then(|i| i.ttl),
            Some(MIN_TTL)
        );
        let (reason, msg) = refusal(req(Some((9, 999_999_999))));
        assert_eq!(reason, "ttl_invalid");
        assert!(msg.contains("below the minimum"), "{msg}");
        assert!(refusal(req(Some((0, 1)))).1.contains("below the minimum"));
        assert!(refusal(req(Some((-1, 0)))).1.contains("negative"));
        assert!(
            refusal(req(Some((60, 1_000_000_000))))
                .1
                .contains("out of range")
        );
    }

    #[test]
    fn empty_fields() {
        let mut r = req(None);
        r.csr_der.clear();
        assert_eq!(refusal(r).0, "csr_malformed");
        let mut r = req(None);
        r.token.clear();
        assert!(
            CertifyInput::try_from(r).unwrap().token.is_none(),
            "empty token means renewal"
        );
    }
}
