//! `cairn-image build`: one disk image from the components, the device
//! binaries and an optional `config.toml`, without root, loop devices or
//! mounts.
//!
//! Steps, each writing into a work directory next to the output
//! (`out/<arch>/work/`): validate the config; prepare the components;
//! initramfs; root tree → squashfs; GRUB EFI binary; empty ext4; then the
//! image itself — a sparse file with its GPT, the ESP and config FAT32
//! filesystems written in place, squashfs and ext4 copied in skipping zero
//! blocks. The image is written under a temporary name and renamed at the
//! end, so a failed build never leaves a half-written `cairn.img`.

use crate::arch::Arch;
use crate::components::{self, ComponentsError};
use crate::config::{self, Config};
use crate::disk::{self, DiskError, fat};
use crate::grub::{self, GrubError};
use crate::grubenv::GrubEnv;
use crate::initramfs::{self, InitramfsError};
use crate::layout::{self, Sizes};
use crate::rootfs::{self, RootfsError};
use crate::slot::{BootState, Slot};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{what} not found at {path} (build it first, or pass its path)")]
    MissingInput { what: &'static str, path: PathBuf },
    #[error(
        "the ESP ({esp} bytes) cannot hold two slots of kernel + initramfs ({need} bytes each)"
    )]
    EspTooSmall { esp: u64, need: u64 },
    #[error(transparent)]
    Components(#[from] ComponentsError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Grub(#[from] GrubError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("factory grubenv: {0}")]
    GrubEnv(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { path, source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub arch: Arch,
    /// The user's `config.toml`; the schema's default text if `None`.
    pub config: Option<PathBuf>,
    pub version: String,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub init: PathBuf,
    pub cairn: PathBuf,
    /// The pod sandbox program (`cairn-pause`).
    pub pause: PathBuf,
    pub sizes: Sizes,
}

/// What was built: the image and the bytes each part takes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    pub image: PathBuf,
    pub image_size: u64,
    pub partitions: Vec<disk::Partition>,
    pub kernel: u64,
    pub initramfs: u64,
    pub rootfs: u64,
    pub grub_efi: u64,
}

/// Reads and validates the config text, or the default.
fn config_text(path: Option<&Path>) -> Result<String, BuildError> {
    let Some(path) = path else {
        return Ok(config::DEFAULT_TOML.to_string());
    };
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Config::parse(&text, &path.display().to_string())?;
    Ok(text)
}

fn size_of(path: &Path) -> Result<u64, BuildError> {
    Ok(fs::metadata(path).map_err(io_err(path))?.len())
}

/// Builds the image described by `opts`.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let config = config_text(opts.config.as_deref())?;
    for (what, path) in [
        ("cairn-init", &opts.init),
        ("cairn", &opts.cairn),
        ("cairn-pause", &opts.pause),
    ] {
        if !path.is_file() {
            return Err(BuildError::MissingInput {
                what,
                path: path.clone(),
            });
        }
    }
    let out_dir = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = out_dir.join("work");
    fs::create_dir_all(&work).map_err(io_err(&work))?;

    let comps = components::prepare(opts.arch, &opts.cache)?;
    tracing::info!(kernel = %comps.kernel_version, tree = %comps.tree.display(), "components ready");

    // Stage 1.
    let modules_dir = comps.modules_dir();
    let stage1 = rootfs::resolve_modules(
        &modules_dir,
        &initramfs::stage1_modules(opts.arch),
        "stage 1",
    )?;
    let initrd = work.join("initrd.img");
    let initramfs_size = initramfs::build(
        &initramfs::Stage1 {
            init: &opts.init,
            kernel_version: &comps.kernel_version,
            modules_dir: &modules_dir,
            modules: &stage1.ordered,
        },
        &initrd,
    )?;
    let kernel_size = size_of(&comps.vmlinuz)?;
    let slot_boot = kernel_size + initramfs_size;
    if 2 * slot_boot + (4 << 20) > opts.sizes.esp {
        return Err(BuildError::EspTooSmall {
            esp: opts.sizes.esp,
            need: slot_boot,
        });
    }

    // Root filesystem.
    let root = work.join("rootfs");
    rootfs::stage(
        &rootfs::RootSpec {
            components: &comps,
            version: &opts.version,
            init: &opts.init,
            cairn: &opts.cairn,
            pause: &opts.pause,
        },
        &root,
    )?;
    let squashfs = work.join("root.squashfs");
    let rootfs_size = rootfs::pack(&root, &squashfs, opts.sizes.root)?;

    // Boot loader.
    let efi = work.join(
        Path::new(opts.arch.efi_boot_file())
            .file_name()
            .unwrap_or_default(),
    );
    grub::build_efi(opts.arch, &comps.grub_modules, &work, &efi)?;
    let grub_size = size_of(&efi)?;

    // Data.
    let data = work.join("data.ext4");
    if data.exists() {
        fs::remove_file(&data).map_err(io_err(&data))?;
    }
    disk::tools::mkfs_ext4(&data, opts.sizes.data)?;

    // The image.
    let tmp = opts.out.with_extension("img.partial");
    let parts = disk::gpt::plan(&opts.sizes);
    let total = disk::gpt::disk_size(&opts.sizes);
    let mut image = disk::create_image(&tmp, total)?;
    disk::gpt::write_table(&mut image, &parts)?;
    let part = |name: &str| disk::gpt::find(&parts, name);

    let mut env = GrubEnv::new();
    BootState::factory()
        .write_to(&mut env)
        .map_err(|e| BuildError::GrubEnv(e.to_string()))?;
    let env = env
        .to_bytes()
        .map_err(|e| BuildError::GrubEnv(e.to_string()))?;
    let a = Slot::A;
    let esp_entries = [
        fat::Entry::Dir("EFI".into()),
        fat::Entry::Dir("EFI/BOOT".into()),
        fat::Entry::Copy(opts.arch.efi_boot_file().into(), efi.clone()),
        fat::Entry::Bytes(layout::ESP_GRUBENV.into(), env),
        fat::Entry::Dir("cairn".into()),
        fat::Entry::Dir(format!("cairn/{}", a.name())),
        fat::Entry::Copy(layout::esp_kernel(a), comps.vmlinuz.clone()),
        fat::Entry::Copy(layout::esp_initrd(a), initrd.clone()),
    ];
    fat::build(
        &image,
        part(layout::PART_ESP)?,
        layout::ESP_LABEL,
        &esp_entries,
    )?;
    let config_entries = [
        fat::Entry::Bytes(layout::CONFIG_FILE.into(), config.into_bytes()),
        fat::Entry::Dir("manifests".into()),
        fat::Entry::Dir("images".into()),
    ];
    fat::build(
        &image,
        part(layout::PART_CONFIG)?,
        layout::CONFIG_LABEL,
        &config_entries,
    )?;
    disk::copy_sparse(&mut image, part(a.partition_name())?, &squashfs)?;
    disk::copy_sparse(&mut image, part(layout::PART_DATA)?, &data)?;
    image.sync_all().map_err(io_err(&tmp))?;
    drop(image);
    fs::rename(&tmp, &opts.out).map_err(io_err(&opts.out))?;

    let report = BuildReport {
        image: opts.out.clone(),
        image_size: total,
        partitions: parts,
        kernel: kernel_size,
        initramfs: initramfs_size,
        rootfs: rootfs_size,
        grub_efi: grub_size,
    };
    tracing::info!(
        image = %opts.out.display(),
        size = total,
        kernel = kernel_size,
        initramfs = initramfs_size,
        rootfs = rootfs_size,
        grub = grub_size,
        "image written"
    );
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;

    #[test]
    fn invalid_config_is_refused_with_its_location() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "version = 1\n[host]\nhostnme = \"x\"\n").unwrap();
        let err = config_text(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains("hostnme"), "{err}");
        assert_eq!(config_text(None).unwrap(), config::DEFAULT_TOML);
    }
}
