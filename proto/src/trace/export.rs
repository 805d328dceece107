//! The OTLP/gRPC span exporter: a task on a thread and runtime of its own (so a slow or
//! unreachable collector never takes time from the data path's or the RPCs' runtime), started
//! only when `--otlp-endpoint` is given. It takes finished spans from a bounded queue, sends them in
//! batches (up to [`BATCH`] spans, at least once a second while there are any), and drops a
//! batch the collector does not take within [`EXPORT_TIMEOUT`] (`span_export_failures_total`);
//! nothing is retried or kept beyond the queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use super::{Kind, SpanRecord, TraceConfig, TraceMetrics, Tracer, Value};
use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use crate::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};

/// Spans the queue holds before it drops new ones.
pub const QUEUE: usize = 2048;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// How long spans wait for a batch to fill.
const FLUSH: Duration = Duration::from_secs(1);
/// An export the collector has not answered by then is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--otlp-endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("--otlp-ca {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("start the exporter thread: {0}")]
    Thread(std::io::Error),
}

/// Checks the configuration, starts the exporter thread and returns the tracer that feeds it.
/// `scope` names the binary: the spans' instrumentation scope and `telemetry.sdk.name`. The
/// thread ends when every sender (the tracer) is gone.
pub fn start(
    config: &TraceConfig,
    scope: &'static str,
    metrics: &TraceMetrics,
) -> Result<Arc<Tracer>, ExportError> {
    let bad = |reason: String| ExportError::Endpoint {
        endpoint: config.endpoint.clone(),
        reason,
    };
    let uri: Uri = config.endpoint.parse().map_err(|e| bad(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(tls_config(config)?),
        _ => return Err(bad("the scheme must be http:// or https://".into())),
    };
    if uri.host().is_none() {
        return Err(bad("no host".into()));
    }
    let endpoint = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(5))
        .timeout(EXPORT_TIMEOUT)
        .tcp_nodelay(true);
    let (tx, rx) = mpsc::channel(QUEUE);
    let exporter = Exporter {
        rx,
        resource: resource(&config.service_name, scope),
        scope,
        exported: metrics.exported.clone(),
        failures: metrics.export_failures.clone(),
    };
    let target = config.endpoint.clone();
    std::thread::Builder::new()
        .name("weft-otlp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "no runtime for the span exporter"),
            };
            rt.block_on(async move {
                // Lazy: the first batch connects; an absent collector costs nothing before.
                let channel = match tls {
                    None => endpoint.connect_lazy(),
                    Some(tls) => endpoint.connect_with_connector_lazy(tls_connector(tls)),
                };
                info!(endpoint = %target, "exporting spans over OTLP/gRPC");
                exporter.run(TraceServiceClient::new(channel)).await;
            });
        })
        .map_err(ExportError::Thread)?;
    Ok(Arc::new(Tracer::new(
        config.sample_rate,
        tx,
        metrics.dropped.clone(),
    )))
}

fn tls_config(config: &TraceConfig) -> Result<Arc<rustls::ClientConfig>, ExportError> {
    let Some(path) = &config.ca else {
        return Err(ExportError::Ca {
            path: String::new(),
            reason: "an https:// endpoint needs --otlp-ca (the PEM roots to verify it with)".into(),
        });
    };
    let ca = |reason: String| ExportError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls_pki_types::CertificateDer<'static> =
            cert.map_err(|e| ca(e.to_string()))?;
        roots.add(cert).map_err(|e| ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca("no certificates in the file".into()));
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(weft_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(tls))
}

type TlsConnector = tower::util::BoxService<
    Uri,
    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    std::io::Error,
>;

fn tls_connector(tls: Arc<rustls::ClientConfig>) -> TlsConnector {
    tower::util::BoxService::new(tower::service_fn(move |uri: Uri| {
        crate::client::tls_connect(tls.clone(), uri)
    }))
}

struct Exporter {
    rx: mpsc::Receiver<SpanRecord>,
    resource: Resource,
    scope: &'static str,
    exported: Counter,
    failures: Counter,
}

