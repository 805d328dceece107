//! `weft-proxy`, the sidecar.
//!
//! Configuration path (writes the state the data path reads): the identity ([`identity`]), the
//! delta discovery client that keeps a validated [`resources::MeshConfig`] ([`discovery`]), the
//! registration of the inbound endpoint ([`registration`]), and the admin endpoint ([`admin`]).
//!
//! Data path (only reads that state): [`outbound`] (the application's connections out: plan with
//! [`plan`], mTLS to the peer with [`peers`] and [`tls`]) and [`inbound`] (mTLS from peers to the
//! application), on the shared plumbing in [`listen`], [`http`], [`detect`] and [`tcp`], with
//! one [`drain`] signal for shutdown. Traces ([`trace`]) and access logs ([`access_log`]) are
//! gathered per request by [`observe`], only when configured.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod backoff;
pub mod balance;
pub mod body;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod error;
pub mod explain;
pub mod forward;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod observe;
pub mod orig_dst;
pub mod outbound;
pub mod peers;
pub mod plan;
pub mod pool;
pub mod registration;
pub mod resources;
pub mod retry;
pub mod tcp;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod trace;
pub mod trim;
pub mod wait_ready;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use weft_certs::TrustBundle;
use weft_proto::model::ObjectRef;

use crate::identity::{ControlPlane, Identity, IdentityError};
use crate::listen::{Ctx, DataPathConfig};
use crate::metrics::Metrics;
use crate::resources::MeshConfig;

/// What `weft-proxy run` is given.
#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane: ControlPlane,
    /// PEM roots to trust before discovery sends the live bundle; its trust domain is the
    /// proxy's.
    pub trust_bundle: PathBuf,
    /// The trust domain; `None` takes it from the bundle's roots (`spiffe://<td>` URI SAN).
    /// When both are there they must agree.
    pub trust_domain: Option<weft_certs::TrustDomain>,
    pub admin: SocketAddr,
    /// This proxy instance's name in the control plane's logs (e.g. the pod name).
    pub node_id: String,
    /// The inbound side; `None` for a proxy with no application to serve (a client only).
    pub inbound: Option<InboundConfig>,
    /// The outbound listener (redirected connections and HTTP-proxy requests); `None`: off.
    pub outbound: Option<SocketAddr>,
    /// `--upstream` listeners: local address → `service.namespace:port`.
    pub upstreams: Vec<(SocketAddr, String)>,
    pub data: DataPathConfig,
    /// How long a drain may take before the proxy exits anyway.
    pub drain_timeout: Duration,
    /// `--otlp-endpoint` and its settings: tracing (propagation and spans); `None`: off.
    pub trace: Option<trace::TraceConfig>,
    /// `--access-log json|text`; `None`: off.
    pub access_log: Option<access_log::AccessLogConfig>,
}

