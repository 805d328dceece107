//! The bench's output: a text summary, or one JSON object.

use std::time::Duration;

use super::{Args, Change, Mode, Results};
use crate::discovery::control_plane::Histogram;
use crate::discovery::{CONNECTED, PUSH_LATENCY};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn print(args: &Args, r: &Results, json: bool) {
    let n = args.proxies;
    let kib_per_proxy = r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64 / n as f64;
    let mut conv: Vec<Duration> = r.changes.iter().map(|c| c.converged).collect();
    conv.sort_unstable();
    // The per-proxy distribution of the median change (by convergence time).
    let shown = {
        let mut by_conv: Vec<&Change> = r.changes.iter().collect();
        by_conv.sort_by_key(|c| c.converged);
        by_conv.get(by_conv.len() / 2).copied()
    };
    let push = |h: &Option<Histogram>, q: f64| {
        h.as_ref()
            .and_then(|h| h.quantile(q))
            .map(|(v, le)| (v * 1e3, le * 1e3))
    };
    let gauge_ok = r.connected_gauge == Some(n as f64);
    if json {
        println!("{}", to_json(args, r));
        return;
    }
    println!(
        "discovery ({}): {n} proxies, {} services{}, {} endpoints/service, {} identities; {} cores shared by the proxies and the control plane",
        args.mode.as_str(),
        args.services,
        if args.mode == Mode::OnDemand {
            format!(" ({} per proxy)", args.subscriptions)
        } else {
            String::new()
        },
        args.endpoints_per_service,
        args.identities,
        r.cores,
    );
    println!(
        "  initial sync: all {n} connected and synced in {:.2} s (connect concurrency {}); per proxy p50 {:.1} ms, p99 {:.1} ms",
        r.initial_sync.as_secs_f64(),
        args.connect_concurrency,
        ms(pct(&r.per_proxy_sync, 0.50)),
        ms(pct(&r.per_proxy_sync, 0.99)),
    );
    for (k, c) in r.changes.iter().enumerate() {
        println!(
            "  change {k}: {} -> {} subscribers ACKed in {:.1} ms (Apply RPC {:.1} ms); per proxy p50 {:.1} / p99 {:.1} / max {:.1} ms{}",
            c.service,
            c.subscribers,
            ms(c.converged),
            ms(c.apply_rpc),
            ms(pct(&c.per_proxy, 0.50)),
            ms(pct(&c.per_proxy, 0.99)),
            ms(pct(&c.per_proxy, 1.0)),
            if c.distinct_versions == 1 {
                String::new()
            } else {
                format!(" ({} DIFFERENT VERSIONS)", c.distinct_versions)
            },
        );
    }
    if !conv.is_empty() {
        println!(
            "  convergence over {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            conv.len(),
            ms(pct(&conv, 0.50)),
            ms(pct(&conv, 0.99)),
            ms(pct(&conv, 1.0)),
        );
    }
    if let Some(c) = shown {
        println!(
            "  per-proxy latency of the median change ({}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            c.service,
            ms(pct(&c.per_proxy, 0.50)),
            ms(pct(&c.per_proxy, 0.99)),
            ms(pct(&c.per_proxy, 1.0)),
        );
    }
    println!(
        "  control plane RSS: {:.1} MiB before proxies, {:.1} MiB with {n} synced = {kib_per_proxy:.1} KiB per proxy (bench process: {:.1} MiB)",
        r.rss_before_kib as f64 / 1024.0,
        r.rss_after_kib as f64 / 1024.0,
        r.bench_rss_kib as f64 / 1024.0,
    );
    // Pushes answering a new subscription carry no store change, so they are not observed;
    // when the whole run saw nothing else, one line says it all.
    let same = matches!((&r.push_all, &r.push_changes), (Some(a), Some(c)) if a.count == c.count);
    let hists: &[(&str, &Option<Histogram>)] = if same {
        &[("route changes", &r.push_changes)]
    } else {
        &[
            ("whole run", &r.push_all),
            ("route changes", &r.push_changes),
        ]
    };
    for &(what, h) in hists {
        match (h, push(h, 0.50), push(h, 0.99)) {
            (Some(h), Some(p50), Some(p99)) => println!(
                "  {PUSH_LATENCY} ({what}): {} pushes, p50 ≈ {:.2} ms, p99 ≈ {:.2} ms (bucket ≤ {} ms)",
                h.count, p50.0, p99.0, p99.1
            ),
            (Some(h), _, _) => println!("  {PUSH_LATENCY} ({what}): {} pushes", h.count),
            (None, _, _) => println!("  {PUSH_LATENCY}: not exported"),
        }
    }
    println!(
        "  {CONNECTED} = {} ({})",
        r.connected_gauge
            .map_or("missing".to_owned(), |v| v.to_string()),
        if gauge_ok {
            "= N, ok".to_owned()
        } else {
            format!("EXPECTED {n}")
        },
    );
    if r.log_warnings + r.log_errors > 0 {
        println!(
            "  control plane logged {} warnings and {} errors",
            r.log_warnings, r.log_errors
        );
    }
}

