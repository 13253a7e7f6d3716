//! Stage 2's mounts, as data: `/run`, `/tmp`, `/dev/pts`, `/dev/shm` and the
//! cgroup2 hierarchy, plus the cgroup controllers containerd and runc need
//! enabled for child groups.

use crate::sys::mount::{self, Mount};
use nix::mount::MsFlags;
use std::path::Path;

/// The cgroup2 mount point.
pub const CGROUP: &str = "/sys/fs/cgroup";

/// Controllers delegated to child cgroups, when the kernel has them.
pub const CONTROLLERS: [&str; 6] = ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// The filesystems stage 2 mounts, in order.
pub fn table() -> Vec<Mount> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let api = nosuid_nodev | MsFlags::MS_NOEXEC;
    vec![
        Mount::new("tmpfs", "/run", "tmpfs", nosuid_nodev).with_data("mode=0755"),
        Mount::new("tmpfs", "/tmp", "tmpfs", nosuid_nodev).with_data("mode=1777"),
        Mount::new(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        )
        .with_data("mode=0620,ptmxmode=0666"),
        Mount::new("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev).with_data("mode=1777"),
        Mount::new("cgroup2", CGROUP, "cgroup2", api).with_data("nsdelegate"),
    ]
}

/// Mounts the table; a failure is logged and the boot goes on.
pub fn mount_all() {
    for m in table() {
        if let Err(error) = mount::mount(&m) {
            tracing::error!(%error, "mount failed");
        }
    }
}

/// The controllers to enable: those in [`CONTROLLERS`] that the kernel
/// lists in `cgroup.controllers`.
pub fn wanted_controllers(available: &str) -> Vec<&'static str> {
    let have: Vec<&str> = available.split_whitespace().collect();
    CONTROLLERS
        .into_iter()
        .filter(|c| have.contains(c))
        .collect()
}

/// Enables the controllers in the root's `cgroup.subtree_control`, one at a
/// time so one refusal does not block the rest.
pub fn enable_controllers() {
    let root = Path::new(CGROUP);
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for c in wanted_controllers(&available) {
        match std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(error) => tracing::warn!(controller = c, %error, "cgroup controller not enabled"),
        }
    }
    tracing::info!(controllers = enabled.join(","), "cgroup2 ready");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_targets_and_types() {
        let t = table();
        let pairs: Vec<_> = t
            .iter()
            .map(|m| (m.target.to_string_lossy().into_owned(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/run".to_string(), "tmpfs"),
                ("/tmp".to_string(), "tmpfs"),
                ("/dev/pts".to_string(), "devpts"),
                ("/dev/shm".to_string(), "tmpfs"),
                ("/sys/fs/cgroup".to_string(), "cgroup2"),
            ]
        );
        assert!(t.iter().all(|m| m.flags.contains(MsFlags::MS_NOSUID)));
        assert_eq!(t[1].data, "mode=1777");
    }

    #[test]
    fn controllers_present_in_the_kernel_only() {
        assert_eq!(
            wanted_controllers("cpuset cpu io memory pids rdma misc\n"),
            ["cpuset", "cpu", "io", "memory", "pids"]
        );
        assert!(wanted_controllers("").is_empty());
    }
}
