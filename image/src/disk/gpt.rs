//! The GPT of a Cairn image: planning where each partition goes, writing
//! the table (protective MBR, primary and backup headers) into a sparse
//! image file, and reading it back. The `gpt` crate does the encoding.

use super::DiskError;
use crate::layout::{self, ALIGN, SECTOR, Sizes};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types::{self, Type};
use std::fs::File;
use std::path::Path;

/// One partition of an image: its GPT name, where it starts and how big it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// GPT partition number, from 1.
    pub number: u32,
    pub name: String,
    /// First byte, from the start of the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Partition {
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// Space left after the last partition for the backup GPT (33 sectors),
/// rounded up to the alignment so the disk size stays a MiB multiple.
pub const TAIL: u64 = ALIGN;

/// The partitions of a fresh image, in disk order, each 1 MiB aligned and
/// back to back after the first MiB (protective MBR + primary GPT).
pub fn plan(sizes: &Sizes) -> Vec<Partition> {
    let parts = [
        (layout::PART_ESP, sizes.esp),
        ("root_a", sizes.root),
        ("root_b", sizes.root),
        (layout::PART_CONFIG, sizes.config),
        (layout::PART_DATA, sizes.data),
    ];
    let mut offset = ALIGN;
    let mut out = Vec::new();
    for (number, (name, size)) in (1u32..).zip(parts) {
        let size = size.div_ceil(ALIGN) * ALIGN;
        out.push(Partition {
            number,
            name: name.to_string(),
            offset,
            size,
        });
        offset += size;
    }
    out
}

/// Total image size for `sizes`: first MiB + partitions + tail.
pub fn disk_size(sizes: &Sizes) -> u64 {
    plan(sizes).last().map_or(ALIGN, Partition::end) + TAIL
}

fn type_of(name: &str) -> Type {
    if name == layout::PART_ESP {
        partition_types::EFI
    } else {
        partition_types::LINUX_FS
    }
}

/// Writes the protective MBR and both GPT headers for `parts` into `file`,
/// which must already have its final length.
pub fn write_table(file: &mut File, parts: &[Partition]) -> Result<(), DiskError> {
    let len = file.metadata().map_err(DiskError::io("stat image"))?.len();
    let sectors = len / SECTOR;
    let mbr = ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(file)
        .map_err(|e| DiskError::Gpt(e.to_string()))?;
    let gpt_err = |e: gpt::GptError| DiskError::Gpt(e.to_string());
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, None)
        .map_err(gpt_err)?;
    for part in parts {
        disk.add_partition_at(
            &part.name,
            part.number,
            part.offset / SECTOR,
            part.size / SECTOR,
            type_of(&part.name),
            0,
        )
        .map_err(|e| DiskError::Gpt(format!("partition {}: {e}", part.name)))?;
    }
    disk.write().map_err(gpt_err)?;
    Ok(())
}

/// Reads the partitions of an image file, in partition-number order.
pub fn read_table(image: &Path) -> Result<Vec<Partition>, DiskError> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(image)
        .map_err(|e| DiskError::Gpt(format!("{}: {e}", image.display())))?;
    let mut out = Vec::new();
    for (&number, part) in disk.partitions() {
        if !part.is_used() {
            continue;
        }
        let offset = part.first_lba * SECTOR;
        let size = (part.last_lba + 1 - part.first_lba) * SECTOR;
        out.push(Partition {
            number,
            name: part.name.clone(),
            offset,
            size,
        });
    }
    Ok(out)
}

/// Finds a partition by GPT name.
pub fn find<'a>(parts: &'a [Partition], name: &str) -> Result<&'a Partition, DiskError> {
    parts
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| DiskError::NoPartition {
            name: name.to_string(),
            found: parts.iter().map(|p| p.name.clone()).collect(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    const MIB: u64 = 1024 * 1024;

    fn small() -> Sizes {
        Sizes {
            esp: 40 * MIB,
            root: 8 * MIB,
            config: 34 * MIB,
            data: 4 * MIB,
        }
    }

    #[test]
    fn table_round_trips_with_names_alignment_and_room_for_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let sizes = small();
        let parts = plan(&sizes);
        let total = disk_size(&sizes);
        assert_eq!(total, MIB + 40 * MIB + 16 * MIB + 34 * MIB + 4 * MIB + TAIL);
        let mut file = File::create_new(&path).unwrap();
        file.set_len(total).unwrap();
        write_table(&mut file, &parts).unwrap();
        drop(file);

        let read = read_table(&path).unwrap();
        assert_eq!(read, parts);
        let names: Vec<_> = read.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ESP", "root_a", "root_b", "config", "data"]);
        for pair in read.windows(2) {
            assert!(pair[0].end() <= pair[1].offset, "overlap: {pair:?}");
        }
        for p in &read {
            assert_eq!(p.offset % ALIGN, 0, "{} unaligned", p.name);
        }
        assert_eq!(read[0].size, sizes.esp);
        assert_eq!(read[1].size, sizes.root);
        assert_eq!(read[4].size, sizes.data);
        // The backup GPT (header + 32 sectors of entries) sits after data.
        assert!(read[4].end() + 33 * SECTOR <= total);

        let disk = gpt::GptConfig::new().open(&path).unwrap();
        assert!(disk.primary_header().is_ok() && disk.backup_header().is_ok());
        assert_eq!(
            disk.backup_header().unwrap().current_lba,
            total / SECTOR - 1
        );
        let esp = &disk.partitions()[&1];
        assert_eq!(esp.part_type_guid, partition_types::EFI);
        assert_eq!(
            disk.partitions()[&5].part_type_guid,
            partition_types::LINUX_FS
        );

        // Protective MBR: type 0xEE at offset 446 + 4, and the boot signature.
        let mut mbr = [0u8; 512];
        let mut file = File::open(&path).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_exact(&mut mbr).unwrap();
        assert_eq!(mbr[450], 0xEE);
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);

        // Sparse: only the tables are allocated.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < MIB);
        assert!(matches!(
            find(&read, "nope"),
            Err(DiskError::NoPartition { .. })
        ));
    }
}
