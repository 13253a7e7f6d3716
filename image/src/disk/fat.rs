//! FAT32 filesystems inside an image file: the ESP and the config
//! partition. Formatted and filled through [`Slice`] with the `fatfs` crate,
//! and edited in place later (`grubenv`) the same way — no mounts.

use super::{DiskError, Partition, Slice};
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

/// What goes into a FAT filesystem being built.
#[derive(Debug, Clone)]
pub enum Entry {
    /// An empty directory (parents must come first).
    Dir(String),
    /// A file with these bytes.
    Bytes(String, Vec<u8>),
    /// A file copied from the host.
    Copy(String, PathBuf),
}

fn fat_err(what: String) -> impl FnOnce(std::io::Error) -> DiskError {
    move |source| DiskError::Fat { what, source }
}

/// An 11-byte, space-padded, upper-case FAT volume label.
fn label_bytes(label: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (dst, src) in out.iter_mut().zip(label.bytes()) {
        *dst = src.to_ascii_uppercase();
    }
    out
}

/// A serial number that differs per partition but not per build, so
/// images are reproducible and the two FAT volumes are told apart.
fn volume_id(part: &Partition) -> u32 {
    0xCA1E_0000 | part.number
}

/// Formats `part` of `image` as FAT32 with `label` and writes `entries`.
pub fn build(
    image: &File,
    part: &Partition,
    label: &str,
    entries: &[Entry],
) -> Result<(), DiskError> {
    let open = || -> std::io::Result<Slice<File>> {
        Slice::new(image.try_clone()?, part.offset, part.size)
    };
    let slice = open().map_err(fat_err(format!("open partition {}", part.name)))?;
    fatfs::format_volume(
        slice,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id(part))
            .volume_label(label_bytes(label)),
    )
    .map_err(fat_err(format!("format {} as FAT32", part.name)))?;
    let slice = open().map_err(fat_err(format!("open partition {}", part.name)))?;
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())
        .map_err(fat_err(format!("mount {}", part.name)))?;
    fill(&fs.root_dir(), &part.name, entries)?;
    fs.unmount()
        .map_err(fat_err(format!("unmount {}", part.name)))?;
    Ok(())
}

fn fill(root: &fatfs::Dir<Slice<File>>, part: &str, entries: &[Entry]) -> Result<(), DiskError> {
    for entry in entries {
        match entry {
            Entry::Dir(path) => {
                root.create_dir(path)
                    .map_err(fat_err(format!("{}: mkdir {path}", part)))?;
            }
            Entry::Bytes(path, bytes) => {
                let mut f = root
                    .create_file(path)
                    .map_err(fat_err(format!("{}: create {path}", part)))?;
                f.write_all(bytes)
                    .map_err(fat_err(format!("{}: write {path}", part)))?;
            }
            Entry::Copy(path, source) => {
                let mut from = File::open(source)
                    .map_err(DiskError::io(format!("open {}", source.display())))?;
                let mut f = root
                    .create_file(path)
                    .map_err(fat_err(format!("{}: create {path}", part)))?;
                std::io::copy(&mut from, &mut f)
                    .map_err(fat_err(format!("{}: write {path}", part)))?;
            }
        }
    }
    Ok(())
}

/// Reads a whole file from the FAT in `part`.
pub fn read(image: &File, part: &Partition, path: &str) -> Result<Vec<u8>, DiskError> {
    let fs = open_fs(image, part)?;
    let mut bytes = Vec::new();
    fs.root_dir()
        .open_file(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(fat_err(format!("{}: read {path}", part.name)))?;
    Ok(bytes)
}

/// Overwrites an existing file with bytes of exactly its current size, so
/// the data stays in the same clusters (what GRUB's `save_env` expects).
pub fn overwrite(
    image: &File,
    part: &Partition,
    path: &str,
    bytes: &[u8],
) -> Result<(), DiskError> {
    let fs = open_fs(image, part)?;
    {
        let mut f = fs
            .root_dir()
            .open_file(path)
            .map_err(fat_err(format!("{}: open {path}", part.name)))?;
        let mut old = Vec::new();
        f.read_to_end(&mut old)
            .map_err(fat_err(format!("{}: read {path}", part.name)))?;
        if old.len() != bytes.len() {
            return Err(DiskError::SizeChange {
                path: path.to_string(),
                old: old.len(),
                new: bytes.len(),
            });
        }
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| f.write_all(bytes))
            .and_then(|()| f.flush())
            .map_err(fat_err(format!("{}: write {path}", part.name)))?;
    }
    fs.unmount()
        .map_err(fat_err(format!("unmount {}", part.name)))?;
    image
        .sync_all()
        .map_err(DiskError::io("sync image".to_string()))
}

