//! What the targets are made of, each a child process on loopback with its own files in the
//! bench's temp dir: the nginx backend, the control plane (configured with `weftctl` as an
//! operator would, see deploy/quickstart.sh) and `weft-proxy` instances.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::process::{Proc, free_ports, http_get, loopback};

/// How long a process may take to come up before the bench gives up.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const TRUST_DOMAIN: &str = "bench.test";
/// The backend's response body: 64 bytes.
pub(crate) const BODY: &str = "weft-bench pair backend: 64 bytes of body, no more and no less.\n";

/// The Weft binaries under test.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) proxy: PathBuf,
    pub(crate) control_plane: PathBuf,
    pub(crate) weftctl: PathBuf,
}

impl Bins {
    pub(crate) fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let bin = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} not found: build the binaries (cargo build --release --locked --bins) or pass --bin-dir",
                    p.display()
                );
            }
            // Absolute, so it does not matter what the children's working directory is.
            std::path::absolute(&p).with_context(|| format!("absolute path of {}", p.display()))
        };
        Ok(Self {
            proxy: bin("weft-proxy")?,
            control_plane: bin("weft-control-plane")?,
            weftctl: bin("weftctl")?,
        })
    }
}

/// nginx serving [`BODY`] on 127.0.0.1 with one process and keep-alive.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
}

impl Backend {
    pub(crate) fn start(nginx: &Path, dir: &Path) -> anyhow::Result<Self> {
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(&prefix).with_context(|| format!("create {}", prefix.display()))?;
        let port = free_ports(1)?[0];
        let conf = nginx_conf(
            &prefix,
            &format!(
                r#"    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
"#,
                body = BODY.escape_default()
            ),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("write {}", conf_path.display()))?;
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"));
        let mut proc = Proc::spawn("nginx", cmd, &prefix.join("stderr.log"))?;
        let addr = loopback(port);
        proc.wait_http_ok(addr, "/", Duration::from_millis(10), START_TIMEOUT)
            .map_err(|e| {
                let errlog = super::process::log_tail(&prefix.join("error.log"));
                e.context(format!("nginx did not start: error.log:\n{errlog}"))
            })?;
        let (_, body) = http_get(addr, "/", Duration::from_secs(2))?;
        if body != BODY {
            bail!("nginx answered {body:?}, not the {} byte body", BODY.len());
        }
        Ok(Self { proc, addr })
    }
}

/// An nginx config for one process in `prefix` (pid file, logs and temp dirs there) with
/// `http` inside its `http` block. `master_process off`: one process that is the one worker,
/// so killing it leaves no worker behind and its /proc figures are the whole server's.
/// Client keep-alive connections are never closed by request count or idleness during a run.
pub(crate) fn nginx_conf(prefix: &Path, http: &str) -> String {
    let p = prefix.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{http}}}
"#
    )
}

/// The control plane with a fresh CA, an admin login and the Service `default/api` applied.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub(crate) proc: Proc,
    pub(crate) grpc_addr: String,
    pub(crate) bins: Bins,
    dir: PathBuf,
    /// The mesh CA (`weftctl ca init` layout); the peer pairs' certificates come from it too.
    pub(crate) ca_dir: PathBuf,
}