impl Exporter {
    async fn run(mut self, mut client: TraceServiceClient<Channel>) {
        let mut batch: Vec<SpanRecord> = Vec::new();
        loop {
            // Wait for a first span, then up to FLUSH for the batch to fill.
            match self.rx.recv().await {
                Some(s) => batch.push(s),
                None => return,
            }
            let deadline = tokio::time::Instant::now() + FLUSH;
            let mut closed = false;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let request = self.request(std::mem::take(&mut batch));
            match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
                Ok(Ok(_)) => {
                    self.exported.inc_by(n);
                }
                Ok(Err(status)) => {
                    self.failures.inc();
                    debug!(%status, spans = n, "span export failed; dropped");
                }
                Err(_) => {
                    self.failures.inc();
                    debug!(spans = n, "span export timed out; dropped");
                }
            }
            if closed {
                return;
            }
        }
    }

    fn request(&self, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: self.scope.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_otlp).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

fn resource(service_name: &str, scope: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", Value::Str(service_name.to_owned())),
            kv("telemetry.sdk.name", Value::Str(scope.into())),
        ],
        ..Default::default()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One span as OTLP has it.
pub fn to_otlp(s: SpanRecord) -> Span {
    Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: u32::from(s.flags),
        name: s.name,
        kind: match s.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
            Kind::Producer => span::SpanKind::Producer,
        } as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(match s.error {
            Some(message) => Status {
                message,
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, ca: Option<std::path::PathBuf>) -> TraceConfig {
        TraceConfig {
            endpoint: endpoint.into(),
            ca,
            sample_rate: 0.0,
            service_name: "default/web".into(),
        }
    }

    /// A bad endpoint or CA fails start with a message naming the flag and the problem.
    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let m = TraceMetrics::default();
        for (endpoint, ca, want) in [
            (
                "ftp://collector:4317",
                None,
                "--otlp-endpoint \"ftp://collector:4317\": the scheme must be http:// or https://",
            ),
            ("collector:4317", None, "the scheme must be"),
            (
                "https://collector:4317",
                None,
                "an https:// endpoint needs --otlp-ca",
            ),
            (
                "https://collector:4317",
                Some("/nonexistent/ca.pem".into()),
                "--otlp-ca /nonexistent/ca.pem:",
            ),
        ] {
            let err = start(&config(endpoint, ca), "weft-test", &m)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{endpoint}: {err}");
        }
        let dir = std::env::temp_dir().join(format!("weft-otlp-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let err = start(
            &config("https://collector:4317", Some(dir.clone())),
            "weft-test",
            &m,
        )
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_file(&dir);
        assert!(err.contains("no certificates in the file"), "{err}");
    }

    #[test]
    fn a_span_in_otlp_keeps_ids_kind_times_attributes_and_status() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_000);
        let s = SpanRecord {
            trace_id: super::super::TraceId([1; 16]),
            span_id: super::super::SpanId([2; 8]),
            parent: Some(super::super::SpanId([3; 8])),
            flags: 1,
            kind: Kind::Client,
            name: "GET default/api".into(),
            start,
            end: start + Duration::from_nanos(500),
            attributes: vec![("server.port", Value::Int(80)), ("url.path", "/x".into())],
            error: Some("503".into()),
        };
        let o = to_otlp(s);
        assert_eq!(o.trace_id, vec![1; 16]);
        assert_eq!(o.span_id, vec![2; 8]);
        assert_eq!(o.parent_span_id, vec![3; 8]);
        assert_eq!(o.kind, span::SpanKind::Client as i32);
        assert_eq!(
            (o.start_time_unix_nano, o.end_time_unix_nano),
            (1_000, 1_500)
        );
        assert_eq!(o.attributes.len(), 2);
        assert_eq!(o.attributes[0].key, "server.port");
        let status = o.status.unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "503");
    }

    #[test]
    fn every_kind_has_its_otlp_kind() {
        for (kind, want) in [
            (Kind::Server, span::SpanKind::Server),
            (Kind::Client, span::SpanKind::Client),
            (Kind::Producer, span::SpanKind::Producer),
        ] {
            let s = SpanRecord {
                trace_id: super::super::TraceId([1; 16]),
                span_id: super::super::SpanId([2; 8]),
                parent: None,
                flags: 1,
                kind,
                name: "x".into(),
                start: UNIX_EPOCH,
                end: UNIX_EPOCH,
                attributes: Vec::new(),
                error: None,
            };
            assert_eq!(to_otlp(s).kind, want as i32, "{kind:?}");
        }
    }
}
