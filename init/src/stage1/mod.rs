//! Stage 1: `cairn-init` as `/init` in the initramfs.
//!
//! Steps, in order, each a short function: mount the API filesystems, load
//! the initramfs' modules, read the booted slot from the command line, wait
//! for `root_<slot>` by GPT name and mount it read-only at `/sysroot`, grow
//! and mount `data` at `/sysroot/var`, then switch root and exec
//! `/sbin/init` (stage 2). No async runtime: this is sequential work.
//!
//! A missing root partition is not fatal: stage 1 prints the partitions it
//! did find and keeps looking (a slow USB disk may still appear, and a
//! reboot loop would hide the message). Other failures return an error;
//! `main` logs it and reboots, and GRUB's try counter takes it from there.

pub mod cmdline;
pub mod data;
pub mod grow;
pub mod modules;
pub mod partitions;
pub mod switch;

use crate::sys::mount::{self, Mount};
use anyhow::{Context, Result};
use cairn_image::{Slot, layout};
use nix::mount::MsFlags;
use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the slot root is mounted before switching to it.
pub const SYSROOT: &str = "/sysroot";
/// How long to wait for the root partition before reporting what was found.
pub const ROOT_WAIT: Duration = Duration::from_secs(10);
/// How often to look again after that, and to repeat the report.
const ROOT_RETRY: Duration = Duration::from_secs(2);
const ROOT_REPORT: Duration = Duration::from_secs(30);

/// The API filesystems stage 1 mounts first.
pub fn api_mounts() -> Vec<Mount> {
    let nosuid = MsFlags::MS_NOSUID;
    let plain = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        Mount::new("devtmpfs", "/dev", "devtmpfs", nosuid).with_data("mode=0755"),
        Mount::new("proc", "/proc", "proc", plain),
        Mount::new("sysfs", "/sys", "sysfs", plain),
    ]
}

/// The slot root: squashfs, read-only.
pub fn root_mount(dev: &Path) -> Mount {
    Mount::new(
        &dev.to_string_lossy(),
        SYSROOT,
        "squashfs",
        MsFlags::MS_RDONLY,
    )
}

/// Runs stage 1. Returns only on a fatal error.
pub fn run() -> Result<Infallible> {
    for m in api_mounts() {
        mount::mount(&m)?;
    }
    console_stdio();
    let cmdline = cmdline::read();
    crate::log::init(cmdline::flag(&cmdline, "cairn.debug"));
    tracing::info!("stage 1 started");

    let slot = cmdline::slot(&cmdline).unwrap_or_else(|| {
        tracing::warn!("no cairn.slot= on the kernel command line; booting slot a");
        Slot::A
    });
    // Disk drivers still due once the root partition is visible are left to
    // stage 2, which loads them in the background.
    modules::load_parallel(modules::read_list(Path::new(modules::LIST)), |m| {
        modules::is_disk_driver(m) && partitions::find(slot.partition_name(), None).is_some()
    });
    let root = wait_for_root(slot);
    tracing::info!(slot = %slot, dev = %root.dev.display(), "root partition found");
    mount::mount(&root_mount(&root.dev)).context("mounting the slot root")?;

    let data = partitions::find(layout::PART_DATA, root.disk.as_deref());
    let var = Path::new(SYSROOT).join(layout::DATA_MOUNT.trim_start_matches('/'));
    data::mount_data(data.as_ref(), &var);

    tracing::info!("switching root");
    switch::switch_root(Path::new(SYSROOT), "/sbin/init")
}

/// Makes fds 0, 1, 2 the console: the kernel only opens `/dev/console` for
/// init if the initramfs has that node, and devtmpfs now certainly does.
fn console_stdio() {
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&console);
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
}

/// Waits for `root_<slot>`: polls for [`ROOT_WAIT`], then prints the
/// partitions it did see and keeps looking forever, more slowly.
fn wait_for_root(slot: Slot) -> partitions::Partition {
    let name = slot.partition_name();
    let mut seen = match partitions::wait(name, None, ROOT_WAIT) {
        Ok(part) => return part,
        Err(seen) => seen,
    };
    let mut last_report: Option<Instant> = None;
    loop {
        if last_report.is_none_or(|t| t.elapsed() >= ROOT_REPORT) {
            tracing::error!(
                partition = name,
                found = partitions::describe(&seen),
                "root partition not found; still looking"
            );
            for p in &seen {
                crate::log::console(&format!(
                    "cairn-init:   found partition {} on {}",
                    p.name,
                    p.dev.display()
                ));
            }
            last_report = Some(Instant::now());
        }
        match partitions::wait(name, None, ROOT_RETRY) {
            Ok(part) => return part,
            Err(now) => seen = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_mounts_come_first_and_devtmpfs_is_first() {
        let mounts = api_mounts();
        let targets: Vec<_> = mounts
            .iter()
            .map(|m| m.target.to_string_lossy().into_owned())
            .collect();
        assert_eq!(targets, ["/dev", "/proc", "/sys"]);
        assert_eq!(mounts[0].fstype, "devtmpfs");
        assert!(mounts.iter().all(|m| m.flags.contains(MsFlags::MS_NOSUID)));
        assert_eq!(switch::MOVED.to_vec(), targets);
    }

    #[test]
    fn root_is_read_only_squashfs() {
        let m = root_mount(Path::new("/dev/vda2"));
        assert_eq!(m.fstype, "squashfs");
        assert!(m.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(m.target, Path::new(SYSROOT));
    }
}
