//! Prebuilt components: the Debian 12 packages an image is assembled from.
//!
//! The kernel (with its modules), containerd, runc, the CNI plugins,
//! iptables, wpa_supplicant, GRUB's EFI modules and the shared libraries those binaries load come from
//! Debian 12 packages pinned in `image/components.lock` (see [`lockfile`]).
//! [`fetch`] downloads them once into a cache through a private apt setup
//! ([`apt`]) and checks each against its SHA-256; [`prepare`] also extracts
//! them into one tree ([`extract`]) that the image builder copies from.
//! [`lock`] is the maintainer's step that pins the current versions.
//!
//! Cache layout, per architecture: `<cache>/<arch>/apt/` (private apt state),
//! `<cache>/<arch>/debs/` (the `.deb` files), `<cache>/<arch>/tree/` (all of
//! them extracted, with a generated `modules.dep`).
//!
//! Kernel flavour: Debian's generic `amd64`/`arm64` kernels. The cloud
//! flavours lack what a Cairn image needs: `cloud-amd64` has no AHCI,
//! USB storage or MMC drivers (real boards), `cloud-arm64` has no
//! `gpio_keys` (QEMU virt's power button).

pub mod apt;
pub mod extract;
pub mod lockfile;
mod resolve;

use std::io;
use std::path::{Path, PathBuf};

use crate::Arch;
use crate::elf::ElfError;
use crate::modules::ModulesError;
pub use lockfile::{Entry, Lock};

/// The lock file, relative to the repository root.
pub const LOCK_FILE: &str = "image/components.lock";

/// The lock file's text as compiled in, so the tool works from any directory.
pub const LOCK_TEXT: &str = include_str!("../../components.lock");

/// Bumped when extraction output changes, so cached trees are rebuilt.
const TREE_FORMAT: &str = "cairn-tree-v1";

/// The ELF binaries a Cairn root filesystem takes from the tree
/// (tree-relative), besides iptables and wpa_supplicant (see [`elf_binaries`]).
pub const ELF_BINARIES: [&str; 7] = [
    "usr/bin/containerd",
    "usr/bin/containerd-shim-runc-v2",
    "usr/sbin/runc",
    "usr/lib/cni/bridge",
    "usr/lib/cni/host-local",
    "usr/lib/cni/loopback",
    "usr/lib/cni/portmap",
];

/// Every ELF file the root filesystem of `arch` takes from the tree:
/// [`ELF_BINARIES`], iptables and its extensions ([`crate::iptables`]),
/// wpa_supplicant ([`crate::wifi`]), busybox ([`crate::shell`]).
/// Their library closure must be locked too.
pub fn elf_binaries(arch: Arch) -> Vec<PathBuf> {
    ELF_BINARIES
        .iter()
        .map(PathBuf::from)
        .chain(crate::iptables::elf_files(arch))
        .chain(crate::wifi::elf_files())
        .chain(crate::shell::elf_files())
        .collect()
}

/// Errors fetching, verifying or extracting components.
#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("running {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("components lock: {0}")]
    LockParse(String),
    #[error("no components locked for {0}: run `cairn-image components lock --arch {0}`")]
    NotLocked(Arch),
    #[error("package {package} {version}: not in the archive (even after apt-get update)")]
    NotAvailable { package: String, version: String },
    #[error(
        "package {package} {version}: checksum mismatch for {path}: expected sha256 {expected}, got {actual}"
    )]
    Checksum {
        package: String,
        version: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("kernel in {tree}: {reason}")]
    Kernel { tree: PathBuf, reason: String },
    #[error("no package provides {library} (needed by {needed_by})")]
    Unprovided { library: String, needed_by: PathBuf },
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ComponentsError + '_ {
    move |source| ComponentsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Extracted components of one architecture, ready to copy into an image.
#[derive(Debug, Clone)]
pub struct Components {
    pub arch: Arch,
    /// e.g. `6.1.0-56-amd64`; the modules live in `tree/lib/modules/<kernel_version>`.
    pub kernel_version: String,
    /// Absolute path of the kernel image (`tree/boot/vmlinuz-<kernel_version>`).
    pub vmlinuz: PathBuf,
    /// Absolute path of the directory all packages are extracted into.
    pub tree: PathBuf,
    /// `tree/usr/lib/grub/<x86_64-efi|arm64-efi>` (for `grub-mkstandalone -d`).
    pub grub_modules: PathBuf,
}

impl Components {
    /// `tree/lib/modules/<kernel_version>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.tree.join("lib/modules").join(&self.kernel_version)
    }
}

fn arch_dir(arch: Arch, cache: &Path) -> Result<PathBuf, ComponentsError> {
    let dir = std::path::absolute(cache)
        .map_err(io_err(cache))?
        .join(arch.name());
    Ok(dir)
}

/// Downloads (if needed) and verifies the pinned `.deb` files of `arch`,
/// per the compiled-in lock. Returns their paths.
pub fn fetch(arch: Arch, cache: &Path) -> Result<Vec<PathBuf>, ComponentsError> {
    fetch_locked(&Lock::embedded()?, arch, cache)
}

