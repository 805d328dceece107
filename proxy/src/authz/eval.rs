//! The inbound authorization decision: one pure function, [`decide`], of (the workload's compiled
//! [`Inbound`] policy, the facts of one request or connection) → [`Decision`]. The data path
//! calls it with no trace on every request; `explain` calls it with a trace, so the two cannot
//! disagree. No I/O, no clock, no shared state.
//!
//! The order (what wins):
//! 1. a health probe (GET or HEAD of a `--probe-paths` port and path) is allowed, whoever asks;
//! 2. a matching enforced Deny denies (the first by id);
//! 3. if an enforced Allow *applies to the port* (its `to` is empty, or an entry lists the port
//!    or lists no ports), one of them must match: the first matching one allows, and if none
//!    matches the request is denied by [`DecidedBy::NoAllowMatched`], named after the first
//!    applicable Allow (by id) — not by the default, which was never consulted;
//! 4. otherwise the default: `allow`, `authenticated` (any verified mesh identity) or `deny`.
//!
//! Audit policies never change the decision. The decision is computed a second time as if they
//! were enforced; where the two differ, [`Decision::audit`] says which way and names the audit
//! policy that decided the second time.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use weft_certs::SpiffeId;
use weft_proto::model::{
    AuthorizationPolicy, AuthzAction, DefaultInbound, FromMatch, ObjectRef, PathMatch, PolicyMode,
    RateLimitPolicy, ToMatch,
};

/// A workload's inbound policy, compiled once per configuration snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The services this workload serves (for logs and `explain`).
    pub services: Vec<ObjectRef>,
    /// Every policy targeting those services, sorted by id and deduplicated: "the first" in the
    /// rules above means the first in this order.
    pub policies: Vec<Arc<AuthorizationPolicy>>,
    /// What applies when no Allow policy applies to the port.
    pub default: DefaultInbound,
    /// Applied by the caller after an allow (see `ratelimit`).
    pub rate_limit: Option<Arc<RateLimitPolicy>>,
    /// `--probe-paths`: (port, path), the paths already normalized.
    pub probes: Vec<(u16, String)>,
}

/// What is known about one inbound request or connection.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client's verified SPIFFE ID; `None` for a plaintext client.
    pub client: Option<&'a SpiffeId>,
    pub ip: IpAddr,
    /// The port the request is handed to.
    pub port: u16,
    /// `None` for an opaque TCP connection.
    pub http: Option<HttpFacts<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    pub method: &'a str,
    /// Already normalized (`normalize::normalize_path`).
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// What made the decision. Borrowed from the [`Inbound`], so deciding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy<'i> {
    /// A matching policy: an enforced Deny, or the enforced Allow that let the request in.
    /// Displayed `namespace/name`.
    Policy(&'i ObjectRef),
    /// Enforced Allow policies apply to the port and none matched; names the first of them.
    /// Displayed `allow-policies:namespace/name`.
    NoAllowMatched(&'i ObjectRef),
    /// No Allow policy applies to the port. Displayed `default:allow` (`authenticated`, `deny`).
    Default(DefaultInbound),
    /// A health probe path. Displayed `probe`.
    Probe,
}

impl fmt::Display for DecidedBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Policy(id) => write!(f, "{id}"),
            DecidedBy::NoAllowMatched(id) => write!(f, "allow-policies:{id}"),
            DecidedBy::Default(d) => write!(f, "default:{d}"),
            DecidedBy::Probe => f.write_str("probe"),
        }
    }
}

/// How the decision would change if the audit policies were enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    WouldDeny,
    WouldAllow,
}

impl AuditOutcome {
    /// The metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::WouldDeny => "would-deny",
            AuditOutcome::WouldAllow => "would-allow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'i> {
    pub allowed: bool,
    pub by: DecidedBy<'i>,
    /// Set when enforcing the audit policies would flip `allowed`: which way, and the audit
    /// policy responsible.
    pub audit: Option<(AuditOutcome, &'i ObjectRef)>,
}

/// One policy as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTrace {
    pub policy: ObjectRef,
    pub action: AuthzAction,
    pub mode: PolicyMode,
    pub matched: bool,
    /// When not matched: why, e.g. `from: namespace shop-admin not in [shop]`.
    pub why_not: Option<String>,
}

