//! Extracting the pinned packages into one tree, cached by the lock's digest.
//!
//! `dpkg-deb -x` unpacks each `.deb` (no root needed, no maintainer scripts
//! run). The one postinst effect an image needs, `modules.dep`, is generated
//! by [`crate::modules::write_modules_dep`]. The tree is built next to its
//! final place and renamed in, with a stamp file recording the lock digest,
//! so an interrupted run never leaves a half tree that looks complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::apt::run;
use super::{ComponentsError, io_err};

/// The stamp next to the tree: `<tree>.stamp` holds the lock digest.
fn stamp_path(tree: &Path) -> PathBuf {
    let mut name = tree.file_name().unwrap_or_default().to_os_string();
    name.push(".stamp");
    tree.with_file_name(name)
}

/// Unpacks one `.deb` into `dir`.
pub fn unpack(deb: &Path, dir: &Path) -> Result<(), ComponentsError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    Ok(())
}

/// Makes `tree` hold exactly `debs` extracted, unless its stamp already
/// records `digest`.
pub fn extract(tree: &Path, debs: &[PathBuf], digest: &str) -> Result<(), ComponentsError> {
    let stamp = stamp_path(tree);
    if tree.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
        tracing::debug!(tree = %tree.display(), "extracted tree is current");
        return Ok(());
    }
    tracing::info!(tree = %tree.display(), packages = debs.len(), "extracting packages");
    let mut tmp = tree.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    remove_dir(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    for deb in debs {
        unpack(deb, &tmp)?;
    }
    let modules = tmp.join("lib/modules");
    if modules.is_dir() {
        for entry in fs::read_dir(&modules).map_err(io_err(&modules))? {
            let dir = entry.map_err(io_err(&modules))?.path();
            if dir.is_dir() {
                crate::modules::write_modules_dep(&dir)?;
            }
        }
    }
    let _ = fs::remove_file(&stamp);
    remove_dir(tree)?;
    fs::rename(&tmp, tree).map_err(io_err(tree))?;
    fs::write(&stamp, format!("{digest}\n")).map_err(io_err(&stamp))?;
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), ComponentsError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_sits_next_to_the_tree() {
        assert_eq!(
            stamp_path(Path::new("/c/x86_64/tree")),
            PathBuf::from("/c/x86_64/tree.stamp")
        );
    }
}
