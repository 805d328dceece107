//! `weftctl apply`, `get` and `delete`: documents from [`weft_control_plane::manifest`] over the
//! `weft.config.v1.Config` API.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use prost::Message;
use weft_proto::config::v1 as cfg;
use weft_proto::config::v1::config_client::ConfigClient;

use super::{Context, RpcError, read_source, table};
use weft_control_plane::manifest::{self, Manifest, ManifestError, Origin, Parsed, Problem};

/// What `weftctl apply` sends.
#[derive(Debug)]
pub struct ApplyArgs {
    /// Every document of every file, from [`parse_files`] (which runs before the context is
    /// loaded, so a broken file is reported even when logged out, and stdin is read once).
    pub parsed: Vec<Parsed>,
    /// Validate on the control plane too, store nothing.
    pub dry_run: bool,
}

/// The name a kind has in command output: `service/default/reviews`.
fn kind_word(kind: i32) -> &'static str {
    match cfg::Kind::try_from(kind) {
        Ok(cfg::Kind::Service) => "service",
        Ok(cfg::Kind::HttpRoute) => "httproute",
        Ok(cfg::Kind::Endpoint) => "endpoint",
        Ok(cfg::Kind::AuthorizationPolicy) => "authorizationpolicy",
        Ok(cfg::Kind::RateLimitPolicy) => "ratelimitpolicy",
        _ => "object",
    }
}

/// `kind_word`'s plural, for "No … found".
fn kind_plural(kind: cfg::Kind) -> String {
    match kind {
        cfg::Kind::AuthorizationPolicy => "authorizationpolicies".into(),
        cfg::Kind::RateLimitPolicy => "ratelimitpolicies".into(),
        other => format!("{}s", kind_word(other.into())),
    }
}

fn action_word(action: i32) -> &'static str {
    match cfg::Action::try_from(action) {
        Ok(cfg::Action::Created) => "created",
        Ok(cfg::Action::Configured) => "configured",
        Ok(cfg::Action::Unchanged) => "unchanged",
        Ok(cfg::Action::Deleted) => "deleted",
        _ => "(no action reported)",
    }
}

fn doc_key(d: &cfg::Document) -> Option<(i32, String, String)> {
    use cfg::document::Kind;
    let (kind, namespace, name) = match d.kind.as_ref()? {
        Kind::Service(s) => (cfg::Kind::Service, &s.namespace, &s.name),
        Kind::HttpRoute(r) => (cfg::Kind::HttpRoute, &r.namespace, &r.name),
        Kind::AuthorizationPolicy(p) => (cfg::Kind::AuthorizationPolicy, &p.namespace, &p.name),
        Kind::RateLimitPolicy(p) => (cfg::Kind::RateLimitPolicy, &p.namespace, &p.name),
    };
    Some((kind.into(), namespace.clone(), name.clone()))
}

/// Parses every document of every file; fails with every problem, including an object declared
/// twice (one atomic apply cannot say which of two versions wins), or with no document at all.
pub fn parse_files(files: &[PathBuf]) -> anyhow::Result<Vec<Parsed>> {
    let mut parsed: Vec<Parsed> = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        let (source, text) = read_source(f)?;
        match manifest::parse_manifests(&source, &text) {
            Ok(p) => parsed.extend(p),
            Err(e) => problems.extend(e.problems),
        }
    }
    let mut seen: HashMap<(i32, String, String), &Origin> = HashMap::new();
    for p in &parsed {
        if let Some(key) = doc_key(&p.document) {
            if let Some(first) = seen.get(&key) {
                problems.push(Problem {
                    origin: p.origin.clone(),
                    field: None,
                    message: format!("declares the same object as {first}"),
                });
            } else {
                seen.insert(key, &p.origin);
            }
        }
    }
    if !problems.is_empty() {
        return Err(ManifestError { problems }.into());
    }
    if parsed.is_empty() {
        bail!(
            "no documents in {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(parsed)
}

/// Server-side violations, mapped back to the file and document each came from.
fn violations(status: &tonic::Status, parsed: &[Parsed]) -> Option<ManifestError> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    let v = cfg::Violations::decode(status.details()).ok()?;
    if v.violations.is_empty() {
        return None;
    }
    let problems = v
        .violations
        .into_iter()
        .map(|v| {
            let origin = usize::try_from(v.document)
                .ok()
                .and_then(|i| parsed.get(i))
                .map_or_else(
                    || Origin {
                        source: "(request)".into(),
                        number: v.document as usize + 1,
                        item: None,
                        label: None,
                    },
                    |p| p.origin.clone(),
                );
            Problem {
                origin,
                field: (!v.field.is_empty()).then_some(v.field),
                message: v.description,
            }
        })
        .collect();
    Some(ManifestError { problems })
}

