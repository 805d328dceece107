//! Access logs (`--access-log json|text`): one line per HTTP request or opaque TCP connection,
//! to stderr or `--access-log-file`. The data path only fills a [`Record`] and offers it to a
//! bounded queue; a thread of its own formats and writes. When the writer falls behind (a slow
//! disk), new lines are dropped and counted in `access_log_dropped_total`; traffic never waits.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::metrics::Metrics;

/// Lines the queue holds before new ones are dropped.
pub const QUEUE: usize = 4096;

/// `--access-log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// `--access-log` and `--access-log-file`.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub format: Format,
    /// `None`: stderr.
    pub file: Option<PathBuf>,
}

/// One request (HTTP) or connection (TCP), as logged. Field names are the JSON keys.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Record {
    /// When it started: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// The client's SPIFFE ID: the verified peer inbound, this proxy's own outbound.
    pub client_id: String,
    /// The server's SPIFFE ID: this proxy's own inbound, the verified peer outbound.
    pub server_id: String,
    /// The client's address.
    pub peer: String,
    pub method: String,
    pub authority: String,
    /// The normalized path (inbound, as the application received it) or the request's path.
    pub path: String,
    /// The HTTP status sent to the client (0 for TCP).
    pub status: u16,
    /// The gRPC status, from the response headers or trailers; `null` when not gRPC.
    pub grpc_status: Option<u16>,
    /// Milliseconds from the first byte of the request to the end of the response (HTTP), or
    /// the connection's lifetime (TCP).
    pub duration_ms: f64,
    /// Request body bytes (HTTP) or bytes from the client (TCP).
    pub bytes_in: u64,
    /// Response body bytes (HTTP) or bytes to the client (TCP).
    pub bytes_out: u64,
    /// `namespace/name` of the route (outbound), or "".
    pub route: String,
    /// `namespace/name` of the backend service (outbound), or "".
    pub backend: String,
    /// The endpoint's address (outbound) or the application's (inbound).
    pub endpoint: String,
    /// Attempts sent (outbound; 1 unless retried, 0 if none was); 1 inbound.
    pub attempts: u32,
    /// The `x-weft-error` reason when the proxy answered itself, else "".
    pub error: &'static str,
    /// The W3C trace ID when the request was traced (sampled), else "".
    pub trace_id: String,
}

