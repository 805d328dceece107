//! Where the dashboard's numbers come from, behind one trait: [`Scrape`] reads the proxies' and
//! the control plane's `/metrics` itself and computes rates from successive scrapes; [`Prom`]
//! asks a Prometheus server (`/api/v1/query`, `rate(…[window])`). Both hand the same
//! [`Reading`] to [`super::mesh::build`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::scrape::{self, Sample};

/// The label every sample of a reading carries: which target it came from (Prometheus' own
/// `instance`; the admin address for a scrape).
pub(crate) const INSTANCE: &str = "instance";

/// The counters the dashboard reads as rates.
pub(crate) const RATES: [&str; 10] = [
    "response_total",
    "response_latency_ms_bucket",
    "retries_total",
    "retry_budget_exhausted_total",
    "authz_decisions_total",
    "rate_limited_total",
    "outlier_ejections_total",
    "discovery_nacks_total",
    "discovery_pushes_total",
    "certify_refused_total",
];

/// The gauges (and counter totals) the dashboard reads as they are.
pub(crate) const VALUES: [&str; 8] = [
    "up",
    "identity_cert_expiration_timestamp_seconds",
    "discovery_connected",
    "config_generation",
    "discovery_nacks_total",
    "discovery_connected_proxies",
    "registry_revision",
    "registrations_active",
];

/// What a source says at one moment. Every sample has an [`INSTANCE`] label.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Reading {
    /// Per-second rates of the [`RATES`] counters over the window.
    pub(crate) rates: Vec<Sample>,
    /// Current values of [`VALUES`]; `up` is 1 or 0 per target, with an `error` label saying
    /// why a target is down when the source knows.
    pub(crate) values: Vec<Sample>,
    /// False until the source has seen enough to compute rates (a scrape needs two).
    pub(crate) has_rates: bool,
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of readings.
pub(crate) trait Source: Send {
    /// For the page's header: `scrape of 5 targets`, `Prometheus http://…`.
    fn describe(&self) -> String;
    /// The rates' window.
    fn window(&self) -> Duration;
    /// Reads now. An error means nothing could be read at all (a target that is down is a
    /// reading with `up` 0, not an error).
    fn read(&mut self) -> BoxFuture<'_, anyhow::Result<Reading>>;
}

