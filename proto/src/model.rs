//! The control plane's validated domain types, and the one validation boundary: `TryFrom` of
//! each `weft.mesh.v1` wire type. Config API requests, registrations and values read from the
//! store all pass through here; past it, code trusts its input.
//!
//! Errors are collected, not short-circuited: an [`Invalid`] lists every problem of a message,
//! each with its field path in manifest terms (`spec.rules[0].backendRefs[1].weight`), so
//! `weftctl apply` can point at the exact YAML field. Cross-object checks (does a backendRef name
//! an existing Service?) need the store and live in the config service.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::mesh::v1 as pb;
use weft_certs::SpiffeId;

mod policy;
mod traffic;
pub use policy::*;
pub use traffic::*;

/// The largest backendRef weight (Gateway API's limit).
pub const MAX_BACKEND_WEIGHT: i64 = 1_000_000;
/// The largest endpoint weight.
pub const MAX_ENDPOINT_WEIGHT: u32 = 10_000;
/// Most rules in one HTTPRoute (Gateway API's limit).
pub const MAX_RULES: usize = 16;
/// Most retries after the first attempt.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Retry backoff when a route sets none.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Longest timeout or backoff accepted (Gateway API durations top out near 100,000 h; no sane
/// request waits a day).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// One problem, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Manifest-terms path, e.g. `spec.ports[0].protocol`.
    pub field: String,
    pub message: String,
}

/// Every problem found in one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Collects field errors while a message is checked.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, field: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.add(field, m);
        }
    }

    fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// A namespaced object name, displayed `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `namespace/name`, as the [`fmt::Display`] form, built without the formatting machinery
    /// (it keys maps on the data path).
    pub fn key(&self) -> String {
        let mut k = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        k.push_str(&self.namespace);
        k.push('/');
        k.push_str(&self.name);
        k
    }

    /// Parses `namespace/name`, both DNS labels.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not of the form NAMESPACE/NAME"))?;
        dns_label(ns).map_err(|e| format!("namespace: {e}"))?;
        dns_label(name).map_err(|e| format!("name: {e}"))?;
        Ok(Self::new(ns, name))
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: ObjectRef,
    pub ports: Vec<Port>,
    /// Empty: only endpoints registered under this service's name.
    pub selector: BTreeMap<String, String>,
    /// How proxies balance, eject and cap requests to its endpoints.
    pub traffic: TrafficPolicy,
    /// `spec.defaultInboundPolicy`; `None`: the control plane's `--default-inbound-policy`.
    pub default_inbound: Option<DefaultInbound>,
}

impl Service {
    /// Whether an endpoint belongs to this service (see `weft.mesh.v1.Service.selector`).
    pub fn selects(&self, ep: &Endpoint) -> bool {
        ep.service.namespace == self.id.namespace
            && (ep.service.name == self.id.name
                || (!self.selector.is_empty()
                    && self
                        .selector
                        .iter()
                        .all(|(k, v)| ep.labels.get(k) == Some(v))))
    }

    pub fn port(&self, number: u16) -> Option<&Port> {
        self.ports.iter().find(|p| p.port == number)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The service it was registered under.
    pub service: ObjectRef,
    pub address: SocketAddr,
    pub identity: SpiffeId,
    pub labels: BTreeMap<String, String>,
    pub zone: Option<String>,
    /// 1..=MAX_ENDPOINT_WEIGHT.
    pub weight: u32,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    pub id: ObjectRef,
    pub parents: Vec<ParentRef>,
    pub rules: Vec<Rule>,
    /// Applies to the rules that have `retry`.
    pub retry_policy: RetryPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub service: ObjectRef,
    /// None: every port of the service.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: Option<String>,
    /// Never empty (an empty list on the wire means prefix "/").
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub query_params: Vec<(String, String)>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: ObjectRef,
    pub port: Option<u16>,
    pub weight: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub codes: Vec<u16>,
    pub attempts: u32,
    pub backoff: Duration,
}

// ---- syntax checks -------------------------------------------------------------------------

/// RFC 1123 label: what Kubernetes allows for namespaces and most names.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{s:?} contains {c:?}: use lowercase letters, digits and '-'"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("{s:?} must start and end with a letter or digit"));
    }
    Ok(())
}

