//! The `weft-traced` target: a plain pair (service `api-traced`) with tracing on — the client
//! proxy starts a trace for 1 % of requests (`--trace-sample-rate 0.01`; the load carries no
//! `traceparent`), both proxies propagate and export their spans over OTLP/gRPC to [`Sink`], an
//! OTLP receiver in this process on a thread of its own that counts what it gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use weft_proto::otlp::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use weft_proto::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

pub(crate) const SERVICE: &str = "api-traced";
pub(crate) const MANIFESTS: &str = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {namespace: default, name: api-traced}\nspec:\n  ports: [{name: http, port: 80, protocol: http1}]\n";
/// The client's `--trace-sample-rate`.
pub(crate) const SAMPLE_RATE: &str = "0.01";

/// An OTLP/gRPC trace receiver that counts spans; it runs until the process ends.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    spans: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
struct Counting(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Sink {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the OTLP sink")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(AtomicU64::new(0));
        let service = TraceServiceServer::new(Counting(spans.clone()));
        std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let Ok(rt) = rt else { return };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await;
                });
            })
            .context("start the OTLP sink's thread")?;
        Ok(Self { addr, spans })
    }

    /// `--otlp-endpoint` for the proxies.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far.
    pub(crate) fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}
