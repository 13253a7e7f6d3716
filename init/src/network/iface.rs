//! Which interface to configure: the one named in the config, else the first
//! Ethernet NIC by name, read from `/sys/class/net`. Drivers load
//! asynchronously, so callers poll for it with [`wait`].

use std::path::Path;
use std::time::Duration;
use tokio::time::{Instant, sleep};

const POLL: Duration = Duration::from_millis(100);

/// What `/sys/class/net` shows: the chosen interface, if any, and every
/// interface seen (for the error message when none fits).
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    pub chosen: Option<String>,
    pub seen: Vec<String>,
}

/// Looks once. `wanted` = a name from the config; else the first Ethernet
/// interface not in `others` (configured on their own): backed by a device
/// (`device` link; veth, bridges, bonds and tunnels have none),
/// ARPHRD_ETHER (`type` 1), and neither a bridge nor a wireless NIC.
pub fn scan(sys_class_net: &Path, wanted: Option<&str>, others: &[String]) -> Scan {
    let mut seen: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    seen.sort();
    let chosen = match wanted {
        Some(name) => seen.iter().find(|n| *n == name).cloned(),
        None => seen
            .iter()
            .find(|n| !others.contains(n) && is_ethernet(&sys_class_net.join(n)))
            .cloned(),
    };
    Scan { chosen, seen }
}

fn is_ethernet(dir: &Path) -> bool {
    let kind = std::fs::read_to_string(dir.join("type")).unwrap_or_default();
    kind.trim() == "1"
        && dir.join("device").exists()
        && !["bridge", "bonding", "wireless", "phy80211"]
            .iter()
            .any(|d| dir.join(d).exists())
}

/// Polls [`scan`] until an interface is chosen or `timeout` passes; then
/// returns the last scan's list as the error.
pub async fn wait(
    sys_class_net: &Path,
    wanted: Option<&str>,
    others: &[String],
    timeout: Duration,
) -> Result<String, Vec<String>> {
    let end = Instant::now() + timeout;
    loop {
        let found = scan(sys_class_net, wanted, others);
        match found.chosen {
            Some(name) => return Ok(name),
            None if Instant::now() >= end => return Err(found.seen),
            None => sleep(POLL).await,
        }
    }
}

/// The interface's MAC address from `address` (`52:54:00:12:34:56`).
pub fn mac(sys_class_net: &Path, name: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(sys_class_net.join(name).join("address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// A fake /sys/class/net: (name, type, has device, extra dirs).
    fn fake(tag: &str, ifaces: &[(&str, &str, bool, &[&str])]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("cairn-net-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (name, kind, device, extra) in ifaces {
            let dir = root.join(name);
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("type"), format!("{kind}\n")).expect("type");
            fs::write(dir.join("address"), "52:54:00:12:34:56\n").expect("address");
            if *device {
                fs::create_dir(dir.join("device")).expect("device");
            }
            for d in *extra {
                fs::create_dir(dir.join(d)).expect("extra");
            }
        }
        root
    }

    #[test]
    fn picks_the_first_physical_ethernet_by_name() {
        let root = fake(
            "pick",
            &[
                ("lo", "772", false, &[]),
                ("br0", "1", false, &["bridge"]),
                ("veth1", "1", false, &[]),
                ("wlan0", "1", true, &["wireless"]),
                ("enp0s3", "1", true, &[]),
                ("eth0", "1", true, &[]),
            ],
        );
        let s = scan(&root, None, &[]);
        assert_eq!(s.chosen.as_deref(), Some("enp0s3"));
        assert_eq!(s.seen, ["br0", "enp0s3", "eth0", "lo", "veth1", "wlan0"]);
        let s = scan(&root, None, &["enp0s3".to_string()]);
        assert_eq!(s.chosen.as_deref(), Some("eth0"), "configured elsewhere");
        assert_eq!(
            scan(&root, Some("veth1"), &[]).chosen.as_deref(),
            Some("veth1"),
            "a named one is taken as is"
        );
        assert_eq!(scan(&root, Some("eth9"), &[]).chosen, None);
        assert_eq!(mac(&root, "eth0"), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[tokio::test]
    async fn wait_reports_what_it_saw() {
        let root = fake("wait", &[("lo", "772", false, &[])]);
        let err = wait(&root, None, &[], Duration::from_millis(150))
            .await
            .expect_err("no nic");
        assert_eq!(err, ["lo"]);
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
