//! Inbound policy in the domain model: `AuthorizationPolicy` (who may call what on a service),
//! `RateLimitPolicy` (token buckets at each server proxy) and a Service's default inbound
//! policy. Checked here, through the same collect-every-error `Errors` as the rest of the model;
//! field paths are in manifest terms. Checks that need other objects (the mesh's trust domain,
//! the target service's ports and protocols, one rate limit per service) are the config
//! service's.
//!
//! What the policies mean is evaluated by the server proxy (`proxy/src/authz/`).

use std::fmt;
use std::net::IpAddr;

use weft_certs::SpiffeId;

use super::{
    Errors, Invalid, METHODS, ObjectRef, PathMatch, dns_label, header_name, header_value,
    path_value, port_number,
};
use crate::mesh::v1 as pb;

/// The largest `requestsPerSecond` (and `burst`) accepted.
pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;
/// Most entries in one `from` or `to` list, and most values in one of their fields: policies are
/// evaluated on every request, and a longer list is better expressed another way.
pub const MAX_LIST: usize = 64;

/// The decision for inbound requests no Allow policy speaks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DefaultInbound {
    /// Everyone, plaintext clients included (today's behaviour, and the default).
    #[default]
    Allow,
    /// Any client with a verified mesh identity.
    Authenticated,
    /// Nobody (health probe paths excepted).
    Deny,
}

impl DefaultInbound {
    /// The manifest and flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultInbound::Allow => "allow",
            DefaultInbound::Authenticated => "authenticated",
            DefaultInbound::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(DefaultInbound::Allow),
            "authenticated" => Ok(DefaultInbound::Authenticated),
            "deny" => Ok(DefaultInbound::Deny),
            other => Err(format!(
                "{other:?} is not a default inbound policy: use allow, authenticated or deny"
            )),
        }
    }

    /// `None` for UNSPECIFIED (absent).
    pub fn from_pb(v: i32) -> Result<Option<Self>, String> {
        match pb::DefaultInboundPolicy::try_from(v) {
            Ok(pb::DefaultInboundPolicy::Unspecified) => Ok(None),
            Ok(pb::DefaultInboundPolicy::Allow) => Ok(Some(DefaultInbound::Allow)),
            Ok(pb::DefaultInboundPolicy::Authenticated) => Ok(Some(DefaultInbound::Authenticated)),
            Ok(pb::DefaultInboundPolicy::Deny) => Ok(Some(DefaultInbound::Deny)),
            Err(_) => Err(format!("{v} is not a default inbound policy")),
        }
    }

    pub fn to_pb(v: Option<Self>) -> pb::DefaultInboundPolicy {
        match v {
            None => pb::DefaultInboundPolicy::Unspecified,
            Some(DefaultInbound::Allow) => pb::DefaultInboundPolicy::Allow,
            Some(DefaultInbound::Authenticated) => pb::DefaultInboundPolicy::Authenticated,
            Some(DefaultInbound::Deny) => pb::DefaultInboundPolicy::Deny,
        }
    }
}

impl fmt::Display for DefaultInbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyTarget {
    /// A Service of the policy's namespace, by name.
    Service(String),
    /// Every service of the policy's namespace.
    Namespace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthzAction {
    Allow,
    Deny,
}

impl AuthzAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "Allow",
            AuthzAction::Deny => "Deny",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PolicyMode {
    #[default]
    Enforce,
    /// Evaluated, logged and counted, never enforced.
    Audit,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "Enforce",
            PolicyMode::Audit => "Audit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub id: ObjectRef,
    pub target: PolicyTarget,
    pub action: AuthzAction,
    pub mode: PolicyMode,
    /// Alternatives; empty: any client.
    pub from: Vec<FromMatch>,
    /// Alternatives; empty: every request.
    pub to: Vec<ToMatch>,
}

impl AuthorizationPolicy {
    /// Whether the policy targets `service`.
    pub fn targets(&self, service: &ObjectRef) -> bool {
        self.id.namespace == service.namespace
            && match &self.target {
                PolicyTarget::Namespace => true,
                PolicyTarget::Service(name) => *name == service.name,
            }
    }

