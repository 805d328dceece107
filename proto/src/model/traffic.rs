//! Traffic policy in the domain model: a Service's load balancer, outlier detection and
//! pending-request cap, and an HTTPRoute's retry policy (conditions, gRPC codes, non-idempotent
//! opt-in, budget). Checked here, through the same collect-every-error `Errors` as the rest of
//! the model; field paths are in manifest terms.

use std::time::Duration;

use super::{Errors, duration, pb_duration};
use crate::mesh::v1 as pb;

/// Pending requests per proxy and service when a Service sets none.
pub const DEFAULT_MAX_PENDING: u32 = 10_000;
/// The largest pending-request cap accepted.
pub const MAX_PENDING: u32 = 1_000_000;
/// Failures in a row that eject an endpoint, by default.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// The first ejection's length, by default.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
/// The share of a service's endpoints that may be ejected at once, by default.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// Retries as a share of requests, by default (percent).
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// Retries per second allowed whatever the ratio, by default.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// The budget's window, by default.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// How a proxy chooses among a service's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × requests in flight.
    #[default]
    PeakEwma,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
}

impl LoadBalancer {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::PeakEwma => "peak-ewma",
            LoadBalancer::RoundRobin => "round-robin",
            LoadBalancer::LeastRequest => "least-request",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// 0: never eject.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    /// 0..=100.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection_time: DEFAULT_BASE_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficPolicy {
    pub load_balancer: LoadBalancer,
    pub outlier_detection: OutlierDetection,
    /// 1..=MAX_PENDING.
    pub max_pending_requests: u32,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            load_balancer: LoadBalancer::default(),
            outlier_detection: OutlierDetection::default(),
            max_pending_requests: DEFAULT_MAX_PENDING,
        }
    }
}

/// A failure kind a route may retry besides its status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOn {
    /// Any 5xx response.
    ServerError,
    /// 502, 503, 504.
    GatewayError,
    /// The connection to the endpoint could not be made (nothing was sent).
    ConnectFailure,
    /// The stream or connection was reset after the request was sent.
    Reset,
    /// The peer refused the HTTP/2 stream (nothing was processed).
    RefusedStream,
}

impl RetryOn {
    pub const ALL: [RetryOn; 5] = [
        RetryOn::ServerError,
        RetryOn::GatewayError,
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::RefusedStream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ServerError => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::RefusedStream => "refused-stream",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// gRPC status codes by their names in retry policies (lower case, '-' for '_').
pub const GRPC_CODES: [(&str, u16); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

/// The name of a gRPC status code, as retry policies spell it.
pub fn grpc_code_name(code: u16) -> Option<&'static str> {
    GRPC_CODES.iter().find(|(_, c)| *c == code).map(|(n, _)| *n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries as a percentage of requests, 0..=1000.
    pub percent: u32,
    pub min_per_second: u32,
    /// Whole seconds, 1..=60.
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: DEFAULT_BUDGET_PERCENT,
            min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            window: DEFAULT_BUDGET_WINDOW,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sorted, without duplicates. Never empty (the default is connect-failure and
    /// refused-stream).
    pub on: Vec<RetryOn>,
    /// gRPC status codes, sorted, without duplicates.
    pub grpc_on: Vec<u16>,
    pub non_idempotent: bool,
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            on: vec![RetryOn::ConnectFailure, RetryOn::RefusedStream],
            grpc_on: vec![],
            non_idempotent: false,
            budget: RetryBudget::default(),
        }
    }
}

// ---- TryFrom helpers ---------------------------------------------------------------------

pub(super) fn traffic_policy(errs: &mut Errors, p: Option<&pb::TrafficPolicy>) -> TrafficPolicy {
    let Some(p) = p else {
        return TrafficPolicy::default();
    };
    let f = "spec.trafficPolicy";
    let load_balancer = match pb::LoadBalancer::try_from(p.load_balancer) {
        Ok(pb::LoadBalancer::Unspecified | pb::LoadBalancer::PeakEwma) => LoadBalancer::PeakEwma,
        Ok(pb::LoadBalancer::RoundRobin) => LoadBalancer::RoundRobin,
        Ok(pb::LoadBalancer::LeastRequest) => LoadBalancer::LeastRequest,
        Err(_) => {
            errs.add(
                format!("{f}.loadBalancer"),
                "one of peak-ewma, round-robin, least-request",
            );
            LoadBalancer::default()
        }
    };
    let max_pending_requests = match p.max_pending_requests {
        0 => DEFAULT_MAX_PENDING,
        n if n > MAX_PENDING => {
            errs.add(
                format!("{f}.maxPendingRequests"),
                format!("must be at most {MAX_PENDING}, got {n}"),
            );
            DEFAULT_MAX_PENDING
        }
        n => n,
    };
    let mut outlier_detection = OutlierDetection::default();
    if let Some(o) = &p.outlier_detection {
        let of = format!("{f}.outlierDetection");
        if let Some(n) = o.consecutive_failures {
            if n > 1000 {
                errs.add(
                    format!("{of}.consecutiveFailures"),
                    format!("must be at most 1000, got {n}"),
                );
            } else {
                outlier_detection.consecutive_failures = n;
            }
        }
        if let Some(d) = &o.base_ejection_time {
            match duration(d) {
                Ok(d) if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) => {
                    outlier_detection.base_ejection_time = d;
                }
                Ok(d) => errs.add(
                    format!("{of}.baseEjectionTime"),
                    format!("{} is outside 100ms..=1h", humantime::format_duration(d)),
                ),
                Err(m) => errs.add(format!("{of}.baseEjectionTime"), m),
            }
        }
        if let Some(n) = o.max_ejection_percent {
            if n > 100 {
                errs.add(
                    format!("{of}.maxEjectionPercent"),
                    format!("must be between 0 and 100, got {n}"),
                );
            } else {
                outlier_detection.max_ejection_percent = n;
            }
        }
    }
    TrafficPolicy {
        load_balancer,
        outlier_detection,
        max_pending_requests,
    }
}

/// Field paths of the retry policy are the manifest's annotations.
pub const ANNOTATION_ON: &str = "retry.weft.io/on";
pub const ANNOTATION_GRPC_ON: &str = "retry.weft.io/grpc-on";
pub const ANNOTATION_NON_IDEMPOTENT: &str = "retry.weft.io/non-idempotent";
pub const ANNOTATION_BUDGET_PERCENT: &str = "retry.weft.io/budget-percent";
pub const ANNOTATION_BUDGET_MIN_PER_SECOND: &str = "retry.weft.io/budget-min-per-second";
pub const ANNOTATION_BUDGET_WINDOW: &str = "retry.weft.io/budget-window";

/// The manifest field path of an annotation, as errors name it.
pub fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[\"{key}\"]")
}

