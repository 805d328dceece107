//! Exponential backoff with full jitter, for reconnects and retries of control-plane calls.

use std::time::Duration;

/// The longest wait between attempts to reach the control plane for the first certificate,
/// discovery and registration: a control plane that comes back (a restart, a failover) is
/// found within a second. While it is unreachable that costs each proxy one connection attempt
/// every 0.5–1 s (jittered, so proxies do not arrive together); certificate renewal, which has
/// the certificate's remaining lifetime to succeed, backs off further.
pub const CONTROL_PLANE_RETRY_MAX: Duration = Duration::from_secs(1);

/// Delays that double from `base` up to `max`, each drawn uniformly from [delay/2, delay].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay.mul_f64(0.5 + 0.5 * random_fraction())
    }

    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

/// A uniformly random number in [0, 1) (shared with the tracer's sampling).
pub use weft_proto::trace::random_fraction;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter_window() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for ceiling in [100, 200, 400, 800, 800, 800] {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn fractions_are_in_range_and_vary() {
        let xs: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x != xs[0]));
    }
}
