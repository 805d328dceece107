//! The document structs: serde's view of each kind, field for field as people write them.
//! Strings where a closed set is expected (protocol, match types) are checked in
//! [`super::convert`], so that an unknown value gets a message of ours and stored data with an
//! unknown value can still be shown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_proto::config::v1 as cfg;
use weft_proto::config::v1::document::Kind as DocKind;
use weft_proto::mesh::v1 as pb;

use super::DEFAULT_NAMESPACE;

/// Every document: `apiVersion`, `kind`, `metadata`, `spec` — and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<M, S> {
    /// `weft.io/v1alpha1` or `gateway.networking.k8s.io/v1`, by kind.
    pub api_version: String,
    /// `Service`, `HTTPRoute`, `AuthorizationPolicy`, `RateLimitPolicy` or `Endpoint`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: M,
    /// The kind's content.
    pub spec: S,
}

/// `kind: Service`.
pub type ServiceManifest = Object<Metadata, ServiceSpec>;
/// `kind: HTTPRoute`.
pub type HttpRouteManifest = Object<Metadata, HttpRouteSpec>;
/// `kind: Endpoint`.
pub type EndpointManifest = Object<EndpointMetadata, EndpointSpec>;
/// `kind: AuthorizationPolicy`.
pub type AuthorizationPolicyManifest = Object<Metadata, AuthorizationPolicySpec>;
/// `kind: RateLimitPolicy`.
pub type RateLimitPolicyManifest = Object<Metadata, RateLimitPolicySpec>;

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.into()
}

/// `metadata` of Services, HTTPRoutes and policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS label, unique per kind within the namespace.
    pub name: String,
    /// A DNS label; `default` when left out.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// HTTPRoutes only: Weft's retry policy, under the `retry.weft.io/` keys of
    /// [`weft_proto::model`] (`ANNOTATION_ON` and its siblings). Any other key, and any
    /// annotation on another kind, is refused in conversion: nothing here may be silently
    /// dropped.
    /// Values are strings, as in Kubernetes; any JSON value is accepted here so that an unquoted
    /// number or boolean is refused with its path and a message of ours, not as a type error.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, serde_json::Value>,
}

/// `spec` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// At least one; numbers and names unique.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Label selector of extra endpoints (see `weft.mesh.v1.Service.selector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// How proxies balance, eject and cap requests to this service's endpoints; absent: every
    /// field's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicySpec>,
    /// `allow`, `authenticated` or `deny`: the decision for inbound requests no Allow policy
    /// speaks about; absent: the control plane's `--default-inbound-policy`. A string, checked
    /// in conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_inbound_policy: Option<String>,
}

/// `spec.trafficPolicy` of a Service (see `weft.mesh.v1.TrafficPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// `peak-ewma` (the default), `round-robin` or `least-request`. A string, checked in
    /// conversion, so that an unknown value gets our message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    /// Requests one proxy may have in flight to the service, 1..=1,000,000; absent: 10,000.
    /// An explicit 0 is refused rather than read as the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Passive health checking; absent: its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
}

/// `spec.trafficPolicy.outlierDetection` (see `weft.mesh.v1.OutlierDetection`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Failures in a row that eject an endpoint, 0..=1000 (0: never eject); absent: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length (GEP-2257), 100ms..=1h; absent: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// The largest share of endpoints ejected at once, 0..=100; absent: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Optional DNS label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// 1..=65535 (0 is refused by validation).
    pub port: u16,
    /// `http1`, `http2`, `grpc` or `tcp`. A string here, checked in conversion, so that an
    /// unknown value gets our message and stored data with an unknown value can still be shown.
    pub protocol: String,
}

/// `spec` of an HTTPRoute (Gateway API `HTTPRouteSpec`, GAMMA style: parents are Services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Services whose traffic this route shapes.
    #[serde(default)]
    pub parent_refs: Vec<ParentRefSpec>,
    /// Evaluated in order; the first rule with a matching match wins.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// Gateway API `ParentReference`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRefSpec {
    /// `""` (core) only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `Service` only (empty means Service).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port the route applies to; absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Gateway API `HTTPRouteRule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Optional section name (a DNS label).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Any one must match; none means path prefix `/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchSpec>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRefSpec>,
    /// GEP-1742 timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// GEP-1731 retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// Gateway API `HTTPRouteMatch`: all its conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Absent: prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSpec>,
    /// Exact header matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
    /// Exact query parameter matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatchSpec>,
    /// An HTTP method; absent: any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

fn slash() -> String {
    "/".into()
}

/// Gateway API `HTTPPathMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    /// `Exact` or `PathPrefix` (the default). `RegularExpression` is refused as unsupported.
    #[serde(rename = "type", default = "path_prefix")]
    pub type_: String,
    /// Starts with `/`; default `/`.
    #[serde(default = "slash")]
    pub value: String,
}

/// Gateway API `HTTPHeaderMatch` / `HTTPQueryParamMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// `Exact` (the default); `RegularExpression` is refused as unsupported.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Header name (case-insensitive) or query parameter name (case-sensitive).
    pub name: String,
    /// The exact value.
    pub value: String,
}

