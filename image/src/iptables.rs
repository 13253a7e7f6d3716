//! `iptables` in the root filesystem, for the CNI plugins: the bridge
//! plugin's `ipMasq` (pods reaching beyond the node) and the portmap plugin
//! (`hostPort`) both drive it through go-iptables.
//!
//! Debian 12's iptables 1.8.9, nf_tables back end: one multi-call binary,
//! `xtables-nft-multi`, picking its personality from its name. dpkg's
//! alternatives would point `iptables` and `ip6tables` at it; no dpkg runs
//! here, so [`COMMANDS`] are made as links to it. The legacy (x_tables
//! only) back end and its libraries are left out.
//!
//! The binary dlopens its match and target extensions from
//! `/usr/lib/<triplet>/xtables/`, so they are outside its ELF closure; only
//! those the plugins' rules (containernetworking/plugins 1.1.1) name are
//! copied ([`EXTENSIONS`]):
//! - bridge `ipMasq` (`pkg/ip/ipmasq_linux.go`): a chain per network with
//!   `-d <net> -j ACCEPT` and `! -d 224.0.0.0/4 -j MASQUERADE`, jumped to from
//!   `POSTROUTING`, every rule with `-m comment`;
//! - portmap (`plugins/meta/portmap/portmap.go`): `-m addrtype --dst-type
//!   LOCAL` into its DNAT chain, `-m multiport --destination-ports`, `-p
//!   tcp|udp --dport`, `-j DNAT --to-destination`, and for hairpin and
//!   localhost traffic `-j MARK --set-xmark` then `-m mark --mark ... -j
//!   MASQUERADE`.
//!
//! `-j ACCEPT` and jumps to chains are the `standard` target. MASQUERADE,
//! DNAT and SNAT are one extension in Debian (`libxt_NAT.so`), the other
//! names symlinks to it ([`EXTENSION_LINKS`]). Other matches (SCTP ports,
//! conntrack states, ...) are not there: `iptables` reports them as unknown.
//!
//! Kernel side ([`MODULES`]): nf_tables with the NAT chain type, and, for
//! what iptables-nft 1.8.9 passes to the kernel as xtables matches and
//! targets rather than native expressions (all of the above but verdicts,
//! the tcp/udp port matches and one of `mark`/`MARK`, as the module use
//! counts on a booted image show), nft_compat with the xt_* modules behind
//! them; the native `nft_masq` and `nft_nat` go unused.
//! `xt_tcpudp` stays for the port matches iptables-nft cannot express
//! natively (e.g. inverted ranges). The device has no modprobe, so the kernel cannot load any of these
//! on demand: they are listed in their own module list (see
//! [`crate::layout::NETFILTER_MODULES_LIST`]), which stage 2 loads in the
//! background.

use std::path::PathBuf;

use crate::Arch;

/// The multi-call binary, relative to the component tree and the root.
pub const PROGRAM: &str = "usr/sbin/xtables-nft-multi";

/// Names in `/usr/sbin` linked to [`PROGRAM`]: what alternatives would
/// provide (`iptables`, `ip6tables`, their `-save`) and the package's own
/// `-nft` names.
pub const COMMANDS: [&str; 6] = [
    "iptables",
    "ip6tables",
    "iptables-save",
    "ip6tables-save",
    "iptables-nft",
    "ip6tables-nft",
];

/// Extensions (ELF files under `usr/lib/<triplet>/xtables/`) the plugins' rules use.
pub const EXTENSIONS: [&str; 9] = [
    "libxt_standard.so",
    "libxt_comment.so",
    "libxt_NAT.so",
    "libxt_addrtype.so",
    "libxt_multiport.so",
    "libxt_tcp.so",
    "libxt_udp.so",
    "libxt_mark.so",
    "libxt_MARK.so",
];

/// Extensions Debian ships as symlinks (to `libxt_NAT.so`), copied as symlinks.
pub const EXTENSION_LINKS: [&str; 3] = ["libxt_MASQUERADE.so", "libxt_DNAT.so", "libxt_SNAT.so"];

/// Kernel modules for those rules with the nf_tables back end (their
/// dependencies, e.g. `nf_conntrack`, follow from `modules.dep`).
pub const MODULES: [&str; 11] = [
    "nf_tables",
    "nft_chain_nat",
    "nft_compat",
    "nf_nat",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_comment",
    "xt_addrtype",
    "xt_multiport",
    "xt_tcpudp",
    "xt_mark",
];

/// The extension directory, relative to the tree.
fn xtables_dir(arch: Arch) -> PathBuf {
    PathBuf::from("usr/lib")
        .join(arch.multiarch())
        .join("xtables")
}

/// ELF files to copy with their library closure: the program and the
/// extensions.
pub fn elf_files(arch: Arch) -> Vec<PathBuf> {
    let dir = xtables_dir(arch);
    std::iter::once(PathBuf::from(PROGRAM))
        .chain(EXTENSIONS.iter().map(|e| dir.join(e)))
        .collect()
}

/// Symlinks to copy as they are from the tree.
pub fn links(arch: Arch) -> Vec<PathBuf> {
    let dir = xtables_dir(arch);
    EXTENSION_LINKS.iter().map(|e| dir.join(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_sit_under_the_multiarch_dir() {
        let files = elf_files(Arch::Aarch64);
        assert_eq!(files[0], PathBuf::from(PROGRAM));
        assert!(files.contains(&PathBuf::from(
            "usr/lib/aarch64-linux-gnu/xtables/libxt_NAT.so"
        )));
        assert_eq!(
            links(Arch::X86_64)[0],
            PathBuf::from("usr/lib/x86_64-linux-gnu/xtables/libxt_MASQUERADE.so")
        );
    }
}
