//! `[host]` settings beyond the hostname (written with `/etc` in [`super::etc`]):
//! time zone, kernel parameters, extra modules, console log level, and the
//! `[debug]` serial shell. Each step logs what it did; a failing key is a
//! console warning naming the key, never a stopped boot.

use crate::stage1::modules::module_name;
use crate::sys::kmod;
use cairn_image::config::{Config, LogLevel};
use std::path::{Path, PathBuf};

/// `/proc/sys`, where sysctls live.
const PROC_SYS: &str = "/proc/sys";
/// The kernel's printk levels.
const PRINTK: &str = "/proc/sys/kernel/printk";

/// Applies the host settings that need no network.
pub fn apply(config: &Config, run_etc: &Path) {
    crate::log::set_level(config.host.log_level);
    if config.host.log_level != LogLevel::Info {
        // Info keeps the kernel command line's level.
        let level = config.host.log_level.kernel_console_level();
        if let Err(error) = std::fs::write(PRINTK, level.to_string()) {
            tracing::warn!(%error, "host.log_level: kernel console level not set");
        }
    }
    let tz = config.host.timezone.as_str();
    if let Err(error) = std::fs::write(run_etc.join("timezone"), format!("{tz}\n")) {
        tracing::warn!(%error, "host.timezone: /etc/timezone not written");
    }
    let failed = apply_sysctls(config, Path::new(PROC_SYS));
    if !config.host.sysctls.is_empty() {
        tracing::info!(
            set = config.host.sysctls.len() - failed,
            failed,
            "sysctls applied"
        );
    }
    if !config.host.modules.is_empty() {
        load_modules(config);
    }
    if config.network.wifi.is_some() {
        crate::log::console(
            "cairn: config warning: network.wifi is validated but not applied by this build",
        );
    }
    if config.network.dhcp && !config.network.addresses.is_empty() {
        crate::log::console(
            "cairn: config warning: network.addresses are applied with dhcp = false only in this build",
        );
    }
}

/// The environment every service gets from the host settings: `TZ`, and
/// the proxy variables.
pub fn service_env(config: &Config) -> Vec<(String, String)> {
    let mut env = vec![("TZ".to_string(), config.host.timezone.as_str().to_string())];
    if let Some(proxy) = &config.network.proxy {
        env.extend(proxy.env());
    }
    env
}

/// Writes each sysctl; returns how many failed.
pub fn apply_sysctls(config: &Config, proc_sys: &Path) -> usize {
    let mut failed = 0;
    for (key, value) in &config.host.sysctls {
        let path = proc_sys.join(key.proc_path());
        if let Err(error) = std::fs::write(&path, &value.0) {
            failed += 1;
            crate::log::console(&format!(
                "cairn: config warning: host.sysctls.\"{}\": cannot write {}: {error}",
                key.as_str(),
                path.display()
            ));
        }
    }
    failed
}

/// The `.ko` files under `dir`, by kernel module name.
pub fn find_modules(dir: &Path, names: &[&str]) -> Vec<(String, Option<PathBuf>)> {
    let mut found: Vec<(String, Option<PathBuf>)> =
        names.iter().map(|n| (n.replace('-', "_"), None)).collect();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Some(name) = module_name(&path)
                && path.to_string_lossy().ends_with(".ko")
                && let Some(slot) = found.iter_mut().find(|(n, p)| *n == name && p.is_none())
            {
                slot.1 = Some(path);
            }
        }
    }
    found
}

fn load_modules(config: &Config) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release);
    let names: Vec<&str> = config.host.modules.iter().map(|m| m.as_str()).collect();
    for (name, path) in find_modules(&dir, &names) {
        match path {
            None => crate::log::console(&format!(
                "cairn: config warning: host.modules: {name} is not in this image's kernel modules"
            )),
            Some(path) => match kmod::load(&path) {
                Ok(loaded) => tracing::info!(module = %name, ?loaded, "module loaded"),
                Err(error) => crate::log::console(&format!(
                    "cairn: config warning: host.modules: {name}: {error}"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_go_to_their_proc_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net/ipv4")).expect("mkdir");
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0").expect("write");
        let config = cairn_image::config::Config::parse(
            "version = 1\n[host.sysctls]\n\"net.ipv4.ip_forward\" = true\n\"no.such.key\" = 1\n",
            "c",
        )
        .expect("valid");
        assert_eq!(
            apply_sysctls(&config, dir.path()),
            1,
            "the missing one fails"
        );
        let value = std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).expect("read");
        assert_eq!(value, "1");
    }

    #[test]
    fn modules_are_found_by_kernel_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("kernel/drivers/net");
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join("wire-guard.ko"), "").expect("write");
        std::fs::write(sub.join("dummy.ko.xz"), "").expect("write");
        let found = find_modules(dir.path(), &["wire_guard", "dummy", "nope"]);
        assert_eq!(
            found[0].1.as_deref(),
            Some(sub.join("wire-guard.ko").as_path())
        );
        assert_eq!(found[1].1, None, "compressed modules are not loadable");
        assert_eq!(found[2].1, None);
    }

    #[test]
    fn services_get_tz_and_proxy() {
        let config = cairn_image::config::Config::parse(
            "version = 1\n[host]\ntimezone = \"Europe/Berlin\"\n[network.proxy]\nhttps = \"http://p:3128\"\n",
            "c",
        )
        .expect("valid");
        let env = service_env(&config);
        assert!(env.contains(&("TZ".into(), "Europe/Berlin".into())));
        assert!(env.contains(&("HTTPS_PROXY".into(), "http://p:3128".into())));
    }
}
