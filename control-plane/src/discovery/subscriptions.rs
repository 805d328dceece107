//! What one discovery stream's client subscribed to and holds, per resource type, and the
//! responses that bring it up to date. Synchronous and I/O-free: the stream in `mod.rs` feeds it
//! requests and snapshots and sends what it queues.
//!
//! What a client holds is not copied per stream. After every push a client holds exactly the
//! resources it wants from the map of the snapshot last pushed, so a subscription keeps that map
//! (an `Arc` shared with the snapshot and every other stream) plus the few exceptions a request
//! creates until its push (versions reported at reconnect, names newly subscribed).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::registry::index::ResourceMap;
use crate::registry::{Resource, ResourceType, Snapshot};
use weft_proto::trace::Parent;

/// Encoded resource bytes per response, past which the rest goes in further responses (a single
/// larger resource still goes whole). tonic keeps each stream's encode buffer at the size of the
/// largest message it sent, for the stream's life, so this bounds what a stream keeps after its
/// initial sync.
pub const RESPONSE_BYTES: usize = 4 * 1024;

/// One response to send, as references into a snapshot until the transport asks for it.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) ty: ResourceType,
    pub(super) system_version: String,
    pub(super) resources: Vec<Arc<Resource>>,
    pub(super) removed: Vec<String>,
    /// Set on the last response of a push caused by a store change (push latency).
    pub(super) observed_at: Option<Instant>,
    /// The span of the traced RPC whose change caused this push (each response of it).
    pub(super) cause: Option<Parent>,
}

/// A resource's share of a response, as counted against [`RESPONSE_BYTES`].
pub(super) fn wire_size(r: &Resource) -> usize {
    r.name.len() + r.version.len() + r.body.type_url.len() + r.body.value.len()
}

/// One client's subscriptions and the responses queued for it.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    types: Vec<(ResourceType, Subscription)>,
    queue: VecDeque<Outgoing>,
}

/// What one client holds of one resource type.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The resource map of the snapshot last pushed: the client holds the entries it wants.
    synced: Arc<ResourceMap>,
    /// Until the next push: names whose held version differs from `synced` (`None`: not held).
    exceptions: HashMap<String, Option<String>>,
    /// Explicitly subscribed names the client must be told do not exist.
    announce_absent: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

impl Subscriptions {
    /// The next response to send, if any.
    pub(super) fn pop(&mut self) -> Option<Outgoing> {
        self.queue.pop_front()
    }

    /// Applies a request's subscription changes for `ty` and queues what they call for. The
    /// first request for a type subscribes to everything when it names nothing (legacy
    /// wildcard), and `initial` (name → version) is what a reconnecting client already holds.
    pub(super) fn on_request(
        &mut self,
        ty: ResourceType,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        initial: BTreeMap<String, String>,
        snap: &Snapshot,
    ) {
        let index = match self.types.iter().position(|(t, _)| *t == ty) {
            Some(_) if subscribe.is_empty() && unsubscribe.is_empty() => return,
            Some(i) => i,
            None => {
                let sub = Subscription {
                    wildcard: subscribe.is_empty(),
                    exceptions: initial.into_iter().map(|(n, v)| (n, Some(v))).collect(),
                    ..Subscription::default()
                };
                self.types.push((ty, sub));
                self.types.len() - 1
            }
        };
        self.types[index].1.subscribe(subscribe, unsubscribe);
        self.push(index, snap, None, None, None);
    }

    /// Brings every subscription up to date with `snap`. `fast`: the subscriptions are up to date
    /// with the snapshot just before it, so only its `changed` set needs looking at. `cause`:
    /// the traced RPC whose change the snapshot brings (carried on to the responses).
    pub(super) fn on_snapshot(
        &mut self,
        snap: &Snapshot,
        fast: bool,
        observed_at: Option<Instant>,
        cause: Option<Parent>,
    ) {
        for i in 0..self.types.len() {
            self.push(i, snap, fast.then_some(&*snap.changed), observed_at, cause);
        }
    }

