//! Manifest ↔ wire conversion. Manifest → wire reports what only the manifest form can get
//! wrong (unknown protocol or match type, a malformed duration, an explicit port 0) with its
//! field path; everything else is the domain `TryFrom`'s job. Wire → manifest is total, so even
//! an invalid stored object can be shown.

use weft_proto::mesh::v1 as pb;

use super::policy::{default_inbound_of, default_inbound_to_pb, no_annotations};
use super::traffic::{
    retry_annotations_of, retry_policy_to_pb, traffic_policy_of, traffic_policy_to_pb,
};
use super::{
    BackendRefSpec, EndpointManifest, EndpointMetadata, EndpointSpec, GATEWAY_API_VERSION,
    HttpRouteManifest, HttpRouteSpec, MatchSpec, Metadata, ParentRefSpec, PathSpec, PortSpec,
    RetrySpec, RuleSpec, ServiceManifest, ServiceSpec, TimeoutsSpec, ValueMatchSpec,
    WEFT_API_VERSION, format_duration, parse_duration,
};
use crate::model::FieldError;

#[derive(Default)]
pub(super) struct Errs(pub(super) Vec<FieldError>);

impl Errs {
    pub(super) fn add(&mut self, field: String, message: impl Into<String>) {
        self.0.push(FieldError {
            field,
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        field: String,
        s: &Option<String>,
    ) -> Option<prost_types::Duration> {
        let s = s.as_ref()?;
        parse_duration(s).map_err(|m| self.add(field, m)).ok()
    }

    /// A match type that may only be `Exact` (or absent).
    fn exact_only(&mut self, field: String, t: &Option<String>) {
        match t.as_deref() {
            None | Some("Exact") => {}
            Some("RegularExpression") => {
                self.add(field, "RegularExpression is not supported: use Exact")
            }
            Some(other) => self.add(field, format!("unknown match type {other:?}: use Exact")),
        }
    }

    /// An optional port: absent is 0 on the wire ("every port"); an explicit 0 is refused so it
    /// is not silently read as "every port".
    fn opt_port(&mut self, field: String, p: Option<u16>) -> u32 {
        match p {
            Some(0) => {
                self.add(
                    field,
                    "0 is not a port (1 to 65535; leave the field out for any port)",
                );
                0
            }
            p => p.map_or(0, u32::from),
        }
    }
}

const PROTOCOLS: [(&str, pb::Protocol); 4] = [
    ("http1", pb::Protocol::Http1),
    ("http2", pb::Protocol::Http2),
    ("grpc", pb::Protocol::Grpc),
    ("tcp", pb::Protocol::Tcp),
];

pub(super) fn service_to_pb(m: &ServiceManifest) -> (pb::Service, Vec<FieldError>) {
    let mut errs = Errs::default();
    let ports = m
        .spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let protocol = PROTOCOLS
                .iter()
                .find(|(name, _)| *name == p.protocol)
                .map(|(_, proto)| *proto)
                .unwrap_or_else(|| {
                    errs.add(
                        format!("spec.ports[{i}].protocol"),
                        format!(
                            "{:?} is not a protocol: use http1, http2, grpc or tcp",
                            p.protocol
                        ),
                    );
                    pb::Protocol::Unspecified
                });
            pb::Port {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: protocol.into(),
            }
        })
        .collect();
    no_annotations(
        &mut errs,
        &m.metadata.annotations,
        "a Service takes no annotations: its traffic policy is spec.trafficPolicy",
    );
    let traffic_policy = m
        .spec
        .traffic_policy
        .as_ref()
        .map(|t| traffic_policy_to_pb(&mut errs, t));
    let s = pb::Service {
        namespace: m.metadata.namespace.clone(),
        name: m.metadata.name.clone(),
        ports,
        selector: m.spec.selector.clone(),
        routes: vec![],
        traffic_policy,
        default_inbound_policy: default_inbound_to_pb(
            &mut errs,
            m.spec.default_inbound_policy.as_deref(),
        )
        .into(),
        authorization_policies: vec![],
        rate_limit_policy: None,
    };
    (s, errs.0)
}

