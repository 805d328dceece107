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
use crate::model::{Endpoint, HttpRoute, Service};
use crate::store::{Event, KeyValue};

pub fn encode_service(s: &Service) -> Vec<u8> {
    manifest::document_to_json(&Document {
        kind: Some(document::Kind::Service(pb::Service::from(s))),
    })
}

pub fn encode_route(r: &HttpRoute) -> Vec<u8> {
    manifest::document_to_json(&Document {
        kind: Some(document::Kind::HttpRoute(pb::HttpRoute::from(r))),
    })
}

pub fn encode_endpoint(e: &Endpoint) -> Vec<u8> {
    manifest::endpoint_to_json(&pb::Endpoint::from(e))
}

pub fn decode_service(bytes: &[u8]) -> Result<Service, String> {
    match manifest::document_from_json(Kind::Service, bytes)
        .map_err(|e| e.to_string())?
        .kind
    {
        Some(document::Kind::Service(s)) => Service::try_from(s).map_err(|e| e.to_string()),
        _ => Err("not a Service".into()),
    }
}

pub fn decode_route(bytes: &[u8]) -> Result<HttpRoute, String> {
    match manifest::document_from_json(Kind::HttpRoute, bytes)
        .map_err(|e| e.to_string())?
        .kind
    {
        Some(document::Kind::HttpRoute(r)) => HttpRoute::try_from(r).map_err(|e| e.to_string()),
        _ => Err("not an HTTPRoute".into()),
    }
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
    Some(match key {
        Key::Service(id) => {
            let s = decode_service(&kv.value)
                .and_then(|s| {
                    if s.id == id {
                        Ok(s)
                    } else {
                        Err(format!("its name {} disagrees with the key", s.id))
                    }
                })
                .map_err(|e| invalid("service", e))
                .ok();
            Change::Service(id, s)
        }
        Key::Route(id) => {
            let r = decode_route(&kv.value)
                .and_then(|r| {
                    if r.id == id {
                        Ok(r)
                    } else {
                        Err(format!("its name {} disagrees with the key", r.id))
                    }
                })
                .map_err(|e| invalid("route", e))
                .ok();
            Change::Route(id, r.map(|r| (kv.create_revision, r)))
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
        }),
    }
}
