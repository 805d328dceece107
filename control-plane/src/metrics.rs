//! The control plane's Prometheus metrics (documented in docs/metrics.md). One registry, created
//! at start and shared by the services that count and the admin server that encodes it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    /// `join_token`, `kubernetes` or `renewal`.
    pub attestation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// gRPC status code name, e.g. `unauthenticated`.
    pub code: &'static str,
    /// Stable reason slug, e.g. `token_expired`, `csr_signature`, `identity_mismatch`.
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub certify_issued: Family<IssuedLabels, Counter>,
    pub certify_refused: Family<RefusedLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub serving_cert_expiration: Gauge,
    pub ca_expiration: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let certify_issued = Family::<IssuedLabels, Counter>::default();
        registry.register(
            "certify_issued",
            "X509-SVIDs issued by the certificate service",
            certify_issued.clone(),
        );
        let certify_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "certify_refused",
            "Certify requests refused, by status code and reason",
            certify_refused.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "Inbound TLS handshakes that failed",
            tls_handshake_failures.clone(),
        );
        let serving_cert_expiration = Gauge::default();
        registry.register(
            "serving_cert_expiration_timestamp_seconds",
            "When the control plane's own serving SVID expires (Unix seconds)",
            serving_cert_expiration.clone(),
        );
        let ca_expiration = Gauge::default();
        registry.register(
            "ca_expiration_timestamp_seconds",
            "When the issuing CA chain expires (Unix seconds)",
            ca_expiration.clone(),
        );
        Self {
            registry,
            certify_issued,
            certify_refused,
            tls_handshake_failures,
            serving_cert_expiration,
            ca_expiration,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