fn label_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1 to 63 characters"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !s.chars().all(ok) {
        return Err(format!(
            "{s:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    let alnum_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !alnum_ends {
        return Err(format!("{s:?} must start and end with a letter or digit"));
    }
    Ok(())
}

/// Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn label_key(s: &str) -> Result<(), String> {
    match s.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return Err(format!("prefix of {s:?} must be 1 to 253 characters"));
            }
            for part in prefix.split('.') {
                dns_label(part).map_err(|e| format!("prefix of {s:?}: {e}"))?;
            }
            label_name(name)
        }
        None => label_name(s),
    }
}

/// Kubernetes label value: empty, or like a label name.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() { Ok(()) } else { label_name(s) }
}

fn labels(errs: &mut Errors, field: &str, map: &BTreeMap<String, String>) {
    for (k, v) in map {
        errs.check(format!("{field}[{k:?}]"), label_key(k));
        errs.check(format!("{field}[{k:?}]"), label_value(v));
    }
}

fn port_number(p: u32) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(0) | Err(_) => Err(format!("{p} is not a port (1 to 65535)")),
        Ok(n) => Ok(n),
    }
}

fn header_name(s: &str) -> Result<(), String> {
    // RFC 9110 token characters.
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || s.len() > 256 || !s.chars().all(tchar) {
        return Err(format!("{s:?} is not a valid HTTP header name"));
    }
    Ok(())
}

fn header_value(s: &str) -> Result<(), String> {
    if s.len() > 4096 || s.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(format!("{s:?} is not a valid HTTP header value"));
    }
    Ok(())
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn path_value(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with '/'"));
    }
    if s.len() > 1024 {
        return Err("is longer than 1024 characters".into());
    }
    if s.contains("//") {
        return Err(format!("{s:?} must not contain \"//\""));
    }
    if s.contains(['?', '#']) || s.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!(
            "{s:?} must not contain '?', '#', spaces or control characters"
        ));
    }
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{s:?} must not contain \".\" or \"..\" segments"));
    }
    Ok(())
}

/// A wire duration as the domain holds it. Whole milliseconds only: the store keeps documents in
/// their manifest form, whose Gateway API durations (GEP-2257) have no finer unit, so a finer
/// value would be validated as sent and read back changed (found by the `config_document` fuzz
/// target).
fn duration(d: &prost_types::Duration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err("must not be negative".into());
    }
    if d.nanos >= 1_000_000_000 {
        return Err(format!("nanos {} is out of range (0..1e9)", d.nanos));
    }
    if d.nanos % 1_000_000 != 0 {
        return Err(format!(
            "{}s {}ns is not a whole number of milliseconds (the smallest unit of a Gateway API duration)",
            d.seconds, d.nanos
        ));
    }
    let d = Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs());
    if d > MAX_DURATION {
        return Err(format!("{} exceeds 24h", humantime::format_duration(d)));
    }
    Ok(d)
}

/// Group and kind of a parentRef or backendRef: only core Services are meaningful in a mesh.
fn service_kind(errs: &mut Errors, field: &str, group: &str, kind: &str) {
    if !group.is_empty() && group != "core" {
        errs.add(
            format!("{field}.group"),
            format!("{group:?} is not supported: use \"\" (core)"),
        );
    }
    if !kind.is_empty() && kind != "Service" {
        errs.add(
            format!("{field}.kind"),
            format!("{kind:?} is not supported: use \"Service\""),
        );
    }
}

// ---- TryFrom: the validation boundary -------------------------------------------------------

impl TryFrom<pb::Service> for Service {
    type Error = Invalid;

