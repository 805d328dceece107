//! Choosing an endpoint, and remembering how endpoints behaved: load balancing (P2C over
//! peak-EWMA latency by default, round robin, least request), passive outlier ejection, and the
//! per-service cap on pending requests.
//!
//! This is the data path's only mutable routing state. It is keyed by backend service and
//! endpoint address and never holds configuration: each call gets the snapshot's endpoints and
//! the service's `TrafficPolicy`, so a config change applies to the next request. Time is passed
//! in, so the rules are tested without clocks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weft_proto::model::{Endpoint, LoadBalancer, ObjectRef, OutlierDetection, TrafficPolicy};

use crate::error::ProxyError;

/// What a new endpoint's latency is assumed to be until it has answered, when it has no peers
/// with an estimate to start from (otherwise it starts at their best: see `pick`).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old latency observations fade (peak-EWMA's time constant).
const DECAY: Duration = Duration::from_secs(10);
/// The latency a failed attempt counts as, so an endpoint that fails fast does not look fast.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// The longest ejection: the base time doubled at most this many times.
const MAX_EJECTION_DOUBLINGS: u32 = 4;

/// Load-balancing state of every backend service this proxy has sent to.
#[derive(Debug, Default)]
pub struct Balancers {
    services: Mutex<HashMap<ObjectRef, Arc<ServiceState>>>,
}

impl Balancers {
    pub fn service(&self, id: &ObjectRef) -> Arc<ServiceState> {
        let mut services = lock(&self.services);
        if let Some(s) = services.get(id) {
            return s.clone();
        }
        let s = Arc::new(ServiceState {
            id: id.clone(),
            pending: AtomicU32::new(0),
            endpoints: Mutex::new(HashMap::new()),
        });
        services.insert(id.clone(), s.clone());
        s
    }

    /// Forgets services the configuration no longer has (their endpoints' history goes too).
    pub fn retain(&self, keep: impl Fn(&ObjectRef) -> bool) {
        lock(&self.services).retain(|id, _| keep(id));
    }

    /// The state of a service's endpoints now, for `/explain` and `/config_dump`.
    pub fn describe(&self, id: &ObjectRef, now: Instant) -> Vec<(SocketAddr, EndpointReport)> {
        let Some(s) = lock(&self.services).get(id).cloned() else {
            return vec![];
        };
        let eps = lock(&s.endpoints);
        let mut out: Vec<_> = eps.iter().map(|(a, e)| (*a, e.report(now))).collect();
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

/// One backend service's endpoints as this proxy has seen them.
#[derive(Debug)]
pub struct ServiceState {
    id: ObjectRef,
    pending: AtomicU32,
    endpoints: Mutex<HashMap<SocketAddr, EndpointState>>,
}

#[derive(Debug, Clone)]
struct EndpointState {
    /// Peak-EWMA of response latency, in nanoseconds.
    ewma_ns: f64,
    updated: Instant,
    in_flight: u32,
    consecutive_failures: u32,
    /// Ejections without a success in between.
    ejections: u32,
    /// Out of rotation until then; afterwards one probation request decides.
    ejected_until: Option<Instant>,
    /// The probation request is in flight.
    probing: bool,
    /// Smooth weighted round robin's running score.
    rr_current: i64,
}

impl EndpointState {
    fn new(now: Instant) -> Self {
        Self {
            ewma_ns: DEFAULT_RTT.as_nanos() as f64,
            updated: now,
            in_flight: 0,
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
            probing: false,
            rr_current: 0,
        }
    }

    /// Ejected now: in its ejection time, or on probation with the probe in flight.
    fn ejected(&self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) => until > now || self.probing,
            None => false,
        }
    }

    fn report(&self, now: Instant) -> EndpointReport {
        EndpointReport {
            ewma_ms: self.ewma_ns / 1e6,
            in_flight: self.in_flight,
            consecutive_failures: self.consecutive_failures,
            ejected_for: self
                .ejected_until
                .filter(|_| self.ejected(now))
                .map(|until| until.saturating_duration_since(now)),
            probation: self.ejected_until.is_some_and(|u| u <= now),
        }
    }
}

/// How an endpoint looks to this proxy (for people).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    pub ewma_ms: f64,
    pub in_flight: u32,
    pub consecutive_failures: u32,
    /// Some while ejected: the time left.
    pub ejected_for: Option<Duration>,
    /// The ejection has run out; the next request to it is the probation request.
    pub probation: bool,
}

/// A request counted against the service's pending cap until dropped.
#[derive(Debug)]
pub struct Pending(Arc<ServiceState>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One attempt to one endpoint, in flight until [`Lease::finish`] (or drop, which counts as
/// neither success nor failure: the attempt was cancelled).
#[derive(Debug)]
pub struct Lease<'e> {
    service: Arc<ServiceState>,
    /// The chosen endpoint, borrowed from the plan's snapshot (no copy per request).
    pub endpoint: &'e Endpoint,
    started: Instant,
    done: bool,
}

/// An attempt's outcome, for latency and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect failure, reset, timeout or 5xx.
    Failure,
}

