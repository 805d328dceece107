//! Registers this workload's inbound endpoint with the control plane and keeps it alive: one
//! `Register` stream, a heartbeat every third of the lease TTL, reconnects with backoff. The
//! identity is our certificate's (the control plane checks). Draining ends the stream first,
//! which deregisters at once, so peers stop picking this endpoint before it stops serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};
use weft_proto::mesh::v1 as pb;
use weft_proto::model::ObjectRef;
use weft_proto::registry::v1::RegisterRequest;
use weft_proto::registry::v1::registration_client::RegistrationClient;

use crate::backoff::{Backoff, CONTROL_PLANE_RETRY_MAX};
use crate::identity::{ControlPlane, Identity};
use crate::metrics::Metrics;

/// The endpoint label of a proxy whose pod redirects inbound traffic to it (`weft-proxy
/// init`, `--inbound-redirected`): a client proxy whose application dialed
/// `<endpoint IP>:<port>` dials that same address over mTLS, and this proxy reads the port back
/// (`SO_ORIGINAL_DST`), so every port of the pod is reached with the client's identity. Without
/// it, clients dial the registered address (the inbound port), which serves `--app-port`.
pub const REDIRECTED_LABEL: &str = "weft.io/inbound-redirected";

/// The labels to register: the configured ones, and [`REDIRECTED_LABEL`] when redirected.
pub fn labels(configured: &BTreeMap<String, String>, redirected: bool) -> BTreeMap<String, String> {
    let mut labels = configured.clone();
    if redirected {
        labels.insert(REDIRECTED_LABEL.to_owned(), "true".to_owned());
    }
    labels
}

/// What this proxy registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub service: ObjectRef,
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Registrar {
    pub cp: ControlPlane,
    pub identity: Arc<Identity>,
    pub registration: Registration,
    pub metrics: Arc<Metrics>,
}

impl Registrar {
    /// Keeps the endpoint registered until `stop` flips, then ends the stream (deregisters) and
    /// returns once the control plane has seen the end, or after a short wait.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), CONTROL_PLANE_RETRY_MAX);
        loop {
            let (tx, rx) = mpsc::channel(4);
            let result = self.session(tx, rx, &mut backoff, stop.clone()).await;
            self.metrics.registered.set(0);
            match result {
                Ok(()) => {
                    info!(service = %self.registration.service, "deregistered");
                    return;
                }
                Err(e) if *stop.borrow() => {
                    info!(service = %self.registration.service, error = %e, "stopped registering");
                    return;
                }
                Err(e) => warn!(error = %e, "registration stream failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One Register stream, until it fails (`Err`) or `stop` flips: then the request stream is
    /// ended cleanly (END_STREAM, not a reset), which the control plane takes as a goodbye and
    /// deregisters at once, and `Ok` once it has closed its side (or after a short wait).
    async fn session(
        &self,
        tx: mpsc::Sender<RegisterRequest>,
        rx: mpsc::Receiver<RegisterRequest>,
        backoff: &mut Backoff,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        let r = &self.registration;
        let open = async {
            let channel = self.identity.connect(&self.cp.addr).await?;
            tx.send(RegisterRequest {
                endpoints: vec![pb::Endpoint {
                    namespace: r.service.namespace.clone(),
                    service: r.service.name.clone(),
                    address: r.address.to_string(),
                    identity: self.identity.svid().id.to_string(),
                    labels: r.labels.clone().into_iter().collect(),
                    weight: 1,
                    ready: true,
                    ..Default::default()
                }],
            })
            .await?;
            let responses = RegistrationClient::new(channel)
                .register(ReceiverStream::new(rx))
                .await?
                .into_inner();
            anyhow::Ok(responses)
        };
        // Stopping before the stream is up: nothing of this session is registered.
        let mut responses = tokio::select! {
            r = open => r?,
            () = &mut stopped => return Ok(()),
        };
        let mut heartbeat = Duration::from_secs(5);
        let mut next = tokio::time::Instant::now() + heartbeat;
        loop {
            tokio::select! {
                () = &mut stopped => {
                    // Dropping the sender ends the request stream; the control plane revokes
                    // the lease and ends the response stream.
                    drop(tx);
                    let goodbye = async {
                        while let Ok(Some(_)) = responses.message().await {}
                    };
                    if tokio::time::timeout(Duration::from_secs(2), goodbye).await.is_err() {
                        warn!("the control plane did not acknowledge the deregistration within 2 s");
                    }
                    return Ok(());
                }
                msg = responses.message() => match msg? {
                    Some(resp) => {
                        backoff.reset();
                        if let Some(ttl) = resp.ttl.and_then(|t| Duration::try_from(t).ok()) {
                            heartbeat = (ttl / 3).max(Duration::from_millis(500));
                        }
                        if self.metrics.registered.get() == 0 {
                            info!(service = %r.service, address = %r.address, "registered");
                        }
                        self.metrics.registered.set(i64::from(resp.registered));
                        next = tokio::time::Instant::now() + heartbeat;
                    }
                    None => anyhow::bail!("the control plane ended the stream"),
                },
                () = tokio::time::sleep_until(next) => {
                    tx.send(RegisterRequest::default()).await?;
                    next = tokio::time::Instant::now() + heartbeat;
                }
            }
        }
    }
}
