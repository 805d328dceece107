//! The proxy's view of the mesh: discovery resources converted through `TryFrom` (the same
//! checks as the control plane's, in `weft_proto::model`) into an immutable [`MeshConfig`],
//! replaced as a whole on every accepted change.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use weft_certs::{TrustBundle, TrustDomain};
use weft_proto::mesh::v1 as pb;
use weft_proto::model::{
    AuthorizationPolicy, DefaultInbound, Endpoint, FieldError, HttpRoute, Invalid, ObjectRef,
    RateLimitPolicy, Service,
};

/// One `weft.mesh.v1.Service` resource: the service, the routes attached to it, and the
/// inbound policy its server proxies enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub service: Service,
    pub routes: Vec<HttpRoute>,
    /// Every AuthorizationPolicy targeting the service or its namespace, by `namespace/name`.
    pub authorization: Vec<Arc<AuthorizationPolicy>>,
    pub rate_limit: Option<Arc<RateLimitPolicy>>,
    /// The control plane sends the effective value; an older one that sends none means allow.
    pub default_inbound: DefaultInbound,
}

/// Prefixes each field of a nested message's errors with where the message sits.
fn nested(errors: &mut Invalid, prefix: &str, e: Invalid) {
    errors.0.extend(e.0.into_iter().map(|f| FieldError {
        field: format!("{prefix}.{}", f.field),
        message: f.message,
    }));
}

impl TryFrom<pb::Service> for ServiceConfig {
    type Error = Invalid;

    fn try_from(mut s: pb::Service) -> Result<Self, Invalid> {
        let routes = std::mem::take(&mut s.routes);
        let policies = std::mem::take(&mut s.authorization_policies);
        let rate_limit = s.rate_limit_policy.take();
        let mut errors = Invalid::default();
        let service = Service::try_from(s).map_err(|e| errors.0.extend(e.0));
        let mut converted = Vec::with_capacity(routes.len());
        for (i, r) in routes.into_iter().enumerate() {
            match HttpRoute::try_from(r) {
                Ok(r) => converted.push(r),
                Err(e) => nested(&mut errors, &format!("routes[{i}]"), e),
            }
        }
        let mut authorization = Vec::with_capacity(policies.len());
        for (i, p) in policies.into_iter().enumerate() {
            match AuthorizationPolicy::try_from(p) {
                Ok(p) => authorization.push(Arc::new(p)),
                Err(e) => nested(&mut errors, &format!("authorizationPolicies[{i}]"), e),
            }
        }
        let rate_limit = match rate_limit.map(RateLimitPolicy::try_from) {
            None => None,
            Some(Ok(r)) => Some(Arc::new(r)),
            Some(Err(e)) => {
                nested(&mut errors, "rateLimitPolicy", e);
                None
            }
        };
        match service {
            Ok(service) if errors.0.is_empty() => Ok(ServiceConfig {
                default_inbound: service.default_inbound.unwrap_or_default(),
                service,
                routes: converted,
                authorization,
                rate_limit,
            }),
            _ => Err(errors),
        }
    }
}

/// One `weft.mesh.v1.Endpoints` resource: the endpoints a service selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSet {
    pub service: ObjectRef,
    pub endpoints: Vec<Endpoint>,
}

impl TryFrom<pb::Endpoints> for EndpointSet {
    type Error = Invalid;

    fn try_from(e: pb::Endpoints) -> Result<Self, Invalid> {
        let mut errors = Invalid::default();
        let mut endpoints = Vec::with_capacity(e.endpoints.len());
        for (i, ep) in e.endpoints.into_iter().enumerate() {
            match Endpoint::try_from(ep) {
                Ok(ep) => endpoints.push(ep),
                Err(err) => errors.0.extend(err.0.into_iter().map(|mut f| {
                    f.field = format!("endpoints[{i}].{}", f.field);
                    f
                })),
            }
        }
        if errors.0.is_empty() {
            Ok(EndpointSet {
                service: ObjectRef::new(e.namespace, e.service),
                endpoints,
            })
        } else {
            Err(errors)
        }
    }
}

/// Converts a `weft.mesh.v1.TrustBundle`; it must be for `ours` (a bundle for another trust
/// domain would be a misrouted or forged resource).
pub fn trust_bundle(b: pb::TrustBundle, ours: &TrustDomain) -> Result<TrustBundle, String> {
    if b.trust_domain != ours.as_str() {
        return Err(format!(
            "trust_domain: {:?} is not this proxy's trust domain {ours}",
            b.trust_domain
        ));
    }
    let roots = b.roots.into_iter().map(CertificateDer::from).collect();
    TrustBundle::new(ours.clone(), roots).map_err(|e| format!("roots: {e}"))
}

/// What a TrustBundle says during a root rotation once the new CA signs: renew a certificate
/// another CA issued, at a random instant within `within`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewHint {
    /// The AuthorityKeyIdentifier of the certificates the signing CA issues.
    pub key_id: Vec<u8>,
    pub within: std::time::Duration,
}

