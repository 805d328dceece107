//! Inbound authorization at the server proxy: path normalization ([`normalize`]), the policy
//! decision ([`eval::decide`], one pure function shared by the data path and `explain`), and
//! per-service rate limits ([`ratelimit`]).
//!
//! The policies that apply to this workload are those of the services it serves: the one its
//! endpoint is registered under (`--service`) and every service of that namespace whose
//! selector its labels satisfy. They arrive on those services' discovery resources and are
//! compiled into an [`InboundPolicy`] when a configuration is accepted (in
//! `discovery.rs`), so a request reads the policy of the same snapshot as everything else, once.
//! A workload with nothing to enforce (no policy, default `allow`, no rate limit) compiles to
//! `None`, and its requests skip evaluation entirely.
//!
//! This module turns decisions into effects: the metrics (`authz_decisions_total`,
//! `rate_limited_total`, `authz_terminated_total`), one `info` line per denial or audit finding,
//! and the [`ProxyError`] the one error module turns into a 403 or 429.

pub mod eval;
pub mod explain;
pub mod normalize;
pub mod ratelimit;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tracing::info;
use weft_certs::SpiffeId;
use weft_proto::model::{AuthorizationPolicy, DefaultInbound, ObjectRef, Service};

use crate::error::ProxyError;
use crate::metrics::{AuthzLabels, Metrics, RateLimitLabels};
use crate::resources::MeshConfig;
use eval::{Decision, Facts, HttpFacts, Inbound};
use ratelimit::RateLimiter;

/// What this workload serves: how the proxy finds the policies that apply to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// `--service`: the service its inbound endpoint is registered under.
    pub service: Option<ObjectRef>,
    /// The endpoint's labels, for services that select it.
    pub labels: BTreeMap<String, String>,
    /// `--probe-paths`: (port, path) pairs always answered for GET and HEAD.
    pub probes: Vec<(u16, String)>,
    /// `--default-inbound-policy`: this workload's own default, which can only tighten the
    /// served services' (the strictest applies), never loosen what a service owner set.
    pub default: Option<DefaultInbound>,
}

impl Served {
    fn serves(&self, svc: &Service) -> bool {
        let Some(own) = &self.service else {
            return false;
        };
        svc.id == *own
            || (svc.id.namespace == own.namespace
                && !svc.selector.is_empty()
                && svc
                    .selector
                    .iter()
                    .all(|(k, v)| self.labels.get(k) == Some(v)))
    }
}

/// A workload's compiled inbound policy, shared by the requests of one configuration.
#[derive(Debug)]
pub struct InboundPolicy {
    pub rules: Inbound,
    /// `namespace/name` of the first service served (the registered one), for metrics and logs.
    pub service: String,
    /// `authz_decisions_total` series by what decided, so a request counts without building
    /// its label strings (the policies named are this snapshot's, so their addresses are
    /// stable keys for its life).
    counters: Mutex<HashMap<CounterKey, Counter, foldhash::fast::RandomState>>,
}

impl PartialEq for InboundPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules && self.service == other.service
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CounterKey {
    port: u16,
    tls: bool,
    decision: &'static str,
    /// The variant of `DecidedBy`, and the policy's address or the default's value.
    by: (u8, usize),
}

fn by_key(by: &eval::DecidedBy<'_>) -> (u8, usize) {
    match by {
        eval::DecidedBy::Policy(id) => (0, std::ptr::from_ref(*id) as usize),
        eval::DecidedBy::NoAllowMatched(id) => (1, std::ptr::from_ref(*id) as usize),
        eval::DecidedBy::Default(d) => (2, *d as usize),
        eval::DecidedBy::Probe => (3, 0),
    }
}

/// The inbound policy of `served` in `config`; `None` when there is nothing to enforce.
///
/// Several services served: their policies are pooled (a namespace-wide policy counted once),
/// the strictest default applies (deny, then authenticated, then allow), and the rate limit is
/// the registered service's, else the first other's that has one.
pub fn compile(served: &Served, config: &MeshConfig) -> Option<Arc<InboundPolicy>> {
    let local = served.default.unwrap_or(DefaultInbound::Allow);
    let Some(own) = served.service.as_ref() else {
        // Not registered under a service: only the workload's own default can apply.
        return (local != DefaultInbound::Allow).then(|| {
            Arc::new(InboundPolicy {
                rules: Inbound {
                    services: Vec::new(),
                    policies: Vec::new(),
                    default: local,
                    rate_limit: None,
                    probes: served.probes.clone(),
                },
                service: String::new(),
                counters: Mutex::default(),
            })
        });
    };
    let mut services = Vec::new();
    let mut policies: BTreeMap<ObjectRef, Arc<AuthorizationPolicy>> = BTreeMap::new();
    let mut default = local;
    let mut rate_limit = None;
    let registered = config.services.get(&own.key()).into_iter();
    let others = config
        .services
        .values()
        .filter(|h| h.value.service.id != *own && served.serves(&h.value.service));
    for held in registered.chain(others) {
        let s = &held.value;
        services.push(s.service.id.clone());
        for p in &s.authorization {
            policies.entry(p.id.clone()).or_insert_with(|| p.clone());
        }
        default = default.max(s.default_inbound);
        if rate_limit.is_none() {
            rate_limit.clone_from(&s.rate_limit);
        }
    }
    if policies.is_empty() && default == DefaultInbound::Allow && rate_limit.is_none() {
        return None;
    }
    let service = own.key();
    Some(Arc::new(InboundPolicy {
        rules: Inbound {
            services,
            policies: policies.into_values().collect(),
            default,
            rate_limit,
            probes: served.probes.clone(),
        },
        service,
        counters: Mutex::default(),
    }))
}

