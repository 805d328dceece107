//! Wiring: load the CA and token key, bind the gRPC and admin listeners, start the services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use weft_certs::{SpiffeId, TrustBundle, TrustDomain};
use weft_proto::identity::v1::identity_server::IdentityServer;

use crate::attest::join::TOKEN_KEY_FILE;
use crate::attest::{Attestor, K8sConfig, K8sVerifier, TokenKey};
use crate::authz::Authz;
use crate::config_api::ConfigService;
use crate::discovery::DiscoveryService;
use crate::identity::IdentityService;
use crate::metrics::Metrics;
use crate::model::DefaultInbound;
use crate::registration::RegistrationService;
use crate::registry::Registry;
use crate::rotation::CaSource;
use crate::rpc_trace::{RpcTraceLayer, Tracing};
use crate::store::{EtcdStore, MemoryStore, Store};
use crate::transport::{ServingCert, ServingIdentity, tls_incoming_with};
use weft_proto::config::v1::config_server::ConfigServer;
use weft_proto::discovery::v1::aggregated_discovery_server::AggregatedDiscoveryServer;
use weft_proto::registry::v1::registration_server::RegistrationServer;
use weft_proto::trace::TraceConfig;

/// Static configuration of one control-plane process.
/// Largest request head on the gRPC port.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// CA directory (cert-manager layout plus `token.key`).
    pub ca_dir: PathBuf,
    /// Trust domain; required only when the CA certificate has no `spiffe://` URI SAN.
    pub trust_domain: Option<TrustDomain>,
    /// gRPC (mTLS) listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address (`/metrics`, `/live`, `/ready`).
    pub admin: SocketAddr,
    /// Longest SVID lifetime issued.
    pub svid_ttl: Duration,
    /// DNS SANs of the serving certificate, for gRPC clients that verify by name.
    pub server_names: Vec<String>,
    /// Kubernetes service-account token attestation, when configured.
    pub k8s: Option<K8sConfig>,
    /// Where the registry lives.
    pub store: StoreConfig,
    /// Identities allowed to change config and register endpoints for others. Empty: only
    /// [`default_admin_id`].
    pub admin_identities: Vec<SpiffeId>,
    /// TTL of the lease behind a proxy's registration stream.
    pub registration_ttl: Duration,
    /// Connections the gRPC port keeps open at once (`--max-connections`).
    pub max_connections: usize,
    /// What the admin port answers clients that are not on loopback (`--admin-remote`).
    pub admin_remote: crate::admin::Remote,
}

/// The registry's store.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Embedded, in memory; with a snapshot file, services, routes and policies survive restarts.
    Memory {
        snapshot: Option<PathBuf>,
    },
    Etcd(crate::store::EtcdConfig),
}

