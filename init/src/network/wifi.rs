//! `[network.wifi]`: the image's `wpa_supplicant`, configured and
//! supervised by init, and the Wi-Fi interface's addresses.
//!
//! Steps, only when the section is set:
//! 1. [`load_modules`] (before `host.modules`, so a radio driver named
//!    there finds cfg80211 and mac80211 loaded): the image's Wi-Fi list.
//! 2. [`start`] (a background task, so the boot never waits for a radio):
//!    waits for the interface, writes the supplicant's configuration
//!    ([`render`]) to [`CONF`] (mode 0600: it holds the key), and starts
//!    `wpa_supplicant -i IFACE -c CONF` under the supervisor (restarted
//!    with back-off if it dies; its INFO lines, e.g. `CTRL-EVENT-CONNECTED`,
//!    reach the console as `[wpa_supplicant] ...`).
//!
//! Addressing is not done here: the interface is one more
//! [`super::plan::Plan`] (the last), static or DHCP like any other, its
//! `dns` merged into `resolv.conf` in rank order.
//!
//! The key goes into [`CONF`] only, always as the raw PSK (a passphrase is
//! turned into it here: see [`psk_value`]): it is never logged, and the
//! supplicant hides keys in its own output unless run with `-K`.
//!
//! Current limitations: no link-state tracking, so a DHCP client that
//! started before the association finds the network at its next
//! retransmission (up to 64 s later). WPA2-Personal (and WPA with TKIP, as
//! the supplicant defaults) and open networks only: no WPA3-SAE, no
//! enterprise (802.1X).

use super::iface;
use crate::stage1::modules;
use crate::supervisor::{ServiceSpec, Supervisor};
use cairn_image::config::Network;
use cairn_image::config::network::Wifi;
use cairn_image::layout;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The supplicant's configuration, written at boot (it holds the PSK).
pub const CONF: &str = "/run/cairn/wpa_supplicant.conf";
/// The service's name: the console prefix and its log file's name.
const SERVICE: &str = "wpa_supplicant";
/// Where the service's log file goes (as containerd's).
const LOG_DIR: &str = "/var/log/cairn";
/// How long to wait for the radio's driver to create the interface.
const IFACE_WAIT: Duration = Duration::from_secs(20);

/// Loads the image's Wi-Fi modules when `[network.wifi]` is set (blocking).
pub fn load_modules(config: &Network) {
    let list = Path::new(layout::WIFI_MODULES_LIST);
    if config.wifi.is_some() && list.exists() {
        let (loaded, failed) = modules::load_list(list);
        tracing::info!(loaded, failed, "Wi-Fi modules loaded");
    }
}

/// Starts the supplicant of `[network.wifi]`, if set,
/// in a background task.
pub fn start(config: &Network, supervisor: &Supervisor) {
    let Some(wifi) = config.wifi.clone() else {
        return;
    };
    let supervisor = supervisor.clone();
    tokio::spawn(async move {
        if let Err(error) = run(&wifi, &supervisor).await {
            crate::log::console(&format!(
                "cairn: network.wifi: {} not configured: {error}",
                wifi.interface
            ));
        }
    });
}

async fn run(wifi: &Wifi, supervisor: &Supervisor) -> Result<(), String> {
    let name = iface::wait(
        Path::new(super::SYS_CLASS_NET),
        Some(wifi.interface.as_str()),
        &[],
        IFACE_WAIT,
    )
    .await
    .map_err(|seen| format!("no such interface after {IFACE_WAIT:?} (present: {seen:?})"))?;
    let conf = Path::new(CONF);
    write_private(conf, &render(wifi)).map_err(|e| format!("writing {CONF}: {e}"))?;
    supervisor.start(spec(&name, conf));
    tracing::info!(interface = %name, ssid = %wifi.ssid, open = wifi.psk.is_none(),
        "Wi-Fi: wpa_supplicant started");
    Ok(())
}

/// The supervised `wpa_supplicant` on `interface` with the config `conf`:
/// the nl80211 driver, no control interface, no D-Bus.
pub fn spec(interface: &str, conf: &Path) -> ServiceSpec {
    let mut spec = ServiceSpec::new(SERVICE, layout::WPA_SUPPLICANT);
    spec.args = ["-D", "nl80211", "-i", interface, "-c"]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once(conf.display().to_string()))
        .collect();
    spec.log_dir = Some(PathBuf::from(LOG_DIR));
    spec
}

/// Writes `text` to `path` through a temporary file created with mode
/// 0600, then renamed over `path`.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The supplicant's configuration for `wifi`: the regulatory domain and one
/// network, WPA-PSK with the raw key, or open.
pub fn render(wifi: &Wifi) -> String {
    let mut out = String::from("# written by cairn-init from config.toml [network.wifi]\n");
    if let Some(country) = &wifi.country {
        let _ = writeln!(out, "country={country}");
    }
    out.push_str("network={\n");
    let _ = writeln!(out, "\tssid={}", ssid(&wifi.ssid));
    // Hidden networks answer only probes that name them.
    out.push_str("\tscan_ssid=1\n");
    match &wifi.psk {
        None => out.push_str("\tkey_mgmt=NONE\n"),
        Some(psk) => {
            out.push_str("\tkey_mgmt=WPA-PSK\n");
            let _ = writeln!(out, "\tpsk={}", psk_value(psk.expose(), &wifi.ssid));
        }
    }
    out.push_str("}\n");
    out
}

