//! A whole delta-discovery response as the proxy receives it: protobuf decode, then
//! `weft_proxy::discovery::next_config` (each resource's body decoded and converted through
//! `TryFrom`, names checked, the inbound policy compiled). Applied twice in a row, so a
//! second response lands on a configuration the first built.
#![no_main]
use prost::Message;
use weft_proto::discovery::v1::DeltaDiscoveryResponse;
use weft_proxy::authz::Served;
use weft_proxy::resources::MeshConfig;

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(weft_fuzz::discovery_responses),
    |data: &[u8]| {
        let td = weft_fuzz::trust_domain();
        let served = Served {
            service: Some(weft_proto::model::ObjectRef::new("shop", "reviews")),
            labels: [("app".to_owned(), "reviews".to_owned())].into(),
            probes: vec![(8080, "/healthz".into())],
            default: None,
        };
        let mut config = MeshConfig::default();
        // Two messages back to back when the input splits at a 0xFF marker.
        for part in data.splitn(2, |b| *b == 0xFF) {
            if let Ok(resp) = DeltaDiscoveryResponse::decode(part)
                && let Ok(next) = weft_proxy::discovery::next_config(&config, resp, &td, &served)
            {
                config = next;
            }
        }
    }
);
