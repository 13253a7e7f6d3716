//! Shared-library closure of ELF binaries inside an extracted package tree.
//!
//! containerd, runc and the CNI plugins come from Debian packages and are
//! dynamically linked, so the root filesystem must carry every library they
//! load and the ELF interpreter. [`closure`] reads `PT_INTERP`, `DT_NEEDED`
//! and `DT_RPATH`/`DT_RUNPATH` with goblin (no `ldd`, no execution), so it
//! works for foreign-arch binaries, and searches the tree the way ld.so would
//! search the device's root. Symlinks are followed inside the tree: an
//! absolute target is relative to the tree root, never the host's `/`.
//!
//! Every output path has symlink-free parent directories: a symlink met on
//! the way (a directory such as `lib -> usr/lib` or a file such as
//! `lib64/ld-linux-x86-64.so.2`) is listed itself, followed by where it
//! leads, so copying each listed path (symlinks as symlinks) rebuilds working
//! chains in the target.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use goblin::elf::{Elf, header};

use crate::Arch;

/// Symlinks followed while resolving one path before giving up (Linux uses 40).
const MAX_LINKS: usize = 40;

/// Errors computing a library closure.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid ELF file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: ELF machine {found} is not {expected}")]
    WrongMachine {
        path: PathBuf,
        found: u16,
        expected: Arch,
    },
    #[error("{0}: no such file in the tree")]
    MissingInput(PathBuf),
    #[error("library {library} needed by {needed_by} not found in the tree")]
    MissingLibrary { library: String, needed_by: PathBuf },
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(PathBuf),
}

fn machine(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => header::EM_X86_64,
        Arch::Aarch64 => header::EM_AARCH64,
    }
}

/// A path resolved inside a tree.
#[derive(Debug, PartialEq, Eq)]
struct Resolved {
    /// The final, symlink-free path, relative to the tree.
    real: PathBuf,
    /// Every symlink met on the way, each with a symlink-free parent.
    links: Vec<PathBuf>,
}

/// Resolves `path` (relative to `tree`, or absolute meaning tree-rooted)
/// without leaving the tree. `Ok(None)` if it does not exist.
fn resolve_in_tree(tree: &Path, path: &Path) -> Result<Option<Resolved>, ElfError> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut real = PathBuf::new();
    let mut links = Vec::new();
    push_components(&mut pending, &mut real, path);
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            real.pop();
            continue;
        }
        let candidate = real.join(&name);
        let meta = match fs::symlink_metadata(tree.join(&candidate)) {
            Ok(meta) => meta,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(ElfError::Io {
                    path: tree.join(&candidate),
                    source,
                });
            }
        };
        if meta.file_type().is_symlink() {
            if links.len() >= MAX_LINKS {
                return Err(ElfError::SymlinkLoop(path.to_path_buf()));
            }
            let target = fs::read_link(tree.join(&candidate)).map_err(|source| ElfError::Io {
                path: tree.join(&candidate),
                source,
            })?;
            links.push(candidate);
            let mut front = VecDeque::new();
            push_components(&mut front, &mut real, &target);
            front.extend(pending);
            pending = front;
        } else {
            real = candidate;
        }
    }
    Ok(Some(Resolved { real, links }))
}

/// Queues the components of `path`; an absolute path restarts at the tree root.
fn push_components(queue: &mut VecDeque<OsString>, real: &mut PathBuf, path: &Path) {
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => real.clear(),
            Component::CurDir => {}
            Component::ParentDir => queue.push_back("..".into()),
            Component::Normal(n) => queue.push_back(n.to_os_string()),
        }
    }
}

