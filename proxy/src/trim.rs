//! Gives the memory of closed and parked connections back to the kernel.
//!
//! A connection that closes or parks (`http::park`) frees its buffers, but glibc's allocator
//! keeps freed pages in the process and reuses them only in part: after 10,000 connections
//! came and went, a proxy stayed at its peak (docs/reliability.md). Each such connection is
//! counted here; every few seconds, once enough have been (about 4 MiB of buffers), the
//! allocator's free pages are returned ([`weft_trim::release_free_memory`], on a blocking
//! thread: it holds the allocator's locks while it works). A proxy that keeps its connections
//! never trims.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static FREED: AtomicUsize = AtomicUsize::new(0);

/// Connections closed or parked since the last trim that make one worth it (~16 KiB each).
pub const TRIM_AFTER: usize = 256;

/// How often the count is looked at.
pub const EVERY: Duration = Duration::from_secs(5);

/// A connection closed or parked: its buffers went back to the allocator.
pub fn connection_freed() {
    FREED.fetch_add(1, Ordering::Relaxed);
}

/// Trims when [`TRIM_AFTER`] connections freed their memory since the last time, until `stop`
/// turns true.
pub async fn run(mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if FREED.load(Ordering::Relaxed) < TRIM_AFTER {
            continue;
        }
        FREED.store(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(weft_trim::release_free_memory)
            .await
            .unwrap_or(false);
        tracing::debug!(released, took = ?started.elapsed(), "returned free memory to the kernel");
    }
}
