//! "Why did my request go there (or fail)?": for an authority, path, method and headers, what
//! the proxy would do now — the service and port, the route rule that matches (by the same
//! code the data path runs), its backends with their weights and shares, timeouts, retry
//! policy and budget, and every endpoint with its balancer state (latency estimate, requests
//! in flight, failures in a row, ejection). Served as `POST /explain` on the admin port and
//! printed by `weftctl explain`.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use weft_proto::model::{Backend, TrafficPolicy, grpc_code_name};

use crate::balance::Balancers;
use crate::plan::{self, RequestFacts, RuleRef};
use crate::resources::MeshConfig;

/// What to explain (the body of `POST /explain`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// `name.namespace[:port]`.
    pub authority: String,
    #[serde(default = "slash")]
    pub path: String,
    #[serde(default = "get")]
    pub method: String,
    /// Header name → value, as the request would carry them.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn slash() -> String {
    "/".into()
}

fn get() -> String {
    "GET".into()
}

pub fn explain(config: &MeshConfig, balancers: &Balancers, q: &Query) -> Value {
    let now = Instant::now();
    let (path, query) = match q.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (q.path.as_str(), None),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &q.headers {
        let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) else {
            return json!({"error": {"reason": "bad-request", "message": format!("header {k:?}: not a valid header")}});
        };
        headers.append(k, v);
    }
    let facts = RequestFacts {
        method: &q.method,
        path,
        query,
        headers: &headers,
    };
    let Some(target) = plan::target_for(config, &q.authority) else {
        return json!({
            "authority": q.authority,
            "mesh": false,
            "error": {"reason": "outside-mesh", "message": format!(
                "{} names no mesh service port this proxy knows: it would pass through as plain traffic (or be denied with --outside-mesh refuse)",
                q.authority
            )},
        });
    };
    let mut out = json!({
        "authority": target.authority(),
        "mesh": true,
        "service": target.service.service.id.to_string(),
        "port": target.port.port,
        "protocol": format!("{:?}", target.port.protocol).to_lowercase(),
    });
    let rule = match plan::match_rule(&target, &facts) {
        Ok(r) => r,
        Err(e) => {
            out["error"] = json!({"reason": e.reason(), "message": e.to_string()});
            return out;
        }
    };
    let backends: Vec<Backend> = match &rule {
        Some(r) => r.rule().backends.clone(),
        None => vec![plan::default_backend(&target)],
    };
    match &rule {
        Some(r) => {
            out["route"] = json!(r.route().id.to_string());
            out["rule"] = json!({
                "index": r.rule,
                "name": r.rule().name,
            });
            out["timeouts"] = json!({
                "request": r.rule().timeouts.request.map(|d| humantime::format_duration(d).to_string()),
                "backend_request": r.rule().timeouts.backend_request.map(|d| humantime::format_duration(d).to_string()),
            });
            out["retry"] = retry(r);
        }
        None => {
            out["route"] = Value::Null;
            out["note"] = json!(
                "no route attaches to this service port: requests go to the service itself, with no timeouts or retries"
            );
        }
    }
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    out["backends"] = backends
        .iter()
        .map(|b| backend(config, balancers, b, total, now))
        .collect();
    out
}

fn retry(r: &RuleRef) -> Value {
    let Some((retry, policy)) = r.retry() else {
        return json!(null);
    };
    json!({
        "attempts": retry.attempts,
        "codes": retry.codes,
        "backoff": humantime::format_duration(retry.backoff).to_string(),
        "on": policy.on.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
        "grpc_on": policy.grpc_on.iter().filter_map(|c| grpc_code_name(*c)).collect::<Vec<_>>(),
        "non_idempotent": policy.non_idempotent,
        "budget": {
            "percent": policy.budget.percent,
            "min_per_second": policy.budget.min_per_second,
            "window": humantime::format_duration(policy.budget.window).to_string(),
        },
    })
}

fn backend(
    config: &MeshConfig,
    balancers: &Balancers,
    b: &Backend,
    total: u64,
    now: Instant,
) -> Value {
    let key = b.service.to_string();
    let traffic = config
        .services
        .get(&key)
        .map(|s| s.value.service.traffic.clone())
        .unwrap_or_default();
    let states = balancers.describe(&b.service, now);
    let endpoints: Vec<Value> = config
        .endpoints
        .get(&key)
        .map(|set| {
            set.value
                .endpoints
                .iter()
                .map(|e| {
                    let state = states.iter().find(|(a, _)| *a == e.address).map(|(_, s)| s);
                    let status = match (e.ready, state) {
                        (false, _) => "not ready".to_owned(),
                        (true, Some(s)) => match s.ejected_for {
                            // Whole milliseconds: "8s 412ms", not nanoseconds.
                            Some(left) => format!(
                                "ejected for {}",
                                humantime::format_duration(Duration::from_millis(
                                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                                ))
                            ),
                            None if s.probation => "probation (next request decides)".into(),
                            None => "active".into(),
                        },
                        (true, None) => "active".into(),
                    };
                    json!({
                        "address": e.address.to_string(),
                        "identity": e.identity.as_str(),
                        "weight": e.weight,
                        "labels": e.labels,
                        "state": status,
                        "latency_ewma_ms": state.map(|s| (s.ewma_ms * 100.0).round() / 100.0),
                        "in_flight": state.map(|s| s.in_flight),
                        "consecutive_failures": state.map(|s| s.consecutive_failures),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "service": key,
        "port": b.port,
        "weight": b.weight,
        "share": if total == 0 { 0.0 } else { b.weight as f64 / total as f64 },
        "traffic_policy": policy(&traffic),
        "endpoints": endpoints,
    })
}

fn policy(p: &TrafficPolicy) -> Value {
    let o = &p.outlier_detection;
    json!({
        "load_balancer": p.load_balancer.as_str(),
        "max_pending_requests": p.max_pending_requests,
        "outlier_detection": {
            "consecutive_failures": o.consecutive_failures,
            "base_ejection_time": humantime::format_duration(o.base_ejection_time).to_string(),
            "max_ejection_percent": o.max_ejection_percent,
        },
    })
}
