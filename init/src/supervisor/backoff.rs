//! Restart back-off: how long a crashed service waits before it runs again.
//!
//! Exponential from [`Backoff::base`], doubling up to [`Backoff::cap`]. A service
//! that stayed up for at least [`Backoff::reset_after`] is considered healthy again,
//! so its next crash starts over at the base delay. The policy is plain data so the
//! tests (and stage 2, if it ever wants a different schedule) can shorten it.

use std::time::Duration;

/// The restart schedule of a service. `Default` is 1 s doubling to 30 s, reset after 60 s up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first crash (and after a crash that followed a long run).
    pub base: Duration,
    /// Upper bound of the delay.
    pub cap: Duration,
    /// Uptime after which the delay goes back to `base`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// A fresh schedule for one service.
    pub(crate) fn schedule(self) -> Schedule {
        Schedule {
            policy: self,
            next: self.base.min(self.cap),
        }
    }
}

/// The back-off state of one service: the delay its next crash will get.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    policy: Backoff,
    next: Duration,
}

impl Schedule {
    /// The delay before restarting a service that just exited after `uptime`.
    pub(crate) fn after_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.policy.reset_after {
            self.next = self.policy.base.min(self.policy.cap);
        }
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(self.policy.cap);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut s = Backoff::default().schedule();
        let delays: Vec<u64> = (0..8).map(|_| s.after_exit(SHORT).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let mut s = Backoff::default().schedule();
        for _ in 0..4 {
            s.after_exit(SHORT);
        }
        assert_eq!(s.after_exit(secs(59)), secs(16));
        assert_eq!(s.after_exit(secs(60)), secs(1));
        assert_eq!(s.after_exit(SHORT), secs(2));
    }

    #[test]
    fn custom_policy_is_honoured() {
        let policy = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
            reset_after: secs(1),
        };
        let mut s = policy.schedule();
        let ms: Vec<u128> = (0..5).map(|_| s.after_exit(SHORT).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert_eq!(s.after_exit(secs(1)).as_millis(), 100);
    }

    #[test]
    fn base_above_cap_is_clamped() {
        let policy = Backoff {
            base: secs(10),
            cap: secs(3),
            reset_after: secs(60),
        };
        let mut s = policy.schedule();
        assert_eq!(s.after_exit(SHORT), secs(3));
        assert_eq!(s.after_exit(SHORT), secs(3));
    }
}
