//! An open-loop load generator: requests leave at a fixed rate whether or not earlier ones have
//! been answered (a slow or stuck target does not slow the generator down, so an outage shows
//! as failures and latency, not as fewer requests), and every request's outcome is counted:
//! 2xx, non-2xx, reset (the connection failed: refused, reset or closed mid-exchange) or
//! timeout. Latency runs from the moment a request was *due*, so a stall is not hidden by the
//! generator waiting (no coordinated omission).
//!
//! Three ways to talk to a target: HTTP/1.1 (keep-alive connections, one request at a time on
//! each, a new one opened when none is idle), HTTP/2 (a fixed set of long-lived prior-knowledge
//! connections, requests multiplexed), and raw TCP echo (long-lived connections, each request a
//! 32-byte message that must come back unchanged). For HTTP/2 and TCP the connections are meant
//! to live for the whole run: every one that breaks is counted in
//! [`Report::connections_lost`].
//!
//! Used by the chaos suite's tests (`tests/tests/chaos.rs`) and by `weft-bench chaos`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the generator speaks to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), over [`LoadConfig::connections`] connections.
    Http2,
    /// A 32-byte message echoed back, over connections kept open for the run.
    Tcp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "http/2",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub protocol: Protocol,
    /// Requests per second.
    pub rate: u32,
    /// HTTP/2: the connections requests are spread over. Ignored otherwise.
    pub connections: usize,
    /// A request not complete this long after it was due counts as a timeout.
    pub timeout: Duration,
    /// HTTP: the `Host` / `:authority`.
    pub authority: String,
    /// HTTP: the path requested.
    pub path: String,
}

impl LoadConfig {
    pub fn new(target: SocketAddr, protocol: Protocol, rate: u32) -> Self {
        Self {
            target,
            protocol,
            rate,
            connections: 4,
            timeout: Duration::from_secs(5),
            authority: "api.default".into(),
            path: "/".into(),
        }
    }
}

/// Where the run is relative to the injected fault (the phase a request was due in).
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    non_2xx: AtomicU64,
    reset: AtomicU64,
    timeout: AtomicU64,
    opened: AtomicU64,
    lost: AtomicU64,
    /// Worst latency in µs per phase.
    worst_us: [AtomicU64; 3],
    phase: AtomicU8,
    /// Failure reason → count (status and `x-weft-error`, or the transport error).
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn fail(&self, counter: &AtomicU64, reason: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.reasons.lock().unwrap().entry(reason).or_default() += 1;
    }
}

/// What a run saw. `failed()` is what the chaos suite's target of zero is about.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub reset: u64,
    pub timeout: u64,
    /// Connections opened (HTTP/1.1: as needed; HTTP/2 and TCP: meant to live for the run).
    pub connections_opened: u64,
    /// Long-lived connections (HTTP/2, TCP) that broke during the run.
    pub connections_lost: u64,
    pub worst_before: Duration,
    pub worst_during_fault: Duration,
    pub worst_after: Duration,
    /// Failure reason → count.
    pub reasons: BTreeMap<String, u64>,
}

impl Report {
    /// Non-2xx, resets and timeouts.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.reset + self.timeout
    }

    pub fn worst(&self) -> Duration {
        self.worst_before
            .max(self.worst_during_fault)
            .max(self.worst_after)
    }

    /// One line: counts, then the failure reasons if any.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "sent {} ok {} non-2xx {} reset {} timeout {}; connections opened {} lost {}; worst latency {:.1} ms (during the fault {:.1} ms)",
            self.sent,
            self.ok,
            self.non_2xx,
            self.reset,
            self.timeout,
            self.connections_opened,
            self.connections_lost,
            self.worst().as_secs_f64() * 1e3,
            self.worst_during_fault.as_secs_f64() * 1e3,
        );
        if !self.reasons.is_empty() {
            let r: Vec<String> = self
                .reasons
                .iter()
                .map(|(k, v)| format!("{v}× {k}"))
                .collect();
            s += &format!("; failures: {}", r.join(", "));
        }
        s
    }
}

/// A running generator. [`Load::stop`] ends it and reports; dropping it stops sending.
#[derive(Debug)]
pub struct Load {
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    scheduler: Option<JoinHandle<Vec<JoinHandle<()>>>>,
    timeout: Duration,
}

impl Load {
    /// Starts sending at once.
    pub fn start(cfg: LoadConfig) -> Self {
        Self::start_in(cfg, BEFORE)
    }

    /// Starts sending at once, every request counted as "during the fault" from the first (a
    /// `fault_begins` right after `start` races the first tick on a multi-threaded runtime).
    pub fn start_in_fault(cfg: LoadConfig) -> Self {
        Self::start_in(cfg, DURING)
    }

