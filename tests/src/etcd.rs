//! A real etcd (Debian's `/usr/bin/etcd`, installed by `.ci/install-deps.sh`) on free loopback
//! ports with a temp data dir; killed, reaped and removed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::http_get;

/// The etcd binary: `$WEFT_ETCD` if set, else the Debian package's.
fn etcd_bin() -> PathBuf {
    std::env::var_os("WEFT_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// A port free right now (bound then released). Another process may take it before etcd binds
/// it; [`EtcdServer::start`] retries with new ports when that happens.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One etcd member. Dropping it kills the process and removes its data dir.
#[derive(Debug)]
pub struct EtcdServer {
    // Field order: the process goes before its data dir.
    child: Option<Child>,
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    log: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// A single-member cluster, healthy when this returns.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let initial = format!("n0=http://127.0.0.1:{peer_port}");
            let mut server = Self::new_member("n0", client_port, peer_port, initial)?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                // Most likely a port taken between choosing and binding it: new ports.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// A cluster of `n` members on loopback (`n0`, `n1`, …), every member healthy when this
    /// returns. Each member can be stopped and started again like a single one.
    pub async fn cluster(n: usize) -> anyhow::Result<Vec<Self>> {
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                Self::new_member(&format!("n{i}"), client, peer, initial.clone())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // All at once: a member waits for the others to form the cluster.
        for m in &mut members {
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_healthy(Duration::from_secs(30)).await?;
        }
        Ok(members)
    }

    /// Whether this member is running and is the cluster's leader (its `/metrics`).
    pub async fn is_leader(&self) -> bool {
        if self.child.is_none() {
            return false;
        }
        let addr = format!("127.0.0.1:{}", self.client_port);
        matches!(http_get(&addr, "/metrics").await, Ok((200, text)) if text.lines().any(|l| l == "etcd_server_is_leader 1"))
    }

    /// Whether the process is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn new_member(
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: String,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            child: None,
            name: name.to_owned(),
            client_port,
            peer_port,
            initial_cluster,
            log: Arc::new(Mutex::new(Vec::new())),
            dir: tempfile::tempdir()?,
        })
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Spawns the process (data dir kept) without waiting for health.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new(etcd_bin())
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            // Progress notifications every second (default 10 min), so the store's handling of
            // them runs within a test's time.
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .env_remove("ETCD_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", etcd_bin().display()))?;
        let stderr = child.stderr.take().context("etcd stderr")?;
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        Ok(())
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(20)).await
    }

    /// Polls `/health` until etcd reports healthy (it has a leader and serves requests).
    pub async fn wait_healthy(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + deadline;
        let addr = format!("127.0.0.1:{}", self.client_port);
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("etcd exited ({status}); log:\n{}", self.log());
            }
            if let Ok((200, body)) = http_get(&addr, "/health").await
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= end {
                bail!("etcd not healthy within {deadline:?}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (SIGKILL: no chance to flush anything it has not fsynced) and reaps it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("kill etcd")?;
        }
        Ok(())
    }

    /// Stops and starts again on the same ports with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// Starts after [`stop`](Self::stop) and returns without waiting for health.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("etcd is running");
        }
        self.spawn()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- etcd {} log (tail) ---", self.name);
            let log = self.log.lock().unwrap();
            for line in log.iter().rev().take(40).rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            // Kill and reap before the data dir is removed, so etcd writes nothing into a
            // directory being deleted and leaves no zombie.
            let _ = child.start_kill();
            for _ in 0..500 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// An endpoint that accepts TCP connections (the kernel completes the handshake) but never
/// answers: what a hung or blackholed member looks like. Closed on drop.
#[derive(Debug)]
pub struct Blackhole {
    _listener: TcpListener,
    url: String,
}

impl Blackhole {
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        Ok(Self {
            _listener: listener,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A loopback URL where nothing listens (connections are refused).
pub fn closed_port_url() -> anyhow::Result<String> {
    Ok(format!("http://127.0.0.1:{}", free_port()?))
}
