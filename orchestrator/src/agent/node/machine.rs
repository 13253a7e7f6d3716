//! What the Node reports about this machine: CPUs, memory, disk, process
//! ids, kernel, OS image and ids, read from `/proc`, `/sys`, `/etc` and
//! `statvfs`. Reading never fails: a missing figure is zero or empty and
//! the Node says so, rather than the agent stopping.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// One reading of the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: u64,
    /// `MemTotal`, in KiB.
    pub memory_kib: u64,
    /// `MemAvailable`, in KiB.
    pub memory_available_kib: u64,
    /// Size of the filesystem holding the agent's root dir, in bytes.
    pub disk_bytes: u64,
    /// What is available on it to unprivileged users, in bytes.
    pub disk_available_bytes: u64,
    /// Threads running now (`/proc/loadavg`).
    pub pids_used: u64,
    /// `kernel.pid_max`.
    pub pid_max: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`, or `Cairn <version>`.
    pub os_image: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// The firmware's product UUID (empty where unreadable).
    pub system_uuid: String,
    /// This boot's id.
    pub boot_id: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    /// Reads the machine; disk figures are those of the filesystem holding
    /// `root_dir`.
    pub fn read(root_dir: &Path) -> Machine {
        let meminfo = read("/proc/meminfo");
        let (disk_bytes, disk_available_bytes) = disk(root_dir);
        Machine {
            cpus: online_cpus(&read("/sys/devices/system/cpu/online")).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
            }),
            memory_kib: meminfo_kib(&meminfo, "MemTotal"),
            memory_available_kib: meminfo_kib(&meminfo, "MemAvailable"),
            disk_bytes,
            disk_available_bytes,
            pids_used: threads(&read("/proc/loadavg")),
            pid_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image: os_image(&read("/etc/os-release")),
            machine_id: read("/etc/machine-id"),
            system_uuid: read("/sys/class/dmi/id/product_uuid").to_lowercase(),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// Counts the CPUs of a kernel CPU list (`0-3,6`).
pub fn online_cpus(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// A `/proc/meminfo` field in KiB (0 when absent).
pub fn meminfo_kib(meminfo: &str, field: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Threads in existence, the denominator of `/proc/loadavg`'s 4th field.
fn threads(loadavg: &str) -> u64 {
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .unwrap_or(0)
}

/// `PRETTY_NAME` of an os-release file, or `Cairn <version>` without one.
pub fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| format!("Cairn {}", env!("CARGO_PKG_VERSION")))
}

/// Size and available bytes of the filesystem holding `path`.
pub fn disk(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(fs) => {
            let unit = fs.fragment_size();
            (
                fs.blocks().saturating_mul(unit),
                fs.blocks_available().saturating_mul(unit),
            )
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "statvfs failed; reporting no storage");
            (0, 0)
        }
    }
}

/// The first non-loopback IPv4 address of this machine, loopback if none.
pub fn first_ipv4() -> IpAddr {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    let mut ips: Vec<Ipv4Addr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| a.as_sockaddr_in().map(|v4| v4.ip()))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_link_local())
        .collect();
    ips.sort();
    ips.first()
        .copied()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4)
}

/// The machine's host name, lower-cased as a Node name must be.
pub fn hostname() -> String {
    let name = read("/proc/sys/kernel/hostname").to_lowercase();
    if name.is_empty() {
        "cairn".to_owned()
    } else {
        name
    }
}

/// Kubernetes' name of this build's architecture (`GOARCH`).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(online_cpus("0-3\n"), Some(4));
        assert_eq!(online_cpus("0"), Some(1));
        assert_eq!(online_cpus("0-1,4,6-7"), Some(5));
        assert_eq!(online_cpus(""), None);
        assert_eq!(online_cpus("x"), None);
        assert_eq!(online_cpus("3-1"), None);
    }

    #[test]
    fn meminfo_and_os_release() {
        let meminfo =
            "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), 8_000_000);
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), 4_000_000);
        assert_eq!(meminfo_kib(meminfo, "Mem"), 0);
        assert_eq!(
            os_image("NAME=Cairn\nPRETTY_NAME=\"Cairn 0.3.1\"\n"),
            "Cairn 0.3.1"
        );
        assert!(os_image("NAME=x\n").starts_with("Cairn "));
        assert_eq!(threads("0.00 0.01 0.05 1/345 999"), 345);
    }

    #[test]
    fn reads_this_machine() {
        let m = Machine::read(Path::new("/"));
        assert!(m.cpus >= 1);
        assert!(m.memory_kib > 0 && m.memory_available_kib <= m.memory_kib);
        assert!(m.disk_bytes > 0 && m.disk_available_bytes <= m.disk_bytes);
        assert!(!m.kernel.is_empty());
        assert!(m.pid_max > 0);
    }
}