    fn start_in(cfg: LoadConfig, phase: u8) -> Self {
        let stats = Arc::new(Stats::default());
        stats.phase.store(phase, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let timeout = cfg.timeout;
        let scheduler = tokio::spawn(schedule(cfg, stats.clone(), stopped));
        Self {
            stats,
            stop,
            scheduler: Some(scheduler),
            timeout,
        }
    }

    /// Requests due from now on count as "during the fault".
    pub fn fault_begins(&self) {
        self.stats.phase.store(DURING, Ordering::Relaxed);
    }

    /// Requests due from now on count as "after the fault".
    pub fn fault_ends(&self) {
        self.stats.phase.store(AFTER, Ordering::Relaxed);
    }

    /// The counts so far (requests in flight not included).
    pub fn report(&self) -> Report {
        let s = &*self.stats;
        let us = |i: usize| Duration::from_micros(s.worst_us[i].load(Ordering::Relaxed));
        Report {
            sent: s.sent.load(Ordering::Relaxed),
            ok: s.ok.load(Ordering::Relaxed),
            non_2xx: s.non_2xx.load(Ordering::Relaxed),
            reset: s.reset.load(Ordering::Relaxed),
            timeout: s.timeout.load(Ordering::Relaxed),
            connections_opened: s.opened.load(Ordering::Relaxed),
            connections_lost: s.lost.load(Ordering::Relaxed),
            worst_before: us(BEFORE as usize),
            worst_during_fault: us(DURING as usize),
            worst_after: us(AFTER as usize),
            reasons: s.reasons.lock().unwrap().clone(),
        }
    }

    /// Stops sending, waits for the requests in flight (each ends by its timeout), and reports.
    pub async fn stop(mut self) -> Report {
        let _ = self.stop.send(true);
        if let Some(Ok(tasks)) = match self.scheduler.take() {
            Some(s) => Some(s.await),
            None => None,
        } {
            let all = futures_util::future::join_all(tasks);
            let _ = tokio::time::timeout(self.timeout + Duration::from_secs(1), all).await;
        }
        self.report()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type H1 = http1::SendRequest<Empty<Bytes>>;
type H2 = http2::SendRequest<Empty<Bytes>>;

/// Connections the requests share.
#[derive(Debug, Default)]
struct Pool {
    /// HTTP/1.1 connections and TCP connections not in use.
    h1_idle: Mutex<Vec<H1>>,
    tcp_idle: Mutex<Vec<TcpStream>>,
    /// HTTP/2 connections, each `None` until first used or after it broke.
    h2: Vec<tokio::sync::Mutex<Option<H2>>>,
}

async fn schedule(
    cfg: LoadConfig,
    stats: Arc<Stats>,
    mut stopped: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    // Behind schedule (a busy machine): send the missed requests at once, keeping the rate.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pool = Arc::new(Pool {
        h2: (0..cfg.connections.max(1))
            .map(|_| tokio::sync::Mutex::new(None))
            .collect(),
        ..Pool::default()
    });
    let cfg = Arc::new(cfg);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut n: u64 = 0;
    loop {
        let due = tokio::select! {
            t = ticks.tick() => t,
            _ = stopped.wait_for(|s| *s) => break,
        };
        n += 1;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let phase = stats.phase.load(Ordering::Relaxed);
        let (cfg, stats, pool) = (cfg.clone(), stats.clone(), pool.clone());
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(async move {
            let outcome =
                tokio::time::timeout_at(due + cfg.timeout, one(&cfg, &pool, &stats, n)).await;
            let latency = due.elapsed();
            match outcome {
                Ok(Ok(())) => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(Failure::Status(reason))) => stats.fail(&stats.non_2xx, reason),
                Ok(Err(Failure::Transport(reason))) => stats.fail(&stats.reset, reason),
                Err(_) => stats.fail(&stats.timeout, "timeout".into()),
            }
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            stats.worst_us[usize::from(phase.min(AFTER))].fetch_max(us, Ordering::Relaxed);
        }));
    }
    tasks
}

enum Failure {
    Status(String),
    Transport(String),
}

fn transport(e: impl std::fmt::Display) -> Failure {
    Failure::Transport(format!("reset: {e}"))
}

async fn one(cfg: &LoadConfig, pool: &Pool, stats: &Stats, n: u64) -> Result<(), Failure> {
    match cfg.protocol {
        Protocol::Http1 => http1_request(cfg, pool, stats).await,
        Protocol::Http2 => http2_request(cfg, pool, stats, n).await,
        Protocol::Tcp => tcp_request(cfg, pool, stats, n).await,
    }
}

