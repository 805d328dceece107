//! `weft-bench`: benchmark programs (never timed tests). Results and the commands that produced
//! them go in docs/benchmarks.md.
//!
//! - `csr-sign`: CSRs verified and signed per second on one core (the CA's hot path).
//! - `certify`: Certify RPCs per second end to end (gRPC over mTLS, token check, signing) against
//!   an in-process control plane on loopback.
//! - `discovery`: delta-discovery fan-out to N simulated proxies against the real control-plane
//!   binary: initial sync time, route-change convergence, control-plane memory per proxy.
//! - `pair`: the load generator → nginx directly vs through a client and a server `weft-proxy`
//!   (mTLS HTTP/2 between them), and through a pair whose route splits 90/10 between two server
//!   proxies with retries on (`weft-split`): throughput, fixed-rate latency, proxy RSS and CPU,
//!   start → ready; and the same through an HAProxy pair and an nginx pair (mutual TLS between
//!   each pair's two sides), with Weft's ratios to HAProxy.
//! - `chaos`: the chaos suite (issue 18): faults injected under a fixed-rate load (control
//!   plane killed, etcd quorum lost, certificate rotation, rolling restart, endpoints killed),
//!   with requests sent, failed and the worst latency during each fault.
//! - `all`: pair, discovery and csr-sign in one run, one markdown report and one JSON object.
//! - `abuse`: a server proxy's inbound port under 10,000 idle and 1,000 slowloris connections while
//!   a normal client keeps sending (issue 18): its answered share, the proxy's memory per connection.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_certs::{CertificateAuthority, SpiffeId, TrustDomain, WorkloadKey};
use weft_control_plane::{Config, ControlPlane, client, control_plane_id};

mod all;
mod chaos;
mod discovery;
mod pair;

#[derive(Parser)]
#[command(name = "weft-bench", about = "Weft benchmark programs")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// CSR verification + SVID signing on one thread.
    CsrSign {
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Distinct CSRs to cycle through (each with its own key).
        #[arg(long, default_value_t = 256)]
        csrs: usize,
    },
    /// Certify RPCs against an in-process control plane on 127.0.0.1.
    Certify {
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Concurrent clients, each on its own mTLS connection.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Delta-discovery convergence and memory with N simulated proxies against the
    /// weft-control-plane binary.
    Discovery(discovery::Args),
    /// Direct vs a weft-proxy pair vs a pair with a 90/10 split and retries vs HAProxy and
    /// nginx mTLS pairs, in front of an nginx backend, interleaved: wrk, oha at a fixed rate,
    /// proxy RSS and CPU, start to ready. Needs release binaries (--bin-dir).
    Pair(pair::Args),
    /// A server proxy's inbound port under 10,000 idle keep-alive connections and 1,000
    /// slowloris heads while a normal client keeps sending: its answered share and the proxy's
    /// memory per connection. Needs release binaries (--bin-dir).
    Abuse(pair::abuse::Args),
    /// The chaos suite: faults under a fixed-rate load; requests failed, worst latency, and
    /// each scenario's checks (docs/reliability.md).
    Chaos(chaos::Args),
    /// Everything in one run (pair with every target, discovery, csr-sign): one markdown report
    /// and one JSON object with the machine's facts and the exact commands.
    All(all::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CsrSign { duration, csrs } => csr_sign(duration, csrs, cli.json),
        Cmd::Certify { duration, clients } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(certify(duration, clients, cli.json))
        }
        Cmd::Discovery(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(discovery::run(args, cli.json))
        }
        Cmd::Pair(args) => pair::run(args, cli.json),
        Cmd::Chaos(args) => chaos::run(args, cli.json),
        Cmd::All(args) => all::run(args, cli.json),
        Cmd::Abuse(args) => pair::abuse::run(args, cli.json),
    }
}

/// What `csr-sign` measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CsrSign {
    pub(crate) signed: u64,
    pub(crate) seconds: f64,
}

impl CsrSign {
    pub(crate) fn per_second(&self) -> f64 {
        self.signed as f64 / self.seconds
    }

