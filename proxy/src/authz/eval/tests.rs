use std::sync::Arc;

use proptest::prelude::*;
use weft_proto::model::{Cidr, Network, PolicyTarget};

use super::*;

// ---- builders ------------------------------------------------------------------------------

fn policy(name: &str, action: AuthzAction) -> AuthorizationPolicy {
    AuthorizationPolicy {
        id: ObjectRef::new("shop", name),
        target: PolicyTarget::Namespace,
        action,
        mode: PolicyMode::Enforce,
        from: vec![],
        to: vec![],
    }
}

fn allow(name: &str) -> AuthorizationPolicy {
    policy(name, AuthzAction::Allow)
}

fn deny(name: &str) -> AuthorizationPolicy {
    policy(name, AuthzAction::Deny)
}

trait Build {
    fn from(self, m: FromMatch) -> Self;
    fn to(self, m: ToMatch) -> Self;
    fn audit(self) -> Self;
}

impl Build for AuthorizationPolicy {
    fn from(mut self, m: FromMatch) -> Self {
        self.from.push(m);
        self
    }
    fn to(mut self, m: ToMatch) -> Self {
        self.to.push(m);
        self
    }
    fn audit(mut self) -> Self {
        self.mode = PolicyMode::Audit;
        self
    }
}

/// `"ns/sa"` → `spiffe://mesh.test/ns/ns/sa/sa`; anything with a ':' is taken as is.
fn id(s: &str) -> SpiffeId {
    if s.contains(':') {
        return SpiffeId::parse(s).unwrap();
    }
    let (ns, sa) = s.split_once('/').unwrap();
    SpiffeId::parse(&format!("spiffe://mesh.test/ns/{ns}/sa/{sa}")).unwrap()
}

fn ids(v: &[&str]) -> FromMatch {
    FromMatch {
        identities: v.iter().map(|s| id(s)).collect(),
        ..Default::default()
    }
}

