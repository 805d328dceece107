//! The connection limit every listener of both binaries takes a slot from as it accepts
//! (issue 18): over it, a connection is closed at once, counted by the caller, and logged here
//! at most once per 10 s with the count refused since the last line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::warn;

/// The open-connection count of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    /// When the last "limit reached" line was logged (ms since `epoch`), and how many were
    /// refused since.
    last_logged_ms: Arc<AtomicU64>,
    refused_since_log: Arc<AtomicU64>,
    epoch: Instant,
}

/// How often a listener at its connection limit says so.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            last_logged_ms: Arc::new(AtomicU64::new(0)),
            refused_since_log: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    /// A slot for one connection, held until the connection ends; `None` at the limit (logged
    /// at most once per 10 s, with the count refused since the last line).
    pub fn try_acquire(&self, listener: &str) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let refused = self.refused_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64 + LOG_EVERY.as_millis() as u64;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY.as_millis() as u64
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused_since_log.store(0, Ordering::Relaxed);
            warn!(
                listener,
                max = self.max,
                refused,
                "connection limit reached: closing new connections"
            );
        }
        None
    }
}

impl ConnectionLimit {
    /// The next connection on `listener` that fits under this limit, with its slot; one over it
    /// is closed at once and counted in `refused`. Accept errors (EMFILE and friends) back off
    /// briefly instead of spinning. Every listener of both binaries but the proxy's data path
    /// (which also watches its drain) accepts through this.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        name: &'static str,
        refused: Option<&Counter>,
    ) -> (TcpStream, std::net::SocketAddr, OwnedSemaphorePermit) {
        loop {
            match listener.accept().await {
                Ok((tcp, remote)) => match self.try_acquire(name) {
                    Some(slot) => return (tcp, remote, slot),
                    None => {
                        if let Some(c) = refused {
                            c.inc();
                        }
                    }
                },
                Err(e) => {
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_refuses_past_max_and_frees_on_drop() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire("test").expect("first");
        let _b = limit.try_acquire("test").expect("second");
        assert!(
            limit.try_acquire("test").is_none(),
            "third is over the limit"
        );
        drop(a);
        assert!(
            limit.try_acquire("test").is_some(),
            "a slot freed by a closed connection"
        );
    }
}