/// The bundle's [`RenewHint`], if it carries one. A window that is absent, zero or negative
/// means renew at once (within a second).
pub fn renew_hint(b: &pb::TrustBundle) -> Option<RenewHint> {
    if b.signing_key_id.is_empty() {
        return None;
    }
    let secs = b.renew_within.as_ref().map_or(0, |d| d.seconds.max(0));
    // A day at most: a window longer than any sensible rotation is a mistake, not a plan.
    let within = std::time::Duration::from_secs(secs.clamp(1, 86_400) as u64);
    Some(RenewHint {
        key_id: b.signing_key_id.clone(),
        within,
    })
}

/// A resource as held: its version and its converted value.
#[derive(Debug, Clone)]
pub struct Held<T> {
    pub version: String,
    pub value: Arc<T>,
}

/// Everything the proxy knows of the mesh, as last accepted. Never changed in place.
#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    /// `namespace/name` → service.
    pub services: BTreeMap<String, Held<ServiceConfig>>,
    /// `namespace/name` of the service → its endpoints.
    pub endpoints: BTreeMap<String, Held<EndpointSet>>,
    pub trust_bundle: Option<Held<TrustBundle>>,
    /// This workload's inbound policy, compiled from `services` when they change; `None`:
    /// nothing to enforce.
    pub inbound: Option<Arc<crate::authz::InboundPolicy>>,
    /// The `system_version_info` of the last accepted response.
    pub system_version: String,
    /// Responses accepted so far.
    pub generation: u64,
}

impl MeshConfig {
    /// Name → version of every resource of `type_url` held (what a reconnect reports).
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        match type_url {
            pb::SERVICE_TYPE_URL => versions(&self.services),
            pb::ENDPOINTS_TYPE_URL => versions(&self.endpoints),
            // The bundle's resource name is its trust domain (checked on receipt).
            pb::TRUST_BUNDLE_TYPE_URL => self
                .trust_bundle
                .iter()
                .map(|b| (b.value.trust_domain().to_string(), b.version.clone()))
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

fn versions<T>(map: &BTreeMap<String, Held<T>>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(n, h)| (n.clone(), h.version.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, port: u32) -> pb::Service {
        pb::Service {
            namespace: ns.into(),
            name: "reviews".into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port,
                protocol: pb::Protocol::Http1.into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_service_converts_and_an_invalid_one_names_its_fields() {
        let ok = ServiceConfig::try_from(service("shop", 9080)).unwrap();
        assert_eq!(ok.service.id, ObjectRef::new("shop", "reviews"));
        let mut bad = service("Shop!", 0);
        bad.routes.push(pb::HttpRoute::default());
        let err = ServiceConfig::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("metadata.namespace"), "{err}");
        assert!(err.contains("spec.ports[0].port"), "{err}");
        assert!(err.contains("routes[0]."), "{err}");
    }

    #[test]
    fn endpoints_with_a_bad_address_are_refused_with_its_index() {
        let e = pb::Endpoints {
            namespace: "shop".into(),
            service: "reviews".into(),
            endpoints: vec![pb::Endpoint {
                namespace: "shop".into(),
                service: "reviews".into(),
                address: "not-an-address".into(),
                identity: "spiffe://mesh.test/ns/shop/sa/reviews".into(),
                weight: 1,
                ready: true,
                ..Default::default()
            }],
        };
        let err = EndpointSet::try_from(e).unwrap_err().to_string();
        assert!(err.starts_with("endpoints[0].address"), "{err}");
    }

    #[test]
    fn a_bundle_for_another_trust_domain_is_refused() {
        let ours = TrustDomain::parse("mesh.test").unwrap();
        let err = trust_bundle(
            pb::TrustBundle {
                trust_domain: "evil.test".into(),
                roots: vec![],
                ..Default::default()
            },
            &ours,
        )
        .unwrap_err();
        assert!(err.contains("evil.test"), "{err}");
    }

    #[test]
    fn a_renew_hint_needs_a_key_id_and_its_window_is_bounded() {
        let hint = |key: &[u8], secs: Option<i64>| {
            renew_hint(&pb::TrustBundle {
                signing_key_id: key.to_vec(),
                renew_within: secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                ..Default::default()
            })
        };
        assert_eq!(hint(b"", Some(60)), None, "outside a rotation");
        let within = |h: Option<RenewHint>| h.map(|h| h.within.as_secs());
        assert_eq!(within(hint(b"k", Some(60))), Some(60));
        assert_eq!(within(hint(b"k", None)), Some(1), "absent: at once");
        assert_eq!(within(hint(b"k", Some(-5))), Some(1));
        assert_eq!(within(hint(b"k", Some(i64::MAX))), Some(86_400));
    }
}