pub(super) fn route_to_pb(m: &HttpRouteManifest) -> (pb::HttpRoute, Vec<FieldError>) {
    let mut errs = Errs::default();
    let parent_refs = m
        .spec
        .parent_refs
        .iter()
        .enumerate()
        .map(|(i, p)| pb::ParentRef {
            group: p.group.clone(),
            kind: p.kind.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            port: errs.opt_port(format!("spec.parentRefs[{i}].port"), p.port),
        })
        .collect();
    let rules = m
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule_to_pb(&mut errs, &format!("spec.rules[{i}]"), r))
        .collect();
    let retry_policy = retry_policy_to_pb(&mut errs, &m.metadata.annotations);
    let r = pb::HttpRoute {
        namespace: m.metadata.namespace.clone(),
        name: m.metadata.name.clone(),
        parent_refs,
        rules,
        retry_policy,
    };
    (r, errs.0)
}

fn rule_to_pb(errs: &mut Errs, f: &str, r: &RuleSpec) -> pb::HttpRouteRule {
    pb::HttpRouteRule {
        name: r.name.clone(),
        matches: r
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| match_to_pb(errs, &format!("{f}.matches[{j}]"), m))
            .collect(),
        backend_refs: r
            .backend_refs
            .iter()
            .enumerate()
            .map(|(k, b)| pb::BackendRef {
                group: b.group.clone(),
                kind: b.kind.clone(),
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                port: errs.opt_port(format!("{f}.backendRefs[{k}].port"), b.port),
                weight: b.weight,
            })
            .collect(),
        timeouts: r.timeouts.as_ref().map(|t| pb::Timeouts {
            request: errs.duration(format!("{f}.timeouts.request"), &t.request),
            backend_request: errs
                .duration(format!("{f}.timeouts.backendRequest"), &t.backend_request),
        }),
        retry: r.retry.as_ref().map(|rt| pb::Retry {
            codes: rt.codes.clone(),
            attempts: rt.attempts,
            backoff: errs.duration(format!("{f}.retry.backoff"), &rt.backoff),
        }),
    }
}

/// A Gateway API path match (HTTPRoute matches, AuthorizationPolicy `to.paths`).
pub(super) fn path_to_pb(errs: &mut Errs, f: &str, p: &PathSpec) -> pb::PathMatch {
    let ty = match p.type_.as_str() {
        "Exact" => pb::path_match::Type::Exact,
        "PathPrefix" => pb::path_match::Type::PathPrefix,
        "RegularExpression" => {
            errs.add(
                format!("{f}.type"),
                "RegularExpression is not supported: use Exact or PathPrefix",
            );
            pb::path_match::Type::Unspecified
        }
        other => {
            errs.add(
                format!("{f}.type"),
                format!("unknown path match type {other:?}: use Exact or PathPrefix"),
            );
            pb::path_match::Type::Unspecified
        }
    };
    pb::PathMatch {
        r#type: ty.into(),
        value: p.value.clone(),
    }
}

/// Exact header matches (HTTPRoute matches, AuthorizationPolicy `to.headers`).
pub(super) fn headers_to_pb(
    errs: &mut Errs,
    f: &str,
    h: &[ValueMatchSpec],
) -> Vec<pb::HeaderMatch> {
    h.iter()
        .enumerate()
        .map(|(i, hm)| {
            errs.exact_only(format!("{f}[{i}].type"), &hm.type_);
            pb::HeaderMatch {
                name: hm.name.clone(),
                value: hm.value.clone(),
            }
        })
        .collect()
}

fn match_to_pb(errs: &mut Errs, f: &str, m: &MatchSpec) -> pb::HttpRouteMatch {
    let path = m
        .path
        .as_ref()
        .map(|p| path_to_pb(errs, &format!("{f}.path"), p));
    let headers = headers_to_pb(errs, &format!("{f}.headers"), &m.headers);
    let query_params = m
        .query_params
        .iter()
        .enumerate()
        .map(|(q, qm)| {
            errs.exact_only(format!("{f}.queryParams[{q}].type"), &qm.type_);
            pb::QueryParamMatch {
                name: qm.name.clone(),
                value: qm.value.clone(),
            }
        })
        .collect();
    pb::HttpRouteMatch {
        path,
        headers,
        query_params,
        method: m.method.clone(),
    }
}

pub(super) fn endpoint_to_pb(m: &EndpointManifest) -> pb::Endpoint {
    let s = &m.spec;
    pb::Endpoint {
        namespace: m.metadata.namespace.clone(),
        service: s.service.clone(),
        address: s.address.clone(),
        identity: s.identity.clone(),
        labels: s.labels.clone(),
        zone: s.zone.clone(),
        weight: s.weight,
        ready: s.ready,
    }
}

// ---- wire → manifest (total) ----------------------------------------------------------------

