//! The store key layout, relative to the store prefix (default `/weft/`):
//!
//! | key                                   | value (JSON)                          | written by           |
//! |---------------------------------------|---------------------------------------|----------------------|
//! | `services/<namespace>/<name>`         | a `weft.io/v1alpha1` Service manifest | `weftctl apply`      |
//! | `routes/<namespace>/<name>`           | a `gateway.networking.k8s.io/v1` HTTPRoute manifest | `weftctl apply` |
//! | `endpoints/<namespace>/<service>/<address>` | a `weft.io/v1alpha1` Endpoint manifest | registrations (leased), `weftctl register` |
//! | `authorizationpolicies/<namespace>/<name>` | a `weft.io/v1alpha1` AuthorizationPolicy manifest | `weftctl apply` |
//! | `ratelimitpolicies/<namespace>/<name>` | a `weft.io/v1alpha1` RateLimitPolicy manifest | `weftctl apply` |
//!
//! `<address>` is `ip:port` as Rust prints a `SocketAddr` (`[fd00::1]:8080` for IPv6). Anything
//! that writes these keys (etcdctl, another controller) is picked up like a registration; a
//! value that does not parse, or whose names disagree with its key, is ignored and counted.

use std::net::SocketAddr;

use crate::model::{ObjectRef, dns_label};

pub const SERVICES: &str = "services/";
pub const ROUTES: &str = "routes/";
pub const ENDPOINTS: &str = "endpoints/";
pub const AUTHORIZATION_POLICIES: &str = "authorizationpolicies/";
pub const RATE_LIMIT_POLICIES: &str = "ratelimitpolicies/";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Service(ObjectRef),
    Route(ObjectRef),
    /// The service the endpoint is registered under, and its address.
    Endpoint(ObjectRef, SocketAddr),
    AuthorizationPolicy(ObjectRef),
    RateLimitPolicy(ObjectRef),
}

impl Key {
    pub fn path(&self) -> String {
        match self {
            Key::Service(id) => format!("{SERVICES}{id}"),
            Key::Route(id) => format!("{ROUTES}{id}"),
            Key::Endpoint(svc, addr) => format!("{ENDPOINTS}{svc}/{addr}"),
            Key::AuthorizationPolicy(id) => format!("{AUTHORIZATION_POLICIES}{id}"),
            Key::RateLimitPolicy(id) => format!("{RATE_LIMIT_POLICIES}{id}"),
        }
    }

    /// Parses a relative key; `None` for keys outside the layout (they are ignored).
    pub fn parse(key: &str) -> Option<Key> {
        let object = |rest: &str| {
            let (ns, name) = rest.split_once('/')?;
            (dns_label(ns).is_ok() && dns_label(name).is_ok()).then(|| ObjectRef::new(ns, name))
        };
        if let Some(rest) = key.strip_prefix(SERVICES) {
            object(rest).map(Key::Service)
        } else if let Some(rest) = key.strip_prefix(ROUTES) {
            object(rest).map(Key::Route)
        } else if let Some(rest) = key.strip_prefix(ENDPOINTS) {
            let (ns, rest) = rest.split_once('/')?;
            let (name, addr) = rest.split_once('/')?;
            let svc = object(&format!("{ns}/{name}"))?;
            let addr: SocketAddr = addr.parse().ok()?;
            Some(Key::Endpoint(svc, addr))
        } else if let Some(rest) = key.strip_prefix(AUTHORIZATION_POLICIES) {
            object(rest).map(Key::AuthorizationPolicy)
        } else if let Some(rest) = key.strip_prefix(RATE_LIMIT_POLICIES) {
            object(rest).map(Key::RateLimitPolicy)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = [
            Key::Service(ObjectRef::new("default", "reviews")),
            Key::Route(ObjectRef::new("default", "reviews-canary")),
            Key::Endpoint(
                ObjectRef::new("default", "reviews"),
                "10.0.0.1:9080".parse().unwrap(),
            ),
            Key::Endpoint(
                ObjectRef::new("default", "reviews"),
                "[fd00::1]:9080".parse().unwrap(),
            ),
            Key::AuthorizationPolicy(ObjectRef::new("shop", "api-from-web")),
            Key::RateLimitPolicy(ObjectRef::new("shop", "api-limits")),
        ];
        for k in keys {
            assert_eq!(Key::parse(&k.path()), Some(k.clone()), "{}", k.path());
        }
        assert_eq!(
            Key::Endpoint(ObjectRef::new("a", "b"), "[fd00::1]:80".parse().unwrap()).path(),
            "endpoints/a/b/[fd00::1]:80"
        );
        assert_eq!(
            Key::AuthorizationPolicy(ObjectRef::new("shop", "p")).path(),
            "authorizationpolicies/shop/p"
        );
        assert_eq!(
            Key::RateLimitPolicy(ObjectRef::new("shop", "p")).path(),
            "ratelimitpolicies/shop/p"
        );
    }

    #[test]
    fn foreign_keys_are_ignored() {
        for k in [
            "",
            "services/",
            "services/default",
            "services/Default/x",
            "routes/a/b/c",
            "endpoints/a/b",
            "endpoints/a/b/not-an-addr",
            "authorizationpolicies/a",
            "ratelimitpolicies/a/B",
            "ratelimits/a/b",
            "other/a/b",
        ] {
            assert_eq!(Key::parse(k), None, "{k}");
        }
    }
}
