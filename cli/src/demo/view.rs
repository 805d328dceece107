//! What the demo shows: every second it scrapes each proxy's `/metrics` and turns the counters
//! into per-service rates, success, latency quantiles, the identities on each edge and the
//! observed split. Everything shown comes from the proxies' own metrics (the mesh's view), except
//! the generator's end-to-end count.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::scrape::{Buckets, Sample};

/// A proxy the view reads, and who it is.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// `web`, `api-v1`, `api-v2`, `loadgen`.
    pub(crate) name: &'static str,
    /// Its SPIFFE ID (what its token attests).
    pub(crate) identity: String,
    /// Whether it serves an application (has an inbound side worth a row).
    pub(crate) serves: bool,
}

/// What one scrape of one proxy says, summed the way the view needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// Inbound responses, and those under 500.
    pub(crate) inbound: f64,
    pub(crate) inbound_ok: f64,
    /// Inbound latency (ms) across all label sets.
    pub(crate) latency: Buckets,
    /// Inbound responses by (the client's verified SPIFFE ID, mTLS or not).
    pub(crate) by_client: BTreeMap<(String, bool), f64>,
    /// Outbound responses by the server's verified SPIFFE ID.
    pub(crate) by_server: BTreeMap<String, f64>,
    pub(crate) retries: f64,
}

impl Counters {
    pub(crate) fn from_samples(samples: &[Sample]) -> Self {
        let mut c = Counters::default();
        for s in samples {
            let inbound = s.label("direction") == "inbound";
            match s.name.as_str() {
                "response_total" if inbound => {
                    c.inbound += s.value;
                    if s.label("status_code")
                        .parse::<u16>()
                        .is_ok_and(|code| code < 500)
                    {
                        c.inbound_ok += s.value;
                    }
                    let key = (s.label("client_id").to_owned(), s.label("tls") == "true");
                    *c.by_client.entry(key).or_default() += s.value;
                }
                "response_total" => {
                    *c.by_server
                        .entry(s.label("server_id").to_owned())
                        .or_default() += s.value;
                }
                "response_latency_ms_bucket" if inbound => {
                    let le = match s.label("le") {
                        "+Inf" => f64::INFINITY,
                        le => match le.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        },
                    };
                    c.latency.add(le, s.value);
                }
                "retries_total" => c.retries += s.value,
                _ => {}
            }
        }
        c
    }

    /// What was counted since `earlier`.
    fn since(&self, earlier: &Counters) -> Counters {
        fn map_since<K: Ord + Clone>(
            now: &BTreeMap<K, f64>,
            before: &BTreeMap<K, f64>,
        ) -> BTreeMap<K, f64> {
            now.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (v - before.get(k).copied().unwrap_or(0.0)).max(0.0),
                    )
                })
                .collect()
        }
        Counters {
            inbound: self.inbound - earlier.inbound,
            inbound_ok: self.inbound_ok - earlier.inbound_ok,
            latency: self.latency.since(&earlier.latency),
            by_client: map_since(&self.by_client, &earlier.by_client),
            by_server: map_since(&self.by_server, &earlier.by_server),
            retries: self.retries - earlier.retries,
        }
    }
}

/// The generator's own count of what it sent and got back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Generated {
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
}

/// Every member's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) at: Instant,
    pub(crate) members: Vec<Counters>,
    pub(crate) generated: Generated,
}

/// One service's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ServiceRow {
    pub(crate) name: &'static str,
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    /// Share of responses under 500; `None` without requests.
    pub(crate) success_rate: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// One caller → callee edge, as both ends saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Edge {
    /// The caller's member name, or `unmeshed` for a client without a certificate.
    pub(crate) from: String,
    pub(crate) to: &'static str,
    /// The client's SPIFFE ID as the callee's proxy verified it (empty for plaintext).
    pub(crate) client_id: String,
    /// The callee's SPIFFE ID as the caller's proxy verified it (empty if the caller's
    /// metrics don't show it).
    pub(crate) server_id: String,
    pub(crate) mtls: bool,
    pub(crate) requests: u64,
    pub(crate) rps: f64,
}

