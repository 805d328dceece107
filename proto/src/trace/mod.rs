//! Distributed tracing, shared by the proxy and the control plane (feature `otlp`): W3C Trace
//! Context ([`context`]), span records, the [`Tracer`] (the sampling rule and a bounded queue),
//! and the OTLP/gRPC exporter, a task on its own thread ([`export`]).
//!
//! A request's (or RPC's) `traceparent` is looked up once ([`Tracer::incoming`]): a valid,
//! sampled one is continued by a span of ours; an unsampled one is not traced; an invalid or
//! missing one starts a new trace at `--trace-sample-rate` (else nothing is traced).
//! `tracestate` is never touched. Spans go to the exporter through a bounded queue; a full queue
//! drops them (`spans_dropped_total{reason="queue-full"}`). What each binary makes spans of, and which attributes they
//! carry, is the binary's: the proxy's HTTP spans in `weft_proxy::observe`, the control plane's
//! RPC and discovery push spans in `weft_control_plane::rpc_trace`.

pub mod context;
pub mod export;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

pub use context::{SpanId, TraceId, TraceParent};

/// `--otlp-endpoint` and what goes with it.
#[derive(Debug, Clone, Default)]
pub struct TraceConfig {
    /// `http://host:port` or `https://host:port` of an OTLP collector (OTLP/HTTP: a path of
    /// its own, else `/v1/traces`).
    pub endpoint: String,
    /// `--otlp-protocol`: how spans reach the collector.
    pub protocol: Protocol,
    /// PEM roots for an `https://` endpoint.
    pub ca: Option<std::path::PathBuf>,
    /// Of the requests that arrive with no valid `traceparent`, the share that starts a trace.
    pub sample_rate: f64,
    /// `service.name` of the spans' resource.
    pub service_name: String,
}

/// What a span is: a hop's server or client side, or (the control plane's discovery pushes) a
/// message sent to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Producer,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

/// A finished span, as the exporter receives it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub flags: u8,
    pub kind: Kind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span's status is ERROR.
    pub error: Option<String>,
}

/// What a traced request carries from its start: the trace it belongs to and the span that is
/// its parent here (`None`: we started the trace).
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    pub trace_id: TraceId,
    pub parent: Option<SpanId>,
    pub flags: u8,
}

/// A span that has started: its ids and start time; attributes come when it ends.
#[derive(Debug)]
pub struct OpenSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub flags: u8,
    pub start: SystemTime,
}

impl Parent {
    /// A child span starting now, and the `traceparent` that names it as the parent.
    pub fn child(&self) -> (OpenSpan, http::HeaderValue) {
        let span_id = SpanId::random();
        let header = TraceParent {
            trace_id: self.trace_id,
            parent_id: span_id,
            flags: self.flags,
        }
        .to_header();
        (
            OpenSpan {
                trace_id: self.trace_id,
                span_id,
                parent: self.parent,
                flags: self.flags,
                start: SystemTime::now(),
            },
            header,
        )
    }
}

impl OpenSpan {
    /// The context this span's children are made in (it is their parent).
    pub fn as_parent(&self) -> Parent {
        Parent {
            trace_id: self.trace_id,
            parent: Some(self.span_id),
            flags: self.flags,
        }
    }

    /// Ends the span now.
    pub fn end(
        self,
        kind: Kind,
        name: String,
        attributes: Vec<(&'static str, Value)>,
        error: Option<String>,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            flags: self.flags,
            kind,
            name,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error,
        }
    }
}

/// The counters the tracer and its exporter keep; the binary registers them
/// (`spans_exported_total`, `spans_dropped_total{reason}`, `span_export_failures_total`).
#[derive(Debug, Clone)]
pub struct TraceMetrics {
    pub exported: Counter,
    /// Spans lost, by `reason`: [`QUEUE_FULL`] or [`EXPORT_FAILED`].
    pub dropped: Family<DropLabels, Counter>,
    /// Export requests that failed (each attempt).
    pub export_failures: Counter,
}

/// `spans_dropped_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// `reason` of a span dropped because the exporter's queue was full.
pub const QUEUE_FULL: &str = "queue-full";
/// `reason` of a span whose batch the collector refused for good, or did not take within the
/// retries.
pub const EXPORT_FAILED: &str = "export-failed";

impl Default for TraceMetrics {
    /// Both reasons present from the start (at 0), so a rate or an alert has a series.
    fn default() -> Self {
        let m = Self {
            exported: Counter::default(),
            dropped: Family::default(),
            export_failures: Counter::default(),
        };
        for reason in [QUEUE_FULL, EXPORT_FAILED] {
            drop(m.dropped.get_or_create(&DropLabels { reason }));
        }
        m
    }
}

