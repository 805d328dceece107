//! Weft join tokens: JWTs signed with the control plane's Ed25519 token key (`token.key` in the
//! CA directory), carrying the identity (`sub`), expiry, audience and a unique id (`jti`).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use weft_certs::{SpiffeId, TrustDomain};

use super::AttestError;

/// File name of the token key inside the CA directory.
pub const TOKEN_KEY_FILE: &str = "token.key";
/// `iss` of every join token.
pub const JOIN_ISSUER: &str = "weft";

/// The audience of join tokens for a trust domain: the control plane's own identity, so a token
/// minted for one mesh is refused by another.
pub fn join_audience(td: &TrustDomain) -> String {
    crate::control_plane_id(td).to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
}

/// The Ed25519 key that signs join tokens. `Debug` does not print it.
pub struct TokenKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("token key {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("generate token key: system RNG failed")]
    Generate,
}

impl TokenKey {
    pub fn generate() -> Result<Self, TokenKeyError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TokenKeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref().to_vec()).map_err(|_| TokenKeyError::Generate)
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        let kid = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { pkcs8, public, kid })
    }

    pub fn load(path: &Path) -> Result<Self, TokenKeyError> {
        let err = |reason: String| TokenKeyError::Load {
            path: path.display().to_string(),
            reason,
        };
        weft_certs::pem::warn_if_not_private(path);
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let der = weft_certs::pem::key_from_pem(&pem, &path.display().to_string())
            .map_err(|e| err(e.to_string()))?;
        Self::from_pkcs8(der.secret_der().to_vec()).map_err(err)
    }

    pub fn to_pem(&self) -> String {
        weft_certs::ca::pkcs8_pem(&self.pkcs8)
    }

    /// Key id: the first 8 bytes of SHA-256 of the public key, in hex. Goes in the JWT header so
    /// the control plane can tell its join tokens from Kubernetes tokens before verifying.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Mints a join token for `id`, valid for `ttl`.
    pub fn mint(&self, id: &SpiffeId, ttl: Duration) -> Result<String, AttestError> {
        let now = unix_now();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| AttestError::Internal("system RNG failed".into()))?;
        let claims = JoinClaims {
            iss: JOIN_ISSUER.into(),
            sub: id.to_string(),
            aud: join_audience(&id.trust_domain()),
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
            nbf: now.saturating_sub(60),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it to forge wrong-audience tokens).
    pub fn sign(&self, claims: &JoinClaims) -> Result<String, AttestError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| AttestError::Internal(format!("sign join token: {e}")))
    }

    /// Verifies a join token for trust domain `td` and returns the identity it grants.
    pub fn verify(
        &self,
        token: &str,
        td: &TrustDomain,
    ) -> Result<(SpiffeId, JoinClaims), AttestError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[join_audience(td)]);
        validation.set_issuer(&[JOIN_ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub", "nbf"]);
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<JoinClaims>(
            token,
            &DecodingKey::from_ed_der(&self.public),
            &validation,
        )
        .map_err(AttestError::from_jwt)?;
        let id = SpiffeId::parse(&data.claims.sub)
            .map_err(|e| AttestError::Claims(format!("sub is not a SPIFFE ID: {e}")))?;
        if !id.is_member_of(td) {
            return Err(AttestError::Claims(format!(
                "sub {id} is not in trust domain {td}"
            )));
        }
        Ok((id, data.claims))
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