    fn try_from(s: pb::Service) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        errs.check("metadata.namespace", dns_label(&s.namespace));
        errs.check("metadata.name", dns_label(&s.name));
        if s.ports.is_empty() {
            errs.add("spec.ports", "at least one port is required");
        }
        let mut ports: Vec<Port> = Vec::with_capacity(s.ports.len());
        for (i, p) in s.ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            let number = port_number(p.port).map_err(|m| errs.add(format!("{f}.port"), m));
            let name = (!p.name.is_empty()).then(|| p.name.clone());
            if let Some(n) = &name {
                errs.check(format!("{f}.name"), dns_label(n));
            }
            let protocol = match pb::Protocol::try_from(p.protocol) {
                Ok(pb::Protocol::Http1) => Some(Protocol::Http1),
                Ok(pb::Protocol::Http2) => Some(Protocol::Http2),
                Ok(pb::Protocol::Grpc) => Some(Protocol::Grpc),
                Ok(pb::Protocol::Tcp) => Some(Protocol::Tcp),
                _ => {
                    errs.add(
                        format!("{f}.protocol"),
                        "required: one of http1, http2, grpc, tcp",
                    );
                    None
                }
            };
            if let Ok(n) = number {
                if ports.iter().any(|q| q.port == n) {
                    errs.add(format!("{f}.port"), format!("port {n} is listed twice"));
                }
                if name.is_some() && ports.iter().any(|q| q.name == name) {
                    errs.add(format!("{f}.name"), "port names must be unique");
                }
                if let Some(protocol) = protocol {
                    ports.push(Port {
                        name,
                        port: n,
                        protocol,
                    });
                }
            }
        }
        labels(&mut errs, "spec.selector", &s.selector);
        let traffic = traffic::traffic_policy(&mut errs, s.traffic_policy.as_ref());
        let default_inbound = DefaultInbound::from_pb(s.default_inbound_policy)
            .map_err(|m| errs.add("spec.defaultInboundPolicy", m))
            .unwrap_or(None);
        errs.finish(|| Service {
            id: ObjectRef::new(s.namespace, s.name),
            ports,
            selector: s.selector,
            traffic,
            default_inbound,
        })
    }
}

impl TryFrom<pb::Endpoint> for Endpoint {
    type Error = Invalid;

    fn try_from(e: pb::Endpoint) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        errs.check("namespace", dns_label(&e.namespace));
        errs.check("service", dns_label(&e.service));
        let address = e.address.parse::<SocketAddr>().map_err(|_| {
            errs.add(
                "address",
                format!(
                    "{:?} is not IP:PORT (IPv6 in brackets: [fd00::1]:8080)",
                    e.address
                ),
            )
        });
        if let Ok(a) = &address
            && (a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast())
        {
            errs.add(
                "address",
                format!("{a} is not a unicast address with a port"),
            );
        }
        let identity = e
            .identity
            .parse::<SpiffeId>()
            .map_err(|err| errs.add("identity", err.to_string()));
        labels(&mut errs, "labels", &e.labels);
        if !e.zone.is_empty() {
            errs.check("zone", label_value(&e.zone));
        }
        let weight = if e.weight == 0 { 1 } else { e.weight };
        if weight > MAX_ENDPOINT_WEIGHT {
            errs.add(
                "weight",
                format!("must be between 1 and {MAX_ENDPOINT_WEIGHT}, got {weight}"),
            );
        }
        match (address, identity) {
            (Ok(address), Ok(identity)) if errs.0.is_empty() => Ok(Endpoint {
                service: ObjectRef::new(e.namespace, e.service),
                address,
                identity,
                labels: e.labels,
                zone: (!e.zone.is_empty()).then_some(e.zone),
                weight,
                ready: e.ready,
            }),
            _ => Err(Invalid(errs.0)),
        }
    }
}

impl TryFrom<pb::HttpRoute> for HttpRoute {
    type Error = Invalid;

    fn try_from(r: pb::HttpRoute) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        errs.check("metadata.namespace", dns_label(&r.namespace));
        errs.check("metadata.name", dns_label(&r.name));
        let ns_or = |ns: &str| {
            if ns.is_empty() {
                r.namespace.clone()
            } else {
                ns.to_owned()
            }
        };

        if r.parent_refs.is_empty() {
            errs.add("spec.parentRefs", "at least one parent Service is required");
        }
        let mut parents = Vec::new();
        for (i, p) in r.parent_refs.iter().enumerate() {
            let f = format!("spec.parentRefs[{i}]");
            service_kind(&mut errs, &f, &p.group, &p.kind);
            let ns = ns_or(&p.namespace);
            errs.check(format!("{f}.namespace"), dns_label(&ns));
            errs.check(format!("{f}.name"), dns_label(&p.name));
            let port = match p.port {
                0 => None,
                n => port_number(n)
                    .map_err(|m| errs.add(format!("{f}.port"), m))
                    .ok(),
            };
            parents.push(ParentRef {
                service: ObjectRef::new(ns, p.name.clone()),
                port,
            });
        }

