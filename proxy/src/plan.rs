//! Where a request or connection goes: a plain function of (configuration, request facts,
//! random draws) → [`Plan`], with no I/O. The outbound path executes plans.
//!
//! Authority → service port → route rule (Gateway API precedence) → weighted backend → that
//! backend's ready endpoints, traffic policy, timeouts and retry policy. Which endpoint (and so
//! which identity to require of the peer) is the balancer's choice per attempt
//! (`crate::balance`), since it depends on what earlier requests saw.

use std::net::IpAddr;
use std::sync::Arc;

use weft_proto::model::{
    Backend, Endpoint, HttpRoute, ObjectRef, PathMatch, Port, Protocol, Retry, RetryPolicy, Rule,
    Timeouts, TrafficPolicy,
};

use crate::error::ProxyError;
use crate::resources::{EndpointSet, MeshConfig, ServiceConfig};

/// A mesh service and one of its ports, named by a client.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: Arc<ServiceConfig>,
    pub port: Port,
}

impl Target {
    /// `name.namespace:port`, the authority label of metrics (per request, so without the
    /// formatting machinery).
    pub fn authority(&self) -> String {
        let id = &self.service.service.id;
        let mut port = itoa::Buffer::new();
        let port = port.format(self.port.port);
        let mut a = String::with_capacity(id.name.len() + id.namespace.len() + 2 + port.len());
        a.push_str(&id.name);
        a.push('.');
        a.push_str(&id.namespace);
        a.push(':');
        a.push_str(port);
        a
    }
}

/// Where to send one request or connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The route and rule chosen, if the service has routes.
    pub route: Option<RuleRef>,
    pub backend: ObjectRef,
    pub backend_port: u16,
    /// The backend's endpoints (the balancer takes the ready ones).
    pub endpoints: Arc<EndpointSet>,
    /// The backend service's load balancing, outlier detection and pending cap.
    pub traffic: TrafficPolicy,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
}

/// One rule of one route of a service, shared with the snapshot (no copy per request).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRef {
    pub service: Arc<ServiceConfig>,
    pub route: usize,
    pub rule: usize,
}

impl RuleRef {
    pub fn route(&self) -> &HttpRoute {
        &self.service.routes[self.route]
    }

    pub fn rule(&self) -> &Rule {
        &self.route().rules[self.rule]
    }

    /// The rule's retry settings with the route's policy, if the rule retries at all.
    pub fn retry(&self) -> Option<(&Retry, &RetryPolicy)> {
        let route = self.route();
        route.rules[self.rule]
            .retry
            .as_ref()
            .map(|r| (r, &route.retry_policy))
    }
}

impl Plan {
    /// `namespace/name` of the route, or "" when the service has none.
    pub fn route_label(&self) -> String {
        self.route
            .as_ref()
            .map(|r| r.route().id.to_string())
            .unwrap_or_default()
    }

    /// A plan to one endpoint (a connection redirected to that endpoint's address).
    pub fn to_endpoint(service: ObjectRef, endpoint: Endpoint, protocol: Protocol) -> Self {
        Plan {
            route: None,
            backend_port: endpoint.address.port(),
            endpoints: Arc::new(EndpointSet {
                service: service.clone(),
                endpoints: vec![endpoint],
            }),
            backend: service,
            traffic: TrafficPolicy::default(),
            protocol,
            timeouts: Timeouts::default(),
        }
    }
}

/// The facts of a request that routing reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// Splits `name.namespace[.svc[.<cluster domain>]][:port]` into a service reference and port.
pub fn parse_authority(authority: &str) -> Option<(ObjectRef, Option<u16>)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p.parse::<u16>().ok()?)),
        Some(_) => return None, // an IPv6 literal is not a service name
        None => (authority, None),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut labels = host.split('.');
    let name = labels.next()?;
    let namespace = labels.next()?;
    match labels.next() {
        None => {}
        Some("svc") => {}
        Some(_) => return None,
    }
    if name.is_empty() || namespace.is_empty() {
        return None;
    }
    Some((ObjectRef::new(namespace, name), port))
}

