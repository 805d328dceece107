//! Reading a proxy's `/metrics`: the Prometheus text exposition format, samples only (`# HELP`,
//! `# TYPE` and `# EOF` lines are skipped). Used by `weftctl demo`'s view and the benchmarks.

use std::fmt;

/// One sample line: `name{label="value",…} 12.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of a label, `""` when the sample does not have it.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A line that is not a sample, with its number (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Every sample of an exposition, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|reason| ParseError {
            line: i + 1,
            reason,
        })?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    // The value, then an optional timestamp (ignored).
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value after the labels")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| "the value is not a number")?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (after the `{`), returning what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("a label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("invalid label name");
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without its opening quote")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("a label value without its closing quote"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("an invalid escape in a label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = &s[end + 1..];
        if !(s.starts_with(',') || s.starts_with('}')) {
            return Err("a label value not followed by ',' or '}'");
        }
    }
}

/// The sum of the samples of `name` whose labels include `label` (`(name, value)`), or of all
/// its samples without one.
pub fn sum(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == v))
        .map(|s| s.value)
        .sum()
}

/// A histogram's cumulative bucket counts, `(upper bound, count)` by bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// Adds a `_bucket` sample's count to its bound (summing across label sets).
    pub fn add(&mut self, le: f64, count: f64) {
        match self.0.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => {
                self.0.push((le, count));
                self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// The counts since `earlier` (same bounds; a bound `earlier` lacks counts from 0).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| *b == le)
                        .map_or(0.0, |(_, c)| *c);
                    (le, (c - before).max(0.0))
                })
                .collect(),
        )
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations. Above the last finite bound it
    /// is that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let in_bucket = count - below;
                let frac = if in_bucket > 0.0 {
                    (rank - below) / in_bucket
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * frac);
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEXT: &str = r#"# HELP response_total HTTP responses.
# TYPE response_total counter
response_total{direction="inbound",authority="web.demo:8080",status_code="200",tls="true",client_id="spiffe://demo.weft/ns/demo/sa/loadgen",server_id="",error=""} 41
response_total{direction="outbound",authority="a \"quoted\" \\ one\nline",status_code="503"} 2.0
response_latency_ms_bucket{direction="inbound",le="1.0"} 3
response_latency_ms_bucket{direction="inbound",le="+Inf"} 10
tcp_open_connections 4 1700000000000
# EOF
"#;

    #[test]
    fn samples_with_labels_escapes_and_timestamps() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "response_total");
        assert_eq!(
            s[0].label("client_id"),
            "spiffe://demo.weft/ns/demo/sa/loadgen"
        );
        assert_eq!(s[0].value, 41.0);
        assert_eq!(s[1].label("authority"), "a \"quoted\" \\ one\nline");
        assert_eq!(s[1].label("missing"), "");
        assert_eq!(s[3].label("le"), "+Inf");
        assert_eq!(s[4].labels, vec![]);
        assert_eq!(s[4].value, 4.0);
    }

    #[test]
    fn sums_by_name_and_label() {
        let s = parse(TEXT).unwrap();
        assert_eq!(sum(&s, "response_total", None), 43.0);
        assert_eq!(sum(&s, "response_total", Some(("status_code", "503"))), 2.0);
        assert_eq!(sum(&s, "response_total", Some(("status_code", "500"))), 0.0);
        assert_eq!(sum(&s, "request_total", None), 0.0);
    }

    #[test]
    fn bad_lines_name_their_number_and_fault() {
        for (text, reason) in [
            (
                "ok 1\nbad{a=\"x\" 1",
                "a label value not followed by ',' or '}'",
            ),
            (
                "ok 1\nbad{a=\"x} 1",
                "a label value without its closing quote",
            ),
            (
                "ok 1\nbad{a=x} 1",
                "a label value without its opening quote",
            ),
            ("ok 1\nbad{a} 1", "a label without '='"),
            ("ok 1\nbad twelve", "the value is not a number"),
            ("ok 1\nbad", "no value after the metric name"),
            (
                "ok 1\nbad{a=\"\\t\"} 1",
                "an invalid escape in a label value",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err, ParseError { line: 2, reason }, "{text:?}");
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut b = Buckets::default();
        for (le, c) in [
            (10.0, 50.0),
            (20.0, 90.0),
            (50.0, 100.0),
            (f64::INFINITY, 100.0),
        ] {
            b.add(le, c);
        }
        assert_eq!(b.quantile(0.5), Some(10.0));
        assert_eq!(b.quantile(0.25), Some(5.0));
        assert_eq!(b.quantile(0.7), Some(15.0));
        assert_eq!(b.quantile(0.99), Some(47.0));
        assert_eq!(Buckets::default().quantile(0.5), None);
        // Observations past the last finite bound report that bound.
        let mut tail = Buckets::default();
        tail.add(5.0, 0.0);
        tail.add(f64::INFINITY, 4.0);
        assert_eq!(tail.quantile(0.99), Some(5.0));
    }

    #[test]
    fn bucket_deltas() {
        let mut before = Buckets::default();
        before.add(10.0, 5.0);
        before.add(f64::INFINITY, 6.0);
        let mut now = before.clone();
        now.add(10.0, 5.0);
        now.add(20.0, 1.0);
        now.add(f64::INFINITY, 7.0);
        assert_eq!(
            now.since(&before).0,
            vec![(10.0, 5.0), (20.0, 1.0), (f64::INFINITY, 7.0)]
        );
    }

    proptest! {
        /// Whatever the label values, a line written as the exposition format escapes it
        /// reads back the same.
        #[test]
        fn label_values_round_trip(values in proptest::collection::vec(".*", 0..4), v in any::<u32>()) {
            let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let labels: Vec<String> = values.iter().enumerate()
                .map(|(i, s)| format!("l{i}=\"{}\"", esc(s))).collect();
            let line = format!("m_total{{{}}} {v}", labels.join(","));
            let s = parse(&line).unwrap();
            prop_assert_eq!(s.len(), 1);
            for (i, want) in values.iter().enumerate() {
                prop_assert_eq!(s[0].label(&format!("l{i}")), want.as_str());
            }
            prop_assert_eq!(s[0].value, f64::from(v));
        }

        /// Quantiles are monotone in q and stay within the finite bounds.
        #[test]
        fn quantiles_are_monotone(counts in proptest::collection::vec(0u32..50, 1..8)) {
            let mut b = Buckets::default();
            let mut cum = 0.0;
            for (i, c) in counts.iter().enumerate() {
                cum += f64::from(*c);
                b.add((i + 1) as f64 * 10.0, cum);
            }
            b.add(f64::INFINITY, cum);
            let qs: Vec<Option<f64>> = [0.1, 0.5, 0.9, 0.99].iter().map(|q| b.quantile(*q)).collect();
            if cum == 0.0 {
                prop_assert!(qs.iter().all(Option::is_none));
            } else {
                let qs: Vec<f64> = qs.into_iter().map(Option::unwrap).collect();
                prop_assert!(qs.windows(2).all(|w| w[0] <= w[1]), "{:?}", qs);
                prop_assert!(qs.iter().all(|q| (0.0..=counts.len() as f64 * 10.0).contains(q)));
            }
        }
    }
}
