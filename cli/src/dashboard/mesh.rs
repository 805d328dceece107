//! The mesh at a glance, computed from one [`Reading`]: pure, no I/O, so the page's numbers are
//! tested here. Who is who comes from the metrics themselves: a proxy's own SPIFFE ID is the
//! `identity` label of its `identity_cert_expiration_timestamp_seconds`, the caller of an
//! inbound response is its `client_id` (verified by the server's proxy), the callee of an
//! outbound one its `server_id` (verified by the caller's proxy). An edge joins both ends.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::source::{INSTANCE, Reading};
use crate::scrape::{Buckets, Sample};

/// The node of callers without a certificate (plaintext to the server's proxy).
pub(crate) const UNMESHED: &str = "unmeshed";

/// What a scrape target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TargetKind {
    Proxy,
    ControlPlane,
    /// Down, or serving none of the metrics the dashboard knows.
    Unknown,
}

/// One scrape target (a proxy's or the control plane's admin address).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Target {
    pub(crate) instance: String,
    pub(crate) kind: TargetKind,
    /// A proxy's own SPIFFE ID.
    pub(crate) identity: String,
    pub(crate) up: bool,
    /// Why it is down, when the source knows.
    pub(crate) error: String,
    /// Proxy: 1 while its discovery stream is open.
    pub(crate) connected: Option<bool>,
    /// Proxy: `config_generation`; control plane: `registry_revision`.
    pub(crate) config_version: Option<f64>,
    pub(crate) nacks_total: f64,
    /// Seconds until its certificate expires (negative: expired).
    pub(crate) cert_expires_in_s: Option<f64>,
}

/// Requests per second, the share under 500, and latency quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Traffic {
    pub(crate) rps: f64,
    /// `None` without requests.
    pub(crate) success: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// Accumulates rates of responses and latency buckets.
#[derive(Debug, Clone, Default)]
struct Acc {
    total: f64,
    ok: f64,
    buckets: Buckets,
}

impl Acc {
    fn response(&mut self, s: &Sample) {
        self.total += s.value;
        if s.label("status_code")
            .parse::<u16>()
            .is_ok_and(|code| code < 500)
        {
            self.ok += s.value;
        }
    }

    fn bucket(&mut self, s: &Sample) {
        if let Some(le) = le(s) {
            self.buckets.add(le, s.value);
        }
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            rps: self.total,
            success: (self.total > 0.0).then(|| (self.ok / self.total).clamp(0.0, 1.0)),
            p50_ms: self.buckets.quantile(0.5),
            p99_ms: self.buckets.quantile(0.99),
        }
    }
}

fn le(s: &Sample) -> Option<f64> {
    match s.label("le") {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// A workload: a SPIFFE ID with a proxy (or seen as a peer), its traffic both ways.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Service {
    /// The SPIFFE ID (or [`UNMESHED`], or `authority:<name>` for a destination that did not
    /// answer with a certificate).
    pub(crate) id: String,
    /// Short name for people: the service account, or `namespace/sa` when two namespaces
    /// share one.
    pub(crate) name: String,
    /// `workload` (has a proxy among the targets), `peer` (seen only from the other end),
    /// `unmeshed`, `external`.
    pub(crate) kind: &'static str,
    /// The mesh authorities its proxy served (`web.demo:8080`).
    pub(crate) authorities: Vec<String>,
    /// As its own proxy saw requests arrive.
    pub(crate) inbound: Traffic,
    /// As its own proxy saw the requests it sent.
    pub(crate) outbound: Traffic,
    /// `[unix seconds, inbound rps, inbound success]`, oldest first (filled in by the history).
    pub(crate) trend: Vec<(f64, f64, Option<f64>)>,
}

/// A caller → callee edge, joined from both proxies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    /// The caller's view when the caller is a target (it counts the proxy's own errors too),
    /// else the callee's.
    pub(crate) traffic: Traffic,
    /// Whether the hop was mTLS.
    pub(crate) mtls: bool,
    /// The caller's SPIFFE ID as the callee's proxy verified it (empty: not seen there).
    pub(crate) client_id: String,
    /// The callee's SPIFFE ID as the caller's proxy verified it (empty: not seen there).
    pub(crate) server_id: String,
    /// The authorities the caller asked for on this edge.
    pub(crate) authorities: Vec<String>,
    /// What the callee's proxy answered (each attempt, before the caller's retries), when the
    /// callee is a target.
    pub(crate) callee: Option<Traffic>,
}

