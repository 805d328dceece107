use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn cfg() -> InjectConfig {
    InjectConfig {
        trust_root_sha256: Some("ab:cd".into()),
        ..InjectConfig::default()
    }
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "version": "v2"}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "db-migrate"}],
                    "containers": [{
                        "name": "app",
                        "image": "web:1",
                        "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}],
                        "readinessProbe": {"httpGet": {"path": "/healthz?full=1", "port": "http"}},
                        "livenessProbe": {"httpGet": {"path": "/live", "port": 9090, "scheme": "HTTPS"}}
                    }]
                }
            }
        }
    })
}

fn env_of(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect()
}

#[test]
fn a_deployment_gets_init_then_native_sidecar_before_its_own_init_containers() {
    let (out, report) = inject(&deployment(), &cfg(), None);
    assert_eq!(report.outcome, Outcome::Injected, "{report}");
    assert_eq!(report.to_string(), "deployment/web injected");
    let spec = &out["spec"]["template"]["spec"];
    let inits: Vec<&str> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["weft-init", "weft-proxy", "migrate"]);
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    let env = env_of(proxy);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("WEFT_SERVICE"), Some("$(WEFT_POD_NAMESPACE)/web"));
    assert_eq!(get("WEFT_APP_PORT"), Some("8080"));
    // The named port resolved, the query dropped; the HTTPS probe's port bypasses the proxy.
    assert_eq!(get("WEFT_PROBE_PATHS"), Some("8080:/healthz"));
    assert_eq!(get("WEFT_LABELS"), Some("app=web,version=v2"));
    let init_args = spec["initContainers"][0]["args"].to_string();
    assert!(
        init_args.contains("\"--skip-inbound-ports\",\"9090\""),
        "{init_args}"
    );
    let annotations = &out["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations[names::TRUST_ROOT_ANNOTATION], "ab:cd");
    assert_eq!(annotations[names::VERSION_ANNOTATION], VERSION);
    // Nothing outside the template changed.
    let mut outside = out.clone();
    outside["spec"]["template"] = Value::Null;
    let mut before = deployment();
    before["spec"]["template"] = Value::Null;
    assert_eq!(outside, before);
}

#[test]
fn inject_is_idempotent_and_uninject_gives_the_input_back() {
    for object in [deployment(), cronjob(), bare_pod()] {
        let (once, _) = inject(&object, &cfg(), None);
        let (twice, report) = inject(&once, &cfg(), None);
        assert_eq!(report.outcome, Outcome::AlreadyInjected);
        assert_eq!(once, twice);
        let (back, report) = uninject(&once);
        assert_eq!(report.outcome, Outcome::Uninjected);
        assert_eq!(back, object);
        // Key order too: what a user reads in a diff.
        assert_eq!(back.to_string(), object.to_string());
    }
}

fn cronjob() -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "job", "image": "j"}]}
        }}}}
    })
}

fn bare_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-7d9f-"},
           "spec": {"containers": [{"name": "app", "image": "a"}]}})
}

#[test]
fn a_cronjob_is_injected_in_its_job_template_and_warned_without_a_service() {
    let (out, report) = inject(&cronjob(), &cfg(), None);
    assert_eq!(report.outcome, Outcome::Injected);
    let t = &out["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(t["spec"]["initContainers"][1]["name"], "weft-proxy");
    assert!(
        report.warnings[0].contains("not registered under a service"),
        "{report}"
    );
    assert_eq!(
        t["metadata"]["annotations"][names::CREATED_ANNOTATION],
        "spec.initContainers,spec.volumes,metadata,metadata.annotations"
    );
}

#[test]
fn skips_say_why() {
    let mut disabled = deployment();
    disabled["spec"]["template"]["metadata"]["labels"]["weft.io/inject"] = "disabled".into();
    let mut invalid = deployment();
    invalid["spec"]["template"]["metadata"]["labels"]["weft.io/inject"] = "yes".into();
    let mut host = bare_pod();
    host["spec"]["hostNetwork"] = true.into();
    let mut linkerd = bare_pod();
    linkerd["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "linkerd-proxy", "image": "l"}));
    let mut system = bare_pod();
    system["metadata"]["namespace"] = "weft-system".into();
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
    for (object, says) in [
        (disabled, "deployment/web skipped: weft.io/inject: disabled"),
        (
            invalid,
            "deployment/web skipped: weft.io/inject: \"yes\" is neither enabled nor disabled",
        ),
        (host, "pod/web-7d9f- skipped: hostNetwork"),
        (
            linkerd,
            "pod/web-7d9f- skipped: has a Linkerd proxy (container linkerd-proxy)",
        ),
        (
            system,
            "pod/web-7d9f- skipped: in the control plane's namespace weft-system",
        ),
        (service, "service/web skipped: not a workload"),
    ] {
        let (out, report) = inject(&object, &cfg(), None);
        assert_eq!(out, object, "a skipped object is unchanged");
        assert_eq!(report.to_string(), says);
    }
}

#[test]
fn the_non_native_mode_puts_the_proxy_first_with_a_post_start_wait() {
    let mut pod = bare_pod();
    pod["metadata"]["annotations"] = json!({"config.weft.io/native-sidecar": "false"});
    let (out, report) = inject(&pod, &cfg(), None);
    assert_eq!(report.outcome, Outcome::Injected);
    let proxy = &out["spec"]["containers"][0];
    assert_eq!(proxy["name"], "weft-proxy");
    assert!(proxy.get("restartPolicy").is_none());
    let hook = proxy["lifecycle"]["postStart"]["exec"]["command"].to_string();
    assert!(hook.contains("wait-ready"), "{hook}");
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(uninject(&out).0, pod);
}

#[test]
fn a_review_echoes_the_uid_always_allows_and_patches_to_the_injected_object() {
    let pod = bare_pod();
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "namespace": "shop",
                    "operation": "CREATE", "object": pod}
    });
    let r = review::review(body.to_string().as_bytes(), &cfg()).unwrap();
    let resp = &r.response["response"];
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        resp["patch"].as_str().unwrap(),
    )
    .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched, inject(&pod, &cfg(), Some("shop")).0);

    let mut host = pod.clone();
    host["spec"]["hostNetwork"] = true.into();
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": {"uid": "u", "object": host}});
    let r = review::review(body.to_string().as_bytes(), &cfg()).unwrap();
    assert_eq!(r.response["response"]["allowed"], true);
    assert!(r.response["response"].get("patch").is_none());
    assert_eq!(
        r.response["response"]["warnings"][0],
        "weft: not injected: hostNetwork"
    );
}