        if r.rules.is_empty() {
            errs.add("spec.rules", "at least one rule is required");
        }
        if r.rules.len() > MAX_RULES {
            errs.add(
                "spec.rules",
                format!("at most {MAX_RULES} rules, got {}", r.rules.len()),
            );
        }
        let mut rules = Vec::new();
        for (i, rule) in r.rules.iter().enumerate() {
            let f = format!("spec.rules[{i}]");
            rules.push(self::rule(&mut errs, &f, rule, &ns_or(""), &ns_or));
        }
        let retry_policy = traffic::retry_policy(&mut errs, r.retry_policy.as_ref());
        errs.finish(|| HttpRoute {
            id: ObjectRef::new(r.namespace.clone(), r.name.clone()),
            parents,
            rules,
            retry_policy,
        })
    }
}

fn rule(
    errs: &mut Errors,
    f: &str,
    rule: &pb::HttpRouteRule,
    route_ns: &str,
    ns_or: &dyn Fn(&str) -> String,
) -> Rule {
    let name = (!rule.name.is_empty()).then(|| rule.name.clone());
    if let Some(n) = &name {
        errs.check(format!("{f}.name"), dns_label(n));
    }
    let mut matches = Vec::new();
    for (j, m) in rule.matches.iter().enumerate() {
        matches.push(route_match(errs, &format!("{f}.matches[{j}]"), m));
    }
    if matches.is_empty() {
        matches.push(RouteMatch {
            path: PathMatch::Prefix("/".into()),
            headers: vec![],
            query_params: vec![],
            method: None,
        });
    }

    if rule.backend_refs.is_empty() {
        errs.add(
            format!("{f}.backendRefs"),
            "at least one backend is required",
        );
    }
    let mut backends = Vec::new();
    for (k, b) in rule.backend_refs.iter().enumerate() {
        let bf = format!("{f}.backendRefs[{k}]");
        service_kind(errs, &bf, &b.group, &b.kind);
        let ns = ns_or(&b.namespace);
        if ns != route_ns {
            errs.add(
                format!("{bf}.namespace"),
                format!(
                    "{ns:?}: a backend must be in the route's namespace {route_ns:?} (cross-namespace references need a ReferenceGrant, not supported yet)"
                ),
            );
        }
        errs.check(format!("{bf}.name"), dns_label(&b.name));
        let port = match b.port {
            0 => None,
            n => port_number(n)
                .map_err(|m| errs.add(format!("{bf}.port"), m))
                .ok(),
        };
        let weight = b.weight.unwrap_or(1);
        if !(0..=MAX_BACKEND_WEIGHT).contains(&weight) {
            errs.add(
                format!("{bf}.weight"),
                format!("must be between 0 and {MAX_BACKEND_WEIGHT}, got {weight}"),
            );
        }
        backends.push(Backend {
            service: ObjectRef::new(ns, b.name.clone()),
            port,
            weight: u32::try_from(weight.clamp(0, MAX_BACKEND_WEIGHT)).unwrap_or(0),
        });
    }
    let weights_valid = rule
        .backend_refs
        .iter()
        .all(|b| (0..=MAX_BACKEND_WEIGHT).contains(&b.weight.unwrap_or(1)));
    if !backends.is_empty() && weights_valid && backends.iter().all(|b| b.weight == 0) {
        errs.add(
            format!("{f}.backendRefs"),
            "every weight is 0: at least one backend must take traffic",
        );
    }

    let mut timeouts = Timeouts::default();
    if let Some(t) = &rule.timeouts {
        if let Some(d) = &t.request {
            timeouts.request = duration(d)
                .map_err(|m| errs.add(format!("{f}.timeouts.request"), m))
                .ok();
        }
        if let Some(d) = &t.backend_request {
            timeouts.backend_request = duration(d)
                .map_err(|m| errs.add(format!("{f}.timeouts.backendRequest"), m))
                .ok();
        }
        if let (Some(req), Some(backend)) = (timeouts.request, timeouts.backend_request)
            && backend > req
        {
            errs.add(
                format!("{f}.timeouts.backendRequest"),
                format!(
                    "{} exceeds request timeout {}",
                    humantime::format_duration(backend),
                    humantime::format_duration(req)
                ),
            );
        }
    }

    let retry = rule.retry.as_ref().map(|r| {
        let mut codes = Vec::new();
        for (c, code) in r.codes.iter().enumerate() {
            match u16::try_from(*code) {
                Ok(n @ 500..=599) => {
                    if codes.contains(&n) {
                        errs.add(
                            format!("{f}.retry.codes[{c}]"),
                            format!("{n} is listed twice"),
                        );
                    }
                    codes.push(n);
                }
                _ => errs.add(
                    format!("{f}.retry.codes[{c}]"),
                    format!("{code} is not a 5xx status code (500 to 599)"),
                ),
            }
        }
        if r.attempts > MAX_RETRY_ATTEMPTS {
            errs.add(
                format!("{f}.retry.attempts"),
                format!("must be at most {MAX_RETRY_ATTEMPTS}, got {}", r.attempts),
            );
        }
        let backoff = match &r.backoff {
            Some(d) => duration(d)
                .map_err(|m| errs.add(format!("{f}.retry.backoff"), m))
                .unwrap_or(DEFAULT_RETRY_BACKOFF),
            None => DEFAULT_RETRY_BACKOFF,
        };
        Retry {
            codes,
            attempts: r.attempts,
            backoff,
        }
    });

    Rule {
        name,
        matches,
        backends,
        timeouts,
        retry,
    }
}