/// Reads an ELF header and returns its machine, or `None` if not ELF.
fn elf_machine(path: &Path) -> Result<Option<u16>, ElfError> {
    let mut buf = [0u8; 64]; // the size of an ELF64 header
    let mut file = fs::File::open(path).map_err(|source| ElfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(source) => {
                return Err(ElfError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(Elf::parse_header(&buf[..len]).ok().map(|h| h.e_machine))
}

/// Library search directories for `obj` (tree-relative): its RPATH/RUNPATH,
/// then Debian's default paths for `arch`.
fn search_dirs(obj: &Path, elf: &Elf, arch: Arch) -> Vec<PathBuf> {
    let origin = Path::new("/").join(obj.parent().unwrap_or(Path::new("")));
    let origin = origin.to_string_lossy();
    // ld.so ignores DT_RPATH when DT_RUNPATH is present.
    let paths = if elf.runpaths.is_empty() {
        &elf.rpaths
    } else {
        &elf.runpaths
    };
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .flat_map(|p| p.split(':'))
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(p.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))
        .collect();
    let multiarch = arch.multiarch();
    for dir in [
        format!("lib/{multiarch}"),
        format!("usr/lib/{multiarch}"),
        "lib".to_string(),
        "usr/lib".to_string(),
        "lib64".to_string(),
        "usr/lib64".to_string(),
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// Returns every shared library and ELF interpreter that `files` need,
/// transitively, as sorted tree-relative paths (symlinks and their targets),
/// not including `files` themselves.
pub fn closure(tree: &Path, arch: Arch, files: &[PathBuf]) -> Result<Vec<PathBuf>, ElfError> {
    let want = machine(arch);
    let mut out = BTreeSet::new();
    let mut queue = Vec::new();
    for file in files {
        let found =
            resolve_in_tree(tree, file)?.ok_or_else(|| ElfError::MissingInput(file.clone()))?;
        queue.push(found.real);
    }
    let mut scanned = HashSet::new();
    while let Some(obj) = queue.pop() {
        if !scanned.insert(obj.clone()) {
            continue;
        }
        let full = tree.join(&obj);
        let bytes = fs::read(&full).map_err(|source| ElfError::Io {
            path: full.clone(),
            source,
        })?;
        let elf = Elf::parse(&bytes).map_err(|e| ElfError::Parse {
            path: obj.clone(),
            reason: e.to_string(),
        })?;
        if elf.header.e_machine != want {
            return Err(ElfError::WrongMachine {
                path: obj,
                found: elf.header.e_machine,
                expected: arch,
            });
        }
        let missing = |library: &str| ElfError::MissingLibrary {
            library: library.to_string(),
            needed_by: obj.clone(),
        };
        if let Some(interp) = elf.interpreter {
            let found = resolve_in_tree(tree, Path::new(interp))?.ok_or_else(|| missing(interp))?;
            out.extend(found.links);
            out.insert(found.real.clone());
            queue.push(found.real);
        }
        let dirs = search_dirs(&obj, &elf, arch);
        for lib in &elf.libraries {
            let found = if lib.contains('/') {
                resolve_in_tree(tree, Path::new(lib))?
            } else {
                let mut hit = None;
                for dir in &dirs {
                    if let Some(r) = resolve_in_tree(tree, &dir.join(lib))?
                        && elf_machine(&tree.join(&r.real))? == Some(want)
                    {
                        hit = Some(r);
                        break;
                    }
                }
                hit
            };
            let found = found.ok_or_else(|| missing(lib))?;
            out.extend(found.links);
            out.insert(found.real.clone());
            queue.push(found.real);
        }
    }
    for file in files {
        out.remove(file);
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn host_ls_needs_libc_and_interpreter() {
        let Some(arch) = Arch::host() else { return };
        let libs = closure(Path::new("/"), arch, &[PathBuf::from("usr/bin/ls")]).expect("closure");
        let names: Vec<String> = libs
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert!(names.iter().any(|n| n == "libc.so.6"), "{libs:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{libs:?}");
        assert!(!libs.contains(&PathBuf::from("usr/bin/ls")));
        assert!(libs.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }

    #[test]
    fn missing_library_names_library_and_binary() {
        let Some(arch) = Arch::host() else { return };
        let tree = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(tree.path().join("usr/bin")).expect("mkdir");
        fs::copy("/usr/bin/ls", tree.path().join("usr/bin/ls")).expect("copy ls");
        let err =
            closure(tree.path(), arch, &[PathBuf::from("usr/bin/ls")]).expect_err("must fail");
        let msg = err.to_string();
        assert!(matches!(err, ElfError::MissingLibrary { .. }), "{msg}");
        assert!(
            msg.contains("usr/bin/ls") && msg.contains("ld-linux"),
            "{msg}"
        );
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_tree() {
        let tree = tempfile::tempdir().expect("tempdir");
        let t = tree.path();
        fs::create_dir_all(t.join("usr/lib/x")).expect("mkdir");
        fs::create_dir_all(t.join("lib64")).expect("mkdir");
        fs::write(t.join("usr/lib/x/ld.so"), b"x").expect("write");
        symlink("usr/lib", t.join("lib")).expect("symlink");
        symlink("/lib/x/ld.so", t.join("lib64/ld.so")).expect("symlink");
        let r = resolve_in_tree(t, Path::new("/lib64/ld.so"))
            .expect("resolve")
            .expect("exists");
        assert_eq!(r.real, PathBuf::from("usr/lib/x/ld.so"));
        assert_eq!(
            r.links,
            [PathBuf::from("lib64/ld.so"), PathBuf::from("lib")]
        );
        assert_eq!(
            resolve_in_tree(t, Path::new("lib/nope")).expect("resolve"),
            None
        );
        symlink("loop", t.join("loop")).expect("symlink");
        assert!(matches!(
            resolve_in_tree(t, Path::new("loop")),
            Err(ElfError::SymlinkLoop(_))
        ));
    }
}
