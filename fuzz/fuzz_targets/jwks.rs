//! A JWKS document as fetched from the Kubernetes API server (`/openid/v1/jwks`):
//! `K8sVerifier::replace_keys` (JSON, each JWK to a decoding key, supported types only).
#![no_main]
use std::sync::OnceLock;

use weft_control_plane::attest::{JwksSource, K8sConfig, K8sVerifier};

fn verifier() -> &'static K8sVerifier {
    static V: OnceLock<K8sVerifier> = OnceLock::new();
    V.get_or_init(|| {
        K8sVerifier::load(K8sConfig {
            jwks: JwksSource::Url {
                url: "https://kubernetes.default.svc/openid/v1/jwks".into(),
                ca: "/nonexistent".into(),
                token_file: None,
            },
            issuer: weft_fuzz::K8S_ISSUER.into(),
            audience: weft_fuzz::K8S_AUDIENCE.into(),
        })
        .expect("a URL source loads no keys")
    })
}

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| {
        let jwks = weft_fuzz::fixtures().jwks.clone();
        let rsa = br#"{"keys":[{"kty":"RSA","e":"AQAB","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"}]}"#;
        vec![jwks, rsa.to_vec()]
    }),
    |data: &[u8]| {
        let _ = verifier().replace_keys(data);
    }
);
