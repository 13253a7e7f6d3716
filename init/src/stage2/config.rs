//! The user's configuration: the config partition (FAT, label `CAIRN`) is
//! mounted read-only at `/run/cairn/config` and its `config.toml` parsed with
//! the shared schema. A broken file never stops the boot: the console names
//! the file, line, column and problem, and the defaults are used.

use crate::stage1::partitions::Partition;
use crate::sys::mount::{self, Mount};
use cairn_image::config::{Config, LoadError};
use cairn_image::layout;
use nix::mount::MsFlags;
use std::path::Path;

/// Where the config partition is mounted.
pub const CONFIG_MOUNT: &str = "/run/cairn/config";

/// The config partition's mount: vfat, read-only.
pub fn config_mount(dev: &Path) -> Mount {
    Mount::new(
        &dev.to_string_lossy(),
        CONFIG_MOUNT,
        "vfat",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

/// Mounts the config partition (if found) and loads `config.toml`.
pub fn load(part: Option<&Partition>) -> Config {
    let Some(part) = part else {
        tracing::warn!("no config partition; using the default configuration");
        return Config::default();
    };
    if let Err(error) = mount::mount(&config_mount(&part.dev)) {
        tracing::error!(%error, "config partition not mounted; using the default configuration");
        return Config::default();
    }
    load_file(&Path::new(CONFIG_MOUNT).join(layout::CONFIG_FILE))
}

/// Loads a configuration file: a missing file means defaults; an invalid
/// one is reported on the console (`file:line:column: problem`), then
/// defaults.
pub fn load_file(path: &Path) -> Config {
    match Config::load(path) {
        Ok(config) => {
            tracing::info!(path = %path.display(), "configuration loaded");
            config
        }
        Err(LoadError::Read(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no config.toml; using the default configuration");
            Config::default()
        }
        Err(error) => {
            crate::log::console(&format!("cairn: config error: {error}"));
            crate::log::console("cairn: config error: using the default configuration");
            tracing::error!(%error, "invalid configuration; using defaults");
            Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_invalid_and_valid_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        assert_eq!(load_file(&path), Config::default());
        std::fs::write(&path, "version = 1\n[host\nhostname = \"x\"\n").expect("write");
        assert_eq!(load_file(&path), Config::default());
        std::fs::write(&path, "version = 1\n[host]\nhostname = \"edge7\"\n").expect("write");
        assert_eq!(load_file(&path).host.hostname.as_str(), "edge7");
    }

    #[test]
    fn config_is_read_only_vfat() {
        let m = config_mount(Path::new("/dev/vda4"));
        assert_eq!(m.fstype, "vfat");
        assert!(m.flags.contains(MsFlags::MS_RDONLY));
    }
}
