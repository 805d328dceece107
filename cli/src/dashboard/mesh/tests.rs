use super::*;
use crate::scrape::parse;

const TD: &str = "spiffe://demo.weft/ns/demo/sa/";

fn id(name: &str) -> String {
    format!("{TD}{name}")
}

/// Samples of `text` as read from `instance`.
fn at(instance: &str, text: &str) -> Vec<Sample> {
    parse(text)
        .unwrap()
        .into_iter()
        .map(|mut s| {
            s.labels.push((INSTANCE.into(), instance.into()));
            s
        })
        .collect()
}

fn identity(name: &str) -> String {
    format!(
        "up 1\nidentity_cert_expiration_timestamp_seconds{{identity=\"{}\"}} 2000\ndiscovery_connected 1\nconfig_generation 7\n",
        id(name)
    )
}

/// Inbound responses per second at a proxy, from `client` (empty: plaintext), with `le_10`
/// of them under 10 ms and the rest under 100 ms.
fn inbound(client: &str, code: u16, rps: f64, le_10: f64, error: &str) -> String {
    let (tls, client_id) = if client.is_empty() {
        ("false", String::new())
    } else {
        ("true", id(client))
    };
    let l = format!(
        "direction=\"inbound\",authority=\"x.demo:8080\",status_code=\"{code}\",tls=\"{tls}\",client_id=\"{client_id}\",server_id=\"\",error=\"{error}\""
    );
    format!(
        "response_total{{{l}}} {rps}\nresponse_latency_ms_bucket{{{l},le=\"10.0\"}} {le_10}\nresponse_latency_ms_bucket{{{l},le=\"100.0\"}} {rps}\nresponse_latency_ms_bucket{{{l},le=\"+Inf\"}} {rps}\n"
    )
}

fn outbound(authority: &str, server: &str, code: u16, rps: f64, error: &str) -> String {
    let server_id = if server.is_empty() {
        String::new()
    } else {
        id(server)
    };
    format!(
        "response_total{{direction=\"outbound\",authority=\"{authority}\",status_code=\"{code}\",tls=\"true\",client_id=\"\",server_id=\"{server_id}\",error=\"{error}\"}} {rps}\n"
    )
}

/// The demo's topology: loadgen → web → api (api-v1 90 %, api-v2 10 %, which fails a third
/// of its requests), and the control plane.
fn demo() -> Reading {
    let mut values = Vec::new();
    for (inst, name) in [
        ("l:1", "loadgen"),
        ("w:1", "web"),
        ("v1:1", "api-v1"),
        ("v2:1", "api-v2"),
    ] {
        values.extend(at(inst, &identity(name)));
    }
    values.extend(at(
        "cp:1",
        "up 1\ndiscovery_connected_proxies 4\nregistry_revision 42\nregistrations_active 3\ndiscovery_nacks_total{type=\"service\"} 1\n",
    ));
    let mut rates = Vec::new();
    rates.extend(at("l:1", &outbound("web.demo:8080", "web", 200, 20.0, "")));
    rates.extend(at(
        "w:1",
        &(inbound("loadgen", 200, 20.0, 10.0, "")
            + &outbound("api.demo:8080", "api-v1", 200, 18.0, "")
            + &outbound("api.demo:8080", "api-v2", 200, 1.5, "")
            + &outbound("api.demo:8080", "api-v2", 503, 0.5, "")
            + "retries_total{backend=\"demo/api-v2\",route=\"demo/api-canary\"} 0.5\n"),
    ));
    rates.extend(at("v1:1", &inbound("web", 200, 18.0, 18.0, "")));
    rates.extend(at(
        "v2:1",
        &(inbound("web", 200, 2.0, 2.0, "") + &inbound("web", 503, 1.0, 1.0, "")),
    ));
    rates.extend(at(
        "cp:1",
        "discovery_nacks_total{type=\"service\"} 0.5\ndiscovery_pushes_total{type=\"service\"} 2\n",
    ));
    Reading {
        rates,
        values,
        has_rates: true,
    }
}

fn service<'a>(m: &'a Mesh, name: &str) -> &'a Service {
    m.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}: {m:#?}"))
}

fn edge<'a>(m: &'a Mesh, from: &str, to: &str) -> &'a Edge {
    m.edges
        .iter()
        .find(|e| e.from == from && e.to == to)
        .unwrap_or_else(|| panic!("no edge {from} → {to}: {:#?}", m.edges))
}

