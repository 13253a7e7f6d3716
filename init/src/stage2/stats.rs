//! Figures logged at readiness for the bench: memory in use, init's and
//! containerd's resident set sizes, all in KiB from `/proc`.

use std::path::Path;

/// `MemTotal - MemAvailable` from `/proc/meminfo` text.
pub fn mem_used_kib(meminfo: &str) -> Option<u64> {
    Some(kib_field(meminfo, "MemTotal:")?.saturating_sub(kib_field(meminfo, "MemAvailable:")?))
}

/// `VmRSS` from `/proc/<pid>/status` text.
pub fn rss_kib(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The RSS of the first process whose `comm` is `name`.
pub fn process_rss_kib(name: &str) -> Option<u64> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let dir = e.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        (comm.trim_end() == name).then(|| read_rss(&dir)).flatten()
    })
}

fn read_rss(dir: &Path) -> Option<u64> {
    rss_kib(&std::fs::read_to_string(dir.join("status")).ok()?)
}

/// The `/proc/meminfo` fields that explain where used memory went, as
/// `name=kib` pairs for one log line.
pub fn meminfo_breakdown(meminfo: &str) -> String {
    const FIELDS: [&str; 12] = [
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Buffers",
        "Cached",
        "Shmem",
        "AnonPages",
        "Slab",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
        "Percpu",
    ];
    FIELDS
        .iter()
        .filter_map(|f| Some(format!("{f}={}", kib_field(meminfo, &format!("{f}:"))?)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The memory breakdown of [`meminfo_breakdown`] for this system now.
pub fn meminfo_now() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .map_or_else(|_| String::new(), |t| meminfo_breakdown(&t))
}

/// `(mem_used_kib, init_rss_kib, containerd_rss_kib)`, 0 where unknown.
pub fn at_ready() -> (u64, u64, u64) {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_used_kib(&t));
    let init = read_rss(Path::new("/proc/self"));
    let containerd = process_rss_kib("containerd");
    (mem.unwrap_or(0), init.unwrap_or(0), containerd.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_status() {
        let meminfo = "MemTotal:         482512 kB\nMemFree:          300000 kB\nMemAvailable:     400000 kB\n";
        assert_eq!(mem_used_kib(meminfo), Some(82512));
        assert_eq!(mem_used_kib("MemTotal: 1 kB\n"), None);
        let status = "Name:\tcairn-init\nVmPeak:\t    9000 kB\nVmRSS:\t    2345 kB\n";
        assert_eq!(rss_kib(status), Some(2345));
        assert_eq!(rss_kib("Name:\tkthreadd\n"), None);
        assert_eq!(
            meminfo_breakdown(meminfo),
            "MemTotal=482512 MemFree=300000 MemAvailable=400000"
        );
    }
}