/// An SSID as the supplicant parses it: quoted when it is printable ASCII
/// without `"` or `\`, else the hex of its bytes (the supplicant's
/// unquoted form), which holds any bytes.
fn ssid(ssid: &str) -> String {
    let plain = ssid
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        format!("\"{ssid}\"")
    } else {
        hex(ssid.as_bytes())
    }
}

/// The raw PSK, 64 hex digits, as the supplicant takes it unquoted: a raw
/// key as given, or derived from the passphrase and the SSID (IEEE 802.11i
/// PBKDF2-HMAC-SHA1, 4096 rounds, 32 bytes). A passphrase is never written
/// quoted: the supplicant ends a quoted value at a `#` after a second `"`
/// and then prints what it read in its error.
fn psk_value(psk: &str, ssid: &str) -> String {
    if psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit()) {
        return psk.to_ascii_lowercase();
    }
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(psk.as_bytes(), ssid.as_bytes(), 4096, &mut key);
    hex(&key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_image::config::Config;
    use std::os::unix::fs::PermissionsExt;

    fn wifi(section: &str) -> Wifi {
        let text = format!("version = 1\n[network.wifi]\n{section}");
        Config::parse(&text, "config.toml")
            .expect("valid")
            .network
            .wifi
            .expect("wifi set")
    }

    #[test]
    fn a_passphrase_network_with_country() {
        // IEEE 802.11i-2004 H.4.1's first test vector.
        let w = wifi("ssid = \"IEEE\"\npsk = \"password\"\ncountry = \"DE\"\n");
        assert_eq!(
            render(&w),
            "# written by cairn-init from config.toml [network.wifi]\ncountry=DE\nnetwork={\n\
             \tssid=\"IEEE\"\n\tscan_ssid=1\n\tkey_mgmt=WPA-PSK\n\
             \tpsk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e\n}\n"
        );
    }

    #[test]
    fn the_key_is_derived_from_the_ssid_bytes() {
        // H.4.1's second vector, then an SSID written as hex.
        let psk = psk_value("ThisIsAPassword", "ThisIsASSID");
        assert_eq!(
            psk,
            "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"
        );
        let text = render(&wifi("ssid = 'a\"b #ü'\npsk = 'pa\"ss #1 \\ \"'\n"));
        assert!(text.contains("\tssid=6122622023c3bc\n"), "{text}");
        assert!(!text.contains("pa\"ss"), "{text}");
        let key = psk_value("pa\"ss #1 \\ \"", "a\"b #ü");
        assert!(text.contains(&format!("\tpsk={key}\n")), "{text}");
    }

    #[test]
    fn an_open_network_has_no_psk() {
        let text = render(&wifi("ssid = \"cafe\"\n"));
        assert!(text.contains("\tkey_mgmt=NONE\n"), "{text}");
        assert!(!text.contains("psk"), "{text}");
        assert!(!text.contains("country"), "{text}");
    }

    #[test]
    fn a_raw_key_is_kept_as_lower_case_hex() {
        let key = "0123456789ABCDEF".repeat(4);
        let text = render(&wifi(&format!("ssid = \"x\"\npsk = \"{key}\"\n")));
        assert!(
            text.contains(&format!("\tpsk={}\n", key.to_ascii_lowercase())),
            "{text}"
        );
        // 63 hex digits are a passphrase.
        assert_eq!(psk_value(&key[1..], "x").len(), 64);
        assert_ne!(psk_value(&key[1..], "x"), key[1..].to_ascii_lowercase());
    }

    #[test]
    fn ssids_that_quoting_cannot_hold_are_hex() {
        assert_eq!(ssid("plain net-1"), "\"plain net-1\"");
        assert_eq!(ssid("a\"b"), "612262");
        assert_eq!(ssid("a\\b"), "615c62");
        assert_eq!(ssid("Café"), "436166c3a9");
        assert_eq!(ssid("tab\there"), "7461620968657265");
        assert_eq!(ssid(" edge "), "\" edge \"");
    }

    #[test]
    fn the_config_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/wpa.conf");
        write_private(&path, "one").expect("write");
        write_private(&path, "two").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_service_runs_the_image_supplicant() {
        let s = spec("wlan0", Path::new(CONF));
        assert_eq!(s.program, Path::new("/sbin/wpa_supplicant"));
        assert_eq!(
            s.args,
            [
                "-D",
                "nl80211",
                "-i",
                "wlan0",
                "-c",
                "/run/cairn/wpa_supplicant.conf"
            ]
        );
        let debug = format!("{:?}", wifi("ssid = \"x\"\npsk = \"secret passphrase\"\n"));
        assert!(!debug.contains("secret passphrase"), "{debug}");
    }
}