    /// Queues what the client lacks of subscription `index`: among all it may hold when `changed`
    /// is `None`, else only among the names in `changed`. Afterwards the client holds exactly what
    /// it wants of `snap`.
    fn push(
        &mut self,
        index: usize,
        snap: &Snapshot,
        changed: Option<&BTreeSet<(ResourceType, String)>>,
        observed_at: Option<Instant>,
        cause: Option<Parent>,
    ) {
        let (ty, sub) = &mut self.types[index];
        let ty = *ty;
        let resources = snap.resources(ty);
        let synced = std::mem::replace(&mut sub.synced, resources.clone());
        let exceptions = std::mem::take(&mut sub.exceptions);
        let absent = std::mem::take(&mut sub.announce_absent);
        let sub = &*sub;
        let held = |name: &str| -> Option<&str> {
            if !sub.wants(name) {
                return None;
            }
            match exceptions.get(name) {
                Some(version) => version.as_deref(),
                None => synced.get(name).map(|r| r.version.as_str()),
            }
        };

        let mut candidates: BTreeSet<&str> = absent
            .iter()
            .chain(exceptions.keys())
            .map(String::as_str)
            .collect();
        match changed {
            Some(changed) => candidates.extend(
                changed
                    .iter()
                    .filter(|(t, _)| *t == ty)
                    .map(|(_, n)| n.as_str()),
            ),
            None if sub.wildcard => {
                candidates.extend(resources.keys().map(String::as_str));
                candidates.extend(synced.keys().map(String::as_str));
            }
            None => candidates.extend(sub.names.iter().map(String::as_str)),
        }

        let mut out = Vec::new();
        let mut removed = Vec::new();
        for name in candidates {
            match resources.get(name).filter(|_| sub.wants(name)) {
                Some(r) if held(name) != Some(r.version.as_str()) => out.push(r.clone()),
                Some(_) => {}
                // Tell the client: it held the resource, or asked for it by name.
                None if held(name).is_some() || sub.names.contains(name) => {
                    removed.push(name.to_owned());
                }
                None => {}
            }
        }
        self.enqueue(ty, &snap.system_version, out, removed, observed_at, cause);
    }

    /// Queues `resources` and `removed` as one or more responses of at most [`RESPONSE_BYTES`].
    fn enqueue(
        &mut self,
        ty: ResourceType,
        system_version: &str,
        resources: Vec<Arc<Resource>>,
        removed: Vec<String>,
        observed_at: Option<Instant>,
        cause: Option<Parent>,
    ) {
        if resources.is_empty() && removed.is_empty() {
            return;
        }
        let empty = || Outgoing {
            ty,
            system_version: system_version.to_owned(),
            resources: Vec::new(),
            removed: Vec::new(),
            observed_at: None,
            cause,
        };
        let mut bytes: usize = removed.iter().map(String::len).sum();
        let mut chunk = Outgoing { removed, ..empty() };
        for r in resources {
            let len = wire_size(&r);
            if bytes + len > RESPONSE_BYTES && !chunk.resources.is_empty() {
                self.queue.push_back(std::mem::replace(&mut chunk, empty()));
                bytes = 0;
            }
            bytes += len;
            chunk.resources.push(r);
        }
        chunk.observed_at = observed_at;
        self.queue.push_back(chunk);
    }
}

impl Subscription {
    /// Applies subscription changes, recording what the client does not hold yet.
    fn subscribe(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        for name in subscribe {
            if name == "*" {
                if !self.wildcard {
                    for n in self.synced.keys() {
                        if !self.names.contains(n) {
                            self.exceptions.entry(n.clone()).or_insert(None);
                        }
                    }
                }
                self.wildcard = true;
            } else if self.names.insert(name.clone()) {
                if !self.wildcard {
                    self.exceptions.entry(name.clone()).or_insert(None);
                }
                self.announce_absent.insert(name);
            }
        }
        // The client drops what it unsubscribes from by itself; nothing to send.
        for name in unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(&name);
                self.announce_absent.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
