//! `weft.config.v1.Config`: the API behind `weftctl apply/get/delete`.
//!
//! Apply is all or nothing: every document is validated (the model's `TryFrom`, then references
//! against the store plus the batch itself), and the writes go in one store transaction guarded
//! by the mod revisions read during validation, so a concurrent change to the same objects makes
//! the apply fail with ABORTED instead of half-applying or overwriting it.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tonic::{Code, Request, Response, Status};
use tracing::info;
use weft_proto::config::v1::config_server::Config;
use weft_proto::config::v1::{
    Action, ApplyRequest, ApplyResponse, DeleteRequest, DeleteResponse, Document, GetRequest,
    GetResponse, Kind, Outcome, Violation, Violations, document,
};
use weft_proto::mesh::v1 as pb;

use crate::authz::Authz;
use crate::model::{HttpRoute, ObjectRef, Service};
use crate::registration::store_status;
use crate::registry::codec;
use crate::registry::keys::{self, Key};
use crate::store::{Compare, KeyValue, Op, Store, Txn, TxnOutcome};

#[derive(Debug, Clone)]
pub struct ConfigService {
    store: Arc<dyn Store>,
    authz: Arc<Authz>,
}

impl ConfigService {
    pub fn new(store: Arc<dyn Store>, authz: Arc<Authz>) -> Self {
        Self { store, authz }
    }
}

/// A validated document, ready to store.
enum Object {
    Service(Service),
    Route(HttpRoute),
}

impl Object {
    fn key(&self) -> Key {
        match self {
            Object::Service(s) => Key::Service(s.id.clone()),
            Object::Route(r) => Key::Route(r.id.clone()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Route(_) => Kind::HttpRoute,
        }
    }

    fn id(&self) -> &ObjectRef {
        match self {
            Object::Service(s) => &s.id,
            Object::Route(r) => &r.id,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Object::Service(s) => codec::encode_service(s),
            Object::Route(r) => codec::encode_route(r),
        }
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

/// The stored services or routes, by id, with their mod revisions.
async fn load<T>(
    store: &dyn Store,
    prefix: &str,
    decode: fn(&[u8]) -> Result<T, String>,
) -> Result<BTreeMap<ObjectRef, (T, i64)>, Status> {
    let listing = store.list(prefix).await.map_err(store_status)?;
    Ok(listing
        .items
        .into_iter()
        .filter_map(|kv: KeyValue| {
            let id = match Key::parse(&kv.key)? {
                Key::Service(id) | Key::Route(id) => id,
                Key::Endpoint(..) => return None,
            };
            // An invalid stored value counts as absent, exactly as the index treats it.
            let value = decode(&kv.value).ok()?;
            Some((id, (value, kv.mod_revision)))
        })
        .collect())
}

#[tonic::async_trait]
impl Config for ConfigService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let admin = self.authz.admin(&request, "change mesh config")?;
        let req = request.into_inner();
        if req.documents.is_empty() {
            return Err(Status::invalid_argument("documents: nothing to apply"));
        }

        let mut violations = Vec::new();
        let mut objects: Vec<(usize, Object)> = Vec::new();
        for (i, doc) in req.documents.into_iter().enumerate() {
            let parsed = match doc.kind {
                Some(document::Kind::Service(s)) => Service::try_from(s).map(Object::Service),
                Some(document::Kind::HttpRoute(r)) => HttpRoute::try_from(r).map(Object::Route),
                None => {
                    violations.push(violation(i, "kind", "the document is empty"));
                    continue;
                }
            };
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

        let services = load(&*self.store, keys::SERVICES, codec::decode_service).await?;
        let routes = load(&*self.store, keys::ROUTES, codec::decode_route).await?;
        // The services as they will be: stored, overridden by this batch.
        let mut proposed: BTreeMap<&ObjectRef, &Service> =
            services.iter().map(|(id, (s, _))| (id, s)).collect();
        for (_, o) in &objects {
            if let Object::Service(s) = o {
                proposed.insert(&s.id, s);
            }
        }
        let mut compare: BTreeMap<String, i64> = BTreeMap::new();
        let revision_of = |id: &ObjectRef| services.get(id).map_or(0, |(_, rev)| *rev);
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
                compare.insert(Key::Service(target.clone()).path(), revision_of(target));
            }
        }
        if !violations.is_empty() {
            return Err(refuse(violations));
        }

        let mut outcomes = Vec::with_capacity(objects.len());
        let mut ops = Vec::new();
        for (_, o) in &objects {
            let value = o.encode();
            let (stored, rev) = match o {
                Object::Service(s) => services
                    .get(&s.id)
                    .map(|(v, rev)| (codec::encode_service(v), *rev)),
                Object::Route(r) => routes
                    .get(&r.id)
                    .map(|(v, rev)| (codec::encode_route(v), *rev)),
            }
            .map_or((None, 0), |(v, rev)| (Some(v), rev));
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
        let prefix = match kind {
            Kind::Service => keys::SERVICES,
            Kind::HttpRoute => keys::ROUTES,
            Kind::Endpoint => keys::ENDPOINTS,
            Kind::Unspecified => return Err(Status::invalid_argument("kind: required")),
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
        let listing = self.store.list(&prefix).await.map_err(store_status)?;
        let mut out = GetResponse::default();
        for kv in listing.items {
            let Some(key) = Key::parse(&kv.key) else {
                continue;
            };
            match key {
                Key::Service(id) if req.name.is_empty() || id.name == req.name => {
                    if let Ok(s) = codec::decode_service(&kv.value) {
                        out.documents.push(Document {
                            kind: Some(document::Kind::Service(pb::Service::from(&s))),
                        });
                    }
                }
                Key::Route(id) if req.name.is_empty() || id.name == req.name => {
                    if let Ok(r) = codec::decode_route(&kv.value) {
                        out.documents.push(Document {
                            kind: Some(document::Kind::HttpRoute(pb::HttpRoute::from(&r))),
                        });
                    }
                }
                Key::Endpoint(..) => {
                    if let Ok(e) = codec::decode_endpoint(&kv.value) {
                        out.endpoints.push(pb::Endpoint::from(&e));
                    }
                }
                _ => {}
            }
        }
        Ok(Response::new(out))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let admin = self.authz.admin(&request, "change mesh config")?;
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
        let routes = load(&*self.store, keys::ROUTES, codec::decode_route).await?;
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
                Key::Service(id) | Key::Route(id) | Key::Endpoint(id, _) => id,
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