    /// Whether any `to` entry uses a field only HTTP requests have.
    pub fn has_http_fields(&self) -> bool {
        self.to.iter().any(ToMatch::has_http_fields)
    }
}

/// One alternative of `from`: every field given must match (an empty list is a field not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FromMatch {
    pub identities: Vec<SpiffeId>,
    pub namespaces: Vec<String>,
    /// (namespace, name).
    pub service_accounts: Vec<(String, String)>,
    pub authenticated: bool,
    pub unauthenticated: bool,
    pub networks: Vec<Network>,
}

/// An address range with exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// `address/prefix`, the address with no bits set past the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { addr, prefix };
        if cidr.masked(addr) != bits(addr) {
            return Err(format!(
                "{s:?} has bits set past its /{prefix} prefix: write the network address"
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let (v, width) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (u128::from(a), 128u32),
        };
        let host_bits = width - u32::from(self.prefix);
        if host_bits >= 128 {
            0
        } else {
            (v >> host_bits) << host_bits
        }
    }

    /// Whether `ip` is in the range. An IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits(self.addr)
    }

    /// Whether every address of `other` is in this range.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One alternative of `to`: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToMatch {
    pub ports: Vec<u16>,
    pub methods: Vec<String>,
    pub paths: Vec<PathMatch>,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
}

impl ToMatch {
    pub fn has_http_fields(&self) -> bool {
        !(self.methods.is_empty() && self.paths.is_empty() && self.headers.is_empty())
    }
}

/// A token bucket: refills `requests_per_second`, holds at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOverride {
    pub identities: Vec<SpiffeId>,
    pub limit: RateLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub id: ObjectRef,
    /// The target Service, in the policy's namespace.
    pub service: String,
    pub total: Option<RateLimit>,
    pub per_identity: Option<RateLimit>,
    pub overrides: Vec<RateLimitOverride>,
}

impl RateLimitPolicy {
    pub fn targets(&self, service: &ObjectRef) -> bool {
        self.id.namespace == service.namespace && self.service == service.name
    }
}

// ---- TryFrom: the validation boundary -------------------------------------------------------

fn target(
    errs: &mut Errors,
    t: Option<&pb::PolicyTargetRef>,
    ns: &str,
    namespace_ok: bool,
) -> PolicyTarget {
    let f = "spec.targetRef";
    let Some(t) = t else {
        errs.add(f, "required: {kind: Service, name: NAME}");
        return PolicyTarget::Namespace;
    };
    match t.kind.as_str() {
        "Service" | "" => {
            errs.check(format!("{f}.name"), dns_label(&t.name));
            PolicyTarget::Service(t.name.clone())
        }
        "Namespace" if namespace_ok => {
            if t.name != ns {
                errs.add(
                    format!("{f}.name"),
                    format!(
                        "{:?}: a policy may target only its own namespace {ns:?}",
                        t.name
                    ),
                );
            }
            PolicyTarget::Namespace
        }
        other => {
            let kinds = if namespace_ok {
                "Service or Namespace"
            } else {
                "Service"
            };
            errs.add(
                format!("{f}.kind"),
                format!("{other:?} is not supported: use {kinds}"),
            );
            PolicyTarget::Namespace
        }
    }
}

fn too_long(errs: &mut Errors, f: &str, len: usize) {
    if len > MAX_LIST {
        errs.add(f, format!("at most {MAX_LIST} entries, got {len}"));
    }
}

fn identities(errs: &mut Errors, f: &str, ids: &[String]) -> Vec<SpiffeId> {
    too_long(errs, f, ids.len());
    ids.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            SpiffeId::parse(s)
                .map_err(|e| errs.add(format!("{f}[{i}]"), format!("{s:?}: {e}")))
                .ok()
        })
        .collect()
}

