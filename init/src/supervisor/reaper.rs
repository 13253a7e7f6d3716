//! The reaper: the one place in PID 1 that waits for children.
//!
//! PID 1 inherits every orphan in the system, so it must reap all of them or the
//! process table fills with zombies. A `waitpid(-1)` loop does that, but it also
//! reaps the children we care about, so anything else that waits (`Child::wait`,
//! `tokio::process`) would race with it and lose. Hence one rule: **every child of
//! this process is started through [`spawn_child`] and its exit status comes from
//! the reaper**, never from `wait` on the child.
//!
//! How it works: a registry maps watched pids to a oneshot sender. The reaper task
//! wakes on SIGCHLD and, holding the registry lock, loops `waitpid(-1, WNOHANG)`;
//! an exit of a registered pid goes to its receiver, any other pid was an orphan.
//! [`spawn_child`] holds the same lock across fork+exec and registration, so an
//! exit can never be reaped before its pid is registered. [`signal`] also checks the
//! registry under the lock: a registered pid has not been reaped yet, so it cannot
//! have been reused by an unrelated process.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Pids whose exit someone awaits. Held while reaping and while spawning.
static WATCHED: Mutex<BTreeMap<i32, oneshot::Sender<Exit>>> = Mutex::new(BTreeMap::new());
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SIGCHLD could not be hooked (no tokio runtime with I/O enabled?).
    #[error("cannot listen for SIGCHLD")]
    Signal(#[source] io::Error),
    /// [`spawn`] was called twice.
    #[error("the reaper is already running")]
    AlreadyRunning,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(Signal),
}

impl Exit {
    /// The exit code, if it exited normally.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) => None,
        }
    }

    /// The signal that killed it, if any.
    pub fn signal(self) -> Option<Signal> {
        match self {
            Exit::Code(_) => None,
            Exit::Signal(sig) => Some(sig),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "code {code}"),
            Exit::Signal(sig) => write!(f, "signal {}", sig.as_str()),
        }
    }
}

fn watched() -> MutexGuard<'static, BTreeMap<i32, oneshot::Sender<Exit>>> {
    // A panic elsewhere while holding the lock leaves the map consistent (every
    // operation on it is a single insert/remove), so a poisoned lock is still usable.
    WATCHED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the reaper task. Call once, inside the tokio runtime (with I/O enabled),
/// before starting any child.
pub fn spawn() -> Result<JoinHandle<()>, Error> {
    let mut sigchld = unix_signal(SignalKind::child()).map_err(Error::Signal)?;
    if RUNNING.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyRunning);
    }
    Ok(tokio::spawn(async move {
        // Children that ended before SIGCHLD was hooked sent their signal already.
        reap_all();
        while sigchld.recv().await.is_some() {
            reap_all();
        }
        warn!("SIGCHLD stream ended; the reaper stops");
    }))
}

/// Whether [`spawn`] has been called in this process.
pub fn is_running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// Spawns `cmd` and registers its pid with the reaper, atomically with respect to
/// reaping. The receiver gets the exit status. Never call `wait`/`try_wait` on the
/// returned [`Child`]: its status belongs to the reaper. Dropping the `Child` is fine.
pub fn spawn_child(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
    let mut watched = watched();
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    watched.insert(raw_pid(&child), tx);
    Ok((child, rx))
}

/// Runs `cmd` to completion and returns how it ended: the way for one-shot helper
/// programs, since `Command::status`/`output` would race with the reaper. Its
/// stdio is whatever `cmd` sets; don't pipe output nobody reads.
pub async fn run(cmd: &mut Command) -> io::Result<Exit> {
    if !is_running() {
        // Nobody would ever deliver the status.
        return Err(io::Error::other("the reaper is not running"));
    }
    let (_child, exited) = spawn_child(cmd)?;
    exited
        .await
        .map_err(|_| io::Error::other("exit status lost"))
}

/// The pid of a child as the kernel's signed type.
pub fn raw_pid(child: &Child) -> i32 {
    // Linux pids are at most 2^22 (PID_MAX_LIMIT), so they always fit.
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

/// Sends `sig` to a watched child (its process group when `group`), only if it has
/// not been reaped yet. Returns whether the signal was sent.
pub fn signal(pid: i32, sig: Signal, group: bool) -> bool {
    let watched = watched();
    if !watched.contains_key(&pid) {
        return false;
    }
    let target = Pid::from_raw(pid);
    let sent = if group {
        killpg(target, sig)
    } else {
        kill(target, sig)
    };
    match sent {
        Ok(()) => true,
        Err(err) => {
            debug!(pid, signal = sig.as_str(), group, %err, "signal not delivered");
            false
        }
    }
}

/// Reaps every child that has ended and delivers the statuses.
fn reap_all() {
    let mut watched = watched();
    loop {
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _core)) => (pid, Exit::Signal(sig)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            // Stop/continue reports are not requested; skip anything else.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => {
                warn!(%err, "waitpid failed");
                return;
            }
        };
        match watched.remove(&pid.as_raw()) {
            // The receiver may be gone (its task ended); nothing else to do then.
            Some(tx) => drop(tx.send(exit)),
            None => debug!(pid = pid.as_raw(), %exit, "reaped orphan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_display_and_accessors() {
        assert_eq!(Exit::Code(3).to_string(), "code 3");
        assert_eq!(Exit::Signal(Signal::SIGKILL).to_string(), "signal SIGKILL");
        assert_eq!(Exit::Code(3).code(), Some(3));
        assert_eq!(Exit::Code(3).signal(), None);
        assert_eq!(
            Exit::Signal(Signal::SIGTERM).signal(),
            Some(Signal::SIGTERM)
        );
    }

    #[test]
    fn unwatched_pids_are_not_signalled() {
        // Our own pid is never in the registry; signalling it must be refused.
        let me = i32::try_from(std::process::id()).expect("pid fits in i32");
        assert!(!signal(me, Signal::SIGKILL, false));
    }
}