fn http_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
) -> anyhow::Result<String> {
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri.clone()))
        .await
        .with_context(|| format!("GET {uri}: no answer within 5 s"))?
        .with_context(|| format!("GET {uri}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .with_context(|| format!("GET {uri}: the body did not arrive within 5 s"))?
        .with_context(|| format!("GET {uri}: read the body"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("GET {uri}: {status}: {}", text.trim());
    }
    Ok(text)
}

/// A `--scrape` target, `HOST:PORT` or `http://HOST:PORT[/path]` (path default `/metrics`).
pub(crate) fn parse_target(s: &str) -> anyhow::Result<(String, hyper::Uri)> {
    let s = s.trim();
    if s.is_empty() {
        bail!("an empty --scrape target");
    }
    if s.starts_with("https://") {
        bail!("--scrape {s}: admin ports speak plain HTTP on localhost; use http://");
    }
    let url = if s.starts_with("http://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let mut uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--scrape {s}: not HOST:PORT or an http:// URL"))?;
    let Some(authority) = uri.authority().cloned() else {
        bail!("--scrape {s}: no host");
    };
    if authority.port_u16().is_none() {
        bail!("--scrape {s}: no port (the admin port: a proxy's --admin, the control plane's)");
    }
    if uri.path() == "/" || uri.path().is_empty() {
        uri = format!("http://{authority}/metrics").parse()?;
    }
    Ok((authority.to_string(), uri))
}

/// One scrape of every target.
#[derive(Debug, Clone)]
struct Scraped {
    at: Instant,
    /// By instance: the samples, or why the scrape failed.
    targets: Vec<(String, Result<Vec<Sample>, String>)>,
}

/// Reads the targets' `/metrics` directly.
#[derive(Debug)]
pub(crate) struct Scrape {
    targets: Vec<(String, hyper::Uri)>,
    window: Duration,
    history: VecDeque<Scraped>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Scrape {
    pub(crate) fn new(targets: Vec<(String, hyper::Uri)>, window: Duration) -> Self {
        Self {
            targets,
            window,
            history: VecDeque::new(),
            client: http_client(),
        }
    }
}

impl Source for Scrape {
    fn describe(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|(i, _)| i.as_str()).collect();
        format!("/metrics of {}", names.join(", "))
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn read(&mut self) -> BoxFuture<'_, anyhow::Result<Reading>> {
        Box::pin(async move {
            let at = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (i, (_, uri)) in self.targets.iter().enumerate() {
                let (client, uri) = (self.client.clone(), uri.clone());
                set.spawn(async move {
                    let r = match get(&client, &uri).await {
                        Ok(text) => scrape::parse(&text).map_err(|e| format!("{uri}: {e}")),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    (i, r)
                });
            }
            let mut results: Vec<Option<Result<Vec<Sample>, String>>> =
                vec![None; self.targets.len()];
            while let Some(done) = set.join_next().await {
                let (i, r) = done.context("a scrape task")?;
                results[i] = Some(r);
            }
            let now = Scraped {
                at,
                targets: self
                    .targets
                    .iter()
                    .zip(results)
                    .map(|((inst, _), r)| {
                        (inst.clone(), r.unwrap_or_else(|| Err("not scraped".into())))
                    })
                    .collect(),
            };
            // Keep the newest scrape at least `window` old, and all after it.
            while self.history.len() >= 2
                && self
                    .history
                    .get(1)
                    .is_some_and(|s| at.duration_since(s.at) >= self.window)
            {
                self.history.pop_front();
            }
            let reading = reading(self.history.front(), &now);
            self.history.push_back(now);
            Ok(reading)
        })
    }
}

/// A series: its name and labels.
type SeriesKey<'a> = (&'a str, &'a [(String, String)]);

fn with_instance(s: &Sample, instance: &str) -> Sample {
    let mut s = s.clone();
    s.labels.push((INSTANCE.to_owned(), instance.to_owned()));
    s
}

fn up(instance: &str, error: Option<&str>) -> Sample {
    let mut labels = vec![(INSTANCE.to_owned(), instance.to_owned())];
    if let Some(e) = error {
        labels.push(("error".to_owned(), e.to_owned()));
    }
    Sample {
        name: "up".to_owned(),
        labels,
        value: if error.is_some() { 0.0 } else { 1.0 },
    }
}

/// The reading from an earlier scrape (if any) and this one: values from `now`, rates of the
/// counters between the two. A series `earlier` lacks (while its target answered) counts from
/// zero, so the first errors of a kind show; a counter that went down (a restart) counts from
/// zero too.
fn reading(earlier: Option<&Scraped>, now: &Scraped) -> Reading {
    let mut out = Reading::default();
    for (inst, r) in &now.targets {
        match r {
            Ok(samples) => {
                out.values.push(up(inst, None));
                out.values.extend(
                    samples
                        .iter()
                        .filter(|s| VALUES.contains(&s.name.as_str()))
                        .map(|s| with_instance(s, inst)),
                );
            }
            Err(e) => out.values.push(up(inst, Some(e))),
        }
    }
    let Some(earlier) = earlier else {
        return out;
    };
    let secs = now.at.duration_since(earlier.at).as_secs_f64();
    if secs <= 0.0 {
        return out;
    }
    out.has_rates = true;
    for (inst, r) in &now.targets {
        let Ok(samples) = r else { continue };
        let Some((_, Ok(before))) = earlier.targets.iter().find(|(i, _)| i == inst) else {
            continue;
        };
        let before: HashMap<SeriesKey<'_>, f64> = before
            .iter()
            .map(|s| ((s.name.as_str(), s.labels.as_slice()), s.value))
            .collect();
        for s in samples.iter().filter(|s| RATES.contains(&s.name.as_str())) {
            let was = before
                .get(&(s.name.as_str(), s.labels.as_slice()))
                .copied()
                .unwrap_or(0.0);
            let delta = if s.value >= was {
                s.value - was
            } else {
                s.value
            };
            let mut rate = with_instance(s, inst);
            rate.value = delta / secs;
            out.rates.push(rate);
        }
    }
    out
}

/// Reads a Prometheus server's HTTP API.
#[derive(Debug)]
pub(crate) struct Prom {
    base: String,
    window: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prom {
    pub(crate) fn new(url: &str, window: Duration) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("--prometheus {url}: an http:// URL (e.g. http://127.0.0.1:9090)");
        }
        base.parse::<hyper::Uri>()
            .with_context(|| format!("--prometheus {url}: not a URL"))?;
        if window < Duration::from_secs(1) {
            bail!("--window must be at least 1s for rate()");
        }
        Ok(Self {
            base,
            window,
            client: http_client(),
        })
    }

    async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let q = form_urlencode(promql);
        let uri: hyper::Uri = format!("{}/api/v1/query?query={q}", self.base).parse()?;
        let text = get(&self.client, &uri).await?;
        parse_vector(&text).with_context(|| format!("Prometheus' answer to {promql}"))
    }
}