    pub(crate) fn to_json(self) -> serde_json::Value {
        let rate = self.per_second();
        serde_json::json!({"bench": "csr-sign", "threads": 1, "signed": self.signed, "seconds": self.seconds, "per_second": rate, "us_per_csr": 1e6 / rate})
    }
}

fn csr_sign(duration: Duration, n: usize, json: bool) -> anyhow::Result<()> {
    let r = csr_sign_measure(duration, n)?;
    if json {
        println!("{}", r.to_json());
    } else {
        let rate = r.per_second();
        println!(
            "csr-sign: {} CSRs in {:.2} s on 1 thread = {rate:.0} CSRs/s/core ({:.1} µs each)",
            r.signed,
            r.seconds,
            1e6 / rate
        );
    }
    Ok(())
}

/// Signs CSRs (`n` distinct ones, cycled) on this one thread for `duration`.
pub(crate) fn csr_sign_measure(duration: Duration, n: usize) -> anyhow::Result<CsrSign> {
    let td = TrustDomain::parse("bench.test")?;
    let files = CertificateAuthority::generate_root(&td, Duration::from_secs(86400))?;
    let ca = CertificateAuthority::from_pem(
        files.cert_pem.as_bytes(),
        files.key_pem.as_bytes(),
        None,
        None,
        "bench",
    )?;
    let id = td.workload("default", "bench")?;
    let csrs: Vec<Vec<u8>> = (0..n.max(1))
        .map(|_| WorkloadKey::generate()?.csr(&id))
        .collect::<Result<_, _>>()?;

    // Warm up, then measure on this one thread.
    for csr in csrs.iter().take(32) {
        ca.sign_csr(csr, &id, None)?;
    }
    let start = Instant::now();
    let mut signed = 0u64;
    while start.elapsed() < duration {
        for csr in csrs.iter().take(64) {
            std::hint::black_box(ca.sign_csr(csr, &id, None)?);
            signed += 1;
        }
    }
    Ok(CsrSign {
        signed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

async fn certify(duration: Duration, clients: usize, json: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("ca");
    let td = TrustDomain::parse("bench.test")?;
    weft_cli::ca_init(
        &td,
        &ca_dir,
        Duration::from_secs(86400),
        &mut std::io::sink(),
    )?;
    let cp = ControlPlane::start(Config {
        ca_dir: ca_dir.clone(),
        trust_domain: None,
        listen: "127.0.0.1:0".parse()?,
        admin: "127.0.0.1:0".parse()?,
        svid_ttl: Duration::from_secs(3600),
        server_names: vec![],
        k8s: None,
        store: weft_control_plane::StoreConfig::Memory { snapshot: None },
        admin_identities: vec![],
        registration_ttl: Duration::from_secs(20),
        max_connections: weft_control_plane::transport::MAX_CONNECTIONS,
        admin_remote: Default::default(),
    })
    .await?;
    let addr = cp.grpc_addr().to_string();
    let bundle = cp.trust_bundle();
    let token_key = weft_control_plane::attest::TokenKey::load(&ca_dir.join("token.key"))?;
    let id = SpiffeId::parse("spiffe://bench.test/ns/default/sa/bench")?;
    let token = token_key.mint(&id, Duration::from_secs(3600))?;

    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (addr, bundle, id, token) = (addr.clone(), bundle.clone(), id.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let channel =
                client::connect(&addr, bundle, control_plane_id(&id.trust_domain()), None).await?;
            let key = WorkloadKey::generate()?;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client::certify(channel.clone(), &key, Some(&id), &token, None).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    let secs = start.elapsed().as_secs_f64();
    cp.shutdown().await;
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let rate = all.len() as f64 / secs;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "certify", "clients": clients, "cores": cores, "requests": all.len(), "seconds": secs,
                "per_second": rate, "p50_ms": pct(0.50).as_secs_f64() * 1e3, "p99_ms": pct(0.99).as_secs_f64() * 1e3,
            })
        );
    } else {
        println!(
            "certify: {} RPCs in {secs:.2} s with {clients} clients on {cores} cores (clients and server share them) = {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            all.len(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its definitions (unique names and groups, e.g. of `all`, which flattens
    /// `pair`'s arguments) only in debug builds, when the command is first parsed.
    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
