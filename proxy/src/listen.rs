//! What the data path shares: the configuration snapshot (read once per connection or
//! request), the peer connections, the clients to the local application and to destinations
//! outside the mesh, the drain signal; and the accept loop every listener runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use crate::balance::Balancers;
use crate::body::Body;
use crate::drain;
use crate::limits::{ConnectionLimit, Limits};
use crate::metrics::{LimitLabels, Metrics, RequestLabels, ResponseLabels, TcpLabels};
use crate::peers::Peers;
use crate::pool::Http1Pool;
use crate::resources::MeshConfig;
use crate::retry::Budgets;
use crate::tls::MeshTls;

/// Whether the inbound port accepts plaintext from clients outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// mTLS from proxies, plaintext from anyone else (the default while workloads join).
    Permissive,
    /// mTLS only: plaintext connections are closed.
    Strict,
}

/// Data path settings (the `weft-proxy run` flags).
#[derive(Debug, Clone)]
pub struct DataPathConfig {
    /// How long to wait for a client's first bytes on a port whose protocol is not declared.
    pub detect_timeout: Duration,
    /// An opaque connection with no bytes either way for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// An accepted HTTP connection with no request in flight for this long is closed.
    pub http_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Destinations outside the mesh: pass through as plain TCP/HTTP (`true`) or refuse.
    pub passthrough: bool,
    pub mtls: MtlsMode,
    /// What each listener bounds (connections, request heads and bodies, HTTP/2 streams).
    pub limits: Limits,
}

impl Default for DataPathConfig {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_millis(100),
            tcp_idle_timeout: Duration::from_secs(3600),
            http_idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            passthrough: true,
            mtls: MtlsMode::Permissive,
            limits: Limits::default(),
        }
    }
}

/// Connects every request to the local application, whatever its URI's authority says (the
/// authority is kept for the application to see).
#[derive(Debug, Clone, Copy)]
pub struct AppConnector(pub SocketAddr);

impl tower::Service<http::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

/// How long an idle keep-alive connection to the application is kept.
pub const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Keep-alive pools to the local application, one per HTTP version it may speak. HTTP/1.1,
/// the common case and one exchange per connection, has its own lean pool
/// ([`crate::pool`]); HTTP/2 multiplexes one connection through hyper-util's client.
#[derive(Debug)]
pub struct App {
    pub addr: SocketAddr,
    pub http1: Arc<Http1Pool>,
    pub http2: Client<AppConnector, Body>,
}

impl App {
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(APP_IDLE_TIMEOUT)
            .http2_only(true)
            .build(AppConnector(addr));
        Self {
            addr,
            http1: Http1Pool::new(addr, connect_timeout, APP_IDLE_TIMEOUT),
            http2,
        }
    }
}

/// The application's ports on 127.0.0.1, each with its connection pools, made on first use.
#[derive(Debug)]
pub struct AppPorts {
    default: Option<Arc<App>>,
    redirected: std::sync::Mutex<std::collections::HashMap<u16, Arc<App>>>,
    connect_timeout: Duration,
}

/// At most this many distinct redirected ports keep pools (a pod listens on a few; a client
/// probing every port must not grow the map without bound).
const MAX_APP_PORTS: usize = 256;

impl AppPorts {
    pub fn new(default: Option<u16>, connect_timeout: Duration) -> Self {
        Self {
            default: default.map(|p| {
                Arc::new(App::new(
                    SocketAddr::from(([127, 0, 0, 1], p)),
                    connect_timeout,
                ))
            }),
            redirected: Default::default(),
            connect_timeout,
        }
    }

    /// `--app-port`'s application: where connections that were not redirected go.
    pub fn default_app(&self) -> Option<Arc<App>> {
        self.default.clone()
    }