/// `weftctl apply`: one atomic Apply of documents already parsed and checked (nothing is sent
/// if anything was invalid); prints one line per object.
pub async fn apply(ctx: &Context, args: &ApplyArgs, w: &mut impl Write) -> anyhow::Result<()> {
    let parsed = &args.parsed;
    let mut client = ConfigClient::new(ctx.connect().await?);
    let request = cfg::ApplyRequest {
        documents: parsed.iter().map(|p| p.document.clone()).collect(),
        dry_run: args.dry_run,
    };
    let resp = match client.apply(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if let Some(v) = violations(&status, parsed) {
                return Err(v.into());
            }
            return Err(RpcError {
                what: "apply",
                status,
            }
            .into());
        }
    };
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for o in resp.outcomes {
        writeln!(
            w,
            "{}/{}/{} {}{suffix}",
            kind_word(o.kind),
            o.namespace,
            o.name,
            action_word(o.action)
        )?;
    }
    Ok(())
}

/// What `weftctl get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetKind {
    Services,
    Endpoints,
    Routes,
    AuthorizationPolicies,
    RateLimitPolicies,
}

impl GetKind {
    fn config_kind(self) -> cfg::Kind {
        match self {
            GetKind::Services => cfg::Kind::Service,
            GetKind::Endpoints => cfg::Kind::Endpoint,
            GetKind::Routes => cfg::Kind::HttpRoute,
            GetKind::AuthorizationPolicies => cfg::Kind::AuthorizationPolicy,
            GetKind::RateLimitPolicies => cfg::Kind::RateLimitPolicy,
        }
    }
}

impl std::str::FromStr for GetKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "services" | "service" | "svc" => Ok(GetKind::Services),
            "endpoints" | "endpoint" | "ep" => Ok(GetKind::Endpoints),
            "routes" | "route" | "httproutes" | "httproute" => Ok(GetKind::Routes),
            "authorizationpolicies" | "authorizationpolicy" | "authz" => {
                Ok(GetKind::AuthorizationPolicies)
            }
            "ratelimitpolicies" | "ratelimitpolicy" | "ratelimits" => {
                Ok(GetKind::RateLimitPolicies)
            }
            _ => Err(format!(
                "{s:?} is not a kind: use services, endpoints, routes, authorizationpolicies (authz) or ratelimitpolicies (ratelimits)"
            )),
        }
    }
}

/// Output format of `weftctl get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// Multi-document YAML; re-appliable for every kind but endpoints.
    Yaml,
    /// JSON as kubectl prints it: the object for one named object, otherwise a `List`.
    Json,
}

impl std::str::FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Output::Table),
            "yaml" => Ok(Output::Yaml),
            "json" => Ok(Output::Json),
            _ => Err(format!("{s:?}: use table, yaml or json")),
        }
    }
}

/// What `weftctl get` needs.
#[derive(Debug, Clone)]
pub struct GetArgs {
    pub kind: GetKind,
    /// An object name (for endpoints: the service's).
    pub name: Option<String>,
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub output: Output,
}

