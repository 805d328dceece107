//! The proxy's Prometheus metrics (documented in docs/metrics.md), served on the admin port.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `service`, `endpoints` or `trust_bundle`.
    pub r#type: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub cert_expiration: Gauge,
    pub renewals: Counter,
    pub renewal_failures: Counter,
    pub discovery_connected: Gauge,
    pub config_generation: Gauge,
    pub discovery_acks: Family<TypeLabels, Counter>,
    pub discovery_nacks: Family<TypeLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            cert_expiration: Gauge::default(),
            renewals: Counter::default(),
            renewal_failures: Counter::default(),
            discovery_connected: Gauge::default(),
            config_generation: Gauge::default(),
            discovery_acks: Family::default(),
            discovery_nacks: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current certificate expires (Unix seconds)",
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
        m
    }

    pub fn set_cert_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.cert_expiration
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
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