/// [`fetch`] against a given lock.
pub fn fetch_locked(
    lock: &Lock,
    arch: Arch,
    cache: &Path,
) -> Result<Vec<PathBuf>, ComponentsError> {
    let entries = lock.entries(arch);
    if entries.is_empty() {
        return Err(ComponentsError::NotLocked(arch));
    }
    let dir = arch_dir(arch, cache)?;
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let mut apt: Option<apt::Apt> = None;
    let mut updated = false;
    let mut paths = Vec::new();
    for entry in entries {
        let path = debs.join(&entry.filename);
        if path.exists() {
            if lockfile::verify(entry, &path).is_ok() {
                paths.push(path);
                continue;
            }
            tracing::warn!(package = %entry.name, path = %path.display(), "cached file does not match its pin; downloading again");
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let apt = match &mut apt {
            Some(apt) => apt,
            None => apt.insert(apt::Apt::setup(arch, &dir.join("apt"))?),
        };
        if !updated && (!apt.has_lists() || apt.show(&entry.name, Some(&entry.version))?.is_none())
        {
            apt.update()?;
            updated = true;
        }
        if apt.show(&entry.name, Some(&entry.version))?.is_none() {
            return Err(ComponentsError::NotAvailable {
                package: entry.name.clone(),
                version: entry.version.clone(),
            });
        }
        apt.download(&debs, &entry.name, &entry.version)?;
        lockfile::verify(entry, &path)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Fetches, verifies and extracts the components of `arch` (each step cached).
pub fn prepare(arch: Arch, cache: &Path) -> Result<Components, ComponentsError> {
    prepare_locked(&Lock::embedded()?, arch, cache)
}

/// [`prepare`] against a given lock.
pub fn prepare_locked(
    lock: &Lock,
    arch: Arch,
    cache: &Path,
) -> Result<Components, ComponentsError> {
    let debs = fetch_locked(lock, arch, cache)?;
    let tree = arch_dir(arch, cache)?.join("tree");
    extract::extract(&tree, &debs, &lock.digest(arch))?;
    components_in(arch, &tree)
}

/// Describes an extracted tree: finds its one kernel and GRUB's modules.
pub fn components_in(arch: Arch, tree: &Path) -> Result<Components, ComponentsError> {
    let kernel_err = |reason: String| ComponentsError::Kernel {
        tree: tree.to_path_buf(),
        reason,
    };
    let boot = tree.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    versions.sort();
    let kernel_version = match versions.as_slice() {
        [one] => one.clone(),
        [] => return Err(kernel_err("no boot/vmlinuz-*".into())),
        many => return Err(kernel_err(format!("several kernels: {many:?}"))),
    };
    let components = Components {
        arch,
        vmlinuz: boot.join(format!("vmlinuz-{kernel_version}")),
        grub_modules: tree.join("usr/lib/grub").join(arch.grub_platform()),
        tree: tree.to_path_buf(),
        kernel_version,
    };
    if !components.modules_dir().join("modules.dep").is_file() {
        return Err(kernel_err(format!(
            "{} has no modules.dep",
            components.modules_dir().display()
        )));
    }
    if !components.grub_modules.is_dir() {
        return Err(kernel_err(format!(
            "no GRUB modules at {}",
            components.grub_modules.display()
        )));
    }
    Ok(components)
}

/// Maintainer step: resolves the current versions of the packages `arch`
/// needs (iterating the ELF closure until every library is provided) and
/// rewrites that architecture's entries in `lock_file`.
pub fn lock(arch: Arch, cache: &Path, lock_file: &Path) -> Result<(), ComponentsError> {
    let entries = resolve::resolve(arch, &arch_dir(arch, cache)?)?;
    let mut lock = Lock::load(lock_file)?;
    lock.set_entries(arch, entries);
    let text = lock.to_text()?;
    std::fs::write(lock_file, text).map_err(io_err(lock_file))?;
    tracing::info!(arch = %arch, lock_file = %lock_file.display(), "lock written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Downloads (unless cached) and extracts the real components, then checks
    /// the binaries' closure and the stage-1 modules. Needs the network on
    /// the first run: `cargo test -p cairn-image -- --ignored real_components`.
    #[test]
    #[ignore]
    fn real_components_close() {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/components");
        for arch in Arch::ALL {
            let c = prepare(arch, &cache).expect("prepare");
            assert!(c.vmlinuz.is_file() && c.grub_modules.is_dir());
            let libs = crate::elf::closure(&c.tree, arch, &elf_binaries(arch)).expect("closure");
            assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
            let set = crate::modules::resolve(&c.modules_dir(), &["virtio_blk", "squashfs"])
                .expect("modules");
            assert!(set.missing.is_empty(), "{set:?}");
            let wanted: Vec<&str> = crate::wifi::MODULES
                .iter()
                .chain(&crate::wifi::TEST_MODULES)
                .copied()
                .collect();
            let wifi = crate::modules::resolve(&c.modules_dir(), &wanted).expect("wifi modules");
            assert!(
                wifi.missing.is_empty() && wifi.builtin.is_empty(),
                "{wifi:?}"
            );
        }
    }
}
