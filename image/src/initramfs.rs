//! The stage-1 initramfs: a gzip-compressed cpio (newc) archive holding
//! `cairn-init` as `/init`, the kernel modules needed to reach the root
//! partition, and the list of those modules in load order.
//!
//! The archive is built in memory from a sorted tree so the same inputs
//! give the same bytes: every entry is owned by root with mtime 0 and
//! inode numbers assigned in path order. Device nodes are written straight
//! into the archive (no root needed); `/dev/console` must exist before
//! `/init` runs or the kernel starts it without stdin/stdout/stderr.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is too large for a cpio newc entry")]
    TooLarge { path: PathBuf },
}

/// What an archive entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Dir,
    Bytes(Vec<u8>),
    File(PathBuf),
    CharDev { major: u32, minor: u32 },
}

/// A cpio archive being assembled: absolute paths (without the leading
/// `/`) to permissions and content. Parent directories are added on the way.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, (u32, Content)>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, mode: u32, content: Content) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert((0o755, Content::Dir));
        }
        self.entries.insert(path.to_string(), (mode, content));
    }

    pub fn dir(&mut self, path: &str) {
        self.insert(path, 0o755, Content::Dir);
    }

    pub fn bytes(&mut self, path: &str, mode: u32, bytes: impl Into<Vec<u8>>) {
        self.insert(path, mode, Content::Bytes(bytes.into()));
    }

    pub fn file(&mut self, path: &str, mode: u32, source: &Path) {
        self.insert(path, mode, Content::File(source.to_path_buf()));
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, mode, Content::CharDev { major, minor });
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive (uncompressed newc) to `w`.
    pub fn write<W: Write>(&self, mut w: W) -> Result<W, InitramfsError> {
        let werr = |source| InitramfsError::Write {
            path: PathBuf::from("<initramfs>"),
            source,
        };
        for (ino, (path, (perm, content))) in (1u32..).zip(&self.entries) {
            let builder = cpio::newc::Builder::new(path)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(0);
            let data = match content {
                Content::Dir => None,
                Content::Bytes(b) => Some(b.clone()),
                Content::File(src) => {
                    Some(std::fs::read(src).map_err(|source| InitramfsError::Read {
                        path: src.clone(),
                        source,
                    })?)
                }
                Content::CharDev { .. } => None,
            };
            let (mode, nlink, builder) = match content {
                Content::Dir => (S_IFDIR | perm, 2, builder),
                Content::CharDev { major, minor } => (
                    S_IFCHR | perm,
                    1,
                    builder.rdev_major(*major).rdev_minor(*minor),
                ),
                _ => (S_IFREG | perm, 1, builder),
            };
            let data = data.unwrap_or_default();
            let size = u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge {
                path: PathBuf::from(path),
            })?;
            let mut writer = builder.mode(mode).nlink(nlink).write(w, size);
            writer.write_all(&data).map_err(werr)?;
            w = writer.finish().map_err(werr)?;
        }
        cpio::newc::trailer(w).map_err(werr)
    }
}

/// Modules stage 1 needs to reach its partitions: the virtio chain, the
/// disk controllers real boards use, squashfs, ext4 (with the crc32c
/// driver its checksums need, a soft dependency `modules.dep` misses) and
/// vfat with its code pages. Names the kernel lacks are skipped with a
/// warning; built-in ones need no file.
pub fn stage1_modules(arch: crate::Arch) -> Vec<&'static str> {
    let mut wanted = vec![
        "virtio_ring",
        "virtio",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_blk",
        "virtio_scsi",
        "ahci",
        "libahci",
        "sd_mod",
        "nvme",
        "nvme_core",
        "usb_storage",
        "uas",
        "xhci_pci",
        "ehci_pci",
        "mmc_block",
        "sdhci",
        "sdhci_pci",
        "squashfs",
        "crc32c_generic",
        "ext4",
        "vfat",
        "fat",
        "nls_cp437",
        "nls_ascii",
        "nls_utf8",
    ];
    match arch {
        crate::Arch::X86_64 => wanted.push("crc32c_intel"),
        crate::Arch::Aarch64 => wanted.extend(["sdhci_pltfm", "sdhci_of_arasan", "sdhci_iproc"]),
    }
    wanted
}