/// The inbound listener and what it registers.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// The application's port on 127.0.0.1, for connections that were not redirected
    /// (peer proxies dialing the inbound port). Redirected ones go to the port they were
    /// for (`SO_ORIGINAL_DST`); without this, a connection that was not redirected is closed.
    pub app_port: Option<u16>,
    /// The service to register the endpoint under; `None`: not registered.
    pub service: Option<ObjectRef>,
    pub labels: BTreeMap<String, String>,
    /// The IP peers reach this proxy on; default: the listen IP, or when that is unspecified,
    /// the local IP the control plane is reached from.
    pub advertise: Option<IpAddr>,
    /// `--probe-paths`: (application port, path) pairs answered for GET and HEAD from any
    /// client, whatever the policy (kubelet's probes carry no certificate).
    pub probe_paths: Vec<(u16, String)>,
    /// `--default-inbound-policy`: this workload's default, applied when stricter than the
    /// served services' own (a pod can tighten, never loosen).
    pub default_inbound: Option<weft_proto::model::DefaultInbound>,
    /// `--inbound-redirected`: the pod redirects every inbound port to this proxy; registered
    /// as [`registration::REDIRECTED_LABEL`] so clients dial the port their application asked for.
    pub redirected: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("trust bundle {}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    #[error("listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("the admin listener's start-up task failed: {0}")]
    Admin(String),
    #[error("advertised address: {0}")]
    Advertise(String),
    #[error("tracing: {0}")]
    Trace(#[from] trace::export::ExportError),
    #[error("access log: {0}")]
    AccessLog(#[from] access_log::AccessLogError),
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Listen { what, addr, source };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        // `[::]` (dual-stack, what the injector asks for) on a kernel without IPv6: the
        // IPv4 wildcard serves everything there is.
        Err(e) if addr.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            info!(%addr, error = %e, "no IPv6 here; listening on {v4}");
            TcpListener::bind(v4).await.map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// How long a stopping proxy waits for its queued spans to be exported.
const SPAN_FLUSH: Duration = Duration::from_secs(2);

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub admin_addr: SocketAddr,
    pub inbound_addr: Option<SocketAddr>,
    pub outbound_addr: Option<SocketAddr>,
    pub upstream_addrs: Vec<SocketAddr>,
    pub identity: Arc<Identity>,
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub metrics: Arc<Metrics>,
    drain_requested: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    deregister: watch::Sender<bool>,
    registrar: Option<JoinHandle<()>>,
    drain: drain::Drain,
    drain_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
    /// Flushed at the end of [`Proxy::shutdown`].
    tracer: Option<Arc<trace::Tracer>>,
}

impl Proxy {
    /// Binds every listener, gets a certificate (failing if the control plane refuses the
    /// token), then starts the renewal, discovery, registration, admin and data path tasks.
    /// Readiness follows on `/ready`.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let pem = std::fs::read(&config.trust_bundle).map_err(|e| StartError::Bundle {
            path: config.trust_bundle.clone(),
            reason: e.to_string(),
        })?;
        let bundle =
            TrustBundle::from_pem_deriving(config.trust_domain.as_ref(), &pem, "trust bundle")
                .map_err(|e| StartError::Bundle {
                    path: config.trust_bundle.clone(),
                    reason: e.to_string(),
                })?;
        let metrics = Arc::new(Metrics::new());
        // Checked (and the exporter's thread started) before anything else: a bad endpoint or
        // log file fails start at once.
        let tracer = match &config.trace {
            Some(t) => Some(trace::export::start(t, &metrics)?),
            None => None,
        };
        let access_log = match &config.access_log {
            Some(a) => Some(access_log::AccessLog::start(a, &metrics)?),
            None => None,
        };
        // Bind first: a taken port fails start before anything is asked of the control plane.
        let (admin, admin_addr) = bind("admin", config.admin).await?;
        let inbound = match &config.inbound {
            Some(i) => Some(bind("inbound", i.listen).await?),
            None => None,
        };
        let outbound = match config.outbound {
            Some(addr) => Some(bind("outbound", addr).await?),
            None => None,
        };
        let mut upstreams = Vec::new();
        for (addr, authority) in &config.upstreams {
            upstreams.push((
                bind("upstream", *addr).await?,
                Arc::<str>::from(authority.as_str()),
            ));
        }
        // If the first certificate does not come at once, the admin port says what the proxy
        // is waiting for. Only then: its server is code an idle sidecar need not touch.
        let (waiting_tx, waiting) = watch::channel("no certificate yet".to_owned());
        let mut first_wait = waiting_tx.subscribe();
        let (identity, admin) = {
            let boot = identity::bootstrap(
                &config.control_plane,
                Arc::new(bundle),
                &metrics,
                &waiting_tx,
            );
            tokio::pin!(boot);
            tokio::select! {
                r = &mut boot => (r, admin),
                _ = first_wait.changed() => {
                    let (started, started_rx) = tokio::sync::oneshot::channel();
                    let starting = tokio::spawn(admin::serve_starting(admin, waiting, started_rx));
                    let r = (&mut boot).await;
                    let _ = started.send(());
                    let admin = starting
                        .await
                        .map_err(|e| StartError::Admin(e.to_string()))?;
                    (r, admin)
                }
            }
        };
        let identity = identity?;
        let (stop, stop_rx) = watch::channel(false);
        let (drain_requested, _) = watch::channel(false);
        let (config_tx, config_rx) = watch::channel(Arc::new(MeshConfig::default()));
        let balancers = Arc::new(balance::Balancers::default());
        let limiter = Arc::new(authz::ratelimit::RateLimiter::new());
        let probe_paths: Vec<(u16, String)> = config
            .inbound
            .as_ref()
            .map(|i| i.probe_paths.clone())
            .unwrap_or_default();
        let discovery = discovery::Discovery {
            cp: config.control_plane.clone(),
            node_id: config.node_id.clone(),
            identity: identity.clone(),
            config: config_tx,
            metrics: metrics.clone(),
            served: config
                .inbound
                .as_ref()
                .map(|i| authz::Served {
                    service: i.service.clone(),
                    labels: i.labels.clone(),
                    probes: probe_paths.clone(),
                    default: i.default_inbound,
                })
                .unwrap_or_default(),
        };
        let mut tasks = vec![
            tokio::spawn(identity::renew_forever(
                identity.clone(),
                config.control_plane.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(discovery.run(stop_rx.clone())),
            tokio::spawn(admin::run(
                admin,
                admin::AdminState {
                    metrics: metrics.clone(),
                    identity: identity.clone(),
                    config: config_rx.clone(),
                    shutdown: drain_requested.clone(),
                    balancers: balancers.clone(),
                    limiter: limiter.clone(),
                    app_port: config.inbound.as_ref().and_then(|i| i.app_port),
                    probe_paths: probe_paths.clone(),
                },
                stop_rx.clone(),
            )),
        ];

        let (drain, drain_watch) = drain::Drain::new();
        let tls = Arc::new(tls::MeshTls::new(identity.clone()));
        let ctx = Arc::new(Ctx {
            config: config_rx.clone(),
            peers: peers::Peers::new(tls.clone(), config.data.connect_timeout),
            tls,
            settings: config.data.clone(),
            metrics: metrics.clone(),
            drain: drain_watch,
            apps: listen::AppPorts::new(
                config.inbound.as_ref().and_then(|i| i.app_port),
                config.data.connect_timeout,
            ),
            outside: listen::outside_client(),
            balancers: balancers.clone(),
            budgets: retry::Budgets::default(),
            limiter: limiter.clone(),
            probe_paths,
            namespace: own_namespace(&identity.svid().id),
            observe: (tracer.is_some() || access_log.is_some()).then(|| {
                Arc::new(observe::Observe {
                    tracer: tracer.clone(),
                    log: access_log,
                    own_id: identity.svid().id.to_string(),
                })
            }),
        });
        tasks.push(tokio::spawn(trim::run(stop_rx.clone())));
        tasks.push(tokio::spawn(forget_removed(
            ctx.clone(),
            config_rx.clone(),
            stop_rx,
        )));
        let (deregister, deregister_rx) = watch::channel(false);
        let mut registrar = None;
        let inbound_addr = inbound.as_ref().map(|(_, a)| *a);
        if let (Some((listener, local)), Some(cfg)) = (inbound, &config.inbound) {
            tasks.push(tokio::spawn(listen::accept(
                listener,
                "inbound",
                ctx.clone(),
                inbound::connection,
            )));
            if let Some(service) = &cfg.service {
                let ip = match cfg.advertise {
                    Some(ip) => ip,
                    None if !local.ip().is_unspecified() => local.ip(),
                    None => local_ip_towards(&config.control_plane.addr).await?,
                };
                let registrar_task = registration::Registrar {
                    cp: config.control_plane.clone(),
                    identity: identity.clone(),
                    registration: registration::Registration {
                        service: service.clone(),
                        address: SocketAddr::new(ip, local.port()),
                        labels: registration::labels(&cfg.labels, cfg.redirected),
                    },
                    metrics: metrics.clone(),
                };
                registrar = Some(tokio::spawn(registrar_task.run(deregister_rx)));
            }
        }
        let outbound_addr = outbound.as_ref().map(|(_, a)| *a);
        if let Some((listener, _)) = outbound {
            tasks.push(tokio::spawn(listen::accept(
                listener,
                "outbound",
                ctx.clone(),
                outbound::connection,
            )));
        }
        let mut upstream_addrs = Vec::new();
        for ((listener, local), authority) in upstreams {
            upstream_addrs.push(local);
            tasks.push(tokio::spawn(listen::accept(
                listener,
                "outbound",
                ctx.clone(),
                move |ctx, tcp, _| outbound::upstream_connection(ctx, tcp, authority.clone()),
            )));
        }
        info!(identity = %identity.svid().id, %admin_addr, ?inbound_addr, ?outbound_addr, "proxy started");
        Ok(Self {
            admin_addr,
            inbound_addr,
            outbound_addr,
            upstream_addrs,
            identity,
            config: config_rx,
            metrics,
            drain_requested,
            stop,
            deregister,
            registrar,
            drain,
            drain_timeout: config.drain_timeout,
            tasks,
            tracer,
        })
    }

    /// Resolves when a drain was asked for on the admin port (`POST /shutdown`).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.drain_requested.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Drains and stops: deregisters (peers stop choosing this endpoint), keeps serving for a
    /// moment while that reaches them, stops accepting, lets open connections finish their
    /// requests until the drain timeout, then stops every task.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        self.drain_requested.send_replace(true);
        self.deregister.send_replace(true);
        if let Some(registrar) = self.registrar {
            let _ = tokio::time::timeout_at(deadline, registrar).await;
            // The deregistration reaches peers through the control plane within milliseconds;
            // new requests from them keep being served meanwhile.
            let grace = DEREGISTER_GRACE.min(self.drain_timeout / 4);
            tokio::time::sleep(grace).await;
        }
        self.drain.start();
        let open = self.drain.open_connections();
        info!(open, "draining");
        if tokio::time::timeout_at(deadline, self.drain.wait_idle())
            .await
            .is_err()
        {
            warn!(
                open = self.drain.open_connections(),
                "drain timeout: closing the remaining connections"
            );
        }
        self.stop.send_replace(true);
        let all = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
        // The spans of the last requests (up to a second of them wait for their batch).
        if let Some(tracer) = &self.tracer
            && !tracer.flush(SPAN_FLUSH).await
        {
            warn!("spans still queued at exit were not exported within {SPAN_FLUSH:?}");
        }
        info!("proxy stopped");
    }
}

