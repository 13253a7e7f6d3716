//! Loading the kernel modules listed in `/etc/cairn/modules`: one absolute
//! `.ko` path per line, dependencies first (the image builder orders them by
//! `modules.dep`). Stage 1 and stage 2 each load their own list. A module
//! that is already loaded is fine; one that fails is logged and skipped, so
//! a missing optional driver never stops the boot.

use crate::sys::kmod::{self, Loaded};
use nix::errno::Errno;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The module list, in both the initramfs and the root filesystem.
pub const LIST: &str = "/etc/cairn/modules";

/// The module paths in a list: trimmed, blank lines and `#` comments skipped.
pub fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// The kernel's name of a module file: `crc32c-intel.ko` -> `crc32c_intel`.
pub fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split('.').next()?;
    Some(stem.replace('-', "_"))
}

/// Disk controller drivers: needed to find the root partition on real
/// hardware, but some (ahci: ~0.5 s under emulation) probe slowly. Once the
/// root partition is visible, the rest of them can wait until after boot.
pub fn is_disk_driver(path: &Path) -> bool {
    const DIRS: [&str; 5] = [
        "/drivers/ata/",
        "/drivers/nvme/",
        "/drivers/usb/",
        "/drivers/mmc/",
        "/drivers/scsi/",
    ];
    let path = path.to_string_lossy();
    DIRS.iter().any(|d| path.contains(d))
}

/// The module paths of the list file at `list` (empty, with a warning, if
/// it cannot be read).
pub fn read_list(list: &Path) -> Vec<PathBuf> {
    match std::fs::read_to_string(list) {
        Ok(text) => parse_list(&text),
        Err(error) => {
            tracing::warn!(path = %list.display(), %error, "no module list");
            Vec::new()
        }
    }
}

/// Loads every module in the list at `list`. Returns how many were newly
/// loaded and how many failed.
pub fn load_list(list: &Path) -> (usize, usize) {
    let (counts, _) = load(read_list(list), |_| false);
    counts
}

/// Loads `modules` in order, except those `defer` picks (asked just before
/// each one is due), which are returned for later. Returns how many were
/// newly loaded, how many failed, and the deferred modules.
pub fn load(
    modules: Vec<PathBuf>,
    defer: impl FnMut(&Path) -> bool,
) -> ((usize, usize), Vec<PathBuf>) {
    let start = Instant::now();
    let run = load_each(modules, defer, true);
    run.log(start);
    ((run.loaded, run.failed.len()), run.deferred)
}

/// [`load`] on two threads: drivers (`kernel/drivers/`, with `defer`) on
/// this one, everything else (filesystems, libraries, crypto) on another.
/// Most of a module load is the kernel checking and relocating it, which
/// runs in parallel. Once the drivers are in, `meanwhile` runs on this
/// thread while the other may still be loading; it is told whether that
/// thread is done. A module whose dependency was loading on the other
/// thread fails the first time (unknown symbol), so failures are retried
/// once both are done.
pub fn load_parallel(
    modules: Vec<PathBuf>,
    defer: impl FnMut(&Path) -> bool,
    meanwhile: impl FnOnce(&dyn Fn() -> bool),
) -> ((usize, usize), Vec<PathBuf>) {
    let start = Instant::now();
    let (drivers, others): (Vec<_>, Vec<_>) = modules
        .into_iter()
        .partition(|m| m.to_string_lossy().contains("/drivers/"));
    let other_thread = std::thread::Builder::new()
        .name("modules".into())
        .spawn(move || load_each(others, |_| false, false));
    let mut run = load_each(drivers, defer, false);
    match &other_thread {
        Ok(handle) => meanwhile(&|| handle.is_finished()),
        Err(_) => meanwhile(&|| true),
    }
    match other_thread {
        Ok(handle) => match handle.join() {
            Ok(other) => run.merge(other),
            Err(_) => tracing::warn!("module loading thread failed"),
        },
        Err(error) => tracing::warn!(%error, "no module loading thread"),
    }
    let retry = load_each(std::mem::take(&mut run.failed), |_| false, true);
    run.merge(retry);
    run.log(start);
    ((run.loaded, run.failed.len()), run.deferred)
}

