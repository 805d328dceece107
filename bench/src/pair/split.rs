//! The `weft-split` target (issue 5): the pair with traffic management active. Its client
//! proxy addresses `api-split.default:80`, whose HTTPRoute sends 90 % of requests to
//! `api-v1` and 10 % to `api-v2` (a server proxy each, both in front of the same nginx) with
//! a retry policy and timeouts. nginx always answers 200, so the policy is evaluated on every
//! request but never retries: the target measures what the split and the retry machinery cost
//! when nothing fails. The servers' and the client's own counters (admin `/metrics`) say
//! how the requests were actually split and how many retries were sent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use weft_cli::scrape;

use super::process::http_get;
use super::setup::{BODY, WeftProxy};

/// Applied with `weftctl apply` after the plain pair's Service `default/api` (the same form
/// as docs/configuration.md, "Manifests").
pub(crate) const MANIFESTS: &str = r#"apiVersion: weft.io/v1alpha1
kind: Service
metadata: {namespace: default, name: api-split}
spec:
  ports: [{name: http, port: 80, protocol: http1}]
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {namespace: default, name: api-v1}
spec:
  ports: [{name: http, port: 80, protocol: http1}]
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {namespace: default, name: api-v2}
spec:
  ports: [{name: http, port: 80, protocol: http1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  namespace: default
  name: api-split
  annotations:
    retry.weft.io/on: "gateway-error,connect-failure,refused-stream"
spec:
  parentRefs:
  - {kind: Service, name: api-split, port: 80}
  rules:
  - name: canary
    backendRefs:
    - {name: api-v1, port: 80, weight: 90}
    - {name: api-v2, port: 80, weight: 10}
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {attempts: 2, codes: [503], backoff: 25ms}
"#;

/// The parent service the split client addresses, and the two backends' services.
pub(crate) const PARENT: &str = "api-split";
pub(crate) const V1: &str = "api-v1";
pub(crate) const V2: &str = "api-v2";

/// What the split target's proxies counted over the measured runs (all rounds, closed loop
/// and fixed rate; warm-up excluded).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SplitCounts {
    /// Requests the v1 and v2 server proxies received (`request_total`, inbound).
    pub(crate) v1: u64,
    pub(crate) v2: u64,
    /// Retries the split client sent (`retries_total`).
    pub(crate) retries: u64,
}

impl SplitCounts {
    /// Reads the counters now from the three proxies' admin ports.
    pub(crate) fn read(client: SocketAddr, v1: SocketAddr, v2: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            v1: metric_sum(v1, "request_total", INBOUND)?,
            v2: metric_sum(v2, "request_total", INBOUND)?,
            retries: metric_sum(client, "retries_total", None)?,
        })
    }

    pub(crate) fn since(&self, earlier: &Self) -> Self {
        Self {
            v1: self.v1.saturating_sub(earlier.v1),
            v2: self.v2.saturating_sub(earlier.v2),
            retries: self.retries.saturating_sub(earlier.retries),
        }
    }

    /// v2's share of the requests the two servers received.
    pub(crate) fn v2_share(&self) -> f64 {
        let all = self.v1 + self.v2;
        if all > 0 {
            self.v2 as f64 / all as f64
        } else {
            0.0
        }
    }
}

/// Sends `GET /` through the split client (each must be nginx's 200 and body) until both
/// server proxies have received at least one request: the route, both backends' endpoints and
/// both mTLS paths work. With a deadline; a 10 % backend is reached within tens of requests.
pub(crate) fn wait_both_backends(
    client: &mut WeftProxy,
    v1: &WeftProxy,
    v2: &WeftProxy,
    timeout: Duration,
) -> anyhow::Result<()> {
    let upstream = client
        .upstream
        .context("the split client proxy has no upstream port")?;
    let deadline = Instant::now() + timeout;
    let mut sent = 0u64;
    loop {
        let (status, body) = http_get(upstream, "/", Duration::from_secs(2))?;
        sent += 1;
        if status != 200 || body != BODY {
            bail!(
                "through the split client, request {sent} got {status} {:?}; log:\n{}",
                body.chars().take(200).collect::<String>(),
                client.proc.log_tail()
            );
        }
        let seen = (
            metric_sum(v1.admin, "request_total", INBOUND)?,
            metric_sum(v2.admin, "request_total", INBOUND)?,
        );
        if seen.0 > 0 && seen.1 > 0 {
            return Ok(());
        }
        client.proc.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "after {sent} requests through the split client in {timeout:?}, the servers \
                 received {} (v1) and {} (v2): one backend is never reached",
                seen.0,
                seen.1
            );
        }
    }
}

/// The samples of the inbound side.
const INBOUND: Option<(&str, &str)> = Some(("direction", "inbound"));

/// The sum of a counter's samples in the proxy's `/metrics` (every label set, or only those
/// with `label`).
fn metric_sum(admin: SocketAddr, name: &str, label: Option<(&str, &str)>) -> anyhow::Result<u64> {
    let (status, text) = http_get(admin, "/metrics", Duration::from_secs(2))?;
    if status != 200 {
        bail!("GET http://{admin}/metrics: {status}");
    }
    sum_samples(&text, name, label).with_context(|| format!("http://{admin}/metrics"))
}

/// Counters are integers, written as such or as floats ("12" or "12.0").
fn sum_samples(text: &str, name: &str, label: Option<(&str, &str)>) -> anyhow::Result<u64> {
    Ok(scrape::sum(&scrape::parse(text)?, name, label) as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sums_counter_samples() {
        let text = "# HELP request_total HTTP requests received.
# TYPE request_total counter
request_total{direction=\"inbound\",authority=\"api-split.default:80\",tls=\"true\"} 90
request_total{direction=\"outbound\",authority=\"x\",tls=\"false\"} 7
request_total{direction=\"inbound\",authority=\"\",tls=\"false\"} 10.0
request_total_created{direction=\"inbound\"} 1700000000.5
retries_total{backend=\"default/api-v2\",route=\"default/api-split\"} 3
# EOF
";
        assert_eq!(sum_samples(text, "request_total", INBOUND).unwrap(), 100);
        assert_eq!(sum_samples(text, "request_total", None).unwrap(), 107);
        assert_eq!(sum_samples(text, "retries_total", None).unwrap(), 3);
        assert_eq!(sum_samples(text, "response_total", None).unwrap(), 0);
        assert!(sum_samples("request_total{x} 1", "request_total", None).is_err());
        let c = SplitCounts {
            v1: 900,
            v2: 100,
            retries: 0,
        };
        assert!((c.v2_share() - 0.1).abs() < 1e-12);
    }
}
