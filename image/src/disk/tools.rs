//! The filesystems Cairn builds with their reference tools rather than in
//! Rust: squashfs (`mksquashfs`, squashfs-tools) for the read-only root and
//! ext4 (`mkfs.ext4`, e2fsprogs) for `data`. Both write a plain file that is
//! then copied sparsely into the image.

use super::DiskError;
use crate::layout;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds a tool in `PATH`, or in the sbin directories a non-root `PATH` on
/// Debian leaves out (`mkfs.ext4` lives in `/usr/sbin`).
pub fn find(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a tool, turning a missing binary or a failure into an error that
/// names it and carries its stderr.
pub fn run(mut cmd: Command) -> Result<(), DiskError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(command = ?cmd, "running");
    let out = cmd.output().map_err(|source| DiskError::ToolMissing {
        tool: tool.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(DiskError::ToolFailed {
            tool,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Packs `dir` into a squashfs image at `out`, zstd-compressed, every
/// file owned by root, fixed timestamps so the same tree gives
/// the same bytes.
pub fn mksquashfs(dir: &Path, out: &Path) -> Result<(), DiskError> {
    let mut cmd = Command::new(find("mksquashfs"));
    cmd.arg(dir)
        .arg(out)
        .args(["-noappend", "-all-root"])
        // zstd level 15: close to xz in size, several times quicker to read.
        .args(["-comp", "zstd", "-Xcompression-level", "15"])
        .args(["-all-time", "0", "-mkfs-time", "0"])
        .args(["-no-progress", "-quiet"]);
    run(cmd)
}

/// Creates an empty ext4 filesystem of `size` bytes at `out`, labelled
/// `data`, root-owned, with the journal and the resize inode (so init can
/// grow it online). 4 KiB blocks: the "small" profile mkfs would pick for
/// a few hundred MiB (1 KiB blocks) grows badly to a whole SD card.
pub fn mkfs_ext4(out: &Path, size: u64) -> Result<(), DiskError> {
    let mut cmd = Command::new(find("mkfs.ext4"));
    cmd.args(["-q", "-F", "-L", layout::DATA_LABEL])
        .args(["-b", "4096", "-T", "default"])
        .args(["-E", "root_owner=0:0"])
        .arg(out)
        .arg(format!("{}k", size / 1024));
    run(cmd)
}