/// One backend's share of what a caller sent to one authority.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Backend {
    /// The answering workload's SPIFFE ID (empty: the proxy answered itself).
    pub(crate) server_id: String,
    pub(crate) name: String,
    pub(crate) rps: f64,
    pub(crate) share: f64,
    pub(crate) success: Option<f64>,
}

/// The split a caller's proxy observed for one authority.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Split {
    pub(crate) client: String,
    pub(crate) authority: String,
    pub(crate) rps: f64,
    pub(crate) backends: Vec<Backend>,
}

/// Retries per route and backend, from `retries_total`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Retries {
    pub(crate) at: String,
    pub(crate) route: String,
    pub(crate) backend: String,
    pub(crate) rps: f64,
    pub(crate) budget_exhausted_rps: f64,
}

/// Responses a proxy made itself (`x-weft-error`), by reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProxyError {
    /// The workload whose proxy answered.
    pub(crate) at: String,
    pub(crate) direction: String,
    pub(crate) authority: String,
    pub(crate) reason: String,
    pub(crate) status: String,
    /// Inbound: the verified caller.
    pub(crate) client_id: String,
    pub(crate) rps: f64,
    /// Unix seconds, filled in by the history: when it was first and last seen.
    pub(crate) first_seen: f64,
    pub(crate) last_seen: f64,
}

/// Authorization decisions other than a plain allow, from `authz_decisions_total` and
/// `rate_limited_total`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Decision {
    pub(crate) at: String,
    pub(crate) service: String,
    /// `deny`, `would-deny`, `would-allow`, or `rate-limited`.
    pub(crate) decision: String,
    /// The deciding policy, or the empty bucket's scope for a rate limit.
    pub(crate) policy: String,
    pub(crate) rps: f64,
    /// Unix seconds, filled in by the history: when it was first and last seen.
    pub(crate) first_seen: f64,
    pub(crate) last_seen: f64,
}

/// The control plane(s) among the targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ControlPlane {
    pub(crate) instances: Vec<String>,
    pub(crate) up: bool,
    pub(crate) connected_proxies: f64,
    pub(crate) registrations: f64,
    /// `registry_revision` (the store revision the published configuration reflects).
    pub(crate) config_version: Option<f64>,
    pub(crate) nacks_total: f64,
    pub(crate) nacks_rps: f64,
    pub(crate) pushes_rps: f64,
    pub(crate) certify_refused_rps: f64,
}

/// Everything the page shows, but the trends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Mesh {
    pub(crate) targets: Vec<Target>,
    pub(crate) services: Vec<Service>,
    pub(crate) edges: Vec<Edge>,
    pub(crate) splits: Vec<Split>,
    pub(crate) retries: Vec<Retries>,
    pub(crate) errors: Vec<ProxyError>,
    pub(crate) decisions: Vec<Decision>,
    pub(crate) control_plane: Option<ControlPlane>,
}

fn is_control_plane(name: &str) -> bool {
    name == "discovery_connected_proxies" || name == "registry_revision"
}

