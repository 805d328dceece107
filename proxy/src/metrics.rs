//! The proxy's Prometheus metrics (documented in docs/metrics.md), served on the admin port.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `service`, `endpoints` or `trust_bundle`.
    pub r#type: &'static str,
}

/// Labels of `identity_cert_expiration_timestamp_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The proxy's own SPIFFE ID (its certificate's), so a scraper can tell whose series these
    /// are (`weftctl dashboard` joins both ends of an edge with it).
    pub identity: String,
}

/// Labels of `request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `name.namespace:port` for mesh services; the request's authority otherwise.
    pub authority: String,
    /// Whether the hop between proxies was mTLS (`true`) or plaintext (`false`).
    pub tls: &'static str,
}

/// Labels of `response_total` and `response_latency_ms`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: &'static str,
    pub authority: String,
    pub status_code: u16,
    pub tls: &'static str,
    /// Inbound: the client's verified SPIFFE ID (empty for plaintext).
    pub client_id: String,
    /// Outbound: the server's verified SPIFFE ID (empty when not mTLS).
    pub server_id: String,
    /// The `x-weft-error` reason when the proxy answered itself; empty otherwise.
    pub error: &'static str,
}

/// Labels of the TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
}

/// Labels of `tcp_refused_connections_total` and `http_connection_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `inbound`, `outbound` or `admin`.
    pub direction: &'static str,
    /// Which limit: see docs/metrics.md.
    pub reason: &'static str,
}

/// Labels of `retries_total` and `retry_budget_exhausted_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The backend service, `namespace/name`.
    pub backend: String,
    /// The route, `namespace/name`.
    pub route: String,
}

/// Labels of `outlier_ejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub backend: String,
}

/// Labels of `authz_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The served service, `namespace/name`.
    pub service: String,
    /// The port the request or connection was handed to.
    pub port: u16,
    /// `allow`, `deny`, `would-deny` or `would-allow` (the last two: an Audit policy's finding).
    pub decision: &'static str,
    /// `namespace/name` of the deciding policy, `default:<mode>`, `probe`, or
    /// `allow-policies:<namespace>/<name>` (Allow policies applied and none matched).
    pub policy: String,
    pub tls: &'static str,
}

/// Labels of `rate_limited_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub service: String,
    /// `total`, `identity` or `override`: the bucket that was empty.
    pub scope: &'static str,
}

/// Labels of `authz_terminated_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub cert_expiration: Family<IdentityLabels, Gauge>,
    pub renewals: Counter,
    pub renewal_failures: Counter,
    pub discovery_connected: Gauge,
    pub discovery_held_endpoints: Gauge,
    pub config_generation: Gauge,
    pub discovery_acks: Family<TypeLabels, Counter>,
    pub discovery_nacks: Family<TypeLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<ResponseLabels, Histogram>,
    pub tcp_open: Family<TcpLabels, Gauge>,
    pub tcp_read: Family<TcpLabels, Counter>,
    pub tcp_write: Family<TcpLabels, Counter>,
    /// Connections closed at accept because a limit was reached.
    pub tcp_refused: Family<LimitLabels, Counter>,
    /// HTTP connections ended by a limit or a protocol error (slow or oversized heads, stalled
    /// bodies, rapid resets).
    pub http_conn_errors: Family<LimitLabels, Counter>,
    /// HTTP/1 connections parked between requests (their buffers released).
    pub http_parked: Family<TcpLabels, Gauge>,
    pub registered: Gauge,
    pub retries: Family<RetryLabels, Counter>,
    pub retry_budget_exhausted: Family<RetryLabels, Counter>,
    pub ejections: Family<EjectionLabels, Counter>,
    pub authz_decisions: Family<AuthzLabels, Counter>,
    pub rate_limited: Family<RateLimitLabels, Counter>,
    pub authz_terminated: Family<ServiceLabels, Counter>,
    /// The tracer's counters (`spans_exported_total`, `spans_dropped_total{reason}`,
    /// `span_export_failures_total`); at 0 unless `--otlp-endpoint` is given.
    pub spans: weft_proto::trace::TraceMetrics,
    pub access_log_lines: Counter,
    pub access_log_dropped: Counter,
    /// Per-request series, found with one fast lookup (see [`Metrics::count_response`]).
    hot: Mutex<HotSeries>,
}

