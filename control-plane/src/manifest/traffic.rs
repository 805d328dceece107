//! Manifest ↔ wire for traffic policy: a Service's `spec.trafficPolicy` and an HTTPRoute's
//! `retry.weft.io/` annotations. As in [`super::convert`], manifest → wire reports only what the
//! manifest form can get wrong (an unknown load balancer or annotation, a value that is not a
//! string, a number, a boolean or a duration) and leaves ranges and retry conditions to the
//! domain `TryFrom`; wire → manifest is total.

use std::collections::BTreeMap;

use serde_json::Value;
use weft_proto::mesh::v1 as pb;

use super::convert::Errs;
use super::{OutlierDetectionSpec, TrafficPolicySpec, format_duration};
use crate::model::{
    self, ANNOTATION_BUDGET_MIN_PER_SECOND, ANNOTATION_BUDGET_PERCENT, ANNOTATION_BUDGET_WINDOW,
    ANNOTATION_GRPC_ON, ANNOTATION_NON_IDEMPOTENT, ANNOTATION_ON, annotation_field,
};

const LOAD_BALANCERS: [(model::LoadBalancer, pb::LoadBalancer); 3] = [
    (model::LoadBalancer::PeakEwma, pb::LoadBalancer::PeakEwma),
    (
        model::LoadBalancer::RoundRobin,
        pb::LoadBalancer::RoundRobin,
    ),
    (
        model::LoadBalancer::LeastRequest,
        pb::LoadBalancer::LeastRequest,
    ),
];

/// Every annotation an HTTPRoute may carry, in the order the docs list them.
const RETRY_ANNOTATIONS: [&str; 6] = [
    ANNOTATION_ON,
    ANNOTATION_GRPC_ON,
    ANNOTATION_NON_IDEMPOTENT,
    ANNOTATION_BUDGET_PERCENT,
    ANNOTATION_BUDGET_MIN_PER_SECOND,
    ANNOTATION_BUDGET_WINDOW,
];

const BUDGET_ANNOTATIONS: [&str; 3] = [
    ANNOTATION_BUDGET_PERCENT,
    ANNOTATION_BUDGET_MIN_PER_SECOND,
    ANNOTATION_BUDGET_WINDOW,
];

pub(super) fn traffic_policy_to_pb(errs: &mut Errs, t: &TrafficPolicySpec) -> pb::TrafficPolicy {
    let f = "spec.trafficPolicy";
    let load_balancer = match t.load_balancer.as_deref() {
        None => pb::LoadBalancer::Unspecified,
        Some(s) => LOAD_BALANCERS
            .iter()
            .find(|(lb, _)| lb.as_str() == s)
            .map(|(_, pb)| *pb)
            .unwrap_or_else(|| {
                errs.add(
                    format!("{f}.loadBalancer"),
                    format!(
                        "{s:?} is not a load balancer: use peak-ewma, round-robin or least-request"
                    ),
                );
                pb::LoadBalancer::Unspecified
            }),
    };
    // 0 on the wire means the default; written out, it would be read as a cap of nothing.
    let max_pending_requests = match t.max_pending_requests {
        Some(0) => {
            errs.add(
                format!("{f}.maxPendingRequests"),
                format!(
                    "must be at least 1 (leave the field out for the default, {})",
                    model::DEFAULT_MAX_PENDING
                ),
            );
            0
        }
        n => n.unwrap_or(0),
    };
    pb::TrafficPolicy {
        load_balancer: load_balancer.into(),
        outlier_detection: t.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
            consecutive_failures: o.consecutive_failures,
            base_ejection_time: errs.duration(
                format!("{f}.outlierDetection.baseEjectionTime"),
                &o.base_ejection_time,
            ),
            max_ejection_percent: o.max_ejection_percent,
        }),
        max_pending_requests,
    }
}