/// Writes `bytes` to `path` (its directories created), replacing any file
/// there the way a careful editor does: the new text goes to `<path>.new`
/// first, the old file becomes `<path>.bak` (one kept), then the new one
/// takes its name. Returns whether a previous file was kept as `.bak`.
pub fn replace(
    image: &File,
    part: &Partition,
    path: &str,
    bytes: &[u8],
) -> Result<bool, DiskError> {
    let fs = open_fs(image, part)?;
    let had_old;
    {
        let root = fs.root_dir();
        let (dir_path, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut dir = root.clone();
        for component in dir_path.split('/').filter(|c| !c.is_empty()) {
            dir = match dir.open_dir(component) {
                Ok(d) => d,
                Err(_) => dir
                    .create_dir(component)
                    .map_err(fat_err(format!("{}: mkdir {component}", part.name)))?,
            };
        }
        let (new, bak) = (format!("{name}.new"), format!("{name}.bak"));
        let _ = dir.remove(&new);
        let mut f = dir
            .create_file(&new)
            .map_err(fat_err(format!("{}: create {path}.new", part.name)))?;
        f.truncate()
            .and_then(|()| f.write_all(bytes))
            .and_then(|()| f.flush())
            .map_err(fat_err(format!("{}: write {path}.new", part.name)))?;
        drop(f);
        had_old = dir.open_file(name).is_ok();
        if had_old {
            let _ = dir.remove(&bak);
            dir.rename(name, &dir, &bak).map_err(fat_err(format!(
                "{}: rename {path} to {path}.bak",
                part.name
            )))?;
        }
        dir.rename(&new, &dir, name).map_err(fat_err(format!(
            "{}: rename {path}.new to {path}",
            part.name
        )))?;
    }
    fs.unmount()
        .map_err(fat_err(format!("unmount {}", part.name)))?;
    image
        .sync_all()
        .map_err(DiskError::io("sync image".to_string()))?;
    Ok(had_old)
}

fn open_fs(image: &File, part: &Partition) -> Result<fatfs::FileSystem<Slice<File>>, DiskError> {
    let slice = image
        .try_clone()
        .and_then(|f| Slice::new(f, part.offset, part.size))
        .map_err(fat_err(format!("open partition {}", part.name)))?;
    fatfs::FileSystem::new(slice, fatfs::FsOptions::new())
        .map_err(fat_err(format!("mount {}", part.name)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;

    #[test]
    fn build_read_and_overwrite_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fat.img");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let part = Partition {
            number: 1,
            name: "config".into(),
            offset: 1 << 20,
            size: 34 << 20,
        };
        file.set_len(part.end()).unwrap();
        let entries = [
            Entry::Dir("cairn".into()),
            Entry::Bytes("cairn/hello.txt".into(), b"hello".to_vec()),
            Entry::Bytes("env".into(), vec![b'#'; 1024]),
        ];
        build(&file, &part, "CAIRN", &entries).unwrap();
        assert_eq!(read(&file, &part, "cairn/hello.txt").unwrap(), b"hello");
        overwrite(&file, &part, "env", &[b'x'; 1024]).unwrap();
        assert_eq!(read(&file, &part, "env").unwrap(), vec![b'x'; 1024]);
        assert!(matches!(
            overwrite(&file, &part, "env", b"short"),
            Err(DiskError::SizeChange { .. })
        ));
        // Replacing keeps one backup; new directories are made.
        assert!(!replace(&file, &part, "manifests/app.yaml", b"v1").unwrap());
        assert!(replace(&file, &part, "cairn/hello.txt", b"bye").unwrap());
        assert_eq!(read(&file, &part, "cairn/hello.txt").unwrap(), b"bye");
        assert_eq!(read(&file, &part, "cairn/hello.txt.bak").unwrap(), b"hello");
        assert!(replace(&file, &part, "cairn/hello.txt", b"third").unwrap());
        assert_eq!(read(&file, &part, "cairn/hello.txt.bak").unwrap(), b"bye");
        assert_eq!(read(&file, &part, "manifests/app.yaml").unwrap(), b"v1");
        assert!(read(&file, &part, "cairn/hello.txt.new").is_err());
        let fs = open_fs(&file, &part).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_label(), "CAIRN");
        // Nothing was written before the partition.
        let mut head = vec![0u8; 4096];
        use std::io::{Seek, SeekFrom};
        let mut f = &file;
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut head).unwrap();
        assert!(head.iter().all(|&b| b == 0));
    }
}
