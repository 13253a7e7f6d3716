//! Stage 1: `cairn-init` as `/init` in the initramfs.
//!
//! Steps, in order, each a short function: mount the API filesystems, read
//! the booted slot from the command line, load the initramfs' modules, wait
//! for `root_<slot>` by GPT name and mount it read-only at `/sysroot`, grow
//! and mount `data` at `/sysroot/var`, then switch root and exec
//! `/sbin/init` (stage 2). No async runtime. The mounts overlap the module
//! loading: each happens as soon as its filesystem is in (the root before
//! ext4 has loaded, data before vfat has), and mounting the root starts
//! reading containerd ahead ([`crate::prefetch`]), since containerd's start
//! is the long pole of the boot.
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
use anyhow::{Context, Result, bail};
use cairn_image::{Slot, layout};
use nix::mount::MsFlags;
use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the slot root is mounted before switching to it.
pub const SYSROOT: &str = "/sysroot";
/// The slot root's filesystem type (the root is squashfs).
const ROOT_FS: &str = "squashfs";
/// The data partition's filesystem type.
const DATA_FS: &str = "ext4";
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
    Mount::new(&dev.to_string_lossy(), SYSROOT, ROOT_FS, MsFlags::MS_RDONLY)
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
    // stage 2, which loads them in the background. The root's filesystem
    // goes first on the other module thread, so the root is mounted (and
    // containerd read ahead) while the data filesystem's modules still load,
    // and data is mounted while the config partition's (vfat) still load.
    let mut list = modules::read_list(Path::new(modules::LIST));
    list.sort_by_key(|m| modules::module_name(m).as_deref() != Some(ROOT_FS));
    let mut early = None;
    modules::load_parallel(
        list,
        |m| modules::is_disk_driver(m) && partitions::find(slot.partition_name(), None).is_some(),
        |other_done| {
            let root = wait_for_root(slot);
            let root_mounted =
                wait_for_filesystem(ROOT_FS, other_done) && mount_root(&root).is_ok();
            let data_mounted = root_mounted && wait_for_filesystem(DATA_FS, other_done);
            if data_mounted {
                mount_data(&root);
            }
            early = Some((root, root_mounted, data_mounted));
        },
    );
    let Some((root, root_mounted, data_mounted)) = early else {
        bail!("the root mount was skipped");
    };
    // A filesystem module that needed its retry, or a first mount that
    // failed: every module has had its chance now.
    if !root_mounted {
        mount_root(&root)?;
    }
    if !data_mounted {
        mount_data(&root);
    }

    tracing::info!("switching root");
    switch::switch_root(Path::new(SYSROOT), "/sbin/init")
}

/// Mounts the slot root at [`SYSROOT`] and starts reading ahead the
/// programs stage 2 starts first ([`crate::prefetch`]).
fn mount_root(root: &partitions::Partition) -> Result<()> {
    tracing::info!(dev = %root.dev.display(), "root partition found");
    mount::mount(&root_mount(&root.dev)).context("mounting the slot root")?;
    crate::prefetch::start(Path::new(SYSROOT));
    Ok(())
}

/// Mounts the data partition of the root's disk at `/sysroot/var`, or a
/// tmpfs there when it cannot (see [`data::mount_data`]).
fn mount_data(root: &partitions::Partition) {
    let data = partitions::find(layout::PART_DATA, root.disk.as_deref());
    let var = Path::new(SYSROOT).join(layout::DATA_MOUNT.trim_start_matches('/'));
    data::mount_data(data.as_ref(), &var);
}

/// Waits until the kernel knows filesystem `fs` (built in, or its module
/// loaded by the other thread); false once that thread is done without it.
fn wait_for_filesystem(fs: &str, other_done: &dyn Fn() -> bool) -> bool {
    loop {
        // Asked before looking: a filesystem registered just before the
        // thread ended is then still seen.
        let done = other_done();
        if filesystem_registered(fs) {
            return true;
        }
        if done {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether the kernel knows filesystem `fs` (built in or its module loaded).
fn filesystem_registered(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|list| {
        list.lines()
            .any(|line| line.split_whitespace().last() == Some(fs))
    })
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
    fn filesystems_are_read_from_proc() {
        // Every Linux host knows proc; none knows this one.
        assert!(filesystem_registered("proc"));
        assert!(!filesystem_registered("cairn-no-such-fs"));
        assert!(wait_for_filesystem("proc", &|| false));
        // A filesystem that never comes: the wait ends with its thread.
        assert!(!wait_for_filesystem("cairn-no-such-fs", &|| true));
    }

    #[test]
    fn root_is_read_only_squashfs() {
        let m = root_mount(Path::new("/dev/vda2"));
        assert_eq!(m.fstype, "squashfs");
        assert!(m.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(m.target, Path::new(SYSROOT));
    }
}
