//! Container log rotation, as the kubelet's container log manager: every
//! [`PERIOD`] each running container's current log file
//! (`.../<container>/<attempt>.log`) that has grown past
//! `--container-log-max-size` (10Mi) is renamed to
//! `<file>.<YYYYMMDD-HHMMSS>` (UTC) and containerd is told to reopen it
//! (CRI `ReopenContainerLog`); rotated files beyond
//! `--container-log-max-files` (5, the current one included) are deleted,
//! oldest first. A current file gone missing is reopened too.
//!
//! [`rotated_files`] lists a log's rotated files in order, for
//! [`logs`](super::logs) to read `--tail` and `--since` across them.
//!
//! # Current limitations
//! - Rotated files are not gzipped (the kubelet compresses all but the
//!   newest): no deflate crate is in the agent's build, and `kubectl logs`
//!   reads the rotated files as they are.
//! - Two rotations of one log within a second would share a name: the
//!   second waits for the next round (the kubelet would overwrite).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::cri::{Cri, CriError, api, call};

/// How often log sizes are checked (the kubelet's monitoring period).
pub const PERIOD: Duration = Duration::from_secs(10);

/// How large and how many log files a container keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A current file larger than this is rotated (bytes).
    pub max_size: u64,
    /// Files kept per container, the current one included (at least 2).
    pub max_files: usize,
}

impl Default for Policy {
    /// The kubelet's defaults: 10Mi, 5 files.
    fn default() -> Policy {
        Policy {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

impl Policy {
    /// A policy, checked as the kubelet checks its flags.
    pub fn new(max_size: u64, max_files: usize) -> Result<Policy, String> {
        if max_files < 2 {
            return Err(format!(
                "--container-log-max-files must be greater than 1, got {max_files}"
            ));
        }
        if max_size == 0 {
            return Err("--container-log-max-size must be greater than 0".into());
        }
        Ok(Policy {
            max_size,
            max_files,
        })
    }
}

/// The rotated files of the log at `log` (`<log>.<YYYYMMDD-HHMMSS>`),
/// oldest first; none when the directory cannot be read.
pub fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(is_stamp)
        })
        .map(|e| e.path())
        .collect();
    // The stamp sorts as the time does.
    files.sort();
    files
}

/// `20260102-030405`.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// The stamp of a rotation at `now`.
fn stamp(now: jiff::Timestamp) -> String {
    now.strftime("%Y%m%d-%H%M%S").to_string()
}

/// Of `rotated` (oldest first), those to delete before a rotation so
/// that, with the file about to be rotated and the new current one,
/// `max_files` remain.
pub fn excess(rotated: &[PathBuf], max_files: usize) -> &[PathBuf] {
    let keep = max_files.saturating_sub(2);
    &rotated[..rotated.len().saturating_sub(keep)]
}

/// Checks every running container's log every `period`, forever.
pub async fn run(cri: Cri, policy: Policy, period: Duration) {
    info!(
        max_size = policy.max_size,
        max_files = policy.max_files,
        "container log rotation started"
    );
    loop {
        if let Err(error) = round(&cri, policy).await {
            warn!(%error, "container log rotation failed");
        }
        tokio::time::sleep(period).await;
    }
}

/// One pass over the running containers.
pub async fn round(cri: &Cri, policy: Policy) -> Result<(), CriError> {
    let mut cri = cri.clone();
    let running = cri
        .runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListContainers"))?
        .into_inner()
        .containers;
    for container in running {
        let status = cri
            .runtime
            .container_status(api::ContainerStatusRequest {
                container_id: container.id.clone(),
                verbose: false,
            })
            .await;
        let log_path = match status {
            Ok(s) => s
                .into_inner()
                .status
                .map(|s| s.log_path)
                .unwrap_or_default(),
            Err(status) => {
                debug!(id = %container.id, %status, "container status unknown; not rotating");
                continue;
            }
        };
        if log_path.is_empty() {
            continue;
        }
        let path = PathBuf::from(log_path);
        if let Err(error) = rotate_if_needed(&mut cri, &container.id, &path, policy).await {
            warn!(id = %container.id, path = %path.display(), %error, "container log not rotated");
        }
    }
    Ok(())
}

