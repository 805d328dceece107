//! The load generators (wrk closed-loop, oha at a fixed rate with latency correction), their
//! output parsed, and what the proxies' processes used while one ran.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::process::{self, clock_ticks_per_second, cpu_ticks, status_kib};
use super::tools::Tools;

/// Closed loop: `wrk -t1 -c<conns> -d<secs>s --latency URL`.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) requests: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
    pub(crate) errors: u64,
}

/// wrk's arguments (also what the report prints as the exact command).
pub(crate) fn wrk_args(url: &str, conns: usize, duration: Duration) -> Vec<String> {
    let secs = duration.as_secs().max(1);
    vec![
        "-t1".to_owned(),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--latency".to_owned(),
        url.to_owned(),
    ]
}

pub(crate) fn wrk(
    tools: &Tools,
    url: &str,
    conns: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let args = wrk_args(url, conns, duration);
    let mut cmd = Command::new(&tools.wrk);
    cmd.args(&args);
    let out = process::output(cmd).with_context(|| format!("run wrk {}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("wrk {}: unexpected output:\n{text}", args.join(" ")))
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = line.split_once('%') {
                let ms =
                    wrk_duration_ms(value.trim()).with_context(|| format!("latency {value:?}"))?;
                match pct.trim() {
                    "50" => r.p50_ms = ms,
                    "90" => r.p90_ms = ms,
                    "99" => r.p99_ms = ms,
                    _ => {}
                }
                continue;
            }
            in_distribution = false;
        }
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("Requests/sec")?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            r.requests = n.trim().parse().context("requests")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().context("Non-2xx")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    r.errors += n.parse::<u64>().context("Socket errors")?;
                }
            }
        }
    }
    if r.rps <= 0.0 || r.p50_ms <= 0.0 {
        bail!("no Requests/sec or latency distribution");
    }
    Ok(r)
}

/// wrk's latency figures: `123.45us`, `1.20ms`, `2.00s`, `1.50m`.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(n * scale)
}

/// Fixed rate with latency correction (oha measures from when each request was due, so a
/// stall is charged to every request it delayed).
#[derive(Debug, Clone, Default)]
pub(crate) struct OhaResult {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// Responses other than 200, plus errors other than requests cut off by the deadline.
    pub(crate) errors: u64,
}

/// oha's arguments (also what the report prints as the exact command).
pub(crate) fn oha_args(
    tools: &Tools,
    url: &str,
    conns: usize,
    rate: u32,
    duration: Duration,
) -> Vec<String> {
    let secs = duration.as_secs().max(1);
    let mut args: Vec<String> = vec![
        "-z".into(),
        format!("{secs}s"),
        "-q".into(),
        rate.to_string(),
        "-c".into(),
        conns.to_string(),
        "--latency-correction".into(),
        "--no-tui".into(),
    ];
    args.extend(tools.oha_json.iter().map(|s| (*s).to_owned()));
    args.push(url.to_owned());
    args
}

