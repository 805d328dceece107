//! One `weft.config.v1.Document` as `Config/Apply` receives it: protobuf decode, then the
//! model's `TryFrom` for its kind (Service, HTTPRoute, AuthorizationPolicy, RateLimitPolicy),
//! the same calls the control plane's `Object::parse` makes; an accepted object must survive
//! the store codec (encode, then decode as the registry reads it back) unchanged.
#![no_main]
use prost::Message;
use weft_control_plane::registry::codec;
use weft_proto::config::v1 as cfg;
use weft_proto::config::v1::document::Kind;
use weft_proto::model;

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| {
        weft_fuzz::documents().iter().map(|d| d.encode_to_vec()).collect()
    }),
    |data: &[u8]| {
        let Ok(doc) = cfg::Document::decode(data) else { return };
        match doc.kind {
            None => {}
            Some(Kind::Service(s)) => {
                if let Ok(s) = model::Service::try_from(s) {
                    let back = codec::decode_service(&codec::encode_service(&s));
                    assert_eq!(back.as_ref(), Ok(&s), "store round trip");
                }
            }
            Some(Kind::HttpRoute(r)) => {
                if let Ok(r) = model::HttpRoute::try_from(r) {
                    let back = codec::decode_route(&codec::encode_route(&r));
                    assert_eq!(back.as_ref(), Ok(&r), "store round trip");
                }
            }
            Some(Kind::AuthorizationPolicy(p)) => {
                if let Ok(p) = model::AuthorizationPolicy::try_from(p) {
                    let back = codec::decode_authorization_policy(&codec::encode_authorization_policy(&p));
                    assert_eq!(back.as_ref(), Ok(&p), "store round trip");
                }
            }
            Some(Kind::RateLimitPolicy(p)) => {
                if let Ok(p) = model::RateLimitPolicy::try_from(p) {
                    let back = codec::decode_rate_limit_policy(&codec::encode_rate_limit_policy(&p));
                    assert_eq!(back.as_ref(), Ok(&p), "store round trip");
                }
            }
        }
    }
);
