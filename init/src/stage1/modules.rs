//! Loading the kernel modules listed in `/etc/cairn/modules`: one absolute
//! `.ko` path per line, dependencies first (the image builder orders them by
//! `modules.dep`). Stage 1 and stage 2 each load their own list. A module
//! that is already loaded is fine; one that fails is logged and skipped, so
//! a missing optional driver never stops the boot.

use crate::sys::kmod::{self, Loaded};
use std::path::{Path, PathBuf};

/// The module list, in both the initramfs and the root filesystem.
pub const LIST: &str = "/etc/cairn/modules";

/// The module paths in a list: trimmed, blank lines and `#` comments skipped.
pub fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// Loads every module in the list at `list`. Returns how many were newly
/// loaded and how many failed.
pub fn load_list(list: &Path) -> (usize, usize) {
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(error) => {
            tracing::warn!(path = %list.display(), %error, "no module list");
            return (0, 0);
        }
    };
    let (mut loaded, mut failed) = (0, 0);
    for module in parse_list(&text) {
        match kmod::load(&module) {
            Ok(Loaded::New) => loaded += 1,
            Ok(Loaded::Already) => {}
            Err(error) => {
                failed += 1;
                tracing::warn!(%error, "module not loaded");
            }
        }
    }
    tracing::info!(loaded, failed, "modules loaded");
    (loaded, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_skips_blanks_and_comments() {
        let text = "# deps first\n/lib/modules/6.1/kernel/virtio.ko\n\n  /lib/modules/6.1/kernel/virtio_blk.ko  \n";
        assert_eq!(
            parse_list(text),
            vec![
                PathBuf::from("/lib/modules/6.1/kernel/virtio.ko"),
                PathBuf::from("/lib/modules/6.1/kernel/virtio_blk.ko")
            ]
        );
    }
}
