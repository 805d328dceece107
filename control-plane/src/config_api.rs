//! `weft.config.v1.Config`: the API behind `weftctl apply/get/delete`.
//!
//! Apply is all or nothing: every document is validated (the model's `TryFrom`, then references
//! against the store plus the batch itself), and the writes go in one store transaction guarded
//! by the mod revisions read during validation, so a concurrent change to the same objects makes
//! the apply fail with ABORTED instead of half-applying or overwriting it. The checks of
//! policies against the mesh and their target services are in [`policy`].

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use weft_proto::config::v1::config_server::Config;
use weft_proto::config::v1::{
    Action, ApplyRequest, ApplyResponse, DeleteRequest, DeleteResponse, Document, GetRequest,
    GetResponse, Kind, Outcome, Violation, Violations, document,
};
use weft_proto::mesh::v1 as pb;

use weft_certs::TrustDomain;

use crate::authz::Authz;
use crate::model::{AuthorizationPolicy, HttpRoute, ObjectRef, RateLimitPolicy, Service};
use crate::registration::store_status;
use crate::registry::Mirror;
use crate::registry::codec;
use crate::registry::keys::{self, Key};
use crate::rpc_trace::{RpcSpan, Tracing};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn, TxnOutcome};

#[derive(Debug, Clone)]
pub struct ConfigService {
    store: Arc<dyn Store>,
    authz: Arc<Authz>,
    /// The mesh's: policies may name only identities of it.
    trust_domain: TrustDomain,
    /// The registry's copy of the store: what Get answers from while the store is unreachable.
    mirror: Arc<Mirror>,
    /// `--otlp-endpoint`: a traced change's revision is linked to its RPC's span.
    tracing: Option<Arc<Tracing>>,
}

impl ConfigService {
    pub fn new(
        store: Arc<dyn Store>,
        authz: Arc<Authz>,
        trust_domain: TrustDomain,
        mirror: Arc<Mirror>,
    ) -> Self {
        Self {
            store,
            authz,
            trust_domain,
            mirror,
            tracing: None,
        }
    }

    /// Links the revisions that traced Apply and Delete calls commit to their spans, so the
    /// discovery pushes they cause are children of those spans.
    pub fn traced(mut self, tracing: Arc<Tracing>) -> Self {
        self.tracing = Some(tracing);
        self
    }

    /// Notes that the RPC `span` (if it is traced) committed `revision`.
    fn link(&self, span: Option<RpcSpan>, revision: crate::store::Revision) {
        if let (Some(t), Some(span)) = (&self.tracing, span) {
            t.links.record(revision, span.0);
        }
    }
}

mod policy;
#[cfg(test)]
mod tests;

/// A validated document, ready to store (or as stored).
enum Object {
    Service(Service),
    Route(HttpRoute),
    AuthorizationPolicy(AuthorizationPolicy),
    RateLimitPolicy(RateLimitPolicy),
}

impl Object {
    /// The domain validation of a config document.
    fn parse(kind: document::Kind) -> Result<Object, crate::model::Invalid> {
        match kind {
            document::Kind::Service(s) => Service::try_from(s).map(Object::Service),
            document::Kind::HttpRoute(r) => HttpRoute::try_from(r).map(Object::Route),
            document::Kind::AuthorizationPolicy(p) => {
                AuthorizationPolicy::try_from(p).map(Object::AuthorizationPolicy)
            }
            document::Kind::RateLimitPolicy(p) => {
                RateLimitPolicy::try_from(p).map(Object::RateLimitPolicy)
            }
        }
    }

    /// A stored value under `key`; `None` when it is invalid or names another object (the
    /// index ignores it the same way).
    fn decode(key: &Key, bytes: &[u8]) -> Option<Object> {
        let o = match key {
            Key::Service(_) => codec::decode_service(bytes).map(Object::Service),
            Key::Route(_) => codec::decode_route(bytes).map(Object::Route),
            Key::AuthorizationPolicy(_) => {
                codec::decode_authorization_policy(bytes).map(Object::AuthorizationPolicy)
            }
            Key::RateLimitPolicy(_) => {
                codec::decode_rate_limit_policy(bytes).map(Object::RateLimitPolicy)
            }
            Key::Endpoint(..) => return None,
        }
        .ok()?;
        (o.key() == *key).then_some(o)
    }

