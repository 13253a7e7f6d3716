//! Disk image assembly without root: a sparse image file, its GPT, and the
//! filesystems written into it at their offsets.
//!
//! FAT (ESP, config) is formatted and filled in place through [`Slice`] and
//! the `fatfs` crate. squashfs and ext4 come from their own tools
//! (`mksquashfs`, `mkfs.ext4`) as separate files, then copied into the image
//! skipping all-zero blocks so the image stays sparse.
//!
//! # Layout
//! - [`gpt`]: planning and writing/reading the partition table.
//! - [`slice`]: a partition-sized window onto the image file.
//! - [`fat`]: FAT32 build, read, in-place overwrite.
//! - [`tools`]: `mksquashfs` and `mkfs.ext4`.

pub mod fat;
pub mod gpt;
pub mod slice;
pub mod tools;

pub use gpt::Partition;
pub use slice::Slice;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("partition table: {0}")]
    Gpt(String),
    #[error("FAT: {what}: {source}")]
    Fat {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no partition named {name:?} (found: {found:?})")]
    NoPartition { name: String, found: Vec<String> },
    #[error("{path} is {old} bytes; refusing to write {new} bytes in place")]
    SizeChange {
        path: String,
        old: usize,
        new: usize,
    },
    #[error("{what} is {size} bytes, larger than partition {partition} ({room} bytes)")]
    TooBig {
        what: String,
        size: u64,
        partition: String,
        room: u64,
    },
    #[error("could not run {tool} (install it, e.g. `make deps`): {source}")]
    ToolMissing {
        tool: String,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl DiskError {
    /// An `Io` error naming what was being done, for `map_err`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
        let what = what.into();
        move |source| DiskError::Io { what, source }
    }
}

/// Creates (or replaces) a sparse image file of `size` bytes, for reading
/// and writing.
pub fn create_image(path: &Path, size: u64) -> Result<File, DiskError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(DiskError::io(format!("create {}", path.display())))?;
    file.set_len(size)
        .map_err(DiskError::io(format!("size {}", path.display())))?;
    Ok(file)
}

/// Copies `source` into `part` of `image`, skipping all-zero blocks so the
/// image stays sparse. Errors if the file does not fit, naming both sizes.
pub fn copy_sparse(image: &mut File, part: &Partition, source: &Path) -> Result<u64, DiskError> {
    let what = || format!("copy {} into {}", source.display(), part.name);
    let mut from = File::open(source).map_err(DiskError::io(what()))?;
    let size = from.metadata().map_err(DiskError::io(what()))?.len();
    if size > part.size {
        return Err(DiskError::TooBig {
            what: source.display().to_string(),
            size,
            partition: part.name.clone(),
            room: part.size,
        });
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        let n = read_full(&mut from, &mut buf).map_err(DiskError::io(what()))?;
        if n == 0 {
            break;
        }
        let block = &buf[..n];
        if block.iter().any(|&b| b != 0) {
            image
                .seek(SeekFrom::Start(part.offset + at))
                .and_then(|_| image.write_all(block))
                .map_err(DiskError::io(what()))?;
        }
        at += n as u64;
    }
    Ok(size)
}

fn read_full(from: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_skips_zero_blocks_and_refuses_oversize() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut data = vec![0u8; 4 << 20];
        data[..5].copy_from_slice(b"hello");
        let len = data.len();
        data[len - 3..].copy_from_slice(b"end");
        std::fs::write(&src, &data).unwrap();
        let mut image = create_image(&dir.path().join("img"), 16 << 20).unwrap();
        let part = Partition {
            number: 2,
            name: "root_a".into(),
            offset: 1 << 20,
            size: 8 << 20,
        };
        assert_eq!(copy_sparse(&mut image, &part, &src).unwrap(), 4 << 20);
        assert!(image.metadata().unwrap().blocks() * 512 <= 512 << 10);
        let mut back = vec![0u8; len];
        image.seek(SeekFrom::Start(1 << 20)).unwrap();
        image.read_exact(&mut back).unwrap();
        assert_eq!(back, data);

        let small = Partition {
            size: 1 << 20,
            ..part
        };
        let err = copy_sparse(&mut image, &small, &src).unwrap_err();
        assert!(err.to_string().contains("4194304 bytes"), "{err}");
    }
}
