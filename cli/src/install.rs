//! `weftctl install [--ha]`: the manifests of a working control plane, written to stdout and
//! read from nothing but local files. Every object is a typed `k8s-openapi` struct serialized to
//! YAML; the names are [`weft_inject::names`], which the injector shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, Secret,
    SecretProjection, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeProjection, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_inject::names;

/// `weftctl install`'s flags.
#[derive(Debug, Clone)]
pub struct Install {
    /// Three control-plane replicas with anti-affinity and disruption budgets, a 3-member etcd
    /// (unless `etcd_endpoints`), and `failurePolicy: Fail`.
    pub ha: bool,
    pub ca: CaSource,
    /// An existing etcd cluster's client URLs.
    pub etcd_endpoints: Vec<String>,
    /// Image registry and tag of the Weft images.
    pub registry: String,
    pub version: String,
    /// The service-account token issuer of the cluster (`iss`).
    pub jwt_issuer: String,
    /// The etcd image (`--ha` without `--etcd-endpoints`).
    pub etcd_image: String,
}

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A directory from `weftctl ca init`: put into a Secret.
    Dir(PathBuf),
    /// A Secret cert-manager (or the operator) manages, in the same layout; the trust bundle
    /// (its `ca.crt`) and the trust domain are given, as nothing is read from the cluster.
    External {
        secret: String,
        trust_bundle: PathBuf,
        trust_domain: weft_certs::TrustDomain,
    },
}

const TOKEN_KEY_SECRET: &str = "weft-token-key";
const STORE_CLAIM: &str = "weft-store";
const ETCD: &str = "weft-etcd";
const CP_UID: i64 = 65532;
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(names::NAMESPACE.into()),
        labels: Some(labels(name)),
        ..Default::default()
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), app.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "weft".to_owned()),
    ])
}

fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            app.to_owned(),
        )])),
        ..Default::default()
    }
}