fn from_match(errs: &mut Errors, f: &str, m: &pb::AuthorizationFrom) -> FromMatch {
    let identities = identities(errs, &format!("{f}.identities"), &m.identities);
    too_long(errs, &format!("{f}.namespaces"), m.namespaces.len());
    for (i, ns) in m.namespaces.iter().enumerate() {
        errs.check(format!("{f}.namespaces[{i}]"), dns_label(ns));
    }
    too_long(
        errs,
        &format!("{f}.serviceAccounts"),
        m.service_accounts.len(),
    );
    let service_accounts = m
        .service_accounts
        .iter()
        .enumerate()
        .map(|(i, sa)| {
            errs.check(
                format!("{f}.serviceAccounts[{i}].namespace"),
                dns_label(&sa.namespace),
            );
            errs.check(
                format!("{f}.serviceAccounts[{i}].name"),
                dns_label(&sa.name),
            );
            (sa.namespace.clone(), sa.name.clone())
        })
        .collect();
    too_long(errs, &format!("{f}.networks"), m.networks.len());
    let mut networks = Vec::new();
    for (i, n) in m.networks.iter().enumerate() {
        let nf = format!("{f}.networks[{i}]");
        let Ok(cidr) = Cidr::parse(&n.cidr).map_err(|e| errs.add(format!("{nf}.cidr"), e)) else {
            continue;
        };
        let mut except = Vec::new();
        for (j, e) in n.except.iter().enumerate() {
            match Cidr::parse(e) {
                Ok(c) if cidr.covers(&c) => except.push(c),
                Ok(c) => errs.add(
                    format!("{nf}.except[{j}]"),
                    format!("{c} is not inside {cidr}"),
                ),
                Err(m) => errs.add(format!("{nf}.except[{j}]"), m),
            }
        }
        networks.push(Network { cidr, except });
    }
    let out = FromMatch {
        identities,
        namespaces: m.namespaces.clone(),
        service_accounts,
        authenticated: m.authenticated,
        unauthenticated: m.unauthenticated,
        networks,
    };
    let identity_fields =
        !(m.identities.is_empty() && m.namespaces.is_empty() && m.service_accounts.is_empty())
            || m.authenticated;
    if !identity_fields && !m.unauthenticated && m.networks.is_empty() {
        errs.add(
            f,
            "an entry needs at least one field (identities, namespaces, serviceAccounts, authenticated, unauthenticated or networks); leave `from` out to match any client",
        );
    }
    if m.unauthenticated && identity_fields {
        errs.add(
            format!("{f}.unauthenticated"),
            "a plaintext client has no identity, so this entry could never match: put unauthenticated in an entry of its own",
        );
    }
    out
}

fn to_match(errs: &mut Errors, f: &str, m: &pb::AuthorizationTo) -> ToMatch {
    too_long(errs, &format!("{f}.ports"), m.ports.len());
    let ports = m
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            port_number(*p)
                .map_err(|e| errs.add(format!("{f}.ports[{i}]"), e))
                .ok()
        })
        .collect();
    too_long(errs, &format!("{f}.methods"), m.methods.len());
    for (i, method) in m.methods.iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        if METHODS.contains(&upper.as_str()) && upper != *method {
            errs.add(
                format!("{f}.methods[{i}]"),
                format!("{method:?}: methods are case-sensitive; did you mean {upper:?}?"),
            );
        } else if header_name(method).is_err() {
            errs.add(
                format!("{f}.methods[{i}]"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
    too_long(errs, &format!("{f}.paths"), m.paths.len());
    let mut paths = Vec::new();
    for (i, p) in m.paths.iter().enumerate() {
        let pf = format!("{f}.paths[{i}]");
        errs.check(format!("{pf}.value"), path_value(&p.value));
        match pb::path_match::Type::try_from(p.r#type) {
            Ok(pb::path_match::Type::Exact) => paths.push(PathMatch::Exact(p.value.clone())),
            Ok(pb::path_match::Type::PathPrefix) => {
                let v = p.value.trim_end_matches('/');
                paths.push(PathMatch::Prefix(if v.is_empty() {
                    "/".into()
                } else {
                    v.into()
                }));
            }
            _ => errs.add(format!("{pf}.type"), "required: Exact or PathPrefix"),
        }
    }
    too_long(errs, &format!("{f}.headers"), m.headers.len());
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        errs.check(format!("{f}.headers[{i}].name"), header_name(&h.name));
        errs.check(format!("{f}.headers[{i}].value"), header_value(&h.value));
        headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
    }
    let out = ToMatch {
        ports,
        methods: m.methods.clone(),
        paths,
        headers,
    };
    if m.ports.is_empty() && !out.has_http_fields() {
        errs.add(
            f,
            "an entry needs at least one field (ports, methods, paths or headers); leave `to` out to match every request",
        );
    }
    out
}

impl TryFrom<pb::AuthorizationPolicy> for AuthorizationPolicy {
    type Error = Invalid;

    fn try_from(p: pb::AuthorizationPolicy) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        errs.check("metadata.namespace", dns_label(&p.namespace));
        errs.check("metadata.name", dns_label(&p.name));
        let target = target(&mut errs, p.target_ref.as_ref(), &p.namespace, true);
        let action = match pb::AuthorizationAction::try_from(p.action) {
            Ok(pb::AuthorizationAction::Allow) => AuthzAction::Allow,
            Ok(pb::AuthorizationAction::Deny) => AuthzAction::Deny,
            _ => {
                errs.add("spec.action", "required: Allow or Deny");
                AuthzAction::Deny
            }
        };
        let mode = match pb::PolicyMode::try_from(p.mode) {
            Ok(pb::PolicyMode::Unspecified | pb::PolicyMode::Enforce) => PolicyMode::Enforce,
            Ok(pb::PolicyMode::Audit) => PolicyMode::Audit,
            Err(_) => {
                errs.add("spec.mode", "must be Enforce or Audit");
                PolicyMode::Enforce
            }
        };
        too_long(&mut errs, "spec.from", p.from.len());
        too_long(&mut errs, "spec.to", p.to.len());
        let from = p
            .from
            .iter()
            .enumerate()
            .map(|(i, m)| from_match(&mut errs, &format!("spec.from[{i}]"), m))
            .collect();
        let to =
            p.to.iter()
                .enumerate()
                .map(|(i, m)| to_match(&mut errs, &format!("spec.to[{i}]"), m))
                .collect();
        errs.finish(|| AuthorizationPolicy {
            id: ObjectRef::new(p.namespace, p.name),
            target,
            action,
            mode,
            from,
            to,
        })
    }
}