#[test]
fn services_have_rates_success_and_quantiles_from_their_own_proxy() {
    let m = build(&demo(), 1000.0);
    let web = service(&m, "web");
    assert_eq!(web.kind, "workload");
    assert_eq!(web.authorities, vec!["x.demo:8080"]);
    assert_eq!(web.inbound.rps, 20.0);
    assert_eq!(web.inbound.success, Some(1.0));
    // Half under 10 ms: the median is the 10 ms bound; p99 interpolates in 10..100 ms.
    assert_eq!(web.inbound.p50_ms, Some(10.0));
    let p99 = web.inbound.p99_ms.unwrap();
    assert!((p99 - 98.2).abs() < 1e-9, "{p99}");
    assert_eq!(web.outbound.rps, 20.0);
    assert_eq!(web.outbound.success, Some(19.5 / 20.0));
    let v2 = service(&m, "api-v2");
    assert_eq!(v2.inbound.rps, 3.0);
    assert_eq!(v2.inbound.success, Some(2.0 / 3.0));
    let loadgen = service(&m, "loadgen");
    assert_eq!((loadgen.inbound.rps, loadgen.inbound.success), (0.0, None));
    assert_eq!(loadgen.outbound.rps, 20.0);
}

#[test]
fn edges_join_both_ends_identities() {
    let m = build(&demo(), 1000.0);
    assert_eq!(m.edges.len(), 3, "{:#?}", m.edges);
    let e = edge(&m, &id("loadgen"), &id("web"));
    assert!(e.mtls);
    assert_eq!(e.client_id, id("loadgen"));
    assert_eq!(e.server_id, id("web"));
    assert_eq!(e.traffic.rps, 20.0);
    assert_eq!(e.authorities, vec!["web.demo:8080"]);
    // The caller's view (after retries) and the callee's (each attempt) differ.
    let e = edge(&m, &id("web"), &id("api-v2"));
    assert_eq!(e.traffic.rps, 2.0);
    assert_eq!(e.traffic.success, Some(0.75));
    assert_eq!(e.callee.as_ref().unwrap().success, Some(2.0 / 3.0));
    assert_eq!(
        (e.client_id.as_str(), e.server_id.as_str()),
        (id("web").as_str(), id("api-v2").as_str())
    );
}

#[test]
fn the_split_is_per_caller_and_authority_by_answering_workload() {
    let m = build(&demo(), 1000.0);
    let s = m
        .splits
        .iter()
        .find(|s| s.authority == "api.demo:8080")
        .unwrap();
    assert_eq!(s.client, id("web"));
    assert_eq!(s.rps, 20.0);
    let shares: Vec<(&str, f64)> = s
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.share))
        .collect();
    assert_eq!(shares, vec![("api-v1", 0.9), ("api-v2", 0.1)]);
    assert_eq!(s.backends[1].success, Some(0.75));
    assert_eq!(m.retries.len(), 1);
    assert_eq!(
        (
            m.retries[0].route.as_str(),
            m.retries[0].backend.as_str(),
            m.retries[0].rps
        ),
        ("demo/api-canary", "demo/api-v2", 0.5)
    );
}

#[test]
fn the_control_plane_and_the_targets() {
    let mut r = demo();
    r.values
        .extend(at("gone:1", "up{error=\"connection refused\"} 0\n"));
    let m = build(&r, 1000.0);
    let cp = m.control_plane.as_ref().unwrap();
    assert_eq!(cp.instances, vec!["cp:1"]);
    assert!(cp.up);
    assert_eq!((cp.connected_proxies, cp.registrations), (4.0, 3.0));
    assert_eq!(cp.config_version, Some(42.0));
    assert_eq!(
        (cp.nacks_total, cp.nacks_rps, cp.pushes_rps),
        (1.0, 0.5, 2.0)
    );
    let t: BTreeMap<&str, &Target> = m.targets.iter().map(|t| (t.instance.as_str(), t)).collect();
    assert_eq!(t["w:1"].kind, TargetKind::Proxy);
    assert_eq!(t["w:1"].identity, id("web"));
    assert_eq!(t["w:1"].connected, Some(true));
    assert_eq!(t["w:1"].config_version, Some(7.0));
    assert_eq!(t["w:1"].cert_expires_in_s, Some(1000.0));
    assert_eq!(t["cp:1"].kind, TargetKind::ControlPlane);
    assert!(!t["gone:1"].up);
    assert_eq!(t["gone:1"].error, "connection refused");
    assert_eq!(t["gone:1"].kind, TargetKind::Unknown);
}