#[test]
fn a_bad_review_is_a_clear_error() {
    for (body, says) in [
        ("{", "not JSON"),
        (
            r#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#,
            "v1beta1",
        ),
        (
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}"#,
            "expected AdmissionReview",
        ),
        (
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}"#,
            "uid",
        ),
        (
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}"#,
            "object",
        ),
    ] {
        let e = review::review(body.as_bytes(), &cfg())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{body}: {e}");
    }
}

/// Generated workloads: any kind with a template, optional init containers, volumes,
/// annotations, labels and ports, keys in varying orders.
fn workload() -> impl Strategy<Value = Value> {
    let kind = prop::sample::select(vec![
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
    ]);
    let name = "[a-z][a-z0-9-]{0,10}[a-z0-9]";
    (
        kind,
        name,
        prop::option::of(prop::collection::vec(name, 0..3)),
        prop::option::of(prop::collection::vec(name, 0..3)),
        prop::option::of(prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..3)),
        prop::option::of(1u16..65535),
        any::<bool>(),
    )
        .prop_map(|(kind, name, inits, vols, annotations, port, labelled)| {
            let mut spec = serde_json::Map::new();
            if let Some(inits) = inits {
                let list: Vec<Value> =
                    inits.iter().map(|n| json!({"name": format!("i-{n}"), "image": "x"})).collect();
                spec.insert("initContainers".into(), list.into());
            }
            let mut app = json!({"name": "app", "image": "a"});
            if let Some(p) = port {
                app["ports"] = json!([{"containerPort": p}]);
            }
            spec.insert("containers".into(), json!([app]));
            if let Some(vols) = vols {
                let list: Vec<Value> =
                    vols.iter().map(|n| json!({"name": format!("v-{n}"), "emptyDir": {}})).collect();
                spec.insert("volumes".into(), list.into());
            }
            let mut meta = serde_json::Map::new();
            if labelled {
                meta.insert("labels".into(), json!({"app": name}));
            }
            if let Some(a) = annotations {
                meta.insert("annotations".into(), serde_json::to_value(a).unwrap());
            }
            let template = json!({"metadata": meta, "spec": spec});
            let wrap = |t: Value| match kind {
                "Pod" => {
                    let mut t = t;
                    t["apiVersion"] = "v1".into();
                    t["kind"] = "Pod".into();
                    t["metadata"]["name"] = name.clone().into();
                    t
                }
                "CronJob" => json!({"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name},
                                    "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": t}}}}),
                _ => json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
                            "spec": {"template": t}}),
            };
            wrap(template)
        })
}

proptest! {
    #[test]
    fn inject_twice_is_inject_once_and_uninject_inverts_it(object in workload()) {
        let (once, report) = inject(&object, &cfg(), None);
        prop_assert_eq!(&report.outcome, &Outcome::Injected);
        let (twice, _) = inject(&once, &cfg(), None);
        prop_assert_eq!(&twice, &once);
        let (back, _) = uninject(&once);
        prop_assert_eq!(back.to_string(), object.to_string());
    }
}