/// Every figure as one JSON object (what `--json` prints).
pub(super) fn to_json(args: &Args, r: &Results) -> serde_json::Value {
    let n = args.proxies;
    let kib_per_proxy = r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64 / n as f64;
    let mut conv: Vec<Duration> = r.changes.iter().map(|c| c.converged).collect();
    conv.sort_unstable();
    let push = |h: &Option<Histogram>, q: f64| {
        h.as_ref()
            .and_then(|h| h.quantile(q))
            .map(|(v, le)| (v * 1e3, le * 1e3))
    };
    let gauge_ok = r.connected_gauge == Some(n as f64);
    let changes: Vec<_> = r
        .changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "service": c.service, "subscribers": c.subscribers,
                "converged_ms": ms(c.converged), "apply_rpc_ms": ms(c.apply_rpc),
                "per_proxy_p50_ms": ms(pct(&c.per_proxy, 0.50)),
                "per_proxy_p99_ms": ms(pct(&c.per_proxy, 0.99)),
                "per_proxy_max_ms": ms(pct(&c.per_proxy, 1.0)),
                "distinct_versions": c.distinct_versions,
            })
        })
        .collect();
    let hist = |h: &Option<Histogram>| {
        h.as_ref().map(|h| {
            serde_json::json!({
                "count": h.count, "sum_seconds": h.sum,
                "p50_ms": push(&Some(h.clone()), 0.50).map(|v| v.0),
                "p99_ms": push(&Some(h.clone()), 0.99).map(|v| v.0),
                "p99_bucket_le_ms": push(&Some(h.clone()), 0.99).map(|v| v.1),
            })
        })
    };
    serde_json::json!({
        "bench": "discovery", "mode": args.mode.as_str(), "proxies": n,
        "services": args.services, "subscriptions": args.subscriptions,
        "endpoints_per_service": args.endpoints_per_service, "identities": args.identities,
        "connect_concurrency": args.connect_concurrency, "cores": r.cores,
        "initial_sync_ms": ms(r.initial_sync),
        "per_proxy_sync_p50_ms": ms(pct(&r.per_proxy_sync, 0.50)),
        "per_proxy_sync_p99_ms": ms(pct(&r.per_proxy_sync, 0.99)),
        "convergence_p50_ms": ms(pct(&conv, 0.50)),
        "convergence_p99_ms": ms(pct(&conv, 0.99)),
        "convergence_max_ms": ms(pct(&conv, 1.0)),
        "changes": changes,
        "control_plane_rss_before_kib": r.rss_before_kib,
        "control_plane_rss_after_kib": r.rss_after_kib,
        "kib_per_proxy": kib_per_proxy,
        "bench_rss_kib": r.bench_rss_kib,
        "connected_proxies_gauge": r.connected_gauge,
        "connected_proxies_gauge_ok": gauge_ok,
        "push_latency_all": hist(&r.push_all),
        "push_latency_changes": hist(&r.push_changes),
        "control_plane_log_warnings": r.log_warnings,
        "control_plane_log_errors": r.log_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(pct(&v, 0.5), Duration::from_millis(50));
        assert_eq!(pct(&v, 0.99), Duration::from_millis(99));
        assert_eq!(pct(&v, 1.0), Duration::from_millis(100));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
    }
}
