//! An AdmissionReview body as the injector webhook receives it: `weft_inject::review::review`
//! (size limit, JSON, apiVersion/kind/uid/object, then `inject` on the object and the JSON
//! patch), and the response encoded as the webhook sends it. The patch, applied to the object
//! the API server sent, must give exactly what `inject` made; `uninject` of any object must not
//! panic either (`weftctl uninject`).
#![no_main]
use serde_json::{Value, json};
use weft_inject::InjectConfig;

fn seeds() -> Vec<Vec<u8>> {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"weft.io/inject": "enabled"}},
            "spec": {"serviceAccountName": "web",
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]}}}
    });
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "a"}]}});
    let cronjob = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}});
    [deployment, pod, cronjob]
        .into_iter()
        .map(|object| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "namespace": "shop",
                    "operation": "CREATE", "object": object}})
            .to_string()
            .into_bytes()
        })
        .collect()
}

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(seeds),
    |data: &[u8]| {
        let config = InjectConfig::default();
        if let Ok(reviewed) = weft_inject::review::review(data, &config) {
            serde_json::to_vec(&reviewed.response).expect("the response encodes");
            if let Some(patch) = &reviewed.patch {
                let review: Value = serde_json::from_slice(data).expect("parsed once already");
                let object = &review["request"]["object"];
                let namespace = review["request"]["namespace"].as_str();
                let (injected, _) = weft_inject::inject(object, &config, namespace);
                let mut patched = object.clone();
                json_patch::patch(&mut patched, patch).expect("the patch applies to the object");
                assert_eq!(patched, injected, "the patch does not give the injected object");
            }
        }
        if let Ok(object) = serde_json::from_slice::<Value>(data) {
            let _ = weft_inject::uninject(&object);
        }
    }
);