impl TraceMetrics {
    /// The counter of spans dropped for `reason`.
    pub fn dropped(&self, reason: &'static str) -> Counter {
        self.dropped.get_or_create(&DropLabels { reason }).clone()
    }
}

/// The tracer: the sampling rule and the queue to the exporter.
#[derive(Debug)]
pub struct Tracer {
    sample_rate: f64,
    queue: tokio::sync::mpsc::Sender<SpanRecord>,
    dropped: Counter,
    /// The exporter's side ([`Tracer::exported_by`]); `None` for a tracer no exporter reads.
    exporter: Option<ExporterLink>,
    /// Spans the queue took, for [`Tracer::flush`].
    queued: AtomicU64,
}

/// How a tracer and its exporter meet besides the queue.
#[derive(Debug)]
pub struct ExporterLink {
    /// Told when the queue holds a batch ([`export::BATCH`]) or more: the exporter does not
    /// wait on the queue itself, so a span is not a thread wake-up.
    pub batch_ready: Arc<tokio::sync::Notify>,
    /// Spans the exporter has taken from the queue and dealt with (sent, or failed and
    /// dropped), published after each batch.
    pub handled: tokio::sync::watch::Receiver<u64>,
}

impl Tracer {
    pub fn new(
        sample_rate: f64,
        queue: tokio::sync::mpsc::Sender<SpanRecord>,
        dropped: Counter,
    ) -> Self {
        Self {
            sample_rate,
            queue,
            dropped,
            exporter: None,
            queued: AtomicU64::new(0),
        }
    }

    /// The tracer of the exporter at the other end of `link`.
    pub fn exported_by(mut self, link: ExporterLink) -> Self {
        self.exporter = Some(link);
        self
    }

    /// Has the exporter send what is queued now and waits (`within` at most) until it has
    /// dealt with every span queued before the call: for a clean exit, so the last second of
    /// spans is not lost. False when time ran out (or the exporter is gone).
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        let Some(link) = &self.exporter else {
            return true;
        };
        let target = self.queued.load(Ordering::Acquire);
        link.batch_ready.notify_one();
        let mut handled = link.handled.clone();
        matches!(
            tokio::time::timeout(within, handled.wait_for(|n| *n >= target)).await,
            Ok(Ok(_))
        )
    }

    /// The trace this request is part of, if it is to be traced: a valid, sampled
    /// `traceparent`, or a new trace at the sample rate when there is no valid one. An
    /// unsampled one is not traced (and not touched).
    #[inline]
    pub fn incoming(&self, headers: &HeaderMap) -> Option<Parent> {
        decide(headers, self.sample_rate, random_fraction)
    }

    /// A new trace at the sample rate, for work no request asked for (the control plane's
    /// discovery pushes): `None` when it is not sampled.
    pub fn new_trace(&self) -> Option<Parent> {
        decide(&HeaderMap::new(), self.sample_rate, random_fraction)
    }

    /// Hands a finished span to the exporter; a full queue drops it and counts it.
    pub fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
            return;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Some(link) = &self.exporter
            && self.queue.max_capacity() - self.queue.capacity() >= export::BATCH
        {
            link.batch_ready.notify_one();
        }
    }
}

/// The propagation rule as a pure function (`random` in [0, 1)).
pub fn decide(
    headers: &HeaderMap,
    sample_rate: f64,
    random: impl FnOnce() -> f64,
) -> Option<Parent> {
    // More than one `traceparent` is as good as none (the spec's rule).
    let mut all = headers.get_all(context::TRACEPARENT).iter();
    let parsed = match (all.next(), all.next()) {
        (Some(v), None) => TraceParent::parse(v.as_bytes()),
        _ => None,
    };
    match parsed {
        Some(p) if p.sampled() => Some(Parent {
            trace_id: p.trace_id,
            parent: Some(p.parent_id),
            flags: p.flags,
        }),
        Some(_) => None,
        None if sample_rate > 0.0 && random() < sample_rate => Some(Parent {
            trace_id: TraceId::random(),
            parent: None,
            flags: context::FLAG_SAMPLED,
        }),
        None => None,
    }
}

/// `--otlp-protocol`, with the names OpenTelemetry's `OTEL_EXPORTER_OTLP_PROTOCOL` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` (port 4317 by
    /// convention).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies: `POST /v1/traces` (port 4318 by convention).
    HttpProtobuf,
}

impl Protocol {
    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// `--otlp-protocol` (both binaries): `grpc` or `http/protobuf`.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err("\"http/json\" is not supported: use http/protobuf or grpc".into()),
        _ => Err(format!("{s:?} is not grpc or http/protobuf")),
    }
}

