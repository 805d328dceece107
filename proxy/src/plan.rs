//! Where a request or connection goes: a plain function of (configuration, request facts,
//! random draws) → [`Plan`], with no I/O. The outbound path executes plans.
//!
//! Authority → service port → route rule (Gateway API precedence) → weighted backend →
//! weighted endpoint, with the endpoint's registered identity as the peer to require.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_certs::SpiffeId;
use weft_proto::model::{
    Backend, Endpoint, HttpRoute, ObjectRef, PathMatch, Port, Protocol, Rule, Timeouts,
};

use crate::error::ProxyError;
use crate::resources::{MeshConfig, ServiceConfig};

/// A mesh service and one of its ports, named by a client.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: Arc<ServiceConfig>,
    pub port: Port,
}

impl Target {
    /// `name.namespace:port`, the authority label of metrics.
    pub fn authority(&self) -> String {
        let id = &self.service.service.id;
        format!("{}.{}:{}", id.name, id.namespace, self.port.port)
    }
}

/// Where to send one request or connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The route and rule index chosen, if the service has routes.
    pub route: Option<(ObjectRef, usize)>,
    pub backend: ObjectRef,
    pub backend_port: u16,
    /// The peer proxy's inbound address.
    pub addr: SocketAddr,
    /// The identity the peer must present.
    pub identity: SpiffeId,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
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
    let held = config.services.get(&service.to_string())?;
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

/// Plans an HTTP request to `target`. `draw` returns uniform numbers in [0, 1).
pub fn plan_http(
    config: &MeshConfig,
    target: &Target,
    req: &RequestFacts<'_>,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Plan, ProxyError> {
    let routes: Vec<&HttpRoute> = target
        .service
        .routes
        .iter()
        .filter(|r| attaches(r, target))
        .collect();
    if routes.is_empty() {
        return plan_backend(
            config,
            target,
            None,
            &default_backend(target),
            Timeouts::default(),
            draw,
        );
    }
    let (route, index, rule) = best_rule(&routes, req).ok_or_else(|| {
        ProxyError::NoRoute(format!("{} {}{}", req.method, target.authority(), req.path))
    })?;
    let backend = pick_backend(&rule.backends, draw).ok_or_else(|| {
        ProxyError::NoEndpoints(format!("route {} (every backend weight is 0)", route.id))
    })?;
    plan_backend(
        config,
        target,
        Some((route.id.clone(), index)),
        backend,
        rule.timeouts.clone(),
        draw,
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
        .filter(|r| attaches(r, target))
        .flat_map(|r| {
            r.rules
                .iter()
                .enumerate()
                .map(move |(i, rule)| (r, i, rule))
        })
        .find(|(_, _, rule)| {
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
            draw,
        ),
        Some((route, i, rule)) => {
            let backend = pick_backend(&rule.backends, draw).ok_or_else(|| {
                ProxyError::NoEndpoints(format!("route {} (every backend weight is 0)", route.id))
            })?;
            plan_backend(
                config,
                target,
                Some((route.id.clone(), i)),
                backend,
                Timeouts::default(),
                draw,
            )
        }
    }
}

fn default_backend(target: &Target) -> Backend {
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
    route: Option<(ObjectRef, usize)>,
    backend: &Backend,
    timeouts: Timeouts,
    draw: &mut dyn FnMut() -> f64,
) -> Result<Plan, ProxyError> {
    let backend_port = backend.port.unwrap_or(target.port.port);
    // The backend service's own declaration of the port wins; else the client-facing one's.
    let protocol = config
        .services
        .get(&backend.service.to_string())
        .and_then(|s| s.value.service.port(backend_port).map(|p| p.protocol))
        .unwrap_or(target.port.protocol);
    let endpoints = config
        .endpoints
        .get(&backend.service.to_string())
        .map(|e| e.value.endpoints.as_slice())
        .unwrap_or_default();
    let endpoint = pick_endpoint(endpoints, draw)
        .ok_or_else(|| ProxyError::NoEndpoints(backend.service.to_string()))?;
    Ok(Plan {
        route,
        backend: backend.service.clone(),
        backend_port,
        addr: endpoint.address,
        identity: endpoint.identity.clone(),
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

/// Weighted random choice among ready endpoints.
pub fn pick_endpoint<'a>(
    endpoints: &'a [Endpoint],
    draw: &mut dyn FnMut() -> f64,
) -> Option<&'a Endpoint> {
    weighted(endpoints, |e| if e.ready { e.weight } else { 0 }, draw)
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
    routes: &[&'r HttpRoute],
    req: &RequestFacts<'_>,
) -> Option<(&'r HttpRoute, usize, &'r Rule)> {
    // (exact, prefix length, has method, headers, query params): compared in that order.
    type Rank = (u8, usize, u8, usize, usize);
    let mut best: Option<(Rank, (&HttpRoute, usize, &Rule))> = None;
    for route in routes {
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
                    best = Some((rank, (route, i, rule)));
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
