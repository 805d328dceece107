//! An AuthorizationPolicy and a request, as the inbound proxy meets them: the policy's wire
//! form through the model's `TryFrom`, compiled into an `Inbound` for its target, then
//! `authz::eval::decide` (probe paths, Deny/Allow/Audit, identities, namespaces, CIDRs, ports,
//! methods, path prefixes and exact paths, headers) on a request built from the same input.
//! Layout: 2-byte big-endian policy length, the policy, then flags, port (2), IPv4 (4), and
//! `METHOD PATH\n` followed by `name: value` header lines.
#![no_main]
use std::sync::Arc;

use prost::Message;
use weft_proto::config::v1::document::Kind;
use weft_proto::mesh::v1 as pb;
use weft_proto::model::{AuthorizationPolicy, DefaultInbound};
use weft_proxy::authz::eval::{Facts, HttpFacts, Inbound, decide};

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in weft_fuzz::documents() {
        let Some(Kind::AuthorizationPolicy(p)) = d.kind else {
            continue;
        };
        let p = p.encode_to_vec();
        for (flags, req) in [
            (0b11u8, "GET /admin/users\nx-user: alice\n"),
            (
                0b01,
                "POST /api/v1/orders\ncontent-type: application/json\n",
            ),
            (0b10, ""),
        ] {
            let mut s = (p.len() as u16).to_be_bytes().to_vec();
            s.extend_from_slice(&p);
            s.push(flags);
            s.extend_from_slice(&8080u16.to_be_bytes());
            s.extend_from_slice(&[10, 0, 0, 7]);
            s.extend_from_slice(req.as_bytes());
            out.push(s);
        }
    }
    out
}

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(seeds),
    |data: &[u8]| {
        let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (policy, rest) = rest.split_at(len);
        let Ok(policy) = pb::AuthorizationPolicy::decode(policy) else { return };
        let Ok(policy) = AuthorizationPolicy::try_from(policy) else { return };
        let Some((head, rest)) = rest.split_first_chunk::<7>() else { return };
        let flags = head[0];
        let port = u16::from_be_bytes([head[1], head[2]]);
        let ip = std::net::Ipv4Addr::new(head[3], head[4], head[5], head[6]).into();
        let Ok(text) = std::str::from_utf8(rest) else { return };
        let mut lines = text.lines();
        let (method, path) = lines.next().unwrap_or("").split_once(' ').unwrap_or(("GET", "/"));
        let mut headers = http::HeaderMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(": ")
                && let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k), http::HeaderValue::try_from(v))
            {
                headers.append(k, v);
            }
        }
        let inbound = Inbound {
            services: vec![weft_proto::model::ObjectRef::new("shop", "reviews")],
            policies: vec![Arc::new(policy)],
            default: match flags >> 2 & 3 {
                0 => DefaultInbound::Allow,
                1 => DefaultInbound::Authenticated,
                _ => DefaultInbound::Deny,
            },
            rate_limit: None,
            probes: vec![(8080, "/healthz".into())],
        };
        let client = weft_certs::SpiffeId::parse(&format!("spiffe://{}/ns/shop/sa/web", weft_fuzz::TD))
            .expect("fixed id");
        let facts = Facts {
            client: (flags & 1 == 1).then_some(&client),
            ip,
            port,
            http: (flags & 2 == 2).then_some(HttpFacts { method, path, headers: &headers }),
        };
        let mut trace = Vec::new();
        let traced = decide(&inbound, &facts, Some(&mut trace));
        // `explain` (with a trace) and the data path (without) must never disagree.
        assert_eq!(traced, decide(&inbound, &facts, None));
    }
);
