//! The demo's ports and child processes: every port is checked before anything starts (so a
//! taken one is named with what it was for), and every child runs in its own process group
//! (a terminal's Ctrl-C reaches only `weftctl`, which stops them in order: SIGTERM, so proxies
//! deregister and drain, then SIGKILL after a deadline). Children are killed on drop too.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// How long a child may take to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping child gets between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The ports of one member: its proxy's listeners and its application's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemberPorts {
    pub(crate) inbound: u16,
    pub(crate) outbound: u16,
    pub(crate) admin: u16,
    pub(crate) app: u16,
    pub(crate) upstream: u16,
}

/// Every port the demo listens on.
#[derive(Debug, Clone)]
pub(crate) struct Ports {
    pub(crate) grpc: u16,
    pub(crate) cp_admin: u16,
    pub(crate) members: Vec<MemberPorts>,
}

impl Ports {
    /// From `base`: the control plane on `base` and `base+1`, member `i` on
    /// `base + 10(i+1) + 0..5` (inbound, outbound, admin, app, upstream). `base` 0: ports the
    /// kernel picks, free when chosen.
    pub(crate) fn plan(base: u16, members: usize) -> anyhow::Result<Self> {
        // Free ports are held until all are picked: a port let go at once can be handed out
        // again by the next bind, and two parts of the demo would then share it.
        let held = std::cell::RefCell::new(Vec::new());
        let next = |n: u16| -> anyhow::Result<u16> {
            if base == 0 {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .context("pick a free loopback port")?;
                let port = l.local_addr()?.port();
                held.borrow_mut().push(l);
                return Ok(port);
            }
            base.checked_add(n).with_context(|| {
                format!(
                    "--base-port {base}: the demo needs ports up to {base}+{n}; pick a lower one"
                )
            })
        };
        let grpc = next(0)?;
        let cp_admin = next(1)?;
        let mut ms = Vec::new();
        for i in 0..members {
            let at = 10 * (i as u16 + 1);
            ms.push(MemberPorts {
                inbound: next(at)?,
                outbound: next(at + 1)?,
                admin: next(at + 2)?,
                app: next(at + 3)?,
                upstream: next(at + 4)?,
            });
        }
        Ok(Self {
            grpc,
            cp_admin,
            members: ms,
        })
    }

    /// Every port with what it is for, e.g. `(7412, "web's proxy admin")`.
    pub(crate) fn uses(&self, names: &[&str]) -> Vec<(u16, String)> {
        let mut v = vec![
            (self.grpc, "the control plane's gRPC".to_owned()),
            (self.cp_admin, "the control plane's admin".to_owned()),
        ];
        for (m, name) in self.members.iter().zip(names) {
            v.push((m.inbound, format!("{name}'s proxy inbound")));
            v.push((m.outbound, format!("{name}'s proxy outbound")));
            v.push((m.admin, format!("{name}'s proxy admin")));
            v.push((m.app, format!("the {name} application")));
            v.push((m.upstream, format!("{name}'s proxy upstream")));
        }
        v
    }

    /// Fails on the first port something already listens on, naming it and what to do.
    pub(crate) fn check_free(&self, names: &[&str], base: u16) -> anyhow::Result<()> {
        for (port, what) in self.uses(names) {
            if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                let hint = if base == 0 {
                    "try again".to_owned()
                } else {
                    format!(
                        "is another demo running? `ss -ltnp 'sport = :{port}'` shows what holds it. \
                         Stop it, or choose other ports: --base-port N (the demo uses N..N+{}), or --base-port 0 for any free ports",
                        10 * self.members.len() + 4
                    )
                };
                bail!("port 127.0.0.1:{port} (for {what}) is not free: {e}; {hint}");
            }
        }
        Ok(())
    }
}

/// `127.0.0.1:port`.
pub(crate) fn lo(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Finds `name` in `dir`, saying how to build it if it is missing.
pub(crate) fn binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} not found: the demo runs the real binaries; build them with `cargo build --release --bins` \
             (or pass --bin-dir DIR)",
            p.display()
        );
    }
    Ok(p)
}

/// A child process with its output in a log file.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    pub(crate) fn spawn(
        name: &str,
        mut cmd: std::process::Command,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a terminal's Ctrl-C goes to weftctl alone, which stops
            // the children in order.
            .process_group(0)
            // And if weftctl dies without stopping them (SIGKILL), they stop themselves: the
            // child asks for SIGTERM on its parent's death. weftctl's runtime is one thread,
            // the main one, which spawns them and lives as long as the demo.
            .env("WEFT_EXIT_WITH_PARENT", std::process::id().to_string());
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `Err` naming the child, its exit status and its log if it has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Polls `http://admin/ready` until 200, failing early if the child exits.
    pub(crate) async fn wait_ready(&mut self, admin: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            if matches!(get(admin, "/ready").await, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {READY_TIMEOUT:?}; the end of its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within the stop timeout.
    pub(crate) async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let pid = rustix::process::Pid::from_raw(pid as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `GET path` on a local admin port: the status and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}{path}").parse()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.get(uri))
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within 2 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_laid_out_from_the_base_and_named() {
        let p = Ports::plan(7400, 2).unwrap();
        assert_eq!((p.grpc, p.cp_admin), (7400, 7401));
        assert_eq!(p.members[1].inbound, 7420);
        assert_eq!(p.members[1].upstream, 7424);
        let uses = p.uses(&["web", "api"]);
        assert!(uses.contains(&(7412, "web's proxy admin".to_owned())));
        assert_eq!(uses.len(), 12);
        assert!(Ports::plan(65530, 2).is_err());
        let any = Ports::plan(0, 1).unwrap();
        assert_ne!(any.grpc, 0);
    }

    /// With `--base-port 0` every port is a different free one (a port let go at once could
    /// be picked twice: it was, for the control plane's gRPC and admin).
    #[test]
    fn free_ports_are_all_different() {
        for _ in 0..20 {
            let p = Ports::plan(0, 4).unwrap();
            let mut ports: Vec<u16> = p
                .uses(&["a", "b", "c", "d"])
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let all = ports.len();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), all, "a port was picked twice");
        }
    }

    #[test]
    fn a_taken_port_is_named_with_its_use() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let ports = Ports {
            grpc: port,
            cp_admin: 0,
            members: vec![],
        };
        let err = ports.check_free(&[], 7400).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "port 127.0.0.1:{port} (for the control plane's gRPC) is not free"
            )),
            "{err}"
        );
        assert!(err.contains("--base-port"), "{err}");
    }
}
