//! Kubernetes projected service-account tokens, verified offline against the cluster's JWKS
//! (`kubectl get --raw /openid/v1/jwks`). The identity comes from the token's `kubernetes.io`
//! namespace and service-account claims.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use weft_certs::{SpiffeId, TrustDomain};

use super::AttestError;

/// Where to find the keys and what the tokens must say.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    /// Where the JWKS comes from.
    pub jwks: JwksSource,
    /// Required `iss`, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// Required audience (one of `aud`), e.g. `weft`.
    pub audience: String,
}

/// The cluster's JWKS: a file (`kubectl get --raw /openid/v1/jwks`), or fetched from the API
/// server (in a cluster) and refreshed ([`super::jwks`]).
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(std::path::PathBuf),
    Url {
        /// e.g. `https://kubernetes.default.svc/openid/v1/jwks`.
        url: String,
        /// The CA that verifies the API server (the pod's service-account `ca.crt`).
        ca: std::path::PathBuf,
        /// A bearer token to send (the pod's own service-account token), read per fetch.
        token_file: Option<std::path::PathBuf>,
    },
}

type Key = (Option<String>, DecodingKey, jsonwebtoken::Algorithm);

#[derive(Debug, Deserialize)]
struct K8sClaims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesIo,
}

#[derive(Debug, Deserialize)]
struct KubernetesIo {
    namespace: String,
    serviceaccount: Named,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

/// A verifier with the JWKS loaded (replaced whole when a fetched JWKS changes).
pub struct K8sVerifier {
    config: K8sConfig,
    keys: std::sync::RwLock<std::sync::Arc<Vec<Key>>>,
    /// Woken when a token names a key we do not have (the cluster may have rotated).
    pub(crate) unknown_key: tokio::sync::Notify,
}

impl std::fmt::Debug for K8sVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self
            .keys()
            .iter()
            .map(|(k, _, a)| (k.clone(), *a))
            .collect();
        f.debug_struct("K8sVerifier")
            .field("config", &self.config)
            .field("keys", &kids)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("JWKS {path}: {reason}")]
pub struct JwksError {
    path: String,
    reason: String,
}

impl K8sVerifier {
    /// Loads a JWKS file now; a URL source starts with no keys, which [`super::jwks::refresh`]
    /// fetches (until then Kubernetes tokens are refused as of an unknown key).
    pub fn load(config: K8sConfig) -> Result<Self, JwksError> {
        let keys = match &config.jwks {
            JwksSource::File(file) => {
                let path = file.display().to_string();
                let bytes = std::fs::read(file).map_err(|e| JwksError {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                parse_keys(&bytes).map_err(|reason| JwksError { path, reason })?
            }
            JwksSource::Url { .. } => Vec::new(),
        };
        Ok(Self::with_keys(config, keys))
    }

    fn with_keys(config: K8sConfig, keys: Vec<Key>) -> Self {
        Self {
            config,
            keys: std::sync::RwLock::new(std::sync::Arc::new(keys)),
            unknown_key: tokio::sync::Notify::new(),
        }
    }

    pub fn config(&self) -> &K8sConfig {
        &self.config
    }

    fn keys(&self) -> std::sync::Arc<Vec<Key>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the keys with a fetched JWKS; returns how many it has.
    pub fn replace_keys(&self, json: &[u8]) -> Result<usize, String> {
        let keys = parse_keys(json)?;
        let n = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(keys);
        Ok(n)
    }

    #[cfg(test)]
    fn from_json(config: K8sConfig, json: &[u8]) -> Result<Self, String> {
        Ok(Self::with_keys(config, parse_keys(json)?))
    }
}

fn parse_keys(json: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => match p.curve {
                jsonwebtoken::jwk::EllipticCurve::P256 => jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::jwk::EllipticCurve::P384 => jsonwebtoken::Algorithm::ES384,
                ref c => return Err(format!("key {i}: curve {c:?} is not supported")),
            },
            other => {
                return Err(format!(
                    "key {i}: key type {other:?} is not supported (RSA or EC)"
                ));
            }
        };
        keys.push((jwk.common.key_id.clone(), key, alg));
    }
    if keys.is_empty() {
        return Err("the key set is empty".into());
    }
    Ok(keys)
}

impl K8sVerifier {
    /// Verifies `token` and maps it to `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn verify(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        td: &TrustDomain,
    ) -> Result<SpiffeId, AttestError> {
        let keys = self.keys();
        let (_, key, alg) = match &header.kid {
            Some(kid) => keys
                .iter()
                .find(|(k, _, _)| k.as_deref() == Some(kid.as_str())),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or_else(|| {
            self.unknown_key.notify_one();
            AttestError::UnknownKey(header.kid.clone().unwrap_or_else(|| "<none>".into()))
        })?;
        let mut validation = Validation::new(*alg);
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<K8sClaims>(token, key, &validation)
            .map_err(AttestError::from_jwt)?;
        let claims = data.claims;
        let (ns, sa) = (
            &claims.kubernetes.namespace,
            &claims.kubernetes.serviceaccount.name,
        );
        // `sub` and the structured claims are signed together; refuse a token where they disagree.
        let want_sub = format!("system:serviceaccount:{ns}:{sa}");
        if claims.sub != want_sub {
            return Err(AttestError::Claims(format!(
                "sub {:?} does not match {want_sub:?}",
                claims.sub
            )));
        }
        td.workload(ns, sa)
            .map_err(|e| AttestError::Claims(format!("namespace/service account: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> K8sConfig {
        K8sConfig {
            jwks: JwksSource::File("jwks.json".into()),
            issuer: "iss".into(),
            audience: "weft".into(),
        }
    }

    #[test]
    fn loads_rsa_and_ec_keys() {
        let n = "xjlCRBqkOQv0BDfQx4gkE7Q6IFsF5hG9R3ZqzX9yE3k2Q1q8o3V6w7b0bq4n1ZQyH2kQ0m4b5rPpYb1aYp4tQw";
        let json = format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"r1","n":"{n}","e":"AQAB"}},
                {{"kty":"EC","crv":"P-256","kid":"e1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}]}}"#
        );
        let v = K8sVerifier::from_json(config(), json.as_bytes()).unwrap();
        let algs: Vec<_> = v
            .keys()
            .iter()
            .map(|(kid, _, alg)| (kid.clone(), *alg))
            .collect();
        assert_eq!(
            algs,
            vec![
                (Some("r1".into()), jsonwebtoken::Algorithm::RS256),
                (Some("e1".into()), jsonwebtoken::Algorithm::ES256)
            ]
        );
    }

    #[test]
    fn refuses_bad_key_sets() {
        let err = |json: &str| K8sVerifier::from_json(config(), json.as_bytes()).unwrap_err();
        assert!(err("{not json").starts_with("not a JWK set"));
        assert_eq!(err(r#"{"keys":[]}"#), "the key set is empty");
        let okp = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(err(okp).contains("not supported"), "{}", err(okp));
    }
}