/// The text of `/etc/cairn/modules`: one absolute path per line, in the
/// order given (dependencies first).
pub fn module_list(kernel_version: &str, ordered: &[PathBuf]) -> String {
    ordered
        .iter()
        .map(|m| format!("/lib/modules/{kernel_version}/{}\n", m.display()))
        .collect()
}

/// Inputs of the stage-1 initramfs.
#[derive(Debug)]
pub struct Stage1<'a> {
    /// The `cairn-init` binary, installed as `/init`.
    pub init: &'a Path,
    pub kernel_version: &'a str,
    /// The kernel's modules directory on the host (`.../lib/modules/<kver>`).
    pub modules_dir: &'a Path,
    /// Modules to include, relative to `modules_dir`, dependencies first.
    pub modules: &'a [PathBuf],
}

/// The archive for `stage1`, before compression.
pub fn archive(stage1: &Stage1) -> Archive {
    let mut a = Archive::new();
    a.file("init", 0o755, stage1.init);
    for dir in ["dev", "proc", "sys", "run", "tmp", "sysroot"] {
        a.dir(dir);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.char_dev("dev/null", 0o666, 1, 3);
    a.dir(&format!("lib/modules/{}", stage1.kernel_version));
    for module in stage1.modules {
        let dest = format!("lib/modules/{}/{}", stage1.kernel_version, module.display());
        a.file(&dest, 0o644, &stage1.modules_dir.join(module));
    }
    a.bytes(
        "etc/cairn/modules",
        0o644,
        module_list(stage1.kernel_version, stage1.modules),
    );
    a.bytes("etc/initrd-release", 0o644, Vec::new());
    a
}

/// Builds the gzip-compressed initramfs at `out`; returns its size.
pub fn build(stage1: &Stage1, out: &Path) -> Result<u64, InitramfsError> {
    let werr = |source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(werr)?;
    let gz = GzEncoder::new(io::BufWriter::new(file), Compression::best());
    let gz = archive(stage1).write(gz)?;
    let mut file = gz.finish().map_err(werr)?;
    file.flush().map_err(werr)?;
    let size = std::fs::metadata(out).map_err(werr)?.len();
    tracing::info!(path = %out.display(), size, modules = stage1.modules.len(), "initramfs built");
    Ok(size)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn archive_holds_init_modules_and_their_list() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("cairn-init");
        std::fs::write(&init, b"\x7fELF init").unwrap();
        let mods = dir.path().join("mods");
        std::fs::create_dir_all(mods.join("kernel/drivers/virtio")).unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio/virtio.ko"), b"ko1").unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio/virtio_ring.ko"), b"ko2").unwrap();
        let ordered = [
            PathBuf::from("kernel/drivers/virtio/virtio_ring.ko"),
            PathBuf::from("kernel/drivers/virtio/virtio.ko"),
        ];
        let stage1 = Stage1 {
            init: &init,
            kernel_version: "6.1.0-test",
            modules_dir: &mods,
            modules: &ordered,
        };
        let out = dir.path().join("initrd.img");
        build(&stage1, &out).unwrap();
        let again = dir.path().join("again.img");
        build(&stage1, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());

        let mut raw = Vec::new();
        GzDecoder::new(File::open(&out).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let mut rest = &raw[..];
        let mut seen = BTreeMap::new();
        loop {
            let mut entry = cpio::NewcReader::new(rest).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let (name, mode, uid, mtime) = {
                let e = entry.entry();
                (e.name().to_string(), e.mode(), e.uid(), e.mtime())
            };
            assert_eq!((uid, mtime), (0, 0), "{name}");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.insert(name, (mode, data));
            rest = entry.finish().unwrap();
        }
        assert_eq!(seen["init"], (0o100755, b"\x7fELF init".to_vec()));
        assert_eq!(
            String::from_utf8(seen["etc/cairn/modules"].1.clone()).unwrap(),
            "/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_ring.ko\n\
             /lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko\n"
        );
        assert_eq!(
            seen["lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko"].1,
            b"ko1"
        );
        assert_eq!(seen["dev/console"].0, 0o020600);
        for dir in ["dev", "proc", "sys", "run", "tmp", "sysroot", "lib/modules"] {
            assert_eq!(seen[dir].0 & 0o170000, 0o040000, "{dir}");
        }
        assert!(seen.contains_key("etc/initrd-release"));
    }
}
