//! The end-to-end test harness: real binaries and in-process servers on 127.0.0.1:0, torn down
//! on drop, and polling with deadlines instead of sleeps.
#![allow(clippy::unwrap_used, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use weft_certs::{SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use weft_control_plane::client::{self, Certified};

pub mod chaos;
pub mod ctl;
pub mod dataplane;
pub mod etcd;
pub mod k8s;
pub mod load;
pub mod mesh;
pub mod otlp;
pub mod traffic;

/// Path of a workspace binary, built (once per test process) with the profile this test was
/// built with, so a test never runs a stale binary. [`use_binaries_in`] or `$WEFT_BIN_DIR`
/// say where built binaries already are instead, and nothing is built.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = BIN_DIR.get() {
        return dir.join(name);
    }
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<this test> → target/<profile>
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("cannot locate the target directory")?
            .to_path_buf();
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "weft-control-plane",
            "-p",
            "weft-cli",
            "-p",
            "weft-proxy",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of the binaries failed: {status}"));
        }
        Ok(dir)
    });
    match dir {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e}"),
    }
}

static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Makes [`bin`] take the binaries from `dir` (built already) for the rest of the process:
/// `weft-bench chaos --bin-dir`. The first call wins.
pub fn use_binaries_in(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// Runs `weftctl` to completion; returns stdout, or an error with stderr.
pub async fn weftctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin("weftctl"))
        .args(args)
        .output()
        .await
        .context("run weftctl")?;
    if !out.status.success() {
        bail!(
            "weftctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A CA directory made by `weftctl ca init` in a temp dir (removed on drop).
#[derive(Debug)]
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub trust_domain: TrustDomain,
}

impl TestCa {
    pub async fn init(td: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        weftctl(&[
            "ca",
            "init",
            "--trust-domain",
            td,
            "--out",
            ca.to_str().unwrap(),
        ])
        .await?;
        Ok(Self {
            dir,
            trust_domain: TrustDomain::parse(td)?,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn bundle_file(&self) -> PathBuf {
        self.path().join("ca.crt")
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        let pem = std::fs::read(self.bundle_file()).unwrap();
        Arc::new(TrustBundle::from_pem(self.trust_domain.clone(), &pem, "ca.crt").unwrap())
    }

    pub async fn token(&self, identity: &str, ttl: &str) -> anyhow::Result<String> {
        let out = weftctl(&[
            "token",
            "create",
            "--ca-dir",
            self.path().to_str().unwrap(),
            "--identity",
            identity,
            "--ttl",
            ttl,
        ])
        .await?;
        Ok(out.trim().to_owned())
    }
}

/// A `weft-control-plane` process on loopback, killed on drop. Its log is kept for assertions
/// and printed if the test fails.
#[derive(Debug)]
pub struct ControlPlaneProcess {
    child: Child,
    pub grpc_addr: String,
    pub admin_addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ControlPlaneProcess {
    pub async fn start(ca_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin("weft-control-plane"))
            .args([
                "--ca-dir",
                ca_dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn weft-control-plane")?;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
        let keep = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("control plane serving") {
                    let _ = tx.send(line.clone()).await;
                }
                keep.lock().unwrap().push(line);
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        let line = match ready {
            Ok(Some(line)) => line,
            _ => bail!(
                "control plane did not report its address; log:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        let field = |name: &str| -> anyhow::Result<String> {
            let at = line
                .find(&format!("{name}="))
                .with_context(|| format!("no {name} in {line:?}"))?;
            Ok(line[at + name.len() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned())
        };
        Ok(Self {
            grpc_addr: field("grpc_addr")?,
            admin_addr: field("admin_addr")?,
            child,
            log,
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Polls the log until a line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> anyhow::Result<String> {
        poll(Duration::from_secs(10), || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
        })
        .await
        .with_context(|| format!("no log line containing {needle:?}; log:\n{}", self.log()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- control plane log ---\n{}", self.log());
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `deadline`.
pub async fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gets an SVID for `id` from the control plane at `addr` with `token`, as a proxy would.
pub async fn certify(
    addr: &str,
    bundle: Arc<TrustBundle>,
    id: &str,
    token: &str,
) -> Result<Certified, client::ClientError> {
    let id = SpiffeId::parse(id).unwrap();
    let cp = weft_control_plane::control_plane_id(&id.trust_domain());
    let channel = client::connect(addr, bundle, cp, None).await?;
    client::certify(
        channel,
        &WorkloadKey::generate().unwrap(),
        Some(&id),
        token,
        None,
    )
    .await
}

/// GET `http://{addr}{path}` over plain HTTP/1.1 (the admin endpoints).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr)
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `http://{admin}/metrics` every 100 ms until the sample starting with `prefix` is at
/// least `at_least`; returns that scrape's text, or fails after `deadline` with the last one.
pub async fn metric_reaches(
    admin: &str,
    prefix: &str,
    at_least: f64,
    deadline: Duration,
) -> anyhow::Result<String> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let (_, text) = http_get(admin, "/metrics").await?;
        if metric_value(&text, prefix).is_some_and(|v| v >= at_least) {
            return Ok(text);
        }
        if tokio::time::Instant::now() >= end {
            bail!("{prefix} did not reach {at_least} within {deadline:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a Prometheus sample line starting with `prefix` (e.g. a name plus labels).
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
