//! The Kubernetes-style documents people write and read: `weftctl apply` input, `weftctl get -o
//! yaml|json` output, and the JSON the registry keeps in the store (so `etcdctl get` shows the
//! same shape a person applied).
//!
//! The kinds:
//! - `apiVersion: weft.io/v1alpha1`, `kind: Service`
//! - `apiVersion: gateway.networking.k8s.io/v1`, `kind: HTTPRoute` (Gateway API names, casing
//!   and durations)
//! - `apiVersion: weft.io/v1alpha1`, `kind: AuthorizationPolicy` and `kind: RateLimitPolicy`
//!   (inbound policy, converted in [`policy`])
//! - `apiVersion: weft.io/v1alpha1`, `kind: Endpoint` (output and storage only; endpoints are
//!   registered, never applied)
//!
//! Parsing goes YAML → `serde_json::Value` (one per document) → the typed structs below (with
//! `deny_unknown_fields` everywhere, so a typo is an error naming its path) → wire types
//! ([`convert`]; [`policy`] for the policy kinds and a Service's `spec.defaultInboundPolicy`;
//! [`traffic`] for a Service's `spec.trafficPolicy` and an HTTPRoute's
//! `retry.weft.io/` annotations) → the domain `TryFrom` in [`crate::model`], the one validation
//! boundary. Every problem names the file, the document number and the field. This module does
//! no I/O.

mod convert;
mod duration;
mod policy;
#[cfg(test)]
mod tests;
mod traffic;
mod types;

use std::fmt;

use weft_proto::config::v1 as cfg;
use weft_proto::config::v1::document::Kind as DocKind;
use weft_proto::mesh::v1 as pb;

use crate::model::{self, FieldError};

pub use duration::{format_duration, parse_duration};
pub use types::*;

/// `apiVersion` of Weft's own kinds (Service, AuthorizationPolicy, RateLimitPolicy, Endpoint).
pub const WEFT_API_VERSION: &str = "weft.io/v1alpha1";
/// `apiVersion` of HTTPRoute.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// `metadata.namespace` when a document leaves it out.
pub const DEFAULT_NAMESPACE: &str = "default";

// ---- errors ---------------------------------------------------------------------------------

/// Where a document came from: `reviews.yaml: document 2 (HTTPRoute default/reviews)`, or
/// `routes.json: document 1, item 3 (…)` for an object inside a `List`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File path, or `-` for stdin.
    pub source: String,
    /// 1-based, counting non-empty documents.
    pub number: usize,
    /// 1-based place in the document's `items` when the document is a `List`.
    pub item: Option<usize>,
    /// `Kind namespace/name`, when the document got far enough to say.
    pub label: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.number)?;
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        if let Some(l) = &self.label {
            write!(f, " ({l})")?;
        }
        Ok(())
    }
}

/// One problem in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The document.
    pub origin: Origin,
    /// Field path in manifest terms, when the problem has one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// In document order; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Rendering output failed (it cannot for these types; the error exists so nothing panics).
#[derive(Debug, thiserror::Error)]
#[error("render {format}: {message}")]
pub struct RenderError {
    format: &'static str,
    message: String,
}

// ---- parsing --------------------------------------------------------------------------------

/// A parsed, locally valid document and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// File and document number, for mapping server-side violations back.
    pub origin: Origin,
    /// What goes into `ApplyRequest.documents`.
    pub document: cfg::Document,
}

/// Parses multi-document YAML (`---`; empty documents skipped) into config documents, checked
/// structurally and by the domain validation. Fails with every problem of every document.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<cfg::Document>, ManifestError> {
    Ok(parse_manifests(source, text)?
        .into_iter()
        .map(|p| p.document)
        .collect())
}

/// [`parse_documents`], keeping each document's [`Origin`].
pub fn parse_manifests(source: &str, text: &str) -> Result<Vec<Parsed>, ManifestError> {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for_each_document(source, text, &mut problems, |origin, value, problems| {
        match document_from_value(value) {
            Ok(document) => parsed.push(Parsed { origin, document }),
            Err(errs) => problems.extend(errs.into_iter().map(|e| Problem {
                origin: origin.clone(),
                field: e.field,
                message: e.message,
            })),
        }
    });
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(ManifestError { problems })
    }
}

