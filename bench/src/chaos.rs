//! `chaos`: the chaos suite of issue 18 at full size. Each scenario runs real processes on
//! loopback (control planes, `weft-proxy` pairs, etcd) under an open-loop load, injects its
//! fault, and reports requests sent, failed (non-2xx, reset or timeout), the worst latency
//! while the fault lasted, and its own checks. The scenarios and the load generator live in
//! the test harness (`weft_tests::chaos`, `weft_tests::load`), so `tests/tests/chaos.rs` runs
//! exactly the same code at a smaller size. Results go in docs/reliability.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use weft_tests::chaos::{Outcome, Params, scenarios};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Only these scenarios (comma-separated): cp-restart-etcd, cp-restart-embedded,
    /// etcd-quorum, cert-rotation, cp-rolling, endpoints-killed. Default: all, in that order.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Requests per second of the load (scenario 3: half over HTTP/2, half over TCP).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long the control plane (1) or etcd's quorum (2) stays down.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// Load before each fault and after recovery.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// SVID lifetime of scenario 3 (at least 10s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    svid_ttl: Duration,
    /// How long scenario 3 runs.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    rotation: Duration,
    /// Renewals every proxy of scenario 3 must make.
    #[arg(long, default_value_t = 4)]
    min_renewals: u64,
    /// Where weft-proxy, weft-control-plane and weftctl are (etcd: /usr/bin/etcd or $WEFT_ETCD).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

pub(crate) fn run(args: Args, json: bool) -> anyhow::Result<()> {
    for b in ["weft-proxy", "weft-control-plane", "weftctl"] {
        let p = args.bin_dir.join(b);
        anyhow::ensure!(
            p.is_file(),
            "{} not found: build the binaries or pass --bin-dir",
            p.display()
        );
    }
    let dir = std::path::absolute(&args.bin_dir).context("absolute --bin-dir")?;
    weft_tests::use_binaries_in(dir);
    let params = Params {
        rate: args.rate,
        outage: args.outage,
        steady: args.steady,
        registration_ttl: Params::full().registration_ttl,
        svid_ttl: args.svid_ttl,
        rotation_run: args.rotation,
        min_renewals: args.min_renewals,
    };
    let names: Vec<String> = if args.scenario.is_empty() {
        scenarios::NAMES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenario.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    for name in &names {
        eprintln!("chaos: running {name} …");
        let outcome = rt.block_on(scenarios::run(name, &params))?;
        eprintln!("{}\n{}", outcome.scenario, outcome.details());
        outcomes.push(outcome);
    }
    if json {
        let list: Vec<serde_json::Value> = outcomes.iter().map(to_json).collect();
        println!(
            "{}",
            serde_json::json!({"bench": "chaos", "rate": args.rate, "scenarios": list})
        );
    } else {
        print!("{}", table(&outcomes));
    }
    Ok(())
}

/// The markdown table, then each scenario's loads and checks.
fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| scenario | requests sent | failed | worst latency during the fault | checks |\n|---|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        let checks: Vec<String> = o
            .checks
            .iter()
            .map(|c| format!("{} {}", if c.ok { "✔" } else { "✘" }, c.what))
            .collect();
        s += &format!(
            "| {} | {} | {} | {:.1} ms | {} |\n",
            o.scenario,
            o.sent(),
            o.failed(),
            o.worst_during_fault().as_secs_f64() * 1e3,
            checks.join("; ")
        );
    }
    s += "\n";
    for o in outcomes {
        s += &format!("{}\n{}\n", o.scenario, o.details());
    }
    s
}

fn to_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "scenario": o.scenario,
        "sent": o.sent(),
        "failed": o.failed(),
        "worst_during_fault_ms": o.worst_during_fault().as_secs_f64() * 1e3,
        "loads": o.loads.iter().map(|(name, r)| serde_json::json!({
            "load": name, "sent": r.sent, "ok": r.ok, "non_2xx": r.non_2xx, "reset": r.reset,
            "timeout": r.timeout, "connections_opened": r.connections_opened,
            "connections_lost": r.connections_lost, "failures": r.reasons,
        })).collect::<Vec<_>>(),
        "checks": o.checks.iter().map(|c| serde_json::json!({"check": c.what, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
    })
}