/// The namespace of `spiffe://td/ns/<namespace>/sa/<account>`.
fn own_namespace(id: &weft_certs::SpiffeId) -> Option<Arc<str>> {
    let rest = id.path().strip_prefix("/ns/")?;
    let ns = rest.split('/').next()?;
    (!ns.is_empty()).then(|| Arc::from(ns))
}

/// Drops what the data path learned about services and routes once a new configuration no
/// longer has them, so a proxy's state stays bounded by its configuration.
async fn forget_removed(
    ctx: Arc<Ctx>,
    mut config: watch::Receiver<Arc<MeshConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = config.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let now = config.borrow_and_update().clone();
        ctx.balancers
            .retain(|id| now.services.contains_key(&id.to_string()));
        ctx.budgets.retain(|id| {
            now.services
                .values()
                .any(|s| s.value.routes.iter().any(|r| r.id == *id))
        });
    }
}

/// How long a draining proxy keeps serving new requests after deregistering.
const DEREGISTER_GRACE: Duration = Duration::from_secs(1);

/// The local IP of the route to `addr` (a connected UDP socket sends nothing).
async fn local_ip_towards(addr: &str) -> Result<IpAddr, StartError> {
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| StartError::Advertise(format!("resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| StartError::Advertise(format!("{addr} resolves to nothing")))?;
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| StartError::Advertise(e.to_string()))?;
    sock.connect(target)
        .await
        .map_err(|e| StartError::Advertise(format!("no route to {target}: {e}")))?;
    sock.local_addr()
        .map(|a| a.ip())
        .map_err(|e| StartError::Advertise(e.to_string()))
}
