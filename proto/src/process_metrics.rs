//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …), read from `/proc` when `/metrics` is scraped: nothing
//! is counted between scrapes, so they cost nothing on the data path. Both binaries register
//! [`ProcessCollector`] in their registry. Where there is no `/proc` (not Linux), they are
//! simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self/stat` says about the process, in Prometheus' units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User plus system CPU time of every thread, in seconds.
    pub cpu_seconds: f64,
    pub virtual_bytes: u64,
    pub resident_bytes: u64,
    pub threads: u64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`. `None` for anything
/// that is not such a line.
pub fn parse_stat(text: &str, ticks_per_second: u64, page_size: u64) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // Fields from the 3rd (state) on: index i here is field i + 3 in proc(5).
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { fields.get(field - 3)?.parse().ok() };
    if ticks_per_second == 0 {
        return None;
    }
    let (utime, stime) = (num(14)?, num(15)?);
    Some(Stat {
        cpu_seconds: (utime.saturating_add(stime)) as f64 / ticks_per_second as f64,
        threads: num(20)?,
        start_ticks: num(22)?,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)?.saturating_mul(page_size),
    })
}

/// The `btime` line of `/proc/stat`: the boot time, in Unix seconds.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Registers the process metrics at scrape time (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

impl ProcessCollector {
    fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: N,
    ) -> Result<(), std::fmt::Error>
    where
        ConstGauge<N>: EncodeMetric,
    {
        let g = ConstGauge::new(value);
        g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second();
        let page = rustix::param::page_size() as u64;
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, ticks, page));
        if let Some(s) = stat {
            let cpu = ConstCounter::new(s.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = i64::try_from(s.resident_bytes).unwrap_or(i64::MAX);
            Self::gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                rss,
            )?;
            let vsize = i64::try_from(s.virtual_bytes).unwrap_or(i64::MAX);
            Self::gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes",
                vsize,
            )?;
            let threads = i64::try_from(s.threads).unwrap_or(i64::MAX);
            Self::gauge(&mut encoder, "process_threads", "OS threads", threads)?;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| parse_boot_time(&t));
            if let Some(boot) = boot {
                let start = boot as f64 + s.start_ticks as f64 / ticks as f64;
                Self::gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds",
                    start,
                )?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle read_dir holds is one of the entries: not counted.
            let open = dir.count().saturating_sub(1);
            Self::gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                i64::try_from(open).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            Self::gauge(
                &mut encoder,
                "process_max_fds",
                "The open file descriptors limit (soft)",
                i64::try_from(max).unwrap_or(i64::MAX),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STAT: &str = "24103 (weft (proxy) x) S 24096 24096 7651 0 -1 4194304 101 0 0 0 \
        250 130 0 0 20 0 3 0 41210 3133440 392 18446744073709551615 94697161850880 0";

    #[test]
    fn reads_the_fields_after_the_last_parenthesis() {
        let s = parse_stat(STAT, 100, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.8,
                virtual_bytes: 3_133_440,
                resident_bytes: 392 * 4096,
                threads: 3,
                start_ticks: 41210,
            }
        );
        assert_eq!(parse_stat("1 (x) S 1 2", 100, 4096), None);
        assert_eq!(parse_stat("no parenthesis", 100, 4096), None);
        assert_eq!(parse_stat(STAT, 0, 4096), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1796394715\nprocesses 9\n"),
            Some(1_796_394_715)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    /// This process, through a registry, as a scrape would see it.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_exported() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        // Some CPU time to count.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_cpu_seconds_total") > 0.0, "{text}");
        assert!(
            value("process_resident_memory_bytes") > 1_000_000.0,
            "{text}"
        );
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
    }

    proptest! {
        /// Any text: a result or None, never a panic.
        #[test]
        fn never_panics(text in ".{0,200}", ticks in 0u64..1000) {
            let _ = parse_stat(&text, ticks, 4096);
            let _ = parse_boot_time(&text);
        }
    }
}
