//! `weft-proxy wait-ready`: blocks until the proxy's admin `/ready` answers 200, for a
//! Kubernetes `postStart` hook (the proxy image has no shell or curl) and for scripts.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why waiting ended without readiness.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("http://{addr}/ready was not ready after {}: {last}", humantime_secs(*.waited))]
    Timeout {
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Polls `GET http://addr/ready` every `interval` until it answers 200 or `timeout` passes.
pub async fn wait_ready(
    addr: SocketAddr,
    timeout: Duration,
    interval: Duration,
) -> Result<(), WaitError> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let last = match probe(addr).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError::Timeout {
                addr,
                waited: now - start,
                last,
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

/// One `GET /ready`: `Ok` on 200, else what was seen.
async fn probe(addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/ready")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        match resp.status() {
            hyper::StatusCode::OK => Ok(()),
            s => {
                use http_body_util::BodyExt as _;
                let body = http_body_util::Limited::new(resp.into_body(), 4096)
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                    .unwrap_or_default();
                Err(format!("{s} {body}"))
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 2s".into()),
    }
}
