//! The pair bench's output: markdown tables (medians over rounds, then every round), or one
//! JSON object with every figure.

use std::time::Duration;

use serde_json::json;

use super::load::Usage;
use super::{Results, TargetKind, TargetResult};

/// Issue 5: the split target's closed-loop throughput at least this share of the plain pair's.
const SPLIT_RATIO_TARGET: f64 = 0.95;

pub(crate) fn print(r: &Results, json: bool) {
    if json {
        println!("{}", to_json(r));
    } else {
        print!("{}", markdown(r));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
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
fn cpu(t: &TargetResult, i: usize, fixed_rate: bool) -> (f64, f64) {
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

fn rss_under_load(t: &TargetResult, i: usize) -> u64 {
    t.rounds
        .iter()
        .filter_map(|r| r.oha_usage.get(i).map(|u| u.rss_max_kib))
        .max()
        .unwrap_or_default()
}

/// `weft-split` closed-loop throughput against `weft`'s: (ratio of the medians, ratio in each
/// round), or `None` if either target is missing.
fn split_ratio(r: &Results) -> Option<(f64, Vec<f64>)> {
    let find = |k| r.targets.iter().find(|t| t.kind == k);
    let (plain, split) = (find(TargetKind::Weft)?, find(TargetKind::WeftSplit)?);
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

fn markdown(r: &Results) -> String {
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
        "Tools: {}, {}, {}; Weft binaries from {}{}.\n\n",
        r.tools.wrk_version,
        r.tools.oha_version,
        r.tools.nginx_version,
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

    let starts: Vec<f64> = r.start_to_ready.iter().map(|&d| ms(d)).collect();
    let (_, max) = min_max(&starts);
    s += &format!(
        "\nStart → ready (a fresh client weft-proxy, spawn → first `/ready` 200, polled every 1 ms, {} starts): median {:.1} ms, max {:.1} ms (each: {}).\n",
        starts.len(),
        median(starts.clone()),
        max,
        starts
            .iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    s += "\nEvery round:\n\n| round | target | closed loop rps | p50 / p99 | fixed rate: achieved | p50 / p99 / p99.9 | proxies' vCPU at fixed rate |\n|---|---|---|---|---|---|---|\n";
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
                "| {} | {} | {:.0} | {:.3} / {:.3} ms | {:.0} | {:.3} / {:.3} / {:.3} ms | {vcpu} |\n",
                i + 1,
                t.kind.name(),
                x.wrk.rps,
                x.wrk.p50_ms,
                x.wrk.p99_ms,
                x.oha.rps,
                x.oha.p50_ms,
                x.oha.p99_ms,
                x.oha.p999_ms,
            );
        }
    }
    s
}

fn to_json(r: &Results) -> serde_json::Value {
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
                        },
                        "fixed_rate": {
                            "rps": x.oha.rps, "p50_ms": x.oha.p50_ms, "p99_ms": x.oha.p99_ms,
                            "p99_9_ms": x.oha.p999_ms, "errors": x.oha.errors,
                            "proxies": x.oha_usage.iter().map(|u| usage(u, x.oha.rps)).collect::<Vec<_>>(),
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
    let starts: Vec<f64> = r.start_to_ready.iter().map(|&d| ms(d)).collect();
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
        "tools": {"wrk": r.tools.wrk_version, "oha": r.tools.oha_version, "nginx": r.tools.nginx_version},
        "targets": targets,
        "weft_split": split,
        "start_to_ready_ms": {
            "each": starts, "median": median(starts.clone()), "max": min_max(&starts).1,
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
