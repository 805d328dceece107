//! The control plane's Prometheus metrics (documented in docs/metrics.md). One registry, created
//! at start and shared by the services that count and the admin server that encodes it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `grpc`, `admin` or `injector`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `service`, `endpoints` or `trust_bundle`.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `service`, `route` or `endpoint`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The store operation: `list`, `watch`, `txn`, `lease`.
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `injected`, `skipped`, `unchanged` (already injected) or `invalid` (a malformed review).
    pub outcome: &'static str,
    /// Why it was skipped (`disabled`, `host-network`, `other-proxy`, …); empty otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaRoleLabels {
    /// `current` (signs now), `next` (prepared), `previous` (switched away from) or `unknown`.
    pub ca: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Latency buckets from 1 ms to ~16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub certify_issued: Family<IssuedLabels, Counter>,
    pub certify_refused: Family<RefusedLabels, Counter>,
    pub tls_handshake_failures: Counter,
    /// Connections closed as they were accepted because the listener was at its limit.
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub serving_cert_expiration: Gauge,
    pub ca_expiration: Gauge,
    pub discovery_connected: Gauge,
    pub discovery_pushes: Family<TypeLabels, Counter>,
    pub discovery_acks: Family<TypeLabels, Counter>,
    pub discovery_nacks: Family<TypeLabels, Counter>,
    pub discovery_push_latency: Histogram,
    pub registry_event_lag: Histogram,
    pub registry_revision: Gauge,
    pub registry_resyncs: Counter,
    pub registry_invalid_objects: Family<KindLabels, Counter>,
    pub store_errors: Family<OpLabels, Counter>,
    pub registrations_active: Gauge,
    pub injector_reviews: Family<ReviewLabels, Counter>,
    pub injector_tls_reload_failures: Counter,
    pub ca_rotation_proxies: Family<CaRoleLabels, Gauge>,
    pub ca_rotation_step: Gauge,
    pub ca_reloads: Family<ResultLabels, Counter>,
    /// The tracer's counters (`spans_exported_total`, `spans_dropped_total{reason}`,
    /// `span_export_failures_total`); at 0 unless `--otlp-endpoint` is given.
    pub spans: weft_proto::trace::TraceMetrics,
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
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed as they were accepted because the listener was at its limit",
            connections_refused.clone(),
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
        let discovery_connected = Gauge::default();
        registry.register(
            "discovery_connected_proxies",
            "Open delta discovery streams",
            discovery_connected.clone(),
        );
        let discovery_pushes = Family::<TypeLabels, Counter>::default();
        registry.register(
            "discovery_pushes",
            "Delta discovery responses sent, by resource type",
            discovery_pushes.clone(),
        );
        let discovery_acks = Family::<TypeLabels, Counter>::default();
        registry.register(
            "discovery_acks",
            "Responses the proxies accepted (ACK)",
            discovery_acks.clone(),
        );
        let discovery_nacks = Family::<TypeLabels, Counter>::default();
        registry.register(
            "discovery_nacks",
            "Responses the proxies rejected (NACK); the log names the proxy and the reason",
            discovery_nacks.clone(),
        );
        let discovery_push_latency = latency_histogram();
        registry.register(
            "discovery_push_latency_seconds",
            "From a store change reaching the control plane to its push being queued on a stream",
            discovery_push_latency.clone(),
        );
        let registry_event_lag = latency_histogram();
        registry.register(
            "registry_watch_lag_seconds",
            "From a store watch event arriving to its snapshot being published (debounce included)",
            registry_event_lag.clone(),
        );
        let registry_revision = Gauge::default();
        registry.register(
            "registry_revision",
            "The last store revision reflected in the published snapshot",
            registry_revision.clone(),
        );
        let registry_resyncs = Counter::default();
        registry.register(
            "registry_resyncs",
            "Full re-lists of the store (start, compaction, lost watch)",
            registry_resyncs.clone(),
        );
        let registry_invalid_objects = Family::<KindLabels, Counter>::default();
        registry.register(
            "registry_invalid_objects",
            "Stored values that failed validation and were ignored",
            registry_invalid_objects.clone(),
        );
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Failed store (etcd) operations, by operation",
            store_errors.clone(),
        );
        let registrations_active = Gauge::default();
        registry.register(
            "registrations_active",
            "Open endpoint registration streams",
            registrations_active.clone(),
        );
        let injector_reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "injector_reviews",
            "AdmissionReviews the sidecar injector answered, by outcome and skip reason",
            injector_reviews.clone(),
        );
        let injector_tls_reload_failures = Counter::default();
        registry.register(
            "injector_tls_reload_failures",
            "Changed webhook serving certificates that failed to load (the last good one is kept)",
            injector_tls_reload_failures.clone(),
        );
        registry.register_collector(Box::new(weft_proto::process_metrics::ProcessCollector));
        // Known label sets start at 0, so the first NACK or store error is an increase an
        // alert can see (`increase()` finds nothing in a series that appears at 1).
        for r#type in ["service", "endpoints", "trust_bundle"] {
            let _ = discovery_pushes.get_or_create(&TypeLabels { r#type });
            let _ = discovery_acks.get_or_create(&TypeLabels { r#type });
            let _ = discovery_nacks.get_or_create(&TypeLabels { r#type });
        }
        for op in ["list", "watch"] {
            let _ = store_errors.get_or_create(&OpLabels { op });
        }
        let ca_rotation_proxies = Family::<CaRoleLabels, Gauge>::default();
        registry.register(
            "ca_rotation_proxies",
            "Connected proxies (open discovery streams) by the CA that issued their certificate",
            ca_rotation_proxies.clone(),
        );
        let ca_rotation_step = Gauge::default();
        registry.register(
            "ca_rotation_step",
            "Root rotation step being served: 0 none, 1 prepared, 2 switched, 3 finished",
            ca_rotation_step.clone(),
        );
        let ca_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ca_reloads",
            "Loads of a changed CA directory (poll, SIGHUP, POST /ca/reload), by result",
            ca_reloads.clone(),
        );
        let spans = weft_proto::trace::TraceMetrics::default();
        registry.register(
            "spans_exported",
            "Spans the OTLP collector accepted",
            spans.exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans dropped: the exporter's queue was full, or the collector did not take their batch",
            spans.dropped.clone(),
        );
        registry.register(
            "span_export_failures",
            "OTLP export requests that failed or timed out (each attempt)",
            spans.export_failures.clone(),
        );
        Self {
            spans,
            ca_rotation_proxies,
            ca_rotation_step,
            ca_reloads,
            injector_reviews,
            injector_tls_reload_failures,
            discovery_connected,
            discovery_pushes,
            discovery_acks,
            discovery_nacks,
            discovery_push_latency,
            registry_event_lag,
            registry_revision,
            registry_resyncs,
            registry_invalid_objects,
            store_errors,
            registrations_active,
            registry,
            certify_issued,
            certify_refused,
            tls_handshake_failures,
            connections_refused,
            serving_cert_expiration,
            ca_expiration,
        }
    }
}

impl Metrics {
    /// The `connections_refused_total` series of one listener.
    pub fn refused_on(&self, listener: &'static str) -> Counter {
        self.connections_refused
            .get_or_create(&ListenerLabels { listener })
            .clone()
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
