//! Injection into one pod template (`{metadata, spec}`) as a JSON value: what decides whether
//! to inject, what is read from the pod, and the exact inverse for `uninject`. Only keys the
//! injector adds are touched; what it had to create is recorded on the pod so uninject removes
//! exactly that.

use serde_json::{Map, Value};

use crate::config::{InjectConfig, Overrides};
use crate::containers::{self, PodFacts};
use crate::{Outcome, Skip, names};

/// Containers of other meshes' proxies (and their init containers).
const OTHER_PROXIES: &[(&str, &str)] = &[
    ("linkerd-proxy", "Linkerd"),
    ("linkerd-init", "Linkerd"),
    ("istio-proxy", "Istio"),
    ("istio-init", "Istio"),
];

fn str_at<'a>(map: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    map?.get(key)?.as_str()
}

fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key)?.as_object()
}

fn containers<'a>(spec: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a Value> {
    spec.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn name_of(c: &Value) -> Option<&str> {
    c.get("name")?.as_str()
}

/// Whether the template already carries a Weft proxy.
pub(crate) fn is_injected(template: &Value) -> bool {
    let Some(spec) = obj(template, "spec") else {
        return false;
    };
    containers(spec, "containers")
        .chain(containers(spec, "initContainers"))
        .any(|c| name_of(c) == Some(names::PROXY_CONTAINER))
}

/// Injects into `template` in place, or says why not (leaving it untouched).
pub(crate) fn inject(
    template: &mut Value,
    cfg: &InjectConfig,
    namespace: Option<&str>,
    warnings: &mut Vec<String>,
) -> Outcome {
    if let Err(skip) = check(template, cfg, namespace) {
        return skip;
    }
    let meta = obj(template, "metadata");
    let labels = meta.and_then(|m| m.get("labels")?.as_object());
    let annotations = meta.and_then(|m| m.get("annotations")?.as_object());
    let overrides = Overrides::read(annotations, warnings);
    let Some(spec) = obj(template, "spec") else {
        return Outcome::Skipped(Skip::Malformed("the pod template has no spec".into()));
    };
    let facts = facts(spec, labels, annotations, warnings);
    let native = overrides.native_sidecar;
    let init = containers::init_container(cfg, &overrides, &facts);
    let proxy = containers::proxy_container(cfg, &overrides, &facts, native);
    let (Ok(init), Ok(proxy), Ok(Value::Array(volumes))) = (
        serde_json::to_value(init),
        serde_json::to_value(proxy),
        serde_json::to_value(containers::volumes()),
    ) else {
        return Outcome::Skipped(Skip::Malformed("cannot encode the containers".into()));
    };

    let mut created = Vec::new();
    let Some(t) = template.as_object_mut() else {
        return Outcome::Skipped(Skip::Malformed("the pod template is not an object".into()));
    };
    let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) else {
        return Outcome::Skipped(Skip::Malformed("the pod template has no spec".into()));
    };
    let Some(inits) = list(spec, "initContainers", &mut created) else {
        return Outcome::Skipped(Skip::Malformed("spec.initContainers is not a list".into()));
    };
    inits.insert(0, init);
    if native {
        inits.insert(1, proxy);
    } else {
        let Some(main) = list(spec, "containers", &mut created) else {
            return Outcome::Skipped(Skip::Malformed("spec.containers is not a list".into()));
        };
        main.insert(0, proxy);
    }
    let Some(vols) = list(spec, "volumes", &mut created) else {
        return Outcome::Skipped(Skip::Malformed("spec.volumes is not a list".into()));
    };
    vols.extend(volumes);

    if !t.contains_key("metadata") {
        created.push("metadata".into());
        t.insert("metadata".into(), Value::Object(Map::new()));
    }
    let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Outcome::Skipped(Skip::Malformed("metadata is not an object".into()));
    };
    if !meta.contains_key("annotations") {
        created.push("metadata.annotations".into());
        meta.insert("annotations".into(), Value::Object(Map::new()));
    }
    let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) else {
        return Outcome::Skipped(Skip::Malformed("metadata.annotations is not a map".into()));
    };
    a.insert(names::STATUS_ANNOTATION.into(), "injected".into());
    a.insert(names::VERSION_ANNOTATION.into(), crate::VERSION.into());
    if let Some(fp) = &cfg.trust_root_sha256 {
        a.insert(names::TRUST_ROOT_ANNOTATION.into(), fp.clone().into());
    }
    a.insert(names::CREATED_ANNOTATION.into(), created.join(",").into());
    Outcome::Injected
}

/// `spec.<key>` as a list, created (and recorded in `created`) when absent.
fn list<'a>(
    spec: &'a mut Map<String, Value>,
    key: &str,
    created: &mut Vec<String>,
) -> Option<&'a mut Vec<Value>> {
    if !spec.contains_key(key) {
        created.push(format!("spec.{key}"));
        spec.insert(key.to_owned(), Value::Array(Vec::new()));
    }
    spec.get_mut(key)?.as_array_mut()
}

