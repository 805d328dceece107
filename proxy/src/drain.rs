//! One drain signal for shutdown. Listeners stop accepting when it fires; HTTP connections
//! finish their in-flight requests and close (GOAWAY for HTTP/2, `Connection: close` for
//! HTTP/1); opaque connections run until they end. [`Drain::wait_idle`] resolves when the last
//! tracked connection has closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

#[derive(Debug, Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// The owner's side: fires the signal and waits for connections to close.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    open: Arc<Open>,
}

/// The listeners' and connections' side.
#[derive(Debug, Clone)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    open: Arc<Open>,
}

/// Held by a connection for its life.
#[derive(Debug)]
pub struct Tracked(Arc<Open>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> (Drain, Watch) {
        let (signal, rx) = watch::channel(false);
        let open = Arc::new(Open::default());
        (
            Drain {
                signal,
                open: open.clone(),
            },
            Watch { signal: rx, open },
        )
    }

    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    pub fn open_connections(&self) -> usize {
        self.open.count.load(Ordering::Acquire)
    }

    /// Resolves once no tracked connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let closed = self.open.closed.notified();
            if self.open_connections() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Watch {
    pub fn track(&self) -> Tracked {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        Tracked(self.open.clone())
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves when draining starts (at once if it has).
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        let _ = rx.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_the_last_connection() {
        let (drain, watch) = Drain::new();
        let a = watch.track();
        let b = watch.track();
        drain.start();
        watch.signaled().await;
        drop(a);
        let idle = drain.wait_idle();
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut idle)
                .await
                .is_err()
        );
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .unwrap();
    }
}
