//! `weftctl explain URL`: asks a proxy's admin port (`POST /explain`) what it would do with a
//! request — which route rule matches, the backends and their weights, timeouts and retries,
//! and each endpoint with its balancer and ejection state — and prints it for a person, or as
//! the proxy's JSON with `-o json`.

use std::io::Write;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

/// What to explain.
#[derive(Debug)]
pub struct Explain {
    /// The proxy's admin address (host:port).
    pub admin: String,
    /// `http://name.namespace[:port]/path?query`, or without the scheme.
    pub url: String,
    pub method: String,
    /// `Name: value` each.
    pub headers: Vec<String>,
    pub json: bool,
    /// `--inbound`: ask the server side's inbound policy instead of the client side's routing.
    pub inbound: Option<InboundClient>,
}

/// Who the request of `weftctl explain --inbound` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundClient {
    /// `--from spiffe://…`: a meshed client with this identity.
    Identity(String),
    /// `--plaintext`: a client without a certificate.
    Plaintext,
}

/// Splits a URL into authority and path (with its query).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url:?}: no authority (expected e.g. http://api.default/path)");
    }
    Ok((authority.to_owned(), path.to_owned()))
}

fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?}: expected \"Name: value\""))?;
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(out)
}

pub async fn explain(e: &Explain, out: &mut dyn Write) -> anyhow::Result<()> {
    let (authority, path) = split_url(&e.url)?;
    let headers = parse_headers(&e.headers)?;
    if let Some(client) = &e.inbound {
        return explain_inbound(e, client, &authority, &path, headers, out).await;
    }
    let query = json!({
        "authority": authority,
        "path": path,
        "method": e.method.to_uppercase(),
        "headers": headers,
    });
    let v = post(&e.admin, "/explain", &query).await?;
    if e.json {
        writeln!(out, "{v:#}")?;
    } else {
        write!(out, "{}", render(&v, &e.method.to_uppercase(), &path))?;
    }
    Ok(())
}

/// `--inbound`: the URL's port (if any) is the port the request reaches; a `tcp://` URL asks
/// about an opaque connection.
async fn explain_inbound(
    e: &Explain,
    client: &InboundClient,
    authority: &str,
    path: &str,
    headers: Vec<(String, String)>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let port = match authority.rsplit_once(':') {
        Some((_, p)) => Some(
            p.parse::<u16>()
                .with_context(|| format!("{authority:?}: the port is not a number"))?,
        ),
        None => None,
    };
    let tcp = e.url.starts_with("tcp://");
    let mut query = json!({
        "port": port,
        "headers": headers,
    });
    if let InboundClient::Identity(id) = client {
        query["from"] = json!(id);
    }
    if !tcp {
        // Methods are case-sensitive in policies: sent as given.
        query["method"] = json!(e.method);
        query["path"] = json!(path);
    }
    let v = post(&e.admin, "/explain/inbound", &query).await?;
    if e.json {
        writeln!(out, "{v:#}")?;
    } else {
        write!(out, "{}", render_inbound(&v))?;
    }
    Ok(())
}

/// POSTs a JSON query to a proxy's admin port and returns its JSON answer.
async fn post(admin: &str, path: &str, query: &Value) -> anyhow::Result<Value> {
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("connect to the proxy's admin port {admin}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", admin)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(query.to_string())))?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("POST {path} to {admin}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "the proxy at {admin} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body).context("the proxy's answer is not JSON")
}