pub(super) fn retry_policy(errs: &mut Errors, p: Option<&pb::RetryPolicy>) -> RetryPolicy {
    let Some(p) = p else {
        return RetryPolicy::default();
    };
    let mut policy = RetryPolicy::default();
    if !p.on.is_empty() {
        let mut on = Vec::new();
        for s in &p.on {
            match RetryOn::parse(s) {
                Some(r) if !on.contains(&r) => on.push(r),
                Some(_) => {}
                None => errs.add(
                    annotation_field(ANNOTATION_ON),
                    format!(
                        "{s:?} is not one of {}",
                        RetryOn::ALL.map(RetryOn::as_str).join(", ")
                    ),
                ),
            }
        }
        on.sort();
        policy.on = on;
    }
    let mut grpc_on = Vec::new();
    for s in &p.grpc_on {
        match GRPC_CODES.iter().find(|(n, _)| n == s) {
            Some((_, c)) if !grpc_on.contains(c) => grpc_on.push(*c),
            Some(_) => {}
            None => errs.add(
                annotation_field(ANNOTATION_GRPC_ON),
                format!("{s:?} is not a gRPC status name (e.g. unavailable, resource-exhausted)"),
            ),
        }
    }
    grpc_on.sort_unstable();
    policy.grpc_on = grpc_on;
    policy.non_idempotent = p.non_idempotent;
    if let Some(b) = &p.budget {
        if let Some(n) = b.percent {
            if n > 1000 {
                errs.add(
                    annotation_field(ANNOTATION_BUDGET_PERCENT),
                    format!("must be between 0 and 1000, got {n}"),
                );
            } else {
                policy.budget.percent = n;
            }
        }
        if let Some(n) = b.min_per_second {
            if n > 100_000 {
                errs.add(
                    annotation_field(ANNOTATION_BUDGET_MIN_PER_SECOND),
                    format!("must be between 0 and 100000, got {n}"),
                );
            } else {
                policy.budget.min_per_second = n;
            }
        }
        if let Some(d) = &b.window {
            match duration(d) {
                Ok(d)
                    if d.subsec_nanos() == 0
                        && (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) =>
                {
                    policy.budget.window = d;
                }
                Ok(d) => errs.add(
                    annotation_field(ANNOTATION_BUDGET_WINDOW),
                    format!(
                        "{} is not whole seconds between 1s and 60s",
                        humantime::format_duration(d)
                    ),
                ),
                Err(m) => errs.add(annotation_field(ANNOTATION_BUDGET_WINDOW), m),
            }
        }
    }
    policy
}

// ---- back to the wire ----------------------------------------------------------------------

impl From<&TrafficPolicy> for pb::TrafficPolicy {
    fn from(p: &TrafficPolicy) -> Self {
        let lb = match p.load_balancer {
            LoadBalancer::PeakEwma => pb::LoadBalancer::PeakEwma,
            LoadBalancer::RoundRobin => pb::LoadBalancer::RoundRobin,
            LoadBalancer::LeastRequest => pb::LoadBalancer::LeastRequest,
        };
        let o = &p.outlier_detection;
        pb::TrafficPolicy {
            load_balancer: lb.into(),
            outlier_detection: Some(pb::OutlierDetection {
                consecutive_failures: Some(o.consecutive_failures),
                base_ejection_time: Some(pb_duration(o.base_ejection_time)),
                max_ejection_percent: Some(o.max_ejection_percent),
            }),
            max_pending_requests: p.max_pending_requests,
        }
    }
}

impl From<&RetryPolicy> for pb::RetryPolicy {
    fn from(p: &RetryPolicy) -> Self {
        pb::RetryPolicy {
            on: p.on.iter().map(|r| r.as_str().to_owned()).collect(),
            grpc_on: p
                .grpc_on
                .iter()
                .filter_map(|c| grpc_code_name(*c))
                .map(str::to_owned)
                .collect(),
            non_idempotent: p.non_idempotent,
            budget: Some(pb::RetryBudget {
                percent: Some(p.budget.percent),
                min_per_second: Some(p.budget.min_per_second),
                window: Some(pb_duration(p.budget.window)),
            }),
        }
    }
}
