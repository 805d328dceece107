//! The checks of AuthorizationPolicies and RateLimitPolicies that need more than the document:
//! the mesh's trust domain, the target service as it will be after the apply (its ports and
//! their protocols), and the other RateLimitPolicies. A target that does not exist is allowed
//! (the policy applies when the service appears); only what can be checked is.

use std::collections::BTreeMap;

use weft_certs::{SpiffeId, TrustDomain};
use weft_proto::config::v1::Violation;

use super::violation;
use crate::model::{
    AuthorizationPolicy, ObjectRef, PolicyTarget, Protocol, RateLimitPolicy, Service,
};

/// What the checks read: everything as it will be after the apply.
pub(super) struct Checks<'a> {
    pub(super) trust_domain: &'a TrustDomain,
    /// Stored services, overridden by the batch.
    pub(super) services: &'a BTreeMap<&'a ObjectRef, &'a Service>,
    /// Stored RateLimitPolicies, overridden by the batch, by namespace/name.
    pub(super) rate_limits: Vec<&'a RateLimitPolicy>,
}

impl Checks<'_> {
    /// Checks `p` (document `doc`); returns the target service whose state the checks read.
    pub(super) fn authorization(
        &self,
        doc: usize,
        p: &AuthorizationPolicy,
        violations: &mut Vec<Violation>,
    ) -> Option<ObjectRef> {
        for (i, from) in p.from.iter().enumerate() {
            self.identities(
                doc,
                &format!("spec.from[{i}].identities"),
                &from.identities,
                violations,
            );
        }
        let PolicyTarget::Service(name) = &p.target else {
            // A namespace's services differ in ports; each takes what applies to it.
            return None;
        };
        let target = ObjectRef::new(&p.id.namespace, name);
        let Some(svc) = self.services.get(&target) else {
            return Some(target);
        };
        for (i, to) in p.to.iter().enumerate() {
            let f = format!("spec.to[{i}]");
            for (k, port) in to.ports.iter().enumerate() {
                if svc.port(*port).is_none() {
                    violations.push(violation(
                        doc,
                        format!("{f}.ports[{k}]"),
                        format!(
                            "Service {target} has no port {port} (it has {})",
                            port_list(svc)
                        ),
                    ));
                }
            }
            if !to.has_http_fields() {
                continue;
            }
            // The ports the entry applies to: those it names (that exist), or every port.
            let ports: Vec<u16> = if to.ports.is_empty() {
                svc.ports.iter().map(|p| p.port).collect()
            } else {
                to.ports
                    .iter()
                    .copied()
                    .filter(|p| svc.port(*p).is_some())
                    .collect()
            };
            let all_tcp = !ports.is_empty()
                && ports
                    .iter()
                    .all(|p| svc.port(*p).is_some_and(|p| p.protocol == Protocol::Tcp));
            if !all_tcp {
                continue;
            }
            let on = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            for (field, present) in [
                ("methods", !to.methods.is_empty()),
                ("paths", !to.paths.is_empty()),
                ("headers", !to.headers.is_empty()),
            ] {
                if present {
                    violations.push(violation(
                        doc,
                        format!("{f}.{field}"),
                        format!(
                            "could never match: port {on} of Service {target} is tcp, where requests have no {field} (name http1, http2 or grpc ports in `ports`)"
                        ),
                    ));
                }
            }
        }
        Some(target)
    }

    /// Checks `p` (document `doc`); returns the target service.
    pub(super) fn rate_limit(
        &self,
        doc: usize,
        p: &RateLimitPolicy,
        violations: &mut Vec<Violation>,
    ) -> Option<ObjectRef> {
        for (i, o) in p.overrides.iter().enumerate() {
            self.identities(
                doc,
                &format!("spec.overrides[{i}].identities"),
                &o.identities,
                violations,
            );
        }
        let target = ObjectRef::new(&p.id.namespace, &p.service);
        if let Some(other) = self
            .rate_limits
            .iter()
            .find(|o| o.id != p.id && o.targets(&target))
        {
            violations.push(violation(
                doc,
                "spec.targetRef.name",
                format!(
                    "Service {target} is already the target of RateLimitPolicy {}: at most one RateLimitPolicy may target a service (change that one, or delete it first)",
                    other.id
                ),
            ));
        }
        Some(target)
    }

    fn identities(
        &self,
        doc: usize,
        field: &str,
        ids: &[SpiffeId],
        violations: &mut Vec<Violation>,
    ) {
        let td = self.trust_domain;
        for (j, id) in ids.iter().enumerate() {
            if !id.is_member_of(td) {
                violations.push(violation(
                    doc,
                    format!("{field}[{j}]"),
                    format!(
                        "{id} is not in the mesh's trust domain {td}: no client could present it"
                    ),
                ));
            }
        }
    }
}

fn port_list(svc: &Service) -> String {
    svc.ports
        .iter()
        .map(|p| p.port.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
