//! The data partition: grow it to the end of the disk, mount it at
//! `/sysroot/var`, grow its ext4 filesystem. If it cannot be mounted the
//! system still comes up, on a tmpfs `/var`, and says so loudly.

use super::grow::{self, EXT4_SUPERBLOCK};
use super::partitions::{self, Partition};
use crate::sys::{blk, mount};
use anyhow::{Context, Result};
use nix::mount::MsFlags;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Mounts data (or a tmpfs) at `target`. Never fails: a broken data
/// partition must not stop the boot.
pub fn mount_data(part: Option<&Partition>, target: &Path) {
    let Some(part) = part else {
        fallback(target, "no partition named data");
        return;
    };
    let _span = tracing::info_span!("data", dev = %part.dev.display()).entered();
    if let Err(error) = grow_partition(part) {
        tracing::error!(
            error = format!("{error:#}"),
            "could not grow the data partition"
        );
    }
    let fs = read_ext4_size(&part.dev);
    let m = mount::Mount::new(
        &part.dev.to_string_lossy(),
        target,
        "ext4",
        // Not nodev: container image layers under /var/lib/containerd may
        // hold device nodes, and overlayfs inherits the layers' mount flags.
        MsFlags::MS_NOATIME,
    );
    if let Err(error) = mount::mount(&m) {
        fallback(target, &error.to_string());
        return;
    }
    tracing::info!(dev = %part.dev.display(), target = %target.display(), "data mounted");
    match fs {
        Ok(fs) => {
            if let Err(error) = grow_fs(part, fs, target) {
                tracing::error!(
                    error = format!("{error:#}"),
                    "could not grow the data filesystem"
                );
            }
        }
        Err(error) => tracing::warn!(error = format!("{error:#}"), "data filesystem size unknown"),
    }
}

fn fallback(target: &Path, why: &str) {
    tracing::error!(
        reason = why,
        "DATA PARTITION NOT MOUNTED: /var is a tmpfs, nothing will persist"
    );
    let m = mount::Mount::new(
        "tmpfs",
        target,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
    .with_data("mode=0755");
    if let Err(error) = mount::mount(&m) {
        tracing::error!(%error, "tmpfs /var failed too");
    }
}

/// The whole-disk device a partition is on.
fn disk_dev(part: &Partition) -> Result<PathBuf> {
    let disk = part
        .disk
        .clone()
        .with_context(|| format!("no disk found for {}", part.sysname))?;
    let uevent = Path::new(partitions::SYS_BLOCK).join(&disk).join("uevent");
    let text = std::fs::read_to_string(&uevent)
        .with_context(|| format!("reading {}", uevent.display()))?;
    let name = partitions::parse_uevent(&text).devname.unwrap_or(disk);
    Ok(Path::new("/dev").join(name))
}

/// Moves the backup GPT header to the end of the disk and extends data to
/// it, then tells the kernel the partition's new size.
fn grow_partition(part: &Partition) -> Result<()> {
    let disk_path = disk_dev(part)?;
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .with_context(|| format!("opening {}", disk_path.display()))?;
    let sector = blk::logical_sector_size(&disk, &disk_path)?;
    let lb = grow::block_size(sector)?;
    let Some(grown) = grow::grow_table(&mut disk, lb, &part.name)
        .with_context(|| format!("growing the partition table on {}", disk_path.display()))?
    else {
        tracing::info!(disk = %disk_path.display(), "data partition already fills the disk");
        return Ok(());
    };
    disk.sync_all()
        .with_context(|| format!("syncing {}", disk_path.display()))?;
    let sector = u64::from(sector);
    let length = (grown.new_last_lba - grown.first_lba + 1) * sector;
    blk::resize_partition(
        &disk,
        &disk_path,
        part.number,
        grown.first_lba * sector,
        length,
    )?;
    tracing::info!(
        disk = %disk_path.display(),
        partition = part.number,
        old_bytes = (grown.old_last_lba - grown.first_lba + 1) * sector,
        new_bytes = length,
        "grew the data partition to the end of the disk"
    );
    Ok(())
}

fn read_ext4_size(dev: &Path) -> Result<grow::Ext4Size> {
    let mut file = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut sb = vec![0; EXT4_SUPERBLOCK.1];
    file.seek(SeekFrom::Start(EXT4_SUPERBLOCK.0))
        .and_then(|_| file.read_exact(&mut sb))
        .with_context(|| format!("reading the superblock of {}", dev.display()))?;
    grow::parse_ext4_superblock(&sb).with_context(|| format!("{} is not ext4", dev.display()))
}

fn grow_fs(part: &Partition, fs: grow::Ext4Size, target: &Path) -> Result<()> {
    let dev = File::open(&part.dev).with_context(|| format!("opening {}", part.dev.display()))?;
    let part_bytes = blk::size_bytes(&dev, &part.dev)?;
    let Some(blocks) = grow::ext4_target_blocks(fs, part_bytes) else {
        return Ok(());
    };
    let dir = File::open(target).with_context(|| format!("opening {}", target.display()))?;
    let fs_blocks = || {
        nix::sys::statfs::statfs(target)
            .map(|s| s.blocks())
            .unwrap_or(0)
    };
    let before = fs_blocks();
    blk::ext4_resize(&dir, target, blocks)?;
    if fs_blocks() > before {
        tracing::info!(
            dev = %part.dev.display(),
            old_bytes = fs.blocks * fs.block_size,
            new_bytes = blocks * fs.block_size,
            "grew the data filesystem"
        );
    } else {
        // ext4 does not add a last block group too small to be useful.
        tracing::info!(
            dev = %part.dev.display(),
            spare_bytes = (blocks - fs.blocks) * fs.block_size,
            "data filesystem fills its partition"
        );
    }
    Ok(())
}