fn rate_limit(errs: &mut Errors, f: &str, rps: u32, burst: u32) -> RateLimit {
    if rps == 0 || rps > MAX_REQUESTS_PER_SECOND {
        errs.add(
            format!("{f}.requestsPerSecond"),
            format!("must be between 1 and {MAX_REQUESTS_PER_SECOND}, got {rps}"),
        );
    }
    let burst = if burst == 0 { rps } else { burst };
    if burst < rps {
        errs.add(
            format!("{f}.burst"),
            format!("{burst} is less than requestsPerSecond {rps}: a bucket must hold at least one second of requests"),
        );
    } else if burst > MAX_REQUESTS_PER_SECOND {
        errs.add(
            format!("{f}.burst"),
            format!("must be at most {MAX_REQUESTS_PER_SECOND}, got {burst}"),
        );
    }
    RateLimit {
        requests_per_second: rps,
        burst,
    }
}

impl TryFrom<pb::RateLimitPolicy> for RateLimitPolicy {
    type Error = Invalid;

    fn try_from(p: pb::RateLimitPolicy) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        errs.check("metadata.namespace", dns_label(&p.namespace));
        errs.check("metadata.name", dns_label(&p.name));
        let service = match target(&mut errs, p.target_ref.as_ref(), &p.namespace, false) {
            PolicyTarget::Service(s) => s,
            PolicyTarget::Namespace => String::new(),
        };
        let total = p
            .total
            .as_ref()
            .map(|l| rate_limit(&mut errs, "spec.total", l.requests_per_second, l.burst));
        let per_identity = p.per_identity.as_ref().map(|l| {
            rate_limit(
                &mut errs,
                "spec.perIdentity",
                l.requests_per_second,
                l.burst,
            )
        });
        too_long(&mut errs, "spec.overrides", p.overrides.len());
        let mut overrides: Vec<RateLimitOverride> = Vec::new();
        for (i, o) in p.overrides.iter().enumerate() {
            let f = format!("spec.overrides[{i}]");
            if o.identities.is_empty() {
                errs.add(
                    format!("{f}.identities"),
                    "at least one identity is required",
                );
            }
            let ids = identities(&mut errs, &format!("{f}.identities"), &o.identities);
            for (j, id) in ids.iter().enumerate() {
                if overrides.iter().any(|o| o.identities.contains(id)) {
                    errs.add(
                        format!("{f}.identities[{j}]"),
                        format!("{id} already has an override"),
                    );
                }
            }
            let limit = rate_limit(&mut errs, &f, o.requests_per_second, o.burst);
            overrides.push(RateLimitOverride {
                identities: ids,
                limit,
            });
        }
        if total.is_none() && per_identity.is_none() && overrides.is_empty() {
            errs.add(
                "spec",
                "a rate limit needs at least one of total, perIdentity or overrides",
            );
        }
        errs.finish(|| RateLimitPolicy {
            id: ObjectRef::new(p.namespace, p.name),
            service,
            total,
            per_identity,
            overrides,
        })
    }
}