impl Config {
    pub const DEFAULT_SERVER_NAMES: [&str; 2] = ["weft-control-plane.weft-system.svc", "localhost"];
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("load CA from {dir}: {source}")]
    Ca {
        dir: String,
        source: crate::ca_dir::CaDirError,
    },
    #[error(transparent)]
    TokenKey(#[from] crate::attest::join::TokenKeyError),
    #[error(transparent)]
    Jwks(#[from] crate::attest::k8s::JwksError),
    #[error("bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving certificate: {0}")]
    ServingCert(String),
    #[error("TLS: {0}")]
    Tls(#[from] weft_certs::tls::TlsError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("store snapshot: {0}")]
    Snapshot(#[from] crate::store::memory::SnapshotError),
    #[error(transparent)]
    Trace(#[from] weft_proto::trace::export::ExportError),
}

/// The identity the control plane serves with.
pub fn control_plane_id(td: &TrustDomain) -> SpiffeId {
    weft_proto::client::control_plane_id(td)
}

/// The identity `weftctl login` mints, and the control plane's default `--admin-identity`.
pub fn default_admin_id(td: &TrustDomain) -> SpiffeId {
    td.workload("weft-system", "weft-admin")
        .unwrap_or_else(|_| td.id())
}

/// A running control plane. Dropping it stops the listeners (the shutdown channel closes);
/// [`ControlPlane::shutdown`] also waits for in-flight RPCs to finish.
#[derive(Debug)]
pub struct ControlPlane {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    identity: SpiffeId,
    ca: Arc<CaSource>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    revisions: watch::Receiver<i64>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Flushed at the end of [`ControlPlane::shutdown`].
    tracer: Option<Arc<weft_proto::trace::Tracer>>,
}

impl ControlPlane {
    /// Starts with `--default-inbound-policy allow`.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with_default_inbound(config, DefaultInbound::default()).await
    }

    /// Starts with `default_inbound` as the decision for services that set no
    /// `spec.defaultInboundPolicy` (`--default-inbound-policy`). A parameter rather than a
    /// [`Config`] field so that code building `Config` by literal keeps compiling.
    pub async fn start_with_default_inbound(
        config: Config,
        default_inbound: DefaultInbound,
    ) -> Result<Self, StartError> {
        Self::start_traced(config, default_inbound, None).await
    }

    /// [`ControlPlane::start_with_default_inbound`], tracing its RPCs and discovery pushes to
    /// the OTLP collector of `trace` (`--otlp-endpoint`; [`crate::rpc_trace`]).
    pub async fn start_traced(
        config: Config,
        default_inbound: DefaultInbound,
        trace: Option<TraceConfig>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::default());
        // Checked (and the exporter's thread started) first: a bad endpoint fails start at once.
        let traces = match &trace {
            Some(t) => Some(Tracing::new(weft_proto::trace::export::start(
                t,
                "weft-control-plane",
                &metrics.spans,
            )?)),
            None => None,
        };
        let ca = CaSource::load(
            config.ca_dir.clone(),
            config.trust_domain.as_ref(),
            config.svid_ttl,
            metrics.clone(),
        )
        .map_err(|source| StartError::Ca {
            dir: config.ca_dir.display().to_string(),
            source,
        })?;
        let td = ca.trust_domain().clone();
        let token_key = TokenKey::load(&config.ca_dir.join(TOKEN_KEY_FILE))?;
        let k8s = config.k8s.clone().map(K8sVerifier::load).transpose()?;
        let attestor = Arc::new(Attestor::new(td.clone(), token_key, k8s));
        let jwks_verifier = attestor.k8s();

        let (shutdown, shutdown_rx) = watch::channel(false);

        let identity = control_plane_id(&td);
        let serving = ServingCert::start(
            ServingIdentity {
                ca: ca.clone(),
                id: identity.clone(),
                dns_names: config.server_names.clone(),
                ttl: config.svid_ttl,
            },
            metrics.clone(),
            shutdown_rx.clone(),
        )
        .map_err(StartError::ServingCert)?;
        // Client certificates are optional here: a workload asking for its first SVID has none.
        // The acceptor is rebuilt when the trusted roots change (a root rotation).
        let acceptor = |trust: Arc<TrustBundle>| -> Result<tokio_rustls::TlsAcceptor, StartError> {
            let tls = weft_certs::tls::server_config(trust, serving.clone(), false)?;
            Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
        };
        let first = ca.current();
        let (acceptor_tx, acceptors) = watch::channel(acceptor(first.ca.trust.clone())?);
        let (bundle_tx, bundles) = watch::channel(first.resource());

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC listener", config.listen).await?;
        let admin = bind("admin listener", config.admin).await?;
        let grpc_addr = grpc.local_addr().map_err(|source| StartError::Bind {
            what: "gRPC listener",
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            what: "admin listener",
            addr: config.admin,
            source,
        })?;

        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Memory { snapshot: None } => Arc::new(MemoryStore::new()),
            StoreConfig::Memory {
                snapshot: Some(path),
            } => Arc::new(MemoryStore::open(path)?),
            StoreConfig::Etcd(etcd) => Arc::new(EtcdStore::connect(etcd.clone()).await?),
        };
        let (registry, snapshots) = Registry::new(
            store.clone(),
            first.resource(),
            default_inbound,
            metrics.clone(),
        );
        let registry = registry.following_trust_bundle(bundles);
        let revisions = registry.revisions();
        let mirror = registry.mirror();
        let registry_task = tokio::spawn(registry.run(shutdown_rx.clone()));
        let admins = if config.admin_identities.is_empty() {
            vec![default_admin_id(&td)]
        } else {
            config.admin_identities.clone()
        };
        let authz = Arc::new(Authz::new(admins));

        let incoming = tls_incoming_with(
            grpc,
            acceptors,
            metrics.clone(),
            config.max_connections,
            shutdown_rx.clone(),
        );
        // A reloaded CA directory: the roots clients are verified against and the TrustBundle
        // resource follow it (the serving certificate follows it by itself).
        let follow_task = {
            let mut cas = ca.subscribe();
            let mut shutdown = shutdown_rx.clone();
            let serving = serving.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = cas.changed() => if r.is_err() { return },
                        _ = shutdown.changed() => return,
                    }
                    let active = cas.borrow_and_update().clone();
                    match weft_certs::tls::server_config(
                        active.ca.trust.clone(),
                        serving.clone(),
                        false,
                    ) {
                        Ok(tls) => {
                            acceptor_tx
                                .send_replace(tokio_rustls::TlsAcceptor::from(Arc::new(tls)));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS configuration for the new trust bundle; keeping the last")
                        }
                    }
                    bundle_tx.send_if_modified(|b| {
                        let new = active.resource();
                        let changed = *b != new;
                        *b = new;
                        changed
                    });
                }
            })
        };
        let poll_task = tokio::spawn(ca.clone().poll(shutdown_rx.clone()));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<IdentityServer<IdentityService>>()
            .await;
        let identity_service = IdentityService::new(ca.clone(), attestor, metrics.clone());
        let discovery_ca = ca.clone();
        let discovery_metrics = metrics.clone();
        let grpc_store = store.clone();
        let registration_metrics = metrics.clone();
        let registration_ttl = config.registration_ttl;
        let config_td = td.clone();
        let snapshots_for_admin = snapshots.clone();
        let mut grpc_shutdown = shutdown_rx.clone();
        let jwks_shutdown = shutdown_rx.clone();
        let tracer = traces.as_ref().map(|t| t.tracer.clone());
        let rpc_trace = RpcTraceLayer::new(tracer.clone());
        let mut discovery = DiscoveryService::new(snapshots.clone(), discovery_metrics)
            .counting_issuers(discovery_ca);
        let mut config_service =
            ConfigService::new(grpc_store.clone(), authz.clone(), config_td, mirror);
        if let Some(t) = &traces {
            discovery = discovery.traced(t.clone());
            config_service = config_service.traced(t.clone());
        }
        let grpc_task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                // Clients reconnect (possibly to another replica) at least this often.
                .max_connection_age(Duration::from_secs(30 * 60))
                .max_concurrent_streams(256)
                .concurrency_limit_per_connection(256)
                // Request heads are a few hundred bytes (the token is in the body).
                .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
                // HTTP/2 rapid reset (CVE-2023-44487): streams reset before they are accepted
                // beyond this close the connection with ENHANCE_YOUR_CALM (h2's default, set
                // here so it is a decision, not an accident).
                .http2_max_pending_accept_reset_streams(Some(20))
                // A SERVER span per unary RPC when tracing; a pass-through otherwise.
                .layer(rpc_trace)
                .add_service(health_service)
                .add_service(IdentityServer::new(identity_service))
                .add_service(AggregatedDiscoveryServer::new(discovery))
                .add_service(RegistrationServer::new(RegistrationService::new(
                    grpc_store.clone(),
                    authz.clone(),
                    registration_metrics,
                    registration_ttl,
                )))
                .add_service(ConfigServer::new(config_service))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = grpc_shutdown.changed().await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        let jwks_task = tokio::spawn(async move {
            if let Some(v) = jwks_verifier {
                crate::attest::jwks::refresh(v, jwks_shutdown).await;
            }
        });
        let admin_task = tokio::spawn(crate::admin::run(
            admin,
            config.admin_remote,
            metrics.clone(),
            snapshots_for_admin,
            Some(ca.clone()),
            shutdown_rx,
        ));

        info!(%grpc_addr, %admin_addr, %identity, trust_domain = %td, %default_inbound, "control plane serving");
        Ok(Self {
            grpc_addr,
            admin_addr,
            identity,
            ca,
            metrics,
            store,
            revisions,
            shutdown,
            tasks: vec![
                grpc_task,
                admin_task,
                registry_task,
                jwks_task,
                follow_task,
                poll_task,
            ],
            tracer,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The roots served now (both of a rotation's while it runs).
    pub fn trust_bundle(&self) -> Arc<TrustBundle> {
        self.ca.current().ca.trust.clone()
    }

    /// The CA directory being served: its live state and [`CaSource::reload`] (SIGHUP).
    pub fn ca(&self) -> &Arc<CaSource> {
        &self.ca
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Waits until the registry reflects every store write made before this call (so discovery
    /// serves it).
    pub async fn wait_synced(&self) -> Result<(), crate::store::StoreError> {
        let target = self.store.list("\u{0}").await?.revision;
        let mut revisions = self.revisions.clone();
        // The sender lives as long as the registry task; if it is gone, so is any progress.
        let _ = revisions.wait_for(|r| *r >= target).await;
        Ok(())
    }

    /// Stops accepting, lets in-flight RPCs finish, and waits for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The last RPCs' and pushes' spans (up to a second of them wait for their batch).
        if let Some(tracer) = &self.tracer
            && !tracer.flush(std::time::Duration::from_secs(2)).await
        {
            tracing::warn!("spans still queued at exit were not exported within 2 s");
        }
    }
}