/// The mesh service port an authority names. No port given: the service's only port, else
/// port 80.
pub fn target_for(config: &MeshConfig, authority: &str) -> Option<Target> {
    let (service, port) = parse_authority(authority)?;
    let held = config.services.get(&service.key())?;
    let svc = &held.value.service;
    let port = match port {
        Some(p) => svc.port(p)?,
        None if svc.ports.len() == 1 => &svc.ports[0],
        None => svc.port(80)?,
    };
    Some(Target {
        port: port.clone(),
        service: held.value.clone(),
    })
}

/// The service and endpoint whose proxy listens on `ip` (a transparently redirected
/// connection's original destination).
pub fn endpoint_by_ip(config: &MeshConfig, ip: IpAddr) -> Option<(ObjectRef, Endpoint)> {
    config.endpoints.values().find_map(|set| {
        set.value
            .endpoints
            .iter()
            .find(|e| e.ready && e.address.ip() == ip)
            .map(|e| (set.value.service.clone(), e.clone()))
    })
}

/// The rule an HTTP request to `target` matches: `Ok(None)` when no route attaches to the
/// target (requests go to the service itself), `no-route` when routes attach and none matches.
pub fn match_rule(target: &Target, req: &RequestFacts<'_>) -> Result<Option<RuleRef>, ProxyError> {
    let routes: Vec<(usize, &HttpRoute)> = target
        .service
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| attaches(r, target))
        .collect();
    if routes.is_empty() {
        return Ok(None);
    }
    let (route, rule, _) = best_rule(&routes, req).ok_or_else(|| {
        ProxyError::NoRoute(format!("{} {}{}", req.method, target.authority(), req.path))
    })?;
    Ok(Some(RuleRef {
        service: target.service.clone(),
        route,
        rule,
    }))
}

/// Plans an HTTP request to `target`. `draw` returns uniform numbers in [0, 1).
pub fn plan_http(
    config: &MeshConfig,
    target: &Target,
    req: &RequestFacts<'_>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Plan, ProxyError> {
    let Some(rule_ref) = match_rule(target, req)? else {
        return plan_backend(
            config,
            target,
            None,
            &default_backend(target),
            Timeouts::default(),
        );
    };
    // Borrow the rule from our own handle on the snapshot, so `rule_ref` can move into the plan.
    let service = rule_ref.service.clone();
    let route = &service.routes[rule_ref.route];
    let rule = &route.rules[rule_ref.rule];
    let backend = pick_backend(&rule.backends, draw).ok_or_else(|| {
        ProxyError::NoEndpoints(format!("route {} (every backend weight is 0)", route.id))
    })?;
    plan_backend(
        config,
        target,
        Some(rule_ref),
        backend,
        rule.timeouts.clone(),
    )
}

/// Plans an opaque connection to `target`: the backends of the first rule that matches every
/// request (prefix `/` with no other condition), else the service itself.
pub fn plan_tcp(
    config: &MeshConfig,
    target: &Target,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Plan, ProxyError> {
    let catch_all = target
        .service
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| attaches(r, target))
        .flat_map(|(ri, r)| {
            r.rules
                .iter()
                .enumerate()
                .map(move |(i, rule)| (ri, r, i, rule))
        })
        .find(|(_, _, _, rule)| {
            rule.matches.iter().any(|m| {
                m.path == PathMatch::Prefix("/".into())
                    && m.method.is_none()
                    && m.headers.is_empty()
                    && m.query_params.is_empty()
            })
        });
    match catch_all {
        None => plan_backend(
            config,
            target,
            None,
            &default_backend(target),
            Timeouts::default(),
        ),
        Some((ri, route, i, rule)) => {
            let backend = pick_backend(&rule.backends, draw).ok_or_else(|| {
                ProxyError::NoEndpoints(format!("route {} (every backend weight is 0)", route.id))
            })?;
            plan_backend(
                config,
                target,
                Some(RuleRef {
                    service: target.service.clone(),
                    route: ri,
                    rule: i,
                }),
                backend,
                Timeouts::default(),
            )
        }
    }
}

