//! One `weft.mesh.v1.Service` resource body: protobuf decode, `ServiceConfig::try_from` (the
//! service, its HTTPRoutes, AuthorizationPolicies and RateLimitPolicy through the model's
//! `TryFrom`), then the inbound policy compiled from it and one decision per protocol.
#![no_main]
use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use weft_proto::mesh::v1 as pb;
use weft_proxy::authz::{Served, compile, eval};
use weft_proxy::resources::{Held, MeshConfig, ServiceConfig};

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| weft_fuzz::bodies(
        weft_control_plane::registry::index::ResourceType::Service
    )),
    |data: &[u8]| {
        let Ok(msg) = pb::Service::decode(data) else { return };
        let Ok(s) = ServiceConfig::try_from(msg) else { return };
        let id = s.service.id.clone();
        let served = Served {
            service: Some(id.clone()),
            labels: s.service.selector.clone().into_iter().collect(),
            probes: vec![(8080, "/healthz".into())],
            default: None,
        };
        let config = MeshConfig {
            services: BTreeMap::from([(id.key(), Held { version: "1".into(), value: Arc::new(s) })]),
            ..Default::default()
        };
        let Some(policy) = compile(&served, &config) else { return };
        let client = weft_certs::SpiffeId::parse(&format!("spiffe://{}/ns/shop/sa/web", weft_fuzz::TD))
            .expect("fixed id");
        let headers = http::HeaderMap::new();
        for http in [
            None,
            Some(eval::HttpFacts { method: "GET", path: "/", headers: &headers }),
            Some(eval::HttpFacts { method: "POST", path: "/admin/x", headers: &headers }),
        ] {
            for client in [None, Some(&client)] {
                let facts = eval::Facts {
                    client,
                    ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
                    port: 8080,
                    http,
                };
                let _ = eval::decide(&policy.rules, &facts, None);
            }
        }
    }
);