impl Mesh {
    pub(crate) fn start(bins: &Bins, dir: &Path) -> anyhow::Result<Self> {
        let ca_dir = dir.join("ca");
        weftctl(
            bins,
            dir,
            &[
                "ca",
                "init",
                "--trust-domain",
                TRUST_DOMAIN,
                "--out",
                &ca_dir.display().to_string(),
            ],
        )?;
        let mut cmd = Command::new(&bins.control_plane);
        cmd.arg("--ca-dir")
            .arg(&ca_dir)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .env("WEFT_LOG", "info");
        let mut proc = Proc::spawn("weft-control-plane", cmd, &dir.join("control-plane.log"))?;
        let line = proc.wait_for_log_line("control plane serving", START_TIMEOUT)?;
        let grpc_addr = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("grpc_addr="))
            .with_context(|| format!("no grpc_addr= in {line:?}"))?
            .to_owned();
        let mesh = Self {
            proc,
            grpc_addr,
            bins: bins.clone(),
            dir: dir.to_owned(),
            ca_dir,
        };
        mesh.ctl(&[
            "login",
            "--control-plane",
            &mesh.grpc_addr,
            "--ca-dir",
            &mesh.ca_dir.display().to_string(),
        ])?;
        let service = dir.join("api.yaml");
        std::fs::write(
            &service,
            "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {namespace: default, name: api}\nspec:\n  ports: [{name: http, port: 80, protocol: http1}]\n",
        )
        .with_context(|| format!("write {}", service.display()))?;
        mesh.ctl(&["apply", "-f", &service.display().to_string()])?;
        Ok(mesh)
    }

    /// Writes `yaml` to `file` in the bench's dir and `weftctl apply`s it.
    pub(crate) fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("write {}", path.display()))?;
        self.ctl(&["apply", "-f", &path.display().to_string()])?;
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        weftctl(&self.bins, &self.dir, args)
    }

    /// A join token file for `spiffe://TD/ns/default/sa/{sa}`.
    pub(crate) fn token(&self, sa: &str) -> anyhow::Result<PathBuf> {
        let id = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}");
        let token = self.ctl(&[
            "token",
            "create",
            "--ca-dir",
            &self.ca_dir.display().to_string(),
            "--identity",
            &id,
            "--ttl",
            "24h",
        ])?;
        let path = self.dir.join(format!("{sa}.token"));
        std::fs::write(&path, token.trim()).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Spawns a `weft-proxy run`; `role` names its log. Server: `--app-port` and `--service
    /// default/SERVICE` with an inbound listener; client: an `--upstream` port to
    /// `SERVICE.default:80`. Does not wait for it.
    pub(crate) fn spawn_proxy(
        &self,
        role: &str,
        token: &Path,
        kind: ProxyKind,
    ) -> anyhow::Result<WeftProxy> {
        self.spawn_proxy_with(role, token, kind, &[])
    }

    /// `spawn_proxy` with `extra` flags.
    pub(crate) fn spawn_proxy_with(
        &self,
        role: &str,
        token: &Path,
        kind: ProxyKind,
        extra: &[String],
    ) -> anyhow::Result<WeftProxy> {
        let ports = free_ports(3)?;
        let (admin, outbound, third) = (loopback(ports[0]), loopback(ports[1]), ports[2]);
        let mut cmd = Command::new(&self.bins.proxy);
        cmd.arg("run")
            .args(["--control-plane", &self.grpc_addr])
            .arg("--trust-bundle")
            .arg(self.ca_dir.join("ca.crt"))
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--token-file")
            .arg(token)
            .args(["--admin", &admin.to_string()])
            .args(["--outbound", &outbound.to_string()])
            .args(["--node-id", role])
            .env("WEFT_LOG", "info")
            .args(extra);
        let mut upstream = None;
        let mut inbound = None;
        match kind {
            ProxyKind::Server { service, app_port } => {
                cmd.args(["--service", &format!("default/{service}")])
                    .args(["--app-port", &app_port.to_string()])
                    .args(["--inbound", &loopback(third).to_string()])
                    .args(["--advertise-ip", "127.0.0.1"]);
                inbound = Some(loopback(third));
            }
            ProxyKind::Client { service } => {
                cmd.args([
                    "--upstream",
                    &format!("127.0.0.1:{third}={service}.default:80"),
                ]);
                upstream = Some(loopback(third));
            }
        }
        let spawned = Instant::now();
        let proc = Proc::spawn(
            &format!("weft-proxy ({role})"),
            cmd,
            &self.dir.join(format!("proxy-{role}.log")),
        )?;
        Ok(WeftProxy {
            proc,
            admin,
            upstream,
            inbound,
            spawned,
        })
    }
}

/// `service` is a name in namespace `default`: the one a server registers its inbound
/// endpoint under, or the one a client's upstream port forwards to (port 80).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProxyKind {
    Server {
        service: &'static str,
        app_port: u16,
    },
    Client {
        service: &'static str,
    },
}

#[derive(Debug)]
pub(crate) struct WeftProxy {
    pub(crate) proc: Proc,
    pub(crate) admin: SocketAddr,
    /// The client's local port to its service.
    pub(crate) upstream: Option<SocketAddr>,
    /// The server's inbound port.
    pub(crate) inbound: Option<SocketAddr>,
    /// Just before the process was spawned.
    pub(crate) spawned: Instant,
}

impl WeftProxy {
    /// Polls the admin `/ready` every `every` until 200; the time from spawn to then.
    pub(crate) fn wait_ready(&mut self, every: Duration) -> anyhow::Result<Duration> {
        let at = self
            .proc
            .wait_http_ok(self.admin, "/ready", every, START_TIMEOUT)?;
        Ok(at - self.spawned)
    }

    /// Polls `GET /` through the upstream port every `every` until the backend answers (the
    /// client has the server's endpoint and reached it over mTLS); the time from spawn to then.
    pub(crate) fn wait_routable(&mut self, every: Duration) -> anyhow::Result<Duration> {
        let addr = self
            .upstream
            .context("wait_routable on a proxy without an upstream port")?;
        let at = self.proc.wait_http_ok(addr, "/", every, START_TIMEOUT)?;
        let (_, body) = http_get(addr, "/", Duration::from_secs(2))?;
        if body != BODY {
            bail!("through the proxies the backend answered {body:?}, not its body");
        }
        Ok(at - self.spawned)
    }
}

/// Runs `weftctl ARGS` with its context file in `dir`; its stdout, or an error with its stderr.
fn weftctl(bins: &Bins, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&bins.weftctl)
        .args(args)
        .env("WEFT_CONFIG", dir.join("weft-config.yaml"))
        .output()
        .with_context(|| format!("run weftctl {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "weftctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
