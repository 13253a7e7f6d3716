//! `image/components.lock`: the Debian packages an image is built from, per
//! architecture, each pinned by version, file name and SHA-256.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ComponentsError;
use crate::Arch;

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Debian package name.
    pub name: String,
    /// Exact Debian version (`apt-get download name=version`).
    pub version: String,
    /// File name `apt-get download` saves it under.
    pub filename: String,
    /// Lower-case hex SHA-256 of the `.deb`.
    pub sha256: String,
}

/// The whole lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    #[serde(default)]
    pub x86_64: Vec<Entry>,
    #[serde(default)]
    pub aarch64: Vec<Entry>,
}

const HEADER: &str = "\
# Cairn components: Debian 12 (bookworm, bookworm-updates, bookworm-security; main)
# packages an image is built from, pinned by version and SHA-256.
# Written by `cairn-image components lock --arch <arch>`; checked by every build.
";

impl Lock {
    /// Parses lock-file text.
    pub fn parse(text: &str) -> Result<Lock, ComponentsError> {
        toml::from_str(text).map_err(|e| ComponentsError::LockParse(e.to_string()))
    }

    /// Reads a lock file; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<Lock, ComponentsError> {
        match fs::read_to_string(path) {
            Ok(text) => Lock::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock::default()),
            Err(source) => Err(ComponentsError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The lock compiled into this binary (from [`super::LOCK_FILE`]).
    pub fn embedded() -> Result<Lock, ComponentsError> {
        Lock::parse(super::LOCK_TEXT)
    }

    /// The pinned packages of `arch`.
    pub fn entries(&self, arch: Arch) -> &[Entry] {
        match arch {
            Arch::X86_64 => &self.x86_64,
            Arch::Aarch64 => &self.aarch64,
        }
    }

    /// Replaces the pinned packages of `arch` (kept sorted by name).
    pub fn set_entries(&mut self, arch: Arch, mut entries: Vec<Entry>) {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        match arch {
            Arch::X86_64 => self.x86_64 = entries,
            Arch::Aarch64 => self.aarch64 = entries,
        }
    }

    /// The lock as file text, with its explanatory header.
    pub fn to_text(&self) -> Result<String, ComponentsError> {
        let body = toml::to_string(self).map_err(|e| ComponentsError::LockParse(e.to_string()))?;
        Ok(format!("{HEADER}\n{body}"))
    }

    /// A digest of `arch`'s pins: the extracted tree is rebuilt when it changes.
    pub fn digest(&self, arch: Arch) -> String {
        let mut h = Sha256::new();
        h.update(super::TREE_FORMAT.as_bytes());
        for e in self.entries(arch) {
            for field in [&e.name, &e.version, &e.filename, &e.sha256] {
                h.update(field.as_bytes());
                h.update([0]);
            }
        }
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, ComponentsError> {
    let io = |source| ComponentsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Checks `path` against the pin `entry`; a mismatch names the package.
pub fn verify(entry: &Entry, path: &Path) -> Result<(), ComponentsError> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(&entry.sha256) {
        Ok(())
    } else {
        Err(ComponentsError::Checksum {
            package: entry.name.clone(),
            version: entry.version.clone(),
            path: path.to_path_buf(),
            expected: entry.sha256.clone(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[x86_64]]
name = "runc"
version = "1.1.5+ds1-1+deb12u1"
filename = "runc_1.1.5+ds1-1+deb12u1_amd64.deb"
sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
"#;

    #[test]
    fn parses_and_round_trips() {
        let lock = Lock::parse(SAMPLE).expect("parse");
        assert_eq!(lock.entries(Arch::X86_64).len(), 1);
        assert!(lock.entries(Arch::Aarch64).is_empty());
        assert_eq!(lock.x86_64[0].name, "runc");
        let again = Lock::parse(&lock.to_text().expect("text")).expect("reparse");
        assert_eq!(again, lock);
        assert_ne!(lock.digest(Arch::X86_64), lock.digest(Arch::Aarch64));
    }

    #[test]
    fn rejects_unknown_fields() {
        let text = SAMPLE.replace("sha256 =", "sha1 = \"x\"\nsha256 =");
        assert!(matches!(
            Lock::parse(&text),
            Err(ComponentsError::LockParse(_))
        ));
    }

    #[test]
    fn embedded_lock_parses() {
        Lock::embedded().expect("embedded lock parses");
    }

    #[test]
    fn checksum_mismatch_names_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = dir.path().join("runc_1.1.5+ds1-1+deb12u1_amd64.deb");
        fs::write(&deb, b"hello").expect("write");
        let mut entry = Lock::parse(SAMPLE).expect("parse").x86_64[0].clone();
        // SHA-256 of "hello": the pin in SAMPLE matches.
        verify(&entry, &deb).expect("matching checksum");
        entry.sha256 = "00".repeat(32);
        let err = verify(&entry, &deb).expect_err("mismatch");
        assert!(matches!(err, ComponentsError::Checksum { .. }));
        assert!(err.to_string().contains("runc"), "{err}");
    }
}
