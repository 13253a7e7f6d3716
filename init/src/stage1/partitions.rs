//! Finding partitions by GPT name without udev: the kernel puts `PARTNAME=`
//! (the GPT partition name), `PARTN=` and `DEVNAME=` in
//! `/sys/class/block/<dev>/uevent`, and devtmpfs creates `/dev/<DEVNAME>`.
//! Names, not device numbers, so one image works on virtio, SATA, NVMe and
//! SD cards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/class/block";

/// A partition the kernel knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// GPT partition name (`root_a`, `data`).
    pub name: String,
    /// Device node (`/dev/vda5`).
    pub dev: PathBuf,
    /// Kernel name (`vda5`).
    pub sysname: String,
    /// Partition number on its disk (`PARTN`).
    pub number: u32,
    /// Kernel name of the whole disk (`vda`), if known.
    pub disk: Option<String>,
}

/// The fields of a block device's `uevent` that matter here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub devname: Option<String>,
    pub devtype: Option<String>,
    pub partname: Option<String>,
    pub partn: Option<u32>,
}

/// Parses `KEY=value` lines of a `uevent` file.
pub fn parse_uevent(text: &str) -> Uevent {
    let mut ev = Uevent::default();
    for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
        match key {
            "DEVNAME" => ev.devname = Some(value.to_string()),
            "DEVTYPE" => ev.devtype = Some(value.to_string()),
            "PARTNAME" => ev.partname = Some(value.to_string()),
            "PARTN" => ev.partn = value.parse().ok(),
            _ => {}
        }
    }
    ev
}

/// Every partition under `sys_block`, sorted by device name.
pub fn scan(sys_block: &Path) -> Vec<Partition> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut found: Vec<Partition> = entries
        .flatten()
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path().join("uevent")).ok()?;
            let ev = parse_uevent(&text);
            if ev.devtype.as_deref() != Some("partition") {
                return None;
            }
            let devname = ev.devname?;
            // /sys/class/block/vda5 -> .../block/vda/vda5: the parent is the disk.
            let disk = std::fs::canonicalize(entry.path()).ok().and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            });
            Some(Partition {
                name: ev.partname.unwrap_or_default(),
                dev: Path::new("/dev").join(&devname),
                sysname: devname,
                number: ev.partn.unwrap_or(0),
                disk,
            })
        })
        .collect();
    found.sort_by(|a, b| a.sysname.cmp(&b.sysname));
    found
}

/// The partition named `name`, preferring one on `disk` (the disk the
/// booted root is on) when several disks carry a Cairn layout.
pub fn pick<'a>(parts: &'a [Partition], name: &str, disk: Option<&str>) -> Option<&'a Partition> {
    let mut named = parts.iter().filter(|p| p.name == name);
    let first = named.clone().next();
    named
        .find(|p| disk.is_some() && p.disk.as_deref() == disk)
        .or(first)
}

/// Finds `name` now (preferring `disk`).
pub fn find(name: &str, disk: Option<&str>) -> Option<Partition> {
    pick(&scan(Path::new(SYS_BLOCK)), name, disk).cloned()
}

/// Polls for `name` every 100 ms for up to `timeout`. On timeout returns the
/// partitions that were seen, for the error message.
pub fn wait(
    name: &str,
    disk: Option<&str>,
    timeout: Duration,
) -> Result<Partition, Vec<Partition>> {
    let start = Instant::now();
    loop {
        let parts = scan(Path::new(SYS_BLOCK));
        if let Some(p) = pick(&parts, name, disk) {
            return Ok(p.clone());
        }
        if start.elapsed() >= timeout {
            return Err(parts);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A one-line summary of partitions for the console: `vda1 (ESP), vda2 (root_a)`.
pub fn describe(parts: &[Partition]) -> String {
    if parts.is_empty() {
        return "none".to_string();
    }
    parts
        .iter()
        .map(|p| format!("{} ({})", p.dev.display(), p.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_of_a_partition() {
        let ev = parse_uevent(
            "MAJOR=254\nMINOR=5\nDEVNAME=vda5\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=5\nPARTNAME=data\n",
        );
        assert_eq!(ev.devname.as_deref(), Some("vda5"));
        assert_eq!(ev.devtype.as_deref(), Some("partition"));
        assert_eq!(ev.partname.as_deref(), Some("data"));
        assert_eq!(ev.partn, Some(5));
        let disk = parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
        assert_eq!(disk.devtype.as_deref(), Some("disk"));
        assert_eq!(disk.partname, None);
    }

    fn part(sysname: &str, name: &str, disk: &str) -> Partition {
        Partition {
            name: name.into(),
            dev: Path::new("/dev").join(sysname),
            sysname: sysname.into(),
            number: 1,
            disk: Some(disk.into()),
        }
    }

    #[test]
    fn pick_prefers_the_boot_disk() {
        let parts = vec![part("sda5", "data", "sda"), part("vda5", "data", "vda")];
        assert_eq!(
            pick(&parts, "data", Some("vda")).map(|p| p.sysname.as_str()),
            Some("vda5")
        );
        assert_eq!(
            pick(&parts, "data", None).map(|p| p.sysname.as_str()),
            Some("sda5")
        );
        assert_eq!(
            pick(&parts, "data", Some("nvme0n1")).map(|p| p.sysname.as_str()),
            Some("sda5")
        );
        assert_eq!(pick(&parts, "root_a", None), None);
        assert_eq!(describe(&parts[..1]), "/dev/sda5 (data)");
        assert_eq!(describe(&[]), "none");
    }

    #[test]
    fn scan_reads_a_fake_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (dev, text) in [
            ("vda", "DEVNAME=vda\nDEVTYPE=disk\n"),
            (
                "vda2",
                "DEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=root_a\n",
            ),
        ] {
            std::fs::create_dir(dir.path().join(dev)).expect("mkdir");
            std::fs::write(dir.path().join(dev).join("uevent"), text).expect("write");
        }
        let parts = scan(dir.path());
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "root_a");
        assert_eq!(parts[0].dev, PathBuf::from("/dev/vda2"));
        assert_eq!(parts[0].number, 2);
    }
}