/// The decision for `facts` under `inbound`. With `trace`, one [`PolicyTrace`] per policy of
/// `inbound.policies` (in order, enforced and audit alike) is appended to it; without, nothing
/// is allocated.
pub fn decide<'i>(
    inbound: &'i Inbound,
    facts: &Facts<'_>,
    mut trace: Option<&mut Vec<PolicyTrace>>,
) -> Decision<'i> {
    let probe = facts.http.is_some_and(|h| {
        matches!(h.method, "GET" | "HEAD")
            && inbound
                .probes
                .iter()
                .any(|(port, path)| *port == facts.port && path == h.path)
    });
    if probe && trace.is_none() {
        return Decision {
            allowed: true,
            by: DecidedBy::Probe,
            audit: None,
        };
    }
    let client = Client::of(facts.client);
    let mut enforced = View::default();
    let mut all = View::default();
    for p in &inbound.policies {
        let audit = p.mode == PolicyMode::Audit;
        let needed = match p.action {
            AuthzAction::Deny if audit => all.deny.is_none(),
            AuthzAction::Deny => enforced.deny.is_none(),
            AuthzAction::Allow => {
                let applies = applies_to_port(p, facts.port);
                if applies {
                    all.applicable.get_or_insert(p);
                    if !audit {
                        enforced.applicable.get_or_insert(p);
                    }
                }
                applies
                    && if audit {
                        all.allow.is_none()
                    } else {
                        enforced.allow.is_none()
                    }
            }
        };
        let matched = if let Some(trace) = trace.as_deref_mut() {
            let why_not = why_not(p, facts, &client);
            let matched = why_not.is_none();
            trace.push(PolicyTrace {
                policy: p.id.clone(),
                action: p.action,
                mode: p.mode,
                matched,
                why_not,
            });
            matched
        } else {
            needed && matches(p, facts, &client)
        };
        if !(needed && matched) {
            continue;
        }
        for view in [Some(&mut all), (!audit).then_some(&mut enforced)]
            .into_iter()
            .flatten()
        {
            let slot = match p.action {
                AuthzAction::Deny => &mut view.deny,
                AuthzAction::Allow => &mut view.allow,
            };
            slot.get_or_insert(p);
        }
    }
    if probe {
        return Decision {
            allowed: true,
            by: DecidedBy::Probe,
            audit: None,
        };
    }
    let authenticated = facts.client.is_some();
    let (allowed, by, _) = enforced.outcome(inbound.default, authenticated);
    let (would, _, responsible) = all.outcome(inbound.default, authenticated);
    let audit = match responsible {
        Some(p) if would != allowed => Some((
            if would {
                AuditOutcome::WouldAllow
            } else {
                AuditOutcome::WouldDeny
            },
            p,
        )),
        _ => None,
    };
    Decision { allowed, by, audit }
}

/// The policies that decide one view (enforced only, or audit included): the first matching
/// Deny, the first matching Allow, the first Allow that applies to the port.
#[derive(Default)]
struct View<'i> {
    deny: Option<&'i Arc<AuthorizationPolicy>>,
    allow: Option<&'i Arc<AuthorizationPolicy>>,
    applicable: Option<&'i Arc<AuthorizationPolicy>>,
}

impl<'i> View<'i> {
    /// (allowed, by, the deciding policy if one did).
    fn outcome(
        &self,
        default: DefaultInbound,
        authenticated: bool,
    ) -> (bool, DecidedBy<'i>, Option<&'i ObjectRef>) {
        if let Some(p) = self.deny {
            return (false, DecidedBy::Policy(&p.id), Some(&p.id));
        }
        if let Some(p) = self.allow {
            return (true, DecidedBy::Policy(&p.id), Some(&p.id));
        }
        if let Some(p) = self.applicable {
            return (false, DecidedBy::NoAllowMatched(&p.id), Some(&p.id));
        }
        let allowed = match default {
            DefaultInbound::Allow => true,
            DefaultInbound::Authenticated => authenticated,
            DefaultInbound::Deny => false,
        };
        (allowed, DecidedBy::Default(default), None)
    }
}

/// Whether an Allow policy speaks about `port`.
fn applies_to_port(p: &AuthorizationPolicy, port: u16) -> bool {
    p.to.is_empty()
        || p.to
            .iter()
            .any(|t| t.ports.is_empty() || t.ports.contains(&port))
}

/// The client, with its workload namespace and service account read once per decision.
struct Client<'a> {
    id: Option<&'a SpiffeId>,
    /// `None` for plaintext or an identity not of the form `/ns/N/sa/S`.
    workload: Option<(&'a str, &'a str)>,
}

impl<'a> Client<'a> {
    fn of(id: Option<&'a SpiffeId>) -> Self {
        Client {
            id,
            workload: id.and_then(|id| workload(id.path())),
        }
    }
}

/// `(N, S)` of a path `/ns/N/sa/S` (what `SpiffeId::workload` reads, without its allocating
/// error).
fn workload(path: &str) -> Option<(&str, &str)> {
    let (ns, rest) = path.strip_prefix("/ns/")?.split_once('/')?;
    let sa = rest.strip_prefix("sa/")?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains('/')).then_some((ns, sa))
}

fn matches(p: &AuthorizationPolicy, f: &Facts<'_>, c: &Client<'_>) -> bool {
    (p.from.is_empty() || p.from.iter().any(|m| from_entry(m, f, c).is_ok()))
        && (p.to.is_empty() || p.to.iter().any(|m| to_entry(m, f).is_ok()))
}

/// `None` when `p` matches, else why not (the same checks as [`matches`], spelled out).
fn why_not(p: &AuthorizationPolicy, f: &Facts<'_>, c: &Client<'_>) -> Option<String> {
    let why = side("from", p.from.iter().map(|m| from_entry(m, f, c)))
        .or_else(|| side("to", p.to.iter().map(|m| to_entry(m, f))));
    debug_assert_eq!(why.is_none(), matches(p, f, c));
    why
}