/// Gateway API `HTTPBackendRef` (without filters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRefSpec {
    /// `""` (core) only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `Service` only (empty means Service).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Must be the route's namespace (the default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The backend Service; it must exist when the route is applied.
    pub name: String,
    /// The backend's port; absent: the port the request came in on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 0..=1,000,000; absent means 1. Signed so that a negative weight reaches validation and
    /// is refused with its path, rather than as a type error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// Gateway API `HTTPRouteTimeouts`: durations in GEP-2257 form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// One attempt; at most `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// Gateway API `HTTPRouteRetry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retried status codes, each 500..=599.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u32>,
    /// Retries after the first attempt, 0..=10.
    #[serde(default)]
    pub attempts: u32,
    /// Base of the exponential backoff (GEP-2257); absent: 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// `metadata` of an Endpoint: endpoints have no name of their own (service + address is the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointMetadata {
    /// The namespace of the service it is registered under.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

/// `spec` of an Endpoint (see `weft.mesh.v1.Endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The service it was registered under.
    pub service: String,
    /// `IP:PORT`, IPv6 in brackets.
    pub address: String,
    /// The workload's SPIFFE ID.
    pub identity: String,
    /// Labels for subset selection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Topology zone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Load-balancing weight, 1..=10000 (0: the default, 1).
    #[serde(default)]
    pub weight: u32,
    /// Whether it takes traffic.
    #[serde(default)]
    pub ready: bool,
}

/// `spec.targetRef` of a policy (see `weft.mesh.v1.PolicyTargetRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRefSpec {
    /// `Service` (empty means Service) or, for an AuthorizationPolicy, `Namespace`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The Service's name, or (kind Namespace) the policy's own namespace.
    pub name: String,
}

/// `spec` of an AuthorizationPolicy (see `weft.mesh.v1.AuthorizationPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Required; optional here so that leaving it out gets the model's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRefSpec>,
    /// `Allow` or `Deny` (required). A string, checked in conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `Enforce` (absent means Enforce) or `Audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Alternatives, one must match; absent: any client. An explicit `[]` is refused (it
    /// would read as "nobody" but means "anybody" on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<FromSpec>>,
    /// Alternatives, one must match; absent: every request. An explicit `[]` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<ToSpec>>,
}

/// One entry of an AuthorizationPolicy's `from`: every field given must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FromSpec {
    /// Exact SPIFFE IDs of the mesh's trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Any workload of these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// These service accounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountSpec>,
    /// `true`: any verified mesh identity. `false` is refused (the wire has no "not").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
    /// `true`: plaintext clients. `false` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
    /// Client address ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkSpec>,
}

/// A service account: `{namespace, name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountSpec {
    pub namespace: String,
    pub name: String,
}

/// A client address range: `{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub cidr: String,
    /// Ranges inside `cidr` that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// One entry of an AuthorizationPolicy's `to`: every field given must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    /// Ports of the target service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// HTTP methods (case-sensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// `Exact` or `PathPrefix` matches of the normalized path, as in an HTTPRoute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathSpec>,
    /// Exact header matches, as in an HTTPRoute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
}

/// `spec` of a RateLimitPolicy (see `weft.mesh.v1.RateLimitPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// Required: `{kind: Service, name: NAME}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRefSpec>,
    /// Every request to the service, at each server proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<RateLimitSpec>,
    /// Each client identity (plaintext clients share one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_identity: Option<RateLimitSpec>,
    /// Identities with a limit of their own instead of `perIdentity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RateLimitOverrideSpec>,
}

/// A token bucket: `{requestsPerSecond, burst}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// 1..=1,000,000.
    pub requests_per_second: u32,
    /// At least `requestsPerSecond`; absent: equal to it. An explicit 0 is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// One entry of a RateLimitPolicy's `overrides`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitOverrideSpec {
    /// SPIFFE IDs of the mesh's trust domain; at least one.
    #[serde(default)]
    pub identities: Vec<String>,
    /// As in [`RateLimitSpec`].
    pub requests_per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Any one document, for output (`weftctl get -o yaml|json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Manifest {
    Service(ServiceManifest),
    HttpRoute(HttpRouteManifest),
    AuthorizationPolicy(AuthorizationPolicyManifest),
    RateLimitPolicy(RateLimitPolicyManifest),
    Endpoint(EndpointManifest),
}

impl Manifest {
    /// The manifest form of a config document (`None` for an empty document).
    pub fn of_document(d: &cfg::Document) -> Option<Self> {
        match d.kind.as_ref()? {
            DocKind::Service(s) => Some(Manifest::Service(s.into())),
            DocKind::HttpRoute(r) => Some(Manifest::HttpRoute(r.into())),
            DocKind::AuthorizationPolicy(p) => Some(Manifest::AuthorizationPolicy(p.into())),
            DocKind::RateLimitPolicy(p) => Some(Manifest::RateLimitPolicy(p.into())),
        }
    }

    /// The manifest form of an endpoint.
    pub fn of_endpoint(e: &pb::Endpoint) -> Self {
        Manifest::Endpoint(e.into())
    }
}