fn route_match(errs: &mut Errors, f: &str, m: &pb::HttpRouteMatch) -> RouteMatch {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            errs.check(format!("{f}.path.value"), path_value(&p.value));
            match pb::path_match::Type::try_from(p.r#type) {
                Ok(pb::path_match::Type::Exact) => PathMatch::Exact(p.value.clone()),
                Ok(pb::path_match::Type::PathPrefix) => {
                    // "/foo/" and "/foo" are the same prefix (whole segments).
                    let v = p.value.trim_end_matches('/');
                    PathMatch::Prefix(if v.is_empty() { "/".into() } else { v.into() })
                }
                _ => {
                    errs.add(format!("{f}.path.type"), "required: Exact or PathPrefix");
                    PathMatch::Prefix("/".into())
                }
            }
        }
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for (h, hm) in m.headers.iter().enumerate() {
        let hf = format!("{f}.headers[{h}]");
        errs.check(format!("{hf}.name"), header_name(&hm.name));
        errs.check(format!("{hf}.value"), header_value(&hm.value));
        let name = hm.name.to_ascii_lowercase();
        if headers.iter().any(|(n, _)| *n == name) {
            errs.add(
                format!("{hf}.name"),
                format!("{:?} is matched twice", hm.name),
            );
        }
        headers.push((name, hm.value.clone()));
    }
    let mut query_params: Vec<(String, String)> = Vec::new();
    for (q, qm) in m.query_params.iter().enumerate() {
        let qf = format!("{f}.queryParams[{q}]");
        if qm.name.is_empty() || qm.name.len() > 256 || qm.name.contains(['&', '=', '#']) {
            errs.add(
                format!("{qf}.name"),
                format!("{:?} is not a valid query parameter name", qm.name),
            );
        }
        errs.check(format!("{qf}.value"), header_value(&qm.value));
        if query_params.iter().any(|(n, _)| *n == qm.name) {
            errs.add(
                format!("{qf}.name"),
                format!("{:?} is matched twice", qm.name),
            );
        }
        query_params.push((qm.name.clone(), qm.value.clone()));
    }
    let method = (!m.method.is_empty()).then(|| m.method.clone());
    if let Some(method) = &method
        && !METHODS.contains(&method.as_str())
    {
        errs.add(
            format!("{f}.method"),
            format!("{method:?} is not one of {}", METHODS.join(", ")),
        );
    }
    RouteMatch {
        path,
        headers,
        query_params,
        method,
    }
}

