//! Marking the booted slot good: once the system is healthy, the slot's
//! `<slot>_OK=1` and `<slot>_TRY=0` are written to `grubenv` on the ESP, so
//! GRUB keeps booting it. The 1024-byte block is rewritten in place (same
//! file, same size, fsync), as GRUB's own `save_env` does, so a power cut
//! leaves either the old or the new block.

use crate::stage1::partitions::Partition;
use crate::sys::mount::{self, Mount};
use anyhow::{Context, Result};
use cairn_image::Slot;
use cairn_image::grubenv::{self, GrubEnv};
use cairn_image::layout;
use cairn_image::slot::BootState;
use nix::mount::MsFlags;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Where the ESP is mounted while grubenv is updated.
pub const ESP_MOUNT: &str = "/run/cairn/esp";

/// The block with `slot` marked good, or `None` if it already is.
pub fn marked_good(block: &[u8], slot: Slot) -> Result<Option<Vec<u8>>> {
    let mut env = GrubEnv::parse(block).context("parsing grubenv")?;
    let mut state = BootState::from_env(&env).context("reading the boot state")?;
    let before = state.clone();
    state.mark_good(slot);
    if state == before {
        return Ok(None);
    }
    state.write_to(&mut env).context("updating grubenv")?;
    Ok(Some(env.to_bytes().context("encoding grubenv")?))
}

/// Updates the grubenv file at `path` in place. Returns whether it changed.
pub fn mark_good_file(path: &Path, slot: Slot) -> Result<bool> {
    let block = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(new) = marked_good(&block, slot)? else {
        return Ok(false);
    };
    debug_assert_eq!(new.len(), grubenv::SIZE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&new))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Mounts the ESP, marks `slot` good, unmounts.
pub fn mark_good(esp: &Partition, slot: Slot) -> Result<bool> {
    let m = Mount::new(
        &esp.dev.to_string_lossy(),
        ESP_MOUNT,
        "vfat",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    );
    mount::mount(&m)?;
    let result = mark_good_file(&Path::new(ESP_MOUNT).join(layout::ESP_GRUBENV), slot);
    nix::unistd::sync();
    if let Err(error) = mount::unmount(Path::new(ESP_MOUNT), false) {
        tracing::warn!(%error, "ESP still mounted");
        let _ = mount::unmount(Path::new(ESP_MOUNT), true);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(tries: u8) -> Vec<u8> {
        let mut state = BootState::factory();
        state.a.tries = tries;
        let mut env = GrubEnv::new();
        state.write_to(&mut env).expect("write");
        env.to_bytes().expect("bytes")
    }

    #[test]
    fn marks_the_booted_slot_and_keeps_the_size() {
        let new = marked_good(&block(1), Slot::A)
            .expect("mark")
            .expect("changed");
        assert_eq!(new.len(), grubenv::SIZE);
        let state = BootState::from_env(&GrubEnv::parse(&new).expect("parse")).expect("state");
        assert!(state.a.ok);
        assert_eq!(state.a.tries, 0);
        assert!(!state.b.ok);
        assert_eq!(marked_good(&block(0), Slot::A).expect("mark"), None);
        assert!(marked_good(&[0u8; 10], Slot::A).is_err());
    }

    #[test]
    fn file_is_rewritten_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grubenv");
        std::fs::write(&path, block(2)).expect("write");
        assert!(mark_good_file(&path, Slot::A).expect("mark"));
        assert!(!mark_good_file(&path, Slot::A).expect("again"));
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            grubenv::SIZE as u64
        );
    }
}