/// `--trace-sample-rate` (both binaries): a number from 0 to 1.
pub fn parse_sample_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// A uniformly random number in [0, 1), for choices that need spread, not secrecy: jitter,
/// splits, the balancer's pairs, trace sampling. A thread-local generator (`fastrand`, wyrand),
/// not the system CSPRNG: a draw from aws-lc's costs ~2,400 instructions and a proxied request
/// makes one to three (docs/benchmarks.md). Trace and span IDs still come from the CSPRNG.
pub fn random_fraction() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(tp: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = tp {
            h.insert(context::TRACEPARENT, v.parse().unwrap());
        }
        h.insert(context::TRACESTATE, "a=b".parse().unwrap());
        h
    }

    /// Which requests are traced, and as part of which trace.
    #[test]
    fn propagation_rules() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let zero = "00-00000000000000000000000000000000-0000000000000000-01";
        let never = || -> f64 { unreachable!("sampling asked for a request with a valid header") };
        // (header, sample rate, random draw, traced, continues the incoming trace)
        for (tp, rate, draw, traced, continued) in [
            (Some(sampled), 0.0, 0.5, true, true),
            (Some(sampled), 1.0, 0.5, true, true),
            (Some(unsampled), 1.0, 0.0, false, false),
            (None, 0.0, 0.0, false, false),
            (None, 0.01, 0.5, false, false),
            (None, 0.01, 0.001, true, false),
            (None, 1.0, 0.999, true, false),
            (Some("garbage"), 0.0, 0.0, false, false),
            (Some("garbage"), 1.0, 0.3, true, false),
            (Some(zero), 0.0, 0.0, false, false),
            (Some(zero), 1.0, 0.3, true, false),
        ] {
            let h = headers(tp);
            let got = if tp.and_then(|t| TraceParent::parse(t.as_bytes())).is_some() {
                decide(&h, rate, never)
            } else {
                decide(&h, rate, || draw)
            };
            assert_eq!(got.is_some(), traced, "{tp:?} rate {rate} draw {draw}");
            if let Some(p) = got {
                let incoming = TraceParent::parse(sampled.as_bytes()).unwrap();
                assert_eq!(p.trace_id == incoming.trace_id, continued, "{tp:?}");
                assert_eq!(p.parent.is_some(), continued, "{tp:?}");
                assert!(p.flags & context::FLAG_SAMPLED != 0);
            }
        }
    }

    #[test]
    fn two_traceparent_headers_are_none() {
        let mut h = headers(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        h.append(
            context::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        assert!(decide(&h, 0.0, || 0.0).is_none());
        // ...and a new trace at the sample rate, as for any request without a valid one.
        let p = decide(&h, 1.0, || 0.5).unwrap();
        assert_eq!(p.parent, None);
    }

    #[test]
    fn a_child_names_itself_as_the_parent_and_keeps_the_flags() {
        let p = Parent {
            trace_id: TraceId([7; 16]),
            parent: Some(SpanId([9; 8])),
            flags: 0x03,
        };
        let (span, header) = p.child();
        let sent = TraceParent::parse(header.as_bytes()).unwrap();
        assert_eq!(sent.trace_id, p.trace_id);
        assert_eq!(sent.parent_id, span.span_id);
        assert_eq!(sent.flags, 0x03);
        assert_eq!(span.parent, Some(SpanId([9; 8])));
        assert_ne!(span.span_id, SpanId([9; 8]));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let dropped = Counter::default();
        let t = Tracer::new(0.0, tx, dropped.clone());
        let p = Parent {
            trace_id: TraceId([1; 16]),
            parent: None,
            flags: 1,
        };
        for _ in 0..3 {
            let (span, _) = p.child();
            t.submit(span.end(Kind::Server, "GET /".into(), Vec::new(), None));
        }
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn sample_rates_are_numbers_from_0_to_1() {
        assert_eq!(parse_sample_rate("0"), Ok(0.0));
        assert_eq!(parse_sample_rate("0.01"), Ok(0.01));
        assert_eq!(parse_sample_rate("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "", "all"] {
            let err = parse_sample_rate(bad).unwrap_err();
            assert!(err.contains("is not a number from 0 to 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn fractions_are_in_range_and_vary() {
        let xs: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x != xs[0]));
    }

    #[test]
    fn a_new_trace_follows_the_sample_rate() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let on = Tracer::new(1.0, tx.clone(), Counter::default());
        let p = on.new_trace().unwrap();
        assert_eq!((p.parent, p.flags), (None, context::FLAG_SAMPLED));
        assert!(
            Tracer::new(0.0, tx, Counter::default())
                .new_trace()
                .is_none()
        );
    }
}
