//! The chaos suite: real processes on loopback (control planes, `weft-proxy` pairs, etcd),
//! in-process backends, the open-loop load of [`crate::load`], and a fault injected while it
//! runs. Each scenario ([`scenarios`]) takes [`Params`] (the benchmark's full size or the
//! tests' short one) and returns an [`Outcome`]: what the load saw and the scenario's own
//! checks. `tests/tests/chaos.rs` asserts them; `weft-bench chaos` prints them as a table.
//!
//! Processes log to files in the lab's temp dir; an error names the file and quotes its tail.
//! Every process is SIGKILLed on drop.

pub mod scenarios;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::load::Report;
use crate::mesh::{TD, workload};
use crate::{TestCa, bin, http_get, metric_value};

/// How large a run is.
#[derive(Debug, Clone)]
pub struct Params {
    /// Requests per second of each load.
    pub rate: u32,
    /// How long a process or quorum stays down.
    pub outage: Duration,
    /// Load before the fault and after recovery.
    pub steady: Duration,
    /// `--registration-ttl` of the control planes of scenarios 1 and 5 (shorter than the
    /// outage: on etcd the registrations then expire while the control plane is down).
    pub registration_ttl: Duration,
    /// `--svid-ttl` of scenario 3, and how long it runs.
    pub svid_ttl: Duration,
    pub rotation_run: Duration,
    /// Renewals every proxy must have made in scenario 3.
    pub min_renewals: u64,
}

impl Params {
    /// `weft-bench chaos`'s defaults: the numbers.
    pub fn full() -> Self {
        Self {
            rate: 500,
            outage: Duration::from_secs(30),
            steady: Duration::from_secs(5),
            registration_ttl: Duration::from_secs(20),
            svid_ttl: Duration::from_secs(30),
            rotation_run: Duration::from_secs(180),
            min_renewals: 4,
        }
    }

    /// The end-to-end tests' size: the whole file in about two minutes on two cores.
    pub fn short() -> Self {
        Self {
            rate: 100,
            outage: Duration::from_secs(5),
            steady: Duration::from_secs(2),
            registration_ttl: Duration::from_secs(3),
            svid_ttl: Duration::from_secs(10),
            rotation_run: Duration::from_secs(36),
            min_renewals: 4,
        }
    }
}

/// One check of a scenario besides the failed-request count.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// What a scenario saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    /// One report per load (a scenario may run an HTTP/2 and a TCP load at once).
    pub loads: Vec<(String, Report)>,
    pub checks: Vec<Check>,
}

impl Outcome {
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            loads: Vec::new(),
            checks: Vec::new(),
        }
    }

    pub fn check(&mut self, what: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            ok,
            detail: detail.into(),
        });
    }

    pub fn sent(&self) -> u64 {
        self.loads.iter().map(|(_, r)| r.sent).sum()
    }

    pub fn failed(&self) -> u64 {
        self.loads.iter().map(|(_, r)| r.failed()).sum()
    }

    pub fn worst_during_fault(&self) -> Duration {
        self.loads
            .iter()
            .map(|(_, r)| r.worst_during_fault)
            .max()
            .unwrap_or_default()
    }

    /// Every load's summary and every check, one per line.
    pub fn details(&self) -> String {
        let mut s = String::new();
        for (name, r) in &self.loads {
            s += &format!("  load {name}: {}\n", r.summary());
        }
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            s += &format!("  [{mark}] {}: {}\n", c.what, c.detail);
        }
        s
    }

    /// `Err` naming what failed: any failed request, any failed check.
    pub fn assert_ok(&self) -> anyhow::Result<()> {
        if self.failed() > 0 || self.checks.iter().any(|c| !c.ok) {
            bail!(
                "{}: {} of {} requests failed\n{}",
                self.scenario,
                self.failed(),
                self.sent(),
                self.details()
            );
        }
        Ok(())
    }
}

/// A temp dir with the mesh CA and the processes' logs.
#[derive(Debug)]
pub struct Lab {
    pub ca: TestCa,
    dir: tempfile::TempDir,
}