/// A wire port that does not fit u16 is shown as 0, which validation refuses on re-apply, rather
/// than as a different valid port.
pub(super) fn port16(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

fn opt_port16(p: u32) -> Option<u16> {
    (p != 0).then(|| port16(p))
}

impl From<&pb::Service> for ServiceManifest {
    fn from(s: &pb::Service) -> Self {
        ServiceManifest {
            api_version: WEFT_API_VERSION.into(),
            kind: "Service".into(),
            metadata: Metadata {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                annotations: Default::default(),
            },
            spec: ServiceSpec {
                ports: s
                    .ports
                    .iter()
                    .map(|p| PortSpec {
                        name: p.name.clone(),
                        port: port16(p.port),
                        protocol: PROTOCOLS
                            .iter()
                            .find(|(_, proto)| i32::from(*proto) == p.protocol)
                            .map_or_else(String::new, |(name, _)| (*name).to_owned()),
                    })
                    .collect(),
                selector: s.selector.clone(),
                traffic_policy: s.traffic_policy.as_ref().map(traffic_policy_of),
                default_inbound_policy: default_inbound_of(s.default_inbound_policy),
            },
        }
    }
}

impl From<&pb::HttpRoute> for HttpRouteManifest {
    fn from(r: &pb::HttpRoute) -> Self {
        HttpRouteManifest {
            api_version: GATEWAY_API_VERSION.into(),
            kind: "HTTPRoute".into(),
            metadata: Metadata {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
                annotations: retry_annotations_of(r.retry_policy.as_ref()),
            },
            spec: HttpRouteSpec {
                parent_refs: r
                    .parent_refs
                    .iter()
                    .map(|p| ParentRefSpec {
                        group: p.group.clone(),
                        kind: p.kind.clone(),
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        port: opt_port16(p.port),
                    })
                    .collect(),
                rules: r.rules.iter().map(rule_of).collect(),
            },
        }
    }
}

fn rule_of(r: &pb::HttpRouteRule) -> RuleSpec {
    RuleSpec {
        name: r.name.clone(),
        matches: r.matches.iter().map(match_of).collect(),
        backend_refs: r
            .backend_refs
            .iter()
            .map(|b| BackendRefSpec {
                group: b.group.clone(),
                kind: b.kind.clone(),
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                port: opt_port16(b.port),
                weight: b.weight,
            })
            .collect(),
        timeouts: r.timeouts.as_ref().map(|t| TimeoutsSpec {
            request: t.request.as_ref().map(format_duration),
            backend_request: t.backend_request.as_ref().map(format_duration),
        }),
        retry: r.retry.as_ref().map(|rt| RetrySpec {
            codes: rt.codes.clone(),
            attempts: rt.attempts,
            backoff: rt.backoff.as_ref().map(format_duration),
        }),
    }
}

pub(super) fn path_of(p: &pb::PathMatch) -> PathSpec {
    PathSpec {
        type_: match pb::path_match::Type::try_from(p.r#type) {
            Ok(pb::path_match::Type::Exact) => "Exact".into(),
            Ok(pb::path_match::Type::PathPrefix) => "PathPrefix".into(),
            // Shown as-is so that re-applying it is refused rather than guessed.
            _ => "Unspecified".into(),
        },
        value: p.value.clone(),
    }
}

pub(super) fn headers_of(h: &[pb::HeaderMatch]) -> Vec<ValueMatchSpec> {
    h.iter()
        .map(|h| ValueMatchSpec {
            type_: None,
            name: h.name.clone(),
            value: h.value.clone(),
        })
        .collect()
}

fn match_of(m: &pb::HttpRouteMatch) -> MatchSpec {
    MatchSpec {
        path: m.path.as_ref().map(path_of),
        headers: headers_of(&m.headers),
        query_params: m
            .query_params
            .iter()
            .map(|q| ValueMatchSpec {
                type_: None,
                name: q.name.clone(),
                value: q.value.clone(),
            })
            .collect(),
        method: m.method.clone(),
    }
}

impl From<&pb::Endpoint> for EndpointManifest {
    fn from(e: &pb::Endpoint) -> Self {
        EndpointManifest {
            api_version: WEFT_API_VERSION.into(),
            kind: "Endpoint".into(),
            metadata: EndpointMetadata {
                namespace: e.namespace.clone(),
            },
            spec: EndpointSpec {
                service: e.service.clone(),
                address: e.address.clone(),
                identity: e.identity.clone(),
                labels: e.labels.clone(),
                zone: e.zone.clone(),
                weight: e.weight,
                ready: e.ready,
            },
        }
    }
}
