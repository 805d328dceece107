//! Attestation: turning a token into the identity it grants. Two kinds: Weft join tokens and
//! Kubernetes projected service-account tokens. Both are JWTs; the header's key id tells them
//! apart before anything is trusted, then each is verified against its own keys.

pub mod join;
pub mod jwks;
pub mod k8s;

use weft_certs::{SpiffeId, TrustDomain};

pub use join::{JoinClaims, TokenKey};
pub use k8s::{JwksSource, K8sConfig, K8sVerifier};

/// Why a token was refused. Every variant maps to `UNAUTHENTICATED` except `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("no token was presented")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token audience is wrong (not meant for this control plane)")]
    Audience,
    #[error("token issuer is not trusted")]
    Issuer,
    #[error("token signature does not verify")]
    Signature,
    #[error(
        "token is signed by unknown key {0:?} (neither this control plane's join-token key nor one in the Kubernetes JWKS)"
    )]
    UnknownKey(String),
    #[error("token claims: {0}")]
    Claims(String),
    #[error("{0}")]
    Internal(String),
}

impl AttestError {
    fn from_jwt(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidAudience => Self::Audience,
            K::InvalidIssuer => Self::Issuer,
            K::InvalidSignature => Self::Signature,
            K::MissingRequiredClaim(c) => Self::Claims(format!("required claim {c:?} is missing")),
            K::InvalidSubject => Self::Claims("invalid sub".into()),
            K::InvalidToken => {
                Self::Malformed("not a JWT (three base64url parts separated by '.')".into())
            }
            _ => Self::Malformed(e.to_string()),
        }
    }

    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed(_) => "token_malformed",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::Audience => "token_audience",
            Self::Issuer => "token_issuer",
            Self::Signature => "token_signature",
            Self::UnknownKey(_) => "token_unknown_key",
            Self::Claims(_) => "token_claims",
            Self::Internal(_) => "internal",
        }
    }
}

/// How an identity was attested, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    JoinToken,
    Kubernetes,
    /// No token: the caller's current SVID on the TLS connection.
    Renewal,
}

impl Attestation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
            Self::Kubernetes => "kubernetes",
            Self::Renewal => "renewal",
        }
    }
}

/// Verifies tokens for one trust domain.
#[derive(Debug)]
pub struct Attestor {
    trust_domain: TrustDomain,
    join: TokenKey,
    k8s: Option<std::sync::Arc<K8sVerifier>>,
}

impl Attestor {
    pub fn new(trust_domain: TrustDomain, join: TokenKey, k8s: Option<K8sVerifier>) -> Self {
        Self {
            trust_domain,
            join,
            k8s: k8s.map(std::sync::Arc::new),
        }
    }

    /// The Kubernetes token verifier, for the task that refreshes its keys.
    pub fn k8s(&self) -> Option<std::sync::Arc<K8sVerifier>> {
        self.k8s.clone()
    }

    /// The identity `token` grants.
    pub fn attest(&self, token: &str) -> Result<(SpiffeId, Attestation), AttestError> {
        if token.is_empty() {
            return Err(AttestError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(AttestError::from_jwt)?;
        if header.kid.as_deref() == Some(self.join.kid()) {
            let (id, _) = self.join.verify(token, &self.trust_domain)?;
            return Ok((id, Attestation::JoinToken));
        }
        match &self.k8s {
            Some(k8s) => Ok((
                k8s.verify(token, &header, &self.trust_domain)?,
                Attestation::Kubernetes,
            )),
            None => Err(AttestError::UnknownKey(
                header.kid.unwrap_or_else(|| "<none>".into()),
            )),
        }
    }
}