/// Who is asking, as the inbound side knows it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The verified SPIFFE ID of an mTLS client; `None` for plaintext.
    pub id: Option<&'a SpiffeId>,
    pub ip: IpAddr,
    /// The port the connection is handed to.
    pub port: u16,
}

impl InboundPolicy {
    /// Authorizes one HTTP request (its path already normalized), then takes its rate-limit
    /// tokens. `Err` is the answer to send instead of forwarding.
    pub fn check_http(
        &self,
        caller: Caller<'_>,
        http: HttpFacts<'_>,
        limiter: &RateLimiter,
        metrics: &Metrics,
    ) -> Result<(), ProxyError> {
        let (method, path) = (http.method, http.path);
        let facts = Facts {
            client: caller.id,
            ip: caller.ip,
            port: caller.port,
            http: Some(http),
        };
        let decision = eval::decide(&self.rules, &facts, None);
        self.record(&decision, caller, metrics, || format!("{method} {path}"));
        if !decision.allowed {
            return Err(ProxyError::Forbidden {
                policy: decision.by.to_string(),
                describe: caller.id.is_some(),
            });
        }
        if let Some(limit) = &self.rules.rate_limit
            && let Err(limited) = limiter.check(limit, caller.id, Instant::now())
        {
            let scope = limited.scope.as_str();
            metrics
                .rate_limited
                .get_or_create(&RateLimitLabels {
                    service: self.service.clone(),
                    scope,
                })
                .inc();
            return Err(ProxyError::RateLimited {
                scope,
                retry_after: limited.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                describe: caller.id.is_some(),
            });
        }
        Ok(())
    }

    /// Authorizes an opaque TCP connection (before a byte is forwarded); `false`: close it.
    /// Rate limits are per request and do not apply.
    pub fn check_tcp(&self, caller: Caller<'_>, metrics: &Metrics) -> bool {
        let decision = self.decide_tcp(caller);
        self.record(&decision, caller, metrics, || "tcp connection".to_owned());
        decision.allowed
    }

    /// The decision for an open TCP connection, silently (re-checked on each new policy).
    pub fn decide_tcp(&self, caller: Caller<'_>) -> Decision<'_> {
        let facts = Facts {
            client: caller.id,
            ip: caller.ip,
            port: caller.port,
            http: None,
        };
        eval::decide(&self.rules, &facts, None)
    }

    fn record(
        &self,
        d: &Decision,
        caller: Caller<'_>,
        metrics: &Metrics,
        what: impl Fn() -> String,
    ) {
        let tls = caller.id.is_some();
        let count = |decision: &'static str, by: (u8, usize), policy: &dyn Fn() -> String| {
            let key = CounterKey {
                port: caller.port,
                tls,
                decision,
                by,
            };
            let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            counters
                .entry(key)
                .or_insert_with(|| {
                    metrics
                        .authz_decisions
                        .get_or_create(&AuthzLabels {
                            service: self.service.clone(),
                            port: caller.port,
                            decision,
                            policy: policy(),
                            tls: crate::listen::tls_label(tls),
                        })
                        .clone()
                })
                .inc();
        };
        count(
            if d.allowed { "allow" } else { "deny" },
            by_key(&d.by),
            &|| d.by.to_string(),
        );
        let client = || match caller.id {
            Some(id) => id.to_string(),
            None => format!("plaintext {}", caller.ip),
        };
        if !d.allowed {
            info!(client = %client(), service = %self.service, request = %what(), policy = %d.by, "denied");
        }
        if let Some((outcome, policy)) = &d.audit {
            let by = (4, std::ptr::from_ref(*policy) as usize);
            count(outcome.as_str(), by, &|| policy.to_string());
            info!(client = %client(), service = %self.service, request = %what(), %policy, outcome = outcome.as_str(), "audit policy finding (not enforced)");
        }
    }
}

#[cfg(test)]
mod tests;
