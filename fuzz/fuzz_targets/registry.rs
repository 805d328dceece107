//! What the control plane reads from its store: records `key \n value` separated by 0x1E, each
//! through `registry::codec::decode_put` (key layout, JSON manifest, the model's `TryFrom`,
//! names against the key) into the I/O-free index; then the snapshot the index publishes is
//! handed to the proxy's `next_config`, which must accept all of it: whatever the control
//! plane publishes from a valid store, the proxy never NACKs.
#![no_main]
use weft_control_plane::metrics::Metrics;
use weft_control_plane::registry::codec;
use weft_control_plane::registry::index::{Index, ResourceType};
use weft_control_plane::store::KeyValue;
use weft_proto::discovery::v1::DeltaDiscoveryResponse;
use weft_proxy::authz::Served;
use weft_proxy::resources::MeshConfig;

fn seeds() -> Vec<Vec<u8>> {
    let values = weft_fuzz::store_values();
    let record = |kv: &KeyValue| [kv.key.as_bytes(), b"\n", &kv.value, b"\x1e"].concat();
    let mut out: Vec<Vec<u8>> = values.iter().map(record).collect();
    out.push(values.iter().flat_map(record).collect());
    out
}

libfuzzer_sys::fuzz_target!(
    init: {
        weft_fuzz::seeds_then_exit(seeds);
    },
    |data: &[u8]| {
        let metrics = Metrics::default();
        let mut index = Index::new(weft_fuzz::trust_bundle_pb());
        for (i, rec) in data.split(|b| *b == 0x1e).enumerate() {
            let Some(nl) = rec.iter().position(|b| *b == b'\n') else { continue };
            let Ok(key) = std::str::from_utf8(&rec[..nl]) else { continue };
            let kv = KeyValue {
                key: key.to_owned(),
                value: rec[nl + 1..].to_vec(),
                mod_revision: i as i64 + 1,
                create_revision: i as i64 + 1,
                lease: None,
            };
            if let Some(change) = codec::decode_put(&kv, &metrics) {
                index.apply(change);
            }
        }
        let snapshot = index.flush();
        let td = weft_fuzz::trust_domain();
        let served = Served {
            service: Some(weft_proto::model::ObjectRef::new("shop", "reviews")),
            ..Default::default()
        };
        let mut config = MeshConfig::default();
        for ty in [ResourceType::TrustBundle, ResourceType::Service, ResourceType::Endpoints] {
            let resp = DeltaDiscoveryResponse {
                type_url: ty.type_url().into(),
                resources: weft_fuzz::resources(&snapshot, ty),
                ..Default::default()
            };
            match weft_proxy::discovery::next_config(&config, resp, &td, &served) {
                Ok(next) => config = next,
                Err(e) => panic!("the proxy refuses what the control plane published: {e}"),
            }
        }
    }
);
