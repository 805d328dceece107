//! The control plane under test as a separate process (so its memory is its own), and what the
//! bench reads from outside it: `/proc/<pid>/status` and the admin port's `/metrics`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Lines of the control plane's log kept for error messages.
const KEEP_LINES: usize = 40;

/// A `weft-control-plane` process on 127.0.0.1:0, killed on drop.
#[derive(Debug)]
pub(crate) struct ControlPlaneProcess {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) grpc_addr: String,
    pub(crate) admin_addr: String,
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    tail: VecDeque<String>,
    warnings: u64,
    errors: u64,
}

/// `--control-plane-bin`, or `weft-control-plane` next to this executable (same target dir and
/// profile).
pub(crate) fn locate(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locate the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no directory")?;
    let bin = dir.join("weft-control-plane");
    if !bin.exists() {
        bail!(
            "{} not found: build it in the same profile (cargo build [--release] -p weft-control-plane) or pass --control-plane-bin",
            bin.display()
        );
    }
    Ok(bin)
}

impl ControlPlaneProcess {
    pub(crate) async fn start(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id().context("the control plane exited at once")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
        let keep = log.clone();
        // Drains stderr for the whole run so the control plane never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("control plane serving") {
                    let _ = tx.try_send(line.clone());
                }
                if let Ok(mut log) = keep.lock() {
                    log.warnings += u64::from(line.contains(" WARN "));
                    log.errors += u64::from(line.contains(" ERROR "));
                    if log.tail.len() == KEEP_LINES {
                        log.tail.pop_front();
                    }
                    log.tail.push_back(line);
                }
            }
        });
        let line = match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(line)) => line,
            _ => bail!(
                "the control plane did not report its addresses; log:\n{}",
                tail(&log)
            ),
        };
        let field = |name: &str| -> anyhow::Result<String> {
            let at = line
                .find(&format!("{name}="))
                .with_context(|| format!("no {name} in {line:?}"))?;
            Ok(line[at + name.len() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned())
        };
        Ok(Self {
            grpc_addr: field("grpc_addr")?,
            admin_addr: field("admin_addr")?,
            pid,
            child,
            log,
        })
    }

    /// The last lines of the log, for an error message.
    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// (warn lines, error lines) logged so far.
    pub(crate) fn log_counts(&self) -> (u64, u64) {
        self.log
            .lock()
            .map(|l| (l.warnings, l.errors))
            .unwrap_or_default()
    }

    /// Resident set size in KiB (`VmRSS` of /proc/<pid>/status).
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(&format!("/proc/{}/status", self.pid))
    }

    pub(crate) async fn metrics(&self) -> anyhow::Result<Metrics> {
        scrape(&self.admin_addr).await
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn tail(log: &Mutex<Log>) -> String {
    log.lock()
        .map(|l| l.tail.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// `VmRSS` in KiB from a /proc status file.
pub(crate) fn rss_kib(status_path: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(status_path).with_context(|| format!("read {status_path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {status_path}"))
}

/// The Prometheus text of one `/metrics` scrape.
#[derive(Debug, Clone)]
pub(crate) struct Metrics(String);

/// A histogram summed over its label sets: cumulative counts per upper bound.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<(f64, f64)>,
    pub(crate) count: f64,
    pub(crate) sum: f64,
}

async fn scrape(admin_addr: &str) -> anyhow::Result<Metrics> {
    let mut tcp = tokio::net::TcpStream::connect(admin_addr)
        .await
        .with_context(|| format!("connect to the admin port {admin_addr}"))?;
    tcp.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .context("/metrics timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("/metrics: no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("/metrics: {}", head.lines().next().unwrap_or_default());
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(Metrics(dechunk(body)));
    }
    Ok(Metrics(body.to_owned()))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Metrics {
    /// The samples of `name` (exactly; labels allowed), summed over label sets.
    pub(crate) fn sum(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if let Some(v) = value(line) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    pub(crate) fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in self.0.lines().filter(|l| l.starts_with(&bucket)) {
            let Some(le) = line
                .split_once("le=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(le, _)| le)
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            let Some(v) = value(line) else { continue };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += v,
                None => buckets.push((le, v)),
            }
        }
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            buckets,
            count: self.sum(&format!("{name}_count")).unwrap_or_default(),
            sum: self.sum(&format!("{name}_sum")).unwrap_or_default(),
        })
    }
}

/// The sample value: the first field after the metric name and its labels (a timestamp or an
/// exemplar may follow it).
fn value(line: &str) -> Option<f64> {
    let name_end = line.find([' ', '{'])?;
    let rest = if line[name_end..].starts_with('{') {
        // Skip the label set; label values are quoted and may hold '}' or spaces.
        let mut quoted = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    end = Some(name_end + i + 1);
                    break;
                }
                _ => {}
            }
        }
        &line[end?..]
    } else {
        &line[name_end..]
    };
    rest.split_whitespace().next()?.parse().ok()
}

impl Histogram {
    /// `self - earlier`: the observations made between two scrapes.
    pub(crate) fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, c - before)
            })
            .collect();
        Histogram {
            buckets,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }

    /// The `q` quantile, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does), with the bucket's upper bound. None when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<(f64, f64)> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some((prev.0, le));
                }
                let in_bucket = c - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    1.0
                };
                return Some((prev.0 + (le - prev.0) * frac, le));
            }
            prev = (le, c);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TEXT: &str = "\
# HELP discovery_push_latency_seconds x
# TYPE discovery_push_latency_seconds histogram
discovery_push_latency_seconds_sum{type_url=\"a\"} 1.5
discovery_push_latency_seconds_count{type_url=\"a\"} 10
discovery_push_latency_seconds_bucket{le=\"0.01\",type_url=\"a\"} 4
discovery_push_latency_seconds_bucket{le=\"0.1\",type_url=\"a\"} 9
discovery_push_latency_seconds_bucket{le=\"+Inf\",type_url=\"a\"} 10
discovery_push_latency_seconds_bucket{type_url=\"b\",le=\"0.01\"} 10
discovery_push_latency_seconds_bucket{type_url=\"b\",le=\"0.1\"} 10
discovery_push_latency_seconds_bucket{type_url=\"b\",le=\"+Inf\"} 10
discovery_push_latency_seconds_count{type_url=\"b\"} 10
discovery_connected_proxies 42
discovery_connected_proxies_total 7
x_total{a=\"}\\\" \"} 3 # {trace=\"1\"} 9
";

    #[test]
    fn sums_and_quantiles() {
        let m = Metrics(TEXT.to_owned());
        assert_eq!(m.sum("discovery_connected_proxies"), Some(42.0));
        assert_eq!(m.sum("x_total"), Some(3.0));
        let h = m.histogram("discovery_push_latency_seconds").unwrap();
        assert_eq!(h.count, 20.0);
        assert_eq!(
            h.buckets,
            vec![(0.01, 14.0), (0.1, 19.0), (f64::INFINITY, 20.0)]
        );
        let (p50, le) = h.quantile(0.5).unwrap();
        assert!(p50 <= 0.01 && le == 0.01, "{p50}");
        let (p99, le) = h.quantile(0.99).unwrap();
        assert_eq!((p99, le), (0.1, f64::INFINITY));
        let d = h.since(&h);
        assert_eq!(d.count, 0.0);
        assert!(d.quantile(0.99).is_none());
    }

    #[test]
    fn chunked_body() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
