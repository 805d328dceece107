//! `spec.trafficPolicy` of Services and the `retry.weft.io/` annotations of HTTPRoutes: parsing,
//! every refusal with its field path, and the way back.

use super::*;

const POLICIES: &str = "\
apiVersion: weft.io/v1alpha1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - {name: http, port: 8080, protocol: http1}
  trafficPolicy:
    loadBalancer: least-request
    maxPendingRequests: 1000
    outlierDetection:
      consecutiveFailures: 3
      baseEjectionTime: 10s
      maxEjectionPercent: 30
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  annotations:
    retry.weft.io/on: 5xx,connect-failure
    retry.weft.io/grpc-on: unavailable, resource-exhausted
    retry.weft.io/non-idempotent: \"true\"
    retry.weft.io/budget-percent: \"25\"
    retry.weft.io/budget-min-per-second: \"5\"
    retry.weft.io/budget-window: 30s
spec:
  parentRefs:
  - name: reviews
  rules:
  - backendRefs:
    - name: reviews
    retry:
      attempts: 2
";

/// The policies example with one line replaced.
fn policies_with(from: &str, to: &str) -> String {
    assert!(POLICIES.contains(from), "{from}");
    POLICIES.replacen(from, to, 1)
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

#[test]
fn traffic_policy_and_retry_annotations_parse_into_wire_documents() {
    let docs = parse_documents("p.yaml", POLICIES).unwrap();
    let Some(DocKind::Service(s)) = docs[0].kind.as_ref() else {
        panic!("{docs:?}")
    };
    assert_eq!(
        s.traffic_policy,
        Some(pb::TrafficPolicy {
            load_balancer: pb::LoadBalancer::LeastRequest.into(),
            outlier_detection: Some(pb::OutlierDetection {
                consecutive_failures: Some(3),
                base_ejection_time: secs(10),
                max_ejection_percent: Some(30),
            }),
            max_pending_requests: 1000,
        })
    );
    assert_eq!(
        route_of(&docs[1]).retry_policy,
        Some(pb::RetryPolicy {
            on: vec!["5xx".into(), "connect-failure".into()],
            grpc_on: vec!["unavailable".into(), "resource-exhausted".into()],
            non_idempotent: true,
            budget: Some(pb::RetryBudget {
                percent: Some(25),
                min_per_second: Some(5),
                window: secs(30),
            }),
        })
    );
    let route = model::HttpRoute::try_from(route_of(&docs[1]).clone()).unwrap();
    assert_eq!(route.retry_policy.grpc_on, [8, 14]);
}

#[test]
fn absent_policies_are_none_and_partial_ones_keep_their_gaps() {
    let docs = parse_documents("c", CANARY).unwrap();
    let Some(DocKind::Service(s)) = docs[0].kind.as_ref() else {
        panic!("{docs:?}")
    };
    assert_eq!(s.traffic_policy, None);
    assert_eq!(route_of(&docs[1]).retry_policy, None);

    let only_window = canary_with(
        "  namespace: default\n",
        "  namespace: default\n  annotations:\n    retry.weft.io/budget-window: 5s\n",
    );
    let docs = parse_documents("c", &only_window).unwrap();
    assert_eq!(
        route_of(&docs[1]).retry_policy,
        Some(pb::RetryPolicy {
            budget: Some(pb::RetryBudget {
                percent: None,
                min_per_second: None,
                window: secs(5),
            }),
            ..Default::default()
        })
    );
    let empty = canary_with(
        "    protocol: http1\n",
        "    protocol: http1\n  trafficPolicy: {outlierDetection: {}}\n",
    );
    let docs = parse_documents("c", &empty).unwrap();
    let Some(DocKind::Service(s)) = docs[0].kind.as_ref() else {
        panic!("{docs:?}")
    };
    assert_eq!(
        s.traffic_policy,
        Some(pb::TrafficPolicy {
            outlier_detection: Some(pb::OutlierDetection::default()),
            ..Default::default()
        })
    );
}

#[test]
fn traffic_policy_refusals_name_their_field() {
    let annotated_service = policies_with(
        "  name: reviews\nspec:\n  ports:",
        "  name: reviews\n  annotations: {retry.weft.io/on: 5xx}\nspec:\n  ports:",
    );
    for (text, want) in [
        (
            policies_with("loadBalancer: least-request", "loadBalancer: random"),
            "spec.trafficPolicy.loadBalancer: \"random\" is not a load balancer: use peak-ewma, round-robin or least-request",
        ),
        (
            policies_with("loadBalancer: least-request", "loadBalancer: LEAST_REQUEST"),
            "spec.trafficPolicy.loadBalancer: \"LEAST_REQUEST\" is not a load balancer: use peak-ewma, round-robin or least-request",
        ),
        (
            policies_with("maxEjectionPercent: 30", "maxEjectionPercent: 101"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100, got 101",
        ),
        (
            policies_with("consecutiveFailures: 3", "consecutiveFailures: 1001"),
            "spec.trafficPolicy.outlierDetection.consecutiveFailures: must be at most 1000, got 1001",
        ),
        (
            policies_with("baseEjectionTime: 10s", "baseEjectionTime: 10sec"),
            "spec.trafficPolicy.outlierDetection.baseEjectionTime: \"10sec\" is not a Gateway API duration (1 to 4 number-unit pairs, units h, m, s, ms: e.g. 10s, 1h30m, 500ms)",
        ),
        (
            policies_with("baseEjectionTime: 10s", "baseEjectionTime: 50ms"),
            "spec.trafficPolicy.outlierDetection.baseEjectionTime: 50ms is outside 100ms..=1h",
        ),
        (
            policies_with("maxPendingRequests: 1000", "maxPendingRequests: 0"),
            "spec.trafficPolicy.maxPendingRequests: must be at least 1 (leave the field out for the default, 10000)",
        ),
        (
            policies_with("maxPendingRequests: 1000", "maxPendingRequests: 1000001"),
            "spec.trafficPolicy.maxPendingRequests: must be at most 1000000, got 1000001",
        ),
        (
            policies_with("maxPendingRequests: 1000", "maxPendingRequests: -1"),
            "spec.trafficPolicy.maxPendingRequests: invalid value: integer `-1`, expected u32",
        ),
        (
            policies_with("maxPendingRequests: 1000", "maxPending: 1000"),
            "spec.trafficPolicy.maxPending: unknown field `maxPending`, expected one of `loadBalancer`, `maxPendingRequests`, `outlierDetection`",
        ),
        (
            policies_with(
                "maxEjectionPercent: 30",
                "maxEjectionPercent: 30\n      interval: 10s",
            ),
            "spec.trafficPolicy.outlierDetection.interval: unknown field `interval`, expected one of `consecutiveFailures`, `baseEjectionTime`, `maxEjectionPercent`",
        ),
        (
            annotated_service,
            "metadata.annotations: a Service takes no annotations: its traffic policy is spec.trafficPolicy",
        ),
    ] {
        assert_eq!(problems(&text), [want]);
    }
}

#[test]
fn retry_annotation_refusals_name_their_annotation() {
    let keys = "retry.weft.io/on, retry.weft.io/grpc-on, retry.weft.io/non-idempotent, \
                retry.weft.io/budget-percent, retry.weft.io/budget-min-per-second, \
                retry.weft.io/budget-window";
    for (from, to, want) in [
        (
            "  annotations:\n",
            "  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: \"{}\"\n",
            format!(
                "metadata.annotations[\"kubectl.kubernetes.io/last-applied-configuration\"]: unknown annotation: an HTTPRoute takes only {keys}"
            ),
        ),
        (
            "retry.weft.io/on: 5xx,connect-failure",
            "retry.weft.io/on: 5xx,connect-failures",
            "metadata.annotations[\"retry.weft.io/on\"]: \"connect-failures\" is not one of 5xx, gateway-error, connect-failure, reset, refused-stream".into(),
        ),
        (
            "retry.weft.io/on: 5xx,connect-failure",
            "retry.weft.io/on: \"\"",
            "metadata.annotations[\"retry.weft.io/on\"]: \"\" is not one of 5xx, gateway-error, connect-failure, reset, refused-stream".into(),
        ),
        (
            "unavailable, resource-exhausted",
            "UNAVAILABLE",
            "metadata.annotations[\"retry.weft.io/grpc-on\"]: \"UNAVAILABLE\" is not a gRPC status name (e.g. unavailable, resource-exhausted)".into(),
        ),
        (
            "non-idempotent: \"true\"",
            "non-idempotent: \"yes\"",
            "metadata.annotations[\"retry.weft.io/non-idempotent\"]: \"yes\" is not a boolean: use \"true\" or \"false\"".into(),
        ),
        (
            "non-idempotent: \"true\"",
            "non-idempotent: true",
            "metadata.annotations[\"retry.weft.io/non-idempotent\"]: annotation values are strings: write \"true\" in quotes".into(),
        ),
        (
            "budget-percent: \"25\"",
            "budget-percent: 25",
            "metadata.annotations[\"retry.weft.io/budget-percent\"]: annotation values are strings: write \"25\" in quotes".into(),
        ),
        (
            "budget-percent: \"25\"",
            "budget-percent: \"25%\"",
            "metadata.annotations[\"retry.weft.io/budget-percent\"]: \"25%\" is not a whole number (e.g. \"20\")".into(),
        ),
        (
            "budget-percent: \"25\"",
            "budget-percent: \"-1\"",
            "metadata.annotations[\"retry.weft.io/budget-percent\"]: \"-1\" is not a whole number (e.g. \"20\")".into(),
        ),
        (
            "budget-percent: \"25\"",
            "budget-percent: \"1001\"",
            "metadata.annotations[\"retry.weft.io/budget-percent\"]: must be between 0 and 1000, got 1001".into(),
        ),
        (
            "budget-min-per-second: \"5\"",
            "budget-min-per-second: \"99999999999\"",
            "metadata.annotations[\"retry.weft.io/budget-min-per-second\"]: \"99999999999\" is too large".into(),
        ),
        (
            "budget-min-per-second: \"5\"",
            "budget-min-per-second: \"100001\"",
            "metadata.annotations[\"retry.weft.io/budget-min-per-second\"]: must be between 0 and 100000, got 100001".into(),
        ),
        (
            "budget-min-per-second: \"5\"",
            "budget-min-per-second:",
            "metadata.annotations[\"retry.weft.io/budget-min-per-second\"]: annotation values are strings".into(),
        ),
        (
            "budget-window: 30s",
            "budget-window: 1.5s",
            "metadata.annotations[\"retry.weft.io/budget-window\"]: \"1.5s\" is not a Gateway API duration (1 to 4 number-unit pairs, units h, m, s, ms: e.g. 10s, 1h30m, 500ms)".into(),
        ),
        (
            "budget-window: 30s",
            "budget-window: 1500ms",
            "metadata.annotations[\"retry.weft.io/budget-window\"]: 1s 500ms is not whole seconds between 1s and 60s".into(),
        ),
    ] {
        assert_eq!(problems(&policies_with(from, to)), [want], "{to}");
    }
    // Every problem at once, each under its own key.
    let got = problems(
        &policies_with("5xx,connect-failure", "sometimes")
            .replace("\"true\"", "\"maybe\"")
            .replace("\"25\"", "\"x\""),
    );
    assert_eq!(got.len(), 3, "{got:#?}");
}

#[test]
fn policies_print_and_reapply() {
    let docs = parse_documents("p", POLICIES).unwrap();
    let manifests: Vec<_> = docs.iter().filter_map(Manifest::of_document).collect();
    let yaml = to_yaml(&manifests).unwrap();
    assert_eq!(parse_documents("p", &yaml).unwrap(), docs, "{yaml}");
    for line in [
        "  trafficPolicy:\n    loadBalancer: least-request\n    maxPendingRequests: 1000\n",
        "      baseEjectionTime: 10s\n",
        "retry.weft.io/grpc-on: unavailable,resource-exhausted\n",
        "retry.weft.io/budget-window: 30s\n",
    ] {
        assert!(yaml.contains(line), "{line:?} not in\n{yaml}");
    }
    // What the store keeps and serves (every field explicit) prints every annotation but an
    // empty grpc-on, and reads back to the same objects.
    let route = model::HttpRoute::try_from(route_of(&docs[1]).clone()).unwrap();
    let mut served = route.clone();
    served.retry_policy.grpc_on.clear();
    let served = pb::HttpRoute::from(&served);
    let m = HttpRouteManifest::from(&served);
    let keys: Vec<&str> = m.metadata.annotations.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "retry.weft.io/budget-min-per-second",
            "retry.weft.io/budget-percent",
            "retry.weft.io/budget-window",
            "retry.weft.io/non-idempotent",
            "retry.weft.io/on",
        ]
    );
    let yaml = to_yaml(&[Manifest::HttpRoute(m)]).unwrap();
    assert_eq!(route_of(&parse_documents("s", &yaml).unwrap()[0]), &served);
    // A default policy is stored as none: nothing to print.
    let mut default = route;
    default.retry_policy = model::RetryPolicy::default();
    let m = HttpRouteManifest::from(&pb::HttpRoute::from(&default));
    assert!(m.metadata.annotations.is_empty(), "{m:?}");
}

#[test]
fn an_unknown_stored_load_balancer_is_shown_and_refused_on_reapply() {
    let mut s = match parse_documents("p", POLICIES).unwrap()[0].kind.clone() {
        Some(DocKind::Service(s)) => s,
        other => panic!("{other:?}"),
    };
    if let Some(t) = s.traffic_policy.as_mut() {
        t.load_balancer = 9;
    }
    let yaml = to_yaml(&[Manifest::Service((&s).into())]).unwrap();
    assert!(yaml.contains("loadBalancer: unknown (9)"), "{yaml}");
    assert_eq!(
        problems(&yaml),
        [
            "spec.trafficPolicy.loadBalancer: \"unknown (9)\" is not a load balancer: use peak-ewma, round-robin or least-request"
        ]
    );
}
