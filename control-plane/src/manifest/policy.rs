//! Manifest ↔ wire for inbound policy: `AuthorizationPolicy`, `RateLimitPolicy` and a Service's
//! `spec.defaultInboundPolicy`. As in [`super::convert`], manifest → wire reports only what the
//! manifest form can get wrong (an unknown action, mode or default; `false` where only `true`
//! means anything; an explicit empty `from`/`to`; an explicit `burst: 0`) and leaves the rest to
//! the domain `TryFrom`; wire → manifest is total.

use std::collections::BTreeMap;

use serde_json::Value;
use weft_proto::mesh::v1 as pb;

use super::convert::{Errs, headers_of, headers_to_pb, path_of, path_to_pb, port16};
use super::{
    AuthorizationPolicyManifest, AuthorizationPolicySpec, FromSpec, Metadata, NetworkSpec,
    RateLimitOverrideSpec, RateLimitPolicyManifest, RateLimitPolicySpec, RateLimitSpec,
    ServiceAccountSpec, TargetRefSpec, ToSpec, WEFT_API_VERSION,
};
use crate::model::{DefaultInbound, FieldError};

const ACTIONS: [(&str, pb::AuthorizationAction); 2] = [
    ("Allow", pb::AuthorizationAction::Allow),
    ("Deny", pb::AuthorizationAction::Deny),
];

const MODES: [(&str, pb::PolicyMode); 2] = [
    ("Enforce", pb::PolicyMode::Enforce),
    ("Audit", pb::PolicyMode::Audit),
];

/// Annotations are refused on every kind but HTTPRoute: they would be lost.
pub(super) fn no_annotations(errs: &mut Errs, annotations: &BTreeMap<String, Value>, why: &str) {
    if !annotations.is_empty() {
        errs.add("metadata.annotations".into(), why);
    }
}

pub(super) fn default_inbound_to_pb(errs: &mut Errs, s: Option<&str>) -> pb::DefaultInboundPolicy {
    let parsed = s.map(|s| {
        DefaultInbound::parse(s)
            .map_err(|m| errs.add("spec.defaultInboundPolicy".into(), m))
            .ok()
    });
    DefaultInbound::to_pb(parsed.flatten())
}

pub(super) fn default_inbound_of(v: i32) -> Option<String> {
    match DefaultInbound::from_pb(v) {
        Ok(d) => d.map(|d| d.as_str().to_owned()),
        // Shown as-is so that re-applying it is refused rather than guessed.
        Err(_) => Some(format!("unknown ({v})")),
    }
}

/// A closed set of names: the wire value, or UNSPECIFIED (0) with an error naming the choices.
fn named<T: Copy + Into<i32>>(
    errs: &mut Errs,
    field: &str,
    s: Option<&str>,
    table: &[(&str, T)],
) -> i32 {
    let Some(s) = s else { return 0 };
    match table.iter().find(|(name, _)| *name == s) {
        Some((_, v)) => (*v).into(),
        None => {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            errs.add(
                field.into(),
                format!("{s:?} is not one of {}", names.join(", ")),
            );
            0
        }
    }
}

fn name_of<T: Copy + Into<i32>>(v: i32, table: &[(&str, T)]) -> Option<String> {
    (v != 0).then(|| {
        table
            .iter()
            .find(|(_, t)| (*t).into() == v)
            // Shown as-is so that re-applying it is refused rather than guessed.
            .map_or_else(|| format!("unknown ({v})"), |(n, _)| (*n).to_owned())
    })
}

/// `true` or absent; `false` is refused, since the wire cannot say "not".
fn only_true(errs: &mut Errs, field: String, v: Option<bool>) -> bool {
    if v == Some(false) {
        errs.add(field, "only true is meaningful; leave it out");
    }
    v == Some(true)
}

/// An optional list whose explicit `[]` would be misread.
fn not_empty<'a, T>(errs: &mut Errs, field: &str, v: &'a Option<Vec<T>>, why: &str) -> &'a [T] {
    match v {
        Some(list) if list.is_empty() => {
            errs.add(field.into(), why);
            &[]
        }
        Some(list) => list,
        None => &[],
    }
}

