//! `weftctl get` tables: one row per object, columns padded to align, as kubectl prints them.

use std::collections::{BTreeMap, BTreeSet};

use weft_control_plane::manifest::{
    AuthorizationPolicyManifest, EndpointManifest, HttpRouteManifest, Manifest, Metadata,
    RateLimitPolicyManifest, RateLimitSpec, ServiceManifest, TargetRefSpec,
};

/// The services that exist, as (namespace, name): what a policy's STATUS is judged against.
pub(super) type Services = BTreeSet<(String, String)>;

/// Renders same-kind manifests (the kind of the first decides the columns). `services` is
/// read for policies only.
pub(super) fn render(items: &[Manifest], services: &Services) -> String {
    let Some(first) = items.first() else {
        return String::new();
    };
    let header: &[&str] = match first {
        Manifest::Service(_) => &["NAMESPACE", "NAME", "PORTS", "SELECTOR"],
        Manifest::HttpRoute(_) => &["NAMESPACE", "NAME", "PARENTS", "BACKENDS"],
        Manifest::AuthorizationPolicy(_) => {
            &["NAMESPACE", "NAME", "TARGET", "ACTION", "MODE", "STATUS"]
        }
        Manifest::RateLimitPolicy(_) => &[
            "NAMESPACE",
            "NAME",
            "TARGET",
            "TOTAL",
            "PER-IDENTITY",
            "STATUS",
        ],
        Manifest::Endpoint(_) => &[
            "NAMESPACE",
            "SERVICE",
            "ADDRESS",
            "IDENTITY",
            "LABELS",
            "READY",
        ],
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .filter(|m| std::mem::discriminant(*m) == std::mem::discriminant(first))
        .map(|m| match m {
            Manifest::Service(s) => service_row(s),
            Manifest::HttpRoute(r) => route_row(r),
            Manifest::AuthorizationPolicy(p) => authorization_row(p, services),
            Manifest::RateLimitPolicy(p) => rate_limit_row(p, services),
            Manifest::Endpoint(e) => endpoint_row(e),
        })
        .collect();
    align(header, &rows)
}

fn align(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                l.push_str(cell);
                l.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            } else {
                l.push_str(cell);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn pairs(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn service_row(s: &ServiceManifest) -> Vec<String> {
    let ports = s
        .spec
        .ports
        .iter()
        .map(|p| {
            if p.name.is_empty() {
                format!("{}/{}", p.port, p.protocol)
            } else {
                format!("{}:{}/{}", p.name, p.port, p.protocol)
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    vec![
        s.metadata.namespace.clone(),
        s.metadata.name.clone(),
        ports,
        pairs(&s.spec.selector),
    ]
}

/// Parents as `name[:port]` (namespace shown only when it differs from the route's); backends
/// as `name=weight` per rule, rules separated by `;`.
fn route_row(r: &HttpRouteManifest) -> Vec<String> {
    let ns = &r.metadata.namespace;
    let qualified = |namespace: &str, name: &str| {
        if namespace.is_empty() || namespace == ns {
            name.to_owned()
        } else {
            format!("{namespace}/{name}")
        }
    };
    let parents = r
        .spec
        .parent_refs
        .iter()
        .map(|p| match p.port {
            Some(port) => format!("{}:{port}", qualified(&p.namespace, &p.name)),
            None => qualified(&p.namespace, &p.name),
        })
        .collect::<Vec<_>>()
        .join(",");
    let backends = r
        .spec
        .rules
        .iter()
        .map(|rule| {
            rule.backend_refs
                .iter()
                .map(|b| {
                    format!(
                        "{}={}",
                        qualified(&b.namespace, &b.name),
                        b.weight.unwrap_or(1)
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(";");
    vec![ns.clone(), r.metadata.name.clone(), parents, backends]
}

fn endpoint_row(e: &EndpointManifest) -> Vec<String> {
    vec![
        e.metadata.namespace.clone(),
        e.spec.service.clone(),
        e.spec.address.clone(),
        e.spec.identity.clone(),
        pairs(&e.spec.labels),
        e.spec.ready.to_string(),
    ]
}

/// A policy's row: namespace, name, `Kind/name` of its target, the kind's own `columns`, and
/// whether the target exists (a Service by name; a Namespace when it has any service).
fn policy_row(
    meta: &Metadata,
    target: Option<&TargetRefSpec>,
    columns: [String; 2],
    services: &Services,
) -> Vec<String> {
    let ns = &meta.namespace;
    let (target, attached) = match target {
        None => ("<none>".to_owned(), false),
        Some(t) => {
            let kind = if t.kind.is_empty() {
                "Service"
            } else {
                &t.kind
            };
            let attached = match kind {
                "Namespace" => services.iter().any(|(n, _)| n == ns),
                _ => services.contains(&(ns.clone(), t.name.clone())),
            };
            (format!("{kind}/{}", t.name), attached)
        }
    };
    let [a, b] = columns;
    let status = if attached { "attached" } else { "not attached" };
    vec![ns.clone(), meta.name.clone(), target, a, b, status.into()]
}

fn authorization_row(p: &AuthorizationPolicyManifest, services: &Services) -> Vec<String> {
    let action = p.spec.action.clone().unwrap_or_else(|| "<none>".into());
    let mode = p.spec.mode.clone().unwrap_or_else(|| "Enforce".into());
    policy_row(
        &p.metadata,
        p.spec.target_ref.as_ref(),
        [action, mode],
        services,
    )
}

/// `50/s`, or `50/s,burst=100` when the bucket holds more than a second's worth.
fn limit(l: Option<&RateLimitSpec>) -> String {
    match l {
        None => "<none>".into(),
        Some(l) => match l.burst {
            Some(b) if b != l.requests_per_second => {
                format!("{}/s,burst={b}", l.requests_per_second)
            }
            _ => format!("{}/s", l.requests_per_second),
        },
    }
}

fn rate_limit_row(p: &RateLimitPolicyManifest, services: &Services) -> Vec<String> {
    let columns = [
        limit(p.spec.total.as_ref()),
        limit(p.spec.per_identity.as_ref()),
    ];
    policy_row(&p.metadata, p.spec.target_ref.as_ref(), columns, services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let docs = weft_control_plane::manifest::parse_documents(
            "t",
            "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: reviews}
spec: {ports: [{name: http, port: 8080, protocol: http1}], selector: {app: reviews}}
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: db, namespace: data}
spec: {ports: [{port: 5432, protocol: tcp}]}
",
        )
        .unwrap();
        let items: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
        assert_eq!(
            render(&items, &Services::new()),
            "\
NAMESPACE   NAME      PORTS             SELECTOR
default     reviews   http:8080/http1   app=reviews
data        db        5432/tcp          <none>
"
        );
    }

    #[test]
    fn routes_show_parents_and_weights() {
        let docs = weft_control_plane::manifest::parse_documents(
            "t",
            "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary}
spec:
  parentRefs: [{name: reviews, port: 8080}]
  rules:
  - backendRefs: [{name: reviews-v1, weight: 90}, {name: reviews-v2, weight: 10}]
  - backendRefs: [{name: reviews-v1}]
",
        )
        .unwrap();
        let items: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
        assert_eq!(
            render(&items, &Services::new()),
            "\
NAMESPACE   NAME     PARENTS        BACKENDS
default     canary   reviews:8080   reviews-v1=90,reviews-v2=10;reviews-v1=1
"
        );
    }

    #[test]
    fn policies_show_their_target_and_whether_it_exists() {
        let docs = weft_control_plane::manifest::parse_documents(
            "t",
            "\
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-from-web, namespace: shop}
spec: {targetRef: {kind: Service, name: api}, action: Allow}
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec: {targetRef: {kind: Namespace, name: shop}, action: Deny, mode: Audit}
---
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gone, namespace: shop}
spec: {targetRef: {name: old}, action: Deny}
",
        )
        .unwrap();
        let items: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
        let services: Services = [("shop".to_owned(), "api".to_owned())].into();
        assert_eq!(
            render(&items, &services),
            "\
NAMESPACE   NAME           TARGET           ACTION   MODE      STATUS
shop        api-from-web   Service/api      Allow    Enforce   attached
shop        audit-all      Namespace/shop   Deny     Audit     attached
shop        gone           Service/old      Deny     Enforce   not attached
"
        );
        // A namespace with no service: nothing to attach to.
        let none = render(&items[1..2], &Services::new());
        assert!(none.ends_with("Audit   not attached\n"), "{none}");

        let docs = weft_control_plane::manifest::parse_documents(
            "t",
            "\
apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-limits, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  total: {requestsPerSecond: 1000, burst: 2000}
  perIdentity: {requestsPerSecond: 50}
",
        )
        .unwrap();
        let items: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
        assert_eq!(
            render(&items, &services),
            "\
NAMESPACE   NAME         TARGET        TOTAL               PER-IDENTITY   STATUS
shop        api-limits   Service/api   1000/s,burst=2000   50/s           attached
"
        );
    }
}
