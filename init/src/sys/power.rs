//! Power control: sync, reboot, power off, and Ctrl-Alt-Del handling.

use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use std::time::Duration;

/// What the machine does when init is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// Flushes every filesystem's dirty data to disk.
pub fn sync() {
    nix::unistd::sync();
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once, so
/// the reboot is an orderly one.
pub fn disable_cad() -> nix::Result<()> {
    set_cad_enabled(false)
}

/// Syncs and reboots or powers off. Never returns: if `reboot(2)` fails (not
/// PID 1, no privilege) it keeps trying, because PID 1 must not exit.
pub fn halt(action: PowerAction) -> ! {
    sync();
    let mode = match action {
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
    };
    loop {
        let err = match reboot(mode) {
            Ok(never) => match never {},
            Err(err) => err,
        };
        eprintln!("cairn-init: reboot(2) failed: {err}");
        std::thread::sleep(Duration::from_secs(5));
    }
}
