//! `wpa_supplicant` and the kernel's 802.11 stack in the root filesystem,
//! for `[network.wifi]`: init writes the supplicant's configuration and
//! supervises it (see cairn-init's `network::wifi`).
//!
//! Debian 12's `wpasupplicant` (2.10) is built with D-Bus and smart-card
//! (PC/SC) support, so its binary names `libdbus-1.so.3` (which names
//! `libsystemd.so.0` and its compression and crypto libraries) and
//! `libpcsclite.so.1` besides libnl and OpenSSL. Those libraries must be
//! present for the dynamic loader even though Cairn runs the supplicant
//! with neither a D-Bus control interface (no `-u`) nor smart cards; they
//! cost about a third of the supplicant's bytes (the slot figures are in
//! the README). Debian's installer build (`wpasupplicant-udeb`) has none of
//! them, but udebs are not in the suites the component lock reads. Only
//! `wpa_supplicant` itself is copied: `wpa_cli` needs the control socket
//! Cairn does not open, and init derives the key `wpa_passphrase` would.
//!
//! Kernel side ([`MODULES`]): cfg80211 and mac80211 (most Wi-Fi drivers
//! are mac80211 drivers; the few full-MAC ones need cfg80211 only), and
//! the crypto templates WPA2 uses that Debian builds as modules: CCMP is
//! `ccm(aes)` over `ctr`, BIP (management frame protection) is
//! `cmac(aes)`, GCMP is `gcm(aes)`. AES itself is built in. They go in
//! their own list ([`crate::layout::WIFI_MODULES_LIST`]), loaded by init
//! only when `[network.wifi]` is set; a board's radio driver comes from
//! its own module list or `host.modules`.
//!
//! [`TEST_MODULES`] are copied without being listed: `mac80211_hwsim`
//! (virtual radios) lets the end-to-end test, or a user without a radio,
//! exercise all of this through `host.modules`.

use std::path::PathBuf;

/// The supplicant, relative to the component tree and the root.
pub const PROGRAM: &str = "sbin/wpa_supplicant";

/// The 802.11 stack and the crypto WPA2 needs (dependencies, e.g.
/// `rfkill` and `libarc4`, follow from `modules.dep`).
pub const MODULES: [&str; 6] = ["cfg80211", "mac80211", "ccm", "ctr", "cmac", "gcm"];

/// Copied into the image but in no list: loaded only when named in
/// `host.modules`.
pub const TEST_MODULES: [&str; 1] = ["mac80211_hwsim"];

/// ELF files to copy with their library closure.
pub fn elf_files() -> Vec<PathBuf> {
    vec![PathBuf::from(PROGRAM)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_where_init_runs_it() {
        assert_eq!(format!("/{PROGRAM}"), crate::layout::WPA_SUPPLICANT);
        assert_eq!(elf_files(), vec![PathBuf::from(PROGRAM)]);
    }
}
