//! A private apt setup per architecture under `<cache>/<arch>/apt/`.
//!
//! The host's apt state is never touched and `dpkg --add-architecture` is
//! never run: an `APT_CONFIG` file points every `Dir::` at the cache, sets
//! `APT::Architecture`, and a private `sources.list` names the Debian 12
//! suites on the mirror the host already uses (`deb.debian.org` otherwise).
//! The host's `apt.conf.d` is not read either (its hooks expect the host's
//! state); apt still honours `http_proxy` from the environment.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ComponentsError, io_err};
use crate::Arch;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const SUITES: [&str; 2] = ["bookworm", "bookworm-updates"];
const SECURITY_SUITE: &str = "bookworm-security";

/// The private apt of one architecture.
pub struct Apt {
    root: PathBuf,
    conf: PathBuf,
}

/// The fields of one `apt-cache show` stanza that a lock entry needs.
#[derive(Debug, Clone)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
    pub depends: String,
}

impl PackageInfo {
    /// The file name `apt-get download` saves this package under.
    pub fn deb_filename(&self) -> String {
        deb_filename(&self.name, &self.version, &self.architecture)
    }
}

/// `name_version_arch.deb` with the epoch colon escaped as apt does.
pub fn deb_filename(name: &str, version: &str, architecture: &str) -> String {
    format!("{name}_{}_{architecture}.deb", version.replace(':', "%3a"))
}

impl Apt {
    /// Writes the private configuration for `arch` under `root` (idempotent).
    pub fn setup(arch: Arch, root: &Path) -> Result<Apt, ComponentsError> {
        let root = std::path::absolute(root).map_err(io_err(root))?;
        for dir in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
        ] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, "").map_err(io_err(&status))?;
        }
        let r = root.display();
        let deb = arch.debian();
        let conf = format!(
            "Dir::State \"{r}/state\";\n\
             Dir::State::status \"{r}/state/status\";\n\
             Dir::Cache \"{r}/cache\";\n\
             Dir::Etc::SourceList \"{r}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{r}/etc/sources.list.d\";\n\
             Dir::Etc::Preferences \"{r}/etc/preferences\";\n\
             Dir::Etc::PreferencesParts \"{r}/etc/preferences.d\";\n\
             Dir::Etc::Parts \"{r}/etc/apt.conf.d\";\n\
             APT::Architecture \"{deb}\";\n\
             APT::Architectures {{ \"{deb}\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n"
        );
        let conf_path = root.join("apt.conf");
        write_if_changed(&conf_path, &conf)?;
        let (main, security) = host_mirrors();
        let mut sources = String::new();
        for suite in SUITES {
            sources.push_str(&format!("deb [signed-by={KEYRING}] {main} {suite} main\n"));
        }
        sources.push_str(&format!(
            "deb [signed-by={KEYRING}] {security} {SECURITY_SUITE} main\n"
        ));
        write_if_changed(&root.join("etc/sources.list"), &sources)?;
        Ok(Apt {
            root,
            conf: conf_path,
        })
    }

    /// True when package lists have been fetched.
    pub fn has_lists(&self) -> bool {
        fs::read_dir(self.root.join("state/lists")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.conf).arg("-q");
        cmd
    }

    /// `apt-get update` for this configuration only.
    pub fn update(&self) -> Result<(), ComponentsError> {
        tracing::info!(apt = %self.root.display(), "updating package lists");
        run(self.command("apt-get").arg("update"))?;
        Ok(())
    }

    /// `apt-get download name=version` into `dir`.
    pub fn download(&self, dir: &Path, name: &str, version: &str) -> Result<(), ComponentsError> {
        tracing::info!(package = name, version, "downloading");
        run(self
            .command("apt-get")
            .arg("download")
            .arg(format!("{name}={version}"))
            .current_dir(dir))?;
        Ok(())
    }

    /// The candidate (`version` = None) or a given version of `name`;
    /// `Ok(None)` if apt does not know it.
    pub fn show(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<PackageInfo>, ComponentsError> {
        let mut cmd = self.command("apt-cache");
        cmd.arg("show").arg("--no-all-versions");
        match version {
            Some(v) => cmd.arg(format!("{name}={v}")),
            None => cmd.arg(name),
        };
        let Ok(out) = run(&mut cmd) else {
            return Ok(None);
        };
        Ok(parse_stanza(&out))
    }

    /// Names of `roots` and every package they depend on, transitively.
    pub fn depends_closure(&self, roots: &[&str]) -> Result<Vec<String>, ComponentsError> {
        let mut cmd = self.command("apt-cache");
        cmd.args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ]);
        cmd.args(roots);
        let out = run(&mut cmd)?;
        let mut names: Vec<String> = Vec::new();
        for line in out.lines() {
            if line.starts_with(' ') || line.starts_with('<') || line.is_empty() {
                continue;
            }
            if !names.iter().any(|n| n == line) {
                names.push(line.trim().to_string());
            }
        }
        Ok(names)
    }
}

