//! The Prometheus text exposition `weftctl demo` and the benchmarks read from `/metrics`:
//! `weft_cli::scrape::parse`, then the sums and histogram quantiles computed from it.
#![no_main]
use weft_cli::scrape::{self, Buckets};

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| {
        let metrics = weft_proxy::metrics::Metrics::new();
        metrics.set_cert_expiry(std::time::SystemTime::now());
        let text = metrics.encode();
        vec![
            text.into_bytes(),
            b"# TYPE x histogram\nx_bucket{le=\"0.1\",a=\"b\\\"c\\n\"} 3 1700000000\nx_bucket{le=\"+Inf\"} 5\nx_sum 1.5\nx_count 5\n".to_vec(),
        ]
    }),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok(samples) = scrape::parse(text) else { return };
        let mut buckets = Buckets::default();
        for s in &samples {
            let _ = scrape::sum(&samples, &s.name, s.labels.first().map(|(k, v)| (k.as_str(), v.as_str())));
            if let Ok(le) = s.label("le").parse::<f64>() {
                buckets.add(le, s.value);
            }
        }
        let earlier = buckets.clone();
        for q in [0.0, 0.5, 0.99, 1.0] {
            let _ = buckets.quantile(q);
            let _ = buckets.since(&earlier).quantile(q);
        }
    }
);
