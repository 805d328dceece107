//! The webhook's side of injection: an `admission.k8s.io/v1` `AdmissionReview` in, the same
//! review back with its response — `allowed: true` always (a broken injector must never stop
//! a cluster from scheduling), and when the pod is injected, an RFC 6902 JSON patch from the
//! object to [`crate::inject`]'s result.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{InjectConfig, Outcome, Report};

/// The largest review body read (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A body that is not a review the injector can answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("apiVersion {0:?}: expected admission.k8s.io/v1")]
    ApiVersion(String),
    #[error("kind {0:?}: expected AdmissionReview")]
    Kind(String),
    #[error("request.uid is missing or not a string")]
    Uid,
    #[error("request.object is missing or not an object")]
    Object,
    #[error("the body is {0} bytes, more than the {MAX_BODY} allowed")]
    TooLarge(usize),
}

/// What the webhook answers for one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The `AdmissionReview` to send back.
    pub response: Value,
    /// What inject did (for logs and metrics).
    pub report: Report,
    /// The patch, when there is one (for tests and logs).
    pub patch: Option<json_patch::Patch>,
}

/// Answers one review body.
pub fn review(body: &[u8], config: &InjectConfig) -> Result<Reviewed, ReviewError> {
    if body.len() > MAX_BODY {
        return Err(ReviewError::TooLarge(body.len()));
    }
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let api = field(&review, "apiVersion").unwrap_or_default();
    if api != "admission.k8s.io/v1" {
        return Err(ReviewError::ApiVersion(api));
    }
    let kind = field(&review, "kind").unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(kind));
    }
    let request = review.get("request").cloned().unwrap_or(Value::Null);
    let uid = field(&request, "uid").ok_or(ReviewError::Uid)?;
    let object = request
        .get("object")
        .filter(|o| o.is_object())
        .ok_or(ReviewError::Object)?;
    let namespace = field(&request, "namespace");
    let (injected, report) = crate::inject(object, config, namespace.as_deref());
    let mut response = json!({"uid": uid, "allowed": true});
    let mut warnings: Vec<String> = report
        .warnings
        .iter()
        .map(|w| format!("weft: {w}"))
        .collect();
    let patch = match &report.outcome {
        Outcome::Injected => {
            let patch = json_patch::diff(object, &injected);
            let bytes = serde_json::to_vec(&patch).map_err(|e| ReviewError::Json(e.to_string()))?;
            response["patchType"] = "JSONPatch".into();
            response["patch"] = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
            Some(patch)
        }
        Outcome::Skipped(why) => {
            warnings.push(format!("weft: not injected: {why}"));
            None
        }
        _ => None,
    };
    if !warnings.is_empty() {
        response["warnings"] = warnings.into();
    }
    Ok(Reviewed {
        response: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        report,
        patch,
    })
}
