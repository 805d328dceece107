//! The external programs the pair bench drives (nginx as the backend and as one of the peer
//! pairs, HAProxy as the other, wrk and oha as load generators), installed when missing, and
//! the facts about the machine it reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Paths of the programs, each found on PATH (or where its installer puts it).
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) nginx: PathBuf,
    pub(crate) haproxy: PathBuf,
    pub(crate) wrk: PathBuf,
    pub(crate) oha: PathBuf,
    /// The flag that makes this oha print one JSON object (`--output-format json` in oha ≥ 1.5,
    /// `--json` before).
    pub(crate) oha_json: Vec<&'static str>,
    pub(crate) oha_version: String,
    pub(crate) wrk_version: String,
    pub(crate) nginx_version: String,
    pub(crate) haproxy_version: String,
}

/// Finds nginx, HAProxy, wrk and oha, installing what is missing: `apt-get install nginx
/// haproxy wrk` (Debian packages), `cargo install oha --locked` (minutes, once). Says on stderr what it installs.
pub(crate) fn ensure() -> anyhow::Result<Tools> {
    let mut apt = Vec::new();
    if find("nginx").is_none() {
        apt.push("nginx");
    }
    if find("haproxy").is_none() {
        apt.push("haproxy");
    }
    if find("wrk").is_none() {
        apt.push("wrk");
    }
    if !apt.is_empty() {
        apt_install(&apt)
            .with_context(|| format!("{} not found and apt-get install failed", apt.join(", ")))?;
    }
    if find("oha").is_none() {
        eprintln!("pair: oha not on PATH: cargo install oha --locked (takes a few minutes, once)");
        let status = Command::new("cargo")
            .args(["install", "oha", "--locked"])
            .status()
            .context("oha not found and cargo install oha --locked could not run")?;
        if !status.success() {
            bail!("oha not found and cargo install oha --locked failed ({status})");
        }
    }
    let nginx = find("nginx").context("nginx still not found after apt-get install nginx")?;
    let haproxy =
        find("haproxy").context("haproxy still not found after apt-get install haproxy")?;
    let wrk = find("wrk").context("wrk still not found after apt-get install wrk")?;
    let oha = find("oha").context(
        "oha still not found after cargo install oha (is $CARGO_HOME/bin on PATH or ~/.cargo/bin?)",
    )?;
    let help = output(&oha, &["--help"])?;
    let oha_json = if help.contains("--output-format") {
        vec!["--output-format", "json"]
    } else if help.contains("--json") {
        vec!["--json"]
    } else {
        bail!(
            "{} --help mentions neither --output-format nor --json",
            oha.display()
        );
    };
    let oha_version = output(&oha, &["--version"])?.trim().to_owned();
    // `wrk -v` prints its version and usage, then exits 1.
    let wrk_version = Command::new(&wrk)
        .arg("-v")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .with_context(|| format!("run {} -v", wrk.display()))?;
    // `nginx -v` prints on stderr.
    let nginx_version = Command::new(&nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .with_context(|| format!("run {} -v", nginx.display()))?;
    // `haproxy -v`: "HAProxy version 2.6.12-1+deb12u4 2025/…", then more lines.
    let haproxy_version = output(&haproxy, &["-v"])?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(Tools {
        nginx,
        haproxy,
        haproxy_version,
        wrk,
        oha,
        oha_json,
        oha_version,
        wrk_version,
        nginx_version,
    })
}

fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let root = output(Path::new("id"), &["-u"])
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    if !root && find("sudo").is_none() {
        bail!("need root (or sudo) to apt-get install {}", pkgs.join(" "));
    }
    eprintln!("pair: missing: apt-get install {}", pkgs.join(" "));
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let all: Vec<&str> = sudo.iter().chain(args).copied().collect();
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("run {}", all.join(" ")))?;
        if !status.success() {
            bail!("{} failed ({status})", all.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(pkgs);
    run(&install)
}

/// `name` on PATH, or in the places its installer puts it even when they are not on PATH
/// (/usr/sbin for nginx, $CARGO_HOME/bin or ~/.cargo/bin for oha).
fn find(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn output(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {} {}", program.display(), args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the report says about the machine.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) mem_total_mib: u64,
    /// /proc/loadavg when the bench started and when it ended.
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
    /// Cores busy on average during the run outside the bench's own process tree (other
    /// processes, and interrupt time charged to no process).
    pub(crate) other_vcpu: f64,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_default()
            / 1024;
        Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            mem_total_mib,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            other_vcpu: 0.0,
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
