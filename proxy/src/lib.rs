//! `weft-proxy`, the sidecar. This crate holds its configuration path: the identity
//! ([`identity`]), the delta discovery client that keeps a validated [`resources::MeshConfig`]
//! ([`discovery`]), and the admin endpoint ([`admin`]). The data path (inbound and outbound
//! listeners) builds on these.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod backoff;
pub mod discovery;
pub mod identity;
pub mod metrics;
pub mod resources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use weft_certs::TrustBundle;

use crate::identity::{ControlPlane, Identity, IdentityError};
use crate::metrics::Metrics;
use crate::resources::MeshConfig;

/// What `weft-proxy run` is given.
#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane: ControlPlane,
    /// PEM roots to trust before discovery sends the live bundle; its trust domain is the
    /// proxy's.
    pub trust_bundle: PathBuf,
    pub trust_domain: weft_certs::TrustDomain,
    pub admin: SocketAddr,
    /// This proxy instance's name in the control plane's logs (e.g. the pod name).
    pub node_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("trust bundle {}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    #[error("admin address {0}: {1}")]
    Admin(SocketAddr, std::io::Error),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub admin_addr: SocketAddr,
    pub identity: Arc<Identity>,
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Gets a certificate (failing if the control plane refuses the token), then starts the
    /// renewal, discovery and admin tasks. Readiness follows on `/ready`.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let pem = std::fs::read(&config.trust_bundle).map_err(|e| StartError::Bundle {
            path: config.trust_bundle.clone(),
            reason: e.to_string(),
        })?;
        let bundle = TrustBundle::from_pem(config.trust_domain.clone(), &pem, "trust bundle")
            .map_err(|e| StartError::Bundle {
                path: config.trust_bundle.clone(),
                reason: e.to_string(),
            })?;
        let metrics = Arc::new(Metrics::new());
        let admin = TcpListener::bind(config.admin)
            .await
            .map_err(|e| StartError::Admin(config.admin, e))?;
        let admin_addr = admin
            .local_addr()
            .map_err(|e| StartError::Admin(config.admin, e))?;
        let identity =
            identity::bootstrap(&config.control_plane, Arc::new(bundle), &metrics).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (config_tx, config_rx) = watch::channel(Arc::new(MeshConfig::default()));
        let discovery = discovery::Discovery {
            cp: config.control_plane.clone(),
            node_id: config.node_id.clone(),
            identity: identity.clone(),
            config: config_tx,
            metrics: metrics.clone(),
        };
        let tasks = vec![
            tokio::spawn(identity::renew_forever(
                identity.clone(),
                config.control_plane.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(discovery.run(shutdown_rx.clone())),
            tokio::spawn(admin::run(
                admin,
                admin::AdminState {
                    metrics: metrics.clone(),
                    identity: identity.clone(),
                    config: config_rx.clone(),
                    shutdown: shutdown.clone(),
                },
                shutdown_rx,
            )),
        ];
        info!(identity = %identity.svid().id, %admin_addr, "proxy started");
        Ok(Self {
            admin_addr,
            identity,
            config: config_rx,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// Resolves when shutdown was asked for (`POST /shutdown` or [`Proxy::shutdown`]).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops every task, waiting up to `deadline` for them.
    pub async fn shutdown(self, deadline: Duration) {
        self.shutdown.send_replace(true);
        let all = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(deadline, all).await;
        info!("proxy stopped");
    }
}
