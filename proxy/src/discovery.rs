//! The delta discovery client: one stream to the control plane over mTLS (its identity
//! verified), wildcard subscriptions to Services, Endpoints and the TrustBundle. Each response
//! is converted whole through `TryFrom` into a new [`MeshConfig`] and published, or refused
//! whole with a NACK naming the resource and field, keeping the last good configuration. On a
//! broken stream it reconnects with backoff and reports what it holds
//! (`initial_resource_versions`), so it gets only what changed. Meanwhile it keeps serving on
//! the last configuration. For a while after a reconnect it keeps endpoints the control plane
//! no longer lists ([`hold`]): a control plane that has just restarted may not know them yet.

mod hold;

pub use hold::ENDPOINT_HOLD;

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};
use weft_certs::TrustDomain;
use weft_proto::discovery::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use weft_proto::discovery::v1::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use weft_proto::mesh::v1 as pb;

use crate::backoff::{Backoff, CONTROL_PLANE_RETRY_MAX};
use crate::identity::{ControlPlane, Identity};
use crate::metrics::{Metrics, TypeLabels};
use crate::resources::{EndpointSet, Held, MeshConfig, ServiceConfig, renew_hint, trust_bundle};

/// The types subscribed to, in the order they are requested.
pub const TYPES: [&str; 3] = [
    pb::TRUST_BUNDLE_TYPE_URL,
    pb::SERVICE_TYPE_URL,
    pb::ENDPOINTS_TYPE_URL,
];

/// How a discovery session ended without an error.
enum Ended {
    /// The control plane closed the stream.
    ByServer,
    /// The certificate's issuer changed: open a new stream with the new certificate at once.
    Reopen,
}

#[derive(Debug)]
pub struct Discovery {
    pub cp: ControlPlane,
    pub node_id: String,
    pub identity: Arc<Identity>,
    pub config: watch::Sender<Arc<MeshConfig>>,
    pub metrics: Arc<Metrics>,
    /// What this workload serves: whose inbound policies to compile.
    pub served: crate::authz::Served,
}

