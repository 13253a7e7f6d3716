//! Kernel modules: which `.ko` files a Cairn image needs, in load order.
//!
//! The initramfs and the root filesystem each carry only the modules their
//! stage loads, listed deps-first in `/etc/cairn/modules` (cairn-init has no
//! modprobe). [`resolve`] turns a list of module names into that ordered list
//! using the kernel's `modules.dep` and `modules.builtin`.
//!
//! Debian's kernel packages do not ship `modules.dep` (their postinst runs
//! `depmod`, and a fresh host may not even have kmod), so [`write_modules_dep`]
//! builds it from the `depends=` field in each module's `.modinfo` section —
//! the list modpost computed at kernel build time, the same set depmod
//! derives from symbols. It reads foreign-arch modules, so it works for arm64
//! on an x86_64 host.
//!
//! Current limitations: compressed modules (`.ko.xz`, `.ko.zst`) are reported
//! as an error; Debian 12's kernels ship them uncompressed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors reading or generating a kernel's module metadata.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: malformed modules.dep line")]
    Malformed { path: PathBuf, line: usize },
    #[error("module dependency cycle through {0}")]
    Cycle(String),
    #[error("{path}: not a readable kernel module: {reason}")]
    BadModule { path: PathBuf, reason: String },
    #[error("module {module} depends on {dependency}, which is not a module file")]
    UnknownDependency { module: String, dependency: String },
    #[error("{0}: compressed modules are not supported")]
    Compressed(PathBuf),
}

/// The modules to install for a list of wanted names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleSet {
    /// Module files relative to the modules dir, every dependency before its users.
    pub ordered: Vec<PathBuf>,
    /// Wanted names built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Wanted names neither present as a module nor built in.
    pub missing: Vec<String>,
}

/// The name the kernel knows a module by: file stem with `-` folded to `_`.
pub fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModulesError + '_ {
    move |source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parsed `modules.dep`: module name -> (relative path, dependency names).
struct DepMap {
    modules: HashMap<String, (PathBuf, Vec<String>)>,
}

impl DepMap {
    fn parse(path: &Path, text: &str) -> Result<DepMap, ModulesError> {
        let mut modules = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (module, deps) = line.split_once(':').ok_or(ModulesError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
            })?;
            let mut names = Vec::new();
            for dep in deps.split_whitespace() {
                let name = module_name(dep);
                // A dependency listed only on the right-hand side still has a path.
                modules
                    .entry(name.clone())
                    .or_insert_with(|| (PathBuf::from(dep), Vec::new()));
                names.push(name);
            }
            modules.insert(module_name(module), (PathBuf::from(module.trim()), names));
        }
        Ok(DepMap { modules })
    }

    /// Appends `name` and its dependencies to `out`, dependencies first.
    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        active: &mut Vec<String>,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) {
            return Ok(());
        }
        if active.iter().any(|a| a == name) {
            return Err(ModulesError::Cycle(name.to_string()));
        }
        let Some((path, deps)) = self.modules.get(name) else {
            return Ok(());
        };
        active.push(name.to_string());
        // depmod lists the dependency to load first last.
        for dep in deps.iter().rev() {
            self.visit(dep, done, active, out)?;
        }
        active.pop();
        done.insert(name.to_string());
        out.push(path.clone());
        Ok(())
    }
}

/// Resolves `wanted` module names (with `-` and `_` equivalent) against
/// `modules_dir` (`.../lib/modules/<kver>`).
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<ModuleSet, ModulesError> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = fs::read_to_string(&dep_path).map_err(io_err(&dep_path))?;
    let deps = DepMap::parse(&dep_path, &dep_text)?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin: BTreeSet<String> = match fs::read_to_string(&builtin_path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(io_err(&builtin_path)(e)),
    };

    let mut set = ModuleSet::default();
    let mut done = BTreeSet::new();
    for want in wanted {
        let name = module_name(want);
        if deps.modules.contains_key(&name) {
            deps.visit(&name, &mut done, &mut Vec::new(), &mut set.ordered)?;
        } else if builtin.contains(&name) {
            set.builtin.push((*want).to_string());
        } else {
            set.missing.push((*want).to_string());
        }
    }
    Ok(set)
}

/// Collects every `*.ko` under `dir` as a path relative to `root`.
fn find_modules(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ModulesError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            find_modules(root, &path, out)?;
        } else if name.ends_with(".ko") {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push(rel);
        } else if name.contains(".ko.") {
            return Err(ModulesError::Compressed(path));
        }
    }
    Ok(())
}