    fn key(&self) -> Key {
        match self {
            Object::Service(s) => Key::Service(s.id.clone()),
            Object::Route(r) => Key::Route(r.id.clone()),
            Object::AuthorizationPolicy(p) => Key::AuthorizationPolicy(p.id.clone()),
            Object::RateLimitPolicy(p) => Key::RateLimitPolicy(p.id.clone()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Route(_) => Kind::HttpRoute,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::RateLimitPolicy(_) => Kind::RateLimitPolicy,
        }
    }

    fn id(&self) -> &ObjectRef {
        match self {
            Object::Service(s) => &s.id,
            Object::Route(r) => &r.id,
            Object::AuthorizationPolicy(p) => &p.id,
            Object::RateLimitPolicy(p) => &p.id,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Object::Service(s) => codec::encode_service(s),
            Object::Route(r) => codec::encode_route(r),
            Object::AuthorizationPolicy(p) => codec::encode_authorization_policy(p),
            Object::RateLimitPolicy(p) => codec::encode_rate_limit_policy(p),
        }
    }

    /// The model's own wire form, as Get serves it.
    fn document(&self) -> Document {
        let kind = match self {
            Object::Service(s) => document::Kind::Service(pb::Service::from(s)),
            Object::Route(r) => document::Kind::HttpRoute(pb::HttpRoute::from(r)),
            Object::AuthorizationPolicy(p) => {
                document::Kind::AuthorizationPolicy(pb::AuthorizationPolicy::from(p))
            }
            Object::RateLimitPolicy(p) => {
                document::Kind::RateLimitPolicy(pb::RateLimitPolicy::from(p))
            }
        };
        Document { kind: Some(kind) }
    }
}

/// The key prefix of a kind's objects.
fn prefix(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Service => Some(keys::SERVICES),
        Kind::HttpRoute => Some(keys::ROUTES),
        Kind::AuthorizationPolicy => Some(keys::AUTHORIZATION_POLICIES),
        Kind::RateLimitPolicy => Some(keys::RATE_LIMIT_POLICIES),
        Kind::Endpoint => Some(keys::ENDPOINTS),
        Kind::Unspecified => None,
    }
}

fn violation(
    document: usize,
    field: impl Into<String>,
    description: impl Into<String>,
) -> Violation {
    Violation {
        document: u32::try_from(document).unwrap_or(u32::MAX),
        field: field.into(),
        description: description.into(),
    }
}

