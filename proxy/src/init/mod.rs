//! `weft-proxy init`: the init container's job. Installs the nat rules that send a pod's TCP
//! through its proxy ([`rules`]), with `iptables-restore --noflush` so each family changes in
//! one transaction, for IPv4 and IPv6; idempotent (a restarted init container leaves exactly
//! the same rules); `--cleanup` removes what it added; `--dry-run` prints and touches nothing.
//!
//! The backend is chosen per run: `--mode nft` or `legacy`, or `auto` — nft unless the legacy
//! tables already hold rules (a node whose other software still uses iptables-legacy, where
//! nft rules would be silently bypassed: the mixed-node failure Linkerd and Istio users hit).

pub mod rules;

use std::io::Write as _;
use std::process::{Command, Stdio};

use rules::{Family, RuleConfig};

/// The `weft-proxy init` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's uid: its own connections are not redirected.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Where inbound connections are redirected (the proxy's `--inbound` port).
    #[arg(long, default_value_t = 4143)]
    pub inbound_port: u16,
    /// Where the application's outbound connections are redirected (`--outbound` port).
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,
    /// The proxy's admin port: never redirected.
    #[arg(long, default_value_t = 4191)]
    pub admin_port: u16,
    /// Inbound ports that reach the application directly (e.g. 22,8000-8100).
    #[arg(long, value_parser = ports)]
    pub skip_inbound_ports: Option<Ports>,
    /// Outbound ports that bypass the proxy (e.g. 3306 for a database outside the mesh).
    #[arg(long, value_parser = ports)]
    pub skip_outbound_ports: Option<Ports>,
    /// Destinations (CIDRs, IPv4 and IPv6) that bypass the proxy.
    #[arg(long, value_parser = subnets)]
    pub skip_subnets: Option<Subnets>,
    /// iptables backend: auto (nft unless legacy rules exist), nft or legacy.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: Mode,
    /// Remove the rules this command added, and nothing else.
    #[arg(long, conflicts_with = "dry_run")]
    pub cleanup: bool,
    /// Print the iptables-restore input for both families; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A `--skip-…-ports` value.
#[derive(Debug, Clone)]
pub struct Ports(pub Vec<rules::PortRange>);

/// A `--skip-subnets` value.
#[derive(Debug, Clone)]
pub struct Subnets(pub Vec<rules::Subnet>);

fn ports(s: &str) -> Result<Ports, String> {
    rules::parse_ports(s).map(Ports)
}

fn subnets(s: &str) -> Result<Subnets, String> {
    rules::parse_subnets(s).map(Subnets)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("run {cmd}: {source} (is iptables installed? --mode {mode} needs {cmd})")]
    Spawn {
        cmd: String,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The backend's command names.
#[derive(Debug, Clone, Copy)]
struct Backend(&'static str);

impl Backend {
    fn save(self, f: Family) -> String {
        format!("{}-{}-save", prefix(f), self.0)
    }
    fn restore(self, f: Family) -> String {
        format!("{}-{}-restore", prefix(f), self.0)
    }
}

fn prefix(f: Family) -> &'static str {
    match f {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

fn run(
    cmd: &str,
    args: &[&str],
    input: Option<&str>,
    mode: &'static str,
) -> Result<String, InitError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            cmd: cmd.to_owned(),
            mode,
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            cmd: cmd.to_owned(),
            mode,
            source,
        })?;
    if !out.status.success() {
        return Err(InitError::Failed {
            cmd: format!("{cmd} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `save` output (of the nat table) has our jumps and chains.
fn present(save: &str) -> ((bool, bool), bool) {
    let has_jump = |builtin: &str, chain: &str| {
        save.lines().any(|l| {
            l.starts_with(&format!("-A {builtin} ")) && l.ends_with(&format!("-j {chain}"))
        })
    };
    let jumps = (
        has_jump("PREROUTING", rules::INBOUND_CHAIN),
        has_jump("OUTPUT", rules::OUTPUT_CHAIN),
    );
    let chains = save
        .lines()
        .any(|l| l.starts_with(&format!(":{} ", rules::INBOUND_CHAIN)));
    (jumps, chains)
}

/// Whether the legacy backend holds any rule (in any table).
fn legacy_in_use() -> bool {
    ["iptables-legacy-save", "ip6tables-legacy-save"]
        .iter()
        .any(|cmd| {
            run(cmd, &[], None, "legacy")
                .map(|out| out.lines().any(|l| l.starts_with("-A ")))
                .unwrap_or(false)
        })
}

fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Runs `weft-proxy init`; lines for `kubectl logs` go to stdout.
pub fn main(args: &Args) -> Result<(), InitError> {
    let config = RuleConfig {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        skip_inbound_ports: args
            .skip_inbound_ports
            .clone()
            .map(|p| p.0)
            .unwrap_or_default(),
        skip_outbound_ports: args
            .skip_outbound_ports
            .clone()
            .map(|p| p.0)
            .unwrap_or_default(),
        skip_subnets: args.skip_subnets.clone().map(|s| s.0).unwrap_or_default(),
    };
    if args.dry_run {
        for f in [Family::V4, Family::V6] {
            println!("# {} (iptables-restore --noflush input)", prefix(f));
            print!("{}", rules::install(f, &config, (false, false)));
        }
        return Ok(());
    }
    let (backend, why) = match args.mode {
        Mode::Nft => (Backend("nft"), "--mode nft"),
        Mode::Legacy => (Backend("legacy"), "--mode legacy"),
        Mode::Auto if legacy_in_use() => (
            Backend("legacy"),
            "auto: iptables-legacy already holds rules on this node",
        ),
        Mode::Auto => (
            Backend("nft"),
            "auto: no iptables-legacy rules on this node",
        ),
    };
    let mode = if backend.0 == "nft" { "nft" } else { "legacy" };
    println!("weft-proxy init: iptables backend {} ({why})", backend.0);
    let mut families = vec![Family::V4];
    if ipv6_enabled() {
        families.push(Family::V6);
    } else {
        println!("weft-proxy init: IPv6 is disabled in this network namespace; IPv4 rules only");
    }
    for f in families {
        let save = run(&backend.save(f), &["-t", "nat"], None, mode)?;
        let (jumps, chains) = present(&save);
        let input = if args.cleanup {
            rules::cleanup(jumps, chains)
        } else {
            rules::install(f, &config, jumps)
        };
        run(&backend.restore(f), &["--noflush"], Some(&input), mode)?;
        let what = match (args.cleanup, chains) {
            (true, true) => "removed",
            (true, false) => "nothing to remove",
            (false, true) => "replaced (already installed)",
            (false, false) => "installed",
        };
        println!(
            "weft-proxy init: {} rules {what}: inbound TCP → :{}, outbound TCP → :{}, proxy uid {} exempt",
            prefix(f),
            config.inbound_port,
            config.outbound_port,
            config.proxy_uid
        );
    }
    Ok(())
}