// ---- back to the wire ------------------------------------------------------------------------

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl From<&Protocol> for pb::Protocol {
    fn from(p: &Protocol) -> Self {
        match p {
            Protocol::Http1 => pb::Protocol::Http1,
            Protocol::Http2 => pb::Protocol::Http2,
            Protocol::Grpc => pb::Protocol::Grpc,
            Protocol::Tcp => pb::Protocol::Tcp,
        }
    }
}

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> Self {
        pb::Service {
            namespace: s.id.namespace.clone(),
            name: s.id.name.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| pb::Port {
                    name: p.name.clone().unwrap_or_default(),
                    port: u32::from(p.port),
                    protocol: pb::Protocol::from(&p.protocol).into(),
                })
                .collect(),
            selector: s.selector.clone(),
            routes: vec![],
            traffic_policy: (s.traffic != TrafficPolicy::default())
                .then(|| pb::TrafficPolicy::from(&s.traffic)),
            default_inbound_policy: DefaultInbound::to_pb(s.default_inbound).into(),
            authorization_policies: vec![],
            rate_limit_policy: None,
        }
    }
}

impl From<&Endpoint> for pb::Endpoint {
    fn from(e: &Endpoint) -> Self {
        pb::Endpoint {
            namespace: e.service.namespace.clone(),
            service: e.service.name.clone(),
            address: e.address.to_string(),
            identity: e.identity.to_string(),
            labels: e.labels.clone(),
            zone: e.zone.clone().unwrap_or_default(),
            weight: e.weight,
            ready: e.ready,
        }
    }
}

impl From<&HttpRoute> for pb::HttpRoute {
    fn from(r: &HttpRoute) -> Self {
        pb::HttpRoute {
            namespace: r.id.namespace.clone(),
            name: r.id.name.clone(),
            parent_refs: r
                .parents
                .iter()
                .map(|p| pb::ParentRef {
                    group: String::new(),
                    kind: "Service".into(),
                    namespace: p.service.namespace.clone(),
                    name: p.service.name.clone(),
                    port: p.port.map_or(0, u32::from),
                })
                .collect(),
            rules: r.rules.iter().map(pb::HttpRouteRule::from).collect(),
            retry_policy: (r.retry_policy != RetryPolicy::default())
                .then(|| pb::RetryPolicy::from(&r.retry_policy)),
        }
    }
}

impl From<&Rule> for pb::HttpRouteRule {
    fn from(r: &Rule) -> Self {
        pb::HttpRouteRule {
            name: r.name.clone().unwrap_or_default(),
            matches: r
                .matches
                .iter()
                .map(|m| {
                    let (ty, value) = match &m.path {
                        PathMatch::Exact(v) => (pb::path_match::Type::Exact, v.clone()),
                        PathMatch::Prefix(v) => (pb::path_match::Type::PathPrefix, v.clone()),
                    };
                    pb::HttpRouteMatch {
                        path: Some(pb::PathMatch {
                            r#type: ty.into(),
                            value,
                        }),
                        headers: m
                            .headers
                            .iter()
                            .map(|(name, value)| pb::HeaderMatch {
                                name: name.clone(),
                                value: value.clone(),
                            })
                            .collect(),
                        query_params: m
                            .query_params
                            .iter()
                            .map(|(name, value)| pb::QueryParamMatch {
                                name: name.clone(),
                                value: value.clone(),
                            })
                            .collect(),
                        method: m.method.clone().unwrap_or_default(),
                    }
                })
                .collect(),
            backend_refs: r
                .backends
                .iter()
                .map(|b| pb::BackendRef {
                    group: String::new(),
                    kind: "Service".into(),
                    namespace: b.service.namespace.clone(),
                    name: b.service.name.clone(),
                    port: b.port.map_or(0, u32::from),
                    weight: Some(i64::from(b.weight)),
                })
                .collect(),
            timeouts: (r.timeouts != Timeouts::default()).then(|| pb::Timeouts {
                request: r.timeouts.request.map(pb_duration),
                backend_request: r.timeouts.backend_request.map(pb_duration),
            }),
            retry: r.retry.as_ref().map(|rt| pb::Retry {
                codes: rt.codes.iter().map(|c| u32::from(*c)).collect(),
                attempts: rt.attempts,
                backoff: Some(pb_duration(rt.backoff)),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