/// The series every request touches, by label set, holding handles to the families' own
/// series (a handle shares its series' storage). A request's label strings are hashed once,
/// with foldhash, instead of once per family with SipHash under each family's lock. It holds
/// the label sets the families hold, no more.
#[derive(Debug, Default)]
struct HotSeries {
    requests: HashMap<RequestLabels, Counter, foldhash::fast::RandomState>,
    responses: HashMap<ResponseLabels, (Counter, Histogram), foldhash::fast::RandomState>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0,
        5000.0, 10000.0, 30000.0,
    ])
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            cert_expiration: Family::default(),
            renewals: Counter::default(),
            renewal_failures: Counter::default(),
            discovery_connected: Gauge::default(),
            discovery_held_endpoints: Gauge::default(),
            config_generation: Gauge::default(),
            discovery_acks: Family::default(),
            discovery_nacks: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            tcp_open: Family::default(),
            tcp_read: Family::default(),
            tcp_write: Family::default(),
            tcp_refused: Family::default(),
            http_conn_errors: Family::default(),
            http_parked: Family::default(),
            registered: Gauge::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            ejections: Family::default(),
            authz_decisions: Family::default(),
            rate_limited: Family::default(),
            authz_terminated: Family::default(),
            spans: weft_proto::trace::TraceMetrics::default(),
            access_log_lines: Counter::default(),
            access_log_dropped: Counter::default(),
            hot: Mutex::new(HotSeries::default()),
        };
        let r = &mut m.registry;
        r.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current certificate expires (Unix seconds), labelled with its SPIFFE ID",
            m.cert_expiration.clone(),
        );
        r.register(
            "identity_cert_renewals",
            "Certificates renewed",
            m.renewals.clone(),
        );
        r.register(
            "identity_cert_renewal_failures",
            "Failed renewal attempts (the current certificate is kept)",
            m.renewal_failures.clone(),
        );
        r.register(
            "discovery_connected",
            "1 while a discovery stream to the control plane is open",
            m.discovery_connected.clone(),
        );
        r.register(
            "discovery_held_endpoints",
            "Endpoints kept after a reconnect although the control plane does not list them (yet)",
            m.discovery_held_endpoints.clone(),
        );
        r.register(
            "config_generation",
            "Discovery responses accepted since start (the configuration's version here)",
            m.config_generation.clone(),
        );
        r.register(
            "discovery_acks",
            "Discovery responses accepted",
            m.discovery_acks.clone(),
        );
        r.register(
            "discovery_nacks",
            "Discovery responses rejected (the last good configuration stays)",
            m.discovery_nacks.clone(),
        );
        r.register(
            "request",
            "HTTP requests received, by direction and authority",
            m.requests.clone(),
        );
        r.register(
            "response",
            "HTTP responses sent, by direction, authority, status code, TLS and peer identity",
            m.responses.clone(),
        );
        r.register(
            "response_latency_ms",
            "Time from a request's arrival to its response's headers, in milliseconds",
            m.latency.clone(),
        );
        r.register(
            "tcp_open_connections",
            "Connections open now, by direction (inbound includes plaintext)",
            m.tcp_open.clone(),
        );
        r.register(
            "tcp_read_bytes",
            "Bytes read from the accepted side of proxied connections",
            m.tcp_read.clone(),
        );
        r.register(
            "tcp_write_bytes",
            "Bytes written to the accepted side of proxied connections",
            m.tcp_write.clone(),
        );
        r.register(
            "tcp_refused_connections",
            "Connections closed as they were accepted because a limit was reached",
            m.tcp_refused.clone(),
        );
        r.register(
            "http_connection_errors",
            "HTTP connections ended by a limit or a protocol error, by reason",
            m.http_conn_errors.clone(),
        );
        r.register(
            "http_parked_connections",
            "HTTP/1 keep-alive connections waiting for their next request with their buffers released, by direction",
            m.http_parked.clone(),
        );
        r.register(
            "registered_endpoints",
            "Inbound endpoints this proxy holds registered with the control plane",
            m.registered.clone(),
        );
        r.register(
            "retries",
            "Retries sent (attempts after the first), by backend and route",
            m.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries the route's retry budget refused (the original response went back)",
            m.retry_budget_exhausted.clone(),
        );
        r.register(
            "outlier_ejections",
            "Endpoints taken out of rotation after consecutive failures, by backend",
            m.ejections.clone(),
        );
        r.register(
            "authz_decisions",
            "Inbound authorization decisions, by served service, port, decision, deciding policy and TLS",
            m.authz_decisions.clone(),
        );
        r.register(
            "rate_limited",
            "Inbound requests refused 429 by a RateLimitPolicy, by service and the bucket that was empty",
            m.rate_limited.clone(),
        );
        r.register(
            "authz_terminated",
            "Open opaque TCP connections closed because a new policy no longer allows them",
            m.authz_terminated.clone(),
        );
        r.register(
            "spans_exported",
            "Spans the OTLP collector accepted",
            m.spans.exported.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans dropped: the exporter's queue was full, or the collector did not take their batch",
            m.spans.dropped.clone(),
        );
        r.register(
            "span_export_failures",
            "OTLP export requests that failed or timed out (each attempt)",
            m.spans.export_failures.clone(),
        );
        r.register(
            "access_log_lines",
            "Access log lines written",
            m.access_log_lines.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer's queue was full (a slow disk)",
            m.access_log_dropped.clone(),
        );
        r.register_collector(Box::new(weft_proto::process_metrics::ProcessCollector));
        // Known label sets start at 0, so a first NACK is an increase an alert can see
        // (`increase()` finds nothing in a series that appears at 1).
        for r#type in ["service", "endpoints", "trust_bundle"] {
            let _ = m.discovery_acks.get_or_create(&TypeLabels { r#type });
            let _ = m.discovery_nacks.get_or_create(&TypeLabels { r#type });
        }
        m
    }

    /// Sets `identity_cert_expiration_timestamp_seconds` for the proxy's identity (one series:
    /// renewals keep the identity).
    pub fn set_cert_expiry(&self, identity: &str, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.cert_expiration
            .get_or_create(&IdentityLabels {
                identity: identity.to_owned(),
            })
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    /// `request_total` + 1.
    pub fn count_request(&self, labels: RequestLabels) {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        hot.requests
            .entry(labels)
            .or_insert_with_key(|l| self.requests.get_or_create(l).clone())
            .inc();
    }

    /// `response_total` + 1 and `response_latency_ms` observes `ms`.
    pub fn count_response(&self, labels: ResponseLabels, ms: f64) {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let (count, latency) = hot.responses.entry(labels).or_insert_with_key(|l| {
            (
                self.responses.get_or_create(l).clone(),
                self.latency.get_or_create(l).clone(),
            )
        });
        count.inc();
        latency.observe(ms);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: u16) -> ResponseLabels {
        ResponseLabels {
            direction: "outbound",
            authority: "api.default:8080".into(),
            status_code: code,
            tls: "true",
            client_id: String::new(),
            server_id: "spiffe://example.org/ns/default/sa/api".into(),
            error: "",
        }
    }

    /// Counting through the cached handles lands in the exported series, the first time and
    /// every time after, one series per label set.
    #[test]
    fn cached_series_are_the_exported_ones() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.count_response(response(200), 4.0);
        }
        m.count_response(response(503), 40.0);
        let req = || RequestLabels {
            direction: "outbound",
            authority: "api.default:8080".into(),
            tls: "true",
        };
        m.count_request(req());
        m.count_request(req());
        let text = m.encode();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            line(
                "response_total{direction=\"outbound\",authority=\"api.default:8080\",status_code=\"200\""
            ),
            "3"
        );
        assert_eq!(
            line(
                "response_total{direction=\"outbound\",authority=\"api.default:8080\",status_code=\"503\""
            ),
            "1"
        );
        assert_eq!(
            line(
                "response_latency_ms_count{direction=\"outbound\",authority=\"api.default:8080\",status_code=\"200\""
            ),
            "3"
        );
        assert_eq!(
            line(
                "response_latency_ms_sum{direction=\"outbound\",authority=\"api.default:8080\",status_code=\"503\""
            ),
            "40.0"
        );
        assert_eq!(line("request_total{"), "2");
    }
}