/// What ejecting an endpoint did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    None,
    Ejected { for_: Duration },
    Returned,
}

impl ServiceState {
    /// Counts a request against the cap, or refuses it: `overloaded`.
    pub fn admit(self: &Arc<Self>, max_pending: u32) -> Result<Pending, ProxyError> {
        let prev = self.pending.fetch_add(1, Ordering::AcqRel);
        let pending = Pending(self.clone());
        if prev >= max_pending {
            return Err(ProxyError::Overloaded(format!(
                "{} has {prev} requests pending (the cap is {max_pending})",
                self.id
            )));
        }
        Ok(pending)
    }

    /// Chooses among the ready endpoints of `endpoints`, preferring ones not in `avoid` (those
    /// an earlier attempt of the same request used). `draw` gives uniform numbers in [0, 1).
    pub fn pick<'e>(
        self: &Arc<Self>,
        policy: &TrafficPolicy,
        endpoints: &'e [Endpoint],
        avoid: &[SocketAddr],
        now: Instant,
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<Lease<'e>, ProxyError> {
        let mut states = lock(&self.endpoints);
        let mut ready = 0;
        let mut new = 0;
        for e in endpoints.iter().filter(|e| e.ready) {
            ready += 1;
            if !states.contains_key(&e.address) {
                new += 1;
            }
        }
        if new > 0 {
            // A new endpoint starts at its peers' best estimate (the default only when it has
            // none): at the 30 ms default it would lose every draw against peers answering in
            // 1 ms, never be tried, and never be measured (a scale-up that takes no traffic).
            let best = states
                .values()
                .map(|s| decayed_ewma(s, now))
                .fold(f64::INFINITY, f64::min);
            for e in endpoints.iter().filter(|e| e.ready) {
                states.entry(e.address).or_insert_with(|| {
                    let mut s = EndpointState::new(now);
                    if best.is_finite() {
                        s.ewma_ns = best;
                    }
                    s
                });
            }
        }
        if ready == 0 {
            return Err(ProxyError::NoEndpoints(self.id.to_string()));
        }
        // Forget endpoints that are gone (their ejection history goes with them).
        if states.len() > ready {
            states.retain(|a, _| endpoints.iter().any(|e| e.ready && e.address == *a));
        }
        let mut candidates: Vec<&'e Endpoint> = endpoints
            .iter()
            .filter(|e| e.ready && states.get(&e.address).is_some_and(|s| !s.ejected(now)))
            .collect();
        if candidates.is_empty() {
            return Err(ProxyError::AllEndpointsEjected(format!(
                "{}: all {ready} endpoints are ejected after consecutive failures",
                self.id
            )));
        }
        if candidates.iter().any(|e| !avoid.contains(&e.address)) {
            candidates.retain(|e| !avoid.contains(&e.address));
        }
        let chosen = match policy.load_balancer {
            LoadBalancer::RoundRobin => round_robin(&mut states, &candidates),
            LoadBalancer::PeakEwma => p2c(&states, &candidates, now, draw, |s, now| {
                decayed_ewma(s, now) * f64::from(s.in_flight + 1)
            }),
            LoadBalancer::LeastRequest => p2c(&states, &candidates, now, draw, |s, _| {
                f64::from(s.in_flight + 1)
            }),
        };
        let state = states
            .get_mut(&chosen.address)
            .ok_or_else(|| ProxyError::NoEndpoints(self.id.to_string()))?;
        state.in_flight += 1;
        if state.ejected_until.is_some() {
            // Its ejection ran out: this is the probation request.
            state.probing = true;
        }
        Ok(Lease {
            service: self.clone(),
            endpoint: chosen,
            started: now,
            done: false,
        })
    }
}

impl Lease<'_> {
    /// Records the attempt's latency and outcome; ejects or returns the endpoint as outlier
    /// detection says.
    pub fn finish(
        mut self,
        outcome: Outcome,
        outlier: &OutlierDetection,
        now: Instant,
    ) -> Ejection {
        self.done = true;
        let mut states = lock(&self.service.endpoints);
        let total = states.len();
        let ejected_now = states.values().filter(|s| s.ejected(now)).count();
        let Some(s) = states.get_mut(&self.endpoint.address) else {
            return Ejection::None;
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        let rtt = now.saturating_duration_since(self.started);
        let rtt = match outcome {
            Outcome::Success => rtt,
            Outcome::Failure => rtt.max(FAILURE_PENALTY),
        };
        observe(s, rtt, now);
        record(s, outcome, outlier, now, ejected_now, total)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut states = lock(&self.service.endpoints);
        if let Some(s) = states.get_mut(&self.endpoint.address) {
            s.in_flight = s.in_flight.saturating_sub(1);
            // A cancelled probe decides nothing: the next request probes again.
            s.probing = false;
        }
    }
}