/// Parses the first stanza of `apt-cache show` output.
fn parse_stanza(text: &str) -> Option<PackageInfo> {
    let stanza = text.split("\n\n").next()?;
    let field = |key: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    Some(PackageInfo {
        name: field("Package")?,
        version: field("Version")?,
        architecture: field("Architecture")?,
        sha256: field("SHA256")?,
        depends: field("Depends").unwrap_or_default(),
    })
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), ComponentsError> {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).map_err(io_err(path))?;
    }
    Ok(())
}

/// The Debian and Debian-security mirror URIs from the host's apt sources
/// (deb822 `*.sources` or one-line `sources.list`), else `deb.debian.org`.
pub fn host_mirrors() -> (String, String) {
    let mut uris = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let text = fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "sources") {
                for line in text.lines() {
                    if let Some(v) = line.trim().strip_prefix("URIs:") {
                        uris.extend(v.split_whitespace().map(str::to_string));
                    }
                }
            } else if path.extension().is_some_and(|e| e == "list") {
                uris.extend(one_line_uris(&text));
            }
        }
    }
    uris.extend(one_line_uris(
        &fs::read_to_string("/etc/apt/sources.list").unwrap_or_default(),
    ));
    let pick = |suffix: &str, default: &str| {
        uris.iter()
            .map(|u| u.trim_end_matches('/'))
            .find(|u| u.ends_with(suffix) && u.starts_with("http"))
            .unwrap_or(default)
            .to_string()
    };
    (
        pick("/debian", "http://deb.debian.org/debian"),
        pick("/debian-security", "http://deb.debian.org/debian-security"),
    )
}

fn one_line_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut word = words.next();
        if word.is_some_and(|w| w.starts_with('[')) {
            while let Some(w) = word {
                word = words.next();
                if w.ends_with(']') {
                    break;
                }
            }
        }
        uris.extend(word.map(str::to_string));
    }
    uris
}

/// Runs a command, returning its stdout; a failure carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String, ComponentsError> {
    let program = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| ComponentsError::Spawn {
        command: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ComponentsError::Command {
            command: program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_and_names_files() {
        let text = "Package: runc\nVersion: 1:1.1.5\nArchitecture: arm64\nDepends: libc6 (>= 2.34)\nSHA256: ab\n\nPackage: other\n";
        let info = parse_stanza(text).expect("stanza");
        assert_eq!(info.deb_filename(), "runc_1%3a1.1.5_arm64.deb");
        assert_eq!(info.depends, "libc6 (>= 2.34)");
    }

    #[test]
    fn one_line_sources() {
        let uris = one_line_uris(
            "# c\ndeb [arch=amd64 signed-by=/k] http://m/debian bookworm main\ndeb-src http://x y\n",
        );
        assert_eq!(uris, ["http://m/debian"]);
    }
}
