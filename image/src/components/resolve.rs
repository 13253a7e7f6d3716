//! Choosing what to lock: the root packages, then, by running the ELF
//! closure over a scratch extraction, every package that provides a library
//! they load, until the closure is complete.
//!
//! A missing library is looked for in the packages the binaries' packages
//! depend on (transitively, per apt), by listing each candidate `.deb`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::apt::{Apt, PackageInfo, run};
use super::lockfile::{Entry, sha256_file};
use super::{ComponentsError, elf_binaries, extract, io_err};
use crate::Arch;
use crate::elf::{self, ElfError};

/// Packages whose dependencies may provide the binaries' libraries.
const BINARY_PACKAGES: [&str; 6] = [
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "wpasupplicant",
    "busybox-static",
];

/// Resolves and downloads the current package set of `arch` under `dir`
/// (`<cache>/<arch>`), returning lock entries.
pub fn resolve(arch: Arch, dir: &Path) -> Result<Vec<Entry>, ComponentsError> {
    let apt = Apt::setup(arch, &dir.join("apt"))?;
    apt.update()?;
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;

    let kernel_meta = format!("linux-image-{}", arch.debian());
    let meta = candidate(&apt, &kernel_meta)?;
    // The metapackage depends on the versioned image, e.g. linux-image-6.1.0-56-amd64.
    let kernel = meta
        .depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d.ends_with(arch.debian()))
        .ok_or_else(|| ComponentsError::NotAvailable {
            package: format!("versioned kernel of {kernel_meta}"),
            version: meta.version.clone(),
        })?
        .to_string();
    let grub = format!("grub-efi-{}-bin", arch.debian());
    let mut roots: Vec<String> = vec![kernel, grub];
    roots.extend(BINARY_PACKAGES.iter().map(|s| s.to_string()));

    let mut chosen: BTreeMap<String, (PackageInfo, PathBuf)> = BTreeMap::new();
    let scratch = dir.join("lock-tree");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
    for name in &roots {
        let (info, path) = download(&apt, &debs, name)?;
        extract::unpack(&path, &scratch)?;
        chosen.insert(name.clone(), (info, path));
    }
    let candidates = apt.depends_closure(&BINARY_PACKAGES)?;
    let binaries = elf_binaries(arch);
    loop {
        let (library, needed_by) = match elf::closure(&scratch, arch, &binaries) {
            Ok(_) => break,
            Err(ElfError::MissingLibrary { library, needed_by }) => (library, needed_by),
            Err(e) => return Err(e.into()),
        };
        let base = Path::new(&library)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or(library.clone());
        tracing::info!(library, needed_by = %needed_by.display(), "looking for the package providing a library");
        let mut provider = None;
        for name in candidates.iter().filter(|c| !chosen.contains_key(*c)) {
            let (info, path) = download(&apt, &debs, name)?;
            if provides(&path, &base)? {
                provider = Some((name.clone(), info, path));
                break;
            }
            let _ = fs::remove_file(&path);
        }
        let Some((name, info, path)) = provider else {
            return Err(ComponentsError::Unprovided { library, needed_by });
        };
        tracing::info!(package = name, library, "library provider found");
        extract::unpack(&path, &scratch)?;
        chosen.insert(name, (info, path));
    }
    let _ = fs::remove_dir_all(&scratch);
    chosen
        .into_values()
        .map(|(info, path)| {
            Ok(Entry {
                filename: info.deb_filename(),
                sha256: sha256_file(&path)?,
                name: info.name,
                version: info.version,
            })
        })
        .collect()
}

fn candidate(apt: &Apt, name: &str) -> Result<PackageInfo, ComponentsError> {
    apt.show(name, None)?
        .ok_or_else(|| ComponentsError::NotAvailable {
            package: name.to_string(),
            version: "candidate".to_string(),
        })
}

/// Downloads the candidate version of `name` (unless present and matching
/// the archive's checksum).
fn download(apt: &Apt, debs: &Path, name: &str) -> Result<(PackageInfo, PathBuf), ComponentsError> {
    let info = candidate(apt, name)?;
    let path = debs.join(info.deb_filename());
    if !path.exists() || sha256_file(&path)? != info.sha256 {
        apt.download(debs, &info.name, &info.version)?;
    }
    let actual = sha256_file(&path)?;
    if actual != info.sha256 {
        return Err(ComponentsError::Checksum {
            package: info.name.clone(),
            version: info.version.clone(),
            path,
            expected: info.sha256.clone(),
            actual,
        });
    }
    Ok((info, path))
}

/// Whether the `.deb` at `path` contains a file or symlink named `base`.
fn provides(path: &Path, base: &str) -> Result<bool, ComponentsError> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(path))?;
    let suffix = format!("/{base}");
    Ok(listing.lines().any(|line| {
        let entry = line.split(" -> ").next().unwrap_or(line);
        entry.ends_with(&suffix)
    }))
}
