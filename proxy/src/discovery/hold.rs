//! The endpoint hold after a reconnect: for [`ENDPOINT_HOLD`] after a discovery stream opens,
//! endpoints this proxy held when it opened are kept even when the control plane no longer
//! lists them; once the hold ends, the control plane's view applies as sent.
//!
//! Why: a control plane that has just (re)started may not know every registration yet. The
//! embedded store keeps no registrations across a restart, and on etcd a registration's lease
//! expires while its proxy cannot reach any control plane to heartbeat. Until those proxies
//! register again (within a second of the control plane coming back), the control plane's
//! Endpoints are emptier than the truth, and applying them would fail requests with
//! `no-endpoints` for no reason but the restart. The proxy, not the control plane, keeps them:
//! only the proxy knows what it held (a fresh control plane sees versions, not contents).
//! 20 s is the registration lease's default TTL: a kept endpoint that is really gone lingers
//! no longer than a crashed proxy's registration does anyway, and the balancer's outlier
//! detection steers around it meanwhile. Endpoints the control plane adds are used at once.
//!
//! A merged resource carries the control plane's version plus `+held`, so a reconnect during
//! the hold reports a version the control plane does not have and gets the resource again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::resources::{EndpointSet, Held};

/// How long after a discovery stream opens endpoints held before it are kept.
pub const ENDPOINT_HOLD: Duration = Duration::from_secs(20);

type EndpointMap = BTreeMap<String, Held<EndpointSet>>;

/// The hold of one stream: what was held when it opened, and what the control plane says.
#[derive(Debug)]
pub(super) struct Hold {
    kept: EndpointMap,
    /// The control plane's view: at first what it believes this proxy holds (the versions
    /// reported at connect), then each response applied as sent.
    sent: EndpointMap,
    pub(super) until: Instant,
}

impl Hold {
    /// `None` when nothing is held (the first connection).
    pub(super) fn new(held: &EndpointMap, now: Instant) -> Option<Self> {
        if held.values().all(|h| h.value.endpoints.is_empty()) {
            return None;
        }
        Some(Self {
            kept: held.clone(),
            sent: held.clone(),
            until: now + ENDPOINT_HOLD,
        })
    }

    pub(super) fn update(&mut self, name: String, held: Held<EndpointSet>) {
        self.sent.insert(name, held);
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.sent.remove(name);
    }

    /// The control plane's view, with every kept endpoint it lacks added back; and how many
    /// endpoints were added.
    pub(super) fn view(&self) -> (EndpointMap, usize) {
        let mut out = self.sent.clone();
        let mut added = 0;
        for (name, kept) in &self.kept {
            match out.get(name) {
                None => {
                    added += kept.value.endpoints.len();
                    out.insert(name.clone(), kept.clone());
                }
                Some(sent) => {
                    let missing: Vec<_> = kept
                        .value
                        .endpoints
                        .iter()
                        .filter(|k| !sent.value.endpoints.iter().any(|s| s.address == k.address))
                        .cloned()
                        .collect();
                    if missing.is_empty() {
                        continue;
                    }
                    added += missing.len();
                    let mut endpoints = sent.value.endpoints.clone();
                    endpoints.extend(missing);
                    let merged = Held {
                        version: format!("{}+held", sent.version),
                        value: Arc::new(EndpointSet {
                            service: sent.value.service.clone(),
                            endpoints,
                        }),
                    };
                    out.insert(name.clone(), merged);
                }
            }
        }
        (out, added)
    }

    /// The control plane's view as sent (the hold is over).
    pub(super) fn release(self) -> EndpointMap {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weft_proto::model::{Endpoint, ObjectRef};

    fn set(version: &str, addrs: &[&str]) -> Held<EndpointSet> {
        let service = ObjectRef::new("default", "api");
        Held {
            version: version.into(),
            value: Arc::new(EndpointSet {
                service: service.clone(),
                endpoints: addrs
                    .iter()
                    .map(|a| Endpoint {
                        service: service.clone(),
                        address: a.parse().unwrap(),
                        identity: weft_certs::SpiffeId::parse(
                            "spiffe://mesh.test/ns/default/sa/api",
                        )
                        .unwrap(),
                        labels: Default::default(),
                        weight: 1,
                        ready: true,
                        zone: None,
                    })
                    .collect(),
            }),
        }
    }

    fn addrs(m: &EndpointMap, name: &str) -> Vec<String> {
        let mut v: Vec<String> = m[name]
            .value
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_held_means_no_hold() {
        assert!(Hold::new(&EndpointMap::new(), Instant::now()).is_none());
        let empty = EndpointMap::from([("default/api".into(), set("v0", &[]))]);
        assert!(Hold::new(&empty, Instant::now()).is_none());
    }

    #[test]
    fn a_fresh_control_plane_cannot_empty_what_is_held_but_can_add() {
        let held = EndpointMap::from([(
            "default/api".into(),
            set("v1", &["127.0.0.1:1", "127.0.0.1:2"]),
        )]);
        let mut hold = Hold::new(&held, Instant::now()).unwrap();
        // Unchanged: the held resource as it was, its version unchanged.
        let (view, added) = hold.view();
        assert_eq!((addrs(&view, "default/api").len(), added), (2, 0));
        assert_eq!(view["default/api"].version, "v1");

        // The restarted control plane knows one endpoint, and a new one.
        hold.update(
            "default/api".into(),
            set("v2", &["127.0.0.1:2", "127.0.0.1:3"]),
        );
        let (view, added) = hold.view();
        assert_eq!(
            addrs(&view, "default/api"),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        );
        assert_eq!(added, 1);
        assert_eq!(view["default/api"].version, "v2+held");

        // It removes the resource entirely: what was held stays.
        hold.remove("default/api");
        let (view, added) = hold.view();
        assert_eq!(addrs(&view, "default/api"), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(added, 2);

        // After the hold, the control plane's view as sent.
        hold.update("default/api".into(), set("v3", &["127.0.0.1:3"]));
        let released = hold.release();
        assert_eq!(addrs(&released, "default/api"), ["127.0.0.1:3"]);
        assert_eq!(released["default/api"].version, "v3");
    }
}