impl Discovery {
    /// Keeps a stream open until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), CONTROL_PLANE_RETRY_MAX);
        loop {
            let result = tokio::select! {
                r = self.session(&mut backoff) => r,
                _ = shutdown.changed() => return,
            };
            self.metrics.discovery_connected.set(0);
            match result {
                Ok(Ended::Reopen) => {
                    info!(
                        "the certificate's issuer changed (a root rotation); reopening the discovery stream with it"
                    );
                    continue;
                }
                Ok(Ended::ByServer) => {
                    info!("the control plane closed the discovery stream; reconnecting")
                }
                Err(e) => {
                    warn!(error = %e, "discovery stream failed; serving the last configuration")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn session(&self, backoff: &mut Backoff) -> anyhow::Result<Ended> {
        // The control plane counts proxies by the issuer of the certificate a stream was
        // opened with; a renewal by another CA reopens the stream so that count moves.
        let mut renewals = self.identity.renewals();
        let opened_by = self.identity.issuer_key_id();
        let channel = self.identity.connect(&self.cp.addr).await?;
        let (tx, rx) = mpsc::channel(16);
        let held = self.config.borrow().clone();
        for (i, type_url) in TYPES.iter().enumerate() {
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| Node {
                    id: self.node_id.clone(),
                    identity: self.identity.svid().id.to_string(),
                    ..Default::default()
                }),
                type_url: (*type_url).to_owned(),
                initial_resource_versions: held.versions(type_url),
                ..Default::default()
            })
            .await?;
        }
        let mut inbound = AggregatedDiscoveryClient::new(channel)
            .delta_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.metrics.discovery_connected.set(1);
        info!(control_plane = %self.cp.addr, "discovery stream open");
        let mut hold = hold::Hold::new(&held.endpoints, tokio::time::Instant::now());
        loop {
            let until = hold.as_ref().map(|h| h.until);
            let resp = tokio::select! {
                m = inbound.message() => match m? {
                    Some(resp) => resp,
                    None => return Ok(Ended::ByServer),
                },
                Ok(()) = renewals.changed() => {
                    if self.identity.issuer_key_id() != opened_by {
                        return Ok(Ended::Reopen);
                    }
                    continue;
                }
                () = sleep_until_some(until) => {
                    if let Some(h) = hold.take() {
                        self.release_hold(h);
                    }
                    continue;
                }
            };
            backoff.reset();
            let labels = TypeLabels {
                r#type: type_name(&resp.type_url),
            };
            let nonce = resp.nonce.clone();
            let type_url = resp.type_url.clone();
            let error_detail = match self.apply(resp, &mut hold) {
                Ok(()) => {
                    self.metrics.discovery_acks.get_or_create(&labels).inc();
                    None
                }
                Err(reason) => {
                    self.metrics.discovery_nacks.get_or_create(&labels).inc();
                    warn!(r#type = labels.r#type, %nonce, error = %reason, "refused a discovery response (NACK); keeping the last good configuration");
                    Some(Status {
                        code: tonic::Code::InvalidArgument as i32,
                        message: reason,
                    })
                }
            };
            tx.send(DeltaDiscoveryRequest {
                type_url,
                response_nonce: nonce,
                error_detail,
                ..Default::default()
            })
            .await?;
        }
    }

    /// The hold is over: the control plane's endpoints apply as it sent them.
    fn release_hold(&self, hold: hold::Hold) {
        let current = self.config.borrow().clone();
        let endpoints = hold.release();
        self.metrics.discovery_held_endpoints.set(0);
        let same = endpoints.len() == current.endpoints.len()
            && endpoints
                .iter()
                .zip(&current.endpoints)
                .all(|((n, a), (m, b))| n == m && a.version == b.version);
        if same {
            return;
        }
        info!("endpoint hold over: the control plane's endpoints apply as it lists them");
        let mut next = (*current).clone();
        next.endpoints = endpoints;
        next.generation += 1;
        self.metrics
            .config_generation
            .set(i64::try_from(next.generation).unwrap_or(i64::MAX));
        self.config.send_replace(Arc::new(next));
    }

    /// Converts a whole response into the next configuration and publishes it; on any error
    /// nothing changes (nor does the hold).
    fn apply(
        &self,
        resp: DeltaDiscoveryResponse,
        hold: &mut Option<hold::Hold>,
    ) -> Result<(), String> {
        let current = self.config.borrow().clone();
        // A rotation's renew-early hint rides on the TrustBundle; read it before the response
        // is consumed (the bundle itself is converted and checked by next_config).
        let mut hint = None;
        if resp.type_url == pb::TRUST_BUNDLE_TYPE_URL {
            for r in &resp.resources {
                if let Some(any) = &r.resource
                    && let Ok(msg) = <pb::TrustBundle as Message>::decode(any.value.as_slice())
                {
                    hint = Some(renew_hint(&msg));
                }
            }
        }
        let td = self.identity.bundle().trust_domain().clone();
        let (next, kept) = next_config_held(&current, resp, &td, &self.served, hold.as_mut())?;
        if let Some((kept, until)) = kept {
            if kept > 0 && self.metrics.discovery_held_endpoints.get() == 0 {
                info!(
                    kept,
                    for_at_most = ?until.saturating_duration_since(tokio::time::Instant::now()),
                    "keeping endpoints the control plane does not list (yet) after reconnecting"
                );
            }
            self.metrics
                .discovery_held_endpoints
                .set(i64::try_from(kept).unwrap_or(i64::MAX));
        }
        if next.inbound != current.inbound {
            let inbound = &next.inbound;
            info!(
                policies = inbound.as_ref().map_or(0, |i| i.rules.policies.len()),
                default = %inbound.as_ref().map_or_else(Default::default, |i| i.rules.default),
                "inbound policy updated"
            );
        }
        if let Some(b) = &next.trust_bundle
            && current.trust_bundle.as_ref().map(|c| &c.version) != Some(&b.version)
        {
            info!(version = %b.version, roots = b.value.roots().len(), "trust bundle updated");
            self.identity.set_bundle((*b.value).clone());
        }
        if let Some(hint) = hint {
            self.identity.set_renew_hint(hint);
        }
        self.metrics
            .config_generation
            .set(i64::try_from(next.generation).unwrap_or(i64::MAX));
        debug!(generation = next.generation, system_version = %next.system_version, "configuration accepted");
        self.config.send_replace(Arc::new(next));
        Ok(())
    }
}

/// The configuration that follows `current` once `resp` is accepted, or why the whole response
/// is refused (a NACK; `current` stays). Pure: [`Discovery::apply`] logs and publishes the
/// result, and the fuzz target `discovery_response` feeds it arbitrary responses.
pub fn next_config(
    current: &MeshConfig,
    resp: DeltaDiscoveryResponse,
    td: &TrustDomain,
    served: &crate::authz::Served,
) -> Result<MeshConfig, String> {
    next_config_held(current, resp, td, served, None).map(|(next, _)| next)
}

/// [`next_config`] during an endpoint hold: Endpoints go through `hold` (which keeps what the
/// control plane no longer lists), and the count it keeps comes back with its end.
fn next_config_held(
    current: &MeshConfig,
    resp: DeltaDiscoveryResponse,
    td: &TrustDomain,
    served: &crate::authz::Served,
    hold: Option<&mut hold::Hold>,
) -> Result<(MeshConfig, Option<(usize, tokio::time::Instant)>), String> {
    let mut kept = None;
    let mut next = current.clone();
    match resp.type_url.as_str() {
        pb::SERVICE_TYPE_URL => {
            for r in resp.resources {
                let (name, held) = convert::<pb::Service, ServiceConfig>(r, &resp.type_url)?;
                let id = &held.value.service.id;
                check_name(&name, &format!("{}/{}", id.namespace, id.name))?;
                next.services.insert(name, held);
            }
            for name in &resp.removed_resources {
                next.services.remove(name);
            }
            let inbound = crate::authz::compile(served, &next);
            if inbound != next.inbound {
                next.inbound = inbound;
            }
        }
        pb::ENDPOINTS_TYPE_URL => {
            let mut converted = Vec::with_capacity(resp.resources.len());
            for r in resp.resources {
                let (name, held) = convert::<pb::Endpoints, EndpointSet>(r, &resp.type_url)?;
                let id = &held.value.service;
                check_name(&name, &format!("{}/{}", id.namespace, id.name))?;
                converted.push((name, held));
            }
            match hold {
                None => {
                    next.endpoints.extend(converted);
                    for name in &resp.removed_resources {
                        next.endpoints.remove(name);
                    }
                }
                Some(hold) => {
                    for (name, held) in converted {
                        hold.update(name, held);
                    }
                    for name in &resp.removed_resources {
                        hold.remove(name);
                    }
                    let (view, n) = hold.view();
                    kept = Some((n, hold.until));
                    next.endpoints = view;
                }
            }
        }
        pb::TRUST_BUNDLE_TYPE_URL => {
            for r in resp.resources {
                let (name, version, msg) = decode::<pb::TrustBundle>(r, &resp.type_url)?;
                check_name(&name, &msg.trust_domain)?;
                let bundle = trust_bundle(msg, td).map_err(|e| format!("resource {name}: {e}"))?;
                next.trust_bundle = Some(Held {
                    version,
                    value: Arc::new(bundle),
                });
            }
            // The roots are never dropped: a removal leaves the last bundle in place.
        }
        other => return Err(format!("type_url {other:?} was not subscribed to")),
    }
    next.system_version = resp.system_version_info;
    next.generation += 1;
    Ok((next, kept))
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn decode<M: Message + Default>(
    r: weft_proto::discovery::v1::Resource,
    type_url: &str,
) -> Result<(String, String, M), String> {
    let name = r.name;
    let any = r
        .resource
        .ok_or_else(|| format!("resource {name}: no body"))?;
    if any.type_url != type_url {
        return Err(format!(
            "resource {name}: body is {:?}, the response is {type_url:?}",
            any.type_url
        ));
    }
    let msg = M::decode(any.value.as_slice()).map_err(|e| format!("resource {name}: {e}"))?;
    Ok((name, r.version, msg))
}

fn convert<M, T>(
    r: weft_proto::discovery::v1::Resource,
    type_url: &str,
) -> Result<(String, Held<T>), String>
where
    M: Message + Default,
    T: TryFrom<M, Error = weft_proto::model::Invalid>,
{
    let (name, version, msg) = decode::<M>(r, type_url)?;
    let value = T::try_from(msg).map_err(|e| format!("resource {name}: {e}"))?;
    Ok((
        name,
        Held {
            version,
            value: Arc::new(value),
        },
    ))
}

fn check_name(name: &str, content: &str) -> Result<(), String> {
    if name == content {
        Ok(())
    } else {
        Err(format!("resource {name}: its body is for {content}"))
    }
}

fn type_name(type_url: &str) -> &'static str {
    match type_url {
        pb::SERVICE_TYPE_URL => "service",
        pb::ENDPOINTS_TYPE_URL => "endpoints",
        pb::TRUST_BUNDLE_TYPE_URL => "trust_bundle",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::discovery::v1::Resource;

    fn service(ns: &str, port: u32) -> Resource {
        let body = pb::Service {
            namespace: ns.into(),
            name: "reviews".into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port,
                protocol: pb::Protocol::Http1.into(),
            }],
            ..Default::default()
        };
        Resource {
            name: format!("{ns}/reviews"),
            version: "v1".into(),
            resource: Some(prost_types::Any {
                type_url: pb::SERVICE_TYPE_URL.into(),
                value: body.encode_to_vec(),
            }),
        }
    }

    fn response(resources: Vec<Resource>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: pb::SERVICE_TYPE_URL.into(),
            resources,
            system_version_info: "s1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_response_is_taken_whole_or_refused_whole() {
        let td = TrustDomain::parse("mesh.test").unwrap();
        let served = crate::authz::Served::default();
        let empty = MeshConfig::default();
        let next =
            next_config(&empty, response(vec![service("shop", 9080)]), &td, &served).unwrap();
        assert_eq!(next.services.keys().collect::<Vec<_>>(), ["shop/reviews"]);
        assert_eq!((next.generation, next.system_version.as_str()), (1, "s1"));
        // One bad resource refuses the response, naming it; nothing of it is taken.
        let err = next_config(
            &next,
            response(vec![service("web", 8080), service("bad", 0)]),
            &td,
            &served,
        )
        .unwrap_err();
        assert!(err.starts_with("resource bad/reviews:"), "{err}");
        let mut wrong = response(vec![]);
        wrong.type_url = "type.googleapis.com/other".into();
        assert!(next_config(&next, wrong, &td, &served).is_err());
    }
}