    /// The application on `port` (a redirected connection's original port).
    pub fn on_port(&self, port: u16) -> Arc<App> {
        if let Some(d) = &self.default
            && d.addr.port() == port
        {
            return d.clone();
        }
        let mut map = self
            .redirected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(app) = map.get(&port) {
            return app.clone();
        }
        let app = Arc::new(App::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            self.connect_timeout,
        ));
        if map.len() < MAX_APP_PORTS {
            map.insert(port, app.clone());
        }
        app
    }
}

/// Everything a connection handler reads.
#[derive(Debug)]
pub struct Ctx {
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub tls: Arc<MeshTls>,
    pub peers: Peers,
    pub settings: DataPathConfig,
    pub metrics: Arc<Metrics>,
    pub drain: drain::Watch,
    /// The local application's ports (inbound): `--app-port`, and the ports redirected
    /// connections were for; each shared by every inbound request to it.
    pub apps: AppPorts,
    /// Plain HTTP to destinations outside the mesh (outbound passthrough).
    pub outside: Client<HttpConnector, Body>,
    /// How endpoints have behaved: latency, requests in flight, ejections.
    pub balancers: Arc<Balancers>,
    /// Retry budgets, by route.
    pub budgets: Budgets,
    /// Rate-limit buckets of the inbound policy (its only mutable state).
    pub limiter: Arc<crate::authz::ratelimit::RateLimiter>,
    /// `--probe-paths`: (application port, normalized path).
    pub probe_paths: Vec<(u16, String)>,
    /// This workload's namespace (from its SPIFFE ID): what a one-label host (`api`, as an
    /// application in a Kubernetes namespace calls a neighbour) is looked up in.
    pub namespace: Option<Arc<str>>,
    /// Tracing and access logs; `None` when both are off (one branch per request).
    pub observe: Option<Arc<crate::observe::Observe>>,
}

impl Ctx {
    pub fn snapshot(&self) -> Arc<MeshConfig> {
        self.config.borrow().clone()
    }

    /// Counts a request as it arrives.
    pub fn count_request(&self, direction: &'static str, authority: &str, tls: bool) {
        self.metrics.count_request(RequestLabels {
            direction,
            authority: authority.to_owned(),
            tls: tls_label(tls),
        });
    }

    /// Counts a response and its latency since `start`.
    pub fn count_response(&self, labels: ResponseLabels, start: Instant) {
        self.metrics
            .count_response(labels, start.elapsed().as_secs_f64() * 1000.0);
    }
}

pub fn tls_label(tls: bool) -> &'static str {
    if tls { "true" } else { "false" }
}

pub fn outside_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Accepts until the drain starts, running `handle` for each connection in its own task with a
/// `conn` span; each connection is tracked for the drain and counted in `tcp_open_connections`.
/// Past `--max-connections` open on this listener, a new connection is closed at once and
/// counted in `tcp_refused_connections_total{reason="limit"}`.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    direction: &'static str,
    ctx: Arc<Ctx>,
    handle: F,
) where
    F: Fn(Arc<Ctx>, TcpStream, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let limit = ConnectionLimit::new(ctx.settings.limits.max_connections);
    let refused = ctx
        .metrics
        .tcp_refused
        .get_or_create(&LimitLabels {
            direction,
            reason: "limit",
        })
        .clone();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    warn!(error = %e, ?local, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = ctx.drain.signaled() => {
                debug!(?local, "stopped accepting");
                return;
            }
        };
        let Some(slot) = limit.try_acquire(direction) else {
            refused.inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tracked = ctx.drain.track();
        let open = ctx
            .metrics
            .tcp_open
            .get_or_create(&TcpLabels { direction })
            .clone();
        open.inc();
        let span = info_span!("conn", direction, %peer);
        let (ctx, handle) = (ctx.clone(), handle.clone());
        tokio::spawn(
            async move {
                // Called in here, not before: a future made outside and awaited in here would
                // be held twice for the connection's life (once captured, once awaited).
                handle(ctx, tcp, peer).await;
                open.dec();
                crate::trim::connection_freed();
                drop(tracked);
                drop(slot);
            }
            .instrument(span),
        );
    }
}
