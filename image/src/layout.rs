//! The disk layout every Cairn image shares, and that `cairn-init` relies on
//! to find its partitions: GPT partition names, their default sizes, and the
//! files on the ESP.
//!
//! | # | GPT name | fs | contents |
//! |---|---|---|---|
//! | 1 | `ESP` | vfat | GRUB, `grubenv`, `cairn/<slot>/{vmlinuz,initrd.img}` |
//! | 2 | `root_a` | squashfs | slot A root filesystem |
//! | 3 | `root_b` | squashfs | slot B root filesystem |
//! | 4 | `config` | vfat, label `CAIRN` | `config.toml`, `manifests/`, `images/` |
//! | 5 | `data` | ext4, label `data` | mounted at `/var`; grows to fill the disk |
//!
//! Partitions are found by GPT name (the kernel's `PARTNAME=`), never by
//! device number, so the same image works on virtio, SATA, NVMe and SD cards.

use crate::slot::Slot;

/// Directory of the root filesystem holding image archives the node agent
/// imports at every boot (the pause image), without a leading `/`.
pub const ROOT_IMAGES_DIR: &str = "usr/share/cairn/images";
/// The pod sandbox ("pause") image the root filesystem carries; containerd
/// is configured with it as `sandbox_image`, so it is never pulled.
pub const PAUSE_IMAGE: &str = "localhost/cairn/pause:1";

/// The root filesystem's list of netfilter modules (what `iptables` needs,
/// see the image builder's `iptables` module), loaded by stage 2 in the
/// background; one absolute `.ko` path per line, dependencies first.
pub const NETFILTER_MODULES_LIST: &str = "/etc/cairn/modules.netfilter";

/// The root filesystem's list of Wi-Fi modules (cfg80211, mac80211 and the
/// WPA2 crypto, see the image builder's `wifi` module), loaded by stage 2
/// only when `[network.wifi]` is set; same format as the netfilter list.
pub const WIFI_MODULES_LIST: &str = "/etc/cairn/modules.wifi";

/// Where `wpa_supplicant` is in the root filesystem.
pub const WPA_SUPPLICANT: &str = "/sbin/wpa_supplicant";

/// The shell `[debug] serial_shell` runs on the console (busybox).
pub const SHELL: &str = "/bin/sh";

/// The root filesystem's list of the 802.1Q VLAN modules (`8021q` and what
/// it needs beyond stage 2's modules), loaded by stage 2 only when the
/// config has `[[network.vlans]]`; same format.
pub const VLAN_MODULES_LIST: &str = "/etc/cairn/modules.vlan";

/// GPT name of the EFI system partition.
pub const PART_ESP: &str = "ESP";
/// GPT name of the configuration partition.
pub const PART_CONFIG: &str = "config";
/// GPT name of the data partition.
pub const PART_DATA: &str = "data";
/// FAT volume label of the configuration partition (what a laptop shows).
pub const CONFIG_LABEL: &str = "CAIRN";
/// FAT volume label of the ESP.
pub const ESP_LABEL: &str = "ESP";
/// ext4 label of the data partition.
pub const DATA_LABEL: &str = "data";

/// The GRUB environment block, at the root of the ESP.
pub const ESP_GRUBENV: &str = "grubenv";
/// The user's configuration file, at the root of the config partition.
pub const CONFIG_FILE: &str = "config.toml";

/// Where the data partition is mounted on the device.
pub const DATA_MOUNT: &str = "/var";

/// Kernel of a slot, on the ESP.
pub fn esp_kernel(slot: Slot) -> String {
    format!("cairn/{}/vmlinuz", slot.name())
}

/// Initramfs of a slot, on the ESP.
pub fn esp_initrd(slot: Slot) -> String {
    format!("cairn/{}/initrd.img", slot.name())
}

const MIB: u64 = 1024 * 1024;

/// Partition sizes of a freshly built image, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Two slots of kernel + initramfs; arm64's kernel alone is ~27 MB.
    pub esp: u64,
    /// Each root slot; fixed for the life of the device, so with headroom.
    pub root: u64,
    pub config: u64,
    /// The initial data partition; it grows to fill the disk on first boot.
    pub data: u64,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            esp: 128 * MIB,
            root: 192 * MIB,
            config: 64 * MIB,
            data: 256 * MIB,
        }
    }
}

/// Sector size the image is laid out with.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (what SD cards and flash like).
pub const ALIGN: u64 = MIB;
