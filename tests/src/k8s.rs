//! Kubernetes checks without an API server: `kubernetes-validate --strict` (PyPI, installed
//! into a venv by `.ci/install-deps.sh`) for the versions we support.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The Kubernetes versions every manifest we write must pass: the oldest we support and the
/// newest the validator knows.
pub const VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// The `kubernetes-validate` executable: `$WEFT_VENV/bin`, else `~/.cache/weft/venv/bin`.
pub fn validator() -> anyhow::Result<PathBuf> {
    let venv = match std::env::var_os("WEFT_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/weft/venv"),
    };
    let exe = venv.join("bin/kubernetes-validate");
    if !exe.is_file() {
        bail!(
            "{} is missing: run `bash .ci/install-deps.sh` (the test command does)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Validates a stream of YAML or JSON documents with `--strict` for every version in
/// [`VERSIONS`]; the error carries the validator's report.
pub fn validate_strict(name: &str, text: &str) -> anyhow::Result<()> {
    let exe = validator()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(name);
    std::fs::write(&file, text)?;
    for version in VERSIONS {
        let out = Command::new(&exe)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .with_context(|| format!("run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "kubernetes-validate --strict -k {version} {name} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// A cluster's service-account signing key (ES256), as the API server holds one: its JWK for
/// the JWKS, and the tokens `kubectl create token SA -n NS --audience weft` would print.
pub struct ServiceAccountKey {
    kid: String,
    jwk: serde_json::Value,
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl ServiceAccountKey {
    pub fn new(kid: &str) -> Self {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw(); // 0x04 || x || y
        Self {
            kid: kid.into(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }),
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        }
    }

    /// A JWKS document with these keys.
    pub fn jwks(keys: &[&ServiceAccountKey]) -> String {
        serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
            .to_string()
    }

    /// A projected token for `ns/sa`, audience `weft`, from `issuer`, valid 10 minutes.
    pub fn token(&self, issuer: &str, ns: &str, sa: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "aud": ["weft"], "iss": issuer, "exp": now + 600, "iat": now, "nbf": now,
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u1"}},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_fails_strict_validation() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - {name: a, image: b, bogus: 1}\n";
        let e = validate_strict("pod.yaml", pod).unwrap_err().to_string();
        assert!(e.contains("'bogus' was unexpected"), "{e}");
        let ok = pod.replace(", bogus: 1", "");
        validate_strict("pod.yaml", &ok).unwrap();
    }
}
