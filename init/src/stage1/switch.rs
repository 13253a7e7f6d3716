//! Leaving the initramfs, the way `switch_root` does it: `pivot_root(2)`
//! does not work on the initramfs (rootfs cannot be unmounted), so stage 1
//! frees the initramfs' memory by deleting its files (without crossing into
//! other mounts), moves the new root onto `/`, chroots into it and execs
//! stage 2.

use crate::sys::mount;
use anyhow::{Context, Result, bail};
use nix::sys::statfs::statfs;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The API filesystems that move into the new root.
pub const MOVED: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Moves `/dev`, `/proc`, `/sys` into `new_root`, empties the initramfs,
/// makes `new_root` the root and execs `init` there. Returns only on error.
pub fn switch_root(new_root: &Path, init: &str) -> Result<Infallible> {
    for api in MOVED {
        let to = new_root.join(api.trim_start_matches('/'));
        mount::move_mount(Path::new(api), &to)?;
    }
    std::env::set_current_dir(new_root).with_context(|| format!("chdir {}", new_root.display()))?;
    delete_initramfs()?;
    mount::move_mount(new_root, Path::new("/"))?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    std::env::set_current_dir("/").context("chdir / in the new root")?;
    let path = CString::new(init).context("init path")?;
    let Err(err) = nix::unistd::execv(&path, &[&path]);
    bail!("exec {init}: {err}")
}

/// Deletes everything on the initramfs (a ramfs/tmpfs root), staying on its
/// device so mounted filesystems below it are untouched.
fn delete_initramfs() -> Result<()> {
    let fs = statfs("/").context("statfs /")?;
    // <linux/magic.h>: RAMFS_MAGIC 0x858458f6, TMPFS_MAGIC 0x01021994.
    let kind = fs.filesystem_type().0 as u64 & 0xffff_ffff;
    if kind != 0x8584_58f6 && kind != 0x0102_1994 {
        bail!("/ is not an initramfs (ramfs or tmpfs); refusing to delete it");
    }
    let dev = std::fs::symlink_metadata("/").context("stat /")?.dev();
    remove_tree(Path::new("/"), dev);
    Ok(())
}

/// Removes the contents of `dir` that live on device `dev`; errors are
/// skipped, as switch_root does (a leftover file only costs memory).
fn remove_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_empties_a_directory_on_one_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("lib/modules/6.1")).expect("mkdir");
        std::fs::write(root.join("init"), b"x").expect("write");
        std::fs::write(root.join("lib/modules/6.1/a.ko"), b"x").expect("write");
        std::os::unix::fs::symlink("init", root.join("link")).expect("symlink");
        let dev = std::fs::metadata(root).expect("stat").dev();
        remove_tree(root, dev);
        assert_eq!(std::fs::read_dir(root).expect("read").count(), 0);
        // a different "device" is left alone
        std::fs::write(root.join("keep"), b"x").expect("write");
        remove_tree(root, dev + 1);
        assert!(root.join("keep").exists());
    }
}
