//! Growing the data partition and its ext4 filesystem to fill the disk.
//!
//! An image is written to a card or disk larger than the image. On boot,
//! stage 1 moves the GPT backup header to the new end of the disk, extends
//! the data partition (which must be the last one) to the new last usable
//! LBA, and tells the kernel with `BLKPG_RESIZE_PARTITION`. After the data
//! filesystem is mounted, it is grown online with `EXT4_IOC_RESIZE_FS`.
//! Both steps are idempotent: on a disk that already fits, nothing is written.

use gpt::disk::LogicalBlockSize;
use std::io::{Read, Seek, SeekFrom, Write};

/// Why the partition table could not be grown.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("reading the partition table: {0}")]
    Read(gpt::GptError),
    #[error("no partition named {0:?} in the partition table")]
    Missing(String),
    #[error("partition {name:?} is not the last on the disk (partition {other:?} ends after it)")]
    NotLast { name: String, other: String },
    #[error("writing the partition table: {0}")]
    Write(gpt::GptError),
    #[error("writing the protective MBR: {0}")]
    Mbr(gpt::mbr::MBRError),
    #[error("unsupported logical sector size {0}")]
    SectorSize(u32),
}

/// What growing the table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub first_lba: u64,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
}

/// The last usable LBA on a disk of `disk_lbas` blocks: the backup header
/// takes the last block and the backup entry array the `array_lbas` before it.
pub fn last_usable(disk_lbas: u64, array_lbas: u64) -> Option<u64> {
    disk_lbas.checked_sub(array_lbas + 2)
}

/// The new last LBA of the last partition if the disk has room after it.
pub fn new_last_lba(disk_lbas: u64, array_lbas: u64, part_last_lba: u64) -> Option<u64> {
    last_usable(disk_lbas, array_lbas).filter(|&last| last > part_last_lba)
}

/// The `gpt` crate's name for a logical sector size.
pub fn block_size(bytes: u32) -> Result<LogicalBlockSize, GrowError> {
    match bytes {
        512 => Ok(LogicalBlockSize::Lb512),
        4096 => Ok(LogicalBlockSize::Lb4096),
        other => Err(GrowError::SectorSize(other)),
    }
}

/// Extends the partition named `name` on `device` (a whole disk or a disk
/// image) to the end of the device, moving the backup header there.
/// `Ok(None)` when the partition already ends at the last usable LBA.
pub fn grow_table<D>(
    device: &mut D,
    lb: LogicalBlockSize,
    name: &str,
) -> Result<Option<Grown>, GrowError>
where
    D: Read + Write + Seek + std::fmt::Debug,
{
    let lb_bytes = u64::from(lb);
    let disk_lbas = device
        .seek(SeekFrom::End(0))
        .map_err(|e| GrowError::Read(e.into()))?
        / lb_bytes;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .open_from_device(&mut *device)
        .map_err(GrowError::Read)?;
    let header = disk
        .primary_header()
        .map_err(|e| GrowError::Read(e.into()))?;
    let array_lbas = (u64::from(header.num_parts) * u64::from(header.part_size)).div_ceil(lb_bytes);

    let mut parts = disk.partitions().clone();
    let (&id, part) = parts
        .iter()
        .find(|(_, p)| p.name == name)
        .ok_or_else(|| GrowError::Missing(name.to_string()))?;
    if let Some(other) = parts.values().find(|p| p.last_lba > part.last_lba) {
        return Err(GrowError::NotLast {
            name: name.to_string(),
            other: other.name.clone(),
        });
    }
    let Some(new_last) = new_last_lba(disk_lbas, array_lbas, part.last_lba) else {
        return Ok(None);
    };
    let grown = Grown {
        first_lba: part.first_lba,
        old_last_lba: part.last_lba,
        new_last_lba: new_last,
    };
    if let Some(p) = parts.get_mut(&id) {
        p.last_lba = new_last;
    }
    // update_partitions recomputes both headers for the current device size:
    // the backup header moves to the last LBA, last_usable follows it.
    disk.update_partitions(parts).map_err(GrowError::Write)?;
    disk.write_inplace().map_err(GrowError::Write)?;
    drop(disk);
    let protective = u32::try_from(disk_lbas - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(protective)
        .update_conservative(device)
        .map_err(GrowError::Mbr)?;
    Ok(Some(grown))
}

/// The size of an ext4 filesystem, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Size {
    pub block_size: u64,
    pub blocks: u64,
}

/// Byte offset and length of the ext4 superblock on its device.
pub const EXT4_SUPERBLOCK: (u64, usize) = (1024, 1024);

