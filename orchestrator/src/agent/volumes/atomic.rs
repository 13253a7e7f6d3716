//! Writes a volume's files the way the kubelet's `AtomicWriter` does, so a
//! container sees either the old set of files or the new one, never a mix.
//!
//! Layout of a target directory:
//! ```text
//! ..2026_11_28_13_05_07.123456789/   the current payload (real files)
//! ..data -> ..2026_11_28_13_05_07.123456789
//! key    -> ..data/key               one link per top-level entry
//! ```
//! An update writes a new timestamped directory, points a `..data_tmp`
//! link at it and renames that over `..data` (one atomic `rename(2)`),
//! adds links for new top-level entries, then removes the old directory
//! and links to entries that went. A payload equal to what is on disk
//! (contents and modes) writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub data: Vec<u8>,
    /// Permission bits (`defaultMode`/`mode`, 0644 unless set).
    pub mode: u32,
}

/// Relative path (as in `items[].path`) → file.
pub type Payload = BTreeMap<String, File>;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Why a payload path is refused (upstream's `validatePath`).
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    if path.len() > 4096 {
        return Err(format!(
            "invalid path: must be less than or equal to 4096 characters: {path}"
        ));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("invalid path: must be relative path: {path}"));
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("invalid path: must not contain '..': {path}"));
    }
    if path.starts_with("..") {
        return Err(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// The first component of a payload path (the user-visible link).
fn top(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Writes `payload` into `target` (created if missing); `Ok(true)` when
/// something changed on disk.
pub fn write(target: &Path, payload: &Payload) -> Result<bool, String> {
    for path in payload.keys() {
        check_path(path)?;
    }
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(target).map_err(|e| io("creating", target, e))?;
    let data_link = target.join(DATA);
    let old = std::fs::read_link(&data_link).ok();
    if old.is_some() && same(&data_link, payload) && links_ok(target, payload) {
        return Ok(false);
    }
    // A new timestamped directory with the payload's files.
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S")
        .to_string();
    let random = uuid::Uuid::new_v4().simple().to_string();
    let ts_name = format!("{stamp}.{}", &random[..9]);
    let ts_dir = target.join(&ts_name);
    std::fs::create_dir(&ts_dir).map_err(|e| io("creating", &ts_dir, e))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io("chmod", &ts_dir, e))?;
    for (path, file) in payload {
        let full = ts_dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&full)
            .map_err(|e| io("writing", &full, e))?;
        f.write_all(&file.data)
            .map_err(|e| io("writing", &full, e))?;
        // The umask applied at open; set the exact mode.
        f.set_permissions(std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| io("chmod", &full, e))?;
    }
    // Swap `..data` in one rename.
    let tmp_link = target.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&ts_name, &tmp_link).map_err(|e| io("linking", &tmp_link, e))?;
    std::fs::rename(&tmp_link, &data_link).map_err(|e| io("renaming", &tmp_link, e))?;
    // User-visible links through `..data`.
    let tops: BTreeSet<&str> = payload.keys().map(|p| top(p)).collect();
    for name in &tops {
        let link = target.join(name);
        let want = Path::new(DATA).join(name);
        if std::fs::read_link(&link).ok().as_deref() == Some(want.as_path()) {
            continue;
        }
        if let Ok(meta) = std::fs::symlink_metadata(&link) {
            if meta.is_dir() {
                std::fs::remove_dir_all(&link).map_err(|e| io("removing", &link, e))?;
            } else {
                std::fs::remove_file(&link).map_err(|e| io("removing", &link, e))?;
            }
        }
        std::os::unix::fs::symlink(&want, &link).map_err(|e| io("linking", &link, e))?;
    }
    // The old payload and links to entries that went.
    if let Some(old) = old.filter(|o| o.as_os_str() != ts_name.as_str()) {
        let old_dir = target.join(old);
        if old_dir.starts_with(target) && old_dir.parent() == Some(target) {
            let _ = std::fs::remove_dir_all(&old_dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(target) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("..") || tops.contains(name) {
                continue;
            }
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if is_link {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(true)
}

/// Whether the files under `data` (the `..data` link) are exactly `payload`.
fn same(data: &Path, payload: &Payload) -> bool {
    let mut count = 0;
    if !count_files(data, &mut count) || count != payload.len() {
        return false;
    }
    payload.iter().all(|(path, file)| {
        let full = data.join(path);
        let mode = std::fs::symlink_metadata(&full).map(|m| m.permissions().mode() & 0o7777);
        mode.is_ok_and(|m| m == file.mode)
            && std::fs::read(&full).is_ok_and(|bytes| bytes == file.data)
    })
}

/// Counts the regular files under `dir` (following the `..data` link only).
fn count_files(dir: &Path, count: &mut usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                if !count_files(&entry.path(), count) {
                    return false;
                }
            }
            Ok(_) => *count += 1,
            Err(_) => return false,
        }
    }
    true
}

/// Whether every top-level entry has its link.
fn links_ok(target: &Path, payload: &Payload) -> bool {
    payload.keys().all(|p| {
        let name = top(p);
        std::fs::read_link(target.join(name)).ok().as_deref()
            == Some(Path::new(DATA).join(name).as_path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(entries: &[(&str, &str, u32)]) -> Payload {
        entries
            .iter()
            .map(|(p, d, m)| {
                (
                    (*p).to_owned(),
                    File {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn writes_swaps_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("vol");
        assert!(write(&t, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap());
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(t.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(t.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = std::fs::metadata(t.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let first = std::fs::read_link(t.join(DATA)).unwrap();
        // Same payload: nothing written.
        assert!(!write(&t, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap());
        assert_eq!(std::fs::read_link(t.join(DATA)).unwrap(), first);
        // A mode change alone is a change.
        assert!(write(&t, &payload(&[("a", "1", 0o600), ("sub/b", "2", 0o400)])).unwrap());
        // New contents, one entry gone.
        assert!(write(&t, &payload(&[("a", "3", 0o644)])).unwrap());
        let second = std::fs::read_link(t.join(DATA)).unwrap();
        assert_ne!(first, second);
        assert!(!t.join(&first).exists(), "old payload removed");
        assert!(std::fs::symlink_metadata(t.join("sub")).is_err());
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "3");
        let names: Vec<String> = std::fs::read_dir(&t)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn refuses_escaping_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a/../../x", "..data", ""] {
            let err = write(dir.path(), &payload(&[(bad, "x", 0o644)])).unwrap_err();
            assert!(err.starts_with("invalid path"), "{bad}: {err}");
        }
    }
}
