//! The containers and volumes the injector adds, built as typed `k8s-openapi` objects (so a
//! misspelt field cannot compile) and turned into JSON for the user's object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{InjectConfig, Overrides};
use crate::names;

/// The volumes the injector adds (and uninject removes, by these names).
pub(crate) const TOKEN_VOLUME: &str = "weft-token";
pub(crate) const TRUST_VOLUME: &str = "weft-trust";
pub(crate) const RUN_VOLUME: &str = "weft-run";
pub(crate) const VOLUMES: [&str; 3] = [TOKEN_VOLUME, TRUST_VOLUME, RUN_VOLUME];

const TOKEN_DIR: &str = "/var/run/weft/token";
const TRUST_DIR: &str = "/var/run/weft/trust";
/// A projected token lives an hour; the kubelet refreshes it at 80 % and the proxy rereads the
/// file whenever it needs a token.
const TOKEN_SECONDS: i64 = 3600;

/// What the injector learned about one pod template.
#[derive(Debug, Default)]
pub(crate) struct PodFacts {
    /// The service the endpoint registers under (a DNS label), if any.
    pub service: Option<String>,
    /// The first declared container port of the application.
    pub app_port: Option<i32>,
    /// `PORT:/path` of the application's own `httpGet` probes.
    pub probe_paths: Vec<String>,
    /// Ports of HTTPS probes: kubelet's TLS is not the mesh's, so they bypass the proxy.
    pub skip_inbound_ports: Vec<i32>,
    /// The pod's labels, as the endpoint's (`k=v,…`).
    pub labels: Vec<(String, String)>,
}

