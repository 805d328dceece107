//! Distributed tracing in the proxy. The tracer itself (W3C Trace Context, span records,
//! sampling, the bounded queue and the OTLP/gRPC exporter) is `weft_proto::trace`, shared with
//! the control plane; what is the proxy's is which spans an HTTP request makes
//! (`crate::observe`, `crate::forward`) and [`error_type`].
//!
//! Off unless `--otlp-endpoint` is given: then `Ctx::tracer` is `None` and a request pays one
//! branch. On, a request's `traceparent` is looked up once: a valid, sampled one gets a span of
//! ours (SERVER inbound, CLIENT per attempt outbound) and is rewritten to name it as the parent;
//! an unsampled one is forwarded untouched; an invalid or missing one starts a new trace at
//! `--trace-sample-rate` (else it is left alone). `tracestate` is never touched. Spans go to the
//! exporter through a bounded queue; a full queue drops them (`spans_dropped_total{reason="queue-full"}`).

pub use weft_proto::trace::{
    Kind, OpenSpan, Parent, Protocol, SpanId, SpanRecord, TraceConfig, TraceId, TraceParent,
    Tracer, Value, context, decide,
};

/// The exporter, fed with the proxy's counters.
pub mod export {
    use std::sync::Arc;

    pub use weft_proto::trace::export::{BATCH, ExportError, QUEUE, to_otlp};

    use super::{TraceConfig, Tracer};
    use crate::metrics::Metrics;

    /// Checks the configuration and starts the exporter thread (`weft_proto::trace::export`),
    /// counting into the proxy's `spans_*` metrics.
    pub fn start(config: &TraceConfig, metrics: &Metrics) -> Result<Arc<Tracer>, ExportError> {
        weft_proto::trace::export::start(config, "weft-proxy", &metrics.spans)
    }
}

/// `error.type` for a response: the proxy's reason when it answered itself, else the status
/// code for 5xx (server spans) or 4xx/5xx (client spans), per the HTTP semantic conventions.
pub fn error_type(kind: Kind, status: u16, reason: &str) -> Option<String> {
    if !reason.is_empty() {
        return Some(reason.to_owned());
    }
    let bad = match kind {
        Kind::Server => status >= 500,
        Kind::Client | Kind::Producer => status >= 400,
    };
    bad.then(|| status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_follow_the_conventions() {
        assert_eq!(error_type(Kind::Server, 404, ""), None);
        assert_eq!(error_type(Kind::Client, 404, ""), Some("404".into()));
        assert_eq!(error_type(Kind::Server, 503, ""), Some("503".into()));
        assert_eq!(
            error_type(Kind::Server, 403, "denied"),
            Some("denied".into())
        );
    }

    /// The proxy's exporter counts into the proxy's metrics: a batch that cannot reach the
    /// collector (nothing listens on port 9 here) shows as `span_export_failures_total`.
    #[test]
    fn the_exporter_counts_into_the_proxys_metrics() {
        let m = Metrics::new();
        let t = export::start(
            &TraceConfig {
                endpoint: "http://127.0.0.1:9".into(),
                ca: None,
                sample_rate: 1.0,
                service_name: "default/web".into(),
                ..Default::default()
            },
            &m,
        )
        .unwrap();
        let (span, _) = t.new_trace().unwrap().child();
        t.submit(span.end(Kind::Server, "GET /".into(), Vec::new(), None));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while m.spans.export_failures.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "no failure counted");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(m.spans.exported.get(), 0);
    }

    use crate::metrics::Metrics;
}
