//! Tokens as `Certify` receives them, through `Attestor::attest` (header, key id, join-token
//! or Kubernetes verification, claims, the identity they map to). Two shapes, by the first
//! byte: the rest as a whole token string; or `header \0 claims`, signed here with the
//! fixture's join-token key (even first byte) or Kubernetes key (odd), so the fuzzer reaches
//! the claim checks behind a valid signature.
#![no_main]
use weft_fuzz::{fixtures, sign_token};

fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = weft_fuzz::tokens()
        .into_iter()
        .map(|t| [b"T".as_slice(), t.as_bytes()].concat())
        .collect();
    for (k8s, h, c) in weft_fuzz::token_parts() {
        let tag = if k8s { 1u8 } else { 0u8 };
        out.push([&[tag], h.as_bytes(), b"\0", c.as_bytes()].concat());
    }
    out
}

libfuzzer_sys::fuzz_target!(
    init: {
        weft_fuzz::seeds_then_exit(seeds);
        fixtures();
    },
    |data: &[u8]| {
        let f = fixtures();
        let Some((&tag, rest)) = data.split_first() else { return };
        let token = if tag == b'T' {
            let Ok(t) = std::str::from_utf8(rest) else { return };
            t.to_owned()
        } else {
            let (header, claims) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let (key, alg) = if tag % 2 == 0 {
                (&f.join_signer, jsonwebtoken::Algorithm::EdDSA)
            } else {
                (&f.k8s_signer, jsonwebtoken::Algorithm::ES256)
            };
            sign_token(header, claims, key, alg)
        };
        if let Ok((id, _)) = f.attestor.attest(&token) {
            // Whatever a token grants is a workload of this trust domain.
            assert!(id.is_member_of(&weft_fuzz::trust_domain()), "{id}");
        }
    }
);