// ---- back to the wire ------------------------------------------------------------------------

fn pb_target(t: &PolicyTarget, ns: &str) -> pb::PolicyTargetRef {
    match t {
        PolicyTarget::Service(name) => pb::PolicyTargetRef {
            kind: "Service".into(),
            name: name.clone(),
        },
        PolicyTarget::Namespace => pb::PolicyTargetRef {
            kind: "Namespace".into(),
            name: ns.to_owned(),
        },
    }
}

impl From<&AuthorizationPolicy> for pb::AuthorizationPolicy {
    fn from(p: &AuthorizationPolicy) -> Self {
        pb::AuthorizationPolicy {
            namespace: p.id.namespace.clone(),
            name: p.id.name.clone(),
            target_ref: Some(pb_target(&p.target, &p.id.namespace)),
            action: match p.action {
                AuthzAction::Allow => pb::AuthorizationAction::Allow,
                AuthzAction::Deny => pb::AuthorizationAction::Deny,
            }
            .into(),
            mode: match p.mode {
                PolicyMode::Enforce => pb::PolicyMode::Enforce,
                PolicyMode::Audit => pb::PolicyMode::Audit,
            }
            .into(),
            from: p
                .from
                .iter()
                .map(|m| pb::AuthorizationFrom {
                    identities: m.identities.iter().map(ToString::to_string).collect(),
                    namespaces: m.namespaces.clone(),
                    service_accounts: m
                        .service_accounts
                        .iter()
                        .map(|(namespace, name)| pb::ServiceAccountRef {
                            namespace: namespace.clone(),
                            name: name.clone(),
                        })
                        .collect(),
                    authenticated: m.authenticated,
                    unauthenticated: m.unauthenticated,
                    networks: m
                        .networks
                        .iter()
                        .map(|n| pb::NetworkMatch {
                            cidr: n.cidr.to_string(),
                            except: n.except.iter().map(ToString::to_string).collect(),
                        })
                        .collect(),
                })
                .collect(),
            to: p
                .to
                .iter()
                .map(|m| pb::AuthorizationTo {
                    ports: m.ports.iter().map(|p| u32::from(*p)).collect(),
                    methods: m.methods.clone(),
                    paths: m
                        .paths
                        .iter()
                        .map(|p| {
                            let (ty, value) = match p {
                                PathMatch::Exact(v) => (pb::path_match::Type::Exact, v.clone()),
                                PathMatch::Prefix(v) => {
                                    (pb::path_match::Type::PathPrefix, v.clone())
                                }
                            };
                            pb::PathMatch {
                                r#type: ty.into(),
                                value,
                            }
                        })
                        .collect(),
                    headers: m
                        .headers
                        .iter()
                        .map(|(name, value)| pb::HeaderMatch {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn pb_limit(l: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests_per_second: l.requests_per_second,
        burst: l.burst,
    }
}

impl From<&RateLimitPolicy> for pb::RateLimitPolicy {
    fn from(p: &RateLimitPolicy) -> Self {
        pb::RateLimitPolicy {
            namespace: p.id.namespace.clone(),
            name: p.id.name.clone(),
            target_ref: Some(pb_target(
                &PolicyTarget::Service(p.service.clone()),
                &p.id.namespace,
            )),
            total: p.total.as_ref().map(pb_limit),
            per_identity: p.per_identity.as_ref().map(pb_limit),
            overrides: p
                .overrides
                .iter()
                .map(|o| pb::RateLimitOverride {
                    identities: o.identities.iter().map(ToString::to_string).collect(),
                    requests_per_second: o.limit.requests_per_second,
                    burst: o.limit.burst,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
