//! `weftctl get` tables: one row per object, columns padded to align, as kubectl prints them.

use std::collections::BTreeMap;

use crate::manifest::{EndpointManifest, HttpRouteManifest, Manifest, ServiceManifest};

/// Renders same-kind manifests (the kind of the first decides the columns).
pub(super) fn render(items: &[Manifest]) -> String {
    let (header, rows): (&[&str], Vec<Vec<String>>) = match items.first() {
        None => return String::new(),
        Some(Manifest::Service(_)) => (
            &["NAMESPACE", "NAME", "PORTS", "SELECTOR"],
            items
                .iter()
                .filter_map(|m| match m {
                    Manifest::Service(s) => Some(service_row(s)),
                    _ => None,
                })
                .collect(),
        ),
        Some(Manifest::HttpRoute(_)) => (
            &["NAMESPACE", "NAME", "PARENTS", "BACKENDS"],
            items
                .iter()
                .filter_map(|m| match m {
                    Manifest::HttpRoute(r) => Some(route_row(r)),
                    _ => None,
                })
                .collect(),
        ),
        Some(Manifest::Endpoint(_)) => (
            &[
                "NAMESPACE",
                "SERVICE",
                "ADDRESS",
                "IDENTITY",
                "LABELS",
                "READY",
            ],
            items
                .iter()
                .filter_map(|m| match m {
                    Manifest::Endpoint(e) => Some(endpoint_row(e)),
                    _ => None,
                })
                .collect(),
        ),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let docs = crate::manifest::parse_documents(
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
            render(&items),
            "\
NAMESPACE   NAME      PORTS             SELECTOR
default     reviews   http:8080/http1   app=reviews
data        db        5432/tcp          <none>
"
        );
    }

    #[test]
    fn routes_show_parents_and_weights() {
        let docs = crate::manifest::parse_documents(
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
            render(&items),
            "\
NAMESPACE   NAME     PARENTS        BACKENDS
default     canary   reviews:8080   reviews-v1=90,reviews-v2=10;reviews-v1=1
"
        );
    }
}