/// What one pass over a module list did.
#[derive(Default)]
struct Pass {
    loaded: usize,
    failed: Vec<PathBuf>,
    deferred: Vec<PathBuf>,
    slowest: (Duration, PathBuf),
}

impl Pass {
    fn merge(&mut self, other: Pass) {
        self.loaded += other.loaded;
        self.failed.extend(other.failed);
        self.deferred.extend(other.deferred);
        if other.slowest.0 > self.slowest.0 {
            self.slowest = other.slowest;
        }
    }

    fn log(&self, start: Instant) {
        tracing::info!(
            loaded = self.loaded,
            failed = self.failed.len(),
            ms = start.elapsed().as_millis() as u64,
            slowest = %self.slowest.1.display(),
            slowest_ms = self.slowest.0.as_millis() as u64,
            deferred = self.deferred.len(),
            "modules loaded"
        );
    }
}

/// One pass: loads each module not deferred; `report` logs failures (a
/// first parallel pass keeps quiet about what its retry may fix).
fn load_each(modules: Vec<PathBuf>, mut defer: impl FnMut(&Path) -> bool, report: bool) -> Pass {
    let mut pass = Pass::default();
    for module in modules {
        if defer(&module) {
            pass.deferred.push(module);
            continue;
        }
        // Already in the kernel (stage 1 loaded it): skip reading and
        // verifying the file again only to be told EEXIST.
        if module_name(&module).is_some_and(|n| Path::new("/sys/module").join(n).exists()) {
            continue;
        }
        let t = Instant::now();
        match kmod::load(&module) {
            Ok(Loaded::New) => pass.loaded += 1,
            Ok(Loaded::Already) => {}
            Err(
                error @ kmod::KmodError::Load {
                    source: Errno::ENODEV,
                    ..
                },
            ) => {
                // The driver found no hardware (e.g. a CPU feature missing).
                if report {
                    tracing::info!(%error, "module not needed here");
                }
            }
            Err(error) => {
                if report {
                    tracing::warn!(%error, "module not loaded");
                }
                pass.failed.push(module.clone());
            }
        }
        if t.elapsed() > pass.slowest.0 {
            pass.slowest = (t.elapsed(), module);
        }
    }
    pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_drivers_are_the_controller_directories() {
        let k = "/lib/modules/6.1.0-56-amd64/kernel";
        assert!(is_disk_driver(Path::new(&format!(
            "{k}/drivers/ata/ahci.ko"
        ))));
        assert!(is_disk_driver(Path::new(&format!(
            "{k}/drivers/usb/storage/usb-storage.ko"
        ))));
        assert!(is_disk_driver(Path::new(&format!(
            "{k}/drivers/scsi/sd_mod.ko"
        ))));
        assert!(!is_disk_driver(Path::new(&format!(
            "{k}/drivers/block/virtio_blk.ko"
        ))));
        assert!(!is_disk_driver(Path::new(&format!("{k}/fs/ext4/ext4.ko"))));
    }

    #[test]
    fn deferred_modules_are_returned_not_loaded() {
        let k = "/nonexistent/kernel";
        let list = vec![
            PathBuf::from(format!("{k}/drivers/ata/ahci.ko")),
            PathBuf::from(format!("{k}/drivers/nvme/host/nvme.ko")),
        ];
        let (_, deferred) = load(list.clone(), is_disk_driver);
        assert_eq!(deferred, list);
    }

    #[test]
    fn module_names() {
        let name = |p: &str| module_name(Path::new(p));
        assert_eq!(
            name("/lib/modules/6.1/kernel/arch/x86/crypto/crc32c-intel.ko").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(
            name("/lib/modules/6.1/virtio_blk.ko.xz").as_deref(),
            Some("virtio_blk")
        );
    }

    #[test]
    fn list_skips_blanks_and_comments() {
        let text = "# deps first\n/lib/modules/6.1/kernel/virtio.ko\n\n  /lib/modules/6.1/kernel/virtio_blk.ko  \n";
        assert_eq!(
            parse_list(text),
            vec![
                PathBuf::from("/lib/modules/6.1/kernel/virtio.ko"),
                PathBuf::from("/lib/modules/6.1/kernel/virtio_blk.ko")
            ]
        );
    }
}
