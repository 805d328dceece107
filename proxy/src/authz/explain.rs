//! "Why was I denied?": what this server proxy's inbound policy would do with a request from a
//! given client — the normalized request, every policy that targets the served services with
//! `matched` or why not, the rate-limit buckets, and the decision. It calls the data path's own
//! [`eval::decide`] (with a trace) and [`normalize_path`], so it cannot disagree with them.
//! Served as `POST /explain/inbound` on the admin port and printed by `weftctl explain
//! --inbound`.

use std::net::IpAddr;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};
use weft_certs::SpiffeId;

use super::eval::{self, Facts, HttpFacts};
use super::normalize::normalize_path;
use super::ratelimit::RateLimiter;
use crate::resources::MeshConfig;

/// What to explain (the body of `POST /explain/inbound`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundQuery {
    /// The client's SPIFFE ID; absent: a plaintext client.
    #[serde(default)]
    pub from: Option<String>,
    /// The client's IP address; default 127.0.0.1.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// The port the request is handed to; default the proxy's `--app-port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Absent: an opaque TCP connection.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn error(reason: &str, message: String) -> Value {
    json!({"error": {"reason": reason, "message": message}})
}

/// The explanation, as JSON (see the module doc).
pub fn explain(
    config: &MeshConfig,
    limiter: &RateLimiter,
    app_port: Option<u16>,
    probe_paths: &[(u16, String)],
    q: &InboundQuery,
) -> Value {
    let client = match q.from.as_deref().map(SpiffeId::parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return error("bad-request", format!("from: {e}")),
    };
    let Some(port) = q.port.or(app_port) else {
        return error(
            "no-inbound",
            "this proxy has no inbound side (no --app-port): nothing to explain".into(),
        );
    };
    let ip = q.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut headers = http::HeaderMap::new();
    for (k, v) in &q.headers {
        let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) else {
            return error("bad-request", format!("header {k:?}: not a valid header"));
        };
        headers.append(k, v);
    }
    let given = q.path.as_deref().unwrap_or("/");
    let path_only = given.split_once('?').map_or(given, |(p, _)| p);
    let method = q.method.clone();
    let mut out = json!({
        "request": {
            "client": client.as_ref().map_or_else(|| format!("plaintext {ip}"), ToString::to_string),
            "port": port,
            "kind": if method.is_some() { "http" } else { "tcp" },
        },
    });
    let normalized = if method.is_some() {
        match normalize_path(path_only) {
            Ok(p) => {
                out["request"]["method"] = json!(method);
                out["request"]["path"] = json!(p);
                if p != path_only {
                    out["request"]["path_given"] = json!(path_only);
                }
                Some(p.into_owned())
            }
            Err(e) => {
                out["decision"] = json!({
                    "allowed": false,
                    "response": "400 x-weft-error: bad-request",
                    "by": "path normalization",
                    "reason": e.to_string(),
                });
                return out;
            }
        }
    } else {
        None
    };
    let Some(policy) = config.inbound.as_deref() else {
        let probe_only_note = if probe_paths.is_empty() {
            ""
        } else {
            " (probe paths are configured but only matter under --mtls strict)"
        };
        out["services"] = json!([]);
        out["policies"] = json!([]);
        out["decision"] = json!({
            "allowed": true,
            "by": "default:allow",
            "reason": format!("no policy, rate limit or non-allow default applies to the services this proxy serves{probe_only_note}"),
        });
        return out;
    };
    let facts = Facts {
        client: client.as_ref(),
        ip,
        port,
        http: match (&method, &normalized) {
            (Some(m), Some(p)) => Some(HttpFacts {
                method: m,
                path: p,
                headers: &headers,
            }),
            _ => None,
        },
    };
    let mut trace = Vec::new();
    let decision = eval::decide(&policy.rules, &facts, Some(&mut trace));
    out["services"] = json!(
        policy
            .rules
            .services
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    out["default"] = json!(policy.rules.default.as_str());
    out["policies"] = json!(
        trace
            .iter()
            .map(|t| json!({
                "policy": t.policy.to_string(),
                "action": t.action.as_str(),
                "mode": t.mode.as_str(),
                "matched": t.matched,
                "why_not": t.why_not,
            }))
            .collect::<Vec<_>>()
    );
    let buckets = policy
        .rules
        .rate_limit
        .as_ref()
        .map(|rl| (rl, limiter.state(rl, client.as_ref(), Instant::now())));
    if let Some((rl, buckets)) = &buckets {
        out["rate_limit"] = json!({
            "policy": rl.id.to_string(),
            "buckets": buckets.iter().map(|b| json!({
                "scope": b.scope.as_str(),
                "requests_per_second": b.requests_per_second,
                "burst": b.burst,
                "tokens": (b.tokens * 10.0).floor() / 10.0,
            })).collect::<Vec<_>>(),
        });
    }
    let limited = decision.allowed
        && facts.http.is_some()
        && buckets
            .as_ref()
            .is_some_and(|(_, bs)| bs.iter().any(|b| b.tokens < 1.0));
    let response = match (decision.allowed, limited, facts.http.is_some()) {
        (true, false, _) => "forwarded to the application".to_owned(),
        (true, true, _) => "429 x-weft-error: rate-limited".to_owned(),
        (false, _, false) => "connection closed, nothing forwarded".to_owned(),
        (false, _, true) if client.is_some() => {
            format!("403 x-weft-error: denied, x-weft-policy: {}", decision.by)
        }
        (false, _, true) => "403 (no reason given to a plaintext client)".to_owned(),
    };
    out["decision"] = json!({
        "allowed": decision.allowed,
        "by": decision.by.to_string(),
        "response": response,
        "audit": decision.audit.as_ref().map(|(o, p)| json!({"outcome": o.as_str(), "policy": p.to_string()})),
    });
    out
}