pub(crate) fn oha(
    tools: &Tools,
    url: &str,
    conns: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<OhaResult> {
    let args = oha_args(tools, url, conns, rate, duration);
    let mut cmd = Command::new(&tools.oha);
    cmd.args(&args);
    let out = process::output(cmd).with_context(|| format!("run oha {}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "oha {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_oha(&text).with_context(|| format!("oha {}: unexpected output:\n{text}", args.join(" ")))
}

fn parse_oha(text: &str) -> anyhow::Result<OhaResult> {
    let v: Value = serde_json::from_str(text.trim()).context("not JSON")?;
    let secs_ms = |p: &str| -> anyhow::Result<f64> {
        v["latencyPercentiles"][p]
            .as_f64()
            .map(|s| s * 1e3)
            .with_context(|| format!("no latencyPercentiles.{p}"))
    };
    let mut errors = 0;
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            if code != "200" {
                errors += n.as_u64().unwrap_or_default();
            }
        }
    }
    if let Some(errs) = v["errorDistribution"].as_object() {
        for (what, n) in errs {
            if !what.contains("deadline") {
                errors += n.as_u64().unwrap_or_default();
            }
        }
    }
    Ok(OhaResult {
        rps: v["summary"]["requestsPerSec"]
            .as_f64()
            .context("no summary.requestsPerSec")?,
        p50_ms: secs_ms("p50")?,
        p99_ms: secs_ms("p99")?,
        p999_ms: secs_ms("p99.9")?,
        errors,
    })
}

/// What one process used while a load ran.
#[derive(Debug, Clone, Default)]
pub(crate) struct Usage {
    /// utime + stime over the run, in seconds of CPU.
    pub(crate) cpu_seconds: f64,
    pub(crate) wall_seconds: f64,
    /// The largest VmRSS seen, sampled every 100 ms.
    pub(crate) rss_max_kib: u64,
}

impl Usage {
    /// Cores used on average over the run.
    pub(crate) fn vcpu(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.cpu_seconds / self.wall_seconds
        } else {
            0.0
        }
    }
}

/// Runs `load` while sampling each of `pids`: CPU time over the run, VmRSS every 100 ms.
pub(crate) fn observe<R>(
    pids: &[u32],
    load: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<(R, Vec<Usage>)> {
    let tck = clock_ticks_per_second();
    let before = pids
        .iter()
        .map(|&p| cpu_ticks(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rss_max: Vec<u64> = pids
        .iter()
        .map(|&p| status_kib(p, "VmRSS"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (result, sampled) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max = rss_max.clone();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                for (m, &p) in max.iter_mut().zip(pids) {
                    if let Ok(kib) = status_kib(p, "VmRSS") {
                        *m = (*m).max(kib);
                    }
                }
            }
            max
        });
        let result = load();
        stop.store(true, Ordering::Relaxed);
        (result, sampler.join())
    });
    let wall = start.elapsed().as_secs_f64();
    let result = result?;
    if let Ok(max) = sampled {
        rss_max = max;
    }
    let mut usage = Vec::new();
    for (i, &p) in pids.iter().enumerate() {
        let after = cpu_ticks(p)?;
        usage.push(Usage {
            cpu_seconds: after.saturating_sub(before[i]) as f64 / tck,
            wall_seconds: wall,
            rss_max_kib: rss_max[i].max(status_kib(p, "VmRSS")?),
        });
    }
    Ok((result, usage))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:40000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   402.31us  120.10us   8.20ms   90.00%
    Req/Sec    78.10k     2.10k   81.00k    70.00%
  Latency Distribution
     50%  390.00us
     75%  420.00us
     90%  480.00us
     99%    1.02ms
  777000 requests in 10.00s, 160.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  77700.12
Transfer/sec:     16.00MB
";

    #[test]
    fn wrk_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.rps, 77700.12);
        assert_eq!(r.requests, 777000);
        assert_eq!(r.p50_ms, 0.39);
        assert_eq!(r.p90_ms, 0.48);
        assert_eq!(r.p99_ms, 1.02);
        assert_eq!(r.errors, 6);
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(wrk_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_duration_ms("2.00x"), None);
    }

    #[test]
    fn oha_output() {
        let text = r#"{"summary":{"successRate":1.0,"total":10.0,"requestsPerSec":1999.5},
            "latencyPercentiles":{"p50":0.0002,"p99":0.001,"p99.9":0.004},
            "statusCodeDistribution":{"200":19990,"503":2},
            "errorDistribution":{"aborted due to deadline":5,"connection reset":1}}"#;
        let r = parse_oha(text).unwrap();
        assert_eq!(r.rps, 1999.5);
        assert!((r.p50_ms - 0.2).abs() < 1e-9);
        assert!((r.p999_ms - 4.0).abs() < 1e-9);
        assert_eq!(r.errors, 3);
    }
}