fn nss(v: &[&str]) -> FromMatch {
    FromMatch {
        namespaces: v.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn sas(v: &[(&str, &str)]) -> FromMatch {
    FromMatch {
        service_accounts: v
            .iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn authenticated() -> FromMatch {
    FromMatch {
        authenticated: true,
        ..Default::default()
    }
}

fn unauthenticated() -> FromMatch {
    FromMatch {
        unauthenticated: true,
        ..Default::default()
    }
}

fn nets(v: &[(&str, &[&str])]) -> FromMatch {
    FromMatch {
        networks: v
            .iter()
            .map(|(c, except)| Network {
                cidr: Cidr::parse(c).unwrap(),
                except: except.iter().map(|e| Cidr::parse(e).unwrap()).collect(),
            })
            .collect(),
        ..Default::default()
    }
}

fn ports(v: &[u16]) -> ToMatch {
    ToMatch {
        ports: v.to_vec(),
        ..Default::default()
    }
}

fn methods(v: &[&str]) -> ToMatch {
    ToMatch {
        methods: v.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn paths(v: &[PathMatch]) -> ToMatch {
    ToMatch {
        paths: v.to_vec(),
        ..Default::default()
    }
}

fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.into())
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

fn headers(v: &[(&str, &str)]) -> ToMatch {
    ToMatch {
        headers: v
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn inbound(default: DefaultInbound, policies: Vec<AuthorizationPolicy>) -> Inbound {
    let mut policies: Vec<_> = policies.into_iter().map(Arc::new).collect();
    policies.sort_by(|a, b| a.id.cmp(&b.id));
    Inbound {
        services: vec![ObjectRef::new("shop", "api")],
        policies,
        default,
        rate_limit: None,
        probes: vec![(8080, "/healthz".into())],
    }
}

type Headers<'a> = &'a [(&'a str, &'a str)];

/// A request: client (`None`: plaintext), port, `Some((method, path, headers))` for HTTP.
#[derive(Clone, Copy)]
struct Req<'a> {
    client: Option<&'a str>,
    ip: &'a str,
    port: u16,
    http: Option<(&'a str, &'a str, Headers<'a>)>,
}

fn get(client: Option<&'static str>, path: &'static str) -> Req<'static> {
    Req {
        client,
        ip: "10.1.2.3",
        port: 8080,
        http: Some(("GET", path, &[])),
    }
}

fn tcp(client: Option<&'static str>, port: u16) -> Req<'static> {
    Req {
        client,
        ip: "10.1.2.3",
        port,
        http: None,
    }
}

impl<'a> Req<'a> {
    fn method(mut self, m: &'a str) -> Self {
        if let Some(h) = &mut self.http {
            h.0 = m;
        }
        self
    }
    fn headers(mut self, hs: Headers<'a>) -> Self {
        if let Some(h) = &mut self.http {
            h.2 = hs;
        }
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn ip(mut self, ip: &'a str) -> Self {
        self.ip = ip;
        self
    }
}

/// Runs `decide` (with and without a trace, which must agree) and spells the decision out:
/// `allow by shop/a`, `deny by default:deny, audit would-allow shop/b`.
fn run(inb: &Inbound, req: Req<'_>, trace: Option<&mut Vec<PolicyTrace>>) -> String {
    let client = req.client.map(id);
    let mut map = http::HeaderMap::new();
    if let Some((_, _, hs)) = req.http {
        for (k, v) in hs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
    }
    let facts = Facts {
        client: client.as_ref(),
        ip: req.ip.parse().unwrap(),
        port: req.port,
        http: req.http.map(|(method, path, _)| HttpFacts {
            method,
            path,
            headers: &map,
        }),
    };
    let d = decide(inb, &facts, None);
    let mut own = Vec::new();
    let traced = decide(inb, &facts, Some(trace.unwrap_or(&mut own)));
    assert_eq!(d, traced, "the trace changed the decision");
    let mut s = format!("{} by {}", if d.allowed { "allow" } else { "deny" }, d.by);
    if let Some((o, p)) = d.audit {
        s += &format!(", audit {} {p}", o.as_str());
    }
    s
}

// ---- the table -----------------------------------------------------------------------------

#[test]
fn table() {
    use DefaultInbound::{Allow, Authenticated, Deny};
    let web = Some("shop/web");
    #[rustfmt::skip]
    let rows: Vec<(&str, Inbound, Req<'_>, &str)> = vec![
        // from: identities, namespaces, service accounts
        ("identity listed", inbound(Deny, vec![allow("a").from(ids(&["shop/web"]))]), get(web, "/"), "allow by shop/a"),
        ("identity not listed", inbound(Deny, vec![allow("a").from(ids(&["shop/web"]))]), get(Some("shop/api"), "/"), "deny by allow-policies:shop/a"),
        ("namespace", inbound(Deny, vec![allow("a").from(nss(&["shop"]))]), get(web, "/"), "allow by shop/a"),
        ("namespace is segment-exact", inbound(Deny, vec![allow("a").from(nss(&["shop"]))]), get(Some("shop-admin/web"), "/"), "deny by allow-policies:shop/a"),
        ("namespace of a non-workload id", inbound(Deny, vec![allow("a").from(nss(&["shop"]))]), get(Some("spiffe://mesh.test/shop/web"), "/"), "deny by allow-policies:shop/a"),
        ("service account", inbound(Deny, vec![allow("a").from(sas(&[("shop", "web")]))]), get(web, "/"), "allow by shop/a"),
        ("service account, other name", inbound(Deny, vec![allow("a").from(sas(&[("shop", "web")]))]), get(Some("shop/api"), "/"), "deny by allow-policies:shop/a"),
        ("service account, other namespace", inbound(Deny, vec![allow("a").from(sas(&[("shop", "web")]))]), get(Some("blog/web"), "/"), "deny by allow-policies:shop/a"),
        ("identity fields never match plaintext", inbound(Allow, vec![allow("a").from(nss(&["shop"]))]), get(None, "/"), "deny by allow-policies:shop/a"),
        ("authenticated", inbound(Deny, vec![allow("a").from(authenticated())]), get(web, "/"), "allow by shop/a"),
        ("authenticated, plaintext", inbound(Deny, vec![allow("a").from(authenticated())]), get(None, "/"), "deny by allow-policies:shop/a"),
        ("unauthenticated", inbound(Deny, vec![allow("a").from(unauthenticated())]), get(None, "/"), "allow by shop/a"),
        ("unauthenticated, mTLS client", inbound(Deny, vec![allow("a").from(unauthenticated())]), get(web, "/"), "deny by allow-policies:shop/a"),
        ("any from entry", inbound(Deny, vec![allow("a").from(ids(&["shop/x"])).from(nss(&["shop"]))]), get(web, "/"), "allow by shop/a"),
        ("every field of an entry", inbound(Deny, vec![allow("a").from(FromMatch { namespaces: vec!["shop".into()], ..ids(&["shop/x"]) })]), get(web, "/"), "deny by allow-policies:shop/a"),
        // networks
        ("network", inbound(Deny, vec![allow("a").from(nets(&[("10.0.0.0/8", &["10.1.0.0/16"])]))]), get(None, "/").ip("10.2.3.4"), "allow by shop/a"),
        ("network except", inbound(Deny, vec![allow("a").from(nets(&[("10.0.0.0/8", &["10.1.0.0/16"])]))]), get(None, "/").ip("10.1.2.3"), "deny by allow-policies:shop/a"),
        ("network outside", inbound(Deny, vec![allow("a").from(nets(&[("10.0.0.0/8", &["10.1.0.0/16"])]))]), get(None, "/").ip("192.168.0.1"), "deny by allow-policies:shop/a"),
        ("network, IPv4-mapped IPv6", inbound(Deny, vec![allow("a").from(nets(&[("10.0.0.0/8", &[])]))]), get(None, "/").ip("::ffff:10.2.3.4"), "allow by shop/a"),
        // deny and allow, first by id
        ("deny overrides allow", inbound(Allow, vec![allow("a"), deny("z").from(ids(&["shop/web"]))]), get(web, "/"), "deny by shop/z"),
        ("deny not matching", inbound(Allow, vec![allow("a"), deny("z").from(ids(&["shop/web"]))]), get(Some("shop/api"), "/"), "allow by shop/a"),
        ("first deny by id", inbound(Allow, vec![deny("b"), deny("a")]), get(web, "/"), "deny by shop/a"),
        ("first allow by id", inbound(Deny, vec![allow("c"), allow("b").from(nss(&["shop"])), allow("a").from(nss(&["blog"]))]), get(web, "/"), "allow by shop/b"),
        ("an empty allow lets everyone in", inbound(Deny, vec![allow("a")]), get(None, "/"), "allow by shop/a"),
        // defaults
        ("default allow", inbound(Allow, vec![]), get(None, "/"), "allow by default:allow"),
        ("default authenticated, mTLS", inbound(Authenticated, vec![]), get(web, "/"), "allow by default:authenticated"),
        ("default authenticated, plaintext", inbound(Authenticated, vec![]), get(None, "/"), "deny by default:authenticated"),
        ("default deny", inbound(Deny, vec![]), get(web, "/"), "deny by default:deny"),
        // probes
        ("probe, plaintext, default deny", inbound(Deny, vec![]), get(None, "/healthz"), "allow by probe"),
        ("probe, HEAD", inbound(Deny, vec![]), get(None, "/healthz").method("HEAD"), "allow by probe"),
        ("probe beats a deny policy", inbound(Deny, vec![deny("a")]), get(None, "/healthz"), "allow by probe"),
        ("probe path, POST", inbound(Deny, vec![]), get(None, "/healthz").method("POST"), "deny by default:deny"),
        ("probe path, other port", inbound(Deny, vec![]), get(None, "/healthz").port(9090), "deny by default:deny"),
        ("probe path is exact", inbound(Deny, vec![]), get(None, "/healthz/x"), "deny by default:deny"),
        ("probe path, TCP", inbound(Deny, vec![]), tcp(None, 8080), "deny by default:deny"),
        // audit
        ("audit deny: would-deny, still allowed", inbound(Allow, vec![deny("d").from(ids(&["shop/web"])).audit()]), get(web, "/"), "allow by default:allow, audit would-deny shop/d"),
        ("audit deny not matching", inbound(Allow, vec![deny("d").from(ids(&["shop/web"])).audit()]), get(Some("shop/api"), "/"), "allow by default:allow"),
        ("audit deny under an enforced allow", inbound(Deny, vec![allow("a"), deny("d").audit()]), get(web, "/"), "allow by shop/a, audit would-deny shop/d"),
        ("audit deny behind an enforced deny", inbound(Allow, vec![deny("a"), deny("d").audit()]), get(web, "/"), "deny by shop/a"),
        ("audit allow on default deny: would-allow", inbound(Deny, vec![allow("a").from(ids(&["shop/web"])).audit()]), get(web, "/"), "deny by default:deny, audit would-allow shop/a"),
        ("audit allow not matching", inbound(Deny, vec![allow("a").from(ids(&["shop/web"])).audit()]), get(Some("shop/api"), "/"), "deny by default:deny"),
        ("audit allow makes allow policies apply", inbound(Allow, vec![allow("a").from(ids(&["shop/admin"])).audit()]), get(web, "/"), "allow by default:allow, audit would-deny shop/a"),
        ("audit allow where an enforced allow failed", inbound(Allow, vec![allow("a").from(nss(&["blog"])), allow("b").from(ids(&["shop/web"])).audit()]), get(web, "/"), "deny by allow-policies:shop/a, audit would-allow shop/b"),
        // to: ports, methods, paths, headers
        ("port scoping: allow for another port", inbound(Allow, vec![allow("a").from(ids(&["shop/admin"])).to(ports(&[8080]))]), get(web, "/").port(9090), "allow by default:allow"),
        ("port scoping: allow for this port", inbound(Allow, vec![allow("a").from(ids(&["shop/admin"])).to(ports(&[8080]))]), get(web, "/"), "deny by allow-policies:shop/a"),
        ("port scoping: an entry without ports applies", inbound(Allow, vec![allow("a").from(ids(&["shop/admin"])).to(ports(&[8080])).to(methods(&["GET"]))]), get(web, "/").port(9090), "deny by allow-policies:shop/a"),
        ("method", inbound(Deny, vec![allow("a").to(methods(&["GET"]))]), get(web, "/"), "allow by shop/a"),
        ("methods are case-sensitive", inbound(Deny, vec![allow("a").to(methods(&["GET"]))]), get(web, "/").method("get"), "deny by allow-policies:shop/a"),
        ("exact path", inbound(Deny, vec![allow("a").to(paths(&[exact("/x")]))]), get(web, "/x"), "allow by shop/a"),
        ("exact path, trailing /", inbound(Deny, vec![allow("a").to(paths(&[exact("/x")]))]), get(web, "/x/"), "deny by allow-policies:shop/a"),
        ("prefix path, itself", inbound(Deny, vec![allow("a").to(paths(&[prefix("/api")]))]), get(web, "/api"), "allow by shop/a"),
        ("prefix path, below", inbound(Deny, vec![allow("a").to(paths(&[prefix("/api")]))]), get(web, "/api/x"), "allow by shop/a"),
        ("prefix path is by segment", inbound(Deny, vec![allow("a").to(paths(&[prefix("/api")]))]), get(web, "/apix"), "deny by allow-policies:shop/a"),
        ("prefix /", inbound(Deny, vec![allow("a").to(paths(&[prefix("/")]))]), get(web, "/anything"), "allow by shop/a"),
        ("header", inbound(Deny, vec![allow("a").to(headers(&[("x-tenant", "b")]))]), get(web, "/").headers(&[("x-tenant", "b")]), "allow by shop/a"),
        ("repeated header, any value", inbound(Deny, vec![allow("a").to(headers(&[("x-tenant", "b")]))]), get(web, "/").headers(&[("x-tenant", "a"), ("X-Tenant", "b")]), "allow by shop/a"),
        ("header, other value", inbound(Deny, vec![allow("a").to(headers(&[("x-tenant", "b")]))]), get(web, "/").headers(&[("x-tenant", "a")]), "deny by allow-policies:shop/a"),
        ("header, missing", inbound(Deny, vec![allow("a").to(headers(&[("x-tenant", "b")]))]), get(web, "/"), "deny by allow-policies:shop/a"),
        ("every field of a to entry", inbound(Deny, vec![allow("a").to(ToMatch { methods: vec!["POST".into()], ..paths(&[prefix("/api")]) })]), get(web, "/api"), "deny by allow-policies:shop/a"),
        ("from and to both", inbound(Deny, vec![allow("a").from(nss(&["shop"])).to(methods(&["POST"]))]), get(web, "/"), "deny by allow-policies:shop/a"),
        // opaque TCP
        ("TCP: an allow with HTTP fields", inbound(Allow, vec![allow("a").to(methods(&["GET"]))]), tcp(web, 8080), "deny by allow-policies:shop/a"),
        ("TCP: a deny with HTTP fields", inbound(Allow, vec![deny("a").to(paths(&[prefix("/admin")]))]), tcp(web, 8080), "allow by default:allow"),
        ("TCP: ports only", inbound(Deny, vec![allow("a").to(ports(&[5432]))]), tcp(web, 5432), "allow by shop/a"),
        ("TCP: from only", inbound(Deny, vec![allow("a").from(nss(&["shop"]))]), tcp(web, 5432), "allow by shop/a"),
    ];
    let mut failures = Vec::new();
    for (name, inb, req, want) in rows {
        let got = run(&inb, req, None);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn decided_by_display() {
    let id = ObjectRef::new("shop", "a");
    assert_eq!(DecidedBy::Policy(&id).to_string(), "shop/a");
    assert_eq!(
        DecidedBy::NoAllowMatched(&id).to_string(),
        "allow-policies:shop/a"
    );
    assert_eq!(
        DecidedBy::Default(DefaultInbound::Authenticated).to_string(),
        "default:authenticated"
    );
    assert_eq!(DecidedBy::Probe.to_string(), "probe");
    assert_eq!(AuditOutcome::WouldDeny.as_str(), "would-deny");
    assert_eq!(AuditOutcome::WouldAllow.as_str(), "would-allow");
}

#[test]
fn trace_explains_every_policy() {
    let inb = inbound(
        DefaultInbound::Deny,
        vec![
            allow("a-ids").from(ids(&["shop/admin"])),
            allow("b-ns").from(nss(&["shop"])),
            allow("c-plain").from(ids(&["shop/web"])),
            allow("d-method").to(methods(&["GET"])),
            allow("e-path").to(paths(&[prefix("/api")])),
            allow("f-port").to(ports(&[8080])),
            allow("g-header").to(headers(&[("x-tenant", "a")])),
            deny("h-two").from(nss(&["blog"])).from(ids(&["shop/x"])),
            allow("i-opaque").to(methods(&["GET"])),
            allow("j-match").audit(),
            allow("k-unauth").from(unauthenticated()),
            allow("l-net").from(nets(&[("10.0.0.0/8", &[])])),
        ],
    );
    let mut trace = Vec::new();
    let req = get(Some("shop-admin/web"), "/x")
        .method("POST")
        .port(9090)
        .ip("192.168.1.1");
    run(&inb, req, Some(&mut trace));
    let got: Vec<(String, bool, Option<String>)> = trace
        .iter()
        .map(|t| (t.policy.name.clone(), t.matched, t.why_not.clone()))
        .collect();
    let want = [
        ("a-ids", false, Some("from: identity not listed")),
        (
            "b-ns",
            false,
            Some("from: namespace shop-admin not in [shop]"),
        ),
        ("c-plain", false, Some("from: identity not listed")),
        ("d-method", false, Some("to: method POST not in [GET]")),
        ("e-path", false, Some("to: path /x not matched")),
        ("f-port", false, Some("to: port 9090 not in [8080]")),
        ("g-header", false, Some("to: header x-tenant not matched")),
        (
            "h-two",
            false,
            Some("from[0]: namespace shop-admin not in [blog]; from[1]: identity not listed"),
        ),
        ("i-opaque", false, Some("to: method POST not in [GET]")),
        ("j-match", true, None),
        (
            "k-unauth",
            false,
            Some("from: client is authenticated (unauthenticated only)"),
        ),
        (
            "l-net",
            false,
            Some("from: address 192.168.1.1 not in the networks"),
        ),
    ]
    .map(|(n, m, w)| (n.to_owned(), m, w.map(str::to_owned)));
    assert_eq!(got, want);
    assert_eq!(trace[9].mode, PolicyMode::Audit);
    assert_eq!(trace[7].action, AuthzAction::Deny);

    let mut trace = Vec::new();
    run(&inb, get(None, "/"), Some(&mut trace));
    assert_eq!(trace[0].why_not.as_deref(), Some("from: plaintext client"));
    let mut trace = Vec::new();
    run(&inb, tcp(None, 8080), Some(&mut trace));
    assert_eq!(
        trace[3].why_not.as_deref(),
        Some("to: opaque TCP connection (no method, path or headers)")
    );
    // a probe is still traced, though no policy decides it
    let mut trace = Vec::new();
    assert_eq!(
        run(&inb, get(None, "/healthz"), Some(&mut trace)),
        "allow by probe"
    );
    assert_eq!(trace.len(), inb.policies.len());
}

// ---- properties ----------------------------------------------------------------------------

/// A pool of policies to draw from: every kind of field, both actions, both modes.
fn pool() -> Vec<AuthorizationPolicy> {
    vec![
        allow("a").from(ids(&["shop/web"])),
        allow("b").from(nss(&["shop"])).to(methods(&["GET"])),
        allow("c").to(paths(&[prefix("/api")])).to(ports(&[9090])),
        allow("d")
            .from(unauthenticated())
            .to(headers(&[("x-tenant", "a")])),
        allow("e").from(authenticated()).audit(),
        deny("f").from(nss(&["blog"])),
        deny("g").to(paths(&[exact("/admin")])),
        deny("h").from(nets(&[("10.1.0.0/16", &[])])).audit(),
        deny("i").to(methods(&["DELETE"])).audit(),
        allow("j")
            .from(sas(&[("blog", "web")]))
            .to(ports(&[8080]))
            .audit(),
    ]
}

proptest! {
    /// With or without a trace, the same decision (checked in `run`); the trace has one entry
    /// per policy; an allow is by a matched policy, the default or a probe; audit set only
    /// with a policy in audit mode named.
    #[test]
    fn decisions_are_consistent(
        pick in prop::collection::vec(any::<bool>(), 10),
        default in prop_oneof![Just(DefaultInbound::Allow), Just(DefaultInbound::Authenticated), Just(DefaultInbound::Deny)],
        client in prop_oneof![Just(None), Just(Some("shop/web")), Just(Some("blog/web")), Just(Some("shop/api"))],
        ip in prop_oneof![Just("10.1.2.3"), Just("10.2.0.1")],
        port in prop_oneof![Just(8080u16), Just(9090u16)],
        http in prop_oneof![
            Just(None),
            Just(Some(("GET", "/api/x"))),
            Just(Some(("DELETE", "/admin"))),
            Just(Some(("GET", "/healthz"))),
        ],
        tenant in any::<bool>(),
    ) {
        let policies: Vec<_> = pool().into_iter().zip(&pick).filter(|(_, p)| **p).map(|(x, _)| x).collect();
        let inb = inbound(default, policies);
        let hs: &[(&str, &str)] = if tenant { &[("x-tenant", "a")] } else { &[] };
        let req = Req { client, ip, port, http: http.map(|(m, p)| (m, p, hs)) };
        let mut trace = Vec::new();
        let out = run(&inb, req, Some(&mut trace));
        prop_assert_eq!(trace.len(), inb.policies.len());
        for t in &trace {
            prop_assert_eq!(t.matched, t.why_not.is_none());
        }
        if let Some(rest) = out.split(", audit ").nth(1) {
            let name = rest.rsplit('/').next().unwrap();
            let p = inb.policies.iter().find(|p| p.id.name == name).unwrap();
            prop_assert_eq!(p.mode, PolicyMode::Audit);
        }
        if let Some(by) = out.strip_prefix("allow by shop/") {
            let by = by.split(',').next().unwrap();
            let t = trace.iter().find(|t| t.policy.name == by).unwrap();
            prop_assert!(t.matched && t.action == AuthzAction::Allow && t.mode == PolicyMode::Enforce);
        }
    }
}