/// One Get call.
async fn get_kind(
    client: &mut ConfigClient<tonic::transport::Channel>,
    kind: cfg::Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<cfg::GetResponse> {
    let resp = client
        .get(cfg::GetRequest {
            kind: kind.into(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|status| RpcError {
            what: "get",
            status,
        })?;
    Ok(resp.into_inner())
}

/// `weftctl get`.
pub async fn get(ctx: &Context, args: &GetArgs, w: &mut impl Write) -> anyhow::Result<()> {
    let kind = args.kind.config_kind();
    let mut client = ConfigClient::new(ctx.connect().await?);
    let namespace = args.namespace.as_deref();
    let resp = get_kind(&mut client, kind, namespace, args.name.as_deref()).await?;
    if let Some(stale) = &resp.stale {
        // On stderr, so what a script reads from stdout is the answer alone.
        eprintln!("{}", stale_warning(stale));
    }
    let manifests: Vec<Manifest> = if kind == cfg::Kind::Endpoint {
        resp.endpoints.iter().map(Manifest::of_endpoint).collect()
    } else {
        resp.documents
            .iter()
            .filter_map(Manifest::of_document)
            .collect()
    };
    match args.output {
        Output::Yaml => w.write_all(manifest::to_yaml(&manifests)?.as_bytes())?,
        Output::Json => {
            // Endpoints are asked for by their service's name: always a list.
            let one = args.name.is_some() && kind != cfg::Kind::Endpoint;
            w.write_all(manifest::to_json(&manifests, one)?.as_bytes())?;
        }
        Output::Table if manifests.is_empty() => {
            let scope = args.namespace.as_ref().map_or_else(
                || "any namespace".to_owned(),
                |ns| format!("namespace {ns}"),
            );
            // On stderr, as kubectl does, so a script reading stdout sees no rows.
            eprintln!("No {} found in {scope}.", kind_plural(kind));
        }
        Output::Table => {
            // A policy's STATUS says whether its target exists: the services of the same scope
            // (a policy targets its own namespace only).
            let services = match kind {
                cfg::Kind::AuthorizationPolicy | cfg::Kind::RateLimitPolicy => {
                    get_kind(&mut client, cfg::Kind::Service, namespace, None)
                        .await?
                        .documents
                        .iter()
                        .filter_map(|d| match d.kind.as_ref()? {
                            cfg::document::Kind::Service(s) => {
                                Some((s.namespace.clone(), s.name.clone()))
                            }
                            _ => None,
                        })
                        .collect()
                }
                _ => table::Services::new(),
            };
            w.write_all(table::render(&manifests, &services).as_bytes())?
        }
    }
    Ok(())
}

/// What `get` says when the control plane answered from its last state: how old, and why.
pub fn stale_warning(stale: &cfg::Stale) -> String {
    let age = Duration::from_millis(stale.unreachable_for_ms);
    let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
    format!(
        "warning: the control plane cannot read its store ({}); this is its last state (store revision {}), at least {age} old: the store has been unreachable that long",
        stale.reason, stale.revision
    )
}

/// `weftctl delete -f FILE…`: every object the files declare, in one atomic Delete.
pub async fn delete_files(
    ctx: &Context,
    files: &[PathBuf],
    w: &mut impl Write,
) -> anyhow::Result<()> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        let (source, text) = read_source(f)?;
        match manifest::parse_refs(&source, &text) {
            Ok(refs) => objects.extend(refs.into_iter().map(|(_, r)| r)),
            Err(e) => problems.extend(e.problems),
        }
    }
    if !problems.is_empty() {
        return Err(ManifestError { problems }.into());
    }
    if objects.is_empty() {
        bail!("no documents to delete");
    }
    delete_objects(ctx, objects, w).await
}

/// `weftctl delete KIND NS/NAME` and the RPC behind `delete -f`.
pub async fn delete_objects(
    ctx: &Context,
    objects: Vec<cfg::ObjectRef>,
    w: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = ConfigClient::new(ctx.connect().await?);
    let resp = client
        .delete(cfg::DeleteRequest { objects })
        .await
        .map_err(|status| RpcError {
            what: "delete",
            status,
        })?
        .into_inner();
    for o in resp.outcomes {
        writeln!(
            w,
            "{}/{}/{} {}",
            kind_word(o.kind),
            o.namespace,
            o.name,
            action_word(o.action)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_violations_map_to_file_and_document() {
        let text = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80, protocol: http1}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: a}]
  rules: [{backendRefs: [{name: missing}]}]
";
        let parsed = manifest::parse_manifests("r.yaml", text).unwrap();
        let details = cfg::Violations {
            violations: vec![cfg::Violation {
                document: 1,
                field: "spec.rules[0].backendRefs[0].name".into(),
                description: "Service default/missing does not exist".into(),
            }],
        }
        .encode_to_vec();
        let status =
            tonic::Status::with_details(tonic::Code::InvalidArgument, "invalid", details.into());
        let e = violations(&status, &parsed).unwrap();
        assert_eq!(
            e.to_string(),
            "r.yaml: document 2 (HTTPRoute default/r): spec.rules[0].backendRefs[0].name: Service default/missing does not exist"
        );
        let plain = tonic::Status::invalid_argument("no details");
        assert!(violations(&plain, &parsed).is_none());
    }

    #[test]
    fn the_same_object_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("twice.yaml");
        let svc = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: tcp}]}\n";
        std::fs::write(&f, format!("{svc}---\n{svc}")).unwrap();
        let e = parse_files(&[f]).unwrap_err().to_string();
        assert!(
            e.ends_with("document 2 (Service default/a): declares the same object as ")
                || e.contains("document 2 (Service default/a): declares the same object as"),
            "{e}"
        );
    }

    #[test]
    fn statuses_read_as_one_line() {
        let s = tonic::Status::failed_precondition("referenced by httproute default/r");
        assert_eq!(
            crate::status_line(&s),
            "FAILED_PRECONDITION: referenced by httproute default/r"
        );
    }
}
