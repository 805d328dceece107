//! Child processes the bench owns (killed on drop, their stderr in a log file), free loopback
//! ports, a minimal HTTP/1.1 GET for readiness checks, and what is read from `/proc/<pid>`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Lines of a log kept in error messages.
const TAIL_LINES: usize = 30;

/// What a SIGINT or SIGTERM to the bench cleans up, since it skips every `Drop`: the PIDs of
/// live [`Proc`]s and the temp dirs.
static LIVE: Mutex<(Vec<u32>, Vec<PathBuf>)> = Mutex::new((Vec::new(), Vec::new()));

/// On SIGINT or SIGTERM: SIGKILL every live [`Proc`], remove the registered temp dirs, exit 130.
pub(crate) fn cleanup_on_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("start the signal watcher's runtime")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            let (pids, dirs) = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            eprintln!("pair: interrupted: killing {} child processes", pids.len());
            if !pids.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(pids.iter().map(u32::to_string))
                    .status();
            }
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
            std::process::exit(130);
        })
        .context("start the signal watcher")?;
    Ok(())
}

/// Registers a temp dir for removal on SIGINT/SIGTERM (its `TempDir` removes it otherwise).
pub(crate) fn remove_on_signal(dir: &Path) {
    if let Ok(mut l) = LIVE.lock() {
        l.1.push(dir.to_owned());
    }
}

/// Runs `cmd` to completion like `Command::output`, but killed on SIGINT/SIGTERM like a
/// [`Proc`] (the load generators run for the whole measurement).
pub(crate) fn output(mut cmd: Command) -> std::io::Result<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    if let Ok(mut l) = LIVE.lock() {
        l.0.push(pid);
    }
    let out = child.wait_with_output();
    if let Ok(mut l) = LIVE.lock() {
        l.0.retain(|&p| p != pid);
    }
    out
}

/// A child process, killed (SIGKILL) and reaped on drop. Its stdout and stderr go to `log`.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("clone the handle of {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", cmd.get_program()))?;
        if let Ok(mut l) = LIVE.lock() {
            l.0.push(child.id());
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the log's tail if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            ),
            Err(e) => bail!("{}: wait: {e}", self.name),
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Polls the log until a line contains `needle`, with a deadline.
    pub(crate) fn wait_for_log_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls a TCP connect to `addr` every 1 ms until it is accepted, with a deadline.
    pub(crate) fn wait_for_listener(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(Instant::now());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: nothing listening on {addr} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls `GET http://addr{path}` until it answers 200, with a deadline; every `every`.
    /// Returns when it did.
    pub(crate) fn wait_http_ok(
        &mut self,
        addr: SocketAddr,
        path: &str,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match http_get(addr, path, Duration::from_secs(2)) {
                Ok((200, _)) => return Ok(Instant::now()),
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: GET http://{addr}{path} not 200 within {timeout:?} (last: {last}); log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(every);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        if let Ok(mut l) = LIVE.lock() {
            l.0.retain(|&p| p != pid);
        }
    }
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then released).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 to find a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("local address")?.port()))
        .collect()
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One `GET` on its own connection (`Connection: close`): (status, body). Chunked bodies are
/// returned raw; only the status matters to the callers that might see one.
pub(crate) fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut tcp =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .with_context(|| format!("send GET {path} to {addr}"))?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .with_context(|| format!("read the answer to GET {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .with_context(|| {
            format!(
                "GET {path} from {addr}: not an HTTP/1.1 answer: {:?}",
                text.chars().take(80).collect::<String>()
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A `kB` field (`VmRSS`, `VmHWM`) of /proc/<pid>/status, in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// utime + stime of the whole process (all threads) from /proc/<pid>/stat, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("{path}: no utime/stime in {stat:?}"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'; fields after the
    // last ')' start at field 3 (state), so utime (14) and stime (15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy CPU time of the whole machine and of the bench's process tree, to tell how much of the
/// machine something else used during a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuAccount {
    at: Instant,
    /// user + nice + system + irq + softirq + steal of all CPUs (/proc/stat), in ticks.
    machine_busy: u64,
    /// utime + stime + cutime + cstime of this process (children once reaped), in ticks.
    bench_tree: u64,
}

impl CpuAccount {
    pub(crate) fn read() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let machine_busy = stat
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect();
                // user nice system idle iowait irq softirq steal
                [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
            })
            .context("no cpu line in /proc/stat")?;
        let own = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
        let bench_tree = own
            .rfind(')')
            .map(|i| &own[i + 1..])
            .map(|rest| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                (11..=14)
                    .filter_map(|i| f.get(i)?.parse::<u64>().ok())
                    .sum()
            })
            .context("no utime/stime/cutime/cstime in /proc/self/stat")?;
        Ok(Self {
            at: Instant::now(),
            machine_busy,
            bench_tree,
        })
    }

    /// Average cores busy on the whole machine since `earlier` (everything: load generator,
    /// backend, proxies, and anything else running).
    pub(crate) fn machine_vcpu_since(&self, earlier: &CpuAccount) -> f64 {
        let secs = (self.at - earlier.at).as_secs_f64();
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy) as f64;
        if secs > 0.0 {
            busy / clock_ticks_per_second() / secs
        } else {
            0.0
        }
    }

    /// Average cores busy outside the bench's tree since `earlier` (meaningful once every
    /// child has been reaped).
    pub(crate) fn other_vcpu_since(&self, earlier: &CpuAccount) -> f64 {
        let secs = (self.at - earlier.at).as_secs_f64();
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy) as f64;
        let ours = self.bench_tree.saturating_sub(earlier.bench_tree) as f64;
        if secs > 0.0 {
            ((busy - ours) / clock_ticks_per_second() / secs).max(0.0)
        } else {
            0.0
        }
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_ticks() {
        let stat =
            "1234 (weft proxy) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 37 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn own_process() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(status_kib(pid, "VmHWM").unwrap() > 0);
        cpu_ticks(pid).unwrap();
    }
}