/// A container that runs as `uid` (and its group), non-root, on a read-only root filesystem,
/// with no capabilities and the runtime's default seccomp profile: what Pod Security's
/// `restricted` level asks. The control plane's manifests use it too.
pub fn restricted(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(names::PROXY_ADMIN_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn resources(
    (cpu_req, mem_req, mem_limit): (&str, &str, &str),
    o: &Overrides,
) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    requests.insert(
        "cpu".to_owned(),
        Quantity(o.cpu_request.clone().unwrap_or_else(|| cpu_req.into())),
    );
    requests.insert(
        "memory".to_owned(),
        Quantity(o.memory_request.clone().unwrap_or_else(|| mem_req.into())),
    );
    let mut limits = BTreeMap::new();
    limits.insert(
        "memory".to_owned(),
        Quantity(o.memory_limit.clone().unwrap_or_else(|| mem_limit.into())),
    );
    if let Some(cpu) = &o.cpu_limit {
        limits.insert("cpu".to_owned(), Quantity(cpu.clone()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}

/// The `weft-init` container: installs the pod's redirection rules, then exits.
pub(crate) fn init_container(cfg: &InjectConfig, o: &Overrides, facts: &PodFacts) -> Container {
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".into(),
        names::PROXY_UID.to_string(),
        "--inbound-port".into(),
        names::PROXY_INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        names::PROXY_OUTBOUND_PORT.to_string(),
        "--admin-port".into(),
        names::PROXY_ADMIN_PORT.to_string(),
    ];
    let mut skip_in: Vec<String> = facts
        .skip_inbound_ports
        .iter()
        .map(i32::to_string)
        .collect();
    skip_in.extend(o.skip_inbound_ports.clone());
    if !skip_in.is_empty() {
        args.extend(["--skip-inbound-ports".into(), skip_in.join(",")]);
    }
    if let Some(p) = &o.skip_outbound_ports {
        args.extend(["--skip-outbound-ports".into(), p.clone()]);
    }
    if let Some(s) = &o.skip_subnets {
        args.extend(["--skip-subnets".into(), s.clone()]);
    }
    Container {
        name: names::INIT_CONTAINER.into(),
        image: Some(
            o.init_image
                .clone()
                .unwrap_or_else(|| cfg.init_image.clone()),
        ),
        args: Some(args),
        resources: Some(resources(("10m", "10Mi", "32Mi"), &Overrides::default())),
        // iptables needs root and NET_ADMIN/NET_RAW, nothing else; its lock file needs a
        // writable /run.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: None,
            run_as_non_root: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..restricted(0)
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: RUN_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The proxy container: a native sidecar (`restartPolicy: Always` among the init
/// containers, gating the application on its startup probe), or with `native == false` an
/// ordinary first container whose `postStart` hook waits for `/ready`.
pub(crate) fn proxy_container(
    cfg: &InjectConfig,
    o: &Overrides,
    facts: &PodFacts,
    native: bool,
) -> Container {
    // Listeners on `[::]` take IPv4 and IPv6 (the proxy falls back to 0.0.0.0 on a kernel
    // without IPv6); the outbound one is reachable only through the OUTPUT redirect, as
    // PREROUTING sends every other inbound port to the inbound listener.
    let mut vars = vec![
        env_field("WEFT_POD_NAME", "metadata.name"),
        env_field("WEFT_POD_NAMESPACE", "metadata.namespace"),
        env_field("WEFT_POD_IP", "status.podIP"),
        env_field("WEFT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("WEFT_NODE_ID", "$(WEFT_POD_NAME).$(WEFT_POD_NAMESPACE)"),
        env("WEFT_ADVERTISE_IP", "$(WEFT_POD_IP)"),
        env("WEFT_CONTROL_PLANE", cfg.control_plane_addr.clone()),
        env(
            "WEFT_TRUST_BUNDLE",
            format!("{TRUST_DIR}/{}", names::TRUST_BUNDLE_KEY),
        ),
        env("WEFT_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        env(
            "WEFT_INBOUND",
            format!("[::]:{}", names::PROXY_INBOUND_PORT),
        ),
        env(
            "WEFT_OUTBOUND",
            format!("[::]:{}", names::PROXY_OUTBOUND_PORT),
        ),
        env("WEFT_ADMIN", format!("[::]:{}", names::PROXY_ADMIN_PORT)),
        env("WEFT_INBOUND_REDIRECTED", "true"),
    ];
    if let Some(service) = &facts.service {
        vars.push(env(
            "WEFT_SERVICE",
            format!("$(WEFT_POD_NAMESPACE)/{service}"),
        ));
    }
    if !facts.labels.is_empty() {
        let labels: Vec<String> = facts
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vars.push(env("WEFT_LABELS", labels.join(",")));
    }
    if let Some(port) = facts.app_port {
        vars.push(env("WEFT_APP_PORT", port.to_string()));
    }
    if !facts.probe_paths.is_empty() {
        vars.push(env("WEFT_PROBE_PATHS", facts.probe_paths.join(",")));
    }
    if let Some(level) = &o.log_level {
        vars.push(env("WEFT_LOG", level.clone()));
    }
    if let Some(policy) = &o.default_inbound_policy {
        vars.push(env("WEFT_DEFAULT_INBOUND_POLICY", policy.clone()));
    }
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        ..Default::default()
    };
    Container {
        name: names::PROXY_CONTAINER.into(),
        image: Some(
            o.proxy_image
                .clone()
                .unwrap_or_else(|| cfg.proxy_image.clone()),
        ),
        args: Some(vec!["run".into()]),
        env: Some(vars),
        ports: Some(vec![
            port("weft-inbound", names::PROXY_INBOUND_PORT),
            port("weft-admin", names::PROXY_ADMIN_PORT),
        ]),
        restart_policy: native.then(|| "Always".to_owned()),
        startup_probe: native.then(|| http_probe("/ready", 1, 120)),
        readiness_probe: Some(http_probe("/ready", 5, 3)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        lifecycle: (!native).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/weft-proxy".into(),
                        "wait-ready".into(),
                        "--admin".into(),
                        format!("127.0.0.1:{}", names::PROXY_ADMIN_PORT),
                        "--timeout".into(),
                        "120s".into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(resources(("10m", "20Mi", "64Mi"), o)),
        security_context: Some(restricted(i64::from(names::PROXY_UID))),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: TRUST_VOLUME.into(),
                mount_path: TRUST_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// The volumes: the projected service-account token (audience `weft`), the trust bundle
/// ConfigMap, and an empty /run for iptables' lock in the init container.
pub(crate) fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(names::TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TRUST_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::TRUST_BUNDLE_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}