impl Lab {
    pub async fn new() -> anyhow::Result<Self> {
        Ok(Self {
            ca: TestCa::init(TD).await?,
            dir: tempfile::Builder::new().prefix("weft-chaos.").tempdir()?,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A join token file for `spiffe://mesh.test/ns/default/sa/<sa>`.
    pub async fn token(&self, sa: &str) -> anyhow::Result<PathBuf> {
        let file = self.path(&format!("{sa}.token"));
        if !file.exists() {
            let token = self.ca.token(&workload("default", sa), "2h").await?;
            std::fs::write(&file, token)?;
        }
        Ok(file)
    }

    /// `weftctl ARGS` logged in to the control plane at `addr` (context file in the lab).
    pub async fn weftctl(&self, args: &[&str]) -> anyhow::Result<CtlRun> {
        let out = Command::new(bin("weftctl"))
            .args(args)
            .env("WEFT_CONFIG", self.path("weft-config.yaml"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("run weftctl")?;
        Ok(CtlRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `weftctl ARGS`, which must succeed: its stdout.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let run = self.weftctl(args).await?;
        if !run.success {
            bail!("weftctl {} failed: {}", args.join(" "), run.stderr.trim());
        }
        Ok(run.stdout)
    }

    pub async fn login(&self, cp_addr: &str) -> anyhow::Result<()> {
        let ca = self.ca.path();
        self.ctl(&[
            "login",
            "--control-plane",
            cp_addr,
            "--ca-dir",
            ca.to_str().context("CA path")?,
            "--ttl",
            "2h",
        ])
        .await?;
        Ok(())
    }

    /// Writes `yaml` into the lab as `name` and applies it.
    pub async fn apply(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let file = self.write(name, yaml)?;
        self.ctl(&["apply", "-f", &file]).await?;
        Ok(())
    }

    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let p = self.path(name);
        std::fs::write(&p, text)?;
        Ok(p.to_str().context("lab path")?.to_owned())
    }
}

/// One `weftctl` run.
#[derive(Debug, Clone)]
pub struct CtlRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A child process whose stderr goes to a log file; SIGKILLed on drop and by [`Proc::kill`],
/// started again with the same command line by [`Proc::spawn`].
#[derive(Debug)]
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.into(),
            program,
            args,
            log,
            child: None,
        }
    }

    /// Starts the process (appending to its log).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("WEFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reaped.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("kill {}", self.name))?;
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `Err` with the log's tail if it exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!("{} exited ({status}); {}", self.name, self.log_tail());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "log {}:\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `f` every 20 ms until `Some`, with a deadline; the error says what was awaited.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            bail!("{what}: not within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `weft-control-plane` on fixed ports (chosen once), so proxies find it again after a
/// restart.
#[derive(Debug)]
pub struct ControlPlane {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl ControlPlane {
    /// Starts it with `extra` arguments and waits for `/ready`.
    pub async fn start(lab: &Lab, name: &str, extra: &[String]) -> anyhow::Result<Self> {
        let (grpc, admin) = (free_addr()?, free_addr()?);
        let mut args = vec![
            "--ca-dir".to_owned(),
            lab.ca.path().to_str().context("CA path")?.to_owned(),
            "--listen".into(),
            grpc.to_string(),
            "--admin".into(),
            admin.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let proc = Proc::new(
            name,
            bin("weft-control-plane"),
            args,
            lab.path(&format!("{name}.log")),
        );
        let mut cp = Self { proc, grpc, admin };
        cp.restart().await?;
        Ok(cp)
    }

    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }

    /// Starts it (again) and waits until it is ready (its registry has listed the store).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()?;
        self.wait_ready().await
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let admin = self.admin.to_string();
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&admin, "/ready").await {
                return Ok(());
            }
            self.proc.check_alive()?;
            if tokio::time::Instant::now() > end {
                bail!(
                    "{} not ready within 30 s; {}",
                    self.proc.name,
                    self.proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a proxy does.
#[derive(Debug, Clone)]
pub enum Role {
    /// Registers `127.0.0.1:<inbound>` under `default/<service>` and serves `app_port`.
    Server { service: String, app_port: u16 },
    /// One `--upstream` port per service (`<service>.default:<port>`), in order.
    Client { upstreams: Vec<(String, u16)> },
}

/// A `weft-proxy run` process.
#[derive(Debug)]
pub struct ProxyProc {
    pub proc: Proc,
    pub admin: SocketAddr,
    /// Server: the registered inbound address.
    pub inbound: Option<SocketAddr>,
    /// Client: the upstream ports, in the order of [`Role::Client`].
    pub upstreams: Vec<SocketAddr>,
}

impl ProxyProc {
    /// Spawns the proxy (identity `default/<sa>`) against the control plane at `cp`; does not
    /// wait for it (see [`ProxyProc::wait_ready`]).
    pub async fn spawn(
        lab: &Lab,
        cp: &str,
        name: &str,
        sa: &str,
        role: Role,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let token = lab.token(sa).await?;
        let admin = free_addr()?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--control-plane".into(),
            cp.into(),
            "--trust-bundle".into(),
            lab.ca.bundle_file().to_str().context("bundle")?.into(),
            "--trust-domain".into(),
            TD.into(),
            "--token-file".into(),
            token.to_str().context("token")?.into(),
            "--admin".into(),
            admin.to_string(),
            "--outbound".into(),
            free_addr()?.to_string(),
            "--node-id".into(),
            name.into(),
        ];
        let (mut inbound, mut upstreams) = (None, Vec::new());
        match role {
            Role::Server { service, app_port } => {
                let addr = free_addr()?;
                inbound = Some(addr);
                args.extend([
                    "--service".into(),
                    format!("default/{service}"),
                    "--app-port".into(),
                    app_port.to_string(),
                    "--inbound".into(),
                    addr.to_string(),
                    "--advertise-ip".into(),
                    "127.0.0.1".into(),
                ]);
            }
            Role::Client { upstreams: ups } => {
                for (service, port) in ups {
                    let addr = free_addr()?;
                    upstreams.push(addr);
                    args.extend([
                        "--upstream".into(),
                        format!("{addr}={service}.default:{port}"),
                    ]);
                }
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut proc = Proc::new(
            name,
            bin("weft-proxy"),
            args,
            lab.path(&format!("proxy-{name}.log")),
        );
        proc.spawn()?;
        Ok(Self {
            proc,
            admin,
            inbound,
            upstreams,
        })
    }

    /// [`ProxyProc::spawn`], then waits until it is ready.
    pub async fn start(
        lab: &Lab,
        cp: &str,
        name: &str,
        sa: &str,
        role: Role,
    ) -> anyhow::Result<Self> {
        let mut p = Self::spawn(lab, cp, name, sa, role, &[]).await?;
        p.wait_ready(Duration::from_secs(30)).await?;
        Ok(p)
    }

    pub async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let admin = self.admin.to_string();
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if let Ok((200, _)) = http_get(&admin, "/ready").await {
                return Ok(());
            }
            self.proc.check_alive()?;
            if tokio::time::Instant::now() > end {
                bail!(
                    "{} not ready within {deadline:?}; {}",
                    self.proc.name,
                    self.proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn proc_name(&self) -> String {
        self.proc.name.clone()
    }

    /// A sample of its `/metrics` (name with labels, as the line starts).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = http_get(&self.admin.to_string(), "/metrics").await.ok()?;
        metric_value(&text, prefix)
    }

    /// Its `/config_dump`.
    pub async fn config(&self) -> anyhow::Result<serde_json::Value> {
        let (_, dump) = http_get(&self.admin.to_string(), "/config_dump").await?;
        Ok(serde_json::from_str(&dump)?)
    }

    /// The ready endpoint addresses it holds for `default/<service>`.
    pub async fn endpoints(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let dump = self.config().await?;
        Ok(dump["endpoints"][format!("default/{service}")]["endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["ready"] == true)
                    .filter_map(|e| e["address"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until it holds every address of `want` for `default/<service>`.
    pub async fn wait_endpoints(
        &self,
        service: &str,
        want: &[SocketAddr],
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let want: Vec<String> = want.iter().map(ToString::to_string).collect();
        until(
            &format!("{} holding {want:?} for {service}", self.proc.name),
            deadline,
            || async {
                let have = self.endpoints(service).await.ok()?;
                want.iter().all(|w| have.contains(w)).then_some(())
            },
        )
        .await
    }
}

/// A TCP forwarder in front of control-plane replicas, as a Kubernetes Service is: each
/// connection goes to the first replica (round robin) that accepts it. When a replica dies,
/// the connections through it break and reconnect to another.
#[derive(Debug)]
pub struct Forwarder {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(replicas: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                next = next.wrapping_add(1);
                let order: Vec<SocketAddr> = (0..replicas.len())
                    .map(|i| replicas[(next + i) % replicas.len()])
                    .collect();
                tokio::spawn(async move {
                    for r in order {
                        if let Ok(mut upstream) = TcpStream::connect(r).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                    let _ = client.shutdown().await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `path` exists and holds `needle` (a log check).
pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}
