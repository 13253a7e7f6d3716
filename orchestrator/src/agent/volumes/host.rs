//! Volumes that are host directories: emptyDir (on disk, or a tmpfs for
//! `medium: Memory`), hostPath with upstream's `type` checks, and the
//! mount bookkeeping of cleanup (mount points read from
//! `/proc/self/mountinfo`).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use serde_json::Value;

use super::{Fail, mount_err};

/// Creates `path` (and parents) and sets its mode exactly (no umask).
pub fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// An emptyDir at `path`: a 0777 directory, with a tmpfs mounted on it
/// for `medium: Memory`. Its size is the smaller of `sizeLimit` and
/// `pod_memory_limit` (upstream's `SizeMemoryBackedVolumes`; the kernel's
/// default, half the RAM, when neither is set).
pub fn empty_dir(path: &Path, source: &Value, pod_memory_limit: Option<i64>) -> Result<(), Fail> {
    std::fs::create_dir_all(path)
        .map_err(|e| mount_err(format!("creating {}: {e}", path.display())))?;
    if source["medium"] == "Memory" && !is_mount_point(path) {
        let mut options = String::from("mode=0777");
        let limit = match source["sizeLimit"].as_str() {
            Some(limit) => Some(
                crate::scheduler::filters::quantity(limit, 1.0)
                    .filter(|b| *b > 0)
                    .ok_or_else(|| mount_err(format!("invalid sizeLimit {limit:?}")))?,
            ),
            None => None,
        };
        let size = match (limit, pod_memory_limit.filter(|m| *m > 0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(bytes) = size {
            options.push_str(&format!(",size={bytes}"));
        }
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| mount_err(format!("mounting a tmpfs on {}: {e}", path.display())))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| mount_err(format!("chmod {}: {e}", path.display())))
}

/// The host path of a hostPath volume, after its `type` check
/// (upstream's messages: `hostPath type check failed: <path> is not a
/// directory`).
pub fn host_path(source: &Value) -> Result<PathBuf, Fail> {
    let path = PathBuf::from(source["path"].as_str().unwrap_or(""));
    if !path.is_absolute() {
        return Err(mount_err(format!(
            "hostPath path {} must be absolute",
            path.display()
        )));
    }
    let kind = source["type"].as_str().unwrap_or("");
    let failed = |what: &str| {
        mount_err(format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ))
    };
    let meta = std::fs::metadata(&path);
    match kind {
        "" => {}
        "DirectoryOrCreate" => match &meta {
            Err(_) => make_dir(&path, 0o755).map_err(mount_err)?,
            Ok(m) if !m.is_dir() => return Err(failed("a directory")),
            Ok(_) => {}
        },
        "Directory" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => {
            return Err(failed("a directory"));
        }
        "FileOrCreate" => match &meta {
            Err(_) => {
                if let Some(parent) = path.parent() {
                    make_dir(parent, 0o755).map_err(mount_err)?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| mount_err(format!("creating {}: {e}", path.display())))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| mount_err(format!("chmod {}: {e}", path.display())))?;
            }
            Ok(m) if !m.is_file() => return Err(failed("a file")),
            Ok(_) => {}
        },
        "File" if !meta.as_ref().is_ok_and(|m| m.is_file()) => return Err(failed("a file")),
        "Socket" if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => {
            return Err(failed("a socket file"));
        }
        "CharDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => {
            return Err(failed("a character device"));
        }
        "BlockDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => {
            return Err(failed("a block device"));
        }
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
        other => {
            return Err(mount_err(format!(
                "hostPath type {other:?} is not supported"
            )));
        }
    }
    Ok(path)
}

/// Decodes a mountinfo path (`\040` for a space, etc.).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out),
    ))
}

/// The mount points of this process's namespace.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(unescape))
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Unmounts every mount point at or under `dir`, deepest first; an error
/// if any is left (so the caller does not remove files of a mount).
pub fn unmount_under(dir: &Path) -> Result<(), String> {
    let under = || -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        points
    };
    for point in under() {
        if let Err(e) = nix::mount::umount2(&point, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %point.display(), %e, "unmounting a pod volume");
        }
    }
    let left = under();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("still mounted: {left:?}"))
    }
}

/// The pod's memory limit when every container has one (the sum, or the
/// largest init container's if more), as the pod cgroup gets it.
pub fn pod_memory_limit(pod: &Value) -> Option<i64> {
    let limit = |c: &Value| match &c["resources"]["limits"]["memory"] {
        Value::String(s) => crate::scheduler::filters::quantity(s, 1.0),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    let mut sum = 0i64;
    for c in pod["spec"]["containers"].as_array()? {
        sum = sum.saturating_add(limit(c)?);
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        sum = sum.max(limit(c)?);
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_memory_limits() {
        let pod = |limits: Value| json!({"spec": {"containers": limits}});
        let c = |m: &str| json!({"resources": {"limits": {"memory": m}}});
        assert_eq!(
            pod_memory_limit(&pod(json!([c("64Mi"), c("1Mi")]))),
            Some(65 << 20)
        );
        assert_eq!(pod_memory_limit(&pod(json!([c("64Mi"), {}]))), None);
    }

    #[test]
    fn host_path_types() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("made/deep");
        let got = host_path(&json!({"path": d, "type": "DirectoryOrCreate"})).unwrap();
        assert!(got.is_dir());
        let f = dir.path().join("f/file");
        host_path(&json!({"path": f, "type": "FileOrCreate"})).unwrap();
        assert!(f.is_file());
        let (_, msg) = host_path(&json!({"path": f, "type": "Directory"})).unwrap_err();
        assert_eq!(
            msg,
            format!(
                "hostPath type check failed: {} is not a directory",
                f.display()
            )
        );
        let (_, msg) = host_path(&json!({"path": d, "type": "File"})).unwrap_err();
        assert!(msg.ends_with("is not a file"), "{msg}");
        let (_, msg) = host_path(&json!({"path": d, "type": "Socket"})).unwrap_err();
        assert!(msg.ends_with("is not a socket file"), "{msg}");
        host_path(&json!({"path": "/dev/null", "type": "CharDevice"})).unwrap();
        let (_, msg) = host_path(&json!({"path": "/nope/x", "type": "Directory"})).unwrap_err();
        assert!(msg.contains("is not a directory"));
        assert!(
            host_path(&json!({"path": "/nope/x"})).is_ok(),
            "no type: no check"
        );
        assert!(host_path(&json!({"path": "rel"})).is_err());
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }
}