fn requirement(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

fn anti_affinity(app: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(app)),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pdb(app: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(app),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(2)),
            selector: Some(selector(app)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The webhook's CA and serving certificate (PEM): (ca.crt, tls.crt, tls.key).
fn webhook_certificates() -> anyhow::Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().context("generate the webhook CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "weft injector webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).context("sign the webhook CA")?;
    let dns = format!("{}.{}.svc", names::CONTROL_PLANE, names::NAMESPACE);
    let key = KeyPair::generate().context("generate the webhook key")?;
    let mut leaf = CertificateParams::new(vec![dns.clone(), format!("{dns}.cluster.local")])
        .context("the webhook's DNS names")?;
    leaf.distinguished_name.push(DnType::CommonName, dns);
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(3650);
    let cert = leaf
        .signed_by(&key, &Issuer::new(ca, &ca_key))
        .context("sign the webhook certificate")?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

fn read(dir: &Path, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(file);
    std::fs::read(&path).with_context(|| format!("read {}", path.display()))
}

/// The manifests, as one YAML stream.
pub fn render(i: &Install) -> anyhow::Result<String> {
    // Everything read and checked before anything is written.
    let (ca_secret_name, ca_secret, trust_pem, trust_domain, token_key) = match &i.ca {
        CaSource::Dir(dir) => {
            let ca = weft_certs::CertificateAuthority::load_dir(dir, None)
                .with_context(|| format!("the CA in {}", dir.display()))?;
            let mut data = BTreeMap::new();
            for f in ["tls.crt", "tls.key"] {
                data.insert(f.to_owned(), ByteString(read(dir, f)?));
            }
            let trust = ca.bundle().to_pem();
            data.insert("ca.crt".to_owned(), ByteString(trust.clone().into_bytes()));
            let secret = Secret {
                metadata: meta(names::CA_SECRET),
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data),
                ..Default::default()
            };
            let token_key = read(dir, "token.key")?;
            (
                names::CA_SECRET.to_owned(),
                Some(secret),
                trust,
                ca.trust_domain().clone(),
                token_key,
            )
        }
        CaSource::External {
            secret,
            trust_bundle,
            trust_domain,
        } => {
            let pem = std::fs::read(trust_bundle)
                .with_context(|| format!("read {}", trust_bundle.display()))?;
            let bundle = weft_certs::TrustBundle::from_pem_deriving(
                Some(trust_domain),
                &pem,
                &trust_bundle.display().to_string(),
            )?;
            let key = weft_control_plane::attest::TokenKey::generate()?;
            (
                secret.clone(),
                None,
                bundle.to_pem(),
                trust_domain.clone(),
                key.to_pem().into_bytes(),
            )
        }
    };
    if i.ha && i.etcd_endpoints.is_empty() && i.etcd_image.is_empty() {
        bail!("--ha without --etcd-endpoints needs an etcd image");
    }
    let (webhook_ca, webhook_crt, webhook_key) = webhook_certificates()?;
    let admin_id = format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        names::NAMESPACE,
        names::ADMIN_SERVICE_ACCOUNT
    );
    let image = |component: &str| format!("{}/{component}:{}", i.registry, i.version);

    let mut docs: Vec<serde_json::Value> = Vec::new();
    let mut push = |v: anyhow::Result<serde_json::Value>| -> anyhow::Result<()> {
        docs.push(v?);
        Ok(())
    };
    let json = |v: &dyn erased::Json| v.json();

    let mut ns_labels = labels(names::NAMESPACE);
    ns_labels.insert(names::INJECT_LABEL.into(), "disabled".into());
    ns_labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    push(json(&Namespace {
        metadata: ObjectMeta {
            name: Some(names::NAMESPACE.into()),
            labels: Some(ns_labels),
            ..Default::default()
        },
        ..Default::default()
    }))?;
    for sa in [names::CONTROL_PLANE, names::ADMIN_SERVICE_ACCOUNT] {
        push(json(&ServiceAccount {
            metadata: meta(sa),
            ..Default::default()
        }))?;
    }
    // The least RBAC: reading the service-account issuer's JWKS, nothing else.
    push(json(&ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some("weft-control-plane-issuer-discovery".into()),
            labels: Some(labels(names::CONTROL_PLANE)),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "system:service-account-issuer-discovery".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names::CONTROL_PLANE.into(),
            namespace: Some(names::NAMESPACE.into()),
            ..Default::default()
        }]),
    }))?;
    if let Some(secret) = &ca_secret {
        push(json(secret))?;
    }
    push(json(&Secret {
        metadata: meta(TOKEN_KEY_SECRET),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "token.key".into(),
            ByteString(token_key),
        )])),
        ..Default::default()
    }))?;
    push(json(&Secret {
        metadata: meta(names::INJECTOR_TLS_SECRET),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), ByteString(webhook_crt.into_bytes())),
            ("tls.key".into(), ByteString(webhook_key.into_bytes())),
            ("ca.crt".into(), ByteString(webhook_ca.clone().into_bytes())),
        ])),
        ..Default::default()
    }))?;
    push(json(&ConfigMap {
        metadata: meta(names::TRUST_BUNDLE_CONFIGMAP),
        data: Some(BTreeMap::from([(
            names::TRUST_BUNDLE_KEY.into(),
            trust_pem,
        )])),
        ..Default::default()
    }))?;

    // The registry.
    let mut store_args: Vec<String> = Vec::new();
    let mut store_volume = None;
    if !i.etcd_endpoints.is_empty() {
        store_args.push(format!("--etcd-endpoints={}", i.etcd_endpoints.join(",")));
    } else if i.ha {
        let urls: Vec<String> = (0..3)
            .map(|n| format!("http://{ETCD}-{n}.{ETCD}.{}.svc:2379", names::NAMESPACE))
            .collect();
        store_args.push(format!("--etcd-endpoints={}", urls.join(",")));
        for d in etcd(&i.etcd_image) {
            push(d)?;
        }
    } else {
        store_args.push("--store-snapshot=/var/lib/weft/store.snapshot".into());
        push(json(&PersistentVolumeClaim {
            metadata: meta(STORE_CLAIM),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(quantities(&[("storage", "1Gi")])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }))?;
        store_volume = Some(Volume {
            name: "store".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: STORE_CLAIM.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let dns = format!("{}.{}.svc", names::CONTROL_PLANE, names::NAMESPACE);
    let mut args = vec![
        "--ca-dir=/var/run/weft/ca".to_owned(),
        format!("--listen=0.0.0.0:{}", names::GRPC_PORT),
        // On the pod IP so Prometheus can scrape it: there it answers only /live, /ready and
        // /metrics (weft_proto::admin); /ca answers kubectl port-forward.
        format!("--admin=0.0.0.0:{}", names::CONTROL_PLANE_ADMIN_PORT),
        format!("--server-name={dns},{dns}.cluster.local"),
        format!("--injector-listen=0.0.0.0:{}", names::INJECTOR_PORT),
        "--injector-tls-dir=/var/run/weft/injector".into(),
        format!("--proxy-image={}", image("weft-proxy")),
        format!("--proxy-init-image={}", image("weft-proxy-init")),
        "--jwks-url=https://kubernetes.default.svc/openid/v1/jwks".into(),
        format!("--jwks-ca={SA_DIR}/ca.crt"),
        format!("--jwks-token-file={SA_DIR}/token"),
        format!("--jwt-issuer={}", i.jwt_issuer),
        format!("--jwt-audience={}", names::TOKEN_AUDIENCE),
        format!("--admin-identity={admin_id}"),
        "--log-format=json".into(),
    ];
    if matches!(i.ca, CaSource::External { .. }) {
        args.push(format!("--trust-domain={trust_domain}"));
    }
    args.extend(store_args);
    let https_probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(names::INJECTOR_PORT)),
            scheme: Some("HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let mut mounts = vec![
        VolumeMount {
            name: "ca".into(),
            mount_path: "/var/run/weft/ca".into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "injector-tls".into(),
            mount_path: "/var/run/weft/injector".into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    let secret_projection = |name: &str| VolumeProjection {
        secret: Some(SecretProjection {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut volumes = vec![
        // The CA and the join-token key in one directory, as --ca-dir reads it.
        Volume {
            name: "ca".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    secret_projection(&ca_secret_name),
                    secret_projection(TOKEN_KEY_SECRET),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "injector-tls".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![secret_projection(names::INJECTOR_TLS_SECRET)]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(v) = store_volume {
        mounts.push(VolumeMount {
            name: v.name.clone(),
            mount_path: "/var/lib/weft".into(),
            ..Default::default()
        });
        volumes.push(v);
    }
    let replicas = if i.ha { 3 } else { 1 };
    let container = Container {
        name: names::CONTROL_PLANE.into(),
        image: Some(image("weft-control-plane")),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "WEFT_NAMESPACE".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: i32::from(names::GRPC_PORT),
                ..Default::default()
            },
            ContainerPort {
                name: Some("injector".into()),
                container_port: i32::from(names::INJECTOR_PORT),
                ..Default::default()
            },
            // The PodMonitor in deploy/prometheus finds the control plane by this name.
            ContainerPort {
                name: Some("admin".into()),
                container_port: i32::from(names::CONTROL_PLANE_ADMIN_PORT),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(https_probe("/ready")),
        liveness_probe: Some(https_probe("/live")),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "100m"), ("memory", "64Mi")])),
            limits: Some(quantities(&[("memory", "512Mi")])),
            ..Default::default()
        }),
        security_context: Some(weft_inject::restricted(CP_UID)),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    push(json(&Deployment {
        metadata: meta(names::CONTROL_PLANE),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(names::CONTROL_PLANE),
            // One writer of the embedded store's snapshot at a time.
            strategy: (!i.ha && i.etcd_endpoints.is_empty()).then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(names::CONTROL_PLANE)),
                    // For a Prometheus configured by pod annotations
                    // (deploy/prometheus/prometheus-kubernetes.yml).
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                        (
                            "prometheus.io/port".to_owned(),
                            names::CONTROL_PLANE_ADMIN_PORT.to_string(),
                        ),
                        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names::CONTROL_PLANE.into()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    affinity: i.ha.then(|| anti_affinity(names::CONTROL_PLANE)),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(CP_UID),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }))?;
    push(json(&Service {
        metadata: meta(names::CONTROL_PLANE),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                names::CONTROL_PLANE.to_owned(),
            )])),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: i32::from(names::GRPC_PORT),
                    target_port: Some(IntOrString::String("grpc".into())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("injector".into()),
                    port: 443,
                    target_port: Some(IntOrString::String("injector".into())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }))?;
    if i.ha {
        push(json(&pdb(names::CONTROL_PLANE)))?;
    }
    push(json(&webhook_configuration(&webhook_ca, i.ha)))?;

    let mut out = String::new();
    for (n, d) in docs.iter().enumerate() {
        if n > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(d).context("encode YAML")?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Two entries because Kubernetes ANDs the selectors of one: pods in opted-in namespaces
/// (unless the pod opts out), and opted-in pods in namespaces that say nothing. Neither
/// reaches kube-system or the control plane's namespace.
fn webhook_configuration(ca_pem: &str, ha: bool) -> MutatingWebhookConfiguration {
    let system = requirement(
        "kubernetes.io/metadata.name",
        "NotIn",
        &["kube-system", names::NAMESPACE],
    );
    let entry = |name: &str, ns: LabelSelectorRequirement, pod: LabelSelectorRequirement| {
        MutatingWebhook {
            name: name.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: Some(ServiceReference {
                    name: names::CONTROL_PLANE.into(),
                    namespace: names::NAMESPACE.into(),
                    path: Some(names::INJECTOR_PATH.into()),
                    port: Some(443),
                }),
                ..Default::default()
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            side_effects: "None".into(),
            failure_policy: Some(if ha { "Fail" } else { "Ignore" }.into()),
            timeout_seconds: Some(5),
            // Injection is idempotent: run again if a later webhook changed the pod.
            reinvocation_policy: Some("IfNeeded".into()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![ns, system.clone()]),
                ..Default::default()
            }),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![pod]),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(names::WEBHOOK_CONFIGURATION.into()),
            labels: Some(labels(names::CONTROL_PLANE)),
            ..Default::default()
        },
        webhooks: Some(vec![
            entry(
                "namespaces.inject.weft.io",
                requirement(names::INJECT_LABEL, "In", &["enabled"]),
                requirement(names::INJECT_LABEL, "NotIn", &["disabled"]),
            ),
            entry(
                "pods.inject.weft.io",
                requirement(names::INJECT_LABEL, "NotIn", &["enabled", "disabled"]),
                requirement(names::INJECT_LABEL, "In", &["enabled"]),
            ),
        ]),
    }
}

