//! `cairn-init`: PID 1 of a Cairn system, in both stages.
//!
//! The stage is chosen by how the kernel started us: as `/init` from the
//! initramfs (stage 1), or as `/sbin/init` on the root filesystem (stage 2).
//! PID 1 must never exit: a fatal error or a panic is logged, filesystems are
//! synced and the machine reboots (GRUB's try counter then falls back to the
//! other slot if this keeps happening).

use cairn_init::sys::power::{self, PowerAction};
use cairn_init::{log, stage1, stage2};
use std::time::Duration;

fn main() {
    std::panic::set_hook(Box::new(|info| fatal(&format!("panic: {info}"))));
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let result = if argv0 == "/init" {
        stage1::run()
    } else {
        stage2::run()
    };
    let Err(error) = result;
    fatal(&format!("{error:#}"));
}

/// Reports a fatal error on the console, syncs and reboots after a pause
/// long enough to read it.
fn fatal(message: &str) -> ! {
    tracing::error!(error = message, "fatal error in init");
    log::console(&format!("cairn-init: FATAL: {message}"));
    log::console("cairn-init: rebooting in 5 seconds");
    power::sync();
    std::thread::sleep(Duration::from_secs(5));
    power::halt(PowerAction::Reboot)
}
