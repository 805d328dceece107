//! `weft.registry.v1.Registration`: proxies register their own inbound endpoints on a stream
//! that keeps a store lease alive; admins register endpoints outside the mesh.
//!
//! The endpoint identity is the caller's certificate identity. A workload registers only into
//! services of its own namespace (`spiffe://td/ns/<ns>/...`), so a compromised workload cannot
//! put itself behind another team's service.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};
use weft_certs::SpiffeId;
use weft_proto::registry::v1::registration_server::Registration;
use weft_proto::registry::v1::{
    DeregisterRequest, DeregisterResponse, RegisterExternalRequest, RegisterExternalResponse,
    RegisterRequest, RegisterResponse,
};

use crate::authz::Authz;
use crate::metrics::Metrics;
use crate::model::{Endpoint, ObjectRef};
use crate::registry::codec;
use crate::registry::keys::Key;
use crate::store::{Compare, LeaseId, Op, Store, StoreError, Txn, TxnOutcome};

/// Default lease TTL of proxy registrations: a dead proxy's endpoints vanish this long after its
/// last heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);
/// Shortest TTL `RegisterExternal` accepts.
pub const MIN_EXTERNAL_TTL: Duration = Duration::from_secs(5);
/// Most endpoints one stream may hold.
pub const MAX_ENDPOINTS_PER_STREAM: usize = 64;

#[derive(Debug, Clone)]
pub struct RegistrationService {
    store: Arc<dyn Store>,
    authz: Arc<Authz>,
    metrics: Arc<Metrics>,
    lease_ttl: Duration,
}

impl RegistrationService {
    pub fn new(
        store: Arc<dyn Store>,
        authz: Arc<Authz>,
        metrics: Arc<Metrics>,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            store,
            authz,
            metrics,
            lease_ttl,
        }
    }
}

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(m) => Status::unavailable(format!("store: {m}")),
        other => Status::internal(format!("store: {other}")),
    }
}