/// The retry policy of an HTTPRoute's annotations: `None` when it has none of them.
pub(super) fn retry_policy_to_pb(
    errs: &mut Errs,
    annotations: &BTreeMap<String, Value>,
) -> Option<pb::RetryPolicy> {
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    let mut present = false;
    for (key, value) in annotations {
        let field = annotation_field(key);
        if !RETRY_ANNOTATIONS.contains(&key.as_str()) {
            errs.add(
                field,
                format!(
                    "unknown annotation: an HTTPRoute takes only {}",
                    RETRY_ANNOTATIONS.join(", ")
                ),
            );
            continue;
        }
        present = true;
        match value {
            Value::String(v) => {
                values.insert(key, v);
            }
            Value::Number(_) | Value::Bool(_) => errs.add(
                field,
                format!("annotation values are strings: write \"{value}\" in quotes"),
            ),
            _ => errs.add(field, "annotation values are strings"),
        }
    }
    if !present {
        return None;
    }
    let list = |key: &str| -> Vec<String> {
        values.get(key).map_or_else(Vec::new, |v| {
            v.split(',').map(|s| s.trim().to_owned()).collect()
        })
    };
    let non_idempotent = match values.get(ANNOTATION_NON_IDEMPOTENT).copied() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            errs.add(
                annotation_field(ANNOTATION_NON_IDEMPOTENT),
                format!("{other:?} is not a boolean: use \"true\" or \"false\""),
            );
            false
        }
    };
    let mut whole = |key: &str| -> Option<u32> {
        let v = *values.get(key)?;
        let message = if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            format!("{v:?} is not a whole number (e.g. \"20\")")
        } else {
            match v.parse() {
                Ok(n) => return Some(n),
                Err(_) => format!("{v:?} is too large"),
            }
        };
        errs.add(annotation_field(key), message);
        None
    };
    let percent = whole(ANNOTATION_BUDGET_PERCENT);
    let min_per_second = whole(ANNOTATION_BUDGET_MIN_PER_SECOND);
    let window = errs.duration(
        annotation_field(ANNOTATION_BUDGET_WINDOW),
        &values
            .get(ANNOTATION_BUDGET_WINDOW)
            .map(|v| (*v).to_owned()),
    );
    let budget = BUDGET_ANNOTATIONS
        .iter()
        .any(|k| annotations.contains_key(*k))
        .then_some(pb::RetryBudget {
            percent,
            min_per_second,
            window,
        });
    Some(pb::RetryPolicy {
        on: list(ANNOTATION_ON),
        grpc_on: list(ANNOTATION_GRPC_ON),
        non_idempotent,
        budget,
    })
}

// ---- wire → manifest (total) ----------------------------------------------------------------

pub(super) fn traffic_policy_of(t: &pb::TrafficPolicy) -> TrafficPolicySpec {
    let load_balancer = match pb::LoadBalancer::try_from(t.load_balancer) {
        Ok(pb::LoadBalancer::Unspecified) => None,
        known => Some(
            LOAD_BALANCERS
                .iter()
                .find(|(_, pb)| known == Ok(*pb))
                .map_or_else(
                    // Shown as-is so that re-applying it is refused rather than guessed.
                    || format!("unknown ({})", t.load_balancer),
                    |(lb, _)| lb.as_str().to_owned(),
                ),
        ),
    };
    TrafficPolicySpec {
        load_balancer,
        max_pending_requests: (t.max_pending_requests != 0).then_some(t.max_pending_requests),
        outlier_detection: t.outlier_detection.as_ref().map(|o| OutlierDetectionSpec {
            consecutive_failures: o.consecutive_failures,
            base_ejection_time: o.base_ejection_time.as_ref().map(format_duration),
            max_ejection_percent: o.max_ejection_percent,
        }),
    }
}

/// The annotations of a retry policy. `non-idempotent` is always written, so that a policy of
/// nothing but defaults still reads back as a policy; a budget of nothing but defaults is
/// written as no budget annotations, which means the same.
pub(super) fn retry_annotations_of(p: Option<&pb::RetryPolicy>) -> BTreeMap<String, Value> {
    let Some(p) = p else {
        return BTreeMap::new();
    };
    let mut a = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        a.insert(key.to_owned(), Value::String(value));
    };
    if !p.on.is_empty() {
        put(ANNOTATION_ON, p.on.join(","));
    }
    if !p.grpc_on.is_empty() {
        put(ANNOTATION_GRPC_ON, p.grpc_on.join(","));
    }
    put(ANNOTATION_NON_IDEMPOTENT, p.non_idempotent.to_string());
    if let Some(b) = &p.budget {
        if let Some(n) = b.percent {
            put(ANNOTATION_BUDGET_PERCENT, n.to_string());
        }
        if let Some(n) = b.min_per_second {
            put(ANNOTATION_BUDGET_MIN_PER_SECOND, n.to_string());
        }
        if let Some(d) = &b.window {
            put(ANNOTATION_BUDGET_WINDOW, format_duration(d));
        }
    }
    a
}