/// Why a template is not to be injected, if it is not.
fn check(template: &Value, cfg: &InjectConfig, namespace: Option<&str>) -> Result<(), Outcome> {
    let skip = |s| Err(Outcome::Skipped(s));
    let labels = obj(template, "metadata").and_then(|m| m.get("labels")?.as_object());
    match str_at(labels, names::INJECT_LABEL) {
        None | Some("enabled") => {}
        Some("disabled") => return skip(Skip::Disabled),
        Some(other) => return skip(Skip::InvalidLabel(other.to_owned())),
    }
    if namespace == Some(cfg.control_plane_namespace.as_str()) {
        return skip(Skip::ControlPlaneNamespace(
            cfg.control_plane_namespace.clone(),
        ));
    }
    let Some(spec) = obj(template, "spec") else {
        return skip(Skip::Malformed("the pod template has no spec".into()));
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return skip(Skip::HostNetwork);
    }
    if is_injected(template) {
        return Err(Outcome::AlreadyInjected);
    }
    for c in containers(spec, "containers").chain(containers(spec, "initContainers")) {
        if let Some(&(name, mesh)) = OTHER_PROXIES.iter().find(|(n, _)| Some(*n) == name_of(c)) {
            return skip(Skip::OtherProxy {
                mesh,
                container: name.to_owned(),
            });
        }
        if name_of(c) == Some(names::INIT_CONTAINER) {
            return skip(Skip::NameTaken(format!(
                "container {}",
                names::INIT_CONTAINER
            )));
        }
    }
    for v in containers(spec, "volumes") {
        if let Some(n) = name_of(v).filter(|n| containers::VOLUMES.contains(n)) {
            return skip(Skip::NameTaken(format!("volume {n}")));
        }
    }
    Ok(())
}

/// What the proxy needs to know about the application: its service, port and probes.
fn facts(
    spec: &Map<String, Value>,
    labels: Option<&Map<String, Value>>,
    annotations: Option<&Map<String, Value>>,
    warnings: &mut Vec<String>,
) -> PodFacts {
    let mut f = PodFacts::default();
    let service = str_at(annotations, names::SERVICE_ANNOTATION)
        .map(|s| (names::SERVICE_ANNOTATION, s))
        .or_else(|| str_at(labels, "app.kubernetes.io/name").map(|s| ("app.kubernetes.io/name", s)))
        .or_else(|| str_at(labels, "app").map(|s| ("app", s)));
    match service {
        Some((_, s)) if dns_label(s) => f.service = Some(s.to_owned()),
        Some((from, s)) => warnings.push(format!(
            "{from} {s:?} is not a DNS label: the endpoint is not registered under a service"
        )),
        None => warnings.push(format!(
            "no {} annotation, app.kubernetes.io/name or app label: the endpoint is not registered under a service",
            names::SERVICE_ANNOTATION
        )),
    }
    if let Some(labels) = labels {
        f.labels = labels
            .iter()
            .filter(|(k, _)| !k.starts_with("weft.io/"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
    }
    let apps: Vec<&Value> = containers(spec, "containers").collect();
    f.app_port = apps.iter().find_map(|c| {
        c.get("ports")?
            .as_array()?
            .iter()
            .find_map(|p| p.get("containerPort")?.as_i64())
            .and_then(|p| i32::try_from(p).ok())
    });
    for c in &apps {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let Some(get) = c.get(probe).and_then(|p| p.get("httpGet")) else {
                continue;
            };
            let Some(port) = probe_port(c, get.get("port")) else {
                warnings.push(format!(
                    "container {}: {probe} port {} is not one of its ports; not exempted",
                    name_of(c).unwrap_or("?"),
                    get.get("port").unwrap_or(&Value::Null)
                ));
                continue;
            };
            if get.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
                // kubelet's TLS is not the mesh's: let it reach the application directly.
                if !f.skip_inbound_ports.contains(&port) {
                    f.skip_inbound_ports.push(port);
                }
                continue;
            }
            let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
            let path = path.split('?').next().unwrap_or("/");
            let entry = format!("{port}:{path}");
            if !f.probe_paths.contains(&entry) {
                f.probe_paths.push(entry);
            }
        }
    }
    f
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(container: &Value, port: Option<&Value>) -> Option<i32> {
    match port? {
        Value::Number(n) => n.as_i64().and_then(|p| i32::try_from(p).ok()),
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get("containerPort")?
            .as_i64()
            .and_then(|p| i32::try_from(p).ok()),
        _ => None,
    }
}

fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Removes what [`inject`] added; `false` if there was nothing to remove.
pub(crate) fn uninject(template: &mut Value) -> bool {
    if !is_injected(template) {
        return false;
    }
    let Some(t) = template.as_object_mut() else {
        return false;
    };
    let created: Vec<String> = t
        .get("metadata")
        .and_then(|m| {
            m.get("annotations")?
                .get(names::CREATED_ANNOTATION)?
                .as_str()
        })
        .map(|s| {
            s.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
        let ours = |key: &str, names: &[&str], spec: &mut Map<String, Value>| {
            if let Some(list) = spec.get_mut(key).and_then(Value::as_array_mut) {
                list.retain(|c| !name_of(c).is_some_and(|n| names.contains(&n)));
            }
        };
        ours(
            "initContainers",
            &[names::INIT_CONTAINER, names::PROXY_CONTAINER],
            spec,
        );
        ours("containers", &[names::PROXY_CONTAINER], spec);
        ours("volumes", &containers::VOLUMES, spec);
        for key in ["initContainers", "containers", "volumes"] {
            let empty = spec
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
            if empty && created.iter().any(|c| *c == format!("spec.{key}")) {
                spec.shift_remove(key);
            }
        }
    }
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for key in [
                names::STATUS_ANNOTATION,
                names::VERSION_ANNOTATION,
                names::TRUST_ROOT_ANNOTATION,
                names::CREATED_ANNOTATION,
            ] {
                a.shift_remove(key);
            }
            if a.is_empty() && created.iter().any(|c| c == "metadata.annotations") {
                meta.shift_remove("annotations");
            }
        }
        if meta.is_empty() && created.iter().any(|c| c == "metadata") {
            t.shift_remove("metadata");
        }
    }
    true
}
