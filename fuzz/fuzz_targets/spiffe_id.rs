//! SPIFFE IDs and trust domain names as they arrive in certificates, CSRs, tokens and
//! manifests: `SpiffeId::parse`, `TrustDomain::parse`, `SpiffeId::workload`. An accepted ID
//! must parse back from its own text to itself, and belong to its own trust domain.
#![no_main]
use weft_certs::{SpiffeId, TrustDomain};

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| {
        [
            "spiffe://mesh.test/ns/shop/sa/web",
            "spiffe://mesh.test",
            "spiffe://example.org/ns/weft-system/sa/weft-control-plane",
            "spiffe://a.b-c_d/path/with.dots/x",
            "mesh.test",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }),
    |data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else { return };
        if let Ok(id) = SpiffeId::parse(s) {
            let again = SpiffeId::parse(id.as_str()).expect("an accepted ID parses from its text");
            assert_eq!(again, id);
            assert!(id.is_member_of(&id.trust_domain()));
            let _ = id.workload();
        }
        if let Ok(td) = TrustDomain::parse(s) {
            let id = td.id();
            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
            let _ = td.workload("shop", "web");
        }
    }
);