/// The server proxy's inbound explanation as text.
pub fn render_inbound(v: &Value) -> String {
    let mut t = String::new();
    let mut line = |l: String| {
        t.push_str(&l);
        t.push('\n');
    };
    if !v["error"].is_null() {
        line(format!("error:     {}", s(&v["error"]["message"])));
        return t;
    }
    let r = &v["request"];
    let what = if r["kind"] == "tcp" {
        "opaque TCP connection".to_owned()
    } else {
        format!("{} {}", s(&r["method"]), s(&r["path"]))
    };
    line(format!(
        "request:   {what} to port {} from {}",
        s(&r["port"]),
        s(&r["client"])
    ));
    if let Some(given) = r["path_given"].as_str() {
        line(format!(
            "           (path as given: {given}; policies see the normalized one)"
        ));
    }
    if let Some(services) = v["services"].as_array()
        && !services.is_empty()
    {
        let names: Vec<String> = services.iter().map(s).collect();
        line(format!(
            "service:   {} (default inbound policy: {})",
            names.join(", "),
            s(&v["default"])
        ));
    }
    match v["policies"].as_array() {
        Some(ps) if !ps.is_empty() => {
            line("policies:".into());
            for p in ps {
                let verdict = if p["matched"] == true {
                    "matched".to_owned()
                } else {
                    format!("not matched ({})", s(&p["why_not"]))
                };
                let audit = if p["mode"] == "Audit" { " [Audit]" } else { "" };
                line(format!(
                    "  {:<32} {:<6}{audit} {verdict}",
                    s(&p["policy"]),
                    s(&p["action"])
                ));
            }
        }
        _ => line("policies:  none target this service".into()),
    }
    if let Some(rl) = v["rate_limit"].as_object() {
        let buckets: Vec<String> = rl
            .get("buckets")
            .and_then(Value::as_array)
            .map(|bs| {
                bs.iter()
                    .map(|b| {
                        format!(
                            "{} {}/{} tokens ({}/s)",
                            s(&b["scope"]),
                            s(&b["tokens"]),
                            s(&b["burst"]),
                            s(&b["requests_per_second"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        line(format!(
            "rate limit: {}: {}",
            s(&v["rate_limit"]["policy"]),
            buckets.join(", ")
        ));
    }
    let d = &v["decision"];
    let verdict = if d["allowed"] == true {
        "ALLOW"
    } else {
        "DENY"
    };
    line(format!(
        "decision:  {verdict} by {} → {}",
        s(&d["by"]),
        s(&d["response"])
    ));
    if let Some(reason) = d["reason"].as_str() {
        line(format!("           {reason}"));
    }
    if let Some(a) = d["audit"].as_object() {
        line(format!(
            "audit:     {} (policy {}, not enforced)",
            s(a.get("outcome").unwrap_or(&Value::Null)),
            s(a.get("policy").unwrap_or(&Value::Null))
        ));
    }
    t
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The proxy's explanation as text.
pub fn render(v: &Value, method: &str, path: &str) -> String {
    let mut t = String::new();
    // Whether an endpoint's latency estimate is high enough to need the note under the list.
    let mut failed_estimate = false;
    let line = |t: &mut String, l: String| {
        t.push_str(&l);
        t.push('\n');
    };
    line(
        &mut t,
        format!("request:   {method} {}{path}", s(&v["authority"])),
    );
    if v["mesh"] == false {
        line(&mut t, format!("result:    {}", s(&v["error"]["message"])));
        return t;
    }
    line(
        &mut t,
        format!(
            "service:   {} port {} ({})",
            s(&v["service"]),
            s(&v["port"]),
            s(&v["protocol"])
        ),
    );
    if !v["error"].is_null() {
        line(
            &mut t,
            format!(
                "result:    the proxy answers itself: x-weft-error: {} ({})",
                s(&v["error"]["reason"]),
                s(&v["error"]["message"])
            ),
        );
        return t;
    }
    match &v["route"] {
        Value::Null => line(&mut t, format!("route:     none ({})", s(&v["note"]))),
        r => line(
            &mut t,
            format!(
                "route:     {} rule {}{}",
                s(r),
                s(&v["rule"]["index"]),
                v["rule"]["name"]
                    .as_str()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        ),
    }
    if !v["timeouts"].is_null() {
        line(
            &mut t,
            format!(
                "timeouts:  request {}, per try {}",
                s(&v["timeouts"]["request"]),
                s(&v["timeouts"]["backend_request"])
            ),
        );
    }
    let r = &v["retry"];
    if r.is_null() {
        line(&mut t, "retries:   none".into());
    } else {
        let list = |x: &Value| {
            x.as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "-".into())
        };
        line(
            &mut t,
            format!(
                "retries:   {} after the first, backoff {}, on {} codes {} grpc {}{}",
                s(&r["attempts"]),
                s(&r["backoff"]),
                list(&r["on"]),
                list(&r["codes"]),
                list(&r["grpc_on"]),
                if r["non_idempotent"] == true {
                    ", non-idempotent methods too"
                } else {
                    ", idempotent methods only"
                }
            ),
        );
        line(
            &mut t,
            format!(
                "budget:    {} % of requests + {}/s over {}",
                s(&r["budget"]["percent"]),
                s(&r["budget"]["min_per_second"]),
                s(&r["budget"]["window"])
            ),
        );
    }
    for b in v["backends"].as_array().into_iter().flatten() {
        let share = b["share"].as_f64().unwrap_or(0.0) * 100.0;
        let p = &b["traffic_policy"];
        line(
            &mut t,
            format!(
                "backend:   {} weight {} ({share:.1} %), {}, eject after {} failures (≤ {} %), ≤ {} pending",
                s(&b["service"]),
                s(&b["weight"]),
                s(&p["load_balancer"]),
                s(&p["outlier_detection"]["consecutive_failures"]),
                s(&p["outlier_detection"]["max_ejection_percent"]),
                s(&p["max_pending_requests"])
            ),
        );
        let eps = b["endpoints"].as_array().cloned().unwrap_or_default();
        if eps.is_empty() {
            line(&mut t, "             no endpoints".into());
        }
        for e in eps {
            let detail = if e["latency_ewma_ms"].is_null() {
                "no requests yet".to_owned()
            } else {
                format!(
                    "ewma {} ms, {} in flight, {} failures in a row",
                    s(&e["latency_ewma_ms"]),
                    s(&e["in_flight"]),
                    s(&e["consecutive_failures"])
                )
            };
            line(
                &mut t,
                format!(
                    "  endpoint {} {} [{}] {}",
                    s(&e["address"]),
                    s(&e["identity"]),
                    s(&e["state"]),
                    detail
                ),
            );
            failed_estimate |= e["latency_ewma_ms"].as_f64().is_some_and(|ms| ms >= 500.0);
        }
    }
    if failed_estimate {
        line(
            &mut t,
            "(a high ewma can come from failures: each failed request counts as at least 1 s in it, which steers the balancer away)".into(),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://api.default/a?b=1").unwrap(),
            ("api.default".into(), "/a?b=1".into())
        );
        assert_eq!(
            split_url("api.default:8080").unwrap(),
            ("api.default:8080".into(), "/".into())
        );
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn a_proxy_generated_answer_is_shown_with_its_reason() {
        let v = json!({
            "authority": "api.default:80", "mesh": true, "service": "default/api", "port": 80,
            "protocol": "http1",
            "error": {"reason": "no-route", "message": "no service or route for GET api.default:80/x"},
        });
        let text = render(&v, "GET", "/x");
        assert!(text.contains("x-weft-error: no-route"), "{text}");
    }

    #[test]
    fn an_estimate_made_of_failures_is_explained() {
        let with = |ewma: f64| {
            json!({
                "authority": "api.default:80", "mesh": true, "service": "default/api", "port": 80,
                "protocol": "http1",
                "backends": [{"service": "default/api-v2", "weight": 1, "share": 1.0,
                    "traffic_policy": {"load_balancer": "peak-ewma", "max_pending_requests": 10,
                        "outlier_detection": {"consecutive_failures": 5, "max_ejection_percent": 50}},
                    "endpoints": [{"address": "10.0.0.2:80", "identity": "spiffe://td/ns/default/sa/api",
                        "state": "active", "latency_ewma_ms": ewma, "in_flight": 0, "consecutive_failures": 1}]}],
            })
        };
        let note = "each failed request counts as at least 1 s";
        let text = render(&with(997.0), "GET", "/");
        assert!(text.contains("ewma 997"), "{text}");
        assert!(text.contains(note), "{text}");
        assert!(!render(&with(12.5), "GET", "/").contains(note));
    }
}
