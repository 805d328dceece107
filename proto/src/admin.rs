//! Who may read what on an admin port (the proxy's and the control plane's share the rule).
//!
//! In a pod an admin port listens on the pod IP: kubelet probes `/live` and `/ready` there and
//! Prometheus scrapes `/metrics`, so those three answer anyone. Everything else (a proxy's
//! configuration, `/explain`, `POST /shutdown`; the control plane's `/ca` and `POST
//! /ca/reload`) answers loopback clients only — `kubectl port-forward` and `kubectl exec`
//! arrive on loopback.

use std::net::IpAddr;

/// Whether a client is on this host (IPv4-mapped loopback included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The paths any client may read: health for kubelet, metrics for Prometheus.
pub fn public_path(path: &str) -> bool {
    matches!(path, "/live" | "/ready" | "/metrics")
}

/// Whether a client at `ip` may have `path`.
pub fn allowed(ip: IpAddr, path: &str) -> bool {
    is_loopback(ip) || public_path(path)
}

/// The answer's body to a client that may not have a path (with status 403).
pub const FORBIDDEN: &[u8] = b"forbidden: only /live, /ready and /metrics answer clients outside this host; use kubectl port-forward or the pod's loopback\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_metrics_answer_remote_clients() {
        for (ip, path, want) in [
            ("127.0.0.1", "/shutdown", true),
            ("127.3.4.5", "/ca/reload", true),
            ("::1", "/config_dump", true),
            ("::ffff:127.0.0.1", "/explain", true),
            ("10.1.2.3", "/ready", true),
            ("10.1.2.3", "/live", true),
            ("10.1.2.3", "/metrics", true),
            ("10.1.2.3", "/shutdown", false),
            ("10.1.2.3", "/config_dump", false),
            ("10.1.2.3", "/certs", false),
            ("10.1.2.3", "/ca", false),
            ("10.1.2.3", "/ca/reload", false),
            ("10.1.2.3", "/metrics/", false),
            ("0.0.0.0", "/ca", false),
            ("fd00::1", "/explain/inbound", false),
            ("::ffff:10.0.0.1", "/shutdown", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(allowed(ip, path), want, "{ip} {path}");
        }
    }
}
