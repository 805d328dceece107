//! The I/O-free index: validated objects in, discovery resources with content versions out.
//!
//! [`Index::apply`] records a change and marks the resources it can affect; [`Index::flush`]
//! recomputes only those, keeps the ones whose bytes changed, and returns a [`Snapshot`] that
//! every discovery stream shares (fan-out never recomputes per stream). Versions are hashes of
//! the encoded resource, so replicas reading the same store agree on them, and a resource that
//! is recomputed to the same bytes keeps its version (no spurious push).
//!
//! A Service resource carries what applies to the service: its HTTPRoutes, the
//! AuthorizationPolicies that target it or its namespace, its RateLimitPolicy, and its effective
//! default inbound policy (its own, else the control plane's; never UNSPECIFIED).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use prost::Message;
use weft_proto::mesh::v1 as pb;

use crate::model::{
    AuthorizationPolicy, DefaultInbound, Endpoint, HttpRoute, ObjectRef, PolicyTarget,
    RateLimitPolicy, Service,
};
use crate::store::Revision;

/// The discovery resource types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Service,
    Endpoints,
    TrustBundle,
}

impl ResourceType {
    pub const ALL: [ResourceType; 3] = [Self::Service, Self::Endpoints, Self::TrustBundle];

    pub fn type_url(self) -> &'static str {
        match self {
            Self::Service => pb::SERVICE_TYPE_URL,
            Self::Endpoints => pb::ENDPOINTS_TYPE_URL,
            Self::TrustBundle => pb::TRUST_BUNDLE_TYPE_URL,
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// A short name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Endpoints => "endpoints",
            Self::TrustBundle => "trust_bundle",
        }
    }
}

/// One encoded resource, shared by every stream that sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: prost_types::Any,
}

