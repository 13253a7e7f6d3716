//! Mounts as data: each mount is a [`Mount`] (source, target, fstype, flags,
//! data), so the tables in stage 1 and stage 2 can be checked in unit tests
//! without root, and every failure names the step and the path.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One mount, described as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MsFlags,
    pub data: String,
}

impl Mount {
    /// A mount of `fstype` from `source` on `target`.
    pub fn new(source: &str, target: impl Into<PathBuf>, fstype: &str, flags: MsFlags) -> Self {
        Mount {
            source: source.to_string(),
            target: target.into(),
            fstype: fstype.to_string(),
            flags,
            data: String::new(),
        }
    }

    /// The same mount with filesystem-specific options (`mode=0755`, ...).
    pub fn with_data(mut self, data: &str) -> Self {
        self.data = data.to_string();
        self
    }
}

/// A mount step that failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating mount point {path}: {source}")]
    MakeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fstype} {source_dev} on {target}: {errno}")]
    Mount {
        source_dev: String,
        target: PathBuf,
        fstype: String,
        errno: Errno,
    },
    #[error("moving mount {from} to {to}: {errno}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        errno: Errno,
    },
    #[error("unmounting {target}: {errno}")]
    Unmount { target: PathBuf, errno: Errno },
    #[error("remounting {target} read-only: {errno}")]
    RemountRo { target: PathBuf, errno: Errno },
}

/// Creates the mount point and mounts. `EBUSY` (a device still settling) is
/// retried a few times.
pub fn mount(m: &Mount) -> Result<(), MountError> {
    std::fs::create_dir_all(&m.target).map_err(|source| MountError::MakeDir {
        path: m.target.clone(),
        source,
    })?;
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    let mut tries = 0;
    loop {
        match nix::mount::mount(
            Some(m.source.as_str()),
            &m.target,
            Some(m.fstype.as_str()),
            m.flags,
            data,
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(errno) => {
                return Err(MountError::Mount {
                    source_dev: m.source.clone(),
                    target: m.target.clone(),
                    fstype: m.fstype.clone(),
                    errno,
                });
            }
        }
    }
}

/// `mount --move from to`.
pub fn move_mount(from: &Path, to: &Path) -> Result<(), MountError> {
    nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
        |errno| MountError::Move {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            errno,
        },
    )
}

/// Unmounts `target`; `lazy` detaches it even while busy.
pub fn unmount(target: &Path, lazy: bool) -> Result<(), MountError> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    nix::mount::umount2(target, flags).map_err(|errno| MountError::Unmount {
        target: target.to_path_buf(),
        errno,
    })
}

/// Remounts `target` read-only, which flushes and marks the filesystem clean
/// even when something keeps it busy.
pub fn remount_ro(target: &Path) -> Result<(), MountError> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|errno| MountError::RemountRo {
        target: target.to_path_buf(),
        errno,
    })
}

/// Mount points from `/proc/self/mountinfo` text (field 5), in mount order.
/// Octal escapes (`\040` for a space) are decoded.
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_in_order_with_escapes() {
        let text = "22 1 0:21 / / rw - squashfs /dev/vda2 ro\n\
                    23 22 254:5 / /var rw,noatime - ext4 /dev/vda5 rw\n\
                    24 23 0:30 / /var/lib/a\\040b rw - overlay overlay rw\n";
        assert_eq!(
            mount_points(text),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var"),
                PathBuf::from("/var/lib/a b")
            ]
        );
    }

    #[test]
    fn builder_keeps_fields() {
        let m = Mount::new("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID).with_data("mode=0755");
        assert_eq!(m.target, PathBuf::from("/run"));
        assert_eq!(m.data, "mode=0755");
    }
}