/// What `weftctl delete -f` needs of each document: kind, namespace and name, read leniently
/// (a file that no longer validates can still be deleted by).
pub fn parse_refs(
    source: &str,
    text: &str,
) -> Result<Vec<(Origin, cfg::ObjectRef)>, ManifestError> {
    let mut refs = Vec::new();
    let mut problems = Vec::new();
    for_each_document(source, text, &mut problems, |origin, value, problems| {
        let (kind, errs) = check_kind(&value);
        let name = value
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        match kind {
            Some(kind) if !name.is_empty() => refs.push((
                origin,
                cfg::ObjectRef {
                    kind: kind.into(),
                    namespace: namespace_of(&value).to_owned(),
                    name: name.to_owned(),
                },
            )),
            _ => {
                let mut errs = errs;
                if errs.is_empty() {
                    errs.push(Raw::at("metadata.name", "required"));
                }
                problems.extend(errs.into_iter().map(|e| Problem {
                    origin: origin.clone(),
                    field: e.field,
                    message: e.message,
                }));
            }
        }
    });
    if problems.is_empty() {
        Ok(refs)
    } else {
        Err(ManifestError { problems })
    }
}

/// Runs `f` on each non-empty document of `text`, and on each item of a document that is a
/// `List` (`apiVersion: v1`, `kind: List`, `items: […]`, as `kubectl get -o json` and `weftctl
/// get -o json` print several objects). A YAML syntax error ends the walk (the parser cannot
/// resynchronise reliably) and is recorded against the document it is in.
fn for_each_document(
    source: &str,
    text: &str,
    problems: &mut Vec<Problem>,
    mut f: impl FnMut(Origin, serde_json::Value, &mut Vec<Problem>),
) {
    let options = serde_saphyr::options! { with_snippet: false };
    let mut bytes = text.as_bytes();
    let docs = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut bytes, options);
    for (i, doc) in docs.enumerate() {
        let mut origin = Origin {
            source: source.to_owned(),
            number: i + 1,
            item: None,
            label: None,
        };
        match doc {
            Ok(value) if value.get("kind").and_then(|k| k.as_str()) == Some("List") => {
                match list_items(value) {
                    Ok(items) => {
                        for (j, item) in items.into_iter().enumerate() {
                            let origin = Origin {
                                item: Some(j + 1),
                                label: label_of(&item),
                                ..origin.clone()
                            };
                            f(origin, item, problems);
                        }
                    }
                    Err(e) => problems.push(Problem {
                        origin,
                        field: e.field,
                        message: e.message,
                    }),
                }
            }
            Ok(value) => {
                origin.label = label_of(&value);
                f(origin, value, problems);
            }
            Err(e) => {
                problems.push(Problem {
                    origin,
                    field: None,
                    message: format!("invalid YAML: {e}"),
                });
                return;
            }
        }
    }
}

/// The objects of a `List` document.
fn list_items(mut list: serde_json::Value) -> Result<Vec<serde_json::Value>, Raw> {
    let version = list.get("apiVersion").and_then(|v| v.as_str());
    if version != Some("v1") {
        return Err(Raw::at(
            "apiVersion",
            format!(
                "a List is apiVersion v1, got {}",
                version.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"))
            ),
        ));
    }
    match list.get_mut("items").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(items)) => Ok(items),
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(_) => Err(Raw::at("items", "must be a list of objects")),
    }
}

/// A problem before it knows its document.
#[derive(Debug)]
struct Raw {
    field: Option<String>,
    message: String,
}

