//! Issue 6's goals and Weft's ratios to the HAProxy pair, as plain functions of the targets'
//! figures (the report prints them as markdown and JSON).

use super::report::{cpu, median, rss_under_load};
use super::{TargetKind, TargetResult};

/// Issue 6: the Weft pair's closed-loop throughput at least this multiple of the HAProxy
/// pair's.
pub(crate) const THROUGHPUT_VS_HAPROXY: f64 = 1.25;
/// Issue 6: the p99 latency the Weft pair adds at the fixed rate (its p99 minus direct's) at
/// most this share of what the HAProxy pair adds.
pub(crate) const ADDED_P99_VS_HAPROXY: f64 = 0.8;
/// Issues 4 and 6, per proxy: RSS idle and under load (bytes, MB = 10⁶), CPU at the fixed
/// rate.
pub(crate) const RSS_IDLE_MAX_BYTES: f64 = 8e6;
pub(crate) const RSS_LOAD_MAX_BYTES: f64 = 15e6;
pub(crate) const VCPU_PER_KRPS_MAX: f64 = 0.05;

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

#[cfg(test)]
mod tests {
    use super::super::load::{OhaResult, Usage, WrkResult};
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
}