/// The `depends=` names from a module's `.modinfo` section.
fn modinfo_depends(path: &Path, bytes: &[u8]) -> Result<Vec<String>, ModulesError> {
    let bad = |reason: String| ModulesError::BadModule {
        path: path.to_path_buf(),
        reason,
    };
    let header = goblin::elf::Elf::parse_header(bytes).map_err(|e| bad(e.to_string()))?;
    let ctx = goblin::container::Ctx::new(
        if header.e_ident[goblin::elf::header::EI_CLASS] == goblin::elf::header::ELFCLASS64 {
            goblin::container::Container::Big
        } else {
            goblin::container::Container::Little
        },
        if header.e_ident[goblin::elf::header::EI_DATA] == goblin::elf::header::ELFDATA2MSB {
            goblin::container::Endian::Big
        } else {
            goblin::container::Endian::Little
        },
    );
    let shdrs = goblin::elf::SectionHeader::parse(
        bytes,
        header.e_shoff as usize,
        header.e_shnum as usize,
        ctx,
    )
    .map_err(|e| bad(e.to_string()))?;
    let strtab = shdrs
        .get(header.e_shstrndx as usize)
        .ok_or_else(|| bad("no section name table".into()))?;
    let names = section_bytes(bytes, strtab.sh_offset, strtab.sh_size)
        .ok_or_else(|| bad("section name table out of bounds".into()))?;
    for sh in &shdrs {
        let name = names
            .get(sh.sh_name..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = section_bytes(bytes, sh.sh_offset, sh.sh_size)
            .ok_or_else(|| bad(".modinfo out of bounds".into()))?;
        for field in data.split(|b| *b == 0) {
            if let Some(list) = field.strip_prefix(b"depends=") {
                let list = String::from_utf8_lossy(list);
                return Ok(list
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(module_name)
                    .collect());
            }
        }
        return Ok(Vec::new());
    }
    Err(bad("no .modinfo section".into()))
}

fn section_bytes(bytes: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    bytes.get(start..end)
}

/// Writes `modules.dep` for `modules_dir` from each module's `.modinfo`, in
/// depmod's format (each line lists the full transitive dependency list, the
/// one to load first last).
pub fn write_modules_dep(modules_dir: &Path) -> Result<(), ModulesError> {
    let mut files = Vec::new();
    find_modules(modules_dir, modules_dir, &mut files)?;
    files.sort();
    let by_name: HashMap<String, &PathBuf> = files
        .iter()
        .map(|f| (module_name(&f.to_string_lossy()), f))
        .collect();
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let path = modules_dir.join(file);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let deps = modinfo_depends(&path, &bytes)?;
        let name = module_name(&file.to_string_lossy());
        for dep in &deps {
            if !by_name.contains_key(dep) {
                return Err(ModulesError::UnknownDependency {
                    module: name.clone(),
                    dependency: dep.clone(),
                });
            }
        }
        direct.insert(name, deps);
    }
    let map = DepMap {
        modules: direct
            .iter()
            .map(|(name, deps)| (name.clone(), ((*by_name[name]).clone(), deps.clone())))
            .collect(),
    };
    let mut text = String::new();
    for file in &files {
        let name = module_name(&file.to_string_lossy());
        let mut order = Vec::new();
        map.visit(&name, &mut BTreeSet::new(), &mut Vec::new(), &mut order)?;
        order.pop(); // the module itself comes last in deps-first order
        text.push_str(&file.to_string_lossy());
        text.push(':');
        for dep in order.iter().rev() {
            text.push(' ');
            text.push_str(&dep.to_string_lossy());
        }
        text.push('\n');
    }
    let out = modules_dir.join("modules.dep");
    fs::write(&out, text).map_err(io_err(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let dep = "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
";
        fs::write(dir.path().join("modules.dep"), dep).expect("write dep");
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .expect("write builtin");
        dir
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = synthetic();
        let set = resolve(dir.path(), &["virtio_pci", "virtio_blk"]).expect("resolve");
        let names: Vec<String> = set
            .ordered
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        assert!(set.builtin.is_empty() && set.missing.is_empty());
    }

    #[test]
    fn builtin_missing_and_dash_underscore() {
        let dir = synthetic();
        let set = resolve(dir.path(), &["nvme", "ext4", "squashfs", "nvme_core"]).expect("resolve");
        assert_eq!(
            set.ordered,
            [
                PathBuf::from("kernel/drivers/nvme/host/nvme-core.ko"),
                PathBuf::from("kernel/drivers/nvme/host/nvme.ko"),
            ]
        );
        assert_eq!(set.builtin, ["ext4"]);
        assert_eq!(set.missing, ["squashfs"]);
        let set = resolve(dir.path(), &["virtio-pci-modern-dev"]).expect("resolve");
        assert_eq!(set.ordered.len(), 1);
    }

    #[test]
    fn malformed_and_cycle_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("modules.dep"), "a.ko: b.ko\nb.ko: a.ko\n").expect("write");
        assert!(matches!(
            resolve(dir.path(), &["a"]),
            Err(ModulesError::Cycle(_))
        ));
        fs::write(dir.path().join("modules.dep"), "no colon here\n").expect("write");
        assert!(matches!(
            resolve(dir.path(), &["a"]),
            Err(ModulesError::Malformed { line: 1, .. })
        ));
    }
}
