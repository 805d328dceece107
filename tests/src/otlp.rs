//! A real OTLP receiver for the tracing tests: `tests/otlp/collector.py`, opentelemetry-proto's
//! `TraceService` on grpcio (PyPI, in the venv `.ci/install-deps.sh` makes), or the same
//! messages over OTLP/HTTP on Python's `http.server`, started as a child process on a free
//! loopback port. It writes each span it receives as a JSON line; [`Collector::spans`]
//! reads them back.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

/// The running receiver; killed on drop.
pub struct Collector {
    pub port: u16,
    spans: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn python() -> anyhow::Result<PathBuf> {
    let venv = match std::env::var_os("WEFT_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/weft/venv"),
    };
    let exe = venv.join("bin/python");
    if !exe.is_file() {
        bail!(
            "{} is missing: run `bash .ci/install-deps.sh` (the test command does)",
            exe.display()
        );
    }
    Ok(exe)
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("port", &self.port)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// OTLP/gRPC.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, None, None).await
    }

    /// OTLP/gRPC over TLS with `(certificate chain PEM, key PEM)`.
    pub async fn start_tls(cert: &str, key: &str) -> anyhow::Result<Self> {
        Self::start_with(None, Some((cert, key)), None).await
    }

    /// OTLP/HTTP (`POST /v1/traces`, protobuf), over TLS when given `(chain PEM, key PEM)`.
    pub async fn start_http(tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::start_with(Some(false), tls, None).await
    }

    /// OTLP/HTTP that answers every request with `Connection: close` and closes.
    pub async fn start_http_closing() -> anyhow::Result<Self> {
        Self::start_with(Some(true), None, None).await
    }

    /// OTLP/gRPC that refuses its first `n` export requests with gRPC `code` (its name, as
    /// `UNAVAILABLE`), then takes them.
    pub async fn start_refusing(n: usize, code: &str) -> anyhow::Result<Self> {
        Self::start_with(None, None, Some(format!("{n}:{code}"))).await
    }

    /// OTLP/HTTP that refuses its first `n` export requests with `status` (and
    /// `Retry-After: retry_after` seconds when given), then takes them.
    pub async fn start_http_refusing(
        n: usize,
        status: u16,
        retry_after: Option<u64>,
    ) -> anyhow::Result<Self> {
        let mut fail = format!("{n}:{status}");
        if let Some(s) = retry_after {
            fail.push_str(&format!(":{s}"));
        }
        Self::start_with(Some(false), None, Some(fail)).await
    }

    /// `http`: `None` for gRPC, `Some(close)` for HTTP; `fail`: collector.py's `--fail`.
    async fn start_with(
        http: Option<bool>,
        tls: Option<(&str, &str)>,
        fail: Option<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let spans = dir.path().join("spans.jsonl");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp/collector.py");
        let mut cmd = tokio::process::Command::new(python()?);
        cmd.arg(&script);
        if let Some(close) = http {
            cmd.arg("--http");
            if close {
                cmd.arg("--close");
            }
        }
        if let Some(fail) = fail {
            cmd.arg("--fail").arg(fail);
        }
        cmd.arg(&spans);
        if let Some((cert, key)) = tls {
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&c, cert)?;
            std::fs::write(&k, key)?;
            cmd.arg(c).arg(k);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", script.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut first = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(stdout).read_line(&mut first),
        )
        .await
        .context("the collector did not say its port within 30 s")??;
        let port = first
            .trim()
            .parse()
            .with_context(|| format!("the collector's first line {first:?} is not a port"))?;
        Ok(Self {
            port,
            spans,
            _child: child,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`, for `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Export requests it has refused (`start_refusing`, `start_http_refusing`).
    pub fn refusals(&self) -> usize {
        self.spans()
            .iter()
            .filter(|l| l.get("refused").is_some())
            .count()
    }

    /// Waits until spans of `trace_id` (hex) number at least `n`, and returns them.
    pub async fn wait_trace(
        &self,
        trace_id: &str,
        n: usize,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        crate::poll(Duration::from_secs(20), || {
            let of: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            (of.len() >= n).then_some(of)
        })
        .await
        .with_context(|| {
            format!(
                "fewer than {n} spans of trace {trace_id}; all received: {:?}",
                self.spans()
            )
        })
    }
}

/// Waits (20 s at most) until the process behind `admin` counts a failed span export, and
/// returns its metrics text.
pub async fn export_failed(admin: impl std::fmt::Display) -> anyhow::Result<String> {
    crate::metric_reaches(
        &admin.to_string(),
        "span_export_failures_total",
        1.0,
        Duration::from_secs(20),
    )
    .await
}

/// An OTLP endpoint (`http://127.0.0.1:PORT`) that accepts connections and never answers —
/// worse for an exporter than one that is not there, which refuses at once. Lives as long as
/// the test's runtime.
pub async fn silent_collector() -> String {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    endpoint
}