/// Reads block size and block count from an ext4 superblock (the 1024 bytes
/// at offset 1024). `None` if it is not ext2/3/4.
pub fn parse_ext4_superblock(sb: &[u8]) -> Option<Ext4Size> {
    let u32_at = |off: usize| -> Option<u32> {
        sb.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = sb
        .get(0x38..0x3a)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))?;
    if magic != 0xef53 {
        return None;
    }
    let log_block = u32_at(0x18)?;
    if log_block > 6 {
        return None;
    }
    let incompat = u32_at(0x60)?;
    let lo = u64::from(u32_at(0x04)?);
    let hi = if incompat & 0x80 != 0 {
        u64::from(u32_at(0x150)?)
    } else {
        0
    };
    Some(Ext4Size {
        block_size: 1024 << log_block,
        blocks: hi << 32 | lo,
    })
}

/// The block count a filesystem should be grown to so that it fills a
/// partition of `part_bytes`; `None` if it already does.
pub fn ext4_target_blocks(fs: Ext4Size, part_bytes: u64) -> Option<u64> {
    let fits = part_bytes / fs.block_size;
    (fits > fs.blocks).then_some(fits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt::partition_types;
    use std::fs::OpenOptions;

    const MIB: u64 = 1024 * 1024;

    fn make_disk(path: &std::path::Path, size: u64) {
        let file = std::fs::File::create(path).expect("create");
        file.set_len(size).expect("set_len");
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .create(path)
            .expect("gpt create");
        for (name, len) in [("ESP", 4 * MIB), ("root_a", 4 * MIB), ("data", 8 * MIB)] {
            disk.add_partition(name, len, partition_types::LINUX_FS, 0, None)
                .expect("add partition");
        }
        disk.write().expect("write");
    }

    #[test]
    fn grows_the_last_partition_on_an_enlarged_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        make_disk(&path, 32 * MIB);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        // Nothing to do while the image is its original size... except the
        // free space the builder left after `data`.
        let first = grow_table(&mut file, LogicalBlockSize::Lb512, "data").expect("grow");
        assert!(first.is_some());
        assert_eq!(
            grow_table(&mut file, LogicalBlockSize::Lb512, "data").expect("again"),
            None
        );

        file.set_len(96 * MIB).expect("enlarge");
        let grown = grow_table(&mut file, LogicalBlockSize::Lb512, "data")
            .expect("grow")
            .expect("grown");
        drop(file);

        let disk = gpt::GptConfig::new().open(&path).expect("reopen");
        let lbas = 96 * MIB / 512;
        let primary = disk.primary_header().expect("primary");
        let backup = disk
            .backup_header()
            .expect("backup header valid at the new end");
        assert_eq!(primary.backup_lba, lbas - 1);
        assert_eq!(backup.current_lba, lbas - 1);
        assert_eq!(primary.last_usable, lbas - 34);
        let data = disk
            .partitions()
            .values()
            .find(|p| p.name == "data")
            .expect("data");
        assert_eq!(data.last_lba, primary.last_usable);
        assert_eq!(grown.new_last_lba, data.last_lba);
        assert!(grown.old_last_lba < grown.new_last_lba);
        // Other partitions are untouched.
        let names: Vec<_> = disk.partitions().values().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["ESP", "root_a", "data"]);
    }

    #[test]
    fn refuses_when_the_partition_is_not_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        make_disk(&path, 32 * MIB);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let err = grow_table(&mut file, LogicalBlockSize::Lb512, "root_a").expect_err("not last");
        assert!(matches!(err, GrowError::NotLast { .. }));
        let err = grow_table(&mut file, LogicalBlockSize::Lb512, "nope").expect_err("missing");
        assert!(matches!(err, GrowError::Missing(_)));
    }

    #[test]
    fn grow_arithmetic() {
        // 1 GiB disk, 128 entries of 128 bytes = 32 LBAs of array.
        let lbas = 2 * 1024 * 1024;
        assert_eq!(last_usable(lbas, 32), Some(lbas - 34));
        assert_eq!(new_last_lba(lbas, 32, 1000), Some(lbas - 34));
        assert_eq!(new_last_lba(lbas, 32, lbas - 34), None);
        assert_eq!(last_usable(10, 32), None);
    }

    #[test]
    fn ext4_superblock_and_target() {
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        sb[0x04..0x08].copy_from_slice(&65536u32.to_le_bytes());
        let fs = parse_ext4_superblock(&sb).expect("ext4");
        assert_eq!(
            fs,
            Ext4Size {
                block_size: 4096,
                blocks: 65536
            }
        );
        assert_eq!(ext4_target_blocks(fs, 256 * MIB), None);
        assert_eq!(ext4_target_blocks(fs, 1024 * MIB + 100), Some(262144));
        // 64bit feature: high word counts.
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            parse_ext4_superblock(&sb).expect("ext4").blocks,
            (1 << 32) + 65536
        );
        sb[0x38] = 0;
        assert_eq!(parse_ext4_superblock(&sb), None);
    }
}