impl Raw {
    fn at(field: &str, message: impl Into<String>) -> Self {
        Raw {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

impl From<FieldError> for Raw {
    fn from(e: FieldError) -> Self {
        Raw {
            field: Some(e.field),
            message: e.message,
        }
    }
}

fn namespace_of(value: &serde_json::Value) -> &str {
    value
        .pointer("/metadata/namespace")
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_NAMESPACE)
}

fn label_of(value: &serde_json::Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let name = value.pointer("/metadata/name")?.as_str()?;
    Some(format!("{kind} {}/{name}", namespace_of(value)))
}

const KNOWN: &str = "weftctl applies Service, AuthorizationPolicy and RateLimitPolicy (weft.io/v1alpha1) and HTTPRoute (gateway.networking.k8s.io/v1)";

/// The config kind of a document, after checking `apiVersion` against `kind`.
fn check_kind(value: &serde_json::Value) -> (Option<cfg::Kind>, Vec<Raw>) {
    if !value.is_object() {
        return (
            None,
            vec![Raw {
                field: None,
                message: "a document must be a mapping with apiVersion, kind, metadata and spec"
                    .into(),
            }],
        );
    }
    let kind = match value.get("kind") {
        None => return (None, vec![Raw::at("kind", format!("required: {KNOWN}"))]),
        Some(k) => k.as_str().unwrap_or_default(),
    };
    let (want_api, config_kind) = match kind {
        "Service" => (WEFT_API_VERSION, cfg::Kind::Service),
        "HTTPRoute" => (GATEWAY_API_VERSION, cfg::Kind::HttpRoute),
        "AuthorizationPolicy" => (WEFT_API_VERSION, cfg::Kind::AuthorizationPolicy),
        "RateLimitPolicy" => (WEFT_API_VERSION, cfg::Kind::RateLimitPolicy),
        "Endpoint" => {
            return (
                None,
                vec![Raw::at(
                    "kind",
                    "Endpoint objects are registered (weftctl register, or a proxy), not applied",
                )],
            );
        }
        other => {
            return (
                None,
                vec![Raw::at("kind", format!("unknown kind {other:?}: {KNOWN}"))],
            );
        }
    };
    match value.get("apiVersion").map(|v| v.as_str()) {
        Some(Some(api)) if api == want_api => (Some(config_kind), vec![]),
        None => (
            None,
            vec![Raw::at("apiVersion", format!("required: {want_api}"))],
        ),
        Some(got) => (
            None,
            vec![Raw::at(
                "apiVersion",
                format!(
                    "{:?} does not serve kind {kind}: use {want_api}",
                    got.unwrap_or_default()
                ),
            )],
        ),
    }
}

/// Typed deserialization with the path of the first structural error.
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Raw> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Raw {
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

/// The typed manifest of an applied `kind`, converted to its wire document, with the
/// conversion's findings (the domain validation has not run yet).
fn convert_value(
    kind: cfg::Kind,
    value: serde_json::Value,
) -> Result<(DocKind, Vec<FieldError>), Raw> {
    fn with<M, P>(
        value: serde_json::Value,
        to_pb: fn(&M) -> (P, Vec<FieldError>),
        wrap: fn(P) -> DocKind,
    ) -> Result<(DocKind, Vec<FieldError>), Raw>
    where
        M: serde::de::DeserializeOwned,
    {
        let m: M = typed(value)?;
        let (p, conv) = to_pb(&m);
        Ok((wrap(p), conv))
    }
    match kind {
        cfg::Kind::Service => with(value, convert::service_to_pb, DocKind::Service),
        cfg::Kind::HttpRoute => with(value, convert::route_to_pb, DocKind::HttpRoute),
        cfg::Kind::AuthorizationPolicy => with(
            value,
            policy::authorization_to_pb,
            DocKind::AuthorizationPolicy,
        ),
        cfg::Kind::RateLimitPolicy => with(
            value,
            policy::rate_limit_policy_to_pb,
            DocKind::RateLimitPolicy,
        ),
        // check_kind never answers these.
        cfg::Kind::Endpoint | cfg::Kind::Unspecified => Err(Raw::at(
            "kind",
            format!("{} is not applied", kind_name(kind)),
        )),
    }
}

fn document_from_value(value: serde_json::Value) -> Result<cfg::Document, Vec<Raw>> {
    let (kind, errs) = check_kind(&value);
    let Some(kind) = kind else { return Err(errs) };
    let (doc, conv) = convert_value(kind, value).map_err(|e| vec![e])?;
    let doc = match doc {
        DocKind::Service(s) => validated::<model::Service, _>(s, conv).map(DocKind::Service),
        DocKind::HttpRoute(r) => validated::<model::HttpRoute, _>(r, conv).map(DocKind::HttpRoute),
        DocKind::AuthorizationPolicy(p) => {
            validated::<model::AuthorizationPolicy, _>(p, conv).map(DocKind::AuthorizationPolicy)
        }
        DocKind::RateLimitPolicy(p) => {
            validated::<model::RateLimitPolicy, _>(p, conv).map(DocKind::RateLimitPolicy)
        }
    }?;
    Ok(document(doc))
}

/// The manifest `kind` of a config kind.
pub fn kind_name(kind: cfg::Kind) -> &'static str {
    match kind {
        cfg::Kind::Service => "Service",
        cfg::Kind::HttpRoute => "HTTPRoute",
        cfg::Kind::AuthorizationPolicy => "AuthorizationPolicy",
        cfg::Kind::RateLimitPolicy => "RateLimitPolicy",
        cfg::Kind::Endpoint => "Endpoint",
        cfg::Kind::Unspecified => "(unspecified kind)",
    }
}

fn document(kind: DocKind) -> cfg::Document {
    cfg::Document { kind: Some(kind) }
}

/// Runs the domain validation and merges its findings with the conversion's; a field the
/// conversion already refused (say an unknown protocol) is not reported twice.
fn validated<T, P>(wire: P, conversion: Vec<FieldError>) -> Result<P, Vec<Raw>>
where
    P: Clone,
    T: TryFrom<P, Error = model::Invalid>,
{
    let mut errs = conversion;
    if let Err(invalid) = T::try_from(wire.clone()) {
        for e in invalid.0 {
            let covered = errs.iter().any(|c| {
                e.field == c.field
                    || e.field.starts_with(&format!("{}.", c.field))
                    || e.field.starts_with(&format!("{}[", c.field))
            });
            if !covered {
                errs.push(e);
            }
        }
    }
    if errs.is_empty() {
        Ok(wire)
    } else {
        Err(errs.into_iter().map(Raw::from).collect())
    }
}

// ---- JSON (the store) and output -------------------------------------------------------------

fn json_error(kind: &str, e: Vec<Raw>) -> ManifestError {
    ManifestError {
        problems: e
            .into_iter()
            .map(|r| Problem {
                origin: Origin {
                    source: format!("stored {kind} JSON"),
                    number: 1,
                    item: None,
                    label: None,
                },
                field: r.field,
                message: r.message,
            })
            .collect(),
    }
}

/// The stored JSON of a config document: its manifest form.
pub fn document_to_json(d: &cfg::Document) -> Vec<u8> {
    match Manifest::of_document(d) {
        // Serializing these plain structs (string keys only) cannot fail.
        Some(m) => serde_json::to_vec(&m).unwrap_or_default(),
        None => b"null".to_vec(),
    }
}

/// Reads a stored document of `kind`. Structural checks and conversion only: the caller's
/// `TryFrom` into the domain types is the validation.
pub fn document_from_json(kind: cfg::Kind, bytes: &[u8]) -> Result<cfg::Document, ManifestError> {
    let err = |e| json_error(kind_name(kind), e);
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        err(vec![Raw {
            field: None,
            message: e.to_string(),
        }])
    })?;
    let (found, errs) = check_kind(&value);
    if found != Some(kind) {
        let mut errs = errs;
        if errs.is_empty() {
            errs.push(Raw::at("kind", format!("expected {}", kind_name(kind))));
        }
        return Err(err(errs));
    }
    let (doc, conv) = convert_value(kind, value).map_err(|e| err(vec![e]))?;
    if !conv.is_empty() {
        return Err(err(conv.into_iter().map(Raw::from).collect()));
    }
    Ok(document(doc))
}