impl Resource {
    fn new(ty: ResourceType, name: String, msg: &impl Message) -> Self {
        let value = msg.encode_to_vec();
        let version = hash_hex(&[ty.type_url().as_bytes(), &value]);
        Resource {
            name,
            version,
            body: prost_types::Any {
                type_url: ty.type_url().to_owned(),
                value,
            },
        }
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn hash_hex(parts: &[&[u8]]) -> String {
    digest(parts)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What [`Index::apply`] takes: one validated object set or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Service(ObjectRef, Option<Service>),
    /// A route and the store revision that created it (its age, for Gateway API's tie-break).
    Route(ObjectRef, Option<(Revision, HttpRoute)>),
    Endpoint(ObjectRef, SocketAddr, Option<Endpoint>),
    AuthorizationPolicy(ObjectRef, Option<AuthorizationPolicy>),
    RateLimitPolicy(ObjectRef, Option<RateLimitPolicy>),
}

pub type ResourceMap = BTreeMap<String, Arc<Resource>>;

/// An immutable view of every resource, published to the discovery streams.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases by one with every published snapshot of this process (not across replicas).
    pub generation: u64,
    /// A hash over every (type, name, version): equal on replicas holding equal resources.
    pub system_version: String,
    pub services: Arc<ResourceMap>,
    pub endpoints: Arc<ResourceMap>,
    pub trust_bundles: Arc<ResourceMap>,
    /// What differs from generation `generation - 1` (added, changed or removed).
    pub changed: Arc<BTreeSet<(ResourceType, String)>>,
}

impl Snapshot {
    pub fn resources(&self, ty: ResourceType) -> &Arc<ResourceMap> {
        match ty {
            ResourceType::Service => &self.services,
            ResourceType::Endpoints => &self.endpoints,
            ResourceType::TrustBundle => &self.trust_bundles,
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    services: BTreeMap<ObjectRef, Service>,
    /// Each with the store revision that created it.
    routes: BTreeMap<ObjectRef, (Revision, HttpRoute)>,
    /// Keyed by (namespace, service, address) so a namespace is one range.
    endpoints: BTreeMap<(ObjectRef, SocketAddr), Endpoint>,
    authorization_policies: BTreeMap<ObjectRef, AuthorizationPolicy>,
    rate_limit_policies: BTreeMap<ObjectRef, RateLimitPolicy>,
    /// For services that do not set `spec.defaultInboundPolicy`.
    default_inbound: DefaultInbound,
    trust_bundle: Option<pb::TrustBundle>,
    dirty: BTreeSet<(ResourceType, String)>,
    published: Snapshot,
    /// XOR of per-resource hashes, so the system version updates in O(changes).
    system_hash: [u8; 16],
}

impl Index {
    pub fn new(trust_bundle: pb::TrustBundle) -> Self {
        let mut index = Index::default();
        index.set_trust_bundle(trust_bundle);
        index
    }

    pub fn set_trust_bundle(&mut self, bundle: pb::TrustBundle) {
        if let Some(old) = &self.trust_bundle {
            self.dirty
                .insert((ResourceType::TrustBundle, old.trust_domain.clone()));
        }
        self.dirty
            .insert((ResourceType::TrustBundle, bundle.trust_domain.clone()));
        self.trust_bundle = Some(bundle);
    }

    /// The control plane's `--default-inbound-policy`: what a service that does not set its own
    /// gets in discovery.
    pub fn set_default_inbound(&mut self, default: DefaultInbound) {
        if default == self.default_inbound {
            return;
        }
        self.default_inbound = default;
        let ids: Vec<ObjectRef> = self
            .services
            .iter()
            .filter(|(_, s)| s.default_inbound.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.mark(ResourceType::Service, &id);
        }
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Service(id, svc) => {
                self.mark(ResourceType::Service, &id);
                self.mark(ResourceType::Endpoints, &id);
                match svc {
                    Some(s) => self.services.insert(id, s),
                    None => self.services.remove(&id),
                };
            }
            Change::Route(id, route) => {
                let old = match route {
                    Some((created, r)) => self
                        .routes
                        .insert(id, (created, r.clone()))
                        .map(|(_, r)| r)
                        .into_iter()
                        .chain([r])
                        .collect(),
                    None => self
                        .routes
                        .remove(&id)
                        .map(|(_, r)| r)
                        .into_iter()
                        .collect::<Vec<_>>(),
                };
                for r in old {
                    for p in &r.parents {
                        self.mark(ResourceType::Service, &p.service);
                    }
                }
            }
            Change::Endpoint(svc, addr, ep) => {
                let key = (svc, addr);
                let old = match ep {
                    Some(e) => self
                        .endpoints
                        .insert(key, e.clone())
                        .into_iter()
                        .chain([e])
                        .collect(),
                    None => self.endpoints.remove(&key).into_iter().collect::<Vec<_>>(),
                };
                for e in &old {
                    let ns = &e.service.namespace;
                    let affected: Vec<ObjectRef> = self
                        .services_in(ns)
                        .filter(|s| s.selects(e))
                        .map(|s| s.id.clone())
                        .collect();
                    for id in affected {
                        self.mark(ResourceType::Endpoints, &id);
                    }
                }
            }
            Change::AuthorizationPolicy(id, policy) => {
                let old = match policy {
                    Some(p) => self.authorization_policies.insert(id.clone(), p.clone()),
                    None => self.authorization_policies.remove(&id),
                };
                let new = self
                    .authorization_policies
                    .get(&id)
                    .map(|p| p.target.clone());
                for target in old.map(|p| p.target).into_iter().chain(new) {
                    self.mark_target(&id.namespace, &target);
                }
            }
            Change::RateLimitPolicy(id, policy) => {
                let old = match policy {
                    Some(p) => self.rate_limit_policies.insert(id.clone(), p.clone()),
                    None => self.rate_limit_policies.remove(&id),
                };
                let new = self.rate_limit_policies.get(&id).map(|p| p.service.clone());
                for service in old.map(|p| p.service).into_iter().chain(new) {
                    self.mark(
                        ResourceType::Service,
                        &ObjectRef::new(&id.namespace, service),
                    );
                }
            }
        }
    }

    /// Marks the Service resources a policy of namespace `ns` with `target` applies to. A
    /// service created later computes its policies then.
    fn mark_target(&mut self, ns: &str, target: &PolicyTarget) {
        match target {
            PolicyTarget::Service(name) => {
                self.mark(ResourceType::Service, &ObjectRef::new(ns, name))
            }
            PolicyTarget::Namespace => {
                let ids: Vec<ObjectRef> = self.services_in(ns).map(|s| s.id.clone()).collect();
                for id in ids {
                    self.mark(ResourceType::Service, &id);
                }
            }
        }
    }

    /// Replaces the whole state (after a re-list); `flush` then publishes only the differences.
    pub fn reset(&mut self, changes: impl IntoIterator<Item = Change>) {
        let removals: Vec<Change> = (self
            .services
            .keys()
            .map(|id| Change::Service(id.clone(), None)))
        .chain(self.routes.keys().map(|id| Change::Route(id.clone(), None)))
        .chain(
            self.authorization_policies
                .keys()
                .map(|id| Change::AuthorizationPolicy(id.clone(), None)),
        )
        .chain(
            self.rate_limit_policies
                .keys()
                .map(|id| Change::RateLimitPolicy(id.clone(), None)),
        )
        .collect();
        for c in removals {
            self.apply(c);
        }
        // Every endpoint's resource is already dirty: its service's was marked above.
        self.endpoints.clear();
        for c in changes {
            self.apply(c);
        }
    }

    fn mark(&mut self, ty: ResourceType, id: &ObjectRef) {
        self.dirty.insert((ty, id.to_string()));
    }

    fn services_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        Self::in_namespace(&self.services, ns)
    }

    /// The objects of `map` in namespace `ns`, by name.
    fn in_namespace<'a, T>(
        map: &'a BTreeMap<ObjectRef, T>,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a T> + 'a {
        map.range(ObjectRef::new(ns, "")..)
            .take_while(move |(id, _)| id.namespace == ns)
            .map(|(_, v)| v)
    }

    fn endpoints_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let start = (ObjectRef::new(ns, ""), SocketAddr::from(([0, 0, 0, 0], 0)));
        self.endpoints
            .range(start..)
            .take_while(move |((svc, _), _)| svc.namespace == ns)
            .map(|(_, e)| e)
    }

