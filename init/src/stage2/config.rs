//! The user's configuration: the config partition (FAT, label `CAIRN`) is
//! mounted read-only at `/run/cairn/config` and its `config.toml` checked
//! with the shared schema before anything uses it.
//!
//! - Valid: used, and copied to the data partition as
//!   `last-known-good.toml` (temporary file, fsync, rename, fsync of the
//!   directory; only when it changed, to spare the SD card).
//! - Invalid: the console names the file, line, column, key and problem,
//!   and the device boots with the last-known-good copy — or the defaults
//!   when there is none (first boot). A typo never bricks a device.
//! - Missing: the defaults (a deleted file is a choice, not an error).
//!
//! The outcome ([`Loaded::source`]) is kept in `/run/cairn/config-status`
//! for other programs and for the user on the console.
//!
//! The partition is remounted read-write only for the moment a file is
//! written back to it ([`write_back`]), the way an editor saves: a new file,
//! fsync, the old one renamed to `.bak`, the new one renamed into place.

use crate::stage1::partitions::Partition;
use crate::sys::mount::{self, Mount};
use cairn_image::config::{Config, LoadError};
use cairn_image::layout;
use nix::mount::MsFlags;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the config partition is mounted.
pub const CONFIG_MOUNT: &str = "/run/cairn/config";
/// The last valid configuration, on the data partition.
pub const LAST_KNOWN_GOOD: &str = "/var/lib/cairn/config/last-known-good.toml";
/// One line: which configuration this boot uses, and why.
pub const STATUS_FILE: &str = "/run/cairn/config-status";

/// Which configuration the boot is using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `config.toml` from the partition, valid.
    File,
    /// `config.toml` was invalid or unreadable: the last valid copy.
    LastKnownGood,
    /// No usable file at all.
    Defaults,
}

/// The configuration in use, and the error that set the file aside.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// Why `config.toml` was not used (`file:line:column: key: problem`).
    pub error: Option<String>,
}

impl Loaded {
    fn new(config: Config, source: Source, error: Option<String>) -> Loaded {
        Loaded {
            config,
            source,
            error,
        }
    }

    /// The status line for [`STATUS_FILE`].
    pub fn status_line(&self) -> String {
        match (&self.source, &self.error) {
            (Source::File, _) => "ok config.toml\n".to_string(),
            (Source::LastKnownGood, Some(e)) => format!("last-known-good {e}\n"),
            (Source::Defaults, Some(e)) => format!("defaults {e}\n"),
            (s, None) => format!("{s:?}\n").to_lowercase(),
        }
    }
}

/// The config partition's mount: vfat, read-only.
pub fn config_mount(dev: &Path) -> Mount {
    Mount::new(
        &dev.to_string_lossy(),
        CONFIG_MOUNT,
        "vfat",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

/// Mounts the config partition (if found) and loads `config.toml`, falling
/// back as the module says.
pub fn load(part: Option<&Partition>) -> Loaded {
    let lkg = Path::new(LAST_KNOWN_GOOD);
    let loaded = match part {
        None => fallback(lkg, "no config partition found".into()),
        Some(part) => match mount::mount(&config_mount(&part.dev)) {
            Ok(()) => load_from(&Path::new(CONFIG_MOUNT).join(layout::CONFIG_FILE), lkg),
            Err(error) => fallback(lkg, format!("config partition not mounted: {error}")),
        },
    };
    if let Err(error) = fs::write(STATUS_FILE, loaded.status_line()) {
        tracing::warn!(%error, path = STATUS_FILE, "config status not written");
    }
    loaded
}

/// Loads `path`; saves it as `lkg` when valid, falls back to `lkg` when not.
pub fn load_from(path: &Path, lkg: &Path) -> Loaded {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no config.toml; using the default configuration");
            return Loaded::new(Config::default(), Source::Defaults, None);
        }
        Err(e) => return fallback(lkg, format!("reading {}: {e}", path.display())),
    };
    match Config::parse(&text, &path.display().to_string()) {
        Ok(config) => {
            tracing::info!(path = %path.display(), "configuration loaded");
            match save_if_changed(lkg, &text) {
                Ok(true) => tracing::info!(path = %lkg.display(), "saved as last known good"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, path = %lkg.display(), "last-known-good copy not saved")
                }
            }
            Loaded::new(config, Source::File, None)
        }
        Err(error) => fallback(lkg, error.to_string()),
    }
}

