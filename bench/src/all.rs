//! `all`: the one command of issue 6. Runs, one after the other so they do not share the
//! cores, the proxy pairs (`pair`: direct, weft, weft-split, the HAProxy and nginx mTLS pairs,
//! with Weft's ratios to HAProxy), delta discovery with N simulated proxies (`discovery`) and
//! the CA's CSR signing (`csr-sign`), and writes one markdown report and one JSON object with
//! the machine's facts and the exact commands. `--quick` shrinks every part to a smoke run
//! (the test command runs it so it cannot rot).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use crate::{discovery, pair};

#[derive(clap::Args, Debug)]
#[group(id = "all_args")]
pub(crate) struct Args {
    #[command(flatten)]
    pair: pair::Args,
    /// Simulated proxies of the discovery bench (wildcard subscriptions to 100 services).
    #[arg(long, default_value_t = 1000)]
    discovery_proxies: usize,
    /// How long the CSR-signing bench runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    csr_duration: Duration,
    /// Write `report.md`, `report.json` and the peer pairs' configs (`configs/`) here (created
    /// if missing). Without it the markdown (or, with --json, the JSON) goes to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Parses `discovery`'s own flags, so its defaults stay in one place.
#[derive(Parser)]
struct DiscoveryFlags {
    #[command(flatten)]
    args: discovery::Args,
}

pub(crate) fn run(args: Args, json: bool) -> anyhow::Result<()> {
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let quick = args.pair.quick;
    let (proxies, services, changes) = if quick {
        (args.discovery_proxies.min(50), 10, 2)
    } else {
        (args.discovery_proxies, 100, 5)
    };
    let csr_duration = if quick {
        Duration::from_secs(1)
    } else {
        args.csr_duration
    };
    let control_plane = std::path::absolute(args.pair.bin_dir.join("weft-control-plane"))
        .context("absolute path of the control plane binary")?;
    let discovery_argv: Vec<String> = [
        "discovery".to_owned(),
        "--proxies".into(),
        proxies.to_string(),
        "--services".into(),
        services.to_string(),
        "--changes".into(),
        changes.to_string(),
        "--control-plane-bin".into(),
        control_plane.display().to_string(),
    ]
    .into();
    let discovery_args = DiscoveryFlags::try_parse_from(&discovery_argv)
        .context("discovery arguments")?
        .args;

    eprintln!("all: 1/3 proxy pairs");
    let pair = pair::measure(args.pair)?;
    eprintln!("all: 2/3 discovery with {proxies} simulated proxies");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let discovery = rt
        .block_on(discovery::run_to_json(&discovery_args))
        .context("discovery bench")?;
    drop(rt);
    eprintln!(
        "all: 3/3 CSR signing for {}",
        humantime::format_duration(csr_duration)
    );
    let csr = crate::csr_sign_measure(csr_duration, 256)?;

    let commands = vec![
        command.clone(),
        format!("equivalent to: {}", pair.args.command_line()),
        format!("equivalent to: weft-bench {}", discovery_argv.join(" ")),
        format!(
            "equivalent to: weft-bench csr-sign --duration {}",
            humantime::format_duration(csr_duration)
        ),
    ];
    let report = json!({
        "bench": "all",
        "started": started,
        "quick": quick,
        "commands": commands,
        "pair": pair::report::to_json(&pair),
        "discovery": discovery,
        "csr_sign": csr.to_json(),
    });
    let markdown = markdown(&started, &commands, &pair, &discovery, &csr);

    if let Some(out) = &args.out {
        std::fs::create_dir_all(out.join("configs"))
            .with_context(|| format!("create {}/configs", out.display()))?;
        let write = |name: &str, text: &str| {
            let p = out.join(name);
            std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))
        };
        write("report.md", &markdown)?;
        write("report.json", &format!("{report:#}\n"))?;
        for (name, text) in &pair.peer_configs {
            write(&format!("configs/{name}"), text)?;
        }
        eprintln!(
            "all: wrote {0}/report.md, {0}/report.json and {0}/configs/",
            out.display()
        );
    }
    if json {
        println!("{report}");
    } else if args.out.is_none() {
        print!("{markdown}");
    }
    Ok(())
}

fn markdown(
    started: &str,
    commands: &[String],
    pair: &pair::Results,
    discovery: &Value,
    csr: &crate::CsrSign,
) -> String {
    let mut s = format!("# weft-bench all, {started}\n\n```sh\n");
    for c in commands {
        let _ = writeln!(s, "{c}");
    }
    s += "```\n\n";
    s += &pair::report::markdown(pair);
    let f = |k: &str| discovery[k].as_f64().unwrap_or(f64::NAN);
    let _ = write!(
        s,
        "\n## Control plane: delta discovery ({} simulated proxies, {} mode)\n\n\
         | proxies | services | initial sync | convergence p50 / p99 / max ({} changes) | CP RSS before → with N synced | KiB per proxy | connected gauge = N |\n\
         |---|---|---|---|---|---|---|\n\
         | {} | {} | {:.2} s | {:.1} / {:.1} / {:.1} ms | {:.1} → {:.1} MiB | {:.1} | {} |\n",
        discovery["proxies"],
        discovery["mode"].as_str().unwrap_or("?"),
        discovery["changes"].as_array().map_or(0, Vec::len),
        discovery["proxies"],
        discovery["services"],
        f("initial_sync_ms") / 1e3,
        f("convergence_p50_ms"),
        f("convergence_p99_ms"),
        f("convergence_max_ms"),
        f("control_plane_rss_before_kib") / 1024.0,
        f("control_plane_rss_after_kib") / 1024.0,
        f("kib_per_proxy"),
        discovery["connected_proxies_gauge_ok"],
    );
    let _ = write!(
        s,
        "\n## CA: CSRs verified and signed on one thread\n\n{} CSRs in {:.2} s = **{:.0} per second per core** ({:.1} µs each).\n",
        csr.signed,
        csr.seconds,
        csr.per_second(),
        1e6 / csr.per_second()
    );
    s
}
