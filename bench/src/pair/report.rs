//! The pair bench's output: markdown tables (medians over rounds, Weft against HAProxy and
//! the goals, then every round), or one JSON object with every figure.

use std::time::Duration;

use serde_json::json;

use super::load::Usage;
use super::{Results, StartTime, TargetKind, TargetResult};

/// Issue 5: the split target's closed-loop throughput at least this share of the plain pair's.
const SPLIT_RATIO_TARGET: f64 = 0.95;
/// Issue 6: the Weft pair's closed-loop throughput at least this multiple of the HAProxy
/// pair's.
const THROUGHPUT_VS_HAPROXY: f64 = 1.25;
/// Issue 6: the p99 latency the Weft pair adds at the fixed rate (its p99 minus direct's) at
/// most this share of what the HAProxy pair adds.
const ADDED_P99_VS_HAPROXY: f64 = 0.8;
/// Issues 4 and 6, per proxy: RSS idle and under load (bytes, MB = 10⁶), CPU at the fixed
/// rate.
const RSS_IDLE_MAX_BYTES: f64 = 8e6;
const RSS_LOAD_MAX_BYTES: f64 = 15e6;
const VCPU_PER_KRPS_MAX: f64 = 0.05;

pub(crate) fn print(r: &Results, json: bool) {
    if json {
        println!("{}", to_json(r));
    } else {
        print!("{}", markdown(r));
    }
}

/// `a / b`, or `None` when `b` is not a positive number (e.g. a pair that added no latency in
/// a noisy run: no ratio means anything then).
fn ratio_of(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// A pair against direct and against the HAProxy pair.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VsHaproxy {
    pub(crate) kind: TargetKind,
    /// Closed-loop throughput, median over rounds.
    pub(crate) rps: f64,
    /// Median p99 at the fixed rate minus direct's median p99.
    pub(crate) added_p99_ms: f64,
    /// `rps` / the HAProxy pair's.
    pub(crate) throughput_ratio: Option<f64>,
    /// `added_p99_ms` / the HAProxy pair's, when both are positive.
    pub(crate) added_p99_ratio: Option<f64>,
    /// The pair's p99 at the fixed rate / the HAProxy pair's. When it is below 1 it bounds
    /// the added-p99 ratio from above whatever direct's p99 is ((w − d)/(h − d) ≤ w/h for
    /// 0 ≤ d < w ≤ h), so it still gives a verdict when direct's p99 is disturbed by other
    /// load on the machine.
    pub(crate) p99_ratio: Option<f64>,
}

impl VsHaproxy {
    /// Whether the issue-6 goals are met (`None`: no ratio).
    pub(crate) fn throughput_met(&self) -> Option<bool> {
        self.throughput_ratio.map(|x| x >= THROUGHPUT_VS_HAPROXY)
    }

    /// From the added-p99 ratio when there is one, else from its upper bound (the p99 ratio)
    /// when that is met.
    pub(crate) fn added_p99_met(&self) -> Option<bool> {
        match (self.added_p99_ratio, self.p99_ratio) {
            (Some(x), _) => Some(x <= ADDED_P99_VS_HAPROXY),
            (None, Some(b)) if b <= ADDED_P99_VS_HAPROXY => Some(true),
            _ => None,
        }
    }
}