/// Builds the mesh from a reading taken at `now` (Unix seconds).
pub(crate) fn build(r: &Reading, now: f64) -> Mesh {
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let target = |targets: &mut BTreeMap<String, Target>, instance: &str| -> Target {
        targets.remove(instance).unwrap_or_else(|| Target {
            instance: instance.to_owned(),
            kind: TargetKind::Unknown,
            identity: String::new(),
            up: true,
            error: String::new(),
            connected: None,
            config_version: None,
            nacks_total: 0.0,
            cert_expires_in_s: None,
        })
    };
    for s in &r.values {
        let inst = s.label(INSTANCE);
        let mut t = target(&mut targets, inst);
        match s.name.as_str() {
            "up" => {
                t.up = s.value > 0.0;
                t.error = s.label("error").to_owned();
            }
            "identity_cert_expiration_timestamp_seconds" => {
                t.kind = TargetKind::Proxy;
                t.identity = s.label("identity").to_owned();
                t.cert_expires_in_s = Some(s.value - now);
            }
            "discovery_connected" => {
                t.kind = TargetKind::Proxy;
                t.connected = Some(s.value > 0.0);
            }
            "config_generation" => t.config_version = Some(s.value),
            "registry_revision" => t.config_version = Some(s.value),
            "discovery_nacks_total" => t.nacks_total += s.value,
            _ => {}
        }
        if is_control_plane(&s.name) {
            t.kind = TargetKind::ControlPlane;
        }
        targets.insert(inst.to_owned(), t);
    }
    // A proxy whose identity label is missing (an older proxy) still counts as a proxy.
    for s in &r.rates {
        if s.name == "response_total" {
            let mut t = target(&mut targets, s.label(INSTANCE));
            if t.kind == TargetKind::Unknown {
                t.kind = TargetKind::Proxy;
            }
            targets.insert(t.instance.clone(), t);
        }
    }
    let identity_of: BTreeMap<&str, String> = targets
        .values()
        .filter(|t| t.kind == TargetKind::Proxy)
        .map(|t| {
            let id = if t.identity.is_empty() {
                format!("instance:{}", t.instance)
            } else {
                t.identity.clone()
            };
            (t.instance.as_str(), id)
        })
        .collect();

    let mut inbound: BTreeMap<String, Acc> = BTreeMap::new();
    let mut outbound: BTreeMap<String, Acc> = BTreeMap::new();
    let mut authorities: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // (from, to) → (caller's view, callee's view, edge facts)
    let mut edges: BTreeMap<(String, String), EdgeAcc> = BTreeMap::new();
    // (client, authority) → server_id → Acc
    let mut splits: BTreeMap<(String, String), BTreeMap<String, Acc>> = BTreeMap::new();
    let mut errors: BTreeMap<(String, String, String, String, String, String), f64> =
        BTreeMap::new();
    let mut decisions: BTreeMap<(String, String, String, String), f64> = BTreeMap::new();
    let mut retries: BTreeMap<(String, String, String), (f64, f64)> = BTreeMap::new();
    let mut cp = ControlPlane::default();
    let mut has_cp = false;

    for s in &r.rates {
        let inst = s.label(INSTANCE);
        let Some(me) = identity_of.get(inst) else {
            if targets
                .get(inst)
                .is_some_and(|t| t.kind == TargetKind::ControlPlane)
            {
                match s.name.as_str() {
                    "discovery_nacks_total" => cp.nacks_rps += s.value,
                    "discovery_pushes_total" => cp.pushes_rps += s.value,
                    "certify_refused_total" => cp.certify_refused_rps += s.value,
                    _ => {}
                }
            }
            continue;
        };
        let inbound_dir = s.label("direction") == "inbound";
        let tls = s.label("tls") == "true";
        match (s.name.as_str(), inbound_dir) {
            ("response_total", true) => {
                inbound.entry(me.clone()).or_default().response(s);
                let authority = s.label("authority");
                if !authority.is_empty() {
                    authorities
                        .entry(me.clone())
                        .or_default()
                        .insert(authority.to_owned());
                }
                let client = match s.label("client_id") {
                    "" => UNMESHED.to_owned(),
                    c => c.to_owned(),
                };
                let e = edges.entry((client.clone(), me.clone())).or_default();
                e.callee.response(s);
                e.mtls_in = Some(e.mtls_in.unwrap_or(true) && tls);
                if client != UNMESHED {
                    e.client_id = client;
                }
                if !s.label("error").is_empty() {
                    *errors.entry(error_key(me, s)).or_default() += s.value;
                }
            }
            ("response_latency_ms_bucket", true) => {
                inbound.entry(me.clone()).or_default().bucket(s);
                let client = match s.label("client_id") {
                    "" => UNMESHED.to_owned(),
                    c => c.to_owned(),
                };
                edges
                    .entry((client, me.clone()))
                    .or_default()
                    .callee
                    .bucket(s);
            }
            ("response_total", false) => {
                outbound.entry(me.clone()).or_default().response(s);
                let authority = s.label("authority").to_owned();
                let server = s.label("server_id");
                let to = if server.is_empty() {
                    format!("authority:{authority}")
                } else {
                    server.to_owned()
                };
                let e = edges.entry((me.clone(), to)).or_default();
                e.caller.response(s);
                e.mtls_out = Some(e.mtls_out.unwrap_or(true) && tls);
                e.server_id = server.to_owned();
                if !authority.is_empty() {
                    e.authorities.insert(authority.clone());
                }
                splits
                    .entry((me.clone(), authority))
                    .or_default()
                    .entry(server.to_owned())
                    .or_default()
                    .response(s);
                if !s.label("error").is_empty() {
                    *errors.entry(error_key(me, s)).or_default() += s.value;
                }
            }
            ("response_latency_ms_bucket", false) => {
                outbound.entry(me.clone()).or_default().bucket(s);
                let server = s.label("server_id");
                let to = if server.is_empty() {
                    format!("authority:{}", s.label("authority"))
                } else {
                    server.to_owned()
                };
                edges.entry((me.clone(), to)).or_default().caller.bucket(s);
            }
            ("retries_total" | "retry_budget_exhausted_total", _) => {
                let key = (
                    me.clone(),
                    s.label("route").to_owned(),
                    s.label("backend").to_owned(),
                );
                let r = retries.entry(key).or_default();
                if s.name == "retries_total" {
                    r.0 += s.value;
                } else {
                    r.1 += s.value;
                }
            }
            ("authz_decisions_total", _) if s.label("decision") != "allow" => {
                let key = (
                    me.clone(),
                    s.label("service").to_owned(),
                    s.label("decision").to_owned(),
                    s.label("policy").to_owned(),
                );
                *decisions.entry(key).or_default() += s.value;
            }
            ("rate_limited_total", _) => {
                let key = (
                    me.clone(),
                    s.label("service").to_owned(),
                    "rate-limited".to_owned(),
                    format!("scope:{}", s.label("scope")),
                );
                *decisions.entry(key).or_default() += s.value;
            }
            _ => {}
        }
    }

    for t in targets.values() {
        if t.kind == TargetKind::ControlPlane {
            has_cp = true;
            cp.instances.push(t.instance.clone());
            cp.up |= t.up;
            cp.nacks_total += t.nacks_total;
            cp.config_version = match (cp.config_version, t.config_version) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    for s in &r.values {
        if targets
            .get(s.label(INSTANCE))
            .is_some_and(|t| t.kind == TargetKind::ControlPlane)
        {
            match s.name.as_str() {
                "discovery_connected_proxies" => cp.connected_proxies += s.value,
                "registrations_active" => cp.registrations += s.value,
                _ => {}
            }
        }
    }

    // Every workload: the proxies', then the peers seen only from the other end.
    let mut ids: BTreeSet<String> = identity_of.values().cloned().collect();
    for (from, to) in edges.keys() {
        ids.insert(from.clone());
        ids.insert(to.clone());
    }
    let names = short_names(&ids);
    let proxied: BTreeSet<&String> = identity_of.values().collect();
    let services = ids
        .iter()
        .map(|id| Service {
            id: id.clone(),
            name: names[id].clone(),
            kind: if proxied.contains(id) {
                "workload"
            } else if id == UNMESHED {
                "unmeshed"
            } else if id.starts_with("authority:") {
                "external"
            } else {
                "peer"
            },
            authorities: authorities
                .get(id)
                .map(|a| a.iter().cloned().collect())
                .unwrap_or_default(),
            inbound: inbound.get(id).map(Acc::traffic).unwrap_or_default(),
            outbound: outbound.get(id).map(Acc::traffic).unwrap_or_default(),
            trend: Vec::new(),
        })
        .collect();
    let edges = edges
        .into_iter()
        .filter(|(_, e)| e.caller.total > 0.0 || e.callee.total > 0.0)
        .map(|((from, to), e)| {
            let caller_is_target = proxied.contains(&from);
            let traffic = if caller_is_target && e.caller.total > 0.0 {
                e.caller.traffic()
            } else {
                e.callee.traffic()
            };
            Edge {
                callee: (e.callee.total > 0.0).then(|| e.callee.traffic()),
                mtls: e.mtls_in.or(e.mtls_out).unwrap_or(false),
                client_id: e.client_id,
                server_id: e.server_id,
                authorities: e.authorities.into_iter().collect(),
                from,
                to,
                traffic,
            }
        })
        .collect();
    let splits = splits
        .into_iter()
        .filter_map(|((client, authority), by_server)| {
            let rps: f64 = by_server.values().map(|a| a.total).sum();
            (rps > 0.0).then(|| Split {
                client,
                authority,
                rps,
                backends: by_server
                    .iter()
                    .filter(|(_, a)| a.total > 0.0)
                    .map(|(server, a)| Backend {
                        server_id: server.clone(),
                        name: names.get(server).cloned().unwrap_or_else(|| {
                            if server.is_empty() {
                                "(the proxy itself)".to_owned()
                            } else {
                                server.clone()
                            }
                        }),
                        rps: a.total,
                        share: a.total / rps,
                        success: a.traffic().success,
                    })
                    .collect(),
            })
        })
        .collect();
    Mesh {
        targets: targets.into_values().collect(),
        services,
        edges,
        splits,
        retries: retries
            .into_iter()
            .filter(|(_, (r, b))| *r > 0.0 || *b > 0.0)
            .map(|((at, route, backend), (rps, b))| Retries {
                at,
                route,
                backend,
                rps,
                budget_exhausted_rps: b,
            })
            .collect(),
        errors: errors
            .into_iter()
            .map(
                |((at, direction, authority, reason, status, client_id), rps)| ProxyError {
                    at,
                    direction,
                    authority,
                    reason,
                    status,
                    client_id,
                    rps,
                    first_seen: now,
                    last_seen: now,
                },
            )
            .collect(),
        decisions: decisions
            .into_iter()
            .map(|((at, service, decision, policy), rps)| Decision {
                at,
                service,
                decision,
                policy,
                rps,
                first_seen: now,
                last_seen: now,
            })
            .collect(),
        control_plane: has_cp.then_some(cp),
    }
}

#[derive(Debug, Default)]
struct EdgeAcc {
    caller: Acc,
    callee: Acc,
    mtls_in: Option<bool>,
    mtls_out: Option<bool>,
    client_id: String,
    server_id: String,
    authorities: BTreeSet<String>,
}

fn error_key(me: &str, s: &Sample) -> (String, String, String, String, String, String) {
    (
        me.to_owned(),
        s.label("direction").to_owned(),
        s.label("authority").to_owned(),
        s.label("error").to_owned(),
        s.label("status_code").to_owned(),
        s.label("client_id").to_owned(),
    )
}

/// `spiffe://td/ns/NS/sa/SA` → `SA`, or `NS/SA` when two namespaces share the name; other
/// IDs as they are.
fn short_names(ids: &BTreeSet<String>) -> BTreeMap<String, String> {
    let parts = |id: &str| -> Option<(String, String)> {
        let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
        let mut segs = path.split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                Some((ns.to_owned(), sa.to_owned()))
            }
            _ => None,
        }
    };
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for id in ids {
        if let Some((_, sa)) = parts(id) {
            *count.entry(sa).or_default() += 1;
        }
    }
    ids.iter()
        .map(|id| {
            let name = match parts(id) {
                Some((ns, sa)) if count[&sa] > 1 => format!("{ns}/{sa}"),
                Some((_, sa)) => sa,
                None => id
                    .strip_prefix("authority:")
                    .or_else(|| id.strip_prefix("instance:"))
                    .unwrap_or(id)
                    .to_owned(),
            };
            (id.clone(), name)
        })
        .collect()
}

#[cfg(test)]
mod tests;
