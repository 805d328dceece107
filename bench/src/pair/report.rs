//! The pair bench's output: markdown tables (medians over rounds, Weft against HAProxy and
//! the goals, then every round), or one JSON object with every figure.

use std::time::Duration;

use serde_json::json;

use super::goals::{
    ADDED_P99_VS_HAPROXY, RSS_IDLE_MAX_BYTES, RSS_LOAD_MAX_BYTES, THROUGHPUT_VS_HAPROXY,
    VCPU_PER_KRPS_MAX, proxy_goals, vs_haproxy,
};
use super::load::Usage;
use super::{Results, StartTime, TargetKind, TargetResult};

/// Issue 5: the split target's closed-loop throughput at least this share of the plain pair's.
const SPLIT_RATIO_TARGET: f64 = 0.95;
/// Issue 16: the authz target's closed-loop throughput at least this share of the plain pair's.
const AUTHZ_RATIO_TARGET: f64 = 0.97;
/// weft-traced / weft: tracing on at 1 % sampling (issue 19).
const TRACED_RATIO_TARGET: f64 = 0.97;

pub(crate) fn print(r: &Results, json: bool) {
    if json {
        println!("{}", to_json(r));
    } else {
        print!("{}", markdown(r));
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn met_opt(ok: Option<bool>) -> &'static str {
    ok.map_or("n/a", met)
}

fn opt3(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.3}"))
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// vCPU per 1,000 rps achieved.
fn per_krps(u: &Usage, rps: f64) -> f64 {
    if rps > 0.0 {
        u.vcpu() / (rps / 1000.0)
    } else {
        0.0
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Per proxy `i` of a target: (median vCPU, median vCPU per 1,000 rps) of the closed-loop
/// runs or of the fixed-rate runs.
pub(super) fn cpu(t: &TargetResult, i: usize, fixed_rate: bool) -> (f64, f64) {
    let pairs: Vec<(f64, f64)> = t
        .rounds
        .iter()
        .filter_map(|r| {
            let (usage, rps) = if fixed_rate {
                (r.oha_usage.get(i)?, r.oha.rps)
            } else {
                (r.wrk_usage.get(i)?, r.wrk.rps)
            };
            Some((usage.vcpu(), per_krps(usage, rps)))
        })
        .collect();
    (
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
    )
}

pub(super) fn rss_under_load(t: &TargetResult, i: usize) -> u64 {
    t.rounds
        .iter()
        .filter_map(|r| r.oha_usage.get(i).map(|u| u.rss_max_kib))
        .max()
        .unwrap_or_default()
}

/// `weft-split` closed-loop throughput against `weft`'s: (ratio of the medians, ratio in each
/// round), or `None` if either target is missing.
fn split_ratio(r: &Results) -> Option<(f64, Vec<f64>)> {
    ratio_to_weft(r, TargetKind::WeftSplit)
}

/// `kind`'s closed-loop throughput against `weft`'s, as [`split_ratio`].
fn ratio_to_weft(r: &Results, kind: TargetKind) -> Option<(f64, Vec<f64>)> {
    let find = |k| r.targets.iter().find(|t| t.kind == k);
    let (plain, split) = (find(TargetKind::Weft)?, find(kind)?);
    let rps = |t: &TargetResult| t.rounds.iter().map(|x| x.wrk.rps).collect::<Vec<_>>();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let each = rps(split)
        .iter()
        .zip(rps(plain))
        .map(|(&s, p)| ratio(s, p))
        .collect();
    Some((ratio(median(rps(split)), median(rps(plain))), each))
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= SPLIT_RATIO_TARGET {
        "met"
    } else {
        "missed"
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn markdown(r: &Results) -> String {
    let a = &r.args;
    let m = &r.machine;
    let mut s = String::new();
    let secs = a.duration.as_secs();
    s += &format!(
        "## weft-bench pair: {} round(s) × {secs} s per run, {} connections, fixed rate {} rps\n\n",
        a.rounds, a.connections, a.rate
    );
    s += &format!(
        "Machine: {} × {}, {} MiB, Linux {}. Load average (1/5/15 min) at start {}, at end {}. CPU busy outside the bench's processes during the run: {:.2} vCPU on average.\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_mib,
        m.kernel,
        m.loadavg_start,
        m.loadavg_end,
        m.other_vcpu
    );
    s += &format!(
        "Tools: {}, {}, {}, {}; Weft binaries from {}{}.\n\n",
        r.tools.wrk_version,
        r.tools.oha_version,
        r.tools.nginx_version,
        r.tools.haproxy_version,
        a.bin_dir.display(),
        a.proxy_bin
            .as_ref()
            .map(|p| format!(", weft-proxy {}", p.display()))
            .unwrap_or_default()
    );

    s += &format!(
        "| target | closed loop: rps, median [min–max] | closed loop: p50 / p99 | at {} rps: achieved | at {} rps: p50 / p99 / p99.9 | errors |\n|---|---|---|---|---|---|\n",
        a.rate, a.rate
    );
    for t in &r.targets {
        let rps: Vec<f64> = t.rounds.iter().map(|x| x.wrk.rps).collect();
        let (lo, hi) = min_max(&rps);
        let errors: u64 = t.rounds.iter().map(|x| x.wrk.errors + x.oha.errors).sum();
        let med = |f: fn(&super::Round) -> f64| median(t.rounds.iter().map(f).collect());
        s += &format!(
            "| {} | {:.0} [{:.0}–{:.0}] | {:.3} / {:.3} ms | {:.0} | {:.3} / {:.3} / {:.3} ms | {} |\n",
            t.kind.name(),
            median(rps.clone()),
            lo,
            hi,
            med(|x| x.wrk.p50_ms),
            med(|x| x.wrk.p99_ms),
            med(|x| x.oha.rps),
            med(|x| x.oha.p50_ms),
            med(|x| x.oha.p99_ms),
            med(|x| x.oha.p999_ms),
            errors
        );
    }

    s += &format!(
        "\n| proxy | RSS idle (anon + file) | RSS max at {} rps | VmHWM (life) | vCPU at {} rps | vCPU per 1,000 rps at {} rps | vCPU closed loop | vCPU per 1,000 rps closed loop |\n|---|---|---|---|---|---|---|---|\n",
        a.rate, a.rate, a.rate
    );
    for t in &r.targets {
        for (i, p) in t.proxies.iter().enumerate() {
            let (fixed, fixed_k) = cpu(t, i, true);
            let (closed, closed_k) = cpu(t, i, false);
            s += &format!(
                "| {} {} | {} ({} + {}) | {} | {} | {fixed:.3} | {fixed_k:.4} | {closed:.3} | {closed_k:.4} |\n",
                t.kind.name(),
                p.role,
                mib(p.rss_idle_kib),
                mib(p.rss_anon_idle_kib),
                mib(p.rss_file_idle_kib),
                mib(rss_under_load(t, i)),
                mib(p.hwm_kib),
            );
        }
    }

    if let Some((ratio, each)) = ratio_to_weft(r, TargetKind::WeftAuthz) {
        let each: Vec<String> = each.iter().map(|x| format!("{x:.3}")).collect();
        s += &format!(
            "\nweft-authz / weft, closed-loop throughput (medians): {ratio:.3} (each round: {}); target ≥ {AUTHZ_RATIO_TARGET}: {}.\n",
            each.join(", "),
            if ratio >= AUTHZ_RATIO_TARGET {
                "met"
            } else {
                "missed"
            }
        );
    }
    if let Some((ratio, each)) = ratio_to_weft(r, TargetKind::WeftTraced) {
        let each: Vec<String> = each.iter().map(|x| format!("{x:.3}")).collect();
        s += &format!(
            "\nweft-traced / weft, closed-loop throughput (medians): {ratio:.3} (each round: {}); target ≥ {TRACED_RATIO_TARGET}: {}. Its OTLP receiver got {} spans over the measured runs.\n",
            each.join(", "),
            if ratio >= TRACED_RATIO_TARGET {
                "met"
            } else {
                "missed"
            },
            r.traced_spans,
        );
    }
    if let Some((ratio, each)) = ratio_to_weft(r, TargetKind::WeftTwin) {
        let each: Vec<String> = each.iter().map(|x| format!("{x:.3}")).collect();
        s += &format!(
            "\nweft-twin / weft, closed-loop throughput (medians): {ratio:.3} (each round: {}): two identical plain pairs, the noise floor of the ratios above and below.\n",
            each.join(", "),
        );
    }
    if let Some((ratio, each)) = split_ratio(r) {
        let c = &r.split;
        s += &format!(
            "\nweft-split / weft, closed-loop throughput (medians): {ratio:.3} (each round: {}); target ≥ {SPLIT_RATIO_TARGET}: {}. Over the measured runs the split's servers received {} (v1) and {} (v2) requests, v2 share {:.1} %; its client sent {} retries.\n",
            each.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            verdict(ratio),
            c.v1,
            c.v2,
            c.v2_share() * 100.0,
            c.retries,
        );
    }

    s += &vs_haproxy_markdown(r);

    s += &format!(
        "\nStart → ready ({} fresh client-side proxies of each kind against the running server side; polled every 1 ms): median [max]\n\n| target | spawn → readiness endpoint 200 | spawn → first request through the pair | each (first request) |\n|---|---|---|---|\n",
        r.args.starts
    );
    for (kind, times) in &r.starts {
        let ready: Vec<f64> = times.iter().filter_map(|t| t.ready).map(ms).collect();
        let first: Vec<f64> = times.iter().map(|t| ms(t.first_request)).collect();
        let cell = |v: &[f64]| {
            if v.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.1} [{:.1}] ms", median(v.to_vec()), min_max(v).1)
            }
        };
        s += &format!(
            "| {} | {} | {} | {} |\n",
            kind.name(),
            cell(&ready),
            cell(&first),
            first
                .iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    s += &format!(
        "\nEvery round (machine vCPU: cores busy on the whole machine during the run, of {}):\n\n| round | target | closed loop rps | p50 / p99 | machine vCPU | fixed rate: achieved | p50 / p99 / p99.9 | machine vCPU | proxies' vCPU at fixed rate |\n|---|---|---|---|---|---|---|---|---|\n",
        r.machine.nproc
    );
    let rounds = r.targets.iter().map(|t| t.rounds.len()).max().unwrap_or(0);
    for i in 0..rounds {
        for t in &r.targets {
            let Some(x) = t.rounds.get(i) else { continue };
            let vcpu = if t.proxies.is_empty() {
                "–".to_owned()
            } else {
                t.proxies
                    .iter()
                    .zip(&x.oha_usage)
                    .map(|(p, u)| format!("{} {:.3}", p.role, u.vcpu()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            s += &format!(
                "| {} | {} | {:.0} | {:.3} / {:.3} ms | {:.2} | {:.0} | {:.3} / {:.3} / {:.3} ms | {:.2} | {vcpu} |\n",
                i + 1,
                t.kind.name(),
                x.wrk.rps,
                x.wrk.p50_ms,
                x.wrk.p99_ms,
                x.wrk_machine_vcpu,
                x.oha.rps,
                x.oha.p50_ms,
                x.oha.p99_ms,
                x.oha.p999_ms,
                x.oha_machine_vcpu,
            );
        }
    }
    s += "\nExact commands (URLs and paths are this run's; the peers' configs are in its temp dir, or in `--out` of `weft-bench all`):\n\n```sh\n";
    for c in &r.commands {
        s += c;
        s += "\n";
    }
    s += "```\n";
    s
}

/// Weft against the HAProxy pair (issue 6), then each proxy against the per-proxy goals.
fn vs_haproxy_markdown(r: &Results) -> String {
    let mut s = String::new();
    let cmp = vs_haproxy(&r.targets);
    if !cmp.is_empty() {
        s += &format!(
            "\nAgainst the HAProxy pair (medians over rounds; added p99 = the pair's p99 at {} rps minus direct's; when a pair's added p99 is not positive, direct's p99 was disturbed and the verdict comes from the p99 ratio, an upper bound of the added-p99 ratio when below 1):\n\n| pair | closed loop rps | ÷ HAProxy (goal for weft ≥ {THROUGHPUT_VS_HAPROXY}) | added p99 | ÷ HAProxy's (goal for weft ≤ {ADDED_P99_VS_HAPROXY}) | p99 ÷ HAProxy's |\n|---|---|---|---|---|---|\n",
            r.args.rate
        );
        for c in &cmp {
            let verdicts = |x: Option<bool>| {
                if c.kind == TargetKind::Weft {
                    format!(": {}", met_opt(x))
                } else {
                    String::new()
                }
            };
            s += &format!(
                "| {} | {:.0} | {}{} | {:+.3} ms | {}{} | {} |\n",
                c.kind.name(),
                c.rps,
                opt3(c.throughput_ratio),
                verdicts(c.throughput_met()),
                c.added_p99_ms,
                opt3(c.added_p99_ratio),
                verdicts(c.added_p99_met()),
                opt3(c.p99_ratio),
            );
        }
    }
    let goals = proxy_goals(&r.targets);
    if !goals.is_empty() {
        s += &format!(
            "\nPer proxy against the goals (they are Weft's; the peers are measured the same way for comparison):\n\n| proxy | RSS idle ≤ 8 MB | RSS max at {} rps ≤ 15 MB | vCPU per 1,000 rps at {} rps ≤ {VCPU_PER_KRPS_MAX} |\n|---|---|---|---|\n",
            r.args.rate, r.args.rate
        );
        for g in &goals {
            s += &format!(
                "| {} {} | {} ({:.1} MB): {} | {} ({:.1} MB): {} | {:.4}: {} |\n",
                g.target.name(),
                g.role,
                mib(g.rss_idle_kib),
                g.rss_idle_kib as f64 * 1024.0 / 1e6,
                met(g.idle_met()),
                mib(g.rss_load_kib),
                g.rss_load_kib as f64 * 1024.0 / 1e6,
                met(g.load_met()),
                g.vcpu_per_krps,
                met(g.cpu_met()),
            );
        }
    }
    s
}

pub(crate) fn to_json(r: &Results) -> serde_json::Value {
    let a = &r.args;
    let usage = |u: &Usage, rps: f64| {
        json!({
            "cpu_seconds": u.cpu_seconds, "wall_seconds": u.wall_seconds, "vcpu": u.vcpu(),
            "vcpu_per_1000_rps": per_krps(u, rps), "rss_max_kib": u.rss_max_kib,
        })
    };
    let targets: Vec<_> = r
        .targets
        .iter()
        .map(|t| {
            let rounds: Vec<_> = t
                .rounds
                .iter()
                .map(|x| {
                    json!({
                        "closed_loop": {
                            "rps": x.wrk.rps, "requests": x.wrk.requests, "p50_ms": x.wrk.p50_ms,
                            "p90_ms": x.wrk.p90_ms, "p99_ms": x.wrk.p99_ms, "errors": x.wrk.errors,
                            "proxies": x.wrk_usage.iter().map(|u| usage(u, x.wrk.rps)).collect::<Vec<_>>(),
                            "machine_vcpu": x.wrk_machine_vcpu,
                        },
                        "fixed_rate": {
                            "rps": x.oha.rps, "p50_ms": x.oha.p50_ms, "p99_ms": x.oha.p99_ms,
                            "p99_9_ms": x.oha.p999_ms, "errors": x.oha.errors,
                            "proxies": x.oha_usage.iter().map(|u| usage(u, x.oha.rps)).collect::<Vec<_>>(),
                            "machine_vcpu": x.oha_machine_vcpu,
                        },
                    })
                })
                .collect();
            let proxies: Vec<_> = t
                .proxies
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (vcpu, per_k) = cpu(t, i, true);
                    let (closed, closed_k) = cpu(t, i, false);
                    json!({
                        "role": p.role, "rss_idle_kib": p.rss_idle_kib,
                        "rss_anon_idle_kib": p.rss_anon_idle_kib, "rss_file_idle_kib": p.rss_file_idle_kib,
                        "rss_max_fixed_rate_kib": rss_under_load(t, i), "vm_hwm_kib": p.hwm_kib,
                        "vcpu_fixed_rate_median": vcpu, "vcpu_per_1000_rps_fixed_rate_median": per_k,
                        "vcpu_closed_loop_median": closed, "vcpu_per_1000_rps_closed_loop_median": closed_k,
                    })
                })
                .collect();
            json!({
                "target": t.kind.name(),
                "closed_loop_rps_median": median(t.rounds.iter().map(|x| x.wrk.rps).collect()),
                "fixed_rate_p50_ms_median": median(t.rounds.iter().map(|x| x.oha.p50_ms).collect()),
                "fixed_rate_p99_ms_median": median(t.rounds.iter().map(|x| x.oha.p99_ms).collect()),
                "fixed_rate_p99_9_ms_median": median(t.rounds.iter().map(|x| x.oha.p999_ms).collect()),
                "rounds": rounds,
                "proxies": proxies,
            })
        })
        .collect();
    let starts: serde_json::Map<String, serde_json::Value> = r
        .starts
        .iter()
        .map(|(kind, times)| (kind.name().to_owned(), starts_json(times)))
        .collect();
    let vs: Vec<_> = vs_haproxy(&r.targets)
        .iter()
        .map(|c| {
            json!({
                "target": c.kind.name(), "closed_loop_rps_median": c.rps,
                "added_p99_ms": c.added_p99_ms,
                "throughput_ratio_to_haproxy": c.throughput_ratio,
                "added_p99_ratio_to_haproxy": c.added_p99_ratio,
                "p99_ratio_to_haproxy": c.p99_ratio,
                "throughput_goal_met": (c.kind == TargetKind::Weft).then(|| c.throughput_met()).flatten(),
                "added_p99_goal_met": (c.kind == TargetKind::Weft).then(|| c.added_p99_met()).flatten(),
            })
        })
        .collect();
    let goals: Vec<_> = proxy_goals(&r.targets)
        .iter()
        .map(|g| {
            json!({
                "target": g.target.name(), "role": g.role,
                "rss_idle_kib": g.rss_idle_kib, "rss_idle_met": g.idle_met(),
                "rss_max_fixed_rate_kib": g.rss_load_kib, "rss_load_met": g.load_met(),
                "vcpu_per_1000_rps_fixed_rate": g.vcpu_per_krps, "cpu_met": g.cpu_met(),
            })
        })
        .collect();
    let split = split_ratio(r).map(|(ratio, each)| {
        json!({
            "closed_loop_rps_ratio_to_weft": ratio, "each_round": each,
            "target": SPLIT_RATIO_TARGET, "met": ratio >= SPLIT_RATIO_TARGET,
            "v1_requests": r.split.v1, "v2_requests": r.split.v2,
            "v2_share": r.split.v2_share(), "retries": r.split.retries,
        })
    });
    json!({
        "bench": "pair",
        "rounds": a.rounds, "duration_s": a.duration.as_secs_f64(), "connections": a.connections,
        "rate": a.rate, "bin_dir": a.bin_dir.display().to_string(),
        "proxy_bin": a.proxy_bin.as_ref().map(|p| p.display().to_string()),
        "machine": {
            "nproc": r.machine.nproc, "cpu_model": r.machine.cpu_model, "kernel": r.machine.kernel,
            "mem_total_mib": r.machine.mem_total_mib, "loadavg_start": r.machine.loadavg_start,
            "loadavg_end": r.machine.loadavg_end, "other_vcpu": r.machine.other_vcpu,
        },
        "tools": {
            "wrk": r.tools.wrk_version, "oha": r.tools.oha_version, "nginx": r.tools.nginx_version,
            "haproxy": r.tools.haproxy_version,
        },
        "targets": targets,
        "weft_split": split,
        "weft_authz": ratio_to_weft(r, TargetKind::WeftAuthz).map(|(ratio, each)| json!({
            "throughput_ratio": ratio, "each_round": each, "target": AUTHZ_RATIO_TARGET,
        })),
        "weft_traced": ratio_to_weft(r, TargetKind::WeftTraced).map(|(ratio, each)| json!({
            "throughput_ratio": ratio, "each_round": each, "target": TRACED_RATIO_TARGET,
            "spans_received": r.traced_spans,
        })),
        "weft_twin": ratio_to_weft(r, TargetKind::WeftTwin).map(|(ratio, each)| json!({
            "throughput_ratio": ratio, "each_round": each,
        })),
        "goals": {
            "throughput_ratio_to_haproxy_min": THROUGHPUT_VS_HAPROXY,
            "added_p99_ratio_to_haproxy_max": ADDED_P99_VS_HAPROXY,
            "rss_idle_max_bytes": RSS_IDLE_MAX_BYTES, "rss_load_max_bytes": RSS_LOAD_MAX_BYTES,
            "vcpu_per_1000_rps_max": VCPU_PER_KRPS_MAX,
        },
        "vs_haproxy": vs,
        "proxy_goals": goals,
        "start_ms": starts,
        "commands": r.commands,
    })
}

fn starts_json(times: &[StartTime]) -> serde_json::Value {
    let ready: Vec<f64> = times.iter().filter_map(|t| t.ready).map(ms).collect();
    let first: Vec<f64> = times.iter().map(|t| ms(t.first_request)).collect();
    json!({
        "ready": (!ready.is_empty()).then(|| json!({
            "each": ready, "median": median(ready.clone()), "max": min_max(&ready).1,
        })),
        "first_request": {
            "each": first, "median": median(first.clone()), "max": min_max(&first).1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let u = Usage {
            cpu_seconds: 1.0,
            wall_seconds: 10.0,
            rss_max_kib: 0,
        };
        assert!((per_krps(&u, 2000.0) - 0.05).abs() < 1e-12);
    }
}