/// A 3-member etcd: headless Service, StatefulSet with stable peer names and a volume each,
/// and a disruption budget that keeps quorum.
fn etcd(image: &str) -> Vec<anyhow::Result<serde_json::Value>> {
    let peers: Vec<String> = (0..3)
        .map(|n| {
            format!(
                "{ETCD}-{n}=http://{ETCD}-{n}.{ETCD}.{}.svc:2380",
                names::NAMESPACE
            )
        })
        .collect();
    let ns = names::NAMESPACE;
    // The kubelet expands $(POD_NAME) in args: no shell needed in the image.
    let args = vec![
        "--name=$(POD_NAME)".to_owned(),
        "--data-dir=/var/lib/etcd/data".into(),
        "--listen-client-urls=http://0.0.0.0:2379".into(),
        format!("--advertise-client-urls=http://$(POD_NAME).{ETCD}.{ns}.svc:2379"),
        "--listen-peer-urls=http://0.0.0.0:2380".into(),
        format!("--initial-advertise-peer-urls=http://$(POD_NAME).{ETCD}.{ns}.svc:2380"),
        format!("--initial-cluster={}", peers.join(",")),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=weft".into(),
    ];
    let container = Container {
        name: "etcd".into(),
        image: Some(image.into()),
        command: Some(vec!["etcd".into()]),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("client".into()),
                container_port: 2379,
                ..Default::default()
            },
            ContainerPort {
                name: Some("peer".into()),
                container_port: 2380,
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(false),
            ..weft_inject::restricted(CP_UID)
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/var/lib/etcd".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(ETCD),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                ETCD.to_owned(),
            )])),
            ports: Some(vec![
                ServicePort {
                    name: Some("client".into()),
                    port: 2379,
                    ..Default::default()
                },
                ServicePort {
                    name: Some("peer".into()),
                    port: 2380,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let set = StatefulSet {
        metadata: meta(ETCD),
        spec: Some(StatefulSetSpec {
            service_name: Some(ETCD.into()),
            replicas: Some(3),
            pod_management_policy: Some("Parallel".into()),
            selector: selector(ETCD),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(ETCD)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    affinity: Some(anti_affinity(ETCD)),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(CP_UID),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(quantities(&[("storage", "2Gi")])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        erased::Json::json(&service),
        erased::Json::json(&set),
        erased::Json::json(&pdb(ETCD)),
    ]
}

/// Serializing any of the objects above to a JSON value, through one signature.
mod erased {
    pub(super) trait Json {
        fn json(&self) -> anyhow::Result<serde_json::Value>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> anyhow::Result<serde_json::Value> {
            Ok(serde_json::to_value(self)?)
        }
    }
}
