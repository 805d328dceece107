//! One `weft.mesh.v1.Endpoints` resource body: protobuf decode, then `EndpointSet::try_from`
//! (each endpoint through `model::Endpoint::try_from`: address, identity, labels, weight).
#![no_main]
use prost::Message;
use weft_proto::mesh::v1 as pb;
use weft_proxy::resources::EndpointSet;

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| weft_fuzz::bodies(
        weft_control_plane::registry::index::ResourceType::Endpoints
    )),
    |data: &[u8]| {
        if let Ok(msg) = pb::Endpoints::decode(data) {
            let _ = EndpointSet::try_from(msg);
        }
    }
);
