//! `abuse`: a server proxy's inbound port under many connections (issue 18). Opens `--idle`
//! HTTP/1.1 keep-alive connections to it (each makes one request, then sits idle, as a big
//! client fleet's pools do) and `--slowloris` connections that begin a request head and drip a
//! byte a second, while a normal client keeps sending requests through its own client proxy
//! (mTLS to the same server proxy). Reports the normal client's answered share, the server
//! proxy's resident memory before, at the peak and after every connection closed, and the
//! memory per idle connection beyond the idle baseline (target ≤ 10 KiB).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::process::{self, http_get, status_kib};
use super::setup::{Backend, Bins, Mesh, ProxyKind};
use super::tools;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Idle keep-alive connections to the server proxy's inbound port.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Slowloris connections (a request head begun, a byte a second, never finished).
    #[arg(long, default_value_t = 1_000)]
    slowloris: usize,
    /// How long every connection is held open while the normal client sends requests (under
    /// the proxy's 30 s --header-read-timeout, which would close both kinds).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Waves of connections, each opened, held and closed: a second wave shows whether the
    /// memory of the first is reused.
    #[arg(long, default_value_t = 2)]
    waves: usize,
    /// Where weft-proxy, weft-control-plane and weftctl are.
    #[arg(long, default_value = "target/release")]
    bin_dir: std::path::PathBuf,
    /// The weft-proxy binary to measure, if not the one in --bin-dir (e.g. the path `deploy/build-proxy.sh` prints).
    #[arg(long)]
    proxy_bin: Option<std::path::PathBuf>,
}

/// What one run measured.
#[derive(Debug)]
struct Outcome {
    idle: usize,
    slowloris: usize,
    normal_ok: u64,
    normal_failed: u64,
    first_failure: Option<String>,
    rss_before_kib: u64,
    waves: Vec<Wave>,
}

/// One wave of connections, opened, held and closed.
#[derive(Debug, Default)]
struct Wave {
    rss_peak_kib: u64,
    rss_after_kib: u64,
    open_at_peak: f64,
    /// `http_parked_connections{direction="inbound"}` at the end of the hold.
    parked_at_end: f64,
    /// RSS at the end of the hold (after parked connections' memory was trimmed).
    rss_end_kib: u64,
    open_after: f64,
    slowloris_closed_by_proxy: usize,
}

impl Outcome {
    /// Resident memory per open connection when the proxy's RSS was `rss_kib`, beyond the idle
    /// baseline.
    fn per_connection_kib(&self, rss_kib: u64) -> f64 {
        (rss_kib.saturating_sub(self.rss_before_kib)) as f64
            / (self.idle + self.slowloris).max(1) as f64
    }
}

pub(crate) fn run(args: Args, json_out: bool) -> anyhow::Result<()> {
    process::cleanup_on_signal()?;
    weft_proto::process::raise_open_files_limit()
        .context("raise this process's open-files limit")?;
    let tools = tools::ensure()?;
    let dir = tempfile::Builder::new().prefix("weft-abuse").tempdir()?;
    process::remove_on_signal(dir.path());
    let mut bins = Bins::in_dir(&args.bin_dir)?;
    if let Some(p) = &args.proxy_bin {
        bins.proxy = std::path::absolute(p)?;
    }
    let backend = Backend::start(&tools.nginx, dir.path())?;
    let mesh = Mesh::start(&bins, dir.path())?;
    let mut server = mesh.spawn_proxy(
        "api",
        &mesh.token("api")?,
        ProxyKind::Server {
            service: "api",
            app_port: backend.addr.port(),
        },
    )?;
    let mut client = mesh.spawn_proxy(
        "web",
        &mesh.token("web")?,
        ProxyKind::Client { service: "api" },
    )?;
    server.wait_ready(Duration::from_millis(20))?;
    client.wait_routable(Duration::from_millis(20))?;
    let inbound = server
        .inbound
        .context("the server proxy has no inbound port")?;
    let upstream = client
        .upstream
        .context("the client proxy has no upstream port")?;
    let pid = server.proc.pid();
    // Warm the server's pools with a few requests, then take the idle baseline.
    for _ in 0..20 {
        http_get(upstream, "/", Duration::from_secs(5))?;
    }
    let rss_before_kib = status_kib(pid, "VmRSS")?;

    // The normal client: one request after another until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let normal = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut first = None;
            while !stop.load(Ordering::Relaxed) {
                match http_get(upstream, "/", Duration::from_secs(10)) {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first.get_or_insert_with(|| format!("{other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            first
        })
    };

    let mut waves = Vec::new();
    for wave_no in 1..=args.waves {
        waves.push(wave(wave_no, &args, inbound, server.admin, pid)?);
    }
    stop.store(true, Ordering::Relaxed);
    let first_failure = normal
        .join()
        .map_err(|_| anyhow::anyhow!("the normal client's thread panicked"))?;
    server.proc.check_alive()?;
    let outcome = Outcome {
        idle: args.idle,
        slowloris: args.slowloris,
        normal_ok: ok.load(Ordering::Relaxed),
        normal_failed: failed.load(Ordering::Relaxed),
        first_failure,
        rss_before_kib,
        waves,
    };
    drop(backend);
    if json_out {
        println!("{}", to_json(&outcome, &args));
    } else {
        print!("{}", markdown(&outcome, &args));
    }
    if outcome.normal_failed > 0 {
        bail!(
            "the normal client had {} failed requests (first: {:?})",
            outcome.normal_failed,
            outcome.first_failure
        );
    }
    Ok(())
}

/// One wave: open every connection, hold them (a byte a second on the slowloris ones), close
/// them all, and wait for the proxy to count them closed.
fn wave(
    n: usize,
    args: &Args,
    inbound: SocketAddr,
    admin: SocketAddr,
    pid: u32,
) -> anyhow::Result<Wave> {
    eprintln!(
        "abuse: wave {n}: opening {} idle keep-alive connections",
        args.idle
    );
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        idle.push(keep_alive(inbound).with_context(|| format!("idle connection {i}"))?);
    }
    eprintln!(
        "abuse: wave {n}: opening {} slowloris connections",
        args.slowloris
    );
    let mut slow = Vec::with_capacity(args.slowloris);
    for i in 0..args.slowloris {
        let mut tcp = TcpStream::connect(inbound).with_context(|| format!("slowloris {i}"))?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: api.default\r\n")?;
        tcp.set_nonblocking(true)?;
        slow.push(tcp);
    }
    let held_until = Instant::now() + args.hold;
    let mut w = Wave::default();
    while Instant::now() < held_until {
        // A byte a second on every slowloris connection (a closed one stops counting).
        slow.retain_mut(|tcp| match tcp.write(b"x") {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(_) => {
                w.slowloris_closed_by_proxy += 1;
                false
            }
        });
        w.rss_peak_kib = w.rss_peak_kib.max(status_kib(pid, "VmRSS")?);
        w.open_at_peak = f64::max(
            w.open_at_peak,
            inbound_gauge(admin, "tcp_open_connections")?,
        );
        w.parked_at_end = inbound_gauge(admin, "http_parked_connections")?;
        w.rss_end_kib = status_kib(pid, "VmRSS")?;
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(idle);
    drop(slow);
    // Released: the open count falls back, and so does the memory (allocator permitting).
    let deadline = Instant::now() + Duration::from_secs(30);
    w.open_after = inbound_gauge(admin, "tcp_open_connections")?;
    while w.open_after > 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        w.open_after = inbound_gauge(admin, "tcp_open_connections")?;
    }
    // The proxy returns freed memory every 5 s (`weft_proxy::trim`).
    std::thread::sleep(Duration::from_secs(7));
    w.rss_after_kib = status_kib(pid, "VmRSS")?;
    Ok(w)
}

