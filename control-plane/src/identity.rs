//! The certificate service (`weft.identity.v1.Identity`): attest the caller, sign its CSR.
//!
//! The identity in an SVID comes from the token (or the caller's verified certificate on
//! renewal), never from a request field or the CSR.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use weft_certs::csr::CsrError;
use weft_certs::{CertificateAuthority, SignError, SpiffeId};
use weft_proto::identity::v1::identity_server::Identity;
use weft_proto::identity::v1::{CertifyRequest, CertifyResponse};

use crate::attest::{AttestError, Attestation, Attestor};
use crate::metrics::{IssuedLabels, Metrics, RefusedLabels};
use crate::transport::PeerInfo;

#[derive(Debug, Clone)]
pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
}

/// A refusal: the status to return and the metric reason.
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
    pub fn new(
        ca: Arc<CertificateAuthority>,
        attestor: Arc<Attestor>,
        metrics: Arc<Metrics>,
    ) -> Self {
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
        let (identity, attestation) = if req.token.is_empty() {
            match peer.and_then(|p| p.spiffe_id.clone()) {
                Some(id) => (id, Attestation::Renewal),
                None => {
                    return Err(Refusal {
                        code: Code::Unauthenticated,
                        reason: "token_missing",
                        message: "no token was presented and the connection carries no client certificate to renew".into(),
                    });
                }
            }
        } else {
            self.attestor.attest(&req.token)?
        };

        let ttl = match req.requested_ttl {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Refusal {
                    code: Code::InvalidArgument,
                    reason: "ttl_invalid",
                    message: format!("requested_ttl is negative: {d:?}"),
                });
            }
            // google.protobuf.Duration keeps |nanos| below one second.
            Some(d) if d.nanos >= 1_000_000_000 => {
                return Err(Refusal {
                    code: Code::InvalidArgument,
                    reason: "ttl_invalid",
                    message: format!("requested_ttl.nanos {} is out of range (0..1e9)", d.nanos),
                });
            }
            Some(d) => Some(Duration::new(d.seconds as u64, d.nanos as u32)),
        };
        if req.csr_der.is_empty() {
            return Err(Refusal {
                code: Code::InvalidArgument,
                reason: "csr_malformed",
                message: "csr_der is empty".into(),
            });
        }

        let svid = self.ca.sign_csr(&req.csr_der, &identity, ttl)?;
        let not_after = svid
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let resp = CertifyResponse {
            cert_chain_der: svid.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            trust_bundle_der: self
                .ca
                .bundle()
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
                    .and_then(|p| p.spiffe_id.as_ref())
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