/// Outlier detection's rules for one attempt's outcome. `ejected_now` counts the endpoints
/// ejected at this moment (this one included, if it is), out of `total`.
fn record(
    s: &mut EndpointState,
    outcome: Outcome,
    outlier: &OutlierDetection,
    now: Instant,
    ejected_now: usize,
    total: usize,
) -> Ejection {
    let was_probing = s.probing;
    s.probing = false;
    match outcome {
        Outcome::Success => {
            s.consecutive_failures = 0;
            if s.ejected_until.is_some_and(|u| u <= now) {
                s.ejected_until = None;
                s.ejections = 0;
                return Ejection::Returned;
            }
            Ejection::None
        }
        Outcome::Failure => {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            let threshold = outlier.consecutive_failures;
            let due = was_probing
                || (threshold > 0
                    && s.consecutive_failures >= threshold
                    && s.ejected_until.is_none());
            // A probe that failed re-ejects its endpoint whatever the cap: it was ejected already.
            if !due || (!was_probing && ejected_now + 1 > max_ejected(outlier, total)) {
                return Ejection::None;
            }
            s.ejections = s.ejections.saturating_add(1);
            let doublings = (s.ejections - 1).min(MAX_EJECTION_DOUBLINGS);
            let for_ = outlier.base_ejection_time * (1u32 << doublings);
            s.ejected_until = Some(now + for_);
            s.consecutive_failures = 0;
            Ejection::Ejected { for_ }
        }
    }
}

/// How many of `total` endpoints may be ejected at once: the configured share, rounded down.
/// A lone endpoint is kept at the default 50 %: answers from a flaky endpoint (which retries
/// can hide) beat none at all.
pub fn max_ejected(outlier: &OutlierDetection, total: usize) -> usize {
    if outlier.consecutive_failures == 0 {
        return 0;
    }
    total * outlier.max_ejection_percent as usize / 100
}

/// Peak-EWMA: a slower response replaces the estimate at once; faster ones pull it down
/// gradually.
fn observe(s: &mut EndpointState, rtt: Duration, now: Instant) {
    let rtt = rtt.as_nanos() as f64;
    if rtt > s.ewma_ns {
        s.ewma_ns = rtt;
    } else {
        let elapsed = now.saturating_duration_since(s.updated).as_secs_f64();
        let w = (-elapsed / DECAY.as_secs_f64()).exp();
        s.ewma_ns = s.ewma_ns * w + rtt * (1.0 - w);
    }
    s.updated = now;
}

/// The estimate as of `now`: an endpoint that has not answered for a while is given the
/// benefit of the doubt, decaying toward the default.
fn decayed_ewma(s: &EndpointState, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(s.updated).as_secs_f64();
    let w = (-elapsed / DECAY.as_secs_f64()).exp();
    s.ewma_ns * w + DEFAULT_RTT.as_nanos() as f64 * (1.0 - w)
}

/// Power of two choices: two endpoints drawn by weight, the one of lower cost per weight wins.
fn p2c<'a>(
    states: &HashMap<SocketAddr, EndpointState>,
    candidates: &[&'a Endpoint],
    now: Instant,
    draw: &mut dyn FnMut() -> f64,
    cost: impl Fn(&EndpointState, Instant) -> f64,
) -> &'a Endpoint {
    if candidates.len() == 1 {
        return candidates[0];
    }
    let a = weighted_index(candidates, draw, None);
    let b = weighted_index(candidates, draw, Some(a));
    let score = |i: usize| {
        let e = candidates[i];
        states
            .get(&e.address)
            .map_or(0.0, |s| cost(s, now) / f64::from(e.weight.max(1)))
    };
    if score(b) < score(a) {
        candidates[b]
    } else {
        candidates[a]
    }
}

fn weighted_index(
    candidates: &[&Endpoint],
    draw: &mut dyn FnMut() -> f64,
    except: Option<usize>,
) -> usize {
    let weight = |i: usize| {
        if Some(i) == except {
            0
        } else {
            u64::from(candidates[i].weight.max(1))
        }
    };
    let total: u64 = (0..candidates.len()).map(weight).sum();
    let mut point = ((draw().clamp(0.0, 1.0) * total as f64) as u64).min(total.saturating_sub(1));
    for i in 0..candidates.len() {
        let w = weight(i);
        if point < w {
            return i;
        }
        point -= w;
    }
    candidates.len() - 1
}

/// Smooth weighted round robin (as nginx does it): every pick adds each candidate's weight to
/// its score, and the highest score wins and pays the total back.
fn round_robin<'a>(
    states: &mut HashMap<SocketAddr, EndpointState>,
    candidates: &[&'a Endpoint],
) -> &'a Endpoint {
    let total: i64 = candidates.iter().map(|e| i64::from(e.weight.max(1))).sum();
    let mut best = 0;
    let mut best_score = i64::MIN;
    for (i, e) in candidates.iter().enumerate() {
        if let Some(s) = states.get_mut(&e.address) {
            s.rr_current += i64::from(e.weight.max(1));
            if s.rr_current > best_score {
                best_score = s.rr_current;
                best = i;
            }
        }
    }
    if let Some(s) = states.get_mut(&candidates[best].address) {
        s.rr_current -= total;
    }
    candidates[best]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