/// Reports `why` on the console and returns the last-known-good
/// configuration, or the defaults.
fn fallback(lkg: &Path, why: String) -> Loaded {
    crate::log::console(&format!("cairn: config error: {why}"));
    match Config::load(lkg) {
        Ok(config) => {
            crate::log::console(&format!(
                "cairn: config error: booting with the last known good configuration ({})",
                lkg.display()
            ));
            Loaded::new(config, Source::LastKnownGood, Some(why))
        }
        Err(LoadError::Read(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
            crate::log::console(
                "cairn: config error: no last known good configuration; using the defaults",
            );
            Loaded::new(Config::default(), Source::Defaults, Some(why))
        }
        Err(error) => {
            crate::log::console(&format!(
                "cairn: config error: the last known good copy is unusable too ({error}); using the defaults"
            ));
            Loaded::new(Config::default(), Source::Defaults, Some(why))
        }
    }
}

/// Writes `text` to `path` atomically unless it already holds it.
fn save_if_changed(path: &Path, text: &str) -> std::io::Result<bool> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    write_atomic(path, text.as_bytes(), 0o600)?;
    Ok(true)
}

/// A temporary file, fsync, rename over `path`, fsync of the directory: a
/// power cut leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = tmp_name(path, "tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

fn tmp_name(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// Writes `name` on the config partition: remounts it read-write, writes
/// `<name>.new` and fsyncs it, renames the old file to `<name>.bak`, renames
/// the new one into place, fsyncs the directory, and remounts read-only.
pub fn write_back(name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let mount_point = Path::new(CONFIG_MOUNT);
    remount(mount_point, false).context("remounting the config partition read-write")?;
    let result = replace_file(&mount_point.join(name), bytes);
    let back = remount(mount_point, true).context("remounting the config partition read-only");
    result.with_context(|| format!("writing {name} on the config partition"))?;
    back
}

/// The `.new`/`.bak` dance of [`write_back`] inside a directory.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let new = tmp_name(path, "new");
    let mut file = fs::File::create(&new)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    if path.exists() {
        fs::rename(path, tmp_name(path, "bak"))?;
    }
    fs::rename(&new, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn remount(target: &Path, read_only: bool) -> nix::Result<()> {
    let mut flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version = 1\n[host]\nhostname = \"edge7\"\n";
    const GOOD2: &str = "version = 1\n[host]\nhostname = \"edge8\"\n";
    const BROKEN: &str = "version = 1\n[host\nhostname = \"x\"\n";
    const TYPO: &str = "version = 1\n[host]\nhostnme = \"edge9\"\n";

    #[test]
    fn valid_is_saved_invalid_falls_back_to_last_known_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let lkg = dir.path().join("lib/cairn/config/last-known-good.toml");

        // Missing file: defaults, nothing saved.
        let l = load_from(&path, &lkg);
        assert_eq!(
            (l.source, l.config.clone()),
            (Source::Defaults, Config::default())
        );
        assert!(!lkg.exists());

        // Broken before any good one: defaults, with the error.
        fs::write(&path, BROKEN).expect("write");
        let l = load_from(&path, &lkg);
        assert_eq!(l.source, Source::Defaults);
        assert!(
            l.error
                .as_deref()
                .is_some_and(|e| e.contains("config.toml:2")),
            "{l:?}"
        );
        assert!(l.status_line().starts_with("defaults "));

        // Valid: used and saved.
        fs::write(&path, GOOD).expect("write");
        let l = load_from(&path, &lkg);
        assert_eq!(l.source, Source::File);
        assert_eq!(l.config.host.hostname.as_str(), "edge7");
        assert_eq!(fs::read_to_string(&lkg).expect("lkg"), GOOD);
        assert_eq!(l.status_line(), "ok config.toml\n");

        // A typo: the last known good one, with the key named.
        fs::write(&path, TYPO).expect("write");
        let l = load_from(&path, &lkg);
        assert_eq!(l.source, Source::LastKnownGood);
        assert_eq!(l.config.host.hostname.as_str(), "edge7");
        let e = l.error.expect("error");
        assert!(e.contains("config.toml:3:1: host.hostnme"), "{e}");
        assert_eq!(
            fs::read_to_string(&lkg).expect("lkg"),
            GOOD,
            "not overwritten"
        );

        // The next valid one replaces it.
        fs::write(&path, GOOD2).expect("write");
        assert_eq!(
            load_from(&path, &lkg).config.host.hostname.as_str(),
            "edge8"
        );
        assert_eq!(fs::read_to_string(&lkg).expect("lkg"), GOOD2);
        assert!(!tmp_name(&lkg, "tmp").exists());

        // A corrupt last-known-good copy: defaults.
        fs::write(&lkg, BROKEN).expect("write");
        fs::write(&path, TYPO).expect("write");
        assert_eq!(load_from(&path, &lkg).source, Source::Defaults);
    }

    #[test]
    fn replace_keeps_one_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig.yaml");
        replace_file(&path, b"one").expect("first");
        assert!(!tmp_name(&path, "bak").exists());
        replace_file(&path, b"two").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(fs::read(tmp_name(&path, "bak")).expect("bak"), b"one");
        assert!(!tmp_name(&path, "new").exists());
    }

    #[test]
    fn config_is_read_only_vfat() {
        let m = config_mount(Path::new("/dev/vda4"));
        assert_eq!(m.fstype, "vfat");
        assert!(m.flags.contains(MsFlags::MS_RDONLY));
    }
}