/// The gauge `name{direction="inbound"}` of the proxy at `admin` (0 when absent).
fn inbound_gauge(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (_, text) = http_get(admin, "/metrics", Duration::from_secs(10))?;
    let series = format!("{name}{{direction=\"inbound\"}} ");
    Ok(text
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

/// A keep-alive connection that made one request (read whole) and now sits idle.
fn keep_alive(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: api.default\r\n\r\n")?;
    let want = super::setup::BODY.len();
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            bail!("closed before the answer was whole");
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= at + 4 + want
        {
            return Ok(tcp);
        }
    }
}

fn markdown(o: &Outcome, args: &Args) -> String {
    let total = o.normal_ok + o.normal_failed;
    let mut out = format!(
        "{} idle keep-alive + {} slowloris connections to the server proxy's inbound port, held {:?} per wave; \
         the normal client through its own proxy answered {}/{} ({:.1} %). Proxy RSS before: {:.1} MiB.\n\n\
         | wave | open at once | RSS at peak | per connection at peak | parked at the end of the hold | RSS then | per connection then | RSS after all closed (open) | slowloris closed by the proxy |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        o.idle,
        o.slowloris,
        args.hold,
        o.normal_ok,
        total,
        100.0 * o.normal_ok as f64 / total.max(1) as f64,
        o.rss_before_kib as f64 / 1024.0,
    );
    for (i, w) in o.waves.iter().enumerate() {
        out += &format!(
            "| {} | {} | {:.1} MiB | {:.2} KiB | {} | {:.1} MiB | {:.2} KiB | {:.1} MiB ({}) | {} |\n",
            i + 1,
            w.open_at_peak,
            w.rss_peak_kib as f64 / 1024.0,
            o.per_connection_kib(w.rss_peak_kib),
            w.parked_at_end,
            w.rss_end_kib as f64 / 1024.0,
            o.per_connection_kib(w.rss_end_kib),
            w.rss_after_kib as f64 / 1024.0,
            w.open_after,
            w.slowloris_closed_by_proxy,
        );
    }
    out
}

fn to_json(o: &Outcome, args: &Args) -> serde_json::Value {
    json!({
        "idle": o.idle,
        "slowloris": o.slowloris,
        "hold_s": args.hold.as_secs_f64(),
        "normal_ok": o.normal_ok,
        "normal_failed": o.normal_failed,
        "first_failure": o.first_failure,
        "rss_before_kib": o.rss_before_kib,
        "waves": o.waves.iter().map(|w| json!({
            "open_at_peak": w.open_at_peak,
            "parked_at_end": w.parked_at_end,
            "rss_peak_kib": w.rss_peak_kib,
            "per_connection_kib": o.per_connection_kib(w.rss_peak_kib),
            "rss_end_kib": w.rss_end_kib,
            "per_connection_end_kib": o.per_connection_kib(w.rss_end_kib),
            "rss_after_kib": w.rss_after_kib,
            "open_after": w.open_after,
            "slowloris_closed_by_proxy": w.slowloris_closed_by_proxy,
        })).collect::<Vec<_>>(),
    })
}