impl Record {
    /// The line as `--access-log text` writes it: `key=value` pairs, values quoted when they
    /// hold a space, a quote or are empty.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(256);
        let mut put = |k: &str, v: &str| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            if v.is_empty() || v.contains([' ', '"', '\\', '=']) || v.contains(char::is_control) {
                // A JSON string is a safely quoted one.
                out.push_str(&serde_json::Value::from(v).to_string());
            } else {
                out.push_str(v);
            }
        };
        put("time", &self.time);
        put("direction", self.direction);
        put("protocol", self.protocol);
        put("client_id", &self.client_id);
        put("server_id", &self.server_id);
        put("peer", &self.peer);
        put("method", &self.method);
        put("authority", &self.authority);
        put("path", &self.path);
        put("status", &self.status.to_string());
        put(
            "grpc_status",
            &self
                .grpc_status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        put("duration_ms", &format!("{:.3}", self.duration_ms));
        put("bytes_in", &self.bytes_in.to_string());
        put("bytes_out", &self.bytes_out.to_string());
        put("route", &self.route);
        put("backend", &self.backend);
        put("endpoint", &self.endpoint);
        put("attempts", &self.attempts.to_string());
        put("error", self.error);
        put("trace_id", &self.trace_id);
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-04T15:04:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The data path's end of the log: a bounded queue to the writer thread.
#[derive(Debug)]
pub struct AccessLog {
    queue: SyncSender<Record>,
    dropped: Counter,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("--access-log-file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("start the access log writer: {0}")]
    Thread(std::io::Error),
}

impl AccessLog {
    /// Opens the file (appending) or stderr and starts the writer thread.
    pub fn start(config: &AccessLogConfig, metrics: &Metrics) -> Result<Self, AccessLogError> {
        let out: Box<dyn Write + Send> = match &config.file {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError::File {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
            None => Box::new(std::io::stderr()),
        };
        Self::with_writer(config.format, out, QUEUE, metrics)
    }

    /// The same, to any writer, with a queue of `queue` lines.
    pub fn with_writer(
        format: Format,
        out: Box<dyn Write + Send>,
        queue: usize,
        metrics: &Metrics,
    ) -> Result<Self, AccessLogError> {
        let (tx, rx) = sync_channel(queue);
        let lines = metrics.access_log_lines.clone();
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || write_lines(rx, format, out, lines))
            .map_err(AccessLogError::Thread)?;
        Ok(Self {
            queue: tx,
            dropped: metrics.access_log_dropped.clone(),
        })
    }

    /// Offers a line to the writer; drops and counts it when the queue is full.
    pub fn log(&self, record: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(record)
        {
            self.dropped.inc();
        }
    }
}

fn write_lines(rx: Receiver<Record>, format: Format, out: Box<dyn Write + Send>, lines: Counter) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once.
        while let Some(r) = next {
            let line = match format {
                Format::Json => r.json(),
                Format::Text => r.text(),
            };
            if writeln!(out, "{line}").is_ok() {
                lines.inc();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn record() -> Record {
        Record {
            time: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_396_645_123)),
            direction: "inbound",
            protocol: "http",
            client_id: "spiffe://example.org/ns/default/sa/web".into(),
            server_id: "spiffe://example.org/ns/default/sa/api".into(),
            peer: "10.0.0.7:51234".into(),
            method: "GET".into(),
            authority: "api.default:8080".into(),
            path: "/items/1".into(),
            status: 200,
            grpc_status: None,
            duration_ms: 1.25,
            bytes_in: 0,
            bytes_out: 17,
            route: String::new(),
            backend: String::new(),
            endpoint: "127.0.0.1:8080".into(),
            attempts: 1,
            error: "",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_396_645_123)),
            "2026-12-04T15:04:05.123Z"
        );
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn a_json_line_has_every_field() {
        let line = record().json();
        // Written in declaration order, time first.
        assert!(
            line.starts_with(r#"{"time":"2026-12-04T15:04:05.123Z","direction":"inbound","#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = [
            "time",
            "direction",
            "protocol",
            "client_id",
            "server_id",
            "peer",
            "method",
            "authority",
            "path",
            "status",
            "grpc_status",
            "duration_ms",
            "bytes_in",
            "bytes_out",
            "route",
            "backend",
            "endpoint",
            "attempts",
            "error",
            "trace_id",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["time"], "2026-12-04T15:04:05.123Z");
        assert_eq!(v["grpc_status"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 17);
    }

    #[test]
    fn a_text_line_quotes_what_needs_it() {
        let mut r = record();
        r.path = "/a b\"c".into();
        let line = r.text();
        assert!(
            line.starts_with("time=2026-12-04T15:04:05.123Z direction=inbound protocol=http "),
            "{line}"
        );
        assert!(line.contains(r#" path="/a b\"c" "#), "{line}");
        assert!(line.contains(" route=\"\" "), "{line}");
        assert!(line.contains(" grpc_status=- "), "{line}");
        assert!(
            line.ends_with(" trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    /// A writer that blocks until released: the queue fills, and lines beyond it are dropped
    /// and counted without the caller ever waiting.
    #[test]
    fn a_stalled_writer_drops_and_counts() {
        struct Stalled(Arc<Mutex<()>>);
        impl Write for Stalled {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _held = self.0.lock().unwrap();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                let _held = self.0.lock().unwrap();
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let metrics = Metrics::new();
        let log =
            AccessLog::with_writer(Format::Json, Box::new(Stalled(gate.clone())), 4, &metrics)
                .unwrap();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            log.log(record());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // The writer takes lines into its 8 KiB buffer, then blocks writing it: at most that
        // many plus the queue's 4 get through.
        let dropped = metrics.access_log_dropped.get();
        assert!(dropped >= 60, "dropped {dropped}");
        drop(held);
        // Released, it writes everything it took: taken + dropped = offered.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.access_log_lines.get() + dropped < 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "lines {}",
                metrics.access_log_lines.get()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(log);
    }
}
