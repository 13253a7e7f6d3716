//! Pod networking on one node: the CNI configuration containerd's CRI
//! plugin reads, written once the Node has a pod CIDR.
//!
//! One network list, `cairn` (`<cni_conf_dir>/10-cairn.conflist`):
//! - `bridge` on [`Config::cni_bridge`] (`cni0`), the node's gateway
//!   (`isGateway`), masquerading traffic leaving the pod network
//!   (`ipMasq`), hairpin mode so a pod reaches itself through a Service;
//!   addresses from `host-local` IPAM in the pod CIDR, default route
//!   through the bridge, reservations under `<root_dir>/cni/networks`;
//! - `portmap` for `hostPort`s (capability `portMappings`).
//!
//! Masquerading and `portmap` need `iptables` (the device images carry
//! Debian's, nf_tables back end, in `/usr/sbin`); on a machine without it
//! the list has neither, so pods still get addresses and reach the node and
//! each other, but not beyond the node, and `hostPort`s are not mapped
//! (logged once).
//!
//! containerd adds the loopback interface itself. cniVersion 1.0.0 is what
//! the CNI plugins (1.1) and containerd 1.6 agree on. The file is replaced
//! atomically (a temporary file renamed over it), since containerd watches
//! the directory and may read it at any moment, and is left alone when it
//! already says the same.

use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::Config;

/// The configuration file's name (containerd reads the first by name).
pub const CONFLIST: &str = "10-cairn.conflist";
/// The network's name.
pub const NETWORK: &str = "cairn";

/// Whether an `iptables` program is on the `PATH` the CNI plugins see.
pub fn have_iptables() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join("iptables").is_file())
}

/// The network list for `pod_cidr` (`iptables`: masquerading and host
/// ports are possible).
pub fn conflist(config: &Config, pod_cidr: &str, iptables: bool) -> Value {
    let mut list = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.cni_bridge,
                "isGateway": true,
                "ipMasq": iptables,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": config.root_dir.join("cni/networks"),
                },
            },
            {
                "type": "portmap",
                "capabilities": {"portMappings": true},
            },
        ],
    });
    if !iptables && let Some(plugins) = list["plugins"].as_array_mut() {
        plugins.retain(|p| p["type"] != "portmap");
    }
    list
}

/// Writes the network list for `pod_cidr` into `config.cni_conf_dir`
/// unless it is there already; returns its path.
pub fn write_conflist(config: &Config, pod_cidr: &str) -> std::io::Result<PathBuf> {
    let dir = &config.cni_conf_dir;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(CONFLIST);
    let iptables = have_iptables();
    if !iptables {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing::warn!(
                "no iptables: pods get no masquerading beyond the node and hostPorts are not mapped"
            );
        });
    }
    let mut text = serde_json::to_string_pretty(&conflist(config, pod_cidr, iptables))
        .map_err(std::io::Error::other)?;
    text.push('\n');
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(path);
    }
    // A dot-name containerd skips (it reads *.conf, *.conflist, *.json).
    let temp = dir.join(format!(".{CONFLIST}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_iptables_no_masquerading_and_no_portmap() {
        let config = Config::new("n1");
        let with = conflist(&config, "10.42.0.0/24", true);
        assert_eq!(with["plugins"][0]["ipMasq"], true);
        assert_eq!(with["plugins"][1]["type"], "portmap");
        let without = conflist(&config, "10.42.0.0/24", false);
        assert_eq!(without["plugins"][0]["ipMasq"], false);
        assert_eq!(without["plugins"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn writes_once_and_atomically() {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = Config::new("n1");
        config.cni_conf_dir = dir.path().join("net.d");
        config.root_dir = dir.path().join("agent");
        let path = write_conflist(&config, "10.42.3.0/24").expect("written");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(written["cniVersion"], "1.0.0");
        let bridge = &written["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.3.0/24");
        if have_iptables() {
            assert_eq!(written["plugins"][1]["capabilities"]["portMappings"], true);
        }
        let modified = std::fs::metadata(&path)
            .expect("meta")
            .modified()
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_conflist(&config, "10.42.3.0/24").expect("again");
        assert_eq!(
            std::fs::metadata(&path)
                .expect("meta")
                .modified()
                .expect("mtime"),
            modified
        );
        write_conflist(&config, "10.42.4.0/24").expect("changed");
        let names: Vec<_> = std::fs::read_dir(&config.cni_conf_dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [CONFLIST]);
        assert!(
            std::fs::read_to_string(&path)
                .expect("read")
                .contains("10.42.4.0/24")
        );
    }
}