/// INVALID_ARGUMENT with the violations in the message (for humans) and in the details (for
/// weftctl, which maps document indexes back to files).
fn refuse(violations: Vec<Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("document {}: {}: {}", v.document, v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let details = Violations { violations }.encode_to_vec();
    Status::with_details(Code::InvalidArgument, message, details.into())
}

/// The stored objects under `prefixes`, by key, with their mod revisions.
async fn load(
    store: &dyn Store,
    prefixes: &[&str],
) -> Result<BTreeMap<Key, (Object, i64)>, Status> {
    let mut out = BTreeMap::new();
    for prefix in prefixes {
        let listing = store.list(prefix).await.map_err(store_status)?;
        out.extend(listing.items.into_iter().filter_map(|kv: KeyValue| {
            let key = Key::parse(&kv.key)?;
            // An invalid stored value counts as absent, exactly as the index treats it.
            let value = Object::decode(&key, &kv.value)?;
            Some((key, (value, kv.mod_revision)))
        }));
    }
    Ok(out)
}

#[tonic::async_trait]
impl Config for ConfigService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let admin = self.authz.admin(&request, "change mesh config")?;
        let span = request.extensions().get::<RpcSpan>().copied();
        let req = request.into_inner();
        if req.documents.is_empty() {
            return Err(Status::invalid_argument("documents: nothing to apply"));
        }

        let mut violations = Vec::new();
        let mut objects: Vec<(usize, Object)> = Vec::new();
        for (i, doc) in req.documents.into_iter().enumerate() {
            let Some(kind) = doc.kind else {
                violations.push(violation(i, "kind", "the document is empty"));
                continue;
            };
            let parsed = Object::parse(kind);
            match parsed {
                Ok(o) => {
                    if let Some((j, _)) = objects.iter().find(|(_, p)| p.key() == o.key()) {
                        violations.push(violation(
                            i,
                            "metadata.name",
                            format!("{} is also document {j}", o.id()),
                        ));
                    }
                    objects.push((i, o));
                }
                Err(invalid) => violations.extend(
                    invalid
                        .0
                        .into_iter()
                        .map(|e| violation(i, e.field, e.message)),
                ),
            }
        }

        let stored = load(
            &*self.store,
            &[
                keys::SERVICES,
                keys::ROUTES,
                keys::AUTHORIZATION_POLICIES,
                keys::RATE_LIMIT_POLICIES,
            ],
        )
        .await?;
        // Every object as it will be: stored, overridden by this batch.
        let mut after: BTreeMap<Key, &Object> =
            stored.iter().map(|(k, (o, _))| (k.clone(), o)).collect();
        for (_, o) in &objects {
            after.insert(o.key(), o);
        }
        let proposed: BTreeMap<&ObjectRef, &Service> = after
            .values()
            .filter_map(|o| match o {
                Object::Service(s) => Some((&s.id, s)),
                _ => None,
            })
            .collect();
        let mut compare: BTreeMap<String, i64> = BTreeMap::new();
        let revision_of = |key: &Key| stored.get(key).map_or(0, |(_, rev)| *rev);
        for (i, o) in &objects {
            let Object::Route(r) = o else { continue };
            let parents = r.parents.iter().enumerate().map(|(p, parent)| {
                (
                    format!("spec.parentRefs[{p}]"),
                    &parent.service,
                    parent.port,
                )
            });
            let backends = r.rules.iter().enumerate().flat_map(|(k, rule)| {
                rule.backends.iter().enumerate().map(move |(b, backend)| {
                    (
                        format!("spec.rules[{k}].backendRefs[{b}]"),
                        &backend.service,
                        backend.port,
                    )
                })
            });
            for (field, target, port) in parents.chain(backends) {
                check_ref(&proposed, target, port, *i, &field, &mut violations);
                // The referenced service must not change under the apply.
                let key = Key::Service(target.clone());
                compare.insert(key.path(), revision_of(&key));
            }
        }
        let checks = policy::Checks {
            trust_domain: &self.trust_domain,
            services: &proposed,
            rate_limits: after
                .values()
                .filter_map(|o| match o {
                    Object::RateLimitPolicy(p) => Some(p),
                    _ => None,
                })
                .collect(),
        };
        for (i, o) in &objects {
            let target = match o {
                Object::AuthorizationPolicy(p) => checks.authorization(*i, p, &mut violations),
                Object::RateLimitPolicy(p) => checks.rate_limit(*i, p, &mut violations),
                _ => continue,
            };
            // What the checks read of the target service must not change under the apply.
            if let Some(target) = target {
                let key = Key::Service(target);
                compare.insert(key.path(), revision_of(&key));
            }
        }
        if !violations.is_empty() {
            return Err(refuse(violations));
        }

        let mut outcomes = Vec::with_capacity(objects.len());
        let mut ops = Vec::new();
        for (_, o) in &objects {
            let value = o.encode();
            let (stored, rev) = stored
                .get(&o.key())
                .map_or((None, 0), |(v, rev)| (Some(v.encode()), *rev));
            let action = match &stored {
                None => Action::Created,
                Some(v) if *v == value => Action::Unchanged,
                Some(_) => Action::Configured,
            };
            compare.insert(o.key().path(), rev);
            if action != Action::Unchanged {
                ops.push(Op::Put {
                    key: o.key().path(),
                    value,
                    lease: None,
                });
            }
            outcomes.push(Outcome {
                kind: o.kind().into(),
                namespace: o.id().namespace.clone(),
                name: o.id().name.clone(),
                action: action.into(),
            });
        }
        if !req.dry_run && !ops.is_empty() {
            let compare = compare
                .into_iter()
                .map(|(key, revision)| Compare::ModRevision { key, revision })
                .collect();
            match self
                .store
                .txn(Txn { compare, ops })
                .await
                .map_err(store_status)?
            {
                TxnOutcome::Committed(revision) => {
                    self.link(span, revision);
                    let changed: Vec<String> = outcomes
                        .iter()
                        .filter(|o| o.action != Action::Unchanged as i32)
                        .map(|o| format!("{}/{}", o.namespace, o.name))
                        .collect();
                    info!(%admin, revision, ?changed, "applied");
                }
                TxnOutcome::Conflict => {
                    return Err(Status::aborted(
                        "a concurrent change touched the same objects; nothing was applied, apply again",
                    ));
                }
            }
        }
        Ok(Response::new(ApplyResponse { outcomes }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Authz::caller(&request)?;
        let req = request.into_inner();
        let kind = Kind::try_from(req.kind).unwrap_or(Kind::Unspecified);
        let Some(prefix) = prefix(kind) else {
            return Err(Status::invalid_argument("kind: required"));
        };
        let mut prefix = prefix.to_owned();
        if !req.namespace.is_empty() {
            prefix.push_str(&req.namespace);
            prefix.push('/');
            if !req.name.is_empty() {
                prefix.push_str(&req.name);
                if kind == Kind::Endpoint {
                    prefix.push('/');
                }
            }
        }
        let (items, stale) = match self.store.list(&prefix).await {
            Ok(listing) => {
                self.mirror.reachable();
                (listing.items, None)
            }
            // Unreachable: the last state, said to be stale, rather than nothing.
            Err(StoreError::Unavailable(reason)) => {
                self.mirror.lost();
                let Some(last) = self.mirror.list(&prefix) else {
                    return Err(store_status(StoreError::Unavailable(reason)));
                };
                warn!(%reason, revision = last.revision, unreachable_for = ?last.unreachable_for, "store unreachable; get answered from the last state");
                let stale = weft_proto::config::v1::Stale {
                    reason,
                    unreachable_for_ms: u64::try_from(last.unreachable_for.as_millis())
                        .unwrap_or(u64::MAX),
                    revision: last.revision,
                };
                (last.items, Some(stale))
            }
            Err(e) => return Err(store_status(e)),
        };
        let mut out = GetResponse {
            stale,
            ..GetResponse::default()
        };
        for kv in items {
            let Some(key) = Key::parse(&kv.key) else {
                continue;
            };
            match key {
                Key::Endpoint(..) => {
                    if let Ok(e) = codec::decode_endpoint(&kv.value) {
                        out.endpoints.push(pb::Endpoint::from(&e));
                    }
                }
                _ => {
                    if let Some(o) = Object::decode(&key, &kv.value)
                        && (req.name.is_empty() || o.id().name == req.name)
                    {
                        out.documents.push(o.document());
                    }
                }
            }
        }
        Ok(Response::new(out))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let admin = self.authz.admin(&request, "change mesh config")?;
        let span = request.extensions().get::<RpcSpan>().copied();
        let req = request.into_inner();
        if req.objects.is_empty() {
            return Err(Status::invalid_argument("objects: nothing to delete"));
        }
        let mut targets = Vec::new();
        for (i, o) in req.objects.iter().enumerate() {
            let id = ObjectRef::parse(&format!("{}/{}", o.namespace, o.name))
                .map_err(|e| Status::invalid_argument(format!("objects[{i}]: {e}")))?;
            let key = match Kind::try_from(o.kind).unwrap_or(Kind::Unspecified) {
                Kind::Service => Key::Service(id),
                Kind::HttpRoute => Key::Route(id),
                Kind::AuthorizationPolicy => Key::AuthorizationPolicy(id),
                Kind::RateLimitPolicy => Key::RateLimitPolicy(id),
                Kind::Endpoint => {
                    return Err(Status::invalid_argument(format!(
                        "objects[{i}]: endpoints are removed with Deregister (weftctl deregister)"
                    )));
                }
                Kind::Unspecified => {
                    return Err(Status::invalid_argument(format!(
                        "objects[{i}].kind: required"
                    )));
                }
            };
            targets.push((o.kind, key));
        }
        let routes: BTreeMap<ObjectRef, (HttpRoute, i64)> = load(&*self.store, &[keys::ROUTES])
            .await?
            .into_iter()
            .filter_map(|(_, (o, rev))| match o {
                Object::Route(r) => Some((r.id.clone(), (r, rev))),
                _ => None,
            })
            .collect();
        // key → the mod revision it must still have at commit (deduplicated across targets).
        let mut guarded: BTreeMap<String, i64> = BTreeMap::new();
        let mut ops = Vec::new();
        let mut outcomes = Vec::new();
        for (kind, key) in &targets {
            let path = key.path();
            let Some(kv) = self.store.get(&path).await.map_err(store_status)? else {
                return Err(Status::not_found(format!("{path} does not exist")));
            };
            if let Key::Service(id) = key {
                // A route still pointing at the service (and not deleted with it) would dangle.
                // Policies may dangle: they apply again when the service comes back.
                let user = routes.iter().find(|(rid, (r, _))| {
                    !targets
                        .iter()
                        .any(|(_, k)| *k == Key::Route((*rid).clone()))
                        && (r.parents.iter().any(|p| p.service == *id)
                            || r.rules
                                .iter()
                                .flat_map(|x| &x.backends)
                                .any(|b| b.service == *id))
                });
                if let Some((rid, _)) = user {
                    return Err(Status::failed_precondition(format!(
                        "service {id} is referenced by HTTPRoute {rid}: delete or change the route first"
                    )));
                }
                for (rid, (_, rev)) in &routes {
                    guarded.insert(Key::Route(rid.clone()).path(), *rev);
                }
            }
            guarded.insert(path.clone(), kv.mod_revision);
            ops.push(Op::Delete { key: path });
            let id = match key {
                Key::Service(id)
                | Key::Route(id)
                | Key::AuthorizationPolicy(id)
                | Key::RateLimitPolicy(id)
                | Key::Endpoint(id, _) => id,
            };
            outcomes.push(Outcome {
                kind: *kind,
                namespace: id.namespace.clone(),
                name: id.name.clone(),
                action: Action::Deleted.into(),
            });
        }
        let compare = guarded
            .into_iter()
            .map(|(key, revision)| Compare::ModRevision { key, revision })
            .collect();
        match self
            .store
            .txn(Txn { compare, ops })
            .await
            .map_err(store_status)?
        {
            TxnOutcome::Committed(revision) => {
                self.link(span, revision);
                info!(%admin, revision, objects = outcomes.len(), "deleted");
                Ok(Response::new(DeleteResponse { outcomes }))
            }
            TxnOutcome::Conflict => Err(Status::aborted(
                "a concurrent change touched the same objects; nothing was deleted, try again",
            )),
        }
    }
}

fn check_ref(
    proposed: &BTreeMap<&ObjectRef, &Service>,
    target: &ObjectRef,
    port: Option<u16>,
    document: usize,
    field: &str,
    violations: &mut Vec<Violation>,
) {
    match proposed.get(target) {
        None => violations.push(violation(
            document,
            format!("{field}.name"),
            format!("Service {target} does not exist (apply it first, or in the same apply)"),
        )),
        Some(s) => {
            if let Some(p) = port
                && s.port(p).is_none()
            {
                violations.push(violation(
                    document,
                    format!("{field}.port"),
                    format!("Service {target} has no port {p}"),
                ));
            }
        }
    }
}
