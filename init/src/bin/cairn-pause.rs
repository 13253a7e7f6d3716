//! `cairn-pause`: the process of every pod sandbox ("pause" container).
//!
//! It holds the pod's namespaces open and does nothing else: it sleeps
//! until SIGTERM or SIGINT (then exits 0) and, as PID 1 of a pod that
//! shares its PID namespace, reaps the zombies re-parented to it. The image
//! builder packs it into an OCI image (`localhost/cairn/pause:1`) that the
//! node agent imports at boot, so no pod needs a registry to start.
//! Only std and nix: the static binary stays a few hundred kilobytes.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        signals.add(signal);
    }
    // Blocked, then taken one at a time with sigwait: no handlers, no races.
    if let Err(err) = signals.thread_block() {
        eprintln!("cairn-pause: blocking signals: {err}");
        std::process::exit(1);
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => std::process::exit(0),
            Err(err) => {
                eprintln!("cairn-pause: waiting for signals: {err}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every exited child without blocking.
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