/// The split web → api observed at web's proxy: responses by the backend that answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Split {
    pub(crate) v1: u64,
    pub(crate) v2: u64,
    /// v2's share of v1 + v2; `None` before any response.
    pub(crate) v2_share: Option<f64>,
    /// Retries web's proxy sent.
    pub(crate) retries: u64,
}

/// What the view shows for an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Stats {
    pub(crate) seconds: f64,
    pub(crate) generated: Generated,
    pub(crate) services: Vec<ServiceRow>,
    pub(crate) edges: Vec<Edge>,
    pub(crate) split: Split,
}

/// Names of the members whose responses make up the split (the callee identities of web).
pub(crate) const SPLIT: (&str, &str) = ("api-v1", "api-v2");

/// The stats between two snapshots.
pub(crate) fn stats(members: &[Member], earlier: &Snapshot, now: &Snapshot) -> Stats {
    let secs = now.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
    let deltas: Vec<Counters> = now
        .members
        .iter()
        .zip(&earlier.members)
        .map(|(n, e)| n.since(e))
        .collect();
    let by_identity = |id: &str| members.iter().position(|m| m.identity == id);
    let mut services = Vec::new();
    let mut edges = Vec::new();
    for (m, d) in members.iter().zip(&deltas) {
        if !m.serves {
            continue;
        }
        services.push(ServiceRow {
            name: m.name,
            requests: d.inbound.round() as u64,
            rps: d.inbound / secs,
            success_rate: (d.inbound > 0.0).then(|| d.inbound_ok / d.inbound),
            p50_ms: d.latency.quantile(0.5),
            p99_ms: d.latency.quantile(0.99),
        });
        for ((client_id, mtls), n) in &d.by_client {
            if *n <= 0.0 {
                continue;
            }
            let caller = by_identity(client_id);
            let server_id = caller
                .filter(|&i| deltas[i].by_server.contains_key(&m.identity))
                .map(|_| m.identity.clone())
                .unwrap_or_default();
            edges.push(Edge {
                from: caller.map_or_else(|| "unmeshed".to_owned(), |i| members[i].name.to_owned()),
                to: m.name,
                client_id: client_id.clone(),
                server_id,
                mtls: *mtls,
                requests: n.round() as u64,
                rps: n / secs,
            });
        }
    }
    let split_count = |name: &str| -> u64 {
        let Some(web) = members.iter().position(|m| m.name == "web") else {
            return 0;
        };
        members
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| deltas[web].by_server.get(&m.identity))
            .map_or(0, |n| n.round() as u64)
    };
    let (v1, v2) = (split_count(SPLIT.0), split_count(SPLIT.1));
    let retries = members
        .iter()
        .zip(&deltas)
        .filter(|(m, _)| m.name == "web")
        .map(|(_, d)| d.retries.round() as u64)
        .sum();
    let g = (now.generated, earlier.generated);
    Stats {
        seconds: secs,
        generated: Generated {
            sent: g.0.sent - g.1.sent,
            ok: g.0.ok - g.1.ok,
            failed: g.0.failed - g.1.failed,
        },
        services,
        edges,
        split: Split {
            v1,
            v2,
            v2_share: (v1 + v2 > 0).then(|| v2 as f64 / (v1 + v2) as f64),
            retries,
        },
    }
}

/// The last snapshots, enough to show rates over a window.
#[derive(Debug)]
pub(crate) struct History {
    window: Duration,
    snapshots: VecDeque<Snapshot>,
    first: Option<Snapshot>,
}

