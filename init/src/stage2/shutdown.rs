//! Orderly shutdown. Requests come from signals (SIGINT: Ctrl-Alt-Del with
//! CAD off; SIGTERM: reboot; SIGUSR2: power off) and the power button. The
//! order: stop services in reverse (TERM, grace, KILL), kill whatever is
//! left, sync, unmount `/var` and the config partition (read-only remount,
//! or freeze, if busy), print the final line and `reboot(2)`.

use crate::supervisor::Supervisor;
use crate::sys::power::{self, PowerAction};
use crate::sys::{blk, mount};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedSender;

/// How long services get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);
/// How long stray processes get between SIGTERM and SIGKILL.
const STRAY_GRACE: Duration = Duration::from_secs(2);

/// Mounts that stay until the end: the root, API filesystems and tmpfs.
const KEEP: [&str; 9] = [
    "/",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/proc",
    "/sys",
    "/sys/fs/cgroup",
    "/run",
    "/tmp",
];

/// Listens for the shutdown signals and forwards them as power actions.
pub fn listen_signals(tx: UnboundedSender<PowerAction>) {
    let signals = [
        (SignalKind::interrupt(), PowerAction::Reboot),
        (SignalKind::terminate(), PowerAction::Reboot),
        (SignalKind::user_defined2(), PowerAction::PowerOff),
    ];
    for (kind, action) in signals {
        match signal(kind) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::info!(?action, "shutdown requested by signal");
                        let _ = tx.send(action);
                    }
                });
            }
            Err(error) => tracing::error!(?action, %error, "cannot listen for a signal"),
        }
    }
}

/// The final console line for an action.
pub fn final_line(action: PowerAction) -> &'static str {
    match action {
        PowerAction::Reboot => "cairn: rebooting",
        PowerAction::PowerOff => "cairn: powering off",
    }
}

/// The mounts to take down, deepest (latest) first: everything except
/// [`KEEP`], given mount points in `/proc/self/mountinfo` order.
pub fn unmount_order(points: &[PathBuf]) -> Vec<PathBuf> {
    let mut order: Vec<PathBuf> = points
        .iter()
        .filter(|p| !KEEP.iter().any(|k| Path::new(k) == p.as_path()))
        .cloned()
        .collect();
    order.reverse();
    order.dedup();
    order
}

/// Runs the shutdown and halts. Never returns.
pub async fn shutdown(supervisor: &Supervisor, action: PowerAction) -> ! {
    tracing::info!(?action, "shutting down");
    supervisor.shutdown(GRACE).await;
    kill_strays().await;
    power::sync();
    crate::log::detach_file();
    unmount_data();
    power::sync();
    crate::log::console(final_line(action));
    power::halt(action)
}

/// SIGTERM to every process but PID 1, a short wait, then SIGKILL. The
/// supervisor's reaper collects them while we sleep.
async fn kill_strays() {
    let all = Pid::from_raw(-1);
    if kill(all, Signal::SIGTERM).is_err() {
        return; // ESRCH: nothing left
    }
    let start = tokio::time::Instant::now();
    while start.elapsed() < STRAY_GRACE && user_processes_left() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if user_processes_left() {
        let _ = kill(all, Signal::SIGKILL);
        tracing::info!("killed remaining processes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether any process other than init is alive: a numeric `/proc` entry
/// other than 1 with a command line (kernel threads and zombies have none).
/// `kill(-1, 0)` can't tell, since it also succeeds on kernel threads.
fn user_processes_left() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let pid = name.to_str().and_then(|n| n.parse::<u32>().ok());
        pid.is_some_and(|pid| pid != 1 && pid != std::process::id())
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
    })
}

/// Unmounts everything but the essentials, deepest first. `/var` and the
/// config partition are remounted read-only if they cannot be unmounted, so
/// they are clean either way; anything else is detached.
fn unmount_data() {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in unmount_order(&mount::mount_points(&info)) {
        let Err(error) = mount::unmount(&target, false) else {
            tracing::debug!(target = %target.display(), "unmounted");
            continue;
        };
        let important =
            target == Path::new("/var") || target == Path::new(super::config::CONFIG_MOUNT);
        if important {
            let holders = open_files_under(&target).join(" ");
            tracing::warn!(%error, holders, "busy; remounting read-only");
            if let Err(error) = mount::remount_ro(&target) {
                tracing::warn!(%error, "could not make it read-only; freezing it");
                // A frozen filesystem is consistent and marked clean on disk.
                let frozen = std::fs::File::open(&target)
                    .map_err(|e| e.to_string())
                    .and_then(|dir| blk::freeze(&dir, &target).map_err(|e| e.to_string()));
                match frozen {
                    Ok(()) => tracing::info!(target = %target.display(), "frozen"),
                    Err(error) => tracing::error!(%error, "could not freeze it"),
                }
                continue;
            }
        }
        let _ = mount::unmount(&target, true);
    }
}

/// Open files under `dir`, as `pid:path`, to say what keeps a mount busy.
fn open_files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.starts_with(dir)
            {
                found.push(format!("{pid}:{}", target.display()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounts_deepest_first_and_keeps_api_filesystems() {
        let points: Vec<PathBuf> = [
            "/",
            "/dev",
            "/proc",
            "/sys",
            "/var",
            "/run",
            "/tmp",
            "/dev/pts",
            "/sys/fs/cgroup",
            "/run/cairn/config",
            "/var/lib/containerd/x/rootfs",
            "/run/containerd/y/rootfs",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let order: Vec<String> = unmount_order(&points)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "/run/containerd/y/rootfs",
                "/var/lib/containerd/x/rootfs",
                "/run/cairn/config",
                "/var"
            ]
        );
    }

    #[test]
    fn final_lines() {
        assert_eq!(final_line(PowerAction::PowerOff), "cairn: powering off");
        assert_eq!(final_line(PowerAction::Reboot), "cairn: rebooting");
    }
}