/// Why one log was not rotated.
#[derive(Debug, thiserror::Error)]
enum RotateError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cri(#[from] CriError),
}

/// What [`rename_if_needed`] found or did.
enum Step {
    /// No current file: containerd is to write a new one.
    Missing,
    /// Under the size, or rotated this second already.
    Kept,
    /// Renamed to `.0`; `.1` bytes.
    Renamed(PathBuf, u64),
}

async fn rotate_if_needed(
    cri: &mut Cri,
    id: &str,
    path: &Path,
    policy: Policy,
) -> Result<(), RotateError> {
    let owned = path.to_owned();
    let step = tokio::task::spawn_blocking(move || rename_if_needed(&owned, policy))
        .await
        .map_err(std::io::Error::other)??;
    match step {
        Step::Kept => Ok(()),
        // Removed underneath (or a rotation whose reopen failed).
        Step::Missing => Ok(reopen(cri, id).await?),
        Step::Renamed(target, size) => {
            if let Err(error) = reopen(cri, id).await {
                // Put it back: containerd still writes to it.
                if let Err(e) = std::fs::rename(&target, path) {
                    warn!(path = %target.display(), %e, "a rotated log could not be put back");
                }
                return Err(error.into());
            }
            info!(container = %id, path = %path.display(), size, "rotated a container log");
            Ok(())
        }
    }
}

/// Blocking: when the file at `path` is over the size, deletes the
/// rotated files beyond the count and renames it to `<path>.<stamp>`.
fn rename_if_needed(path: &Path, policy: Policy) -> std::io::Result<Step> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Step::Missing),
        Err(e) => return Err(e),
    };
    if size <= policy.max_size {
        return Ok(Step::Kept);
    }
    let rotated = rotated_files(path);
    for old in excess(&rotated, policy.max_files) {
        match std::fs::remove_file(old) {
            Ok(()) => debug!(path = %old.display(), "removed a rotated log"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".{}", stamp(jiff::Timestamp::now())));
    let target = PathBuf::from(target);
    if target.try_exists()? {
        debug!(path = %target.display(), "rotated this second already; next round");
        return Ok(Step::Kept);
    }
    std::fs::rename(path, &target)?;
    Ok(Step::Renamed(target, size))
}

async fn reopen(cri: &mut Cri, id: &str) -> Result<(), CriError> {
    cri.runtime
        .reopen_container_log(api::ReopenContainerLogRequest {
            container_id: id.to_owned(),
        })
        .await
        .map_err(call("ReopenContainerLog"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_rotated_files_in_order() {
        let t: jiff::Timestamp = "2026-01-02T03:04:05.9Z".parse().expect("time");
        assert_eq!(stamp(t), "20260102-030405");
        assert!(is_stamp("20260102-030405"));
        for bad in [
            "20260102-03040",
            "20260102_030405",
            "2026010203:0405",
            "gz",
            "",
        ] {
            assert!(!is_stamp(bad), "{bad}");
        }
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("0.log");
        for name in [
            "0.log",
            "0.log.20260102-030405",
            "0.log.20251231-235959",
            "0.log.20260102-030405.gz",
            "0.log.tmp",
            "1.log.20200101-000000",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let files = rotated_files(&log);
        let names: Vec<_> = files
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(names, ["0.log.20251231-235959", "0.log.20260102-030405"]);
        assert!(rotated_files(&dir.path().join("missing/0.log")).is_empty());
    }

    #[test]
    fn excess_keeps_room_for_the_rotation() {
        let files: Vec<PathBuf> = (1..=4).map(|i| PathBuf::from(format!("l.{i}"))).collect();
        // 5 files: the current, the one being rotated, 3 older.
        assert_eq!(excess(&files, 5), &files[..1]);
        assert_eq!(excess(&files, 2), &files[..]);
        assert!(excess(&files, 10).is_empty());
        assert!(excess(&[], 2).is_empty());
    }

    #[test]
    fn policy_checks() {
        assert_eq!(Policy::default(), Policy::new(10 << 20, 5).expect("ok"));
        assert!(Policy::new(1, 1).is_err());
        assert!(Policy::new(0, 5).is_err());
    }
}
