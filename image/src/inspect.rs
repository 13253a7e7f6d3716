//! Looking into a built image file without mounting it: its partitions
//! (GPT, read-only), files on its FAT partitions, and the ESP's `grubenv`,
//! read and rewritten in place (the same 1024 bytes in the same clusters,
//! as GRUB's `save_env` does). The tests use this to check, after a QEMU
//! boot, that the booted slot was marked good.

use crate::disk::{self, DiskError, Partition, fat};
use crate::grubenv::{GrubEnv, GrubEnvError};
use crate::layout;
use crate::slot::{BootState, SlotError};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("open image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    GrubEnv(#[from] GrubEnvError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("{0:?} is not NAME=VALUE")]
    BadAssignment(String),
}

/// An image file and its partition table.
#[derive(Debug)]
pub struct Image {
    file: File,
    parts: Vec<Partition>,
}

impl Image {
    /// Opens `path` for reading, and for writing if `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<Self, InspectError> {
        let file = File::options()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| InspectError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let parts = disk::gpt::read_table(path)?;
        Ok(Image { file, parts })
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.parts
    }

    pub fn partition(&self, name: &str) -> Result<&Partition, InspectError> {
        Ok(disk::gpt::find(&self.parts, name)?)
    }

    /// Reads a file from the FAT filesystem on partition `part`.
    pub fn read_fat_file(&self, part: &str, path: &str) -> Result<Vec<u8>, InspectError> {
        Ok(fat::read(&self.file, self.partition(part)?, path)?)
    }

    /// The ESP's `grubenv`.
    /// Writes a file on a FAT partition, keeping the previous one as
    /// `<path>.bak` ([`fat::replace`]). The image must be open for writing.
    pub fn replace_fat_file(
        &self,
        part: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<bool, InspectError> {
        Ok(fat::replace(
            &self.file,
            self.partition(part)?,
            path,
            bytes,
        )?)
    }

    pub fn grubenv(&self) -> Result<GrubEnv, InspectError> {
        let bytes = self.read_fat_file(layout::PART_ESP, layout::ESP_GRUBENV)?;
        Ok(GrubEnv::parse(&bytes)?)
    }

    /// Rewrites the ESP's `grubenv` in place (image opened writable).
    pub fn write_grubenv(&self, env: &GrubEnv) -> Result<(), InspectError> {
        let bytes = env.to_bytes()?;
        let esp = self.partition(layout::PART_ESP)?;
        fat::overwrite(&self.file, esp, layout::ESP_GRUBENV, &bytes)?;
        Ok(())
    }

    /// The A/B boot state stored in `grubenv`.
    pub fn boot_state(&self) -> Result<BootState, InspectError> {
        Ok(BootState::from_env(&self.grubenv()?)?)
    }
}

/// Applies `NAME=VALUE` assignments to the image's `grubenv` and returns
/// the new environment. With no assignments, only reads it.
pub fn edit_grubenv(path: &Path, assignments: &[String]) -> Result<GrubEnv, InspectError> {
    let image = Image::open(path, !assignments.is_empty())?;
    let mut env = image.grubenv()?;
    if assignments.is_empty() {
        return Ok(env);
    }
    for a in assignments {
        let (name, value) = a
            .split_once('=')
            .ok_or_else(|| InspectError::BadAssignment(a.clone()))?;
        env.set(name, value)?;
    }
    image.write_grubenv(&env)?;
    Ok(env)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;
    use crate::layout::Sizes;
    use crate::slot::Slot;

    const MIB: u64 = 1024 * 1024;

    /// A small image with just the GPT and a FAT ESP holding the factory grubenv.
    fn small_image(dir: &Path) -> PathBuf {
        let path = dir.join("small.img");
        let sizes = Sizes {
            esp: 34 * MIB,
            root: MIB,
            config: MIB,
            data: MIB,
        };
        let parts = disk::gpt::plan(&sizes);
        let mut file = disk::create_image(&path, disk::gpt::disk_size(&sizes)).unwrap();
        disk::gpt::write_table(&mut file, &parts).unwrap();
        let mut env = GrubEnv::new();
        BootState::factory().write_to(&mut env).unwrap();
        fat::build(
            &file,
            &parts[0],
            layout::ESP_LABEL,
            &[fat::Entry::Bytes(
                layout::ESP_GRUBENV.into(),
                env.to_bytes().unwrap(),
            )],
        )
        .unwrap();
        path
    }

    #[test]
    fn grubenv_is_read_and_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = small_image(dir.path());
        let image = Image::open(&path, false).unwrap();
        assert_eq!(image.boot_state().unwrap(), BootState::factory());
        assert_eq!(image.partition("data").unwrap().number, 5);
        drop(image);

        // What GRUB does on boot: a try on slot a.
        let env = edit_grubenv(&path, &["a_TRY=1".into()]).unwrap();
        assert_eq!(env.get("a_TRY"), Some("1"));
        let mut state = Image::open(&path, false).unwrap().boot_state().unwrap();
        assert_eq!(state.a.tries, 1);

        // What init does once healthy.
        state.mark_good(Slot::A);
        let image = Image::open(&path, true).unwrap();
        let mut env = image.grubenv().unwrap();
        state.write_to(&mut env).unwrap();
        image.write_grubenv(&env).unwrap();
        assert_eq!(image.boot_state().unwrap(), BootState::factory());
        assert_eq!(
            image.read_fat_file("ESP", "grubenv").unwrap().len(),
            crate::grubenv::SIZE
        );
        assert!(matches!(
            edit_grubenv(&path, &["nonsense".into()]),
            Err(InspectError::BadAssignment(_))
        ));
    }
}