    fn compute(&self, ty: ResourceType, name: &str) -> Option<Resource> {
        match ty {
            ResourceType::TrustBundle => self
                .trust_bundle
                .as_ref()
                .filter(|b| b.trust_domain == name)
                .map(|b| Resource::new(ty, name.to_owned(), b)),
            ResourceType::Service => {
                let id = ObjectRef::parse(name).ok()?;
                let svc = self.services.get(&id)?;
                let mut msg = pb::Service::from(svc);
                // Oldest first, then by namespace/name: the order in which Gateway API breaks
                // ties between equally specific matches of different routes.
                let mut routes: Vec<(&Revision, &ObjectRef, &HttpRoute)> = self
                    .routes
                    .iter()
                    .filter(|(_, (_, r))| r.parents.iter().any(|p| p.service == id))
                    .map(|(rid, (created, r))| (created, rid, r))
                    .collect();
                routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                msg.routes = routes
                    .into_iter()
                    .map(|(_, _, r)| pb::HttpRoute::from(r))
                    .collect();
                self.fill_inbound(&mut msg, svc);
                Some(Resource::new(ty, name.to_owned(), &msg))
            }
            ResourceType::Endpoints => {
                let id = ObjectRef::parse(name).ok()?;
                let svc = self.services.get(&id)?;
                let mut selected: Vec<&Endpoint> = self
                    .endpoints_in(&id.namespace)
                    .filter(|e| svc.selects(e))
                    .collect();
                selected.sort_by(|a, b| (a.address, &a.service).cmp(&(b.address, &b.service)));
                let msg = pb::Endpoints {
                    namespace: id.namespace.clone(),
                    service: id.name.clone(),
                    endpoints: selected.into_iter().map(pb::Endpoint::from).collect(),
                };
                Some(Resource::new(ty, name.to_owned(), &msg))
            }
        }
    }

    /// A Service resource's inbound policy: the effective default, the AuthorizationPolicies
    /// that target the service or its namespace (by name: they share the namespace), and its
    /// RateLimitPolicy (the config API admits one; of several written past it, the first by
    /// name).
    fn fill_inbound(&self, msg: &mut pb::Service, svc: &Service) {
        let ns = &svc.id.namespace;
        let default = svc.default_inbound.unwrap_or(self.default_inbound);
        msg.default_inbound_policy = DefaultInbound::to_pb(Some(default)).into();
        msg.authorization_policies = Self::in_namespace(&self.authorization_policies, ns)
            .filter(|p| p.targets(&svc.id))
            .map(pb::AuthorizationPolicy::from)
            .collect();
        msg.rate_limit_policy = Self::in_namespace(&self.rate_limit_policies, ns)
            .find(|p| p.targets(&svc.id))
            .map(pb::RateLimitPolicy::from);
    }

    /// Whether [`Index::flush`] has anything to do.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Recomputes what changed since the last flush and returns the snapshot to publish (the
    /// same `Arc`s as before when nothing changed).
    pub fn flush(&mut self) -> Snapshot {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() {
            return self.published.clone();
        }
        let mut services = (*self.published.services).clone();
        let mut endpoints = (*self.published.endpoints).clone();
        let mut trust_bundles = (*self.published.trust_bundles).clone();
        let mut changed = BTreeSet::new();
        for (ty, name) in dirty {
            let map = match ty {
                ResourceType::Service => &mut services,
                ResourceType::Endpoints => &mut endpoints,
                ResourceType::TrustBundle => &mut trust_bundles,
            };
            let new = self.compute(ty, &name);
            let old = map.get(&name);
            if old.map(|r| &r.version) == new.as_ref().map(|r| &r.version) {
                continue;
            }
            if let Some(old) = old {
                xor(&mut self.system_hash, &entry_hash(ty, &name, &old.version));
            }
            match new {
                Some(r) => {
                    xor(&mut self.system_hash, &entry_hash(ty, &name, &r.version));
                    map.insert(name.clone(), Arc::new(r));
                }
                None => {
                    map.remove(&name);
                }
            }
            changed.insert((ty, name));
        }
        if changed.is_empty() {
            return self.published.clone();
        }
        self.published = Snapshot {
            generation: self.published.generation + 1,
            system_version: self
                .system_hash
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            services: Arc::new(services),
            endpoints: Arc::new(endpoints),
            trust_bundles: Arc::new(trust_bundles),
            changed: Arc::new(changed),
        };
        self.published.clone()
    }

    pub fn services(&self) -> &BTreeMap<ObjectRef, Service> {
        &self.services
    }

    pub fn routes(&self) -> &BTreeMap<ObjectRef, (Revision, HttpRoute)> {
        &self.routes
    }

    pub fn default_inbound(&self) -> DefaultInbound {
        self.default_inbound
    }
}

fn entry_hash(ty: ResourceType, name: &str, version: &str) -> [u8; 16] {
    let d = digest(&[
        ty.type_url().as_bytes(),
        name.as_bytes(),
        version.as_bytes(),
    ]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn xor(acc: &mut [u8; 16], h: &[u8; 16]) {
    for (a, b) in acc.iter_mut().zip(h) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests;
