//! Back-offs as upstream's `flowcontrol.Backoff`: per key, 10 s doubling
//! up to 300 s; an entry not touched for twice the maximum starts over.
//! Keys are `<pod uid>/<container>` (crash loops) and
//! `<pod uid>/image/<image>` (pulls).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The first delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    touched: Instant,
}

/// Back-off entries by key.
#[derive(Debug, Default)]
pub struct BackOff {
    entries: HashMap<String, Entry>,
}

impl BackOff {
    /// How much longer `key` must wait, given that its last failure was
    /// `since` ago; `None` when it may go on now.
    pub fn remaining(&self, key: &str, since: Duration) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        if entry.touched.elapsed() > 2 * MAX {
            return None;
        }
        entry.delay.checked_sub(since).filter(|d| !d.is_zero())
    }

    /// How much longer `key` must wait since its last attempt.
    pub fn remaining_since_attempt(&self, key: &str) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        self.remaining(key, entry.touched.elapsed())
    }

    /// Records an attempt of `key` now: the next delay doubles (or starts
    /// at [`INITIAL`]).
    pub fn next(&mut self, key: &str) {
        let now = Instant::now();
        let entry = self.entries.entry(key.to_owned()).or_insert(Entry {
            delay: Duration::ZERO,
            touched: now,
        });
        entry.delay = if entry.delay.is_zero() || entry.touched.elapsed() > 2 * MAX {
            INITIAL
        } else {
            (entry.delay * 2).min(MAX)
        };
        entry.touched = now;
    }

    /// The current delay of `key`.
    pub fn delay(&self, key: &str) -> Duration {
        self.entries.get(key).map_or(INITIAL, |e| e.delay)
    }

    /// Forgets `key`.
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets every key of pod `uid`.
    pub fn forget_prefix(&mut self, uid: &str) {
        let prefix = format!("{uid}/");
        self.entries.retain(|k, _| !k.starts_with(&prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let mut b = BackOff::default();
        assert_eq!(b.remaining("k", Duration::ZERO), None);
        b.next("k");
        assert_eq!(b.delay("k"), INITIAL);
        assert_eq!(
            b.remaining("k", Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(b.remaining("k", Duration::from_secs(11)), None);
        for _ in 0..10 {
            b.next("k");
        }
        assert_eq!(b.delay("k"), MAX);
        b.forget_prefix("k");
        assert_eq!(b.delay("k"), MAX, "only keys under k/ are forgotten");
        b.reset("k");
        assert_eq!(b.remaining("k", Duration::ZERO), None);
    }
}
