//! What the dashboard remembers between readings, in memory only: each workload's trend (inbound
//! rate and success), and every proxy error reason and authorization refusal with when it was
//! first and last seen, for the last [`KEEP`].

use std::collections::{BTreeMap, VecDeque};

use super::mesh::{Decision, Mesh, ProxyError};

/// How far back trends and errors go.
pub(crate) const KEEP: f64 = 600.0;

type ErrorKey = (String, String, String, String, String, String);

#[derive(Debug, Default)]
pub(crate) struct History {
    trends: BTreeMap<String, VecDeque<(f64, f64, Option<f64>)>>,
    errors: BTreeMap<ErrorKey, ProxyError>,
    decisions: BTreeMap<(String, String, String, String), Decision>,
}

fn key(e: &ProxyError) -> ErrorKey {
    (
        e.at.clone(),
        e.direction.clone(),
        e.authority.clone(),
        e.reason.clone(),
        e.status.clone(),
        e.client_id.clone(),
    )
}

impl History {
    /// Records `mesh` (read at `now`, Unix seconds) and fills in its trends and the errors of
    /// the last [`KEEP`] (those not seen now with rate 0), newest first.
    pub(crate) fn record(&mut self, mesh: &mut Mesh, now: f64) {
        let cutoff = now - KEEP;
        for s in &mut mesh.services {
            let t = self.trends.entry(s.id.clone()).or_default();
            t.push_back((now, s.inbound.rps, s.inbound.success));
        }
        self.trends.retain(|_, t| {
            while t.front().is_some_and(|p| p.0 < cutoff) {
                t.pop_front();
            }
            !t.is_empty()
        });
        for s in &mut mesh.services {
            if let Some(t) = self.trends.get(&s.id) {
                s.trend = t.iter().copied().collect();
            }
        }

        for e in self.errors.values_mut() {
            e.rps = 0.0;
        }
        for e in mesh.errors.drain(..) {
            if e.rps <= 0.0 {
                continue;
            }
            let first_seen = self.errors.get(&key(&e)).map_or(now, |old| old.first_seen);
            self.errors.insert(
                key(&e),
                ProxyError {
                    first_seen,
                    last_seen: now,
                    ..e
                },
            );
        }
        self.errors.retain(|_, e| e.last_seen >= cutoff);
        let mut errors: Vec<ProxyError> = self.errors.values().cloned().collect();
        errors.sort_by(|a, b| {
            b.last_seen
                .total_cmp(&a.last_seen)
                .then(b.rps.total_cmp(&a.rps))
        });
        mesh.errors = errors;

        for d in self.decisions.values_mut() {
            d.rps = 0.0;
        }
        for d in mesh.decisions.drain(..) {
            if d.rps <= 0.0 {
                continue;
            }
            let k = (
                d.at.clone(),
                d.service.clone(),
                d.decision.clone(),
                d.policy.clone(),
            );
            let first_seen = self.decisions.get(&k).map_or(now, |old| old.first_seen);
            self.decisions.insert(
                k,
                Decision {
                    first_seen,
                    last_seen: now,
                    ..d
                },
            );
        }
        self.decisions.retain(|_, d| d.last_seen >= cutoff);
        let mut decisions: Vec<Decision> = self.decisions.values().cloned().collect();
        decisions.sort_by(|a, b| {
            b.last_seen
                .total_cmp(&a.last_seen)
                .then(b.rps.total_cmp(&a.rps))
        });
        mesh.decisions = decisions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::mesh::{Service, Traffic};

    fn mesh(rps: f64, error_rps: Option<f64>) -> Mesh {
        Mesh {
            targets: vec![],
            services: vec![Service {
                id: "spiffe://t/ns/a/sa/web".into(),
                name: "web".into(),
                kind: "workload",
                authorities: vec![],
                inbound: Traffic {
                    rps,
                    success: Some(1.0),
                    ..Traffic::default()
                },
                outbound: Traffic::default(),
                trend: vec![],
            }],
            edges: vec![],
            splits: vec![],
            retries: vec![],
            errors: error_rps
                .map(|rps| ProxyError {
                    at: "web".into(),
                    direction: "outbound".into(),
                    authority: "api.a:80".into(),
                    reason: "no-endpoints".into(),
                    status: "503".into(),
                    client_id: String::new(),
                    rps,
                    first_seen: 0.0,
                    last_seen: 0.0,
                })
                .into_iter()
                .collect(),
            decisions: error_rps
                .map(|rps| Decision {
                    at: "api".into(),
                    service: "a/api".into(),
                    decision: "deny".into(),
                    policy: "a/only-web".into(),
                    rps,
                    first_seen: 0.0,
                    last_seen: 0.0,
                })
                .into_iter()
                .collect(),
            control_plane: None,
        }
    }

    #[test]
    fn trends_errors_and_denials_are_kept_for_ten_minutes() {
        let mut h = History::default();
        let mut m = mesh(1.0, Some(2.0));
        h.record(&mut m, 1000.0);
        assert_eq!(m.errors[0].first_seen, 1000.0);
        let mut m = mesh(2.0, Some(1.0));
        h.record(&mut m, 1002.0);
        assert_eq!(m.services[0].trend.len(), 2);
        assert_eq!(m.services[0].trend[1], (1002.0, 2.0, Some(1.0)));
        assert_eq!(
            (m.errors[0].first_seen, m.errors[0].last_seen),
            (1000.0, 1002.0)
        );
        // Gone now: still listed, with no rate, until ten minutes after it was last seen.
        let mut m = mesh(3.0, None);
        h.record(&mut m, 1004.0);
        assert_eq!(
            (m.errors.len(), m.errors[0].rps, m.errors[0].last_seen),
            (1, 0.0, 1002.0)
        );
        let d = &m.decisions;
        assert_eq!(
            (d.len(), d[0].rps, d[0].first_seen, d[0].last_seen),
            (1, 0.0, 1000.0, 1002.0)
        );
        let mut m = mesh(3.0, Some(0.0));
        h.record(&mut m, 1002.0 + KEEP + 1.0);
        assert!(m.errors.is_empty());
        assert!(m.decisions.is_empty());
        // The trend's old points went too.
        assert_eq!(m.services[0].trend.len(), 2);
    }
}