impl History {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            snapshots: VecDeque::new(),
            first: None,
        }
    }

    pub(crate) fn push(&mut self, s: Snapshot) {
        if self.first.is_none() {
            self.first = Some(s.clone());
        }
        while self
            .snapshots
            .front()
            .is_some_and(|f| s.at.duration_since(f.at) > self.window)
        {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back(s);
    }

    /// Over the window (or since the first snapshot, if younger).
    pub(crate) fn recent(&self, members: &[Member]) -> Option<Stats> {
        let (a, b) = (self.snapshots.front()?, self.snapshots.back()?);
        (a.at < b.at).then(|| stats(members, a, b))
    }

    /// Since the first snapshot.
    pub(crate) fn total(&self, members: &[Member]) -> Option<Stats> {
        let (a, b) = (self.first.as_ref()?, self.snapshots.back()?);
        (a.at < b.at).then(|| stats(members, a, b))
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

/// The full-screen view (a terminal redraws it every second).
pub(crate) fn render(s: &Stats, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let g = &s.generated;
    let _ = writeln!(
        out,
        "traffic generator → web: {:.1} rps, {} ok, {} failed (over {:.0} s)\n",
        g.sent as f64 / s.seconds,
        g.ok,
        g.failed,
        s.seconds
    );
    let _ = writeln!(
        out,
        "{:<10}{:>8}{:>10}{:>11}{:>11}   (each service's proxy, inbound)",
        "SERVICE", "RPS", "SUCCESS", "P50", "P99"
    );
    for r in &s.services {
        let _ = writeln!(
            out,
            "{:<10}{:>8.1}{:>10}{:>11}{:>11}",
            r.name,
            r.rps,
            pct(r.success_rate),
            ms(r.p50_ms),
            ms(r.p99_ms)
        );
    }
    let _ = writeln!(
        out,
        "\nEDGES (identities from the verified certificates at each end)"
    );
    for e in &s.edges {
        let tls = if e.mtls { "mTLS" } else { "plaintext" };
        let client = if e.client_id.is_empty() {
            "(no certificate)"
        } else {
            &e.client_id
        };
        let server = if e.server_id.is_empty() {
            "?"
        } else {
            &e.server_id
        };
        let _ = writeln!(
            out,
            "{:<18}{:>7.1} rps  {tls:<9} {client} → {server}",
            format!("{} → {}", e.from, e.to),
            e.rps
        );
    }
    let sp = &s.split;
    let _ = writeln!(
        out,
        "\nSPLIT web → api (responses at web's proxy by the backend that answered)"
    );
    let share = sp.v2_share;
    for (name, n, frac) in [
        (SPLIT.0, sp.v1, share.map(|v| 1.0 - v)),
        (SPLIT.1, sp.v2, share),
    ] {
        let bar = "#".repeat(frac.map_or(0, |f| (f * 40.0).round() as usize));
        let _ = writeln!(out, "{name:<10}{n:>7}  {:>6}  {bar}", pct(frac));
    }
    let _ = writeln!(out, "retries sent by web's proxy: {}", sp.retries);
    out
}

/// One line per second, for a log or a pipe.
pub(crate) fn line(s: &Stats, elapsed: Duration) -> String {
    let mut out = format!("t={:>3}s", elapsed.as_secs());
    for r in &s.services {
        let _ = write!(
            out,
            " | {} {:.1} rps {} p99 {}",
            r.name,
            r.rps,
            pct(r.success_rate),
            ms(r.p99_ms)
        );
    }
    let _ = write!(
        out,
        " | split v2 {} | retries {}",
        pct(s.split.v2_share),
        s.split.retries
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse;

    const TD: &str = "spiffe://demo.weft/ns/demo/sa/";

    fn members() -> Vec<Member> {
        ["loadgen", "web", "api-v1", "api-v2"]
            .into_iter()
            .map(|name| Member {
                name,
                identity: format!("{TD}{name}"),
                serves: name != "loadgen",
            })
            .collect()
    }

    fn inbound(client: &str, code: u16, n: u32, le_10: u32) -> String {
        let labels = format!(
            "direction=\"inbound\",authority=\"x\",status_code=\"{code}\",tls=\"true\",client_id=\"{TD}{client}\",server_id=\"\",error=\"\""
        );
        format!(
            "response_total{{{labels}}} {n}\nresponse_latency_ms_bucket{{{labels},le=\"10.0\"}} {le_10}\nresponse_latency_ms_bucket{{{labels},le=\"+Inf\"}} {n}\n"
        )
    }

    fn outbound(server: &str, n: u32) -> String {
        format!(
            "response_total{{direction=\"outbound\",authority=\"x\",status_code=\"200\",tls=\"true\",client_id=\"\",server_id=\"{TD}{server}\",error=\"\"}} {n}\n"
        )
    }

    fn snapshot(at: Instant, texts: [String; 4], generated: Generated) -> Snapshot {
        Snapshot {
            at,
            members: texts
                .iter()
                .map(|t| Counters::from_samples(&parse(t).unwrap()))
                .collect(),
            generated,
        }
    }

    #[test]
    fn rates_success_edges_and_split_come_from_the_deltas() {
        let t0 = Instant::now();
        let before = snapshot(
            t0,
            [
                outbound("web", 10),
                inbound("loadgen", 200, 10, 10) + &outbound("api-v1", 9) + &outbound("api-v2", 1),
                inbound("web", 200, 9, 9),
                inbound("web", 200, 1, 1),
            ],
            Generated {
                sent: 10,
                ok: 10,
                failed: 0,
            },
        );
        let after = snapshot(
            t0 + Duration::from_secs(2),
            [
                outbound("web", 30),
                inbound("loadgen", 200, 30, 20)
                    + &outbound("api-v1", 27)
                    + &outbound("api-v2", 3)
                    + "retries_total{backend=\"demo/api-v2\",route=\"demo/api\"} 1\n",
                inbound("web", 200, 27, 27),
                inbound("web", 200, 2, 2) + &inbound("web", 503, 2, 2),
            ],
            Generated {
                sent: 30,
                ok: 29,
                failed: 1,
            },
        );
        let s = stats(&members(), &before, &after);
        assert_eq!(
            s.generated,
            Generated {
                sent: 20,
                ok: 19,
                failed: 1
            }
        );
        let web = &s.services[0];
        assert_eq!((web.name, web.requests, web.rps), ("web", 20, 10.0));
        assert_eq!(web.success_rate, Some(1.0));
        // 10 of the 20 new ones took ≤ 10 ms: the median is the 10 ms bound.
        assert_eq!(web.p50_ms, Some(10.0));
        let v2 = &s.services[2];
        assert_eq!((v2.requests, v2.success_rate), (3, Some(1.0 / 3.0)));
        assert_eq!(s.edges.len(), 3);
        let e = &s.edges[0];
        assert_eq!((e.from.as_str(), e.to), ("loadgen", "web"));
        assert_eq!(e.client_id, format!("{TD}loadgen"));
        assert_eq!(e.server_id, format!("{TD}web"));
        assert!(e.mtls);
        assert_eq!(e.requests, 20);
        assert_eq!(
            s.split,
            Split {
                v1: 18,
                v2: 2,
                v2_share: Some(0.1),
                retries: 1
            }
        );
        let text = render(&s, "demo");
        assert!(text.contains("loadgen → web"), "{text}");
        assert!(text.contains("10.0%"), "{text}");
        assert!(line(&s, Duration::from_secs(5)).starts_with("t=  5s | web 10.0 rps 100.0%"));
    }

    #[test]
    fn a_plaintext_caller_is_unmeshed_and_nothing_is_divided_by_zero() {
        let t0 = Instant::now();
        let plain = "response_total{direction=\"inbound\",status_code=\"200\",tls=\"false\",client_id=\"\"} 4\n";
        let empty = || std::array::from_fn(|_| String::new());
        let before = snapshot(t0, empty(), Generated::default());
        let mut texts: [String; 4] = empty();
        texts[1] = plain.to_owned();
        let after = snapshot(t0 + Duration::from_secs(1), texts, Generated::default());
        let s = stats(&members(), &before, &after);
        assert_eq!(s.edges[0].from, "unmeshed");
        assert!(!s.edges[0].mtls);
        assert_eq!(s.services[1].success_rate, None);
        assert_eq!(s.split.v2_share, None);
        render(&s, "demo");
    }

    #[test]
    fn history_windows_and_totals() {
        let m = members();
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(2));
        assert!(h.recent(&m).is_none());
        for i in 0..5u32 {
            let gen_ = Generated {
                sent: u64::from(i) * 10,
                ..Generated::default()
            };
            h.push(snapshot(
                t0 + Duration::from_secs(u64::from(i)),
                std::array::from_fn(|_| String::new()),
                gen_,
            ));
        }
        assert_eq!(h.recent(&m).unwrap().generated.sent, 20);
        assert_eq!(h.total(&m).unwrap().generated.sent, 40);
    }
}