fn target_to_pb(t: &Option<TargetRefSpec>) -> Option<pb::PolicyTargetRef> {
    t.as_ref().map(|t| pb::PolicyTargetRef {
        kind: t.kind.clone(),
        name: t.name.clone(),
    })
}

fn target_of(t: &Option<pb::PolicyTargetRef>) -> Option<TargetRefSpec> {
    t.as_ref().map(|t| TargetRefSpec {
        kind: t.kind.clone(),
        name: t.name.clone(),
    })
}

fn metadata_of(namespace: &str, name: &str) -> Metadata {
    Metadata {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        annotations: BTreeMap::new(),
    }
}

pub(super) fn authorization_to_pb(
    m: &AuthorizationPolicyManifest,
) -> (pb::AuthorizationPolicy, Vec<FieldError>) {
    let mut errs = Errs::default();
    no_annotations(
        &mut errs,
        &m.metadata.annotations,
        "an AuthorizationPolicy takes no annotations",
    );
    let s = &m.spec;
    let action = named(&mut errs, "spec.action", s.action.as_deref(), &ACTIONS);
    let mode = named(&mut errs, "spec.mode", s.mode.as_deref(), &MODES);
    let from = not_empty(
        &mut errs,
        "spec.from",
        &s.from,
        "an empty list matches nothing: leave `from` out to match any client",
    )
    .iter()
    .enumerate()
    .map(|(i, f)| from_to_pb(&mut errs, &format!("spec.from[{i}]"), f))
    .collect();
    let to = not_empty(
        &mut errs,
        "spec.to",
        &s.to,
        "an empty list matches nothing: leave `to` out to match every request",
    )
    .iter()
    .enumerate()
    .map(|(i, t)| to_to_pb(&mut errs, &format!("spec.to[{i}]"), t))
    .collect();
    let p = pb::AuthorizationPolicy {
        namespace: m.metadata.namespace.clone(),
        name: m.metadata.name.clone(),
        target_ref: target_to_pb(&s.target_ref),
        action,
        mode,
        from,
        to,
    };
    (p, errs.0)
}

fn from_to_pb(errs: &mut Errs, f: &str, m: &FromSpec) -> pb::AuthorizationFrom {
    pb::AuthorizationFrom {
        identities: m.identities.clone(),
        namespaces: m.namespaces.clone(),
        service_accounts: m
            .service_accounts
            .iter()
            .map(|sa| pb::ServiceAccountRef {
                namespace: sa.namespace.clone(),
                name: sa.name.clone(),
            })
            .collect(),
        authenticated: only_true(errs, format!("{f}.authenticated"), m.authenticated),
        unauthenticated: only_true(errs, format!("{f}.unauthenticated"), m.unauthenticated),
        networks: m
            .networks
            .iter()
            .map(|n| pb::NetworkMatch {
                cidr: n.cidr.clone(),
                except: n.except.clone(),
            })
            .collect(),
    }
}

fn to_to_pb(errs: &mut Errs, f: &str, m: &ToSpec) -> pb::AuthorizationTo {
    pb::AuthorizationTo {
        ports: m.ports.iter().map(|p| u32::from(*p)).collect(),
        methods: m.methods.clone(),
        paths: m
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| path_to_pb(errs, &format!("{f}.paths[{i}]"), p))
            .collect(),
        headers: headers_to_pb(errs, &format!("{f}.headers"), &m.headers),
    }
}

fn limit_to_pb(errs: &mut Errs, f: &str, rps: u32, burst: Option<u32>) -> (u32, u32) {
    if burst == Some(0) {
        errs.add(
            format!("{f}.burst"),
            "0 is not a burst: leave the field out for a burst equal to requestsPerSecond",
        );
    }
    (rps, burst.unwrap_or(0))
}

fn rate_limit_to_pb(errs: &mut Errs, f: &str, l: &RateLimitSpec) -> pb::RateLimit {
    let (requests_per_second, burst) = limit_to_pb(errs, f, l.requests_per_second, l.burst);
    pb::RateLimit {
        requests_per_second,
        burst,
    }
}

