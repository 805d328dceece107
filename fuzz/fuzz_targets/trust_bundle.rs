//! One `weft.mesh.v1.TrustBundle` resource body: protobuf decode, then
//! `weft_proxy::resources::trust_bundle` (trust domain check, every root parsed as an X.509
//! CA certificate by `weft_certs::TrustBundle::new`).
#![no_main]
use prost::Message;
use weft_proto::mesh::v1 as pb;

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| vec![weft_fuzz::trust_bundle_pb().encode_to_vec()]),
    |data: &[u8]| {
        if let Ok(msg) = pb::TrustBundle::decode(data) {
            let _ = weft_proxy::resources::trust_bundle(msg, &weft_fuzz::trust_domain());
        }
    }
);