/// The backend a request goes to when no route attaches to its service: the service itself.
pub fn default_backend(target: &Target) -> Backend {
    Backend {
        service: target.service.service.id.clone(),
        port: Some(target.port.port),
        weight: 1,
    }
}

fn attaches(route: &HttpRoute, target: &Target) -> bool {
    route.parents.iter().any(|p| {
        p.service == target.service.service.id && p.port.is_none_or(|port| port == target.port.port)
    })
}

fn plan_backend(
    config: &MeshConfig,
    target: &Target,
    route: Option<RuleRef>,
    backend: &Backend,
    timeouts: Timeouts,
) -> Result<Plan, ProxyError> {
    let backend_port = backend.port.unwrap_or(target.port.port);
    let key = backend.service.key();
    let declared = config.services.get(&key).map(|s| &s.value.service);
    // The backend service's own declaration of the port wins; else the client-facing one's.
    let protocol = declared
        .and_then(|s| s.port(backend_port).map(|p| p.protocol))
        .unwrap_or(target.port.protocol);
    let traffic = declared.map(|s| s.traffic.clone()).unwrap_or_default();
    let endpoints = config
        .endpoints
        .get(&key)
        .map(|e| e.value.clone())
        .filter(|e| e.endpoints.iter().any(|e| e.ready))
        .ok_or_else(|| ProxyError::NoEndpoints(backend.service.to_string()))?;
    Ok(Plan {
        route,
        backend: backend.service.clone(),
        backend_port,
        endpoints,
        traffic,
        protocol,
        timeouts,
    })
}

/// Weighted random choice; a zero weight is never chosen.
pub fn pick_backend<'a>(
    backends: &'a [Backend],
    draw: &mut dyn FnMut() -> f64,
) -> Option<&'a Backend> {
    weighted(backends, |b| b.weight, draw)
}

fn weighted<'a, T>(
    items: &'a [T],
    weight: impl Fn(&T) -> u32,
    draw: &mut dyn FnMut() -> f64,
) -> Option<&'a T> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    let mut point = ((draw().clamp(0.0, 1.0) * total as f64) as u64).min(total - 1);
    for item in items {
        let w = u64::from(weight(item));
        if point < w {
            return Some(item);
        }
        point -= w;
    }
    None
}

/// The matching rule with the highest Gateway API precedence: exact path, then the longest
/// prefix, then a method, then the most header matches, then the most query matches; ties go
/// to the earlier route and rule.
fn best_rule<'r>(
    routes: &[(usize, &'r HttpRoute)],
    req: &RequestFacts<'_>,
) -> Option<(usize, usize, &'r Rule)> {
    // (exact, prefix length, has method, headers, query params): compared in that order.
    type Rank = (u8, usize, u8, usize, usize);
    let mut best: Option<(Rank, (usize, usize, &Rule))> = None;
    for &(ri, route) in routes {
        for (i, rule) in route.rules.iter().enumerate() {
            for m in &rule.matches {
                let path_rank = match &m.path {
                    PathMatch::Exact(p) if p == req.path => (1, p.len()),
                    PathMatch::Prefix(p) if prefix_matches(p, req.path) => (0, p.len()),
                    _ => continue,
                };
                if m.method.as_deref().is_some_and(|want| want != req.method) {
                    continue;
                }
                if !m.headers.iter().all(|(k, v)| {
                    req.headers
                        .get_all(k.as_str())
                        .iter()
                        .any(|h| h.as_bytes() == v.as_bytes())
                }) {
                    continue;
                }
                if !m
                    .query_params
                    .iter()
                    .all(|(k, v)| query_has(req.query, k, v))
                {
                    continue;
                }
                let rank = (
                    path_rank.0,
                    path_rank.1,
                    u8::from(m.method.is_some()),
                    m.headers.len(),
                    m.query_params.len(),
                );
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    best = Some((rank, (ri, i, rule)));
                }
            }
        }
    }
    best.map(|(_, r)| r)
}

/// Gateway API prefix matching is by path segment: `/api` matches `/api` and `/api/x`, not
/// `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

fn query_has(query: Option<&str>, key: &str, value: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == key && v == value
        })
    })
}

#[cfg(test)]
mod tests;
