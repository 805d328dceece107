//! Store values ⇄ validated objects. Values are the JSON manifests of [`crate::manifest`]
//! (what `etcdctl get` shows and what another system may write); every value read passes the
//! model's `TryFrom`, and its names must agree with its key. An invalid value is treated as
//! absent, logged and counted, the same way by the index and by the config API.

use tracing::warn;
use weft_proto::config::v1::{Document, Kind, document};
use weft_proto::mesh::v1 as pb;

use super::index::Change;
use super::keys::Key;
use crate::manifest;
use crate::metrics::{KindLabels, Metrics};
use crate::model::{
    AuthorizationPolicy, Endpoint, HttpRoute, Invalid, ObjectRef, RateLimitPolicy, Service,
};
use crate::store::{Event, KeyValue};

fn encode(kind: document::Kind) -> Vec<u8> {
    manifest::document_to_json(&Document { kind: Some(kind) })
}

pub fn encode_service(s: &Service) -> Vec<u8> {
    encode(document::Kind::Service(pb::Service::from(s)))
}

pub fn encode_route(r: &HttpRoute) -> Vec<u8> {
    encode(document::Kind::HttpRoute(pb::HttpRoute::from(r)))
}

pub fn encode_authorization_policy(p: &AuthorizationPolicy) -> Vec<u8> {
    encode(document::Kind::AuthorizationPolicy(
        pb::AuthorizationPolicy::from(p),
    ))
}

pub fn encode_rate_limit_policy(p: &RateLimitPolicy) -> Vec<u8> {
    encode(document::Kind::RateLimitPolicy(pb::RateLimitPolicy::from(
        p,
    )))
}

pub fn encode_endpoint(e: &Endpoint) -> Vec<u8> {
    manifest::endpoint_to_json(&pb::Endpoint::from(e))
}

/// A stored document of `kind`, through its manifest form and the model's `TryFrom`.
fn decode<P, T>(
    kind: Kind,
    bytes: &[u8],
    pick: fn(document::Kind) -> Option<P>,
) -> Result<T, String>
where
    T: TryFrom<P, Error = Invalid>,
{
    let doc = manifest::document_from_json(kind, bytes).map_err(|e| e.to_string())?;
    let wire = doc
        .kind
        .and_then(pick)
        .ok_or_else(|| format!("not a {}", manifest::kind_name(kind)))?;
    T::try_from(wire).map_err(|e| e.to_string())
}

pub fn decode_service(bytes: &[u8]) -> Result<Service, String> {
    decode(Kind::Service, bytes, |k| match k {
        document::Kind::Service(s) => Some(s),
        _ => None,
    })
}

pub fn decode_route(bytes: &[u8]) -> Result<HttpRoute, String> {
    decode(Kind::HttpRoute, bytes, |k| match k {
        document::Kind::HttpRoute(r) => Some(r),
        _ => None,
    })
}

pub fn decode_authorization_policy(bytes: &[u8]) -> Result<AuthorizationPolicy, String> {
    decode(Kind::AuthorizationPolicy, bytes, |k| match k {
        document::Kind::AuthorizationPolicy(p) => Some(p),
        _ => None,
    })
}

pub fn decode_rate_limit_policy(bytes: &[u8]) -> Result<RateLimitPolicy, String> {
    decode(Kind::RateLimitPolicy, bytes, |k| match k {
        document::Kind::RateLimitPolicy(p) => Some(p),
        _ => None,
    })
}

pub fn decode_endpoint(bytes: &[u8]) -> Result<Endpoint, String> {
    let pb = manifest::endpoint_from_json(bytes).map_err(|e| e.to_string())?;
    Endpoint::try_from(pb).map_err(|e| e.to_string())
}

/// The index change a stored key/value means; `None` for keys outside the layout.
pub fn decode_put(kv: &KeyValue, metrics: &Metrics) -> Option<Change> {
    let key = Key::parse(&kv.key)?;
    let invalid = |kind: &'static str, why: String| {
        metrics
            .registry_invalid_objects
            .get_or_create(&KindLabels { kind })
            .inc();
        warn!(key = %kv.key, error = %why, "ignoring an invalid stored {kind}");
    };
    // A named object's value must carry the name of its key.
    fn named<T>(
        decoded: Result<T, String>,
        key: &ObjectRef,
        id: fn(&T) -> &ObjectRef,
    ) -> Result<T, String> {
        let v = decoded?;
        if id(&v) == key {
            Ok(v)
        } else {
            Err(format!("its name {} disagrees with the key", id(&v)))
        }
    }
    Some(match key {
        Key::Service(id) => {
            let s = named(decode_service(&kv.value), &id, |s| &s.id)
                .map_err(|e| invalid("service", e))
                .ok();
            Change::Service(id, s)
        }
        Key::Route(id) => {
            let r = named(decode_route(&kv.value), &id, |r| &r.id)
                .map_err(|e| invalid("route", e))
                .ok();
            Change::Route(id, r.map(|r| (kv.create_revision, r)))
        }
        Key::AuthorizationPolicy(id) => {
            let p = named(decode_authorization_policy(&kv.value), &id, |p| &p.id)
                .map_err(|e| invalid("authorization_policy", e))
                .ok();
            Change::AuthorizationPolicy(id, p)
        }
        Key::RateLimitPolicy(id) => {
            let p = named(decode_rate_limit_policy(&kv.value), &id, |p| &p.id)
                .map_err(|e| invalid("rate_limit_policy", e))
                .ok();
            Change::RateLimitPolicy(id, p)
        }
        Key::Endpoint(svc, addr) => {
            let e = decode_endpoint(&kv.value)
                .and_then(|e| {
                    if e.service == svc && e.address == addr {
                        Ok(e)
                    } else {
                        Err(format!(
                            "its service and address {}/{} disagree with the key",
                            e.service, e.address
                        ))
                    }
                })
                .map_err(|e| invalid("endpoint", e))
                .ok();
            Change::Endpoint(svc, addr, e)
        }
    })
}

pub fn decode_event(event: &Event, metrics: &Metrics) -> Option<Change> {
    match event {
        Event::Put(kv) => decode_put(kv, metrics),
        Event::Delete { key, .. } => Some(match Key::parse(key)? {
            Key::Service(id) => Change::Service(id, None),
            Key::Route(id) => Change::Route(id, None),
            Key::Endpoint(svc, addr) => Change::Endpoint(svc, addr, None),
            Key::AuthorizationPolicy(id) => Change::AuthorizationPolicy(id, None),
            Key::RateLimitPolicy(id) => Change::RateLimitPolicy(id, None),
        }),
    }
}