/// Every proxy pair (weft, haproxy, nginx-pair) against the HAProxy pair; empty without
/// direct or HAProxy.
pub(crate) fn vs_haproxy(targets: &[TargetResult]) -> Vec<VsHaproxy> {
    let find = |k| targets.iter().find(|t| t.kind == k);
    let (Some(direct), Some(haproxy)) = (find(TargetKind::Direct), find(TargetKind::Haproxy))
    else {
        return Vec::new();
    };
    let rps = |t: &TargetResult| median(t.rounds.iter().map(|x| x.wrk.rps).collect());
    let p99 = |t: &TargetResult| median(t.rounds.iter().map(|x| x.oha.p99_ms).collect());
    let (h_rps, h_p99, d_p99) = (rps(haproxy), p99(haproxy), p99(direct));
    [TargetKind::Weft, TargetKind::Haproxy, TargetKind::NginxPair]
        .into_iter()
        .filter_map(find)
        .map(|t| {
            let added = p99(t) - d_p99;
            VsHaproxy {
                kind: t.kind,
                rps: rps(t),
                added_p99_ms: added,
                throughput_ratio: ratio_of(rps(t), h_rps),
                added_p99_ratio: ratio_of(added, h_p99 - d_p99).filter(|_| added > 0.0),
                p99_ratio: ratio_of(p99(t), h_p99),
            }
        })
        .collect()
}

/// One proxy's figures against the per-proxy goals.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProxyGoals {
    pub(crate) target: TargetKind,
    pub(crate) role: &'static str,
    pub(crate) rss_idle_kib: u64,
    /// The largest VmRSS sampled during the fixed-rate runs.
    pub(crate) rss_load_kib: u64,
    /// Median over the fixed-rate runs.
    pub(crate) vcpu_per_krps: f64,
}

impl ProxyGoals {
    pub(crate) fn idle_met(&self) -> bool {
        self.rss_idle_kib as f64 * 1024.0 <= RSS_IDLE_MAX_BYTES
    }
    pub(crate) fn load_met(&self) -> bool {
        self.rss_load_kib as f64 * 1024.0 <= RSS_LOAD_MAX_BYTES
    }
    pub(crate) fn cpu_met(&self) -> bool {
        self.vcpu_per_krps <= VCPU_PER_KRPS_MAX
    }
}