impl Source for Prom {
    fn describe(&self) -> String {
        format!("Prometheus {}", self.base)
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn read(&mut self) -> BoxFuture<'_, anyhow::Result<Reading>> {
        Box::pin(async move {
            let w = format!("{}s", self.window.as_secs());
            let values = format!("{{__name__=~\"{}\"}}", VALUES.join("|"));
            let mut out = Reading {
                has_rates: true,
                ..Reading::default()
            };
            for s in self.query(&values).await? {
                out.values.push(s);
            }
            for name in RATES {
                for mut s in self.query(&format!("rate({name}[{w}])")).await? {
                    s.name = name.to_owned();
                    out.rates.push(s);
                }
            }
            // Prometheus' `up` says why a target is down only in its targets API: the page
            // links there.
            Ok(out)
        })
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn form_urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An instant vector from `/api/v1/query`'s JSON: samples named by `__name__` (empty after a
/// function), other labels kept; NaN and infinite values dropped.
pub(crate) fn parse_vector(text: &str) -> anyhow::Result<Vec<Sample>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        status: String,
        #[serde(default)]
        error: String,
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        result_type: String,
        result: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        metric: std::collections::BTreeMap<String, String>,
        value: (f64, String),
    }
    let a: Answer = serde_json::from_str(text).context("not a Prometheus API answer")?;
    if a.status != "success" {
        bail!("status {}: {}", a.status, a.error);
    }
    let data = a.data.context("no data")?;
    if data.result_type != "vector" {
        bail!(
            "a {} where an instant vector was expected",
            data.result_type
        );
    }
    Ok(data
        .result
        .into_iter()
        .filter_map(|i| {
            let value: f64 = i.value.1.parse().ok()?;
            value.is_finite().then(|| {
                let mut name = String::new();
                let labels = i
                    .metric
                    .into_iter()
                    .filter_map(|(k, v)| {
                        if k == "__name__" {
                            name = v;
                            None
                        } else {
                            Some((k, v))
                        }
                    })
                    .collect();
                Sample {
                    name,
                    labels,
                    value,
                }
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scraped(at: Instant, targets: &[(&str, Result<&str, &str>)]) -> Scraped {
        Scraped {
            at,
            targets: targets
                .iter()
                .map(|(i, r)| {
                    (
                        (*i).to_owned(),
                        r.map(|t| scrape::parse(t).unwrap()).map_err(str::to_owned),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn rates_come_from_two_scrapes_and_survive_new_series_and_restarts() {
        let t0 = Instant::now();
        let a = scraped(
            t0,
            &[
                (
                    "p1",
                    Ok(
                        "response_total{status_code=\"200\"} 10\nretries_total 5\nconfig_generation 3\n",
                    ),
                ),
                ("p2", Ok("response_total{status_code=\"200\"} 100\n")),
            ],
        );
        let b = scraped(
            t0 + Duration::from_secs(2),
            &[
                (
                    "p1",
                    Ok(
                        "response_total{status_code=\"200\"} 30\nresponse_total{status_code=\"503\",error=\"no-endpoints\"} 4\nretries_total 1\nconfig_generation 4\n",
                    ),
                ),
                ("p2", Err("GET http://p2/metrics: connection refused")),
            ],
        );
        assert!(!reading(None, &a).has_rates);
        let r = reading(Some(&a), &b);
        assert!(r.has_rates);
        let rate = |name: &str, code: Option<&str>| {
            r.rates
                .iter()
                .find(|s| s.name == name && code.is_none_or(|c| s.label("status_code") == c))
                .map(|s| (s.value, s.label(INSTANCE).to_owned()))
        };
        assert_eq!(
            rate("response_total", Some("200")),
            Some((10.0, "p1".into()))
        );
        // A series the earlier scrape lacked counts from zero.
        assert_eq!(
            rate("response_total", Some("503")),
            Some((2.0, "p1".into()))
        );
        // A counter that went down restarted: what it holds now is the increase.
        assert_eq!(rate("retries_total", None), Some((0.5, "p1".into())));
        // Gauges are values, not rates; a down target is `up` 0 with its error.
        assert!(rate("config_generation", None).is_none());
        let up: Vec<(String, f64, String)> = r
            .values
            .iter()
            .filter(|s| s.name == "up")
            .map(|s| (s.label(INSTANCE).into(), s.value, s.label("error").into()))
            .collect();
        assert_eq!(up[0], ("p1".into(), 1.0, String::new()));
        assert_eq!(up[1].1, 0.0);
        assert!(up[1].2.contains("connection refused"));
        assert!(
            r.values
                .iter()
                .any(|s| s.name == "config_generation" && s.value == 4.0)
        );
    }

    #[test]
    fn targets_are_host_port_or_http_urls() {
        let (inst, uri) = parse_target("127.0.0.1:4191").unwrap();
        assert_eq!(inst, "127.0.0.1:4191");
        assert_eq!(uri.to_string(), "http://127.0.0.1:4191/metrics");
        let (_, uri) = parse_target("http://localhost:9191/").unwrap();
        assert_eq!(uri.to_string(), "http://localhost:9191/metrics");
        let (_, uri) = parse_target("http://localhost:9191/stats/metrics").unwrap();
        assert_eq!(uri.path(), "/stats/metrics");
        for (bad, why) in [
            ("", "empty"),
            ("127.0.0.1", "no port"),
            ("https://x:1", "plain HTTP"),
            ("a b:1", "not HOST:PORT"),
        ] {
            let e = format!("{:#}", parse_target(bad).unwrap_err());
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn prometheus_vectors_keep_labels_and_drop_nan() {
        let text = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","instance":"a:1","job":"weft"},"value":[1.5,"1"]},
            {"metric":{"instance":"a:1","status_code":"200"},"value":[1.5,"2.25"]},
            {"metric":{"instance":"b:1"},"value":[1.5,"NaN"]}]}}"#;
        let v = parse_vector(text).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].name.as_str(), v[0].label("job"), v[0].value),
            ("up", "weft", 1.0)
        );
        assert_eq!((v[1].name.as_str(), v[1].value), ("", 2.25));
        let e = parse_vector(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("parse error"));
        assert!(
            parse_vector(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
                .is_err()
        );
        assert_eq!(form_urlencode("rate(x[1m])"), "rate%28x%5B1m%5D%29");
    }
}