pub(super) fn rate_limit_policy_to_pb(
    m: &RateLimitPolicyManifest,
) -> (pb::RateLimitPolicy, Vec<FieldError>) {
    let mut errs = Errs::default();
    no_annotations(
        &mut errs,
        &m.metadata.annotations,
        "a RateLimitPolicy takes no annotations",
    );
    let s = &m.spec;
    let total = s
        .total
        .as_ref()
        .map(|l| rate_limit_to_pb(&mut errs, "spec.total", l));
    let per_identity = s
        .per_identity
        .as_ref()
        .map(|l| rate_limit_to_pb(&mut errs, "spec.perIdentity", l));
    let overrides = s
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (requests_per_second, burst) = limit_to_pb(
                &mut errs,
                &format!("spec.overrides[{i}]"),
                o.requests_per_second,
                o.burst,
            );
            pb::RateLimitOverride {
                identities: o.identities.clone(),
                requests_per_second,
                burst,
            }
        })
        .collect();
    let p = pb::RateLimitPolicy {
        namespace: m.metadata.namespace.clone(),
        name: m.metadata.name.clone(),
        target_ref: target_to_pb(&s.target_ref),
        total,
        per_identity,
        overrides,
    };
    (p, errs.0)
}

// ---- wire → manifest (total) ----------------------------------------------------------------

fn burst_of(b: u32) -> Option<u32> {
    (b != 0).then_some(b)
}

fn rate_limit_of(l: &pb::RateLimit) -> RateLimitSpec {
    RateLimitSpec {
        requests_per_second: l.requests_per_second,
        burst: burst_of(l.burst),
    }
}

impl From<&pb::AuthorizationPolicy> for AuthorizationPolicyManifest {
    fn from(p: &pb::AuthorizationPolicy) -> Self {
        AuthorizationPolicyManifest {
            api_version: WEFT_API_VERSION.into(),
            kind: "AuthorizationPolicy".into(),
            metadata: metadata_of(&p.namespace, &p.name),
            spec: AuthorizationPolicySpec {
                target_ref: target_of(&p.target_ref),
                action: name_of(p.action, &ACTIONS),
                mode: name_of(p.mode, &MODES),
                from: (!p.from.is_empty()).then(|| p.from.iter().map(from_of).collect()),
                to: (!p.to.is_empty()).then(|| p.to.iter().map(to_of).collect()),
            },
        }
    }
}

fn from_of(m: &pb::AuthorizationFrom) -> FromSpec {
    FromSpec {
        identities: m.identities.clone(),
        namespaces: m.namespaces.clone(),
        service_accounts: m
            .service_accounts
            .iter()
            .map(|sa| ServiceAccountSpec {
                namespace: sa.namespace.clone(),
                name: sa.name.clone(),
            })
            .collect(),
        authenticated: m.authenticated.then_some(true),
        unauthenticated: m.unauthenticated.then_some(true),
        networks: m
            .networks
            .iter()
            .map(|n| NetworkSpec {
                cidr: n.cidr.clone(),
                except: n.except.clone(),
            })
            .collect(),
    }
}

fn to_of(m: &pb::AuthorizationTo) -> ToSpec {
    ToSpec {
        ports: m.ports.iter().map(|p| port16(*p)).collect(),
        methods: m.methods.clone(),
        paths: m.paths.iter().map(path_of).collect(),
        headers: headers_of(&m.headers),
    }
}

impl From<&pb::RateLimitPolicy> for RateLimitPolicyManifest {
    fn from(p: &pb::RateLimitPolicy) -> Self {
        RateLimitPolicyManifest {
            api_version: WEFT_API_VERSION.into(),
            kind: "RateLimitPolicy".into(),
            metadata: metadata_of(&p.namespace, &p.name),
            spec: RateLimitPolicySpec {
                target_ref: target_of(&p.target_ref),
                total: p.total.as_ref().map(rate_limit_of),
                per_identity: p.per_identity.as_ref().map(rate_limit_of),
                overrides: p
                    .overrides
                    .iter()
                    .map(|o| RateLimitOverrideSpec {
                        identities: o.identities.clone(),
                        requests_per_second: o.requests_per_second,
                        burst: burst_of(o.burst),
                    })
                    .collect(),
            },
        }
    }
}