/// The per-proxy goals for the proxies of the plain pairs (weft, haproxy, nginx-pair).
pub(crate) fn proxy_goals(targets: &[TargetResult]) -> Vec<ProxyGoals> {
    targets
        .iter()
        .filter(|t| {
            matches!(
                t.kind,
                TargetKind::Weft | TargetKind::Haproxy | TargetKind::NginxPair
            )
        })
        .flat_map(|t| {
            t.proxies.iter().enumerate().map(move |(i, p)| ProxyGoals {
                target: t.kind,
                role: p.role,
                rss_idle_kib: p.rss_idle_kib,
                rss_load_kib: rss_under_load(t, i),
                vcpu_per_krps: cpu(t, i, true).1,
            })
        })
        .collect()
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
    use super::super::load::{OhaResult, WrkResult};
    use super::super::{ProxyMemory, Round};
    use super::*;

    /// A target whose rounds have these closed-loop rps and fixed-rate p99s, and whose one
    /// proxy ("client") used `cpu` seconds in each 10 s fixed-rate run at 2,000 rps.
    fn target(kind: TargetKind, rps: &[f64], p99: &[f64], cpu: f64) -> TargetResult {
        let usage = Usage {
            cpu_seconds: cpu,
            wall_seconds: 10.0,
            rss_max_kib: 14_000,
        };
        TargetResult {
            kind,
            rounds: rps
                .iter()
                .zip(p99)
                .map(|(&rps, &p99_ms)| Round {
                    wrk: WrkResult {
                        rps,
                        ..Default::default()
                    },
                    wrk_usage: vec![usage.clone()],
                    wrk_machine_vcpu: 2.0,
                    oha: OhaResult {
                        rps: 2000.0,
                        p99_ms,
                        ..Default::default()
                    },
                    oha_usage: vec![usage.clone()],
                    oha_machine_vcpu: 1.0,
                })
                .collect(),
            proxies: vec![ProxyMemory {
                role: "client",
                rss_idle_kib: 7_800,
                rss_anon_idle_kib: 1_000,
                rss_file_idle_kib: 6_800,
                hwm_kib: 0,
            }],
        }
    }

    #[test]
    fn ratios_to_haproxy() {
        let targets = vec![
            target(
                TargetKind::Direct,
                &[100e3, 90e3, 110e3],
                &[0.3, 0.2, 0.4],
                0.0,
            ),
            target(TargetKind::Weft, &[25e3, 20e3, 30e3], &[0.7, 0.8, 0.9], 1.0),
            target(
                TargetKind::Haproxy,
                &[20e3, 20e3, 19e3],
                &[1.3, 1.2, 1.4],
                0.5,
            ),
        ];
        let cmp = vs_haproxy(&targets);
        assert_eq!(cmp.len(), 2, "nginx-pair is absent: {cmp:?}");
        let weft = &cmp[0];
        assert_eq!(weft.kind, TargetKind::Weft);
        assert_eq!(weft.throughput_ratio, Some(1.25));
        assert_eq!(weft.throughput_met(), Some(true), "1.25 is the goal itself");
        // Added p99: weft 0.8 − 0.3 = 0.5 ms, HAProxy 1.3 − 0.3 = 1.0 ms.
        assert!((weft.added_p99_ms - 0.5).abs() < 1e-9);
        assert!(weft.added_p99_ratio.is_some_and(|r| (r - 0.5).abs() < 1e-9));
        assert_eq!(weft.added_p99_met(), Some(true));
        assert_eq!(cmp[1].throughput_ratio, Some(1.0));

        // A slower Weft with more added latency misses both.
        let slow = vec![
            target(TargetKind::Direct, &[100e3], &[0.3], 0.0),
            target(TargetKind::Weft, &[24e3], &[1.2], 1.0),
            target(TargetKind::Haproxy, &[20e3], &[1.3], 0.5),
        ];
        let weft = &vs_haproxy(&slow)[0];
        assert_eq!(weft.throughput_met(), Some(false));
        assert_eq!(weft.added_p99_met(), Some(false));

        // HAProxy adding nothing (noise) gives no latency ratio rather than a nonsense one.
        let noisy = vec![
            target(TargetKind::Direct, &[100e3], &[0.5], 0.0),
            target(TargetKind::Weft, &[24e3], &[0.9], 1.0),
            target(TargetKind::Haproxy, &[20e3], &[0.4], 0.5),
        ];
        assert_eq!(vs_haproxy(&noisy)[0].added_p99_ratio, None);
        assert_eq!(vs_haproxy(&noisy)[0].added_p99_met(), None);
        assert!(
            vs_haproxy(&noisy[1..]).is_empty(),
            "no direct, no comparison"
        );
    }

    #[test]
    fn per_proxy_goals() {
        let targets = vec![
            target(TargetKind::Direct, &[100e3], &[0.3], 0.0),
            target(TargetKind::Weft, &[20e3], &[0.8], 1.6),
            target(TargetKind::WeftSplit, &[20e3], &[0.8], 1.6),
            target(TargetKind::Haproxy, &[20e3], &[1.3], 0.6),
        ];
        let goals = proxy_goals(&targets);
        assert_eq!(goals.len(), 2, "only the plain pairs' proxies: {goals:?}");
        let weft = &goals[0];
        // 1.6 s of CPU in 10 s at 2,000 rps: 0.16 vCPU, 0.08 per 1,000 rps.
        assert!((weft.vcpu_per_krps - 0.08).abs() < 1e-9);
        assert!(!weft.cpu_met());
        // 7,800 KiB = 7.99 MB ≤ 8 MB; 14,000 KiB = 14.3 MB ≤ 15 MB.
        assert!(weft.idle_met());
        assert!(weft.load_met());
        assert!(goals[1].cpu_met(), "0.03 per 1,000 rps");
        let big = ProxyGoals {
            rss_idle_kib: 7_813,
            rss_load_kib: 14_649,
            ..weft.clone()
        };
        assert!(!big.idle_met(), "7,813 KiB is 8.0005 MB");
        assert!(!big.load_met(), "14,649 KiB is 15.0006 MB");
    }

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