#[test]
fn proxy_errors_denials_and_callers_without_a_certificate() {
    let mut r = demo();
    r.rates.extend(at(
        "v1:1",
        &(inbound("loadgen", 403, 0.5, 0.5, "denied") + &inbound("", 200, 1.0, 1.0, "")
            + "authz_decisions_total{service=\"demo/api\",port=\"8080\",decision=\"deny\",policy=\"allow-policies:demo/api-from-web\",tls=\"true\"} 0.5\n"
            + "authz_decisions_total{service=\"demo/api\",port=\"8080\",decision=\"allow\",policy=\"demo/api-from-web\",tls=\"true\"} 18\n"
            + "rate_limited_total{service=\"demo/api\",scope=\"identity\"} 0.25\n"),
    ));
    r.rates.extend(at(
        "w:1",
        &outbound("db.demo:5432", "", 503, 0.2, "no-endpoints"),
    ));
    let m = build(&r, 1000.0);

    let reasons: Vec<(&str, &str, &str, &str)> = m
        .errors
        .iter()
        .map(|e| {
            (
                e.at.as_str(),
                e.direction.as_str(),
                e.reason.as_str(),
                e.status.as_str(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&(id("api-v1").as_str(), "inbound", "denied", "403")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(id("web").as_str(), "outbound", "no-endpoints", "503")),
        "{reasons:?}"
    );
    let denied = m.errors.iter().find(|e| e.reason == "denied").unwrap();
    assert_eq!(denied.client_id, id("loadgen"));

    let d: Vec<(&str, &str, f64)> = m
        .decisions
        .iter()
        .map(|d| (d.decision.as_str(), d.policy.as_str(), d.rps))
        .collect();
    assert_eq!(
        d,
        vec![
            ("deny", "allow-policies:demo/api-from-web", 0.5),
            ("rate-limited", "scope:identity", 0.25)
        ]
    );

    // A plaintext caller is the unmeshed node; an authority nobody answered is its own node.
    let e = edge(&m, UNMESHED, &id("api-v1"));
    assert!(!e.mtls);
    assert_eq!(e.client_id, "");
    assert_eq!(service(&m, UNMESHED).kind, "unmeshed");
    let e = edge(&m, &id("web"), "authority:db.demo:5432");
    assert_eq!(e.traffic.success, Some(0.0));
    assert_eq!(service(&m, "db.demo:5432").kind, "external");
    // loadgen → api-v1 (denied) is an edge too: the callee verified who called.
    assert_eq!(
        edge(&m, &id("loadgen"), &id("api-v1")).traffic.success,
        Some(1.0)
    );
}

#[test]
fn a_peer_without_a_scraped_proxy_is_still_drawn_and_names_are_short() {
    let r = Reading {
        values: at("w:1", &identity("web")),
        rates: at("w:1", &outbound("pay.shop:80", "pay", 200, 1.0, "")),
        has_rates: true,
    };
    let m = build(&r, 0.0);
    assert_eq!(service(&m, "pay").kind, "peer");
    assert_eq!(edge(&m, &id("web"), &id("pay")).callee, None);

    let ids: BTreeSet<String> = [
        "spiffe://t/ns/a/sa/web",
        "spiffe://t/ns/b/sa/web",
        "spiffe://t/ns/a/sa/api",
        "spiffe://t/custom/path",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let n = short_names(&ids);
    assert_eq!(n["spiffe://t/ns/a/sa/web"], "a/web");
    assert_eq!(n["spiffe://t/ns/b/sa/web"], "b/web");
    assert_eq!(n["spiffe://t/ns/a/sa/api"], "api");
    assert_eq!(n["spiffe://t/custom/path"], "spiffe://t/custom/path");
}

#[test]
fn nothing_is_divided_by_zero_before_traffic() {
    let r = Reading {
        values: at("w:1", &identity("web")),
        rates: at("w:1", &inbound("loadgen", 200, 0.0, 0.0, "")),
        has_rates: true,
    };
    let m = build(&r, 0.0);
    let web = service(&m, "web");
    assert_eq!((web.inbound.success, web.inbound.p50_ms), (None, None));
    assert!(m.edges.is_empty());
    assert!(m.splits.is_empty());
    // Serializes: what the page reads.
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(
        json["services"][0]["inbound"]["success"],
        serde_json::Value::Null
    );
    assert_eq!(json["targets"][0]["kind"], "proxy");
}
