//! `weftctl dashboard`: the mesh at a glance in a browser. A task reads a `source::Source`
//! every `--interval` (the proxies' `/metrics`, or Prometheus), `mesh::build` turns the reading
//! into services, edges, splits, errors and the control plane's state, `history::History`
//! adds trends; an HTTP server (hyper) serves one page, its script and stylesheet (compiled in
//! with `include_str!`: no build step, nothing fetched from elsewhere) and `GET /api/mesh`,
//! which the page polls every 2 s.

mod history;
pub(crate) mod mesh;
pub(crate) mod source;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use history::History;
use mesh::Mesh;
use source::Source;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to serve the page (keep it on loopback: the page shows the mesh's traffic to
    /// anyone who can reach it).
    #[arg(long, default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,
    /// Read a Prometheus server's HTTP API (e.g. http://127.0.0.1:9090) that scrapes the
    /// proxies and the control plane.
    #[arg(long, conflicts_with = "scrape", required_unless_present = "scrape")]
    pub prometheus: Option<String>,
    /// Scrape these admin addresses (HOST:PORT, comma-separated: proxies' --admin and the
    /// control plane's --admin) directly, computing rates from successive scrapes.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub scrape: Vec<String>,
    /// The window rates are computed over [default: 10s with --scrape, 1m with --prometheus].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// How often to read the source.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Runs `weftctl dashboard` until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.interval < Duration::from_millis(100) {
        bail!("--interval must be at least 100ms");
    }
    let source: Box<dyn Source> = match &args.prometheus {
        Some(url) => Box::new(source::Prom::new(
            url,
            args.window.unwrap_or(Duration::from_secs(60)),
        )?),
        None => Box::new(scrape_source(&args.scrape, args.window)?),
    };
    let listener = bind(args.listen).await?;
    let url = url_of(listener.local_addr()?);
    eprintln!(
        "weftctl dashboard: {url} (reading {}; Ctrl-C stops)",
        source.describe()
    );
    tokio::select! {
        r = serve(listener, source, args.interval) => r,
        r = tokio::signal::ctrl_c() => r.context("wait for Ctrl-C"),
    }
}

/// The `--scrape` source for these targets.
pub(crate) fn scrape_source(
    targets: &[String],
    window: Option<Duration>,
) -> anyhow::Result<source::Scrape> {
    let targets = targets
        .iter()
        .map(|t| source::parse_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if targets.is_empty() {
        bail!("--scrape: no targets");
    }
    Ok(source::Scrape::new(
        targets,
        window.unwrap_or(Duration::from_secs(10)),
    ))
}

/// Binds the page's listener, saying on stderr when it is reachable from other machines.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr} for the dashboard"))?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "weftctl dashboard: warning: listening on {addr}, beyond this machine; anyone who reaches it sees the mesh's traffic"
        );
    }
    Ok(l)
}

/// `http://127.0.0.1:PORT/`.
pub(crate) fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// What `/api/mesh` answers.
#[derive(Debug, Clone, Serialize)]
struct Answer {
    /// What is read: `/metrics of …`, `Prometheus …`.
    source: String,
    window_s: f64,
    /// Unix seconds of the reading.
    read_at: f64,
    /// False until rates are known (a scrape needs two readings).
    ready: bool,
    /// Why the last reading failed, if it did (the numbers are then the previous reading's).
    error: Option<String>,
    #[serde(flatten)]
    mesh: Option<Mesh>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Reads the source every `interval` and serves the page until the listener fails.
pub(crate) async fn serve(
    listener: TcpListener,
    mut source: Box<dyn Source>,
    interval: Duration,
) -> anyhow::Result<()> {
    let state = Arc::new(Mutex::new(Answer {
        source: source.describe(),
        window_s: source.window().as_secs_f64(),
        read_at: 0.0,
        ready: false,
        error: None,
        mesh: None,
    }));
    let poller = {
        let state = state.clone();
        async move {
            let mut history = History::default();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let result = source.read().await;
                let now = unix_now();
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(reading) => {
                        let mut mesh = mesh::build(&reading, now);
                        if reading.has_rates {
                            history.record(&mut mesh, now);
                        }
                        s.ready = reading.has_rates;
                        s.read_at = now;
                        s.error = None;
                        s.mesh = Some(mesh);
                    }
                    Err(e) => s.error = Some(format!("{e:#}")),
                }
            }
        }
    };
    let server = async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then accept again.
                    eprintln!("weftctl dashboard: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &state)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        () = poller => Ok(()),
        () = server => Ok(()),
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let value = |v: &str| hyper::header::HeaderValue::from_str(v).ok();
    if let Some(v) = value(content_type) {
        h.insert(CONTENT_TYPE, v);
    }
    if let Some(v) = value("no-store") {
        h.insert(CACHE_CONTROL, v);
    }
    // Only this server's own script and style; nothing else may load or frame the page.
    if let Some(v) = value("default-src 'self'; frame-ancestors 'none'") {
        h.insert("content-security-policy", v);
    }
    if let Some(v) = value("nosniff") {
        h.insert("x-content-type-options", v);
    }
    r
}

/// A Host header naming an IP address or `localhost`: a page another site's name resolves to
/// this address (DNS rebinding) is refused.
fn host_allowed(headers: &hyper::HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn respond(req: &Request<Incoming>, state: &Mutex<Answer>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if !host_allowed(req.headers()) {
        return reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "the dashboard answers only to an IP address or localhost in Host\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET: the dashboard is read-only\n",
        );
    }
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/app.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        "/style.css" => reply(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        "/api/mesh" => {
            let answer = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match serde_json::to_string(&answer) {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("encode the mesh: {e}\n"),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try / or /api/mesh\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_or_localhost_hosts_are_served() {
        for (host, ok) in [
            (Some("127.0.0.1:7300"), true),
            (Some("localhost:7300"), true),
            (Some("LOCALHOST"), true),
            (Some("[::1]:7300"), true),
            (Some("10.0.0.5"), true),
            (Some("evil.example:7300"), false),
            (Some("127.0.0.1.evil.example"), false),
            (None, false),
        ] {
            let mut h = hyper::HeaderMap::new();
            if let Some(v) = host {
                h.insert(HOST, v.parse().unwrap());
            }
            assert_eq!(host_allowed(&h), ok, "{host:?}");
        }
    }
}