fn request(cfg: &LoadConfig) -> hyper::Request<Empty<Bytes>> {
    let mut req = hyper::Request::get(cfg.path.as_str());
    req = req.header("host", cfg.authority.as_str());
    req.body(Empty::new())
        .unwrap_or_else(|_| hyper::Request::new(Empty::new()))
}

fn request_h2(cfg: &LoadConfig) -> hyper::Request<Empty<Bytes>> {
    let uri = format!("http://{}{}", cfg.authority, cfg.path);
    hyper::Request::get(uri)
        .version(hyper::Version::HTTP_2)
        .body(Empty::new())
        .unwrap_or_else(|_| hyper::Request::new(Empty::new()))
}

/// Reads the whole answer; a non-2xx names its status and `x-weft-error`.
async fn finish(resp: hyper::Response<hyper::body::Incoming>) -> Result<(), Failure> {
    let status = resp.status();
    let reason = resp
        .headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    resp.into_body().collect().await.map_err(transport)?;
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Status(match reason {
            Some(r) => format!("{} {r}", status.as_u16()),
            None => status.as_u16().to_string(),
        }))
    }
}

async fn http1_request(cfg: &LoadConfig, pool: &Pool, stats: &Stats) -> Result<(), Failure> {
    let idle = {
        let mut idle = pool.h1_idle.lock().unwrap();
        loop {
            match idle.pop() {
                Some(s) if s.is_closed() => continue,
                other => break other,
            }
        }
    };
    let mut sender = match idle {
        Some(s) => s,
        None => {
            let tcp = TcpStream::connect(cfg.target).await.map_err(transport)?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(transport)?;
            tokio::spawn(conn);
            stats.opened.fetch_add(1, Ordering::Relaxed);
            sender
        }
    };
    sender.ready().await.map_err(transport)?;
    let resp = sender.send_request(request(cfg)).await.map_err(transport)?;
    let result = finish(resp).await;
    if !sender.is_closed() {
        pool.h1_idle.lock().unwrap().push(sender);
    }
    result
}

async fn http2_request(
    cfg: &LoadConfig,
    pool: &Pool,
    stats: &Stats,
    n: u64,
) -> Result<(), Failure> {
    let slot = &pool.h2[(n as usize) % pool.h2.len()];
    let mut sender = {
        let mut held = slot.lock().await;
        match held.as_ref() {
            Some(s) if !s.is_closed() => s.clone(),
            was => {
                if was.is_some() {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                }
                *held = None;
                let tcp = TcpStream::connect(cfg.target).await.map_err(transport)?;
                let _ = tcp.set_nodelay(true);
                let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(transport)?;
                tokio::spawn(conn);
                stats.opened.fetch_add(1, Ordering::Relaxed);
                *held = Some(sender.clone());
                sender
            }
        }
    };
    sender.ready().await.map_err(transport)?;
    let resp = sender
        .send_request(request_h2(cfg))
        .await
        .map_err(transport)?;
    finish(resp).await
}

/// The message of request `n`: its number, padded to 32 bytes.
fn message(n: u64) -> [u8; 32] {
    let mut m = [b'.'; 32];
    m[31] = b'\n';
    let digits = n.to_string();
    m[..digits.len()].copy_from_slice(digits.as_bytes());
    m
}

async fn tcp_request(cfg: &LoadConfig, pool: &Pool, stats: &Stats, n: u64) -> Result<(), Failure> {
    let idle = pool.tcp_idle.lock().unwrap().pop();
    let mut tcp = match idle {
        Some(t) => t,
        None => {
            let tcp = TcpStream::connect(cfg.target).await.map_err(transport)?;
            let _ = tcp.set_nodelay(true);
            stats.opened.fetch_add(1, Ordering::Relaxed);
            tcp
        }
    };
    let sent = message(n);
    let mut back = [0u8; 32];
    let exchange = async {
        tcp.write_all(&sent).await?;
        tcp.read_exact(&mut back).await?;
        std::io::Result::Ok(())
    };
    if let Err(e) = exchange.await {
        // The connection is not returned: it broke.
        stats.lost.fetch_add(1, Ordering::Relaxed);
        return Err(transport(e));
    }
    if back != sent {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        return Err(Failure::Transport(format!(
            "echo mismatch: sent {:?}, got {:?}",
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&back)
        )));
    }
    pool.tcp_idle.lock().unwrap().push(tcp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_32_bytes_and_distinct() {
        assert_eq!(&message(7)[..2], b"7.");
        assert_ne!(message(1), message(10));
        assert_eq!(message(u64::MAX).len(), 32);
    }
}
