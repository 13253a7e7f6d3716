//! The boot clock: `CLOCK_BOOTTIME`, the clock the kernel stamps printk
//! lines with, so init's console lines interleave with the kernel's.

use nix::time::{ClockId, clock_gettime};
use std::time::Duration;

/// Time since the kernel started, including time suspended.
pub fn boottime() -> Duration {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}