/// `None` when there are no entries or one matched; else each entry's miss.
fn side<'p>(
    name: &str,
    results: impl ExactSizeIterator<Item = Result<(), Miss<'p>>>,
) -> Option<String> {
    let n = results.len();
    let mut misses = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok(()) => return None,
            Err(m) => misses.push(m),
        }
    }
    match misses.as_slice() {
        [] => None,
        [m] => Some(format!("{name}: {m}")),
        ms => Some(
            ms.iter()
                .enumerate()
                .map(|(i, m)| format!("{name}[{i}]: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// Why one `from` or `to` entry did not match. Borrowed, so the data path builds it for free.
#[derive(Debug)]
enum Miss<'p> {
    Plaintext,
    IdentityNotListed,
    NotWorkload,
    Namespace(&'p str, &'p [String]),
    ServiceAccount(&'p str, &'p str),
    Authenticated,
    Network(IpAddr),
    Port(u16, &'p [u16]),
    Opaque,
    Method(&'p str, &'p [String]),
    Path(&'p str),
    Header(&'p str),
}

impl fmt::Display for Miss<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, xs: &[T]) -> fmt::Result {
            f.write_str("[")?;
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{x}")?;
            }
            f.write_str("]")
        }
        match self {
            Miss::Plaintext => f.write_str("plaintext client"),
            Miss::IdentityNotListed => f.write_str("identity not listed"),
            Miss::NotWorkload => {
                f.write_str("identity is not a workload identity (spiffe://TD/ns/NS/sa/SA)")
            }
            Miss::Namespace(ns, want) => {
                write!(f, "namespace {ns} not in ")?;
                list(f, want)
            }
            Miss::ServiceAccount(ns, sa) => write!(f, "service account {ns}/{sa} not listed"),
            Miss::Authenticated => f.write_str("client is authenticated (unauthenticated only)"),
            Miss::Network(ip) => write!(f, "address {ip} not in the networks"),
            Miss::Port(port, want) => {
                write!(f, "port {port} not in ")?;
                list(f, want)
            }
            Miss::Opaque => f.write_str("opaque TCP connection (no method, path or headers)"),
            Miss::Method(m, want) => {
                write!(f, "method {m} not in ")?;
                list(f, want)
            }
            Miss::Path(p) => write!(f, "path {p} not matched"),
            Miss::Header(name) => write!(f, "header {name} not matched"),
        }
    }
}

fn from_entry<'p>(m: &'p FromMatch, f: &Facts<'p>, c: &Client<'p>) -> Result<(), Miss<'p>> {
    let identity_fields =
        !(m.identities.is_empty() && m.namespaces.is_empty() && m.service_accounts.is_empty());
    if (identity_fields || m.authenticated) && c.id.is_none() {
        return Err(Miss::Plaintext);
    }
    if let Some(id) = c.id {
        if !m.identities.is_empty() && !m.identities.iter().any(|i| i == id) {
            return Err(Miss::IdentityNotListed);
        }
        if !(m.namespaces.is_empty() && m.service_accounts.is_empty()) {
            let Some((ns, sa)) = c.workload else {
                return Err(Miss::NotWorkload);
            };
            if !m.namespaces.is_empty() && !m.namespaces.iter().any(|n| n == ns) {
                return Err(Miss::Namespace(ns, &m.namespaces));
            }
            if !m.service_accounts.is_empty()
                && !m.service_accounts.iter().any(|(n, s)| n == ns && s == sa)
            {
                return Err(Miss::ServiceAccount(ns, sa));
            }
        }
        if m.unauthenticated {
            return Err(Miss::Authenticated);
        }
    }
    if !m.networks.is_empty() && !m.networks.iter().any(|n| n.contains(f.ip)) {
        return Err(Miss::Network(f.ip));
    }
    Ok(())
}

fn to_entry<'p>(m: &'p ToMatch, f: &Facts<'p>) -> Result<(), Miss<'p>> {
    if !m.ports.is_empty() && !m.ports.contains(&f.port) {
        return Err(Miss::Port(f.port, &m.ports));
    }
    if !m.has_http_fields() {
        return Ok(());
    }
    let Some(h) = &f.http else {
        return Err(Miss::Opaque);
    };
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == h.method) {
        return Err(Miss::Method(h.method, &m.methods));
    }
    if !m.paths.is_empty() && !m.paths.iter().any(|p| path_matches(p, h.path)) {
        return Err(Miss::Path(h.path));
    }
    for (name, value) in &m.headers {
        if !h
            .headers
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
        {
            return Err(Miss::Header(name));
        }
    }
    Ok(())
}

/// Exact, or a prefix of whole segments (`/api` matches `/api` and `/api/x`, not `/apix`; `/`
/// matches everything).
fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            let p = p.trim_end_matches('/');
            p.is_empty()
                || (path.starts_with(p)
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
        }
    }
}

#[cfg(test)]
mod tests;