/// The stored JSON of a registered endpoint: its manifest form.
pub fn endpoint_to_json(e: &pb::Endpoint) -> Vec<u8> {
    // Serializing these plain structs (string keys only) cannot fail.
    serde_json::to_vec(&EndpointManifest::from(e)).unwrap_or_default()
}

/// Reads a stored endpoint (structure only; `model::Endpoint::try_from` validates).
pub fn endpoint_from_json(bytes: &[u8]) -> Result<pb::Endpoint, ManifestError> {
    let err = |e| json_error("Endpoint", e);
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        err(vec![Raw {
            field: None,
            message: e.to_string(),
        }])
    })?;
    let m: EndpointManifest = typed(value).map_err(|e| err(vec![e]))?;
    if m.api_version != WEFT_API_VERSION || m.kind != "Endpoint" {
        return Err(err(vec![Raw::at(
            "kind",
            format!(
                "expected {WEFT_API_VERSION} Endpoint, got {} {}",
                m.api_version, m.kind
            ),
        )]));
    }
    Ok(convert::endpoint_to_pb(&m))
}

/// Multi-document YAML (`---` between documents), re-appliable for every kind but Endpoint.
pub fn to_yaml(items: &[Manifest]) -> Result<String, RenderError> {
    let mut out = String::new();
    for (i, m) in items.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc = serde_saphyr::to_string(m).map_err(|e| RenderError {
            format: "YAML",
            message: e.to_string(),
        })?;
        out.push_str(&doc);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Pretty-printed JSON, as `kubectl get -o json` prints: the object itself when one named
/// object was asked for (`one`), otherwise a `List` of them (which `weftctl apply` takes back).
pub fn to_json(items: &[Manifest], one: bool) -> Result<String, RenderError> {
    let rendered = match items {
        [item] if one => serde_json::to_string_pretty(item),
        _ => serde_json::to_string_pretty(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": items,
        })),
    };
    rendered
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| RenderError {
            format: "JSON",
            message: e.to_string(),
        })
}