/// Validates one endpoint a caller sends: its own identity, its own namespace.
fn own_endpoint(
    caller: &SpiffeId,
    mut ep: weft_proto::mesh::v1::Endpoint,
    field: &str,
) -> Result<Endpoint, Status> {
    if ep.identity.is_empty() {
        ep.identity = caller.to_string();
    } else if ep.identity != caller.to_string() {
        return Err(Status::permission_denied(format!(
            "{field}.identity: {} is not the caller's identity {caller}; a proxy registers \
             endpoints only for itself",
            ep.identity
        )));
    }
    let own_ns = caller.workload().ok().map(|(ns, _)| ns.to_owned());
    if own_ns.as_deref() != Some(ep.namespace.as_str()) {
        return Err(Status::permission_denied(format!(
            "{field}.namespace: {caller} may register only into its own namespace, not {:?}",
            ep.namespace
        )));
    }
    Endpoint::try_from(ep).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

type RegisterStream = Pin<Box<dyn Stream<Item = Result<RegisterResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Registration for RegistrationService {
    type RegisterStream = RegisterStream;

    async fn register(
        &self,
        request: Request<Streaming<RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let caller = Authz::caller(&request)?;
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            caller: caller.clone(),
            store: self.store.clone(),
            ttl: self.lease_ttl,
            lease: None,
            held: BTreeMap::new(),
        };
        let metrics = self.metrics.clone();
        let inbound = request.into_inner();
        tokio::spawn(
            async move {
                metrics.registrations_active.inc();
                session.run(inbound, tx).await;
                metrics.registrations_active.dec();
            }
            .instrument(info_span!("registration", identity = %caller)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_external(
        &self,
        request: Request<RegisterExternalRequest>,
    ) -> Result<Response<RegisterExternalResponse>, Status> {
        let admin = self.authz.admin(&request, "register endpoints")?;
        let req = request.into_inner();
        let ep = req
            .endpoint
            .ok_or_else(|| Status::invalid_argument("endpoint: required"))?;
        if ep.identity.is_empty() {
            return Err(Status::invalid_argument(
                "endpoint.identity: required (the SPIFFE ID clients must see)",
            ));
        }
        let ep = Endpoint::try_from(ep)
            .map_err(|e| Status::invalid_argument(format!("endpoint: {e}")))?;
        let lease = match req.ttl {
            None => None,
            Some(ttl) => {
                let ttl = Duration::try_from(ttl)
                    .ok()
                    .filter(|t| *t >= MIN_EXTERNAL_TTL)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "ttl: must be at least {}",
                            humantime::format_duration(MIN_EXTERNAL_TTL)
                        ))
                    })?;
                Some(self.store.grant_lease(ttl).await.map_err(store_status)?)
            }
        };
        let key = Key::Endpoint(ep.service.clone(), ep.address).path();
        let txn = Txn {
            compare: vec![],
            ops: vec![Op::Put {
                key,
                value: codec::encode_endpoint(&ep),
                lease,
            }],
        };
        self.store.txn(txn).await.map_err(store_status)?;
        info!(%admin, service = %ep.service, address = %ep.address, identity = %ep.identity, "registered an external endpoint");
        Ok(Response::new(RegisterExternalResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let admin = self.authz.admin(&request, "deregister endpoints")?;
        let req = request.into_inner();
        let service = ObjectRef::parse(&format!("{}/{}", req.namespace, req.service))
            .map_err(|e| Status::invalid_argument(format!("service: {e}")))?;
        let address = req.address.parse().map_err(|_| {
            Status::invalid_argument(format!("address: {:?} is not IP:PORT", req.address))
        })?;
        let key = Key::Endpoint(service.clone(), address).path();
        let Some(kv) = self.store.get(&key).await.map_err(store_status)? else {
            return Err(Status::not_found(format!(
                "no endpoint {address} in service {service}"
            )));
        };
        let txn = Txn {
            compare: vec![Compare::ModRevision {
                key: key.clone(),
                revision: kv.mod_revision,
            }],
            ops: vec![Op::Delete { key }],
        };
        match self.store.txn(txn).await.map_err(store_status)? {
            TxnOutcome::Committed(_) => {
                info!(%admin, %service, %address, "deregistered an endpoint");
                Ok(Response::new(DeregisterResponse {}))
            }
            TxnOutcome::Conflict => Err(Status::aborted(
                "the endpoint changed while being deregistered; try again",
            )),
        }
    }
}

/// One registration stream: its lease and the endpoints it holds.
struct Session {
    caller: SpiffeId,
    store: Arc<dyn Store>,
    ttl: Duration,
    lease: Option<LeaseId>,
    /// key → endpoint.
    held: BTreeMap<String, Endpoint>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<RegisterRequest>,
        tx: mpsc::Sender<Result<RegisterResponse, Status>>,
    ) {
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                () = tx.closed() => break,
            };
            match msg {
                Ok(Some(req)) => {
                    let reply = self.handle(req).await;
                    let failed = reply.is_err();
                    if let Err(s) = &reply {
                        warn!(code = ?s.code(), error = %s.message(), "registration refused");
                    }
                    if tx.send(reply).await.is_err() || failed {
                        break;
                    }
                }
                Ok(None) => {
                    // A clean goodbye: deregister now rather than at lease expiry.
                    if let Some(lease) = self.lease.take() {
                        match self.store.revoke_lease(lease).await {
                            Ok(()) => info!(endpoints = self.held.len(), "deregistered"),
                            Err(e) => {
                                warn!(error = %e, "revoke on goodbye failed; the lease will expire")
                            }
                        }
                    }
                    return;
                }
                Err(status) => {
                    // A broken stream may be a network blip: the lease expiry decides.
                    info!(error = %status.message(), "registration stream broken; endpoints expire with the lease");
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, req: RegisterRequest) -> Result<RegisterResponse, Status> {
        if req.endpoints.is_empty() {
            self.heartbeat().await?;
        } else {
            self.replace(req.endpoints).await?;
        }
        Ok(RegisterResponse {
            ttl: prost_types::Duration::try_from(self.ttl).ok(),
            registered: u32::try_from(self.held.len()).unwrap_or(u32::MAX),
        })
    }

    async fn heartbeat(&mut self) -> Result<(), Status> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        match self.store.keep_alive(lease).await {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseNotFound(_)) => {
                // Expired (e.g. the store was unreachable longer than the TTL): register again.
                warn!("lease expired; registering again");
                self.lease = None;
                let held: Vec<Endpoint> = self.held.values().cloned().collect();
                self.held.clear();
                self.write(held).await
            }
            Err(e) => Err(store_status(e)),
        }
    }

    async fn replace(
        &mut self,
        endpoints: Vec<weft_proto::mesh::v1::Endpoint>,
    ) -> Result<(), Status> {
        if endpoints.len() > MAX_ENDPOINTS_PER_STREAM {
            return Err(Status::invalid_argument(format!(
                "endpoints: at most {MAX_ENDPOINTS_PER_STREAM} per stream, got {}",
                endpoints.len()
            )));
        }
        let mut valid = Vec::with_capacity(endpoints.len());
        for (i, ep) in endpoints.into_iter().enumerate() {
            valid.push(own_endpoint(&self.caller, ep, &format!("endpoints[{i}]"))?);
        }
        self.write(valid).await
    }

    /// Puts `endpoints` under the stream's lease and deletes what the stream held before but no
    /// longer lists, in one transaction.
    async fn write(&mut self, endpoints: Vec<Endpoint>) -> Result<(), Status> {
        let lease = match self.lease {
            Some(l) => l,
            None => {
                let l = self
                    .store
                    .grant_lease(self.ttl)
                    .await
                    .map_err(store_status)?;
                self.lease = Some(l);
                l
            }
        };
        let next: BTreeMap<String, Endpoint> = endpoints
            .into_iter()
            .map(|e| (Key::Endpoint(e.service.clone(), e.address).path(), e))
            .collect();
        let mut ops: Vec<Op> = self
            .held
            .keys()
            .filter(|k| !next.contains_key(*k))
            .map(|k| Op::Delete { key: k.clone() })
            .collect();
        ops.extend(next.iter().map(|(key, e)| Op::Put {
            key: key.clone(),
            value: codec::encode_endpoint(e),
            lease: Some(lease),
        }));
        match self
            .store
            .txn(Txn {
                compare: vec![],
                ops,
            })
            .await
        {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                self.lease = None;
                return Err(Status::unavailable(
                    "lease expired during registration; retry",
                ));
            }
            Err(e) => return Err(store_status(e)),
        }
        info!(
            endpoints = ?next.values().map(|e| format!("{}@{}", e.service, e.address)).collect::<Vec<_>>(),
            %lease,
            "registered"
        );
        self.held = next;
        Ok(())
    }
}
